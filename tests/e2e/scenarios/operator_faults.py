"""The operator under faults with real pods (issue 24): the faults tests/test_operator_faults.py injects on a bare
API server, here on the node where kube-scheduler places the step pods and the kubelet runs them. One scenario,
`operator-faults`, runs each fault on a round of its own, one after the other, and fails listing every fault that
did not hold (one failing does not hide the others):

- `operator-crash-after-create`: the operator's process SIGKILLed the moment a step's Job appears; the
  kubelet restarts its container, which finds that Job instead of making a twin, and the round Succeeds.
- `apiserver-restart`: the API server stopped for 15 s while a step pod runs; the operator's watches and
  passes come back within seconds (no minute-long stall between steps) and the round Succeeds.
- `spec-configmap-deleted`: the round's spec ConfigMap deleted while a step runs; it is made again before the
  next step's Job, whose pod mounts it, and the round Succeeds.
- `quota-refuses-pods`: a ResourceQuota refuses the collect pods; the round says so (Blocked, QuotaExceeded,
  with the API server's words, and a Warning event); once the quota goes, the pods run and the round Succeeds.

Suspension is not among them: Kubernetes 1.20 drops Job.spec.suspend, so a suspended round's pods keep running.
"""

from __future__ import annotations

import collections
import datetime
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e.context import ROUND_LABEL, Context, ScenarioFailed, parse_time
from e2e.scenarios import scenario
from e2e.scenarios.pod_deleted import started

OPERATOR = "app.kubernetes.io/component=operator"
# The most a step transition may take after the API server is back (the bug: 31-60 s, a retry of kopf's).
RECOVERY_LIMIT_S = 20.0


def job_of(unit: str) -> Callable[[list[dict]], dict | None]:
    """A ctx.watch predicate: the round's Job of `unit`, once it exists."""
    return lambda jobs: next((j for j in jobs if j["metadata"]["labels"].get("agentq.dev/unit") == unit), None)


def wait_job(ctx: Context, name: str, unit: str, timeout: float = 1800) -> dict[str, Any]:
    return ctx.watch(ctx.batch.list_namespaced_job, f"the {unit} Job of {name}", job_of(unit), timeout,
                     namespace=ctx.namespace, label_selector=f"{ROUND_LABEL}={name}")


def operator_pids(pod: dict[str, Any]) -> list[int]:
    """The operator's processes on the node: those running kopf in the operator pod's cgroup (the fast tests'
    operators on this machine are kopf processes too, outside any pod)."""
    uid = pod["metadata"]["uid"]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (f"pod{uid}" in cgroup or f"pod{uid.replace('-', '_')}" in cgroup) and b"kopf" in cmdline:
            found.append(int(entry.name))
    if not found:
        raise ScenarioFailed(f"no kopf process in the cgroup of operator pod {pod['metadata']['name']} ({uid})")
    return found


def restarts(pod: dict[str, Any]) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses") or [])


def operator_metric(ctx: Context, prefix: str) -> float:
    """A sum over the operator's /metrics series starting with `prefix` (the node reaches the pod's IP)."""
    pod = ctx.component_pod("operator")
    port = next(p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports") or []
                if p.get("name") == "metrics")
    text = urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def operator_log(ctx: Context) -> str:
    return ctx.kubectl("logs", "-n", ctx.namespace, "-l", OPERATOR, "--tail=-1", check=False)


def crash_after_create(ctx: Context) -> dict:
    """SIGKILL the operator process as the preferences Job appears; its restarted container makes no twin."""
    name = "e2e-crash-after-create"
    start = time.monotonic()
    ctx.apply(ctx.small_round(name))
    pod = ctx.component_pod("operator")
    job = wait_job(ctx, name, "preferences")
    for pid in operator_pids(pod):
        os.kill(pid, signal.SIGKILL)  # a crash, not a shutdown: nothing more gets written
    killed = datetime.datetime.now(datetime.UTC)
    # Whether the status had recorded the Job before the crash: the window the restarted operator must close.
    recorded = "preferences" in (ctx.get_round(name).get("status") or {}).get("jobs", {})

    def restarted(pods: list[dict]) -> dict | None:
        for p in pods:
            ready = [c for c in p["status"].get("conditions") or [] if c["type"] == "Ready"]
            if p["metadata"]["uid"] == pod["metadata"]["uid"] and restarts(p) > restarts(pod) and ready \
                    and ready[0]["status"] == "True":
                return p
        return None

    again = ctx.wait_pods(OPERATOR, "the operator's container restarted and Ready", restarted)
    body = ctx.wait_round(name)
    per_unit = ctx.no_twins(name)
    after = sorted(ctx.unit_of(j) for j in ctx.round_jobs(name)
                   if parse_time(j["metadata"]["creationTimestamp"]) > killed.replace(microsecond=0))
    if not after:
        raise ScenarioFailed("the restarted operator created no Job: the round was over before the crash")
    return {"killed_after_job": job["metadata"]["name"], "status_had_recorded_it": recorded,
            "operator_restarts": restarts(again), "units_started_after_the_crash": after, "jobs_per_unit": per_unit,
            "phase": body["status"]["phase"], "wall_s": round(time.monotonic() - start, 1)}


def stage_gaps(ctx: Context, name: str, since: datetime.datetime) -> dict[str, float]:
    """For each Job created after `since`: seconds from the later of `since` and the end of the stage before it
    (its Jobs' completionTime) to the Job's creation. Whole seconds: the API's timestamps."""
    jobs = ctx.round_jobs(name)
    order = ["collect", "preferences", "train", "merge", "evaluate", "report"]
    ends: dict[str, datetime.datetime] = {}
    for job in jobs:
        step = job["metadata"]["labels"]["agentq.dev/step"]
        done = job["status"].get("completionTime")
        if done:
            ends[step] = max(ends.get(step, parse_time(done)), parse_time(done))
    gaps = {}
    for job in jobs:
        created = parse_time(job["metadata"]["creationTimestamp"])
        step = job["metadata"]["labels"]["agentq.dev/step"]
        before = order[order.index(step) - 1] if order.index(step) else None
        if created < since.replace(microsecond=0) or before not in ends:
            continue
        gaps[job["metadata"]["name"]] = (created - max(since.replace(microsecond=0), ends[before])).total_seconds()
    return gaps


def apiserver_restart(ctx: Context) -> dict:
    """The API server away 15 s while a collect pod runs; each later step starts within seconds; Succeeded."""
    name = "e2e-apiserver-restart"
    start = time.monotonic()
    ctx.apply(ctx.small_round(name))
    ctx.wait_pods(f"{ROUND_LABEL}={name},agentq.dev/step=collect", "a collect pod made", started)
    watch_errors = operator_metric(ctx, "agentq_operator_watch_errors_total")
    ctx.cluster.restart_apiserver(down_s=15)
    back = datetime.datetime.now(datetime.UTC)
    body = ctx.wait_round(name)
    gaps = stage_gaps(ctx, name, back)
    slow = {job: s for job, s in gaps.items() if s > RECOVERY_LIMIT_S}
    if not gaps:
        raise ScenarioFailed("no step started after the API server came back: the round ended before it")
    if slow:
        raise ScenarioFailed(f"steps that started more than {RECOVERY_LIMIT_S:.0f}s after their predecessor ended "
                             f"or the API server came back: {slow}")
    errors_seen = operator_metric(ctx, "agentq_operator_watch_errors_total") - watch_errors
    if errors_seen <= 0:
        raise ScenarioFailed("the operator counted no broken watch across the API server's restart")
    if "will try again in 60 seconds" in operator_log(ctx):
        raise ScenarioFailed("the operator's log shows kopf's 60-second retry")
    return {"down_s": 15, "seconds_to_next_job": gaps, "watch_errors_counted": errors_seen,
            "reconcile_connection_errors": operator_metric(
                ctx, 'agentq_operator_reconcile_errors_total{code="connection"}'),
            "phase": body["status"]["phase"], "wall_s": round(time.monotonic() - start, 1)}


def spec_configmap_deleted(ctx: Context) -> dict:
    """The round's spec ConfigMap deleted while collect runs; made again before the next Job, whose pod mounts it."""
    name = "e2e-configmap-deleted"
    start = time.monotonic()
    ctx.apply(ctx.small_round(name))
    ctx.wait_pods(f"{ROUND_LABEL}={name},agentq.dev/step=collect", "a collect pod made", started)
    configmap = f"{name}-spec"
    original = ctx.core.read_namespaced_config_map(configmap, ctx.namespace)
    before = {p["metadata"]["name"] for p in ctx.step_pods(name)}
    ctx.core.delete_namespaced_config_map(configmap, ctx.namespace)
    body = ctx.wait_round(name)
    again = ctx.core.read_namespaced_config_map(configmap, ctx.namespace)
    if again.metadata.uid == original.metadata.uid:
        raise ScenarioFailed(f"ConfigMap {configmap} was not deleted")
    if again.data != original.data:
        raise ScenarioFailed(f"ConfigMap {configmap} was made again with other data: {again.data}")
    preferences = job_of("preferences")(ctx.round_jobs(name))
    made, used = again.metadata.creation_timestamp, parse_time(preferences["metadata"]["creationTimestamp"])
    if made > used:
        raise ScenarioFailed(f"the preferences Job ({used}) was created before the ConfigMap was made again ({made})")
    # The pods made after the deletion must mount it at once. A pod that already ran may show FailedMount when
    # the kubelet refreshes its volume in the moment the ConfigMap is away: it has its copy; reported only.
    mounts = collections.defaultdict(list)
    for event in ctx.core.list_namespaced_event(ctx.namespace).items:
        if event.reason == "FailedMount" and event.involved_object.name.startswith(f"{name}-"):
            mounts[event.involved_object.name in before].append(f"{event.involved_object.name}: {event.message}")
    if mounts[False]:
        raise ScenarioFailed(f"step pods of {name} made after the deletion failed to mount: {mounts[False]}")
    return {"remade_at": made.isoformat(), "next_job_at": used.isoformat(),
            "refreshes_of_running_pods_that_missed_it": mounts[True], "phase": body["status"]["phase"],
            "wall_s": round(time.monotonic() - start, 1)}


def quota_refuses_pods(ctx: Context) -> dict:
    """A ResourceQuota refuses the collect pods: Blocked QuotaExceeded and a Warning; without it the round Succeeds."""
    name, klass = "e2e-quota", "agentq-e2e-starved"
    start = time.monotonic()
    from kubernetes import client

    scheduling = client.SchedulingV1Api(ctx.api_client)
    # A quota that only counts this round's collect pods (their PriorityClass), so the chart's pods are untouched.
    scheduling.create_priority_class({"metadata": {"name": klass}, "value": 0, "globalDefault": False,
                                      "description": "issue 24's quota scenario"})
    quota = {"metadata": {"name": "e2e-no-collect-pods"},
             "spec": {"hard": {"pods": "0"}, "scopeSelector": {"matchExpressions": [
                 {"operator": "In", "scopeName": "PriorityClass", "values": [klass]}]}}}
    try:
        ctx.core.create_namespaced_resource_quota(ctx.namespace, quota)
        ctx.apply(ctx.small_round(name, placement={"inference": {"priorityClassName": klass}}))

        def blocked(item: dict) -> bool:
            return any(c["type"] == "Blocked" and c["status"] == "True" and "QuotaExceeded" in c["reason"]
                       for c in (item.get("status") or {}).get("conditions") or [])

        shown = ctx.wait_round(name, until=blocked, timeout=600)
        message = next(c["message"] for c in shown["status"]["conditions"] if c["type"] == "Blocked")
        if "exceeded quota: e2e-no-collect-pods" not in message:
            raise ScenarioFailed(f"the Blocked condition does not quote the API server: {message}")
        warnings = [e.reason for e in ctx.core.list_namespaced_event(
            ctx.namespace, field_selector=f"involvedObject.name={name}").items if e.type == "Warning"]
        if "QuotaExceeded" not in warnings:
            raise ScenarioFailed(f"no QuotaExceeded Warning event on the round (its warnings: {warnings})")
        ctx.core.delete_namespaced_resource_quota(quota["metadata"]["name"], ctx.namespace)
        lifted = time.monotonic()
        body = ctx.wait_round(name)
    finally:
        for cleanup in (lambda: ctx.core.delete_namespaced_resource_quota(quota["metadata"]["name"], ctx.namespace),
                        lambda: scheduling.delete_priority_class(klass)):
            try:
                cleanup()
            except client.exceptions.ApiException as err:
                if err.status != 404:
                    raise
    still = [c for c in body["status"]["conditions"] if c["type"] == "Blocked" and c["status"] == "True"]
    if still:
        raise ScenarioFailed(f"the round Succeeded but still shows Blocked: {still}")
    return {"blocked_message": message.splitlines()[0][:300], "warning_events": sorted(set(warnings)),
            "seconds_from_quota_removed_to_succeeded": round(time.monotonic() - lifted, 1),
            "phase": body["status"]["phase"], "wall_s": round(time.monotonic() - start, 1)}


FAULTS: dict[str, Callable[[Context], dict]] = {
    "operator-crash-after-create": crash_after_create, "apiserver-restart": apiserver_restart,
    "spec-configmap-deleted": spec_configmap_deleted, "quota-refuses-pods": quota_refuses_pods}


@scenario("operator-faults", order=45)
def operator_faults(ctx: Context) -> dict:
    """A crash after a Job create, an API server restart, a deleted spec ConfigMap, a quota: each round Succeeds."""
    outcomes: dict[str, dict] = {}
    for fault, run in FAULTS.items():
        start = time.monotonic()
        try:
            outcomes[fault] = {"ok": True, **run(ctx)}
        except Exception as err:  # noqa: BLE001 - reported with the others below
            outcomes[fault] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        outcomes[fault]["seconds"] = round(time.monotonic() - start, 1)
    failed = {fault: o["error"] for fault, o in outcomes.items() if not o["ok"]}
    if failed:
        raise ScenarioFailed(f"operator faults that did not hold: {failed}\nall outcomes: {outcomes}")
    return {"faults": outcomes}
