"""The AgentQRound and AgentQCampaign CRDs, generated from agentq.config's RoundSpec and CampaignSpec so
the resources and the embedded files can never disagree.

`python -m controller.crd > manifests/crd.yaml` and `python -m controller.crd campaign >
manifests/campaign-crd.yaml` regenerate the checked-in manifests; a test fails when one is stale. Pydantic
emits JSON Schema (2020-12) while Kubernetes wants an OpenAPI v3.0 *structural* schema, so the translation
inlines $refs, turns `anyOf [X, null]` into `nullable`, and drops what structural schemas reject (titles,
`additionalProperties: false`, `const`, null defaults).

`--cel` writes a second variant of the round CRD (manifests/crd-cel.yaml) with CEL `x-kubernetes-validations`
that refuse spec edits after the round started, except the fields the operator lets change (MUTABLE_FIELDS).
Servers before 1.25 cannot hold CEL rules (kubectl refuses the unknown field, the server would drop it), and
Helm never templates a chart's crds/, so the chart and manifests/crd.yaml stay plain for old servers (where
the operator's SpecChanged condition is the only guard) and clusters on 1.25+ apply the CEL variant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from agentq.config import API_VERSION, CAMPAIGN_KIND, KIND, CampaignSpec, RoundSpec
from controller.jobs import MUTABLE_FIELDS

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "agentqrounds"
CAMPAIGN_PLURAL = "agentqcampaigns"


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    short_names: list[str]
    spec: type[BaseModel]
    columns: list[dict[str, str]]


def _column(name: str, path: str, kind: str = "string") -> dict[str, str]:
    return {"name": name, "type": kind, "jsonPath": path}


AGE = _column("Age", ".metadata.creationTimestamp", "date")
RESOURCES = {
    "round": Resource(KIND, PLURAL, ["aqr"], RoundSpec, [
        _column("Phase", ".status.phase"), _column("Step", ".status.step"), _column("Pass-Rate", ".status.passRate"),
        AGE]),
    "campaign": Resource(CAMPAIGN_KIND, CAMPAIGN_PLURAL, ["aqc"], CampaignSpec, [
        _column("Phase", ".status.phase"), _column("Round", ".status.currentRound"),
        _column("Best", ".status.bestPassRate"), AGE]),
}

# Cross-field rules the pydantic model states in code (a model_validator) and a structural schema can only
# state as `oneOf` branches that carry nothing but `required`.
_CROSS_FIELD: dict[str, dict[str, Any]] = {
    "StoreSpec": {"oneOf": [{"required": [name]} for name in ("path", "pvc", "s3")]},
}
_DROP = {"title", "$defs", "examples", "readOnly", "writeOnly", "deprecated"}


def _resolve(ref: str, defs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = ref.rsplit("/", 1)[-1]
    return name, defs[name]


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic schema node -> one structural schema node (recursively)."""
    node = dict(node)
    extra: dict[str, Any] = {}
    if "$ref" in node:
        name, target = _resolve(node.pop("$ref"), defs)
        extra = _CROSS_FIELD.get(name, {})
        node = {**target, **node}
    nullable = False
    if "anyOf" in node:
        every = node.pop("anyOf")
        branches = [b for b in every if b.get("type") != "null"]
        nullable = len(branches) < len(every)
        if len(branches) != 1:
            raise ValueError(f"cannot express anyOf with {len(branches)} non-null branches structurally")
        inner = _structural(branches[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k not in inner}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {prop: _structural(sub, defs) for prop, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True
        elif key == "default" and value in (None, ""):
            continue  # kube 1.20 reads an empty-string default as null and rejects the CRD
        else:
            out[key] = value
    if nullable:
        out["nullable"] = True
    out.update(extra)
    return out


def spec_schema(model: type[BaseModel] = RoundSpec) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def frozen_spec_rules(model: type[BaseModel] = RoundSpec) -> list[dict[str, str]]:
    """One CEL transition rule per spec field that may not change once the round started (the operator set
    status.startTime, together with the acceptedSpec it acts on).

    Stated on the root because a rule on a field runs only while the field exists in both versions (adding or
    removing an optional field would slip through) and because "started" lives in the status, which a spec
    update cannot change. One rule per field, so the refusal names it. Equality is a bounded traversal of the
    two values: no comprehension over lists, so the cost estimate stays far below the per-rule budget."""
    rules = []
    for field in model.model_fields.values():
        name = field.alias or ""
        if name in MUTABLE_FIELDS:
            continue
        same = (f"has(self.spec.{name}) == has(oldSelf.spec.{name}) && "
                f"(!has(self.spec.{name}) || self.spec.{name} == oldSelf.spec.{name})")
        rules.append({"rule": f"!has(oldSelf.status) || !has(oldSelf.status.startTime) || ({same})",
                      "message": f"spec.{name} cannot change after the round started; only "
                                 f"{' and '.join(f'spec.{m}' for m in MUTABLE_FIELDS)} may change"})
    return rules


def crd(resource: str = "round", cel: bool = False) -> dict[str, Any]:
    what = RESOURCES[resource]
    status: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(what.spec),
            "status": status,
        },
    }
    if cel:
        if resource != "round":
            raise ValueError("only the round CRD has a CEL variant")
        # CEL sees only declared fields: the one it reads from the status is declared, the rest stays free.
        status["properties"] = {"startTime": {"type": "string"}}
        schema["x-kubernetes-validations"] = frozen_spec_rules(what.spec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{what.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": what.plural, "singular": what.kind.lower(), "kind": what.kind,
                      "shortNames": what.short_names, "listKind": f"{what.kind}List"},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": what.columns,
            }],
        },
    }


def render(resource: str = "round", cel: bool = False) -> str:
    what = RESOURCES[resource]
    command = "python -m controller.crd" + ("" if resource == "round" else f" {resource}") + (" --cel" if cel else "")
    header = f"# Generated by `{command}` from agentq.config.{what.spec.__name__}; do not edit by hand.\n"
    if cel:
        header += "# For Kubernetes 1.25+ (CEL validation rules); manifests/crd.yaml serves older servers.\n"
    return header + yaml.safe_dump(crd(resource, cel), sort_keys=False, width=110)


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.stdout.write(render(*[a for a in args if a != "--cel"][:1], cel="--cel" in args))
