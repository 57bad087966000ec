"""How late the event loop runs a timer: the cost every request pays when some code blocks it.

One background task sleeps a fixed interval and records how much later than asked it woke
up. A loop that is free wakes it within a millisecond; a loop busy with blocking work (a
synchronous call, a long CPU step between awaits) wakes it as late as that work ran, which
every other coroutine waited too. One timer and one histogram observation per interval.

Exported at /metrics as a histogram of every measured delay (cumulative, for rates and
quantiles over time) and as the worst delay since the previous scrape, which a scrape
resets, so a scraper reads the worst stall in the interval it just covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds: from the timer's own jitter (about a millisecond) to a loop stalled for seconds.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class LoopLagProbe(Collector):
    """Start it inside the running loop (``start``) and stop it on shutdown (``stop``)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(
            "omniserve_event_loop_lag",
            "How much later than scheduled the event loop ran a periodic timer",
            unit="seconds",
            buckets=_LAG_BUCKETS,
            registry=None,
        )
        self.max_since_scrape_s = 0.0
        # The scrape reads and resets from a request handler or from the metrics listener's thread.
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def record(self, lag_s: float) -> None:
        self.histogram.observe(lag_s)
        with self._lock:
            self.max_since_scrape_s = max(self.max_since_scrape_s, lag_s)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, loop.time() - due))

    def start(self) -> None:
        """A no-op when the interval is 0 (the probe is off)."""
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self.run(), name="event-loop-lag-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def collect(self) -> Iterator[Metric]:
        yield from self.histogram.collect()
        with self._lock:
            worst, self.max_since_scrape_s = self.max_since_scrape_s, 0.0
        gauge = GaugeMetricFamily(
            "omniserve_event_loop_lag_max_seconds",
            "Worst event loop delay since the previous scrape (a scrape resets it)",
        )
        gauge.add_metric([], worst)
        yield gauge
