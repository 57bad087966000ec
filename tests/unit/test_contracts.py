"""The declared contracts: every POST route's request body in the OpenAPI document, bodies
decoded as the clients send them (explicit nulls), and the fixed ranges of the schemas refused
with the error code, param and message of each API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from schemas.constraints import ImageSide, refusal
from schemas.errors import ApiError, ErrorCode
from schemas.v3.images import Txt2ImgBody
from server.app import create_app
from server.validation import convert, decode_task_body, validation_error
from tests.unit.conftest import make_state
from tests.unit.test_image_tasks import poll

TXT2IMG = {"model_name": "fake-sd", "prompt": "a red barn", "width": 128, "height": 128, "steps": 2}


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[AsyncTestClient, str]]:
    """A server with an API key (the vendor APIs take it in a header or in the body)."""
    state = make_state(tmp_path)
    _, key = state.keystore.create("tester")
    async with AsyncTestClient(create_app(state)) as client:
        await state.load_task  # type: ignore[misc]
        yield client, key


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = document["components"]["schemas"][name]
    return schema


async def test_every_post_route_declares_its_request_body(client: AsyncTestClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    posts = {path: item["post"] for path, item in document["paths"].items() if "post" in item}
    assert {"/v3/async/txt2img", "/api/v3/text2img", "/api/novassium/v1/generate", "/v1/videos"} <= set(posts)
    undeclared = []
    # OpenAI's cancel takes no body: the batch is named by the path.
    bodiless = {f"{prefix}/batches/{{batch_id}}/cancel" for prefix in ("/v1", "/openai/v1")}
    assert bodiless <= set(posts)
    for path, operation in posts.items():
        if path in bodiless:
            continue
        content = operation.get("requestBody", {}).get("content", {})
        schemas = [_resolve(document, media["schema"]) for media in content.values()]
        if not schemas or not all(schema.get("properties") for schema in schemas):
            undeclared.append(path)
    assert undeclared == []
    # The form routes declare the form, not JSON.
    for path in ("/v1/images/edits", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/videos"):
        assert list(posts[path]["requestBody"]["content"]) == ["multipart/form-data"], path
    edit = _resolve(document, posts["/v1/images/edits"]["requestBody"]["content"]["multipart/form-data"]["schema"])
    assert {"image", "mask", "prompt", "model", "n"} <= set(edit["properties"])
    # A declared range is in the document too.
    txt2img = _resolve(document, posts["/v3/async/txt2img"]["requestBody"]["content"]["application/json"]["schema"])
    request = _resolve(document, txt2img["properties"]["request"])
    assert (request["properties"]["width"]["minimum"], request["properties"]["width"]["maximum"]) == (128, 2048)


async def test_v3_reads_explicit_nulls_as_not_given(client: AsyncTestClient) -> None:
    # What novita-client sends for the options left out: every field, null.
    nulls = {
        "negative_prompt": None,
        "sd_vae": None,
        "loras": None,
        "embeddings": None,
        "image_num": None,
        "seed": None,
        "clip_skip": None,
        "guidance_scale": None,
        "sampler_name": None,
        "hires_fix": None,
        "refiner": None,
    }
    extra = {"response_image_type": None, "webhook": None, "custom_storage": None, "enterprise_plan": None}
    submitted = await client.post("/v3/async/txt2img", json={"request": {**TXT2IMG, **nulls}, "extra": extra})
    assert submitted.status_code == 200, submitted.text
    result = await poll(client, submitted.json()["task_id"])
    assert result["task"]["status"] == "TASK_STATUS_SUCCEED"
    assert [image["image_type"] for image in result["images"]] == ["png"]  # the default applied


async def test_sdapi_reads_nulls_and_empty_strings_as_not_given(keyed: tuple[AsyncTestClient, str]) -> None:
    client, key = keyed
    body = {
        "key": key,
        "prompt": "a red barn",
        "width": "128",
        "height": "128",
        "num_inference_steps": "2",
        "seed": None,
        "webhook": None,
        "track_id": None,
        "negative_prompt": "",
        "model_id": "fake-sd",
    }
    response = await client.post("/api/v3/text2img", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("success", "processing")
    assert response.json()["meta"]["W"] == 128


async def test_an_empty_body_is_refused_on_v3_and_reads_as_defaults_on_the_vendor_apis(
    keyed: tuple[AsyncTestClient, str],
) -> None:
    client, key = keyed
    empty = await client.post("/v3/async/txt2img", content=b"", headers={"Authorization": f"Bearer {key}"})
    assert empty.status_code == 400
    assert (empty.json()["reason"], empty.json()["metadata"]) == ("INVALID_REQUEST_BODY", {})
    assert "not valid JSON" in empty.json()["message"]
    # The Stable Diffusion API's key travels in the body: an empty one has none.
    keyless = await client.post("/api/v3/fetch/some-id", content=b"")
    assert keyless.status_code == 401 and keyless.json()["message"] == "Invalid Api Key"


async def test_novassium_checks_the_key_before_the_body(keyed: tuple[AsyncTestClient, str]) -> None:
    client, key = keyed
    missing = await client.post("/api/novassium/v1/generate", content=b"{not json")
    assert missing.status_code == 401
    assert missing.json() == {"success": False, "message": "API key is missing.", "code": "missing_api_key"}
    malformed = await client.post("/api/novassium/v1/generate", content=b"{not json", headers={"X-API-Key": key})
    assert malformed.status_code == 400 and malformed.json()["code"] == "missing_parameters"


@pytest.mark.parametrize(
    ("path", "body", "code", "param", "message"),
    [
        (
            "/v3/async/txt2img",
            {"request": {**TXT2IMG, "width": 64}},
            "INVALID_IMAGE_SIZE",
            "request.width",
            "request.width must be a multiple of 8 between 128 and 2048.",
        ),
        (
            "/v3/async/txt2img",
            {"request": {**TXT2IMG, "hires_fix": {"target_width": 132, "target_height": 256}}},
            "INVALID_IMAGE_SIZE",
            "request.hires_fix.target_width",
            "request.hires_fix.target_width must be a multiple of 8 between 128 and 2048.",
        ),
        (
            "/v3/async/txt2img",
            {"request": {**TXT2IMG, "steps": 101}},
            "INVALID_REQUEST_BODY",
            "request.steps",
            "request.steps must be between 1 and 100.",
        ),
        (
            "/v3/async/txt2img",
            {"request": {**TXT2IMG, "prompt": "   "}},
            "INVALID_REQUEST_BODY",
            "request.prompt",
            "request.prompt must not be blank.",
        ),
        (
            "/v3/async/txt2img",
            {"request": {**TXT2IMG, "loras": [{"model_name": "ok-lora", "strength": 1.5}]}},
            "INVALID_REQUEST_BODY",
            "request.loras",
            "request.loras[0].strength must be between 0 and 1.",
        ),
        (
            "/v3/async/txt2img",
            {"request": TXT2IMG, "extra": {"nsfw_detection_level": 3}},
            "INVALID_REQUEST_BODY",
            "extra.nsfw_detection_level",
            "extra.nsfw_detection_level must be between 0 and 2.",
        ),
        (
            "/v3/async/upscale",
            {"request": {"model_name": "x", "image_base64": "", "scale_factor": 1}},
            "INVALID_REQUEST_BODY",
            "request.scale_factor",
            "request.scale_factor must be above 1 and at most 4.",
        ),
        (
            "/v3/async/txt2speech",
            {"request": {"voice_id": "Emily", "language": "en-US", "texts": ["fine", "x" * 513]}},
            "INVALID_REQUEST_BODY",
            "request.texts",
            "request.texts[1] must hold at most 512 characters and not be blank.",
        ),
        (
            "/v3/async/txt2video",
            {"model_name": "x", "prompts": [{"prompt": "a", "frames": 4}], "width": 60},
            "INVALID_IMAGE_SIZE",
            "width",
            "width must be a multiple of 8 between 64 and 1280.",
        ),
        (
            "/v3/async/img2video",
            {"model_name": "x", "image_file": "", "motion_bucket_id": 0},
            "INVALID_REQUEST_BODY",
            "motion_bucket_id",
            "motion_bucket_id must be between 1 and 255.",
        ),
    ],
)
async def test_v3_ranges_keep_their_code_and_param(
    client: AsyncTestClient, path: str, body: dict[str, Any], code: str, param: str, message: str
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json() == {"code": 400, "reason": code, "message": message, "metadata": {"param": param}}


async def test_openai_ranges_keep_their_code_and_param(client: AsyncTestClient) -> None:
    steps = await client.post("/v1/images/generations", json={"model": "fake-sd", "prompt": "x", "steps": 0})
    assert steps.status_code == 400
    assert steps.json()["error"] == {
        "message": "steps must be between 1 and 100.",
        "type": "invalid_request_error",
        "param": "steps",
        "code": "INVALID_REQUEST_BODY",
    }
    form = {"model": "fake-sd", "prompt": "x", "strength": "0"}
    edit = await client.post("/v1/images/edits", data=form, files={"image": ("in.png", b"-")})
    assert edit.status_code == 400
    assert (edit.json()["error"]["code"], edit.json()["error"]["param"]) == ("INVALID_REQUEST_BODY", "strength")
    assert edit.json()["error"]["message"] == "strength must be above 0 and at most 1."


async def test_vendor_ranges_keep_the_vendors_messages(keyed: tuple[AsyncTestClient, str]) -> None:
    client, key = keyed
    wide = await client.post("/api/v3/text2img", json={"key": key, "prompt": "x", "width": "2000"})
    assert wide.status_code == 400
    assert wide.json() == {"status": "error", "message": {"width": ["The width must be between 128 and 1024."]}}
    seed = await client.post("/api/v3/text2img", json={"key": key, "prompt": "x", "seed": "-5"})
    assert seed.json() == {"status": "error", "message": {"seed": ["The seed must be between 0 and 4294967294."]}}
    tall = await client.post("/api/novassium/v1/generate", json={"height": 20000}, headers={"X-API-Key": key})
    assert tall.status_code == 400
    assert tall.json() == {
        "success": False,
        "message": "Image dimensions must be between 64 and 16,384 pixels.",
        "code": "missing_parameters",
    }


class _Declared(msgspec.Struct, kw_only=True):
    side: ImageSide = 512
    sides: list[ImageSide] = []
    named: Annotated[int, msgspec.Meta(ge=0, extra=refusal(message="Named must be positive.", param="other"))] = 0
    within: Annotated[list[Annotated[str, msgspec.Meta(max_length=2)]], msgspec.Meta(extra=refusal(at_field=True))] = []


@pytest.mark.parametrize(
    ("fields", "code", "param", "message"),
    [
        ({"side": 7}, ErrorCode.INVALID_IMAGE_SIZE, "side", "side must be a multiple of 8 between 128 and 2048."),
        (
            {"sides": [128, 4096]},
            ErrorCode.INVALID_IMAGE_SIZE,
            "sides[1]",
            "sides[1] must be a multiple of 8 between 128 and 2048.",
        ),
        ({"named": -1}, ErrorCode.INVALID_REQUEST_BODY, "other", "Named must be positive."),
        (
            {"within": ["ok", "long"]},
            ErrorCode.INVALID_REQUEST_BODY,
            "within",
            "within[1] must hold at most 2 characters.",
        ),
        # A value of the wrong type is not a range failure: the declared refusal does not apply.
        (
            {"side": "big"},
            ErrorCode.INVALID_REQUEST_BODY,
            "side",
            "Invalid value for 'side': Expected `int`, got `str`",
        ),
    ],
)
def test_a_constraint_is_refused_as_its_field_declares(
    fields: dict[str, Any], code: ErrorCode, param: str, message: str
) -> None:
    with pytest.raises(ApiError) as caught:
        convert(fields, _Declared)
    assert (caught.value.code, caught.value.param, caught.value.message) == (code, param, message)


def test_missing_fields_and_nulls_in_task_bodies() -> None:
    body = decode_task_body(
        b'{"request": {"model_name": "m", "prompt": "p", "seed": null, "loras": null}}', Txt2ImgBody
    )
    assert (body.request.seed, body.request.loras) == (-1, None)
    with pytest.raises(ApiError) as caught:
        decode_task_body(b'{"request": {"model_name": "m", "prompt": null}}', Txt2ImgBody)
    assert (caught.value.code, caught.value.param) == (ErrorCode.INVALID_REQUEST_BODY, "request.prompt")
    assert caught.value.message == "Missing required field 'request.prompt'."
    # Without the body type, a range failure is still refused, in msgspec's own words.
    with pytest.raises(msgspec.ValidationError) as failed:
        msgspec.convert({"side": 1}, _Declared)
    generic = validation_error(failed.value)
    assert (generic.code, generic.param) == (ErrorCode.INVALID_REQUEST_BODY, "side")
    assert generic.message == "Invalid value for 'side': Expected `int` >= 128"
