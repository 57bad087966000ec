"""The event-loop lag probe sees a coroutine that blocks the loop, in its histogram and its
worst-since-scrape gauge, both directly and through the app's /metrics."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.settings import Settings
from server.telemetry.loop_lag import LoopLagProbe
from tests.unit.test_metrics import scrape, value


def samples(probe: LoopLagProbe) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(probe)
    text = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def block_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # the stall the probe must see


async def test_a_blocked_loop_is_recorded_and_the_max_resets_on_scrape() -> None:
    probe = LoopLagProbe(0.025)
    probe.start()
    try:
        await asyncio.sleep(0.1)
        quiet = samples(probe)
        assert quiet[("omniserve_event_loop_lag_max_seconds", "")] < 0.25
        await block_the_loop(0.3)
        await asyncio.sleep(0.1)
        stalled = samples(probe)
    finally:
        await probe.stop()
    assert stalled[("omniserve_event_loop_lag_max_seconds", "")] >= 0.25
    total = stalled[("omniserve_event_loop_lag_seconds_count", "")]
    below = stalled[("omniserve_event_loop_lag_seconds_bucket", "0.25")]
    assert total - below == 1  # exactly one wake-up came that late
    assert stalled[("omniserve_event_loop_lag_seconds_sum", "")] >= 0.25
    # The scrape reset the worst-since-scrape gauge; the probe is stopped, so nothing new came.
    assert samples(probe)[("omniserve_event_loop_lag_max_seconds", "")] == 0.0


async def test_stop_ends_the_probe_and_interval_zero_turns_it_off() -> None:
    probe = LoopLagProbe(0.01)
    probe.start()
    await asyncio.sleep(0.05)
    await probe.stop()
    count = samples(probe)[("omniserve_event_loop_lag_seconds_count", "")]
    assert count >= 1
    await asyncio.sleep(0.05)
    assert samples(probe)[("omniserve_event_loop_lag_seconds_count", "")] == count
    off = LoopLagProbe(0)
    off.start()
    await asyncio.sleep(0.05)
    assert samples(off)[("omniserve_event_loop_lag_seconds_count", "")] == 0


async def test_metrics_endpoint_reports_a_blocked_loop(client: AsyncTestClient) -> None:
    # The test client runs the app on its own loop in another thread: block that loop.
    probe = client.app_state.loop_lag  # type: ignore[attr-defined]
    assert probe._task is not None
    server_loop = probe._task.get_loop()
    await asyncio.sleep(0.1)
    await scrape(client)  # resets the worst-since-scrape gauge
    server_loop.call_soon_threadsafe(time.sleep, 0.3)
    await asyncio.sleep(0.5)
    after = await scrape(client)
    assert value(after, "omniserve_event_loop_lag_max_seconds") >= 0.25
    assert value(after, "omniserve_event_loop_lag_seconds_count") >= 1


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="loop_lag_interval_s"):
        msgspec.convert({"metrics": {"loop_lag_interval_s": -1}}, Settings)
