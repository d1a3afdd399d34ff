"""Apply many rounds at once to a real kube-apiserver and measure the operator (run as `kopf run`).

A thread plays the Job controller and kubelet: it watches Jobs and finishes each one successfully with a
small result as soon as it appears, so every round runs through all its steps as fast as the operator
can drive it. Printed, all measured in this run: apply-to-first-Job latency p50/p95, rounds driven to
Succeeded per second, duplicate Jobs (must be 0) and the operator's peak RSS.

    AGENTQ_TESTENV_BIN=$(scripts/testenv.sh) .venv/bin/python benchmarks/operator_scale.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The local cluster is test infrastructure (tests/testenv.py); the benchmark borrows it.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from kubernetes import client, watch  # noqa: E402
from testenv import LocalCluster, Operator, finish_job, start_job  # noqa: E402

from controller.jobs import ROUND_LABEL, UNIT_LABEL  # noqa: E402

NS = "bench"


def round_body(name: str) -> dict:
    return {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": name},
            "spec": {"dataset": {"train": "/artifacts/t.jsonl", "test": "/artifacts/e.jsonl"},
                     "model": {"backend": "scripted", "base": "tiny"}, "collect": {"shards": 2},
                     "evaluate": {"shards": 2}, "store": {"pvc": "agentq-artifacts"}}}


class JobPlayer(threading.Thread):
    """Watches every round Job; records when each round's first Job appeared and finishes each Job."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.first_job: dict[str, float] = {}
        self.seen: set[str] = set()
        self.stop_flag = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.errors: list[str] = []

    def _finish(self, name: str, unit: str) -> None:
        try:
            start_job(self.api, NS, name)
            result = {"passRate": {"full_rewrite": 0.5}} if unit == "report" else {"pairs": 3}
            finish_job(self.api, NS, name, succeeded=True, message=json.dumps(result))
        except Exception as err:  # noqa: BLE001 - counted and printed, the run goes on
            self.errors.append(f"{name}: {err}")

    def run(self) -> None:
        batch = client.BatchV1Api(self.api)
        while not self.stop_flag.is_set():
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, NS, label_selector=ROUND_LABEL, timeout_seconds=5):
                job = event["object"]
                if event["type"] == "ADDED" and job.metadata.name not in self.seen:
                    self.seen.add(job.metadata.name)
                    self.first_job.setdefault(job.metadata.labels[ROUND_LABEL], time.monotonic())
                    self.pool.submit(self._finish, job.metadata.name, job.metadata.labels[UNIT_LABEL])
                if self.stop_flag.is_set():
                    w.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentq-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster").start()
        operator = None
        try:
            for manifest in ("crd.yaml", "campaign-crd.yaml"):
                cluster.kubectl("apply", "-f", str(ROOT / "manifests" / manifest))
            cluster.kubectl("wait", "--for=condition=Established", "crd/agentqrounds.agentq.dev", "--timeout=30s")
            api = cluster.api()
            core, custom, batch = client.CoreV1Api(api), client.CustomObjectsApi(api), client.BatchV1Api(api)
            core.create_namespace({"metadata": {"name": NS}})
            operator = Operator(cluster.kubeconfig, Path(tmp), config={"resyncSeconds": 30}).start()
            time.sleep(3.0)  # let kopf list and start watching before the burst
            player = JobPlayer(api)
            player.start()
            applied: dict[str, float] = {}
            cpu0 = operator.cpu_seconds()
            t0 = time.monotonic()
            for i in range(args.rounds):
                name = f"bench-{i:03d}"
                custom.create_namespaced_custom_object("agentq.dev", "v1alpha1", NS, "agentqrounds",
                                                       round_body(name))
                applied[name] = time.monotonic()
            apply_s = time.monotonic() - t0
            done: dict[str, float] = {}
            deadline = time.monotonic() + args.timeout
            while len(done) < args.rounds and time.monotonic() < deadline:
                items = custom.list_namespaced_custom_object("agentq.dev", "v1alpha1", NS, "agentqrounds")["items"]
                for item in items:
                    if (item.get("status") or {}).get("phase") == "Succeeded":
                        done.setdefault(item["metadata"]["name"], time.monotonic())
                time.sleep(0.2)
            wall = (max(done.values()) if done else time.monotonic()) - t0
            rss, cpu = operator.peak_rss_mb(), operator.cpu_seconds() - cpu0
            player.stop_flag.set()
            jobs = batch.list_namespaced_job(NS, label_selector=ROUND_LABEL).items
            per_unit = Counter((j.metadata.labels[ROUND_LABEL], j.metadata.labels[UNIT_LABEL]) for j in jobs)
            duplicates = sum(n - 1 for n in per_unit.values())
            latencies = [player.first_job[n] - applied[n] for n in applied if n in player.first_job]
            print(f"rounds applied:               {args.rounds} in {apply_s:.2f}s")
            print(f"rounds Succeeded:             {len(done)}/{args.rounds} ({len(jobs)} Jobs, 8 per round)")
            if latencies:
                print(f"apply-to-first-Job latency:   p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                      f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
                      f"(mean {statistics.mean(latencies) * 1000:.0f} ms, n={len(latencies)})")
            print(f"rounds reconciled per second: {len(done) / wall:.2f} (all steps, {wall:.1f}s wall)")
            print(f"duplicate Jobs:               {duplicates}")
            print(f"operator peak RSS:            {rss:.0f} MiB")
            print(f"operator CPU:                 {cpu:.1f}s for {args.rounds} rounds "
                  f"({cpu / args.rounds * 1000:.0f} ms per round of 8 Jobs)")
            print(f"load average (1/5/15 min):    {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
                  f"on {os.cpu_count()} cores")
            if player.errors:
                print(f"job-player errors:            {len(player.errors)} (first: {player.errors[0]})")
            ok = len(done) == args.rounds and duplicates == 0 and not player.errors
            return 0 if ok else 1
        finally:
            if operator:
                operator.stop()
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
