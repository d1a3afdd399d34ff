"""The kopf operator: one daemon per AgentQRound (and per AgentQCampaign) runs reconcile passes; events of the
objects a round owns wake it.

Run it with `kopf run -m controller.handlers --all-namespaces [--peering agentq | --standalone]`.

Why a daemon per round rather than per-event handlers: it serialises everything one round does (no two
passes of the same round race each other) while still reacting within milliseconds, because every change of
the round's Jobs, servers and spec ConfigMap, of the round itself and of the round it starts from sets the
daemon's wake-up event; a resync timeout covers anything missed.

Level-triggered, as controller-runtime operators are: each pass reads the objects the round owns as they are
(from list+watch caches, controller/informer.py, so a pass costs few API calls), plans from them and the
round's frozen spec (reconcile.plan), and converges them: a missing Job, spec ConfigMap, server Deployment or
Service is created, a Job is suspended or resumed from its own state. No decision rests on a record that a
lost write can leave stale, so killing and restarting the operator at any point neither duplicates nor skips
anything. What the API server refuses (a create, a quota, an admission policy) is shown in the Blocked
condition with the API server's words and a Warning event; a dropped connection or a restarting API server is
retried within a second or two.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller import inference, metrics
from controller.campaign import CAMPAIGN_LABEL, CampaignPlan, plan_campaign
from controller.crd import CAMPAIGN_PLURAL, GROUP, PLURAL, VERSION
from controller.informer import (
    CONFIGMAPS,
    DEPLOYMENTS,
    JOBS,
    PODS,
    ROUNDS,
    SERVICES,
    Informers,
    retry_delay,
    wait_ready,
)
from controller.jobs import (
    CLEANUP_UNIT,
    ROUND_LABEL,
    STEP_LABEL,
    UNIT_LABEL,
    build_job,
    cleanup_configmap,
    cleanup_job,
    spec_configmap,
    spec_configmap_name,
    suspend_patch,
)
from controller.kube import Kube
from controller.reconcile import (
    TERMINAL,
    Inspection,
    Plan,
    condition,
    job_failure_reason,
    job_state,
    long_unfinished,
    plan,
    pod_problems,
    refused_pods,
    with_unrecorded_finished,
)
from controller.settings import OperatorSettings, load_settings

log = logging.getLogger("agentq.operator")
COALESCE_SECONDS = 0.05  # how long a woken daemon waits for the events that come with the one that woke it
# What the API server answers to a request it will not carry out as sent: shown in Blocked, not retried blindly.
REFUSED = (400, 403, 404, 422)
# A dropped or refused connection, a timeout, a TLS error: the API server is away for a moment; retry soon.
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class Runtime:
    """Process-wide state: the API client, the settings, the caches and the wake-up event of every daemon."""

    def __init__(self) -> None:
        self.settings: OperatorSettings = OperatorSettings()
        self.kube: Kube | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reconcile")
        self.started = time.monotonic()
        self.peering = False  # whether other replicas may be running (kopf peering)
        self.wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.campaign_wakers: dict[tuple[str, str], asyncio.Event] = {}
        self.follows: dict[tuple[str, str], str] = {}  # (namespace, round) -> the round it starts from
        # (namespace, round) -> (generation, deletionTimestamp, status) of the round as its daemon last saw or
        # wrote it: a round event showing the same wakes nobody
        self.round_marks: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        # (namespace, round) -> Job name -> the Job as its last watch event showed it finished
        self.finished: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        # (namespace, round) -> ((round UID, spec), the spec ConfigMap it calls for): built on change only
        self.configmaps: dict[tuple[str, str], tuple[tuple[str, dict[str, Any]], dict[str, Any]]] = {}
        self.reported_cleanups: set[str] = set()  # UIDs of failed cleanup Jobs already given a Warning event
        self.informers: dict[str, Informers] = {}

    def wake(self, namespace: str, name: str) -> None:
        """Wake the round's daemon and the daemons of the rounds that start from it (its phase may have just
        become Succeeded). Runs on the event loop, which owns the asyncio.Events."""
        event = self.wakers.get((namespace, name))
        if event:
            event.set()
        self.wake_followers(namespace, name)

    def wake_followers(self, namespace: str, name: str) -> None:
        for (ns, follower), predecessor in list(self.follows.items()):
            if ns == namespace and predecessor == name and (ns, follower) in self.wakers:
                self.wakers[(ns, follower)].set()

    def wake_campaign(self, namespace: str, name: str) -> None:
        event = self.campaign_wakers.get((namespace, name))
        if event:
            event.set()

    def wake_soon(self, namespace: str, name: str) -> None:
        """`wake` from any thread (an informer's)."""
        if self.loop is not None and (namespace, name) in self.wakers:
            self.loop.call_soon_threadsafe(self.wake, namespace, name)

    def cache(self, kind: str) -> Informers:
        return self.informers[kind]


RT = Runtime()


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_seen(kind: str, job: dict[str, Any]) -> None:
    """A round Job changed. Only a finished or vanished Job can change what the round does next; the Job
    controller's intermediate writes (active pods) would just cost a reconcile pass each."""
    meta = job["metadata"]
    labels = meta.get("labels") or {}
    key = (meta.get("namespace", ""), labels.get(ROUND_LABEL, ""))
    finished = job_state(job) in TERMINAL
    if labels.get(UNIT_LABEL) == CLEANUP_UNIT:
        if kind != "DELETED":
            _cleanup_failed(job)
    elif finished and key in RT.wakers:  # a TTL may delete a step Job before the round's next pass sees it
        RT.finished.setdefault(key, {})[meta["name"]] = job
    if kind == "DELETED" or finished:
        RT.wake_soon(*key)


def _cleanup_failed(job: dict[str, Any]) -> None:
    """A Warning event on a cleanup Job that failed: it outlives its round, so nobody else would say so (a
    round re-created under that name shows it in its Blocked condition too)."""
    uid = job["metadata"].get("uid", "")
    if job_state(job) != "Failed" or uid in RT.reported_cleanups or RT.kube is None:
        return
    RT.reported_cleanups.add(uid)
    message = (f"deleting the artifacts of round {job['metadata']['labels'].get(ROUND_LABEL)} failed "
               f"({job_failure_reason(job)}): they may still be in the store")
    try:
        RT.kube.post_event(job, "Warning", "CleanupFailed", message)
    except (ApiException, *CONNECTION_ERRORS) as err:  # the round's Blocked condition still says it
        log.warning("could not post the CleanupFailed event of Job %s: %s", job["metadata"]["name"], err)


def _mark(body: dict[str, Any], status: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """What a pass acts on: the spec (generation), deletion, and the status (`status`: the one being written)."""
    meta = body["metadata"]
    return meta.get("generation"), meta.get("deletionTimestamp"), body.get("status") if status is None else status


def _round_seen(kind: str, body: dict[str, Any]) -> None:
    """A round changed: its daemon, the rounds that start from it and its campaign may have something to do.
    Not when the event shows what the daemon already saw or wrote (kopf's own metadata patches, such as its
    finalizer; the echo of our own status write, when it is parsed because it came before the write's answer;
    the ADDED event of a round whose daemon read it first): each would cost a pass."""
    meta = body["metadata"]
    namespace, name = meta.get("namespace", ""), meta["name"]
    if RT.loop is None:
        return
    mark = _mark(body)
    if kind == "DELETED" or RT.round_marks.get((namespace, name)) != mark:
        RT.round_marks[(namespace, name)] = mark
        RT.loop.call_soon_threadsafe(RT.wake, namespace, name)
    if kind == "DELETED":
        RT.round_marks.pop((namespace, name), None)
    campaign = (meta.get("labels") or {}).get(CAMPAIGN_LABEL)
    if campaign:  # a round's phase may be what its campaign waits for
        RT.loop.call_soon_threadsafe(RT.wake_campaign, namespace, campaign)


def _announce(body: dict[str, Any]) -> None:
    """After our own status write (whose watch event is never parsed): the rounds that start from this one and
    its campaign may be waiting for the phase it now shows."""
    meta = body["metadata"]
    if RT.loop is None:
        return
    RT.loop.call_soon_threadsafe(RT.wake_followers, meta["namespace"], meta["name"])
    campaign = (meta.get("labels") or {}).get(CAMPAIGN_LABEL)
    if campaign:
        RT.loop.call_soon_threadsafe(RT.wake_campaign, meta["namespace"], campaign)


def _wake_on(*kinds: str) -> Any:
    """A callback that wakes the object's round on these kinds of event: a server Deployment on any (its
    readiness), a Service or spec ConfigMap when it is deleted (the next pass re-creates it), not on the echo
    of our own creates."""
    def seen(kind: str, obj: dict[str, Any]) -> None:
        if kind in kinds:
            meta = obj["metadata"]
            RT.wake_soon(meta.get("namespace", ""), (meta.get("labels") or {}).get(ROUND_LABEL, ""))
    return seen


def _watch_error(kind: str) -> Any:
    return lambda code: metrics.WATCH_ERRORS.labels(kind=kind, code=code).inc()


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No handler here reads a diff (a pass compares what it observes, not what changed), so the essence kopf
    would deep-copy out of every round event (a tenth of the operator's CPU) is empty, and as it never changes
    kopf never writes it into an annotation (a PATCH, and a watch event, per round)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    RT.settings = load_settings()
    RT.kube = Kube()
    RT.loop = asyncio.get_running_loop()
    RT.started = time.monotonic()
    RT.peering = not settings.peering.standalone
    # The round's objects, each watched with the operator's label only (server-side), on a client of their own:
    # a watch holds its connection for minutes, which the reconcile threads' pool must not lose.
    api = client.ApiClient(RT.kube.api.configuration)
    clusterwide = settings.peering.clusterwide
    RT.informers = {
        "rounds": Informers(api, ROUNDS, "", ROUND_LABEL, clusterwide, _round_seen, _watch_error("rounds")),
        "jobs": Informers(api, JOBS, ROUND_LABEL, ROUND_LABEL, clusterwide, _job_seen, _watch_error("jobs")),
        "configmaps": Informers(api, CONFIGMAPS, ROUND_LABEL, ROUND_LABEL, clusterwide, _wake_on("DELETED"),
                                _watch_error("configmaps")),
        "deployments": Informers(api, DEPLOYMENTS, inference.SERVER_LABEL, ROUND_LABEL, clusterwide,
                                 _wake_on("ADDED", "MODIFIED", "DELETED"), _watch_error("deployments")),
        "services": Informers(api, SERVICES, inference.SERVER_LABEL, ROUND_LABEL, clusterwide, _wake_on("DELETED"),
                              _watch_error("services")),
        # The step pods: a finished step's result (its termination message) and why a pod does not start,
        # read from memory. Their changes wake nobody: the Job's own event follows a pod's end.
        "pods": Informers(api, PODS, ROUND_LABEL, ROUND_LABEL, clusterwide, _wake_on(), _watch_error("pods")),
    }
    # Replicas with equal priority all freeze (safe, but nothing runs); distinct ones let exactly one act.
    if not settings.peering.priority:
        settings.peering.priority = random.randint(1, 1_000_000)
    # A replica's record outlives it by this much: a standby takes over at most that long after a crash.
    settings.peering.lifetime = RT.settings.peering_lifetime_seconds
    # Only warnings become Kubernetes Events by themselves; the reconciler posts its own transitions. kopf's
    # line per handler call is noise that costs CPU.
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.persistence.finalizer = "agentq.dev/cleanup"
    # kopf's own bookkeeping in annotations only: the whole status belongs to the reconciler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="agentq.dev")
    settings.persistence.diffbase_storage = NoDiffBase(prefix="agentq.dev")
    # kopf's own requests (watches, finalizers, events, peering) give up on a dead connection within seconds.
    settings.networking.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 0.5
    if RT.settings.metrics_port:
        metrics.serve(RT.settings.metrics_port)


@kopf.on.cleanup()
def stop_informers(**_: Any) -> None:
    for group in RT.informers.values():
        group.stop()


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return {}


def _pods_of(kube: Kube, job: dict[str, Any]) -> list[dict[str, Any]]:
    """A Job's pods, oldest first, from the pod cache; from the API server when the cache does not show the
    newest one terminated yet (its watch event may come after the Job's own), so a finished Job is never
    judged from a pod the cache shows still running."""
    meta = job["metadata"]
    cached = sorted((p for p in RT.cache("pods").store.indexed(meta["namespace"],
                                                               (meta.get("labels") or {}).get(ROUND_LABEL, ""))
                     if any(ref.get("uid") == meta.get("uid") for ref in p["metadata"].get("ownerReferences") or [])),
                    key=_created)
    if cached and _terminated(cached[-1]):
        return cached
    return sorted(kube.job_pods(meta["namespace"], meta["name"]), key=_created)


def _created(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("creationTimestamp") or ""


def inspect_job(kube: Kube, job: dict[str, Any], log_lines: int) -> Inspection:
    """A finished Job's outcome from its newest pod: the step's JSON result (termination message) when it
    succeeded; the reason and the log tail (pods/log, else the termination message) when it failed."""
    meta = job["metadata"]
    pods = _pods_of(kube, job)
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
    except CONNECTION_ERRORS:
        metrics.RECONCILE_ERRORS.labels(code="connection").inc()
        raise
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    if result is None:
        metrics.ROUNDS.forget((namespace, name))
    elif result.status:
        metrics.ROUNDS.observe((namespace, name), result.status.get("phase"), bool(result.problems))
    return result


def stuck_problems(kube: Kube, namespace: str, settings: OperatorSettings, jobs: list[dict[str, Any]],
                   pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Why a round's Jobs may be waiting on a person: their `pods` (unschedulable, image pull), pods the API
    server refuses to create (a ResourceQuota, an admission policy: the Job controller's FailedCreate events),
    or the step ServiceAccount missing from the namespace (then no pod can be created at all)."""
    problems = pod_problems(pods)
    podless = {j["metadata"]["uid"]: j["metadata"]["name"] for j in jobs
               if job_state(j) not in TERMINAL and not (j.get("status") or {}).get("active")}
    if podless:
        problems += refused_pods(kube.failed_creates(namespace), podless)
    account = settings.job_service_account
    if account and not kube.service_account_exists(namespace, account):
        problems.append(("ServiceAccountMissing", f"ServiceAccount {account} (operator.jobServiceAccount) does not "
                                                  f"exist in namespace {namespace}: step pods cannot be created"))
    return problems


def observed_round(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    """The round as last seen (its watch, or the answer to our own status write, whichever is newer); a GET
    when its watch has not shown it (yet, or any more)."""
    return RT.cache("rounds").store.get(namespace, name) or kube.get_round(namespace, name)


def _refusal(what: str, err: ApiException) -> str | None:
    """What Blocked says when the API server refused `what`, in its words; None for any other error."""
    if err.status not in REFUSED:
        return None
    return f"{what} was refused: {api_message(err)}"


def _reconcile(namespace: str, name: str) -> Plan | None:
    kube, settings = RT.kube, RT.settings
    assert kube is not None
    key = (namespace, name)
    wait_ready(list(RT.informers.values()), namespace)
    body = observed_round(kube, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    RT.round_marks[key] = _mark(body)
    predecessor_phase = None
    from_round = ((body.get("spec") or {}).get("model") or {}).get("fromRound")
    if from_round:
        RT.follows[key] = from_round
        pred = RT.cache("rounds").store.get(namespace, from_round) or kube.get_round(namespace, from_round)
        predecessor_phase = ((pred or {}).get("status") or {}).get("phase") or ("Pending" if pred else "")
    listed = RT.cache("jobs").store.indexed(namespace, name)
    jobs = with_unrecorded_finished(listed, RT.finished.get(key, {}), body.get("status") or {})
    stamp = now()
    stuck = stuck_problems(kube, namespace, settings, jobs, RT.cache("pods").store.indexed(namespace, name)) \
        if long_unfinished(jobs, stamp, settings.resync_seconds) else []
    result = plan(body, jobs, lambda job: inspect_job(kube, job, settings.log_lines), stamp, predecessor_phase,
                  stuck, settings.retry_backoff_seconds)
    # Jobs are built from the spec the round started with (plus suspend/backoffLimit), never a mid-round edit.
    acting = {**body, "spec": result.spec}
    refused: list[tuple[str, str]] = []
    if result.status and (result.spec.get("model") or {}).get("server"):
        refused += serve_inference(kube, acting, result, stamp, settings)
    if result.create or (result.status.get("startTime") and not result.done):
        problem = ensure_configmap(kube, acting, key)
        if problem:  # a Job whose pod cannot mount its round file would only hang
            refused.append(problem)
            result.create = []
    created = []
    for unit, attempt in result.create:
        job = build_job(acting, unit, attempt, settings)
        try:
            made = kube.create_job(job)
        except ApiException as err:
            if (problem := _refusal(f"creating Job {job['metadata']['name']}", err)) is None:
                raise
            refused.append(("JobCreateFailed", problem))
            continue
        if made is not None:
            RT.cache("jobs").store.put(made, own=True)  # seen at once, before its watch event arrives
            metrics.JOBS_CREATED.labels(step=unit.step).inc()
            created.append(job["metadata"]["name"])
            # In this pass's status write already, as the next pass would record it (a write saved per stage).
            result.status.setdefault("jobs", {})[unit.key] = {"name": job["metadata"]["name"], "state": "Pending",
                                                              "attempts": attempt + 1}
    # One event per pass, not per Job (each is an API call), naming the Jobs the pass's phase transition event
    # does not already name (a transition announced again after a stale write names an earlier step's Jobs).
    named = {word for kind, reason, message in result.events if kind == "Normal" and
             reason == result.status.get("phase") for word in re.split(r"[\s,:]+", message)}
    if unnamed := [name for name in created if name not in named]:
        result.events.append(("Normal", "JobCreated", f"created Job{'s' if len(unnamed) > 1 else ''} "
                                                      f"{', '.join(unnamed)}"))
    for job_name, suspended in result.suspend.items():
        try:
            RT.cache("jobs").store.put(kube.patch_job(namespace, job_name, suspend_patch(suspended)), own=True)
        except ApiException as err:
            if err.status == 404:  # finished and deleted meanwhile: nothing left to suspend
                continue
            if (problem := _refusal(f"{'suspending' if suspended else 'resuming'} Job {job_name}", err)) is None:
                raise
            refused.append(("JobSuspendFailed", problem))
            continue
        result.events.append(("Normal", "JobSuspended" if suspended else "JobResumed",
                              f"{'suspended' if suspended else 'resumed'} Job {job_name}"))
    if refused:
        result.block(refused, now())
    if worth_writing(result.status, body.get("status") or {}, listed) and not _write(kube, key, body, result.status):
        # Stale: the next pass plans again from fresh observations and announces the transitions then.
        result.status = {}
        result.events = [e for e in result.events if e[1] in ("JobCreated", "JobSuspended", "JobResumed")]
    return result


def _write(kube: Kube, key: tuple[str, str], body: dict[str, Any], status: dict[str, Any]) -> bool:
    """Write the status planned from `body`; False when the round changed meanwhile in what a plan reads (a
    409). A change of its metadata alone (kopf adding its finalizer while the first pass ran) does not make the
    plan stale: the write is made again on the newer copy the cache shows."""
    RT.round_marks[key] = _mark(body, status)  # its echo may come before the answer
    try:
        new = kube.write_status(body, status)
    except ApiException as err:
        if err.status != 409:
            raise
        fresh = RT.cache("rounds").store.get(*key)
        if fresh is None or _rv(fresh) == _rv(body) or _mark(fresh) != _mark(body):
            return False
        try:
            new = kube.write_status(fresh, status)
        except ApiException as again:
            if again.status != 409:
                raise
            return False
    if new is not None:
        RT.cache("rounds").store.put(new, own=True)
        RT.round_marks[key] = _mark(new)
        _announce(new)
    return True


def _rv(body: dict[str, Any]) -> str:
    return body["metadata"].get("resourceVersion", "")


def _material(status: dict[str, Any], steady: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The status less what alone is not worth a write: a Job that went from Pending to Running (a write per
    Job; the next write that matters shows it), and the outcome of a `steady` Job (a shard of the step still
    running that finished, and stays until the round is deleted: no TTL), with the partial results and the
    progress message that move with it. Its outcome can be read from the Job again, and the write that ends
    the step records every shard's: one write per step instead of one per shard."""
    jobs = status.get("jobs")
    if not jobs:
        return status
    view = {**status, "jobs": {unit: {**{k: v for k, v in entry.items() if k != "result"}, "state": "Pending"}
                               if entry.get("state") == "Running" or entry.get("name") in steady else entry
                               for unit, entry in jobs.items()}}
    if steady:
        view.pop("results", None)
        view.pop("passRate", None)
        view["conditions"] = [{**c, "message": ""} if c.get("type") == "Progressing" else c
                              for c in status.get("conditions") or []]
    return view


def worth_writing(status: dict[str, Any], old: dict[str, Any], jobs: list[dict[str, Any]]) -> bool:
    """Whether `status` differs from the `old` one the round shows in more than what may wait (_material);
    `jobs`: the round's Jobs as listed."""
    steady = _steady(jobs, status, old)
    return _material(status, steady) != _material(old, steady)


def _steady(jobs: list[dict[str, Any]], status: dict[str, Any], old: dict[str, Any]) -> set[str]:
    """The Jobs whose outcome may wait for the end of their step (see _material): succeeded, of the step the
    round was and still is at, listed (not only remembered from a watch event), not being deleted, no TTL."""
    step = status.get("step")
    if not step or step != old.get("step") or status.get("phase") != old.get("phase"):
        return set()
    return {j["metadata"]["name"] for j in jobs
            if (j["metadata"].get("labels") or {}).get(STEP_LABEL) == step and job_state(j) == "Succeeded"
            and not j["metadata"].get("deletionTimestamp")
            and (j.get("spec") or {}).get("ttlSecondsAfterFinished") is None}


def ensure_configmap(kube: Kube, body: dict[str, Any], key: tuple[str, str]) -> tuple[str, str] | None:
    """The round's spec ConfigMap as the frozen spec calls for, re-created if someone deleted it and restored if
    someone edited it; a refusal as a Blocked problem. Costs no API call when it is already right."""
    wanted = (body["metadata"]["uid"], body["spec"])
    cached = RT.configmaps.get(key)
    if cached is None or cached[0] != wanted:  # the round file is a YAML dump: built when the spec changes only
        cached = RT.configmaps[key] = (wanted, spec_configmap(body))
    manifest = cached[1]
    current = RT.cache("configmaps").store.get(key[0], manifest["metadata"]["name"])
    if current is not None and current.get("data") == manifest["data"]:
        return None
    try:
        RT.cache("configmaps").store.put(kube.apply_configmap(manifest), own=True)
    except ApiException as err:
        if (problem := _refusal(f"creating ConfigMap {manifest['metadata']['name']}", err)) is None:
            raise
        return "ConfigMapCreateFailed", problem
    return None


def serve_inference(kube: Kube, body: dict[str, Any], result: Plan, stamp: str,
                    settings: OperatorSettings) -> list[tuple[str, str]]:
    """Start the current stage's inference server (whichever of its Deployment and Service is missing), hold
    its Jobs until it is ready, remove servers of stages that ended; the InferenceServerReady condition says
    where it stands. Returns problems for Blocked (a refused create among them)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    step = result.status.get("step") if not result.done else None
    servers = inference.plan_servers(body, step, result.done, RT.cache("deployments").store.indexed(namespace, name),
                                     RT.cache("services").store.indexed(namespace, name), stamp, settings)
    problems = [servers.problem] if servers.problem else []
    for server in servers.delete:
        kube.delete_server(namespace, server)
        result.events.append(("Normal", "InferenceServerRemoved", f"removed inference server {server}"))
    for manifest in servers.create:
        what = f"creating the inference server's {manifest['kind']} {manifest['metadata']['name']}"
        try:
            made = kube.create_server_object(manifest)
        except ApiException as err:
            if (problem := _refusal(what, err)) is None:
                raise
            problems.append(("InferenceServerCreateFailed", problem))
            servers.hold = step
            servers.condition = (False, "CreateFailed", problem)
            continue
        if made is not None:
            RT.cache("deployments" if manifest["kind"] == "Deployment" else "services").store.put(made, own=True)
            result.events.append(("Normal", "InferenceServerCreated", f"created inference server "
                                  f"{manifest['kind']} {manifest['metadata']['name']}"))
    if servers.hold:
        result.create = [(unit, attempt) for unit, attempt in result.create if unit.step != servers.hold]
        result.wake_after = min(result.wake_after or 5.0, 5.0)  # look again soon: readiness has no Job event
    shown_before = any(c.get("type") == inference.CONDITION for c in result.old_conditions)
    if servers.condition is None and shown_before:
        servers.condition = (False, "NotNeeded", "no running stage uses an inference server")
    if servers.condition:
        ready, reason, message = servers.condition
        shown = condition(result.old_conditions, inference.CONDITION, ready, reason, message, stamp,
                          result.status.get("observedGeneration"))
        others = [c for c in result.status.get("conditions") or [] if c["type"] != inference.CONDITION]
        result.status["conditions"] = [*others, shown]
    return problems


async def _sleep_until_woken(event: asyncio.Event | None, stop: asyncio.Future, timeout: float) -> None:
    """Until `event` is set, `stop` (the daemon's stop flag, awaited once per daemon) is done, or `timeout`."""
    waiter = asyncio.ensure_future(event.wait()) if event is not None else None
    try:
        await asyncio.wait([stop] if waiter is None else [stop, waiter], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if waiter is not None:
            waiter.cancel()


def _backoff(failures: int) -> float:
    """1, 2, 4 ... seconds, capped at the resync period: what a person must fix is not retried in a tight loop."""
    return min(2.0 ** max(failures - 1, 0), RT.settings.resync_seconds)


def _transient(err: Exception) -> bool:
    """The API server away or overloaded for a moment (a dropped connection, a timeout, a restart's 5xx/429)."""
    return not isinstance(err, ApiException) or err.status in (429, 500, 502, 503, 504) or err.status is None


async def _serve(what: str, key: tuple[str, str], body: kopf.Body, stopped: kopf.DaemonStopped,
                 wakers: dict[tuple[str, str], asyncio.Event], reconcile: Any) -> None:
    """One resource's daemon: reconcile passes in a worker thread, woken by events or the resync timer."""
    namespace, name = key
    wake = wakers[key] = asyncio.Event()
    stop = asyncio.ensure_future(stopped.wait())
    loop = asyncio.get_running_loop()
    failures = 0
    # Replicas started together each act until they have seen the other in the peering object: a newly
    # started replica waits a moment first, so the one that should stand by is paused (its daemons stopped)
    # before it ever acts.
    grace = RT.started + RT.settings.startup_grace_seconds - time.monotonic() if RT.peering else 0.0
    try:
        if grace > 0:
            await _sleep_until_woken(None, stop, grace)
        if stopped:
            return
        log.info("acting on %s %s/%s", what, namespace, name)
        while not stopped:
            wake.clear()
            try:
                result = await loop.run_in_executor(RT.pool, reconcile, namespace, name)
            except (ApiException, *CONNECTION_ERRORS) as err:
                failures += 1
                delay = retry_delay(failures) if _transient(err) else _backoff(failures)
                why = f"API error {err.status}: {api_message(err)}" if isinstance(err, ApiException) else \
                    f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                log.warning("%s %s/%s: %s; retrying in %.1fs", what, namespace, name, why, delay)
                await _sleep_until_woken(wake, stop, delay)
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
            await _sleep_until_woken(wake, stop, delay)
            if wake.is_set() and not stopped:
                # The Jobs of a sharded stage tend to finish together: one pass a moment later sees them all
                # (and writes the status once) where a pass per event would each write it.
                await asyncio.sleep(COALESCE_SECONDS)
    finally:
        stop.cancel()
        wakers.pop(key, None)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0, backoff=1.0)
async def run_round(name: str, namespace: str, body: kopf.Body, stopped: kopf.DaemonStopped,
                    **_: Any) -> None:
    key = (namespace, name)
    try:
        await _serve("round", key, body, stopped, RT.wakers, reconcile_once)
    finally:
        RT.follows.pop(key, None)
        RT.finished.pop(key, None)
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
            kube.write_status(body, result.status, CAMPAIGN_PLURAL)
        except ApiException as err:
            if err.status != 409:
                raise
            result.status, result.events = {}, []
    return result


@kopf.daemon(GROUP, VERSION, CAMPAIGN_PLURAL, cancellation_timeout=10.0, backoff=1.0)
async def run_campaign(name: str, namespace: str, body: kopf.Body, stopped: kopf.DaemonStopped,
                       **_: Any) -> None:
    await _serve("campaign", (namespace, name), body, stopped, RT.campaign_wakers, reconcile_campaign)


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=2.0)
def delete_round(name: str, namespace: str, body: kopf.Body, spec: kopf.Spec, **_: Any) -> None:
    """Remove the round's Jobs and spec ConfigMap; its artifacts stay unless spec.deleteArtifacts."""
    kube = RT.kube
    assert kube is not None
    metrics.ROUNDS.forget((namespace, name))
    removed = kube.delete_round_objects(namespace, name, spec_configmap_name(name))
    for server in kube.list_servers(namespace, name):  # owned by the round, but no garbage collector is assumed
        kube.delete_server(namespace, server)
    log.info("removed %d Job(s) of round %s/%s", removed, namespace, name)
    if spec.get("deleteArtifacts"):
        raw = {"metadata": {"name": name, "namespace": namespace, "uid": body["metadata"]["uid"]},
               "spec": dict(spec)}
        job = cleanup_job(raw, RT.settings)
        created = kube.create_job(job)
        if created is not None:
            kube.apply_configmap(cleanup_configmap(raw, created))
            log.info("started Job %s/%s to delete the round's artifacts", namespace, job["metadata"]["name"])
