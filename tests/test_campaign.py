"""Campaigns: the shared decisions (agentq.campaign), the operator's pure planner (controller.campaign) and a
two-round campaign run embedded on the tiny preset."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from agentq.campaign import point, round_of, verdict
from agentq.cli import main
from agentq.config import CampaignFile
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks
from controller.campaign import CAMPAIGN_LABEL, plan_campaign

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEMPLATE = {"model": {"base": "tiny", "backend": "scripted"}, "dataset": {"train": "t.jsonl", "test": "e.jsonl"},
            "store": {"pvc": "artifacts"}, "evaluate": {"modes": ["full_rewrite"]}}


def campaign(**spec) -> CampaignFile:
    return CampaignFile.model_validate({"metadata": {"name": "learn"}, "spec": {"template": TEMPLATE, **spec}})


def result(rate: float, delta: float | None = None, ci: list[float] | None = None) -> dict:
    out: dict = {"passRate": {"full_rewrite": rate}}
    if delta is not None:
        out["deltaPassAt1"] = {"full_rewrite": delta}
    if ci is not None:
        out["deltaCi95"] = {"full_rewrite": ci}
    return out


def test_rounds_chain_from_the_previous_merged_model():
    c = campaign(rounds=3)
    assert round_of(c, 1).name == "learn-r1" and round_of(c, 1).spec.model.from_round is None
    assert round_of(c, 3).spec.model.from_round == "learn-r2"
    assert round_of(c, 2).spec.dataset.train == "t.jsonl"


def test_a_gain_is_an_interval_above_min_delta():
    c = campaign(stop={"minDelta": 0.0})
    assert point(c, 1, result(0.4, 0.1, [0.02, 0.18]))["gain"]
    assert not point(c, 1, result(0.4, 0.1, [-0.02, 0.22]))["gain"]  # the interval reaches zero: noise
    assert point(c, 1, result(0.4, 0.1))["gain"]  # no interval given: the point estimate decides
    assert not point(c, 1, result(0.4))["gain"]  # no paired comparison at all: no evidence of a gain


def test_the_campaign_stops_after_patience_rounds_without_gain():
    c = campaign(rounds=5, stop={"patience": 2})
    gain, flat = point(c, 1, result(0.5, 0.1)), point(c, 2, result(0.5, 0.0))
    assert verdict(c, [gain]) is None and verdict(c, [gain, flat]) is None
    assert verdict(c, [gain, flat, flat]) == "NoGain"
    assert verdict(campaign(rounds=2), [gain, gain]) == "AllRounds"


def body(**spec) -> dict:
    return {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQCampaign",
            "metadata": {"name": "learn", "namespace": "ns", "uid": "c-1", "generation": 1},
            "spec": {"template": TEMPLATE, **spec}}


def observed(manifest: dict, phase: str, results: dict | None = None) -> dict:
    r = copy.deepcopy(manifest)
    r["status"] = {"phase": phase, "results": results or {}}
    return r


def test_the_operator_creates_rounds_one_at_a_time_and_keeps_the_curve():
    b = body(rounds=2, stop={"patience": 2})
    p = plan_campaign(b, {}, "T0")
    [r1] = p.create
    assert r1["metadata"]["name"] == "learn-r1" and r1["metadata"]["labels"][CAMPAIGN_LABEL] == "learn"
    assert r1["metadata"]["ownerReferences"][0]["uid"] == "c-1" and r1["kind"] == "AgentQRound"
    assert p.status["phase"] == "Running" and p.status["currentRound"] == "learn-r1"
    b["status"] = p.status
    p = plan_campaign(b, {"learn-r1": observed(r1, "Training")}, "T1")
    assert p.create == [] and "learn-r1 is Training" in p.status["conditions"][0]["message"]
    p = plan_campaign(b, {"learn-r1": observed(r1, "Succeeded", result(0.3, 0.1))}, "T2")
    [r2] = p.create
    assert r2["spec"]["model"]["fromRound"] == "learn-r1"
    assert p.status["learningCurve"][0]["passRate"] == 0.3 and p.status["bestPassRate"] == "full_rewrite=0.30"
    b["status"] = p.status
    p = plan_campaign(b, {"learn-r1": observed(r1, "Succeeded", result(0.3, 0.1)),
                          "learn-r2": observed(r2, "Succeeded", result(0.35, 0.05))}, "T3")
    assert p.done and p.status["phase"] == "Succeeded" and p.status["conditions"][1]["reason"] == "AllRounds"
    assert [pt["round"] for pt in p.status["learningCurve"]] == [1, 2] and p.status["completionTime"] == "T3"


def test_the_operator_stops_early_and_fails_with_its_round():
    b = body(rounds=3, stop={"patience": 1})
    r1 = plan_campaign(b, {}, "T").create[0]
    p = plan_campaign(b, {"learn-r1": observed(r1, "Succeeded", result(0.2, -0.05))}, "T")
    assert p.status["phase"] == "Succeeded" and p.create == [] and "no gain" in p.status["conditions"][1]["message"]
    failed = observed(r1, "Failed")
    failed["status"]["conditions"] = [{"type": "Failed", "status": "True", "message": "Job learn-r1-train failed"}]
    p = plan_campaign(body(rounds=3), {"learn-r1": failed}, "T")
    assert p.status["phase"] == "Failed" and "Job learn-r1-train failed" in p.status["conditions"][2]["message"]


def test_a_look_alike_round_is_refused():
    r1 = plan_campaign(body(), {}, "T").create[0]
    r1["metadata"]["ownerReferences"] = []
    p = plan_campaign(body(), {"learn-r1": observed(r1, "Succeeded", result(0.9, 0.5))}, "T")
    assert p.status["phase"] == "Failed" and p.status["conditions"][2]["reason"] == "ForeignRound"


@pytest.mark.slow
def test_two_round_campaign_runs_embedded(tmp_path, capsys):
    tasks = load_humanevalfix(DATA)
    write_tasks(tmp_path / "train.jsonl", tasks[:6])
    write_tasks(tmp_path / "test.jsonl", tasks[100:104])
    path = tmp_path / "campaign.yaml"
    path.write_text("apiVersion: agentq.dev/v1alpha1\nkind: AgentQCampaign\nmetadata: {name: learn}\n"
                    "spec:\n  rounds: 2\n  stop: {patience: 2}\n  template:\n"
                    "    model: {base: tiny, backend: scripted}\n"
                    "    dataset: {train: train.jsonl, test: test.jsonl}\n    store: {path: store}\n")
    assert main(["campaign", "run", str(path), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    store = tmp_path / "store"
    assert (store / "rounds" / "learn-r1" / "merged" / "config.json").exists()
    r2 = (store / "rounds" / "learn-r2" / "spec.yaml").read_text()
    assert "fromRound: learn-r1" in r2
    summary = json.loads((store / "campaigns" / "learn" / "campaign.json").read_text())
    assert [p["name"] for p in summary["learningCurve"]] == ["learn-r1", "learn-r2"]
    assert summary["stopped"] in ("AllRounds", "NoGain") and "campaign learn finished" in out
    assert "| learn-r2 |" in (store / "campaigns" / "learn" / "report.md").read_text()


def test_a_campaign_without_a_baseline_is_refused_not_stopped_for_no_gain():
    template = {**TEMPLATE, "evaluate": {"modes": ["full_rewrite"], "baseline": False}}
    with pytest.raises(ValueError, match="template.evaluate.baseline must be true in a campaign"):
        CampaignFile.model_validate({"metadata": {"name": "learn"}, "spec": {"template": template}})
    p = plan_campaign({**body(), "spec": {"template": template}}, {}, "T")
    assert p.status["phase"] == "Failed" and p.create == []
    assert "evaluate.baseline must be true" in p.status["conditions"][2]["message"]


def test_a_member_round_deleted_mid_campaign_stops_it_visibly_and_is_not_made_again():
    b = body(rounds=3, stop={"patience": 2})
    r1 = plan_campaign(b, {}, "T0").create[0]
    b["status"] = plan_campaign(b, {"learn-r1": observed(r1, "Succeeded", result(0.3, 0.1))}, "T1").status
    r2 = round_manifest_of(b, 2)
    b["status"] = plan_campaign(b, {"learn-r1": observed(r1, "Succeeded", result(0.3, 0.1)),
                                    "learn-r2": observed(r2, "Training")}, "T2").status
    assert b["status"]["currentRound"] == "learn-r2"
    p = plan_campaign(b, {"learn-r1": observed(r1, "Succeeded", result(0.3, 0.1))}, "T3")  # r2 deleted
    assert p.create == [] and p.status["phase"] == "Failed"
    failed = p.status["conditions"][2]
    assert failed["reason"] == "RoundDeleted" and "learn-r2 was deleted while the campaign ran" in failed["message"]
    assert ("Warning", "RoundDeleted") in [e[:2] for e in p.events]
    assert [pt["round"] for pt in p.status["learningCurve"]] == [1]


def round_manifest_of(b: dict, index: int) -> dict:
    from controller.campaign import round_manifest

    return round_manifest(b, CampaignFile.model_validate({"metadata": {"name": "learn"}, "spec": b["spec"]}), index)
