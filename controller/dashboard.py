"""The dashboard on a cluster: rounds' live state from the AgentQRound resources, artifacts from the store.

`agentq serve` alone reads status.json, which only the embedded runner writes; on Kubernetes the truth is
the resource status the operator keeps (phase, conditions, one entry per Job) and the Jobs themselves
(when each started and finished). This module turns those into the same round view the store reader
gives, and runs the same app with it, so the page and the API do not know where a round ran. It lives
here because agentq/ never imports kubernetes.

    python -m controller.dashboard --store /artifacts --namespace agentq   # what the chart's Deployment runs
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from agentq.campaign import summary as campaign_summary
from agentq.cli import serve_args
from agentq.config import CampaignFile, ConfigError, describe_errors
from agentq.serve.reader import NotFound, StoreReader, fold_results
from agentq.serve.summary import headline
from agentq.workspace import STEPS
from controller.crd import CAMPAIGN_PLURAL
from controller.jobs import UNIT_LABEL


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def step_of(unit_key: str) -> str:
    """Unit keys are `collect-0`, `evaluate-1`, `train`, ...; the report Job belongs to evaluate."""
    step = unit_key.rsplit("-", 1)[0] if unit_key.rsplit("-", 1)[-1].isdigit() else unit_key
    return "evaluate" if step == "report" else step


def gpu_hours(job: dict[str, Any], now: float) -> float:
    """GPU-hours a Job has held: the GPUs its pod template asks for times its running time (to `now` while it
    runs). An allocation, not a utilisation: what the cluster reserved for the step."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    gpus = sum(float(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)) for c in containers)
    status = job.get("status") or {}
    start = _epoch(status.get("startTime"))
    if not gpus or start is None:
        return 0.0
    return gpus * max(0.0, (_epoch(status.get("completionTime")) or now) - start) / 3600


def round_view(body: dict[str, Any], jobs: list[dict[str, Any]], summary: dict[str, Any] | None,
               now: float | None = None) -> dict[str, Any]:
    """A resource, its Jobs and its evaluation summary (if any) as the dashboard's round view (pure)."""
    now = time.time() if now is None else now
    meta, status = body["metadata"], body.get("status") or {}
    spec = body.get("spec") or {}
    phase = status.get("phase") or "Pending"
    times: dict[str, list[dict[str, Any]]] = {}
    held: dict[str, float] = {}
    for job in jobs:
        unit = (job["metadata"].get("labels") or {}).get(UNIT_LABEL)
        if unit:
            times.setdefault(step_of(unit), []).append(job.get("status") or {})
            held[step_of(unit)] = held.get(step_of(unit), 0.0) + gpu_hours(job, now)
    entries: dict[str, list[dict[str, Any]]] = {}
    for key, entry in (status.get("jobs") or {}).items():
        entries.setdefault(step_of(key), []).append(entry)
    steps = []
    for step in ("model", *STEPS) if "model" in entries else STEPS:  # model: only rounds that fetch their base
        mine = entries.get(step, [])
        states = {e.get("state") for e in mine}
        if mine and states == {"Succeeded"} and (step != status.get("step") or phase == "Succeeded"):
            state = "Succeeded"
        elif "Failed" in states and phase == "Failed":
            state = "Failed"
        elif mine or (step == status.get("step") and phase not in ("Succeeded", "Failed", "Pending")):
            state = "Running"
        else:
            state = "Pending"
        starts = [t for t in (_epoch(s.get("startTime")) for s in times.get(step, [])) if t]
        ends = [t for t in (_epoch(s.get("completionTime")) for s in times.get(step, [])) if t]
        start = min(starts, default=None)
        end = max(ends, default=None) if state == "Succeeded" else None
        done = sum(e.get("state") == "Succeeded" for e in mine)
        steps.append({"name": step, "state": state, "startTime": start, "completionTime": end,
                      "seconds": round(end - start, 1) if start is not None and end is not None else None,
                      "shards": {"done": done, "total": max(len(mine), 1)}, "gpuHours": round(held.get(step, 0.0), 4),
                      "result": fold_results([e.get("result") or {} for e in mine])})
    pass_rate = headline(summary) or (status.get("results") or {}).get("passRate") or {}
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
    failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
    # A round run again on a cluster is a new resource (deleted and applied again): its uid names the run.
    return {"name": meta["name"], "namespace": meta.get("namespace"), "source": "cluster",
            "run": meta.get("uid") or meta.get("creationTimestamp") or meta["name"], "phase": phase,
            "step": status.get("step"), "message": failed.get("message") or progressing.get("message") or "",
            "startTime": _epoch(status.get("startTime")), "completionTime": _epoch(status.get("completionTime")),
            "updatedTime": None, "conditions": status.get("conditions") or [], "steps": steps,
            "model": (spec.get("model") or {}).get("base"), "fromRound": (spec.get("model") or {}).get("fromRound"),
            "passRate": pass_rate, "spec": spec}


def campaign_view(body: dict[str, Any], rounds_in_store: set[str]) -> dict[str, Any]:
    """An AgentQCampaign as the dashboard's campaign view: the same fields `agentq campaign run` writes to
    campaigns/<name>/campaign.json, computed by the same function, plus the phase and the round in progress."""
    meta, status = body["metadata"], body.get("status") or {}
    curve = status.get("learningCurve") or []
    stopped = None
    if status.get("phase") in ("Succeeded", "Failed"):
        done = next((c for c in status.get("conditions") or [] if c.get("type") == status["phase"]), {})
        stopped = done.get("reason") or status["phase"]
    try:
        campaign = CampaignFile.model_validate({"metadata": {"name": meta["name"]}, "spec": body.get("spec") or {}})
    except ValidationError as err:  # the operator marks it Failed; the page still lists it, saying why
        view = {"campaign": meta["name"], "mode": None, "rounds": len(curve), "plannedRounds": None,
                "stopped": stopped, "bestPassRate": None, "learningCurve": curve,
                "error": describe_errors(f"AgentQCampaign {meta['name']}", err)}
    else:
        view = campaign_summary(campaign, curve, stopped)
    return {"name": meta["name"], **view, "phase": status.get("phase"),
            "currentRound": status.get("currentRound"),
            "roundsInStore": [p.get("name") for p in curve if p.get("name") in rounds_in_store]}


class ClusterRounds:
    """The dashboard's round source on a cluster: one namespace's AgentQRounds, or every namespace's."""

    def __init__(self, kube: Any, reader: StoreReader, namespace: str | None = None) -> None:
        self.kube = kube
        self.reader = reader
        self.namespace = namespace

    def _view(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        jobs = self.kube.list_jobs(meta["namespace"], meta["name"])
        view = round_view(body, jobs, self.reader.json(f"rounds/{meta['name']}/eval/summary.json"))
        if not self.reader.exists(meta["name"]):
            return {**view, "collected": 0, "kind": None, "progress": None}
        trees = self.reader.trees(meta["name"])
        return {**view, "collected": len(trees), "kind": self.reader.kind(meta["name"], trees),
                "progress": self.reader.progress(meta["name"], view["spec"], trees)}

    def rounds(self) -> list[dict[str, Any]]:
        bodies = self.kube.list_rounds(self.namespace)
        return sorted((self._view(b) for b in bodies), key=lambda r: r["name"])

    def round(self, name: str) -> dict[str, Any]:
        if self.namespace:
            body = self.kube.get_round(self.namespace, name)
        else:
            body = next((b for b in self.kube.list_rounds(None) if b["metadata"]["name"] == name), None)
        if body is None:
            where = f"namespace {self.namespace}" if self.namespace else "any namespace"
            raise NotFound(f"no AgentQRound {name!r} in {where}")
        return self._view(body)

    def campaigns(self) -> list[dict[str, Any]]:
        names = set(self.reader.round_names())
        bodies = self.kube.list_rounds(self.namespace, plural=CAMPAIGN_PLURAL)
        return sorted((campaign_view(b, names) for b in bodies), key=lambda c: c["name"])

    def campaign(self, name: str) -> dict[str, Any]:
        found = next((c for c in self.campaigns() if c["name"] == name), None)
        if found is None:
            where = f"namespace {self.namespace}" if self.namespace else "any namespace"
            raise NotFound(f"no AgentQCampaign {name!r} in {where}")
        return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.dashboard", description=__doc__.splitlines()[0])
    serve_args(parser)
    parser.add_argument("--namespace", default=None, help="the rounds' namespace; default: every namespace")
    args = parser.parse_args(argv)
    from agentq.serve.app import create_app
    from agentq.serve.main import configure_logging, open_named_store, read_token, serve
    from controller.kube import Kube

    try:
        token = read_token(args.token_file)
        reader = StoreReader(open_named_store(args.store))
    except ConfigError as err:
        print(f"controller.dashboard: {err}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    source = ClusterRounds(Kube(), reader, args.namespace)
    return serve(create_app(reader, source, token=token, poll_interval=args.poll_interval,
                            allowed_hosts=args.allowed_host), args)


if __name__ == "__main__":
    sys.exit(main())
