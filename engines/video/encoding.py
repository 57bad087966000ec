"""Frames to files: MP4 (H.264), WebM (VP9) and GIF through PyAV, and frame interpolation.

Blocking and CPU-bound: callers run these on a worker thread. Output is bit-exact for the same
frames (no random container ids, no timestamps), so the same seed gives the same file.
"""

from __future__ import annotations

import io
from fractions import Fraction
from typing import Any, Literal

VideoType = Literal["mp4", "webm", "gif"]
VIDEO_TYPES: tuple[VideoType, ...] = ("mp4", "webm", "gif")

# container format, codec, pixel format. yuv420p is what every player decodes; GIF takes a
# fixed 8-bit palette (rgb8), which ffmpeg's GIF encoder writes without a palette pass.
_FORMATS: dict[str, tuple[str, str, str]] = {
    "mp4": ("mp4", "libx264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "gif": ("gif", "gif", "rgb8"),
}
_CODEC_OPTIONS: dict[str, dict[str, str]] = {"libx264": {"x264-params": "bframes=0"}}


def encode_video(frames: Any, fps: float, video_type: VideoType) -> bytes:
    """`frames` (uint8, (frames, height, width, 3), RGB) as a `video_type` file at `fps`.

    yuv420p halves the chroma resolution, so H.264 and VP9 need even sides; callers keep sizes
    at multiples of 8.
    """
    import av

    container_format, codec, pixel_format = _FORMATS[video_type]
    count, height, width, _ = frames.shape
    buffer = io.BytesIO()
    # bitexact: no encoder version string or random ids in the file, so equal frames give equal bytes.
    with av.open(buffer, mode="w", format=container_format, container_options={"fflags": "+bitexact"}) as output:
        # One encoder thread: x264 and libvpx results can depend on how frames were split
        # across threads. Even on one thread, x264's B-frame decisions gave a different file for
        # equal frames now and then (7 in 1,000 encodes across 25 processes; none in 1,000 with
        # B-frames off), so H.264 here uses none.
        options = {"threads": "1", **_CODEC_OPTIONS.get(codec, {})}
        stream = output.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.codec_context.thread_count = 1
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frames[index], format="rgb24")
            output.mux(stream.encode(frame))
        output.mux(stream.encode())  # flush the encoder's delayed frames
    return buffer.getvalue()


def interpolate_frames(frames: Any) -> Any:
    """Frame interpolation by blending: between each pair of neighbouring frames, their average.
    n frames become 2n - 1; played at twice the frame rate the clip keeps its length and moves
    more smoothly. It is a cross-fade, not motion-compensated: fast motion shows as a double image."""
    import numpy as np

    if len(frames) < 2:
        return frames
    count, height, width, channels = frames.shape
    wide = frames.astype(np.uint16)
    middles = ((wide[:-1] + wide[1:] + 1) // 2).astype(np.uint8)
    out = np.empty((2 * count - 1, height, width, channels), dtype=np.uint8)
    out[0::2] = frames
    out[1::2] = middles
    return out
