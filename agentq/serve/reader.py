"""What the dashboard shows about rounds, read from the artifact store as JSON-ready dicts.

A round's state has two sources: `status.json` (written by the embedded runner while it works, the same
fields the operator keeps in the AgentQRound status) and the steps' completion markers, which every step
writes wherever it ran. The markers decide what is done; status.json adds what only a live runner knows
(the step in progress, when each step started). A round that was run step by step by hand has markers
only, and its phase is derived from them.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import yaml

from agentq.round import PHASE_OF_STEP
from agentq.serve.summary import headline
from agentq.store import IntegrityError, Store, StoreError
from agentq.workspace import STEPS

TERMINAL = ("Succeeded", "Failed", "Interrupted")


class NotFound(LookupError):
    """A round, task or artifact that does not exist; the message says which and where."""


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Records of a JSON Lines file; a torn last line (a writer killed mid-append) is skipped, not fatal."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def fold_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Shard results summed (numbers) or taken as they are (anything else)."""
    out: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            summed = isinstance(value, int | float) and not isinstance(value, bool) and key in out
            out[key] = out[key] + value if summed else value
    return out


class StoreReader:
    """Reads rounds from one store. Listing a large S3 store is a paged call, so the key list is kept for
    `ttl` seconds: every request of one page view shares it."""

    def __init__(self, store: Store, ttl: float = 1.0) -> None:
        self.store = store
        self.ttl = ttl
        self._keys: tuple[float, list[str]] = (0.0, [])
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[str | None, Any]] = {}

    # ---- raw access -----------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        with self._lock:
            at, keys = self._keys
            if time.monotonic() - at > self.ttl:
                keys = self.store.list("rounds")
                self._keys = (time.monotonic(), keys)
            return keys

    def round_keys(self, name: str) -> list[str]:
        prefix = f"rounds/{name}/"
        return [k[len(prefix):] for k in self.keys() if k.startswith(prefix)]

    def _cached(self, key: str, parse: Any) -> Any:
        """Parsed object, re-read only when the object's digest changed (trajectory files are large).

        A file store records an object's new digest just before it renames the new bytes into place, so a
        read in between fails its integrity check; that is a write in progress, not corruption: read again."""
        for attempt in range(3):
            digest = self.store.sha256(key)
            hit = self._parsed.get(key)
            if hit is not None and digest is not None and hit[0] == digest:
                return hit[1]
            try:
                value = parse(self.store.get_text(key))
            except IntegrityError:
                if attempt == 2:
                    raise
                time.sleep(0.05)
                continue
            self._parsed[key] = (digest, value)
            return value
        raise AssertionError("unreachable")

    def json(self, key: str) -> Any:
        try:
            return self._cached(key, json.loads) if self.store.exists(key) else None
        except (ValueError, StoreError):
            return None

    def jsonl(self, key: str) -> list[dict[str, Any]]:
        return self._cached(key, parse_jsonl) if self.store.exists(key) else []

    # ---- rounds -------------------------------------------------------------------------------------------

    def round_names(self) -> list[str]:
        names = {k.split("/")[1] for k in self.keys() if k.count("/") >= 2}
        return sorted(names)

    def spec(self, name: str) -> dict[str, Any]:
        key = f"rounds/{name}/spec.yaml"
        if not self.store.exists(key):
            return {}
        try:
            doc = yaml.safe_load(self.store.get_text(key)) or {}
        except (yaml.YAMLError, StoreError):
            return {}
        return doc.get("spec") or {} if isinstance(doc, dict) else {}

    def steps(self, name: str, spec: dict[str, Any], status: dict[str, Any]) -> list[dict[str, Any]]:
        """Each step: state (Pending, Running, Partial, Succeeded, Failed), start/end times, seconds, result."""
        shards = int((spec.get("collect") or {}).get("shards", 1))
        live = status.get("steps") or {}
        rows = []
        # `model` (fetching the base model into the store) runs only for rounds that ask for it
        fetched = "model" in live or self.store.exists(f"rounds/{name}/steps/model.json")
        for step in ("model", *STEPS) if fetched else STEPS:
            names = [f"collect-shard-{i}-of-{shards}" for i in range(shards)] if step == "collect" else [step]
            markers = [self.json(f"rounds/{name}/steps/{n}.json") for n in names]
            found = [m for m in markers if m]
            mine = live.get(step) or {}
            if found and len(found) == len(markers):
                state = "Succeeded"
            elif mine.get("state") in ("Running", "Failed", "Interrupted"):
                state = mine["state"]
            else:
                state = "Partial" if found else "Pending"
            end = mine.get("completionTime") or max((m.get("finished_at", 0) for m in found), default=None)
            start = mine.get("startTime")
            if state in ("Pending", "Partial", "Running"):
                end = None
            rows.append({"name": step, "state": state, "startTime": start, "completionTime": end,
                         "seconds": round(end - start, 1) if start is not None and end is not None else None,
                         "shards": {"done": len(found), "total": len(markers)},
                         "result": fold_results([m.get("result") or {} for m in found])})
        return rows

    def round(self, name: str) -> dict[str, Any]:
        if name not in self.round_names():
            raise NotFound(f"no round {name!r} in {self.store.url}")
        spec = self.spec(name)
        status = self.json(f"rounds/{name}/status.json") or {}
        steps = self.steps(name, spec, status)
        phase, step = status.get("phase"), status.get("step")
        if not phase:  # markers only: derive the phase as the operator would
            pending = next((s for s in steps if s["state"] != "Succeeded"), None)
            phase = "Succeeded" if pending is None else \
                ("Pending" if all(s["state"] == "Pending" for s in steps) else PHASE_OF_STEP[pending["name"]])
            step = pending["name"] if pending else None
        summary = self.json(f"rounds/{name}/eval/summary.json")
        pass_rate = headline(summary)
        return {"name": name, "source": "store", "phase": phase, "step": step, "message": status.get("message", ""),
                "startTime": status.get("startTime"), "completionTime": status.get("completionTime"),
                "updatedTime": status.get("updatedTime"), "conditions": [], "steps": steps,
                "model": (spec.get("model") or {}).get("base"), "fromRound": (spec.get("model") or {}).get("fromRound"),
                "passRate": pass_rate, "collected": len(self.trees(name)), "spec": spec}

    def rounds(self) -> list[dict[str, Any]]:
        return [self.round(n) for n in self.round_names()]

    # ---- evaluation ---------------------------------------------------------------------------------------

    def summary(self, name: str) -> dict[str, Any] | None:
        self._require(name)
        return self.json(f"rounds/{name}/eval/summary.json")

    def eval_results(self, name: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """{arm: {mode: per-task records}} from eval/<mode>.jsonl and eval/baseline/<mode>.jsonl."""
        self._require(name)
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for rel in self.round_keys(name):
            parts = rel.split("/")
            if parts[0] != "eval" or not rel.endswith(".jsonl") or ".shard-" in rel:
                continue
            arm = "round" if len(parts) == 2 else parts[1]
            mode = parts[-1].removesuffix(".jsonl")
            records = [{k: v for k, v in r.items() if k != "inputs_digest"}
                       for r in self.jsonl(f"rounds/{name}/{rel}")]
            out.setdefault(arm, {})[mode] = records
        return out

    # ---- trajectories and pairs ---------------------------------------------------------------------------

    def trajectory_files(self, name: str) -> list[str]:
        return [f"rounds/{name}/{rel}" for rel in self.round_keys(name)
                if rel.startswith("trajectories/shard-") and rel.endswith(".jsonl") and ".stale-" not in rel]

    def trees(self, name: str) -> list[dict[str, Any]]:
        self._require(name)
        return [record for key in self.trajectory_files(name) for record in self.jsonl(key)]

    def tree(self, name: str, task_id: str) -> dict[str, Any]:
        for record in self.trees(name):
            if record.get("task_id") == task_id:
                return record
        raise NotFound(f"round {name!r} has no search tree for task {task_id!r}")

    def pairs(self, name: str) -> list[dict[str, Any]]:
        self._require(name)
        return self.jsonl(f"rounds/{name}/preferences.jsonl")

    def pair_stats(self, name: str) -> dict[str, Any] | None:
        self._require(name)
        return self.json(f"rounds/{name}/preferences.stats.json")

    # ---- campaigns ----------------------------------------------------------------------------------------

    def campaign_names(self) -> list[str]:
        """Campaigns with a result in the store (`agentq campaign run` writes campaigns/<name>/campaign.json)."""
        return sorted({k.split("/")[1] for k in self.store.list("campaigns") if k.endswith("/campaign.json")})

    def campaigns(self) -> list[dict[str, Any]]:
        return [self.campaign(n) for n in self.campaign_names()]

    def campaign(self, name: str) -> dict[str, Any]:
        found = self.json(f"campaigns/{name}/campaign.json")
        if found is None:
            raise NotFound(f"no campaign {name!r} in {self.store.url} (expected campaigns/{name}/campaign.json)")
        rounds = set(self.round_names())
        curve = found.get("learningCurve") or []
        return {"name": name, **found, "roundsInStore": [p.get("name") for p in curve if p.get("name") in rounds]}

    def _require(self, name: str) -> None:
        if name not in self.round_names():
            raise NotFound(f"no round {name!r} in {self.store.url}")
