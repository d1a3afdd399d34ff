"""The kopf operator: one daemon per AgentQRound (and per AgentQCampaign) runs reconcile passes; Job and
round events wake it.

Run it with `kopf run -m controller.handlers --all-namespaces [--peering agentq | --standalone]`.

Why a daemon per round rather than per-event handlers: it serialises everything one round does (no two
passes of the same round race each other) while still reacting within milliseconds, because every watch
event of the round's Jobs, of the round itself and of the round it starts from sets the daemon's wake-up
event; a resync timeout covers anything missed. Each pass plans from observed state only (reconcile.plan),
so killing and restarting the operator at any point neither duplicates nor skips a Job. What a pass observes
comes mostly from memory (controller/jobcache.py for Jobs, the round as our last status write returned it),
so a pass costs few API calls; a fresh operator lists and reads everything once.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from controller import inference, metrics
from controller.campaign import CAMPAIGN_LABEL, CampaignPlan, plan_campaign
from controller.crd import CAMPAIGN_PLURAL, GROUP, PLURAL, VERSION
from controller.jobcache import JobCache
from controller.jobs import (
    ROUND_LABEL,
    build_job,
    cleanup_configmap,
    cleanup_job,
    spec_configmap,
    spec_configmap_name,
)
from controller.kube import Kube
from controller.reconcile import (
    Inspection,
    Plan,
    condition,
    job_failure_reason,
    job_state,
    long_unfinished,
    plan,
    pod_problems,
    with_unrecorded_finished,
)
from controller.settings import OperatorSettings, load_settings

log = logging.getLogger("agentq.operator")
COALESCE_SECONDS = 0.05  # how long a woken daemon waits for the events that come with the one that woke it


class Runtime:
    """Process-wide state: the API client, the settings and the wake-up event of every running daemon."""

    def __init__(self) -> None:
        self.settings: OperatorSettings = OperatorSettings()
        self.kube: Kube | None = None
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reconcile")
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.follows: dict[tuple[str, str], str] = {}  # (namespace, round) -> the round it starts from
        self.own_writes: dict[tuple[str, str], str] = {}  # the resourceVersion of our last status write
        # The round as our last status write returned it, with the count of foreign round events at that
        # time: the next pass plans from it instead of a GET unless another event came since.
        self.written: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.round_changes: dict[tuple[str, str], int] = {}  # round events that were not our own writes
        self.campaign_wakers: dict[tuple[str, str], asyncio.Event] = {}
        # (namespace, round) -> Job name -> the Job as its last watch event showed it finished
        self.finished: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.jobs = JobCache(self.settings.resync_seconds)  # a round's Jobs without a LIST per pass
        # (namespace, round) -> (round UID, the spec its ConfigMap was last written from): written on change only
        self.configmaps: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def wake(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        """Wake the round's daemon, unless the event is the echo of its own status write, and the daemons
        of the rounds that start from it (its phase may have just become Succeeded)."""
        event = self.wakers.get((namespace, name))
        if event and (resource_version is None or self.own_writes.get((namespace, name)) != resource_version):
            self.round_changes[(namespace, name)] = self.round_changes.get((namespace, name), 0) + 1
            event.set()
        for (ns, follower), predecessor in self.follows.items():
            if ns == namespace and predecessor == name and (ns, follower) in self.wakers:
                self.wakers[(ns, follower)].set()


RT = Runtime()


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    RT.settings = load_settings()
    RT.kube = Kube()
    RT.jobs = JobCache(RT.settings.resync_seconds)
    # Replicas with equal priority all freeze (safe, but nothing runs); distinct ones let exactly one act.
    if not settings.peering.priority:
        settings.peering.priority = random.randint(1, 1_000_000)
    settings.posting.level = logging.INFO
    settings.persistence.finalizer = "agentq.dev/cleanup"
    # kopf's own bookkeeping in annotations only: the whole status belongs to the reconciler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="agentq.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="agentq.dev")
    if RT.settings.metrics_port:
        metrics.serve(RT.settings.metrics_port)


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return {}


def inspect_job(kube: Kube, job: dict[str, Any], log_lines: int) -> Inspection:
    """A finished Job's outcome from its newest pod: the step's JSON result (termination message) when it
    succeeded; the reason and the log tail (pods/log, else the termination message) when it failed."""
    meta = job["metadata"]
    pods = sorted(kube.job_pods(meta["namespace"], meta["name"]),
                  key=lambda p: p["metadata"].get("creationTimestamp") or "")
    term = _terminated(pods[-1]) if pods else {}
    message = term.get("message") or ""
    if (job.get("status") or {}).get("succeeded"):
        try:
            result = json.loads(message) if message.strip() else {}
        except json.JSONDecodeError:
            result = {}
        return {"result": result if isinstance(result, dict) else {}}
    reason = job_failure_reason(job)
    if term:
        reason += f"; container: {term.get('reason', 'Error')} (exit code {term.get('exitCode', '?')})"
    logs = (kube.pod_log_tail(meta["namespace"], pods[-1]["metadata"]["name"], log_lines) if pods else None) \
        or message
    tail = "\n".join(logs.strip().splitlines()[-log_lines:])
    return {"reason": reason, "logs": tail}


def api_message(err: ApiException) -> str:
    """The API server's own words for a refused request (its Status message), not the client's repr."""
    try:
        return json.loads(err.body or "{}").get("message") or f"{err.status} {err.reason}"
    except (json.JSONDecodeError, AttributeError):
        return f"{err.status} {err.reason}"


def reconcile_once(namespace: str, name: str) -> Plan | None:
    """One pass: observe, plan, act, timed for /metrics. Runs in a worker thread (blocking client)."""
    started = time.perf_counter()
    try:
        result = _reconcile(namespace, name)
    except ApiException as err:
        metrics.RECONCILE_ERRORS.labels(code=str(err.status)).inc()
        raise
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    if result is None:
        metrics.ROUNDS.forget((namespace, name))
    elif result.status:
        metrics.ROUNDS.observe((namespace, name), result.status.get("phase"), bool(result.problems))
    return result


def stuck_problems(kube: Kube, namespace: str, name: str, settings: OperatorSettings) -> list[tuple[str, str]]:
    """Why a round's Jobs may be waiting on a person: their pods (unschedulable, image pull), or the step
    ServiceAccount missing from the namespace (then the Job controller cannot create a pod at all)."""
    problems = pod_problems(kube.round_pods(namespace, name))
    account = settings.job_service_account
    if account and not kube.service_account_exists(namespace, account):
        problems.append(("ServiceAccountMissing", f"ServiceAccount {account} (operator.jobServiceAccount) does not "
                                                  f"exist in namespace {namespace}: step pods cannot be created"))
    return problems


def _reconcile(namespace: str, name: str) -> Plan | None:
    kube, settings = RT.kube, RT.settings
    assert kube is not None
    key = (namespace, name)
    changes = RT.round_changes.get(key, 0)
    written = RT.written.get(key)
    body = written[1] if written and written[0] == changes else kube.get_round(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    predecessor_phase = None
    from_round = ((body.get("spec") or {}).get("model") or {}).get("fromRound")
    if from_round:
        RT.follows[(namespace, name)] = from_round
        pred = kube.get_round(namespace, from_round)
        predecessor_phase = ((pred or {}).get("status") or {}).get("phase") or ("Pending" if pred else "")
    jobs = with_unrecorded_finished(RT.jobs.jobs(key, lambda: kube.list_jobs(namespace, name)),
                                    RT.finished.get(key, {}), body.get("status") or {})
    stamp = now()
    stuck = stuck_problems(kube, namespace, name, settings) \
        if long_unfinished(jobs, stamp, settings.resync_seconds) else []
    result = plan(body, jobs, lambda job: inspect_job(kube, job, settings.log_lines), stamp, predecessor_phase,
                  stuck, settings.retry_backoff_seconds)
    # Jobs are built from the spec the round started with (plus suspend/backoffLimit), never a mid-round edit.
    acting = {**body, "spec": result.spec}
    refused: list[tuple[str, str]] = []
    if result.status and (result.spec.get("model") or {}).get("server"):
        refused += serve_inference(kube, acting, result, stamp, settings)
    written = (body["metadata"].get("uid"), result.spec)
    if result.create and RT.configmaps.get(key) != written:  # the same content again would be a wasted PUT
        kube.apply_configmap(spec_configmap(acting))
        RT.configmaps[key] = written
    for unit, attempt in result.create:
        job = build_job(acting, unit, attempt, settings)
        try:
            created = kube.create_job(job)
        except ApiException as err:
            if err.status not in (400, 403, 404, 422):
                raise
            refused.append(("JobCreateFailed", f"creating Job {job['metadata']['name']} was refused: "
                                               f"{api_message(err)}"))
            continue
        if created is not None:
            RT.jobs.created(key, created)
            metrics.JOBS_CREATED.labels(step=unit.step).inc()
            result.events.append(("Normal", "JobCreated", f"created Job {job['metadata']['name']}"))
    for job_name, suspended in result.suspend.items():
        try:
            kube.patch_job(namespace, job_name, {"spec": {"suspend": suspended}})
        except ApiException as err:
            if err.status != 404:  # finished and deleted meanwhile: nothing left to suspend
                raise
            continue
        result.events.append(("Normal", "JobSuspended" if suspended else "JobResumed",
                              f"{'suspended' if suspended else 'resumed'} Job {job_name}"))
    if refused:
        result.block(refused, now())
    if result.status != (body.get("status") or {}):
        try:
            new = kube.replace_round_status(body, result.status)
            RT.own_writes[key] = new["metadata"]["resourceVersion"]
            RT.written[key] = (changes, new)
        except ApiException as err:
            if err.status != 409:
                raise
            RT.written.pop(key, None)
            # Stale: the next pass plans again from fresh observations and announces the transitions then.
            result.status = {}
            result.events = [e for e in result.events if e[1] == "JobCreated"]
    return result


def serve_inference(kube: Kube, body: dict[str, Any], result: Plan, stamp: str,
                    settings: OperatorSettings) -> list[tuple[str, str]]:
    """Start the current stage's inference server, hold its Jobs until it is ready, remove servers of stages
    that ended; the InferenceServerReady condition says where it stands. Returns problems for Blocked."""
    namespace = body["metadata"]["namespace"]
    step = result.status.get("step") if not result.done else None
    servers = inference.plan_servers(body, step, result.done, kube.list_servers(namespace, body["metadata"]["name"]),
                                     stamp, settings)
    for name in servers.delete:
        kube.delete_server(namespace, name)
        result.events.append(("Normal", "InferenceServerRemoved", f"removed inference server {name}"))
    for manifest in servers.create:
        if kube.create_server_object(manifest) and manifest["kind"] == "Deployment":
            result.events.append(("Normal", "InferenceServerCreated",
                                  f"created inference server {manifest['metadata']['name']}"))
    if servers.hold:
        result.create = [(unit, attempt) for unit, attempt in result.create if unit.step != servers.hold]
        result.wake_after = min(result.wake_after or 5.0, 5.0)  # look again soon: readiness has no Job event
    shown_before = any(c.get("type") == inference.CONDITION for c in result.old_conditions)
    if servers.condition is None and shown_before:
        servers.condition = (False, "NotNeeded", "no running stage uses an inference server")
    if servers.condition:
        ready, reason, message = servers.condition
        old = result.old_conditions
        shown = condition(old, inference.CONDITION, ready, reason, message, stamp,
                          result.status.get("observedGeneration"))
        others = [c for c in result.status.get("conditions") or [] if c["type"] != inference.CONDITION]
        result.status["conditions"] = [*others, shown]
    return [servers.problem] if servers.problem else []


async def _sleep_until_woken(event: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _backoff(failures: int) -> float:
    """1, 2, 4 ... seconds, capped at the resync period."""
    return min(2.0 ** max(failures - 1, 0), RT.settings.resync_seconds)


async def _serve(what: str, key: tuple[str, str], body: kopf.Body, stopped: kopf.DaemonStopped,
                 wakers: dict[tuple[str, str], asyncio.Event], reconcile: Any) -> None:
    """One resource's daemon: reconcile passes in a worker thread, woken by events or the resync timer."""
    namespace, name = key
    wake = wakers[key] = asyncio.Event()
    loop = asyncio.get_running_loop()
    failures = 0
    try:
        while not stopped:
            wake.clear()
            try:
                result = await loop.run_in_executor(RT.pool, reconcile, namespace, name)
            except ApiException as err:
                failures += 1
                delay = _backoff(failures)
                log.warning("%s %s/%s: API error %s: %s; retrying in %.0fs", what, namespace, name, err.status,
                            api_message(err), delay)
                await _sleep_until_woken(wake, stopped, delay)
                continue
            if result is None:
                return
            for kind, reason, message in result.events:
                kopf.event(body, type=kind, reason=reason, message=message[:1000])
            if result.done:
                return
            # A blocked round (a refused create, a stuck pod) is retried with a growing delay, not every pass.
            problems = getattr(result, "problems", [])
            failures = failures + 1 if problems else 0
            delay = _backoff(failures) if problems else (RT.settings.resync_seconds if result.status else 0.2)
            if getattr(result, "wake_after", None) is not None:  # a retry held back until then
                delay = min(delay, result.wake_after + 0.5)
            await _sleep_until_woken(wake, stopped, delay)
            if wake.is_set() and not stopped:
                # The Jobs of a sharded stage tend to finish together: one pass a moment later sees them all
                # (and writes the status once) where a pass per event would each write it.
                await asyncio.sleep(COALESCE_SECONDS)
    finally:
        wakers.pop(key, None)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def run_round(name: str, namespace: str, body: kopf.Body, stopped: kopf.DaemonStopped,
                    **_: Any) -> None:
    key = (namespace, name)
    try:
        await _serve("round", key, body, stopped, RT.wakers, reconcile_once)
    finally:
        RT.follows.pop(key, None)
        RT.own_writes.pop(key, None)
        RT.written.pop(key, None)
        RT.round_changes.pop(key, None)
        RT.finished.pop(key, None)
        RT.jobs.forget(key)
        RT.configmaps.pop(key, None)


def reconcile_campaign(namespace: str, name: str) -> CampaignPlan | None:
    """One campaign pass: its rounds as they are now, the plan, the rounds it creates, its status."""
    kube = RT.kube
    assert kube is not None
    body = kube.get_campaign(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    # Every round named like the campaign's, labelled or not: a look-alike must be seen to be refused.
    rounds = {r["metadata"]["name"]: r for r in kube.list_rounds(namespace, "")
              if r["metadata"]["name"].startswith(f"{name}-r")}
    result = plan_campaign(body, rounds, now())
    for manifest in result.create:
        if kube.create_round(manifest) is not None:
            result.events.append(("Normal", "RoundCreated", f"created AgentQRound {manifest['metadata']['name']}"))
    if result.status != (body.get("status") or {}):
        try:
            kube.replace_round_status(body, result.status, CAMPAIGN_PLURAL)
        except ApiException as err:
            if err.status != 409:
                raise
            result.status, result.events = {}, []
    return result


@kopf.daemon(GROUP, VERSION, CAMPAIGN_PLURAL, cancellation_timeout=10.0)
async def run_campaign(name: str, namespace: str, body: kopf.Body, stopped: kopf.DaemonStopped,
                       **_: Any) -> None:
    await _serve("campaign", (namespace, name), body, stopped, RT.campaign_wakers, reconcile_campaign)


# Async on purpose: they run on the event loop, which owns the daemons' asyncio.Events.
@kopf.on.event("apps", "v1", "deployments", labels={ROUND_LABEL: kopf.PRESENT, inference.SERVER_LABEL: kopf.PRESENT})
async def server_event(labels: dict[str, str], namespace: str, **_: Any) -> None:
    RT.wake(namespace, labels[ROUND_LABEL])  # a server became ready (or went away): its stage's Jobs may start



@kopf.on.event(GROUP, VERSION, PLURAL)
async def round_event(name: str, namespace: str, meta: kopf.Meta, labels: dict[str, str], **_: Any) -> None:
    RT.wake(namespace, name, meta.get("resourceVersion"))
    campaign = RT.campaign_wakers.get((namespace, labels.get(CAMPAIGN_LABEL, "")))
    if campaign:  # a round's phase may be what its campaign waits for
        campaign.set()


@kopf.on.event("batch", "v1", "jobs", labels={ROUND_LABEL: kopf.PRESENT})
async def job_event(type: str, body: kopf.Body, labels: dict[str, str], namespace: str, **_: Any) -> None:
    # Only a finished or vanished Job can change what the round does next; the Job controller's
    # intermediate writes (active pods) would just cost a reconcile pass each.
    job = dict(body)
    finished = job_state(job) in ("Succeeded", "Failed")
    key = (namespace, labels[ROUND_LABEL])
    RT.jobs.observe(key, job, deleted=type == "DELETED")
    if finished and key in RT.wakers:  # a TTL may delete the Job before the round's next pass sees it
        RT.finished.setdefault(key, {})[body["metadata"]["name"]] = job
    if type == "DELETED" or finished:
        RT.wake(namespace, labels[ROUND_LABEL])


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_round(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, logger: logging.Logger,
                 **_: Any) -> None:
    """Remove the round's Jobs and spec ConfigMap; its artifacts stay unless spec.deleteArtifacts."""
    kube = RT.kube
    assert kube is not None
    metrics.ROUNDS.forget((namespace, name))
    removed = kube.delete_round_objects(namespace, name, spec_configmap_name(name))
    for server in kube.list_servers(namespace, name):  # owned by the round, but no garbage collector is assumed
        kube.delete_server(namespace, server["metadata"]["name"])
    logger.info("removed %d Job(s) of round %s", removed, name)
    if spec.get("deleteArtifacts"):
        raw = {"metadata": {"name": name, "namespace": namespace, "uid": body["metadata"]["uid"]},
               "spec": dict(spec)}
        job = cleanup_job(raw, RT.settings)
        created = kube.create_job(job)
        if created is not None:
            kube.apply_configmap(cleanup_configmap(raw, created))
            logger.info("started Job %s to delete the round's artifacts", job["metadata"]["name"])
