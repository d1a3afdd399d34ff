"""What a round should look like next, decided from what is observed right now (pure: no API calls).

The operator keeps no memory between reconciles: the Jobs labelled with the round, the round's status and
its predecessor's phase say everything. That is what makes it restart-safe: a fresh operator computes the
same plan from the same observations, and deterministic Job names turn a repeated create into a 409.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentq.config import RoundFile, RoundSpec, describe_errors
from controller.jobs import ATTEMPT_LABEL, PHASE_OF_STEP, UNIT_LABEL, Unit, job_name, units

TERMINAL = ("Succeeded", "Failed")
# What `inspect(job)` returns: the parsed termination-message result of a succeeded Job, or for a failed
# one the reason a person can act on and the last log lines.
Inspection = dict[str, Any]
Inspect = Callable[[dict[str, Any]], Inspection]


@dataclass
class Plan:
    status: dict[str, Any]
    create: list[tuple[Unit, int]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    @property
    def done(self) -> bool:
        return self.status.get("phase") in TERMINAL


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


def job_failure_reason(job: dict[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
    return "Failed"


def validate(body: dict[str, Any]) -> str | None:
    """What the API server's schema cannot check (metadata.name, cross-field rules); None when valid."""
    name = body["metadata"]["name"]
    try:
        RoundFile.model_validate({"metadata": {"name": name}, "spec": body.get("spec") or {}})
    except ValidationError as err:
        return describe_errors(f"AgentQRound {name}", err)
    return None


def _condition(old: list[dict], ctype: str, status: bool, reason: str, message: str, now: str) -> dict:
    """metav1.Condition: lastTransitionTime moves only when the status flips, so a no-op reconcile is a no-op."""
    value = "True" if status else "False"
    prev = next((c for c in old if c.get("type") == ctype), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == value else now
    return {"type": ctype, "status": value, "reason": reason, "message": message, "lastTransitionTime": since}


def _conditions(old: list[dict], phase: str, reason: str, message: str, now: str) -> list[dict]:
    running = phase not in TERMINAL and phase not in ("Suspended", "Pending")
    return [
        _condition(old, "Progressing", running, reason, message, now),
        _condition(old, "Succeeded", phase == "Succeeded", reason if phase == "Succeeded" else phase,
                   message if phase == "Succeeded" else "", now),
        _condition(old, "Failed", phase == "Failed", reason if phase == "Failed" else "NotFailed",
                   message if phase == "Failed" else "", now),
    ]


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


def plan(body: dict[str, Any], jobs: list[dict[str, Any]], inspect: Inspect, now: str,
         predecessor_phase: str | None = None) -> Plan:
    """The next status and the Jobs to create. `predecessor_phase` is the fromRound's phase ("" when that
    round does not exist); `inspect` is only called for finished Jobs whose outcome is not yet recorded."""
    old = dict(body.get("status") or {})
    if old.get("phase") in TERMINAL:
        return Plan(status=old)
    meta = body["metadata"]
    name = meta["name"]
    status: dict[str, Any] = {**old, "observedGeneration": meta.get("generation")}
    old_conditions = old.get("conditions") or []
    old_jobs = old.get("jobs") or {}

    def finish(phase: str, reason: str, message: str, step: str | None = None) -> Plan:
        status["phase"] = phase
        if step:
            status["step"] = step
        status["conditions"] = _conditions(old_conditions, phase, reason, message, now)
        if phase in TERMINAL:
            status.setdefault("completionTime", now)
        result = Plan(status=status)
        if phase != old.get("phase"):
            kind = "Warning" if phase == "Failed" else "Normal"
            result.events.append((kind, phase, message or phase))
        return result

    problem = validate(body)
    if problem:
        return finish("Failed", "InvalidSpec", problem)
    spec = RoundSpec.model_validate(body["spec"])
    status["artifacts"] = _artifacts(spec, name)

    by_unit: dict[str, list[dict]] = {}
    for job in jobs:
        labels = job["metadata"].get("labels") or {}
        if UNIT_LABEL in labels and not job["metadata"].get("deletionTimestamp"):
            by_unit.setdefault(labels[UNIT_LABEL], []).append(job)

    from_round = spec.model.from_round
    if from_round and predecessor_phase != "Succeeded" and not by_unit:
        why = "does not exist" if not predecessor_phase else f"is {predecessor_phase}"
        return finish("Pending", "WaitingForRound",
                      f"waiting for round {from_round} to succeed (it {why}); this round starts from its merged model")

    jobs_status: dict[str, Any] = {}
    results: dict[str, Any] = {}
    creates: list[tuple[Unit, int]] = []
    events: list[tuple[str, str, str]] = []
    current: str | None = None
    current_names: list[str] = []
    failed: tuple[dict, Inspection, int] | None = None
    for stage in units(spec):
        stage_done = True
        stage_results: dict[str, Any] = {}
        for unit in stage:
            seen = sorted(by_unit.get(unit.key, []), key=lambda j: int(j["metadata"]["labels"][ATTEMPT_LABEL]))
            recorded = old_jobs.get(unit.key) or {}
            if not seen:
                stage_done = False
                creates.append((unit, 0))
                continue
            latest = seen[-1]
            attempt = int(latest["metadata"]["labels"][ATTEMPT_LABEL])
            state = job_state(latest)
            entry: dict[str, Any] = {"name": latest["metadata"]["name"], "state": state, "attempts": attempt + 1}
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
                    creates.append((unit, attempt + 1))
                    if not same:
                        events.append(("Warning", "JobFailed",
                                       f"{entry['name']} failed ({entry['reason']}); retrying as "
                                       f"{job_name(name, unit, attempt + 1)}"))
                elif failed is None:
                    failed = (latest, found, attempt + 1)
            jobs_status[unit.key] = entry
            if state != "Succeeded":
                current_names.append(entry["name"])
        results.update(stage_results)
        if not stage_done:  # only the first unfinished stage gets Jobs; later stages wait for it
            current = stage[0].step
            break
    status["jobs"] = jobs_status
    status["results"] = results
    text = _pass_rate_text(results)
    if text:
        status["passRate"] = text
    if any(j["state"] != "Pending" for j in jobs_status.values()) or creates:
        status.setdefault("startTime", now)

    if failed is not None:
        job, found, attempts = failed
        out = finish("Failed", "JobFailed", _failure_message(job, found, attempts), current)
        out.events = events + out.events
        return out
    if current is None:
        out = finish("Succeeded", "RoundComplete", f"all steps done; results: {results or 'none reported'}",
                     "done")
        out.events = events + out.events
        return out
    if spec.suspend:
        out = finish("Suspended", "Suspended",
                     f"spec.suspend is true: no new Jobs; resumes at step {current} when set to false", current)
        out.events = events + out.events
        return out
    new_names = [job_name(name, unit, attempt) for unit, attempt in creates]
    message = f"step {current}: " + ", ".join(sorted(set(current_names + new_names)))
    out = finish(PHASE_OF_STEP[current], PHASE_OF_STEP[current], message, current)
    out.create = creates
    out.events = events + out.events
    return out
