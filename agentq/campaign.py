"""Campaigns: rounds 1..N of one template, each starting from the previous round's merged model, stopping
early when the paired evaluation shows no gain for `stop.patience` rounds in a row.

The decisions are pure functions of a round's evaluation result (the dict its evaluate step reports: the
same one the operator reads from the report Job), so `agentq campaign run` here and the AgentQCampaign
operator (controller/campaign.py) decide the same way. The module imports no ML library: the operator uses it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from agentq.config import API_VERSION, KIND, CampaignFile, RoundFile, load_yaml


def round_name(campaign: str, index: int) -> str:
    return f"{campaign}-r{index}"


def round_of(campaign: CampaignFile, index: int) -> RoundFile:
    """Round `index` (1-based): the template, starting from round index-1's merged model after the first."""
    spec = campaign.spec.template.model_copy(deep=True)
    if index > 1:
        spec.model.from_round = round_name(campaign.name, index - 1)
    return RoundFile.model_validate({"apiVersion": API_VERSION, "kind": KIND,
                                     "metadata": {"name": round_name(campaign.name, index)},
                                     "spec": spec.model_dump(by_alias=True, exclude_none=True)})


def judged_mode(campaign: CampaignFile) -> str:
    return campaign.spec.stop.mode or campaign.spec.template.evaluate.modes[0]


def point(campaign: CampaignFile, index: int, result: dict[str, Any]) -> dict[str, Any]:
    """One round on the learning curve: its pass rate, its paired delta against the model it started from
    (with the 95% interval when the evaluation gave one), and whether that counts as a gain."""
    mode = judged_mode(campaign)
    rate = (result.get("passRate") or {}).get(mode)
    delta = (result.get("deltaPassAt1") or {}).get(mode)
    interval = (result.get("deltaCi95") or {}).get(mode)
    low = interval[0] if interval else delta
    return {"round": index, "name": round_name(campaign.name, index), "mode": mode, "passRate": rate,
            "delta": delta, "deltaCi95": interval,
            "gain": low is not None and low > campaign.spec.stop.min_delta}


def verdict(campaign: CampaignFile, curve: list[dict[str, Any]]) -> str | None:
    """Why the campaign is over ("NoGain", "AllRounds"), or None while rounds remain to be run."""
    patience = campaign.spec.stop.patience
    if len(curve) >= patience and not any(p["gain"] for p in curve[-patience:]):
        return "NoGain"
    return "AllRounds" if len(curve) >= campaign.spec.rounds else None


def summary(campaign: CampaignFile, curve: list[dict[str, Any]], reason: str | None) -> dict[str, Any]:
    rates = [p["passRate"] for p in curve if p["passRate"] is not None]
    return {"campaign": campaign.name, "mode": judged_mode(campaign), "rounds": len(curve),
            "plannedRounds": campaign.spec.rounds, "stopped": reason,
            "bestPassRate": max(rates) if rates else None, "learningCurve": curve}


def report_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Campaign {result['campaign']}", "",
             f"Mode judged: {result['mode']}; {result['rounds']} of {result['plannedRounds']} rounds run"
             + (f"; stopped: {result['stopped']}" if result["stopped"] else "") + ".", "",
             "| round | pass@1 | delta vs its start | 95% interval | gain |", "|---|---|---|---|---|"]
    for p in result["learningCurve"]:
        rate = "-" if p["passRate"] is None else f"{p['passRate']:.1%}"
        delta = "-" if p["delta"] is None else f"{p['delta']:+.1%}"
        interval = "-" if not p["deltaCi95"] else f"[{p['deltaCi95'][0]:+.1%}, {p['deltaCi95'][1]:+.1%}]"
        lines.append(f"| {p['name']} | {rate} | {delta} | {interval} | {'yes' if p['gain'] else 'no'} |")
    return "\n".join(lines) + "\n"


def run_main(args: argparse.Namespace) -> int:
    """`agentq campaign run FILE`: the rounds one after another on this machine, each resumable as a round is."""
    from agentq.round import apply_preset, run_round
    from agentq.workspace import RoundWorkspace

    campaign = load_yaml(args.file, CampaignFile)
    curve: list[dict[str, Any]] = []
    reason = None
    store = None
    start = time.perf_counter()
    for index in range(1, campaign.spec.rounds + 1):
        round_file = apply_preset(round_of(campaign, index), args.preset)
        ws = RoundWorkspace(round_file, str(args.file))  # paths stay relative to the campaign file
        store = ws.store
        run_round(ws)
        marker = ws.marker("evaluate") or {}
        curve.append(point(campaign, index, marker.get("result") or {}))
        p = curve[-1]
        print(f"campaign {campaign.name}: round {index}: {p['mode']} pass@1 {p['passRate']}, delta {p['delta']} "
              f"({'gain' if p['gain'] else 'no gain'})", flush=True)
        reason = verdict(campaign, curve)
        if reason:
            break
    result = summary(campaign, curve, reason)
    assert store is not None
    prefix = f"campaigns/{campaign.name}"
    store.put_json(f"{prefix}/campaign.json", result)
    store.put_text(f"{prefix}/report.md", report_markdown(result))
    print(f"campaign {campaign.name} finished in {time.perf_counter() - start:.0f}s after {len(curve)} round(s) "
          f"({reason}); report: {store.url}/{prefix}/report.md")
    return 0
