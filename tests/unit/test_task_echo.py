"""What a task's poll and webhook echo of its request (``debug_info.request_info``) may hold:
only the fields its schema declares, no input image anywhere, and a cache that holds echoes,
not bodies."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient

from server.tasks.models import Task, TaskType
from server.tasks.results import ECHO_SCHEMAS, EchoCache, is_image_field, request_echo

IMAGE = "iVBORw0KGgo" + "A" * 5000  # stands for megabytes of base64
SECRET = "s" * 4000


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


BODIES: dict[TaskType, dict[str, Any]] = {
    TaskType.IMG_TO_IMG: {
        "request": {
            "model_name": "m",
            "prompt": "p",
            "image_base64": IMAGE,
            "controlnet": {
                "units": [
                    {"model_name": "c1", "image_base64": IMAGE, "unknown": SECRET},
                    {"model_name": "c2", "image_base64": IMAGE},
                ]
            },
            "sneaky": SECRET,
        },
        "extra": {"webhook": {"url": "https://h/x"}, "padding": SECRET},
        "top_level_junk": {"nested": [SECRET]},
    },
    TaskType.INPAINTING: {
        "request": {"model_name": "m", "prompt": "p", "image_base64": IMAGE, "mask_image_base64": IMAGE}
    },
    TaskType.UPSCALE: {"request": {"model_name": "u", "image_base64": IMAGE, "scale_factor": 2}},
    TaskType.IMG_TO_VIDEO: {"model_name": "v", "image_file": IMAGE, "frames_num": 4, "extra_field": SECRET},
    TaskType.TXT_TO_IMG: {
        "request": {"model_name": "m", "prompt": "p", "width": 128},
        "extra": {"enterprise_plan": {"enabled": True, "metadata": {"any": IMAGE}}},
    },
}


def test_no_input_image_and_no_unknown_field_is_echoed() -> None:
    for task_type, body in BODIES.items():
        echo = json.loads(request_echo(task_type, json.dumps(body).encode()))
        assert all(len(s) < 200 for s in _strings(echo)), (task_type, echo)
        assert "sneaky" not in json.dumps(echo) and "top_level_junk" not in echo and "extra_field" not in echo
    img2img = json.loads(request_echo(TaskType.IMG_TO_IMG, json.dumps(BODIES[TaskType.IMG_TO_IMG]).encode()))
    units = img2img["request"]["controlnet"]["units"]
    assert [unit["model_name"] for unit in units] == ["c1", "c2"]  # known fields stay
    assert units[0]["image_base64"] == f"<{len(IMAGE)} base64 characters>"
    assert "unknown" not in units[0] and "padding" not in img2img["extra"]
    assert img2img["extra"]["webhook"] == {"url": "https://h/x"}


def test_every_image_field_of_every_task_schema_is_elided() -> None:
    """A new image field in a body schema must be covered by the elision rule."""

    def fields(info: Any, path: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if isinstance(info, msgspec.inspect.Metadata):
            return fields(info.type, path)
        if isinstance(info, msgspec.inspect.StructType):
            for field in info.fields:
                if isinstance(field.type, msgspec.inspect.StrType) or (
                    isinstance(field.type, msgspec.inspect.Metadata)
                    and isinstance(field.type.type, msgspec.inspect.StrType)
                ):
                    found.append((f"{path}.{field.encode_name}", field.encode_name))
                found += fields(field.type, f"{path}.{field.encode_name}")
        elif isinstance(info, msgspec.inspect.UnionType):
            for member in info.types:
                found += fields(member, path)
        elif isinstance(info, msgspec.inspect.ListType):
            found += fields(info.item_type, path + "[]")
        return found

    for schema in ECHO_SCHEMAS.values():
        for path, name in fields(msgspec.inspect.type_info(schema), schema.__name__):
            looks_like_an_image = ("image" in name or "mask" in name or "base64" in name) and not name.endswith(
                ("_type", "_mode")
            )
            assert is_image_field(name) == looks_like_an_image, path


def test_the_cache_is_keyed_by_task_and_bounded() -> None:
    cache = EchoCache(size=8)
    body = json.dumps({"request": {"model_name": "m", "image_base64": "A" * 1_000_000}}).encode()
    for _ in range(50):
        cache(Task(task_type=TaskType.UPSCALE, model="u", request=body))
    assert len(cache) == 8
    assert sum(len(echo) for echo in cache._echoes.values()) < 8 * 200  # echoes, not bodies
    task = Task(task_type=TaskType.UPSCALE, model="u", request=body)
    assert cache(task) is cache(task)  # a poll of the same task reuses its echo


async def test_a_polled_img2img_task_echoes_no_input_image(client: AsyncTestClient) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (128, 128)).save(buffer, format="PNG")
    png = base64.b64encode(buffer.getvalue()).decode()
    body = {
        "request": {
            "model_name": "fake-sd",
            "prompt": "p",
            "steps": 2,
            "image_base64": png,
            "unknown": "x" * 1000,
        }
    }
    submitted = await client.post("/v3/async/img2img", json=body)
    assert submitted.status_code == 200, submitted.text
    polled = await client.get("/v3/async/task-result", params={"task_id": submitted.json()["task_id"]})
    echo = polled.json()["extra"]["debug_info"]["request_info"]
    assert png not in echo and "unknown" not in echo and "<" in echo
