"""Prometheus /metrics: the rounds as they are when scraped, plus the service's own request counts.

The round metrics are computed at scrape time from the same readers the API uses (a custom collector), so
they can never disagree with the page and need no background thread. Samples and sandbox runs are
counters over each round's collected trees: Prometheus' rate() turns them into per-second figures.
GPU-hours are what a cluster round's Jobs held (GPUs requested times running time); multiply by a price in
the query for cost. Tokens are not exported: no step records them yet, and a made-up estimate would be read
as a measurement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agentq.serve.summary import normalise

PHASES = ("Pending", "Initializing", "Collecting", "Preferences", "Training", "Merging", "Evaluating", "Succeeded",
          "Failed")


class RoundCollector:
    """Round gauges and counters, read from `rounds()` (status) and `artifacts` (summaries, trees)."""

    def __init__(self, rounds: Callable[[], list[dict[str, Any]]], artifacts: Any) -> None:
        self.rounds = rounds
        self.artifacts = artifacts

    def collect(self) -> Iterator[Metric]:
        rounds = self.rounds()
        by_phase = GaugeMetricFamily("agentq_rounds", "Rounds by phase", labels=["phase"])
        counts = Counter(r.get("phase") or "Unknown" for r in rounds)
        for phase in sorted(set(PHASES) | set(counts)):
            by_phase.add_metric([phase], counts.get(phase, 0))
        yield by_phase
        durations = GaugeMetricFamily("agentq_step_duration_seconds", "Wall time of each finished step",
                                      labels=["round", "step"])
        pass_rate = GaugeMetricFamily("agentq_pass_rate", "Pass rate (pass@1) of an evaluated round",
                                      labels=["round", "arm", "mode"])
        samples = CounterMetricFamily("agentq_collect_samples", "Model samples drawn by collection",
                                      labels=["round"])
        gpu_hours = GaugeMetricFamily("agentq_step_gpu_hours", "GPU-hours the step's Jobs have held (cluster rounds; "
                                      "times a price per GPU-hour gives the cost)", labels=["round", "step"])
        runs = CounterMetricFamily("agentq_sandbox_runs", "Candidates run in the sandbox by collection",
                                   labels=["round"])
        for r in rounds:
            name = r["name"]
            for step in r.get("steps", []):
                if step.get("seconds") is not None:
                    durations.add_metric([name, step["name"]], step["seconds"])
                if step.get("gpuHours"):
                    gpu_hours.add_metric([name, step["name"]], step["gpuHours"])
            summary = self.artifacts.json(f"rounds/{name}/eval/summary.json")
            if summary:
                for arm in normalise(summary)["arms"]:
                    for mode, row in arm["modes"].items():
                        pass_rate.add_metric([name, arm["arm"], mode], row["pass_rate"])
            trees = [t for key in self.artifacts.trajectory_files(name) for t in self.artifacts.jsonl(key)]
            samples.add_metric([name], sum((t.get("stats") or {}).get("samples", 0) for t in trees))
            runs.add_metric([name], sum((t.get("stats") or {}).get("executions", 0) for t in trees))
        yield from (durations, gpu_hours, pass_rate, samples, runs)


class ServiceMetrics:
    """One registry per app (tests build many apps; the global registry would refuse duplicates)."""

    def __init__(self, rounds: Callable[[], list[dict[str, Any]]], artifacts: Any) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(RoundCollector(rounds, artifacts))
        self.requests = PromCounter("agentq_http_requests", "HTTP requests served", ["method", "route", "status"],
                                    registry=self.registry)
        self.streams = Gauge("agentq_event_streams", "Event streams (WebSockets) open now", registry=self.registry)
        self.latency = Histogram("agentq_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry)
