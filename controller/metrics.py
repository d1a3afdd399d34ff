"""The operator's Prometheus metrics, on a port of their own (settings.metricsPort).

What a cluster user watches to trust an operator: how many rounds sit in each phase (and how many are
blocked on something only a person can fix), how many Jobs it created, how long a reconcile pass takes and
how often one fails on the API. The phase counts are computed at scrape time from the last status each
round's daemon saw, so they are never out of step with the rounds themselves.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter as Tally
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

JOBS_CREATED = Counter("agentq_operator_jobs_created", "Step Jobs the operator created", ["step"])
RECONCILE_SECONDS = Histogram("agentq_operator_reconcile_seconds", "One reconcile pass: observe, plan, act",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
RECONCILE_ERRORS = Counter("agentq_operator_reconcile_errors", "Reconcile passes that failed on an API error "
                           "(code: the HTTP status, or `connection` for a dropped connection or a timeout)", ["code"])
API_REQUESTS = Counter("agentq_operator_api_requests", "Requests the reconciler made (kopf's own, for finalizers, "
                       "Events and peering, are not counted here)", ["verb", "resource"])
WATCH_ERRORS = Counter("agentq_operator_watch_errors", "Watches of the rounds' objects that broke and were "
                       "re-established", ["kind", "code"])


class RoundsByPhase(Collector):
    """agentq_operator_rounds{phase} and agentq_operator_rounds_blocked from the rounds' last known states."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str], str] = {}
        self.blocked: set[tuple[str, str]] = set()

    def observe(self, key: tuple[str, str], phase: str | None, blocked: bool) -> None:
        if phase:
            self.phases[key] = phase
        (self.blocked.add if blocked else self.blocked.discard)(key)

    def forget(self, key: tuple[str, str]) -> None:
        self.phases.pop(key, None)
        self.blocked.discard(key)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rounds = GaugeMetricFamily("agentq_operator_rounds", "Rounds by phase", labels=["phase"])
        for phase, count in sorted(Tally(self.phases.values()).items()):
            rounds.add_metric([phase], count)
        yield rounds
        yield GaugeMetricFamily("agentq_operator_rounds_blocked", "Rounds with a Blocked condition",
                                value=len(self.blocked))


ROUNDS = RoundsByPhase()
REGISTRY.register(ROUNDS)


class ThreadCpu(Collector):
    """agentq_operator_thread_cpu_seconds{thread}: CPU time by kind of thread (the event loop running kopf
    and the rounds' daemons, the reconcile workers, each kind's informer), read from /proc at scrape time, so
    where an operator's CPU goes is visible without a profiler. Linux only; nothing elsewhere."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("agentq_operator_thread_cpu_seconds", "CPU time (user + system) of the "
                                     "operator's live threads by kind", labels=["thread"])
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        kinds: Tally[str] = Tally()
        for thread in threading.enumerate():
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kinds[re.sub(r"[-_]\d+$", "", thread.name)] += (int(fields[11]) + int(fields[12])) / ticks
        for kind, seconds in sorted(kinds.items()):
            family.add_metric([kind], seconds)
        yield family


REGISTRY.register(ThreadCpu())


def serve(port: int) -> None:
    start_http_server(port)
