"""Prometheus metrics read from the engines at scrape time (no per-request bookkeeping)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from engines.scheduler import Residency, Scheduler


class _EngineCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        resident = GaugeMetricFamily("omniserve_model_resident", "1 when the model is loaded", labels=["model"])
        aborted = CounterMetricFamily(
            "omniserve_engine_aborted_requests", "Engine requests aborted before they finished", labels=["model"]
        )
        unfinished = GaugeMetricFamily(
            "omniserve_engine_unfinished_requests", "Requests the engine holds right now", labels=["model"]
        )
        residency = self.scheduler.residency()
        for engine in self.scheduler.registry:
            name = engine.spec.name
            resident.add_metric([name], 1.0 if residency[name] is Residency.RESIDENT else 0.0)
            if hasattr(engine, "aborted_requests"):
                aborted.add_metric([name], float(engine.aborted_requests))
            if hasattr(engine, "unfinished_requests"):
                unfinished.add_metric([name], float(engine.unfinished_requests()))
        yield resident
        yield aborted
        yield unfinished


class Metrics:
    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(scheduler))

    def render(self) -> bytes:
        return generate_latest(self.registry)
