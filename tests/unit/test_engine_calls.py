"""The one engine-call path: typed lease, error mapping through the adapter's names, charges."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import EmbeddingEngine, ImageEngine
from engines.errors import InvalidJob, JobProblem, Overloaded
from schemas.errors import ApiError, ErrorCode
from server.capabilities.calls import WireNames, catalog_engine, engine_call, resident_engine
from tests.unit.conftest import make_state

V3_LIKE = WireNames(
    {"sampler": "request.sampler_name", "controlnets[].name": "request.controlnet.units[{}].model_name"},
    prefix="request.",
)


def test_wire_names_use_the_table_then_the_prefix() -> None:
    assert V3_LIKE("sampler") == "request.sampler_name"
    assert V3_LIKE("width") == "request.width"
    assert V3_LIKE("controlnets[2].name") == "request.controlnet.units[2].model_name"
    # A list item's field without an entry keeps its own name under the prefix.
    assert V3_LIKE("controlnets[0].image") == "request.controlnets[0].image"
    assert WireNames()("n") == "n"


def test_a_refusal_names_the_field_as_the_family_does() -> None:
    error = V3_LIKE.invalid("sampler", "Unknown sampler 'x'.")
    assert (error.code, error.param, error.message) == (
        ErrorCode.INVALID_REQUEST_BODY,
        "request.sampler_name",
        "Unknown sampler 'x'.",
    )


async def test_an_engine_error_in_the_call_is_mapped_with_the_adapters_names(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    with pytest.raises(ApiError) as caught:
        async with engine_call(state.scheduler, "fake-sd", ImageEngine, "image_generation", names=V3_LIKE):
            raise InvalidJob("bad pixels", "controlnets[1].name", JobProblem.IMAGE_FORMAT)
    error = caught.value
    assert (error.code, error.param) == (ErrorCode.INVALID_IMAGE_FORMAT, "request.controlnet.units[1].model_name")
    assert state.scheduler.report().models["fake-sd"].leases == 0


async def test_an_overloaded_engine_keeps_its_retry_after(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    with pytest.raises(ApiError) as caught:
        async with engine_call(state.scheduler, "fake-sd", ImageEngine, "image_generation"):
            raise Overloaded("busy", retry_after=7.0)
    assert (caught.value.code, caught.value.retry_after) == (ErrorCode.SERVICE_NOT_AVAILABLE, 7.0)


async def test_the_wrong_kind_is_refused_with_the_familys_name_for_the_model(tmp_path: Path) -> None:
    state = make_state(tmp_path)
    names = WireNames({"model": "request.model_name"})
    with pytest.raises(ApiError) as caught:
        catalog_engine(state.scheduler, "fake-chat", ImageEngine, names)
    assert (caught.value.code, caught.value.param) == (ErrorCode.INVALID_REQUEST_BODY, "request.model_name")
    with pytest.raises(ApiError) as caught:
        await resident_engine(state.scheduler, "fake-sd", EmbeddingEngine, names)
    assert caught.value.param == "request.model_name"
    with pytest.raises(ApiError) as caught:
        await resident_engine(state.scheduler, "missing", EmbeddingEngine, names)
    assert (caught.value.code, caught.value.param) == (ErrorCode.MODEL_NOT_FOUND, "request.model_name")


async def test_a_charge_is_settled_by_the_call(tmp_path: Path) -> None:
    state = make_state(tmp_path, accounts={"price_per_image": 1.0})
    key_id = state.keystore.create("meter")[0].id
    state.keystore.set_credits(key_id, 10)
    meter = state.accounts.meter(key_id, state.keystore.account(key_id))
    charge = meter.images(4)
    assert state.keystore.account(key_id).credits == 6  # the worst case, reserved at once
    async with engine_call(state.scheduler, "fake-sd", ImageEngine, "image_generation", charge=charge):
        charge.add(1)
    assert state.keystore.account(key_id).credits == 9  # kept what was made
    failing = meter.images(4)
    with pytest.raises(ApiError):
        async with engine_call(state.scheduler, "fake-sd", ImageEngine, "image_generation", charge=failing):
            failing.add(2)
            raise InvalidJob("no")
    assert state.keystore.account(key_id).credits == 9  # an error gives everything back
