"""What a round should look like next, decided from what is observed right now (pure: no API calls).

The operator keeps no memory between reconciles: the Jobs labelled with the round, the round's status and
its predecessor's phase say everything. That is what makes it restart-safe: a fresh operator computes the
same plan from the same observations, and deterministic Job names turn a repeated create into a 409.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentq.config import RoundFile, RoundSpec, describe_errors
from controller.jobs import (
    ATTEMPT_LABEL,
    CLEANUP_UNIT,
    MUTABLE_FIELDS,
    PHASE_OF_STEP,
    UNIT_LABEL,
    Unit,
    job_name,
    job_suspended,
    spec_hash,
    suspended_by_round,
    units,
)

TERMINAL = ("Succeeded", "Failed")
# Pod states that will not resolve by waiting: a person has to act (fix the image, the quota, the taints).
STUCK_WAITING = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError"}
# What `inspect(job)` returns: the parsed termination-message result of a succeeded Job, or for a failed
# one the reason a person can act on and the last log lines.
Inspection = dict[str, Any]
Inspect = Callable[[dict[str, Any]], Inspection]


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[tuple[Unit, int]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # The spec the Jobs are built from: the one the round started with, plus the fields that may change.
    spec: dict[str, Any] = field(default_factory=dict)
    # What keeps the round from progressing until a person acts: (reason, message); the Blocked condition.
    problems: list[tuple[str, str]] = field(default_factory=list)
    # Unfinished Jobs to suspend (True) or resume (False) with jobs.suspend_patch: spec.suspend reaches them too.
    suspend: dict[str, bool] = field(default_factory=dict)
    # Seconds until a held-back retry may start: the next pass is due then.
    wake_after: float | None = None
    old_conditions: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status.get("phase") in TERMINAL

    def block(self, problems: list[tuple[str, str]], now: str) -> None:
        """Show `problems` (found while planning, or after it: a refused Job create) in the Blocked condition,
        with a Warning event for each one the previous status did not show yet."""
        self.problems += problems
        before = next((c for c in self.old_conditions if c.get("type") == "Blocked" and c.get("status") == "True"),
                      {})
        blocked = bool(self.problems) and not self.done
        shown = condition(self.old_conditions, "Blocked", blocked,
                          ",".join(sorted({r for r, _ in self.problems})) if blocked else "NotBlocked",
                          "; ".join(m for _, m in self.problems) if blocked else "", now,
                          self.status.get("observedGeneration"))
        self.status["conditions"] = [c for c in self.status.get("conditions") or [] if c["type"] != "Blocked"]
        self.status["conditions"].append(shown)
        if blocked:
            self.events += [("Warning", r, m) for r, m in problems if m not in before.get("message", "")]


def job_state(job: dict[str, Any]) -> str:
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return "Succeeded" if cond["type"] == "Complete" else "Failed"
    if status.get("succeeded"):
        return "Succeeded"
    if status.get("failed"):
        return "Failed"
    return "Running" if status.get("active") else "Pending"


def with_unrecorded_finished(jobs: list[dict[str, Any]], seen_finished: dict[str, dict[str, Any]],
                             status: dict[str, Any]) -> list[dict[str, Any]]:
    """The listed Jobs plus those a watch event showed finished that are gone (a TTL of a few seconds, or 0)
    before the round's status recorded their outcome: planning from the list alone would run the step again.
    Once recorded, a vanished Job is left out, so the durable-outcome path (and its JobDeleted event) holds."""
    listed = {job["metadata"]["name"] for job in jobs}
    recorded = {(entry.get("name"), entry.get("state")) for entry in (status.get("jobs") or {}).values()}
    return jobs + [job for name, job in seen_finished.items()
                   if name not in listed and (name, job_state(job)) not in recorded]


def job_failure_reason(job: dict[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
    return "Failed"


def parse(name: str, spec: dict[str, Any]) -> RoundSpec | str:
    """The round's spec as a RoundSpec, or what the API server's schema cannot check (metadata.name,
    cross-field rules) as one line. Validated once per distinct (name, spec): a round's every pass repeats it."""
    return _parse(name, json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=1024)
def _parse(name: str, spec_json: str) -> RoundSpec | str:
    try:
        return RoundFile.model_validate({"metadata": {"name": name}, "spec": json.loads(spec_json)}).spec
    except ValidationError as err:
        return describe_errors(f"AgentQRound {name}", err)


def condition(old: list[dict], ctype: str, status: bool, reason: str, message: str, now: str,
               generation: int | None) -> dict:
    """metav1.Condition: lastTransitionTime moves only when the status flips, so a no-op reconcile is a no-op."""
    value = "True" if status else "False"
    prev = next((c for c in old if c.get("type") == ctype), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == value else now
    return {"type": ctype, "status": value, "reason": reason, "message": message, "lastTransitionTime": since,
            "observedGeneration": generation}


def _conditions(old: list[dict], phase: str, reason: str, message: str, now: str, generation: int | None,
                spec_changed: str) -> list[dict]:
    running = phase not in TERMINAL and phase not in ("Suspended", "Pending")
    return [
        condition(old, "Progressing", running, reason, message, now, generation),
        condition(old, "Succeeded", phase == "Succeeded", reason if phase == "Succeeded" else phase,
                   message if phase == "Succeeded" else "", now, generation),
        condition(old, "Failed", phase == "Failed", reason if phase == "Failed" else "NotFailed",
                   message if phase == "Failed" else "", now, generation),
        condition(old, "SpecChanged", bool(spec_changed), "SpecChanged" if spec_changed else "AsStarted",
                   spec_changed, now, generation),
    ]


def pod_problems(pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pods of the round's running Jobs that will not start by waiting: unschedulable, or an image that
    cannot be pulled, or a container that cannot be created. (reason, message a person can act on)."""
    problems = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
            continue
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" \
                    and cond.get("reason") == "Unschedulable":
                problems.append(("Unschedulable", f"pod {meta['name']} is unschedulable: {cond.get('message', '')}"))
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING:
                problems.append((waiting["reason"], f"pod {meta['name']}: {waiting['reason']}: "
                                                    f"{waiting.get('message', '')}".rstrip(": ")))
    return problems


def refused_pods(events: list[dict[str, Any]], podless: dict[str, str]) -> list[tuple[str, str]]:
    """The Job controller's FailedCreate events of Jobs that have no pod (`podless`: Job UID -> name), newest
    per Job: a ResourceQuota or an admission policy refusing the step's pod, in the API server's words."""
    newest: dict[str, dict[str, Any]] = {}
    for event in events:
        uid = (event.get("involvedObject") or {}).get("uid")
        stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
        if uid in podless and stamp >= (newest.get(uid, {}).get("lastTimestamp") or ""):
            newest[uid] = {**event, "lastTimestamp": stamp}
    problems = []
    for uid, event in sorted(newest.items(), key=lambda item: podless[item[0]]):
        message = event.get("message") or "pod creation refused"
        reason = "QuotaExceeded" if "exceeded quota" in message else "PodCreateRefused"
        problems.append((reason, f"Job {podless[uid]} cannot create its pod: {message}"))
    return problems


def _owned(job: dict[str, Any], uid: str | None) -> bool:
    """A Job of this round: owned by its UID, so a look-alike (same labels, another owner) is never counted."""
    return uid is None or any(ref.get("uid") == uid for ref in job["metadata"].get("ownerReferences") or [])


def _effective_spec(live: dict[str, Any], accepted: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The spec to act on, and what a person is told when the live spec moved away from it after the start."""
    if accepted is None:
        return live, ""
    effective = {k: v for k, v in accepted.items() if k not in MUTABLE_FIELDS}
    effective.update({k: live[k] for k in MUTABLE_FIELDS if k in live})
    changed = sorted(k for k in set(live) | set(accepted)
                     if k not in MUTABLE_FIELDS and live.get(k) != accepted.get(k))
    if not changed:
        return effective, ""
    fields = ", ".join(f"spec.{k}" for k in changed)
    return effective, (f"{fields} changed after the round started; only spec.suspend and spec.backoffLimit may "
                       "change. The round goes on with the spec it started with: delete and re-create it (or "
                       "create a new round) to run the new settings")


def _artifacts(spec: RoundSpec, round_name: str) -> dict[str, str]:
    store = spec.store
    if store.pvc:
        root = f"pvc://{store.pvc}/rounds/{round_name}"
    elif store.s3:
        prefix = f"{store.s3.prefix.strip('/')}/" if store.s3.prefix.strip("/") else ""
        root = f"s3://{store.s3.bucket}/{prefix}rounds/{round_name}"
    else:
        root = f"file://{store.path}/rounds/{round_name}"
    return {"root": root, "trajectories": f"{root}/trajectories", "preferences": f"{root}/preferences.jsonl",
            "adapter": f"{root}/adapter", "merged": f"{root}/merged", "eval": f"{root}/eval"}


def _pass_rate_text(results: dict[str, Any]) -> str | None:
    rates = results.get("passRate")
    if not isinstance(rates, dict) or not rates:
        return None
    return " ".join(f"{mode}={float(rate):.2f}" for mode, rate in rates.items())


def _fold(into: dict[str, Any], found: dict[str, Any], sharded: bool) -> None:
    """Shards of one step report their own share (tasks, samples): counts add up; anything else is kept."""
    for key, value in found.items():
        if sharded and isinstance(value, int | float) and isinstance(into.get(key), int | float):
            into[key] += value
        else:
            into[key] = value


def _failure_message(job: dict[str, Any], found: Inspection, attempts: int) -> str:
    name = job["metadata"]["name"]
    msg = f"Job {name} failed after {attempts} attempt(s): {found.get('reason') or job_failure_reason(job)}"
    logs = (found.get("logs") or "").strip()
    return f"{msg}\nlast log lines:\n{logs}" if logs else msg


def retry_wait(job: dict[str, Any], attempt: int, now: str, backoff: float) -> float:
    """Seconds until the retry of a Job that failed on `attempt` may start: `backoff` doubled per attempt
    (capped at 10 minutes) after the failure, so a step failing on a transient cause is not retried in a
    tight loop. 0 when backoff is off or the failure time is unknown (a deleted Job)."""
    if backoff <= 0:
        return 0.0
    failed_at = next((c.get("lastTransitionTime") for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("type") == "Failed" and c.get("status") == "True"), None)
    if not failed_at:
        return 0.0
    elapsed = (_time(now) - _time(failed_at)).total_seconds()
    return max(0.0, min(backoff * 2 ** attempt, 600.0) - elapsed)


def long_unfinished(jobs: list[dict[str, Any]], now: str, older_than: float) -> bool:
    """Whether a Job has been unfinished for longer than `older_than` seconds: only then are its pods worth
    reading for a problem a person must fix, so a round that moves along costs no pod listings."""
    return any(job_state(j) not in TERMINAL and j["metadata"].get("creationTimestamp")
               and (_time(now) - _time(j["metadata"]["creationTimestamp"])).total_seconds() > older_than
               for j in jobs)


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def plan(body: dict[str, Any], jobs: list[dict[str, Any]], inspect: Inspect, now: str,
         predecessor_phase: str | None = None, stuck: list[tuple[str, str]] | None = None,
         retry_backoff: float = 0.0) -> Plan:
    """The next status and the Jobs to create. `predecessor_phase` is the fromRound's phase ("" when that
    round does not exist); `inspect` is only called for finished Jobs whose outcome is not yet recorded;
    `stuck` are the problems observed around the round's Jobs that a person must fix (pod_problems,
    a missing ServiceAccount), shown in the Blocked condition;
    `retry_backoff` spaces out the retries of a failed step (see retry_wait)."""
    old = dict(body.get("status") or {})
    if old.get("phase") in TERMINAL:
        return Plan(status=old, spec=body.get("spec") or {}, old_conditions=old.get("conditions") or [])
    meta = body["metadata"]
    name = meta["name"]
    generation = meta.get("generation")
    status: dict[str, Any] = {**old, "observedGeneration": generation}
    old_conditions = old.get("conditions") or []
    old_jobs = old.get("jobs") or {}
    spec_dict, spec_changed = _effective_spec(body.get("spec") or {}, old.get("acceptedSpec"))
    problems: list[tuple[str, str]] = list(stuck or [])
    warnings: list[tuple[str, str, str]] = []

    def finish(phase: str, reason: str, message: str, step: str | None = None) -> Plan:
        status["phase"] = phase
        if step:
            status["step"] = step
        status["conditions"] = _conditions(old_conditions, phase, reason, message, now, generation, spec_changed)
        if phase in TERMINAL:
            status.setdefault("completionTime", now)
        result = Plan(status=status, spec=spec_dict, events=list(warnings), old_conditions=old_conditions)
        if phase != old.get("phase"):
            kind = "Warning" if phase == "Failed" else "Normal"
            result.events.append((kind, phase, message or phase))
        shown = next((c for c in old_conditions if c.get("type") == "SpecChanged" and c.get("status") == "True"), {})
        if spec_changed and shown.get("message") != spec_changed:
            result.events.append(("Warning", "SpecChanged", spec_changed))
        result.block(problems, now)
        return result

    spec = parse(name, spec_dict)
    if isinstance(spec, str):
        return finish("Failed", "InvalidSpec", spec)
    status["artifacts"] = _artifacts(spec, name)

    uid = meta.get("uid")
    by_unit: dict[str, list[dict]] = {}
    foreign: dict[str, dict] = {}
    cleanup_running = None
    cleanup_failed: dict[str, Any] | None = None
    for job in jobs:
        labels = job["metadata"].get("labels") or {}
        # A Job being deleted still counts once finished: its outcome is final, and the TTL controller deletes in
        # the foreground, so a finished Job lingers (deleting) while its pods go. An unfinished one is gone.
        if job["metadata"].get("deletionTimestamp") and job_state(job) not in TERMINAL:
            continue
        if labels.get(UNIT_LABEL) == CLEANUP_UNIT:
            if job_state(job) not in TERMINAL:
                cleanup_running = job["metadata"]["name"]
            elif job_state(job) == "Failed":
                cleanup_failed = job
        elif not _owned(job, uid):
            foreign[job["metadata"]["name"]] = job
        elif UNIT_LABEL in labels:
            by_unit.setdefault(labels[UNIT_LABEL], []).append(job)

    if cleanup_running and not by_unit:
        return finish("Pending", "CleanupRunning",
                      f"Job {cleanup_running} is still deleting the artifacts of an earlier round named {name}; "
                      "this round starts when it has finished")
    if cleanup_failed is not None and not by_unit:
        # Not done: the store may still hold the earlier round's artifacts, which this round would mix with its own.
        message = (f"Job {cleanup_failed['metadata']['name']} failed to delete the artifacts of an earlier round "
                   f"named {name} ({job_failure_reason(cleanup_failed)}); they may still be in the store. Remove "
                   "them, then delete that Job: this round starts once it is gone")
        problems.append(("CleanupFailed", message))
        return finish("Pending", "CleanupFailed", message)
    from_round = spec.model.from_round
    if from_round and predecessor_phase != "Succeeded" and not by_unit and not old_jobs:
        why = "does not exist" if not predecessor_phase else f"is {predecessor_phase}"
        return finish("Pending", "WaitingForRound",
                      f"waiting for round {from_round} to succeed (it {why}); this round starts from its merged model")

    jobs_status: dict[str, Any] = {}
    results: dict[str, Any] = {}
    creates: list[tuple[Unit, int]] = []
    waits: list[float] = []
    current: str | None = None
    current_names: list[str] = []
    failed: tuple[dict, Inspection, int] | None = None
    live: dict[str, dict[str, Any]] = {}  # the unfinished Jobs as observed: what suspend acts on
    for stage in units(spec):
        stage_done = True
        stage_results: dict[str, Any] = {}
        for unit in stage:
            seen = sorted(by_unit.get(unit.key, []), key=lambda j: int(j["metadata"]["labels"][ATTEMPT_LABEL]))
            recorded = old_jobs.get(unit.key) or {}
            latest = seen[-1] if seen else None
            attempt = int(latest["metadata"]["labels"][ATTEMPT_LABEL]) if latest else -1
            if recorded.get("state") in TERMINAL and recorded.get("attempts", 0) - 1 >= attempt and \
                    (latest is None or latest["metadata"]["name"] != recorded.get("name")):
                # The Job that decided this unit is gone (deleted by hand, or by a TTL): its recorded outcome
                # stands, so the round never goes back a step and a deleted attempt still counts.
                entry = {**recorded, "jobDeleted": True}
                if not recorded.get("jobDeleted"):
                    warnings.append(("Warning", "JobDeleted",
                                     f"Job {recorded['name']} ({unit.key}, {recorded['state']}) was deleted; "
                                     "keeping its recorded outcome"))
                state, attempt = recorded["state"], recorded["attempts"] - 1
                latest = {"metadata": {"name": recorded["name"]}}
                same = True
            elif latest is None:
                stage_done = False
                creates.append((unit, 0))
                continue
            else:
                state = job_state(latest)
                entry = {"name": latest["metadata"]["name"], "state": state, "attempts": attempt + 1}
                same = recorded.get("name") == entry["name"] and recorded.get("state") == state
            if state == "Succeeded":
                found = recorded.get("result") if same and "result" in recorded else \
                    (inspect(latest).get("result") or {})
                entry["result"] = found
                _fold(stage_results, found, sharded=unit.shard is not None)
            else:
                stage_done = False
            if state == "Failed":
                found = {"reason": recorded.get("reason"), "logs": recorded.get("logs")} if same and \
                    "reason" in recorded else inspect(latest)
                entry["reason"] = found.get("reason") or job_failure_reason(latest)
                entry["logs"] = found.get("logs") or ""
                if attempt < spec.backoff_limit:
                    wait = retry_wait(latest, attempt, now, retry_backoff)
                    retry = job_name(name, unit, attempt + 1)
                    if wait > 0:
                        waits.append(wait)
                        current_names.append(f"{retry} in {wait:.0f}s")
                    else:
                        creates.append((unit, attempt + 1))
                    if not same:
                        warnings.append(("Warning", "JobFailed", f"{entry['name']} failed ({entry['reason']}); "
                                                                 f"retrying as {retry}"))
                elif failed is None:
                    failed = (latest, found, attempt + 1)
            jobs_status[unit.key] = entry
            if state != "Succeeded":
                current_names.append(entry["name"])
            if state not in TERMINAL and not entry.get("jobDeleted"):
                live[entry["name"]] = latest
        results.update(stage_results)
        if not stage_done:  # only the first unfinished stage gets Jobs; later stages wait for it
            current = stage[0].step
            break
    status["jobs"] = jobs_status
    status["results"] = results
    text = _pass_rate_text(results)
    if text:
        status["passRate"] = text
    # spec.suspend also suspends the step's unfinished Jobs (their pods stop; Kueue can take the quota back).
    # Decided from the Jobs as they are, never from a record in the round's status: a Job the round suspended
    # carries that on itself (jobs.SUSPENDED_ANNOTATION), so a lost status write or a crash right after the
    # PATCH leaves nothing stale. A Job held suspended by someone else is left alone both ways.
    if spec.suspend:
        suspend = {n: True for n, j in live.items() if not job_suspended(j)}
    else:
        suspend = {n: False for n, j in live.items() if suspended_by_round(j)}
    status["suspendedJobs"] = sorted(n for n, j in live.items() if spec.suspend and (job_suspended(j)
                                                                                     or n in suspend))
    if any(j["state"] != "Pending" for j in jobs_status.values()) or creates:
        status.setdefault("startTime", now)
        status.setdefault("acceptedSpec", spec_dict)
        status["specHash"] = spec_hash(status["acceptedSpec"])

    if failed is not None:
        job, found, attempts = failed
        return finish("Failed", "JobFailed", _failure_message(job, found, attempts), current)
    if current is None:
        return finish("Succeeded", "RoundComplete", f"all steps done; results: {results or 'none reported'}", "done")
    if spec.suspend:
        out = finish("Suspended", "Suspended",
                     f"spec.suspend is true: no new Jobs, running ones suspended; resumes at step {current} when "
                     "set to false", current)
        out.suspend = suspend
        return out
    new_names = [job_name(name, unit, attempt) for unit, attempt in creates]
    problems += [("ForeignJob", f"Job {n} exists but is not owned by this round (uid {uid}); delete or rename it")
                 for n in new_names if n in foreign]
    message = f"step {current}: " + ", ".join(sorted(set(current_names + new_names)))
    out = finish(PHASE_OF_STEP[current], PHASE_OF_STEP[current], message, current)
    out.create = [(unit, attempt) for unit, attempt in creates if job_name(name, unit, attempt) not in foreign]
    out.suspend = suspend
    out.wake_after = min(waits, default=None)
    return out
