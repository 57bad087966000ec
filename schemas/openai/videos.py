"""POST /videos, GET /videos/{id} and GET /videos/{id}/content (OpenAI's video jobs API, as
the openai SDK's `client.videos` sends and parses it)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.constraints import Name, Prompt, Seed

VideoStatus = Literal["queued", "in_progress", "completed", "failed"]


class VideoCreateRequest(msgspec.Struct, kw_only=True):
    """The multipart form of POST /videos, its text fields typed. ``input_reference`` is an
    uploaded image file (or an ``input_reference[image_url]`` data URL): the video then starts
    from that image, on an image-to-video model, and the image must already have ``size``."""

    prompt: Prompt
    # None: the catalog's first video model of the needed kind (text- or image-to-video).
    model: Name | None = None
    # Clip length in seconds; frames = seconds x the model's frame rate.
    seconds: str = "4"
    # "WIDTHxHEIGHT"; None: the model's native size (text) or the input image's (image).
    size: str | None = None
    input_reference: Annotated[bytes, msgspec.Meta(description="An image file part.")] | None = None
    seed: Seed | None = None  # an omniserve extra (extra_body): the same seed gives the same video


class VideoError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class Video(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["video"] = "video"
    model: str
    status: VideoStatus
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    prompt: str | None = None
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
