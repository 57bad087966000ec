"""Frames to MP4, WebM and GIF through PyAV, read back with PyAV; frame interpolation by blending."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from engines.video.encoding import VIDEO_TYPES, VideoType, encode_video, interpolate_frames

CODECS = {"mp4": ("mp4", "h264"), "webm": ("webm", "vp9"), "gif": ("gif", "gif")}


def frames(count: int = 5, size: tuple[int, int] = (64, 48), seed: int = 0) -> np.ndarray:
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def decoded(data: bytes) -> tuple[str, str, list[np.ndarray], float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return container.format.name, stream.codec_context.name, images, float(stream.average_rate or 0)


@pytest.mark.parametrize("video_type", VIDEO_TYPES)
def test_each_type_decodes_with_its_frames_size_and_codec(video_type: VideoType) -> None:
    data = encode_video(frames(), 8, video_type)
    container, codec, images, rate = decoded(data)
    assert CODECS[video_type][0] in container.split(",")
    assert codec == CODECS[video_type][1]
    assert len(images) == 5
    assert images[0].shape == (48, 64, 3)
    if video_type != "gif":  # GIF counts delays in hundredths of a second: 8 fps is 12 or 13
        assert rate == 8


@pytest.mark.parametrize("video_type", VIDEO_TYPES)
def test_equal_frames_give_equal_bytes(video_type: VideoType) -> None:
    assert encode_video(frames(), 6, video_type) == encode_video(frames(), 6, video_type)
    assert encode_video(frames(), 6, video_type) != encode_video(frames(seed=1), 6, video_type)


def test_the_picture_survives_lossy_encoding() -> None:
    # Smooth content, as generated video is: H.264 at its default quality keeps it close.
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    smooth = np.broadcast_to(ramp[None, None, :, None], (3, 48, 64, 3)).astype(np.uint8).copy()
    _, _, images, _ = decoded(encode_video(smooth, 8, "mp4"))
    assert np.abs(images[1].astype(int) - smooth[1].astype(int)).mean() < 3


def test_interpolation_blends_a_frame_between_each_pair() -> None:
    source = frames(3)
    out = interpolate_frames(source)
    assert out.shape == (5, 48, 64, 3)
    assert np.array_equal(out[0::2], source)
    expected = (source[0].astype(int) + source[1].astype(int) + 1) // 2
    assert np.array_equal(out[1], expected.astype(np.uint8))
    assert interpolate_frames(source[:1]).shape == (1, 48, 64, 3)
