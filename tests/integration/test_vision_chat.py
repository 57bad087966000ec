"""Chat with images on the real vLLM engine: the tiny random vision-language demo model."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engines.admission import AdmissionPolicy
from engines.registry import ModelRegistry, vllm_factory
from engines.scheduler import Scheduler
from engines.vision_demo import IMAGE_SEQ_LEN, VLM_NAME, vision_demo_catalog
from schemas.errors import ApiError
from schemas.openai.chat import ChatCompletionRequest
from server.capabilities.text import TextCapability
from server.settings import Limits

pytestmark = pytest.mark.integration

# Idefics3 wraps an untiled image's tokens in <fake_token_around_image><global-img> ... <fake_token_around_image>.
TOKENS_PER_IMAGE = IMAGE_SEQ_LEN + 3


def png_data_url(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request(*images: str, **fields: Any) -> ChatCompletionRequest:
    content: list[dict[str, Any]] = [{"type": "text", "text": "What is in the picture?"}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    body = {"model": VLM_NAME, "messages": [{"role": "user", "content": content}], **fields}
    return msgspec.convert(body, ChatCompletionRequest)


@pytest.fixture(scope="module")
async def vision(demo_root: Path) -> AsyncIterator[TextCapability]:
    registry = ModelRegistry(vision_demo_catalog(demo_root), {"vllm": vllm_factory(cpu_threads=0)})
    scheduler = Scheduler(registry, AdmissionPolicy())
    await scheduler.load_all()
    assert scheduler.all_resident(), scheduler.residency()
    yield TextCapability(scheduler, Limits())
    await scheduler.unload_all()


async def test_image_tokens_count_in_the_prompt_and_generation_runs(vision: TextCapability) -> None:
    text_only = await vision.chat.create(request(max_tokens=4, ignore_eos=True))
    one = await vision.chat.create(request(png_data_url((200, 20, 20)), max_tokens=6, ignore_eos=True))
    two = await vision.chat.create(
        request(png_data_url((200, 20, 20)), png_data_url((0, 0, 255), (90, 120)), max_tokens=6, ignore_eos=True)
    )
    assert one.usage.prompt_tokens == text_only.usage.prompt_tokens + TOKENS_PER_IMAGE
    assert two.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 * TOKENS_PER_IMAGE
    for result in (one, two):
        assert result.usage.completion_tokens == 6
        assert result.choices[0].finish_reason == "length"
        assert result.choices[0].message.content


async def test_streamed_usage_counts_the_image(vision: TextCapability) -> None:
    whole = await vision.chat.create(request(png_data_url((10, 200, 10)), max_tokens=3, ignore_eos=True))
    events = await vision.chat.stream(
        request(
            png_data_url((10, 200, 10)),
            max_tokens=3,
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = None
    async for event in events:
        for line in event.decode().splitlines():
            payload = line.removeprefix("data: ")
            if line.startswith("data: ") and payload != "[DONE]":
                usage = msgspec.json.decode(payload).get("usage") or usage
    assert usage is not None
    assert usage["prompt_tokens"] == whole.usage.prompt_tokens
    assert usage["completion_tokens"] == 3


async def test_undecodable_image_names_its_part(vision: TextCapability) -> None:
    garbage = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    with pytest.raises(ApiError) as caught:
        await vision.chat.create(request(png_data_url((1, 2, 3)), garbage, max_tokens=2))
    assert caught.value.status == 400
    assert caught.value.param == "messages[0].content[2].image_url"
