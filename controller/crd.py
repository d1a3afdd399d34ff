"""The AgentQRound and AgentQCampaign CRDs, generated from agentq.config's RoundSpec and CampaignSpec so
the resources and the embedded files can never disagree.

`python -m controller.crd > manifests/crd.yaml` and `python -m controller.crd campaign >
manifests/campaign-crd.yaml` regenerate the checked-in manifests; a test fails when one is stale. Pydantic
emits JSON Schema (2020-12) while Kubernetes wants an OpenAPI v3.0 *structural* schema, so the translation
inlines $refs, turns `anyOf [X, null]` into `nullable`, and drops what structural schemas reject (titles,
`additionalProperties: false`, `const`, null defaults). No CEL: the test server is 1.20.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from agentq.config import API_VERSION, CAMPAIGN_KIND, KIND, CampaignSpec, RoundSpec

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


def crd(resource: str = "round") -> dict[str, Any]:
    what = RESOURCES[resource]
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(what.spec),
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
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


def render(resource: str = "round") -> str:
    what = RESOURCES[resource]
    command = "python -m controller.crd" + ("" if resource == "round" else f" {resource}")
    header = f"# Generated by `{command}` from agentq.config.{what.spec.__name__}; do not edit by hand.\n"
    return header + yaml.safe_dump(crd(resource), sort_keys=False, width=110)


if __name__ == "__main__":
    sys.stdout.write(render(*sys.argv[1:2]))
