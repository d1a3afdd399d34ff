"""The CEL variant of the round CRD (manifests/crd-cel.yaml): every rule parsed and evaluated by a real CEL
implementation (cel-python) on old/new object pairs, and the whole CRD validated against the apiextensions
v1 schema of a recent Kubernetes. The 1.20 test server cannot hold CEL rules, so these checks stand in for
admission until a 1.25+ cluster (the kind workflow) runs them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml

from controller.crd import crd, render
from controller.jobs import MUTABLE_FIELDS

REPO = Path(__file__).resolve().parent.parent
CEL_CRD = REPO / "manifests" / "crd-cel.yaml"


def _rules() -> list[dict[str, str]]:
    return crd("round", cel=True)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]


def _round(**status: Any) -> dict[str, Any]:
    example = yaml.safe_load((REPO / "manifests" / "examples" / "round-scripted.yaml").read_text())
    return {**example, "status": status} if status else example


def refusals(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The messages of the rules `new` breaks as an update of `old`, as the API server would evaluate them."""
    env = celpy.Environment()
    broken = []
    for rule in _rules():
        program = env.program(env.compile(rule["rule"]))
        verdict = program.evaluate({"self": celpy.json_to_cel(new), "oldSelf": celpy.json_to_cel(old)})
        assert isinstance(verdict, celpy.celtypes.BoolType), f"{rule['rule']} gave {verdict!r}"
        if not verdict:
            broken.append(rule["message"])
    return broken


STARTED = {"phase": "Collecting", "startTime": "2026-01-01T00:00:00Z"}


def test_checked_in_cel_crd_is_not_stale():
    assert CEL_CRD.read_text() == render("round", cel=True), \
        "manifests/crd-cel.yaml is stale: python -m controller.crd --cel > manifests/crd-cel.yaml"


def test_every_spec_field_but_the_mutable_ones_has_a_rule():
    spec = crd("round")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    named = {r["message"].split()[0] for r in _rules()}
    assert named == {f"spec.{f}" for f in spec["properties"] if f not in MUTABLE_FIELDS}
    assert "x-kubernetes-validations" not in yaml.safe_dump(crd("round")), "the plain CRD must stay CEL-free"


def test_suspend_and_retry_budget_may_change_after_the_start():
    old = _round(**STARTED)
    new = copy.deepcopy(old)
    new["spec"]["suspend"], new["spec"]["backoffLimit"] = True, 7
    assert refusals(old, new) == []


def test_a_model_change_after_the_start_is_refused_with_the_fields_name():
    old = _round(**STARTED)
    new = copy.deepcopy(old)
    new["spec"]["model"]["base"] = "another/model"
    assert refusals(old, new) == [
        "spec.model cannot change after the round started; only spec.suspend and spec.backoffLimit may change"]


def test_adding_or_removing_an_optional_field_after_the_start_is_refused():
    old = _round(**STARTED)
    new = copy.deepcopy(old)
    new["spec"]["image"] = "registry.example/agentq:other"
    assert [m.split()[0] for m in refusals(old, new)] == ["spec.image"]
    assert [m.split()[0] for m in refusals(new, old)] == ["spec.image"]


def test_before_the_start_any_edit_passes():
    old = _round()
    new = copy.deepcopy(old)
    new["spec"]["model"]["base"] = "another/model"
    new["spec"]["collect"] = {**new["spec"].get("collect", {}), "shards": 5}
    assert refusals(old, new) == []
    assert refusals(_round(phase="Pending"), {**new, "status": {"phase": "Pending"}}) == []


@pytest.mark.parametrize("version", ["1.25", "1.33"])
def test_cel_crd_is_a_valid_crd_for_recent_kubernetes(version: str):
    kubernetes_validate.validate(yaml.safe_load(CEL_CRD.read_text()), version, strict=True)
