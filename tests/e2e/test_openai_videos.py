"""OpenAI's video jobs API against a running omniserve on the tiny demo models, through the
openai SDK: create, poll, download, and read the file back with PyAV."""

from __future__ import annotations

import io

import av
import openai
import pytest
from PIL import Image

from tests.e2e.conftest import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_url, api_key=server.api_key, max_retries=0, timeout=120)


def probe(data: bytes) -> tuple[str, int, tuple[int, int], float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, count, (stream.width, stream.height), float(stream.average_rate or 0)


def test_create_retrieve_download(client: openai.OpenAI) -> None:
    video = client.videos.create(model="demo-animatediff", prompt="a paper boat on a river", seconds="1", size="80x64")
    assert video.object == "video" and video.status in ("queued", "in_progress", "completed")
    assert (video.model, video.seconds, video.size) == ("demo-animatediff", "1", "80x64")
    done = client.videos.poll(video.id, poll_interval_ms=200)
    assert done.status == "completed", done.error
    assert done.progress == 100 and done.completed_at is not None
    assert client.videos.retrieve(video.id).status == "completed"
    content = client.videos.download_content(video.id)
    assert probe(content.read()) == ("h264", 4, (80, 64), 4.0)  # 1 s at the demo model's 4 fps


def test_image_to_video_from_a_reference_image(client: openai.OpenAI) -> None:
    buffer = io.BytesIO()
    Image.linear_gradient("L").convert("RGB").resize((96, 64)).save(buffer, format="PNG")
    video = client.videos.create(
        prompt="animate it", input_reference=("ref.png", buffer.getvalue(), "image/png"), seconds="1", size="96x64"
    )
    assert video.model == "demo-svd"
    done = client.videos.poll(video.id, poll_interval_ms=200)
    assert done.status == "completed", done.error
    assert probe(client.videos.download_content(video.id).read())[1:3] == (4, (96, 64))


def test_errors_are_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.videos.create(model="demo-animatediff", prompt="x", size="30x30")
    assert bad.value.body["param"] == "size"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("no-such-video")
