"""Prometheus metrics at /metrics: the request-time instruments of server.telemetry, plus
collectors that read the scheduler, task store and webhook sender at scrape time (queue
depths, residency, memory, tasks by status) so the hot path keeps no extra books. The task
store is read before rendering (``refresh``): it may be a Redis across the network."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from engines.residency import Residency
from engines.scheduler import Scheduler
from server.keystore import StoreUnavailable
from server.tasks.models import TaskStatus
from server.tasks.store import TaskStore
from server.tasks.webhooks import WebhookSender
from server.telemetry import instruments
from server.telemetry.loop_lag import LoopLagProbe


class _EngineCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        resident = GaugeMetricFamily("omniserve_model_resident", "1 when the model is loaded", labels=["model"])
        state = GaugeMetricFamily(
            "omniserve_model_state", "1 for the model's residency state, 0 for the others", labels=["model", "state"]
        )
        memory = GaugeMetricFamily(
            "omniserve_model_memory_bytes", "Device memory the model is known to hold", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "omniserve_queue_waiting_requests", "Requests waiting for a slot on the model", labels=["model"]
        )
        active = GaugeMetricFamily(
            "omniserve_queue_active_requests", "Requests holding a slot on the model", labels=["model"]
        )
        aborted = CounterMetricFamily(
            "omniserve_engine_aborted_requests", "Engine requests aborted before they finished", labels=["model"]
        )
        unfinished = GaugeMetricFamily(
            "omniserve_engine_unfinished_requests", "Requests the engine holds right now", labels=["model"]
        )
        evictions = CounterMetricFamily(
            "omniserve_model_evictions",
            "Models unloaded to make room (lru), for idleness (idle) or by an operator (admin)",
            labels=["model", "reason"],
        )
        loads = SummaryMetricFamily("omniserve_model_load_seconds", "Time taken by model loads", labels=["model"])
        sleeps = CounterMetricFamily(
            "omniserve_model_sleeps", "Evictions done by sleeping the model (kept on the host)", labels=["model"]
        )
        wakes = SummaryMetricFamily(
            "omniserve_model_wake_seconds", "Time taken to wake sleeping models (not loads)", labels=["model"]
        )
        batches = CounterMetricFamily(
            "omniserve_engine_batches", "Engine calls that decoded queued requests together", labels=["model"]
        )
        batched = CounterMetricFamily(
            "omniserve_engine_batched_requests",
            "Requests decoded by those calls (mean batch size: ratio)",
            labels=["model"],
        )
        residency = self.scheduler.residency()
        queues = self.scheduler.queue_state()
        report = self.scheduler.report().models
        for engine in self.scheduler.registry:
            name = engine.spec.name
            resident.add_metric([name], 1.0 if residency[name] is Residency.RESIDENT else 0.0)
            for value in Residency:
                state.add_metric([name, value.value], 1.0 if residency[name] is value else 0.0)
            if residency[name] is Residency.RESIDENT:
                memory.add_metric([name], float(engine.memory_bytes()))
            queued, running = queues[name]
            waiting.add_metric([name], float(queued))
            active.add_metric([name], float(running))
            if hasattr(engine, "aborted_requests"):
                aborted.add_metric([name], float(engine.aborted_requests))
            if hasattr(engine, "unfinished_requests"):
                unfinished.add_metric([name], float(engine.unfinished_requests()))
            if hasattr(engine, "batched_jobs"):
                batches.add_metric([name], float(getattr(engine, "batches_run", 0)))
                batched.add_metric([name], float(engine.batched_jobs))
            for reason in ("lru", "idle", "admin"):
                evictions.add_metric([name, reason], float(report[name].evictions.get(reason, 0)))
            loads.add_metric([name], count_value=report[name].loads, sum_value=report[name].total_load_s)
            sleeps.add_metric([name], float(report[name].sleeps))
            wakes.add_metric([name], count_value=report[name].wakes, sum_value=report[name].total_wake_s)
        yield from (resident, state, memory, waiting, active, aborted, unfinished, evictions, loads, sleeps, wakes)
        yield from (batches, batched)


class _DeviceCollector(Collector):
    """GPU memory in use and in total, per device, where torch has initialised CUDA (never
    imported or initialised here: a scrape must not allocate a CUDA context)."""

    def collect(self) -> Iterator[Metric]:
        torch: Any = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return
        used = GaugeMetricFamily("omniserve_device_memory_used_bytes", "Device memory in use", labels=["device"])
        total = GaugeMetricFamily("omniserve_device_memory_total_bytes", "Device memory in total", labels=["device"])
        for index in range(torch.cuda.device_count()):
            free, capacity = torch.cuda.mem_get_info(index)
            used.add_metric([f"cuda:{index}"], float(capacity - free))
            total.add_metric([f"cuda:{index}"], float(capacity))
        yield used
        yield total


class _TaskCollector(Collector):
    def __init__(self, store: TaskStore, webhooks: WebhookSender) -> None:
        self.store = store
        self.webhooks = webhooks
        # Read by ``refresh`` before each render; None: the store could not be read.
        self.counts: dict[TaskStatus, int] | None = None

    async def refresh(self) -> None:
        try:
            self.counts = await self.store.status_counts()
        except StoreUnavailable:  # a shared store that is down: the scrape goes on without it
            self.counts = None

    def collect(self) -> Iterator[Metric]:
        if self.counts is not None:
            tasks = GaugeMetricFamily("omniserve_tasks", "/v3 tasks in the store by status", labels=["status"])
            for status in TaskStatus:
                tasks.add_metric([status.value], float(self.counts.get(status, 0)))
            yield tasks
        deliveries = CounterMetricFamily(
            "omniserve_webhook_deliveries",
            "Webhook deliveries by outcome (retries included in one)",
            labels=["outcome"],
        )
        deliveries.add_metric(["delivered"], float(self.webhooks.delivered))
        deliveries.add_metric(["failed"], float(self.webhooks.failed))
        yield deliveries


class Metrics:
    def __init__(
        self,
        scheduler: Scheduler,
        *,
        tasks: TaskStore | None = None,
        webhooks: WebhookSender | None = None,
        loop_lag: LoopLagProbe | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        for instrument in instruments.ALL:
            self.registry.register(instrument)
        self.registry.register(_EngineCollector(scheduler))
        self.registry.register(_DeviceCollector())
        # process_resident_memory_bytes and friends: host memory when no device is in use.
        self.registry.register(ProcessCollector(registry=None))
        self._tasks: _TaskCollector | None = None
        if tasks is not None and webhooks is not None:
            self._tasks = _TaskCollector(tasks, webhooks)
            self.registry.register(self._tasks)
        if loop_lag is not None:
            self.registry.register(loop_lag)

    async def refresh(self) -> None:
        """Read what the collectors cannot read inline (the task counts), before ``render``."""
        if self._tasks is not None:
            await self._tasks.refresh()

    def render(self) -> bytes:
        return generate_latest(self.registry)
