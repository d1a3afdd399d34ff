"""What an AgentQCampaign should look like next, decided from its rounds as observed now (pure: no API calls).

A campaign owns its rounds and creates them one at a time: round N+1 (starting from round N's merged model)
only once round N succeeded and its paired evaluation still allows going on. The decisions themselves
(the learning-curve point of a round, when the campaign is over) are agentq.campaign's, shared with
`agentq campaign run`, so the cluster and the embedded runner stop at the same round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentq.campaign import point, round_name, round_of, summary, verdict
from agentq.config import API_VERSION, CAMPAIGN_KIND, KIND, CampaignFile, describe_errors
from controller.reconcile import TERMINAL, condition

CAMPAIGN_LABEL = "agentq.dev/campaign"
INDEX_LABEL = "agentq.dev/campaign-round"


@dataclass
class CampaignPlan:
    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)  # AgentQRound manifests
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status.get("phase") in TERMINAL


def _owner(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": API_VERSION, "kind": CAMPAIGN_KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def round_manifest(body: dict[str, Any], campaign: CampaignFile, index: int) -> dict[str, Any]:
    """Round `index` of the campaign as an AgentQRound the campaign owns (deleted with it)."""
    round_file = round_of(campaign, index)
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": round_file.name, "namespace": body["metadata"]["namespace"],
                         "labels": {CAMPAIGN_LABEL: campaign.name, INDEX_LABEL: str(index)},
                         "ownerReferences": [_owner(body)]},
            "spec": round_file.spec.model_dump(mode="json", by_alias=True, exclude_none=True)}


def _conditions(old: list[dict], phase: str, reason: str, message: str, now: str,
                generation: int | None) -> list[dict[str, Any]]:
    return [condition(old, ctype, on, reason if on else f"Not{ctype}", message if on else "", now, generation)
            for ctype, on in (("Progressing", phase == "Running"), ("Succeeded", phase == "Succeeded"),
                              ("Failed", phase == "Failed"))]


def plan_campaign(body: dict[str, Any], rounds: dict[str, dict[str, Any]], now: str) -> CampaignPlan:
    """The next status and the rounds to create. `rounds` are the campaign's rounds by name, as observed."""
    old = dict(body.get("status") or {})
    if old.get("phase") in TERMINAL:
        return CampaignPlan(status=old)
    meta = body["metadata"]
    status: dict[str, Any] = {**old, "observedGeneration": meta.get("generation")}
    events: list[tuple[str, str, str]] = []

    def finish(phase: str, reason: str, message: str) -> CampaignPlan:
        status["phase"] = phase
        status["conditions"] = _conditions(old.get("conditions") or [], phase, reason, message, now,
                                           meta.get("generation"))
        if phase in TERMINAL:
            status.setdefault("completionTime", now)
        if phase != old.get("phase") or (phase == "Running" and message != _message(old)):
            events.append(("Warning" if phase == "Failed" else "Normal", reason, message))
        return CampaignPlan(status=status, events=events)

    try:
        campaign = CampaignFile.model_validate({"metadata": {"name": meta["name"]}, "spec": body.get("spec") or {}})
    except ValidationError as err:
        return finish("Failed", "InvalidSpec", describe_errors(f"AgentQCampaign {meta['name']}", err))
    status.setdefault("startTime", now)
    curve: list[dict[str, Any]] = []
    reached = _index(campaign.name, old.get("currentRound"))  # the furthest round the campaign has created
    for index in range(1, campaign.spec.rounds + 1):
        name = round_name(campaign.name, index)
        found = rounds.get(name)
        if found is None and index <= reached:
            # Deleted by someone: a decision of theirs to show, never undone by quietly making it again.
            _record(status, campaign, [p for p in old.get("learningCurve") or [] if p.get("round", 0) < index])
            return finish("Failed", "RoundDeleted",
                          f"round {name} was deleted while the campaign ran; the campaign stops here (its learning "
                          "curve so far is kept). Delete and re-create the campaign to run it again")
        status["currentRound"] = name
        if found is None:
            plan = finish("Running", "RoundCreated", f"round {index} of {campaign.spec.rounds}: created {name}")
            plan.create = [round_manifest(body, campaign, index)]
            _record(plan.status, campaign, curve)
            return plan
        owners = {ref.get("uid") for ref in found["metadata"].get("ownerReferences") or []}
        if meta.get("uid") not in owners:
            return finish("Failed", "ForeignRound",
                          f"round {name} exists but is not owned by this campaign; delete or rename it")
        round_status = found.get("status") or {}
        phase = round_status.get("phase")
        if phase == "Failed":
            failed = next((c for c in round_status.get("conditions") or [] if c.get("type") == "Failed"), {})
            _record(status, campaign, curve)
            return finish("Failed", "RoundFailed", f"round {name} failed: {failed.get('message', '')}".strip())
        if phase != "Succeeded":
            _record(status, campaign, curve)
            return finish("Running", "RoundRunning", f"round {index} of {campaign.spec.rounds}: {name} is "
                                                     f"{phase or 'starting'}")
        curve.append(point(campaign, index, round_status.get("results") or {}))
        reason = verdict(campaign, curve)
        if reason:
            _record(status, campaign, curve)
            why = "no gain" if reason == "NoGain" else "every round ran"
            return finish("Succeeded", reason, f"stopped after {len(curve)} round(s): {why}")
    raise AssertionError("verdict() ends a campaign at its last round at the latest")


def _index(campaign: str, name: str | None) -> int:
    """N of a round named <campaign>-rN; 0 for none."""
    prefix = f"{campaign}-r"
    if not name or not name.startswith(prefix) or not name[len(prefix):].isdigit():
        return 0
    return int(name[len(prefix):])


def _message(status: dict[str, Any]) -> str:
    return next((c.get("message", "") for c in status.get("conditions") or [] if c.get("type") == "Progressing"), "")


def _record(status: dict[str, Any], campaign: CampaignFile, curve: list[dict[str, Any]]) -> None:
    """The learning curve so far, and the best pass rate as text for `kubectl get`."""
    result = summary(campaign, curve, None)
    status["learningCurve"] = curve
    status["bestPassRate"] = "" if result["bestPassRate"] is None else f"{result['mode']}={result['bestPassRate']:.2f}"
