"""Apply many rounds at once to a real kube-apiserver and measure the operator (run as `kopf run`).

A thread plays the kubelet (and, without `--controllers`, the Job controller): it watches Jobs and
finishes each one successfully with a small result as soon as it appears, so every round runs through all
its steps as fast as the operator can drive it. `--controllers` runs kube-controller-manager, so the real
Job controller marks Jobs complete; `--ttl S` gives step Jobs ttlSecondsAfterFinished (the TTL controller
deletes them mid-round); `--restart-after N` kills the operator (SIGKILL) once N rounds have Succeeded and
starts it again. Printed, all measured in this run: apply-to-first-Job latency p50/p95 (and, as the
baseline, how long the same watch takes to show a Job created directly), rounds driven to Succeeded per
second, duplicate Jobs (a unit with more than one Job UID ever; must be 0), the operator's CPU per round
(and how it splits between its event loop, reconcile workers and informers) and peak RSS, each against the
goals (p95 < 1 s, < 50 ms CPU per round, 0 duplicates), and the operator's API calls and reconcile passes
per round (not with --restart-after: the counts start again with the new process; with --controllers,
Events are left out: the controller-manager posts them too).

    AGENTQ_TESTENV_BIN=$(scripts/testenv.sh) .venv/bin/python benchmarks/operator_scale.py [--rounds 50] \
        [--controllers] [--ttl 0] [--restart-after 25] [--json]
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
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The local cluster is test infrastructure (tests/testenv.py); the benchmark borrows it.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from kubernetes import client, watch  # noqa: E402
from testenv import ADMIN_TOKEN, LocalCluster, Operator, finish_job, free_port, pod_ran, start_job  # noqa: E402

from controller.jobs import ROUND_LABEL, UNIT_LABEL  # noqa: E402

NS = "bench"
GOAL_P95_MS, GOAL_CPU_MS_PER_ROUND = 1000, 50
BASELINE = "baseline"  # the round label of the Jobs the benchmark creates itself to time the watch
WARMUP = "warmup"  # a round run before the timed ones


def round_body(name: str) -> dict:
    return {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": name},
            "spec": {"dataset": {"train": "/artifacts/t.jsonl", "test": "/artifacts/e.jsonl"},
                     "model": {"backend": "scripted", "base": "tiny"}, "collect": {"shards": 2},
                     "evaluate": {"shards": 2}, "store": {"pvc": "agentq-artifacts"}}}


class JobPlayer(threading.Thread):
    """Watches every round Job; records when each round's first Job appeared and finishes each Job."""

    def __init__(self, api: client.ApiClient, job_controller: bool) -> None:
        super().__init__(daemon=True)
        self.api, self.job_controller = api, job_controller
        self.first_job: dict[str, float] = {}
        self.uids: dict[tuple[str, str], set[str]] = defaultdict(set)  # (round, unit) -> every Job UID seen
        self.stop_flag = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.errors: list[str] = []

    def _finish(self, name: str, unit: str) -> None:
        try:
            result = {"passRate": {"full_rewrite": 0.5}} if unit == "report" else {"pairs": 3}
            if self.job_controller:  # the kubelet's part only: the real Job controller completes the Job
                pod_ran(self.api, NS, name, succeeded=True, message=json.dumps(result), controller_pod=True)
                return
            start_job(self.api, NS, name)
            finish_job(self.api, NS, name, succeeded=True, message=json.dumps(result))
        except Exception as err:  # noqa: BLE001 - counted and printed, the run goes on
            self.errors.append(f"{name}: {err}")

    def run(self) -> None:
        batch = client.BatchV1Api(self.api)
        while not self.stop_flag.is_set():
            w = watch.Watch()
            for event in w.stream(batch.list_namespaced_job, NS, label_selector=ROUND_LABEL, timeout_seconds=5):
                job = event["object"]
                labels = job.metadata.labels
                key = (labels[ROUND_LABEL], labels[UNIT_LABEL])
                if event["type"] == "ADDED" and job.metadata.uid not in self.uids[key]:
                    self.uids[key].add(job.metadata.uid)
                    self.first_job.setdefault(labels[ROUND_LABEL], time.monotonic())
                    if labels[ROUND_LABEL] != BASELINE:
                        self.pool.submit(self._finish, job.metadata.name, labels[UNIT_LABEL])
                if self.stop_flag.is_set():
                    w.stop()

    def duplicates(self) -> int:
        return sum(len(uids) - 1 for (round_name, _), uids in self.uids.items() if round_name != BASELINE)

    def created(self) -> int:
        return sum(len(uids) for (round_name, _), uids in self.uids.items() if round_name not in (BASELINE, WARMUP))


def watch_baseline(batch: client.BatchV1Api, player: JobPlayer, n: int = 10) -> list[float]:
    """Create-to-seen latency of Jobs created directly: the floor under apply-to-first-Job (API server, etcd
    and the player's watch, no operator); deleted at once."""
    latencies = []
    for i in range(n):
        name = f"{BASELINE}-{i}"
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "labels": {ROUND_LABEL: BASELINE, UNIT_LABEL: name}},
               "spec": {"template": {"spec": {
                   "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}}}
        start = time.monotonic()
        uid = batch.create_namespaced_job(NS, job).metadata.uid
        while uid not in player.uids[(BASELINE, name)]:
            time.sleep(0.001)
        latencies.append(time.monotonic() - start)
        batch.delete_namespaced_job(name, NS, propagation_policy="Background")
    return latencies


def scrape(url: str, token: str | None = None) -> dict[str, float]:
    """A Prometheus text page as {series: value}."""
    import ssl
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    text = urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=ctx, timeout=10).read()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
            if line and not line.startswith("#")}


def api_calls(operator_port: int, server: str, controllers: bool) -> dict[str, float]:
    """The operator's requests by verb and resource: its reconciler's own count, plus what only kopf sends
    (Events, patches of the rounds: finalizers, annotations) from the API server's count, as nobody else sends
    those here (with `controllers`, the controller-manager posts Events too: those are left out)."""
    ours: dict[str, float] = {}
    page = scrape(f"http://127.0.0.1:{operator_port}/metrics")
    ours["reconcile passes"] = page.get("agentq_operator_reconcile_seconds_count", 0.0)
    for series, value in page.items():
        if series.startswith("agentq_operator_api_requests_total{"):
            labels = dict(part.split("=", 1) for part in series[series.index("{") + 1:-1].split(","))
            key = f"{labels['verb'].strip(chr(34))} {labels['resource'].strip(chr(34))}"
            ours[key] = ours.get(key, 0) + value
    for series, value in scrape(f"{server}/metrics", ADMIN_TOKEN).items():
        if series.startswith("apiserver_request_total{") and 'code="409"' in series \
                and 'resource="agentqrounds"' in series and 'subresource="status"' in series:
            # of the status writes counted above; not added to the total
            ours["conflicts (409)"] = ours.get("conflicts (409)", 0) + value
        if series.startswith("apiserver_request_total{") and 'code="2' in series:
            for verb, resource in (("PATCH", "agentqrounds"),) if controllers else \
                    (("POST", "events"), ("PATCH", "agentqrounds")):
                if f'verb="{verb}"' in series and f'resource="{resource}"' in series and 'subresource=""' in series:
                    ours[f"{verb} {resource} (kopf)"] = ours.get(f"{verb} {resource} (kopf)", 0) + value
    return ours


def thread_cpu(operator_port: int) -> dict[str, float]:
    """The operator's CPU seconds so far by kind of thread (its agentq_operator_thread_cpu_seconds), informers
    summed: where its CPU per round goes."""
    by_kind: dict[str, float] = {}
    for series, value in scrape(f"http://127.0.0.1:{operator_port}/metrics").items():
        if series.startswith("agentq_operator_thread_cpu_seconds_total{"):
            kind = series.split('thread="', 1)[1].rsplit('"', 1)[0]
            kind = {"MainThread": "event loop (kopf, daemons)", "reconcile": "reconcile passes"}.get(
                kind, "informers" if kind.startswith("informer-") else "other")
            by_kind[kind] = by_kind.get(kind, 0.0) + value
    return by_kind


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--controllers", action="store_true",
                        help="run kube-controller-manager: the real Job, TTL and garbage-collector controllers")
    parser.add_argument("--ttl", type=int, default=None,
                        help="operator jobTtlSeconds: finished Jobs deleted mid-round (implies --controllers)")
    parser.add_argument("--restart-after", type=int, default=None, metavar="N",
                        help="SIGKILL the operator once N rounds Succeeded, then start it again")
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    args = parser.parse_args()
    controllers = args.controllers or args.ttl is not None
    with tempfile.TemporaryDirectory(prefix="agentq-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", controllers=controllers).start()
        operator = None
        try:
            for manifest in ("crd.yaml", "campaign-crd.yaml"):
                cluster.kubectl("apply", "-f", str(ROOT / "manifests" / manifest))
            cluster.kubectl("wait", "--for=condition=Established", "crd/agentqrounds.agentq.dev", "--timeout=30s")
            api = cluster.api()
            core, custom, batch = client.CoreV1Api(api), client.CustomObjectsApi(api), client.BatchV1Api(api)
            core.create_namespace({"metadata": {"name": NS}})
            metrics_port = free_port()
            config = {"resyncSeconds": 30, "metricsPort": metrics_port,
                      **({"jobTtlSeconds": args.ttl} if args.ttl is not None else {})}
            operator = Operator(cluster.kubeconfig, Path(tmp), config=config).start()
            player = JobPlayer(api, job_controller=controllers)
            player.start()
            baseline = watch_baseline(batch, player)
            # The operator is up and watching once it has started a first round: timing starts after that,
            # so the figures are the operator's steady state, not its start on a busy machine.
            custom.create_namespaced_custom_object("agentq.dev", "v1alpha1", NS, "agentqrounds", round_body(WARMUP))
            deadline = time.monotonic() + 120
            while WARMUP not in player.first_job and time.monotonic() < deadline:
                time.sleep(0.05)
            applied: dict[str, float] = {}
            cpu0, cpu_before_restart, rss_before_restart, restarted = operator.cpu_seconds(), 0.0, 0.0, False
            threads0 = thread_cpu(metrics_port)
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
                    if (item.get("status") or {}).get("phase") == "Succeeded" and item["metadata"]["name"] in applied:
                        done.setdefault(item["metadata"]["name"], time.monotonic())
                if args.restart_after is not None and not restarted and len(done) >= args.restart_after:
                    cpu_before_restart, rss_before_restart = operator.cpu_seconds() - cpu0, operator.peak_rss_mb()
                    operator.kill()
                    operator.start()
                    cpu0, restarted = 0.0, True
                time.sleep(0.2)
            wall = (max(done.values()) if done else time.monotonic()) - t0
            rss = max(operator.peak_rss_mb(), rss_before_restart)
            cpu = cpu_before_restart + operator.cpu_seconds() - cpu0
            threads = {kind: round((seconds - threads0.get(kind, 0.0)) / args.rounds * 1000)
                       for kind, seconds in thread_cpu(metrics_port).items()} if not restarted else {}
            calls = api_calls(metrics_port, cluster.server, controllers)
            player.stop_flag.set()
            jobs = batch.list_namespaced_job(NS, label_selector=ROUND_LABEL).items
            duplicates = player.duplicates()
            created = player.created()
            latencies = [player.first_job[n] - applied[n] for n in applied if n in player.first_job]
            p50, p95 = (percentile(latencies, 0.5), percentile(latencies, 0.95)) if latencies else (None, None)
            floor = percentile(baseline, 0.5)
            cpu_ms = cpu / args.rounds * 1000
            load = os.getloadavg()
            mode = ", ".join(m for m in ("controller-manager" if controllers else "",
                                         f"Job TTL {args.ttl}s" if args.ttl is not None else "",
                                         f"operator killed after {args.restart_after} rounds"
                                         if args.restart_after is not None else "") if m) or "Job status faked"
            print(f"mode:                         {mode}")
            print(f"rounds applied:               {args.rounds} in {apply_s:.2f}s")
            print(f"rounds Succeeded:             {len(done)}/{args.rounds} ({created} Jobs created, 8 per round; "
                  f"{len(jobs)} left)")
            if latencies:
                print(f"apply-to-first-Job latency:   p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
                      f"max {max(latencies) * 1000:.0f} ms (mean {statistics.mean(latencies) * 1000:.0f} ms, "
                      f"n={len(latencies)}); goal p95 < {GOAL_P95_MS} ms")
            print(f"baseline create-to-watch:     p50 {floor * 1000:.0f} ms (a Job created directly, n={len(baseline)})"
                  + (f"; apply-to-first-Job p50 is {p50 / floor:.1f}x it" if p50 else ""))
            print(f"rounds reconciled per second: {len(done) / wall:.2f} (all steps, {wall:.1f}s wall)")
            print(f"duplicate Jobs:               {duplicates}")
            print(f"operator peak RSS:            {rss:.0f} MiB")
            print(f"operator CPU:                 {cpu:.1f}s for {args.rounds} rounds "
                  f"({cpu_ms:.0f} ms per round of 8 Jobs); goal < {GOAL_CPU_MS_PER_ROUND} ms")
            if threads:
                print("operator CPU per round by thread: " + ", ".join(
                    f"{kind} {ms} ms" for kind, ms in sorted(threads.items(), key=lambda kv: -kv[1])))
            rounds_run = args.rounds + 1  # with the warm-up round
            passes = round(calls.pop("reconcile passes") / rounds_run, 1)
            conflicts = round(calls.pop("conflicts (409)", 0) / rounds_run, 1)
            per_round = {k: round(v / rounds_run, 1) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])}
            if restarted:  # the reconciler's count starts again with the new process: not a per-round figure
                per_round, passes = {}, 0.0
            print(f"operator API calls per round: {sum(per_round.values()):.1f} ("
                  + ", ".join(f"{k} {v}" for k, v in per_round.items()) + f"); {passes} reconcile passes, "
                  f"{conflicts} status writes refused as stale (409)")
            print(f"load average (1/5/15 min):    {' '.join(f'{x:.1f}' for x in load)} on {os.cpu_count()} cores")
            if player.errors:
                print(f"job-player errors:            {len(player.errors)} (first: {player.errors[0]})")
            ok = len(done) == args.rounds and duplicates == 0 and not player.errors
            if args.json:
                print(json.dumps({
                    "benchmark": "operator_scale", "mode": mode, "rounds": args.rounds, "succeeded": len(done),
                    "jobs_created": created, "p50_ms": p50 and round(p50 * 1000), "p95_ms": p95 and round(p95 * 1000),
                    "baseline_watch_p50_ms": round(floor * 1000, 1), "p50_vs_baseline": p50 and round(p50 / floor, 1),
                    "rounds_per_s": round(len(done) / wall, 2), "duplicates": duplicates,
                    "cpu_ms_per_round": round(cpu_ms), "cpu_ms_per_round_by_thread": threads,
                    "peak_rss_mib": round(rss),
                    "api_calls_per_round": round(sum(per_round.values()), 1), "api_calls": per_round,
                    "passes_per_round": passes, "conflicts_per_round": conflicts,
                    "load_avg": [round(x, 1) for x in load],
                    "meets_goals": bool(ok and p95 is not None and p95 * 1000 < GOAL_P95_MS
                                        and cpu_ms < GOAL_CPU_MS_PER_ROUND),
                    "errors": len(player.errors)}))
            return 0 if ok else 1
        finally:
            if operator:
                operator.stop()
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
