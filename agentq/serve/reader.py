"""What the dashboard shows about rounds, read from the artifact store as JSON-ready dicts.

A round's state has two sources: `status.json` (written by the embedded runner while it works, the same
fields the operator keeps in the AgentQRound status) and the steps' completion markers, which every step
writes wherever it ran. The markers decide what is done; status.json adds what only a live runner knows
(the step in progress, when each step started). A round that was run step by step by hand has markers
only, and its phase is derived from them. A status.json that ended (Failed, Interrupted) before a marker
was written has been overtaken by a later run of the steps, so it is read as history, not as the state.

Each state carries `run`, the identity of the run that produced it (the runner's start time, or the first
marker written after the last runner stopped): a round run again is a new run, and the event stream starts
it afresh instead of replaying the old run's end.

Messages never name the store's location (a path or a bucket): they reach whoever can open the page.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from typing import Any

import yaml

from agentq.round import PHASE_OF_STEP
from agentq.serve.progress import collect_progress, train_progress
from agentq.serve.summary import headline
from agentq.serve.trees import tree_kind
from agentq.store import IntegrityError, Store, StoreError
from agentq.workspace import STEPS

TERMINAL = ("Succeeded", "Failed", "Interrupted")
# trajectories/shard-<i>-of-<n>.jsonl, and the partial a running collect appends to: <that>.partial-<digest>
SHARD_FILE = re.compile(r"^trajectories/(shard-(\d+)-of-(\d+))\.jsonl(\.partial-[0-9a-f]+)?$")


class NotFound(LookupError):
    """A round, task or artifact that does not exist; the message says which (never where the store is)."""


class BadRequest(ValueError):
    """A query naming something the round does not have (an arm, a mode); the message lists what it has."""


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
    `ttl` seconds: every request of one page view shares it. The trajectory folder of one round is listed
    afresh on each call, so the event stream sees a collect's first tree as soon as it is written."""

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

    def exists(self, name: str) -> bool:
        return name in self.round_names()

    def spec(self, name: str) -> dict[str, Any]:
        def parse(text: str) -> dict[str, Any]:
            try:
                doc = yaml.safe_load(text) or {}
            except yaml.YAMLError:
                return {}
            return doc.get("spec") or {} if isinstance(doc, dict) else {}

        key = f"rounds/{name}/spec.yaml"
        try:
            return self._cached(key, parse) if self.store.exists(key) else {}
        except StoreError:
            return {}

    def _markers(self, name: str, spec: dict[str, Any], live: dict[str, Any]) -> dict[str, list[dict | None]]:
        shards = int((spec.get("collect") or {}).get("shards", 1))
        # `model` (fetching the base model into the store) runs only for rounds that ask for it
        fetched = "model" in live or self.store.exists(f"rounds/{name}/steps/model.json")
        out = {}
        for step in ("model", *STEPS) if fetched else STEPS:
            names = [f"collect-shard-{i}-of-{shards}" for i in range(shards)] if step == "collect" else [step]
            out[step] = [self.json(f"rounds/{name}/steps/{n}.json") for n in names]
        return out

    def steps(self, markers: dict[str, list[dict | None]], status: dict[str, Any]) -> list[dict[str, Any]]:
        """Each step: state (Pending, Running, Partial, Succeeded, Failed, Interrupted), start/end, seconds,
        result."""
        live = status.get("steps") or {}
        rows = []
        for step, found_or_none in markers.items():
            found = [m for m in found_or_none if m]
            mine = live.get(step) or {}
            if found and len(found) == len(found_or_none):
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
                         "shards": {"done": len(found), "total": len(found_or_none)},
                         "result": fold_results([m.get("result") or {} for m in found])})
        return rows

    @staticmethod
    def _live_status(status: dict[str, Any], markers: dict[str, list[dict | None]]) -> tuple[dict, str]:
        """(the status to believe, the run it belongs to). A runner's status that ended in Failed or
        Interrupted is overtaken by any marker written after it ended: the steps ran again by other means
        (step by step by hand, or a runner whose first status write has not landed yet), so the markers speak."""
        ended = status.get("completionTime") or status.get("updatedTime")
        if not status.get("phase"):
            return {}, "steps"
        if status["phase"] in ("Failed", "Interrupted") and ended is not None:
            later = [m["finished_at"] for ms in markers.values() for m in ms
                     if m and isinstance(m.get("finished_at"), int | float) and m["finished_at"] > ended]
            if later:
                return {}, f"steps@{min(later):.3f}"
        return status, f"run@{status.get('startTime')}"

    def round(self, name: str) -> dict[str, Any]:
        if not self.exists(name):
            raise NotFound(f"no round {name!r} in this store")
        spec = self.spec(name)
        written = self.json(f"rounds/{name}/status.json") or {}
        markers = self._markers(name, spec, written.get("steps") or {})
        status, run = self._live_status(written, markers)
        steps = self.steps(markers, status)
        phase, step = status.get("phase"), status.get("step")
        if not phase:  # markers only: derive the phase as the operator would
            pending = next((s for s in steps if s["state"] != "Succeeded"), None)
            phase = "Succeeded" if pending is None else \
                ("Pending" if all(s["state"] == "Pending" for s in steps) else PHASE_OF_STEP[pending["name"]])
            step = pending["name"] if pending else None
        summary = self.json(f"rounds/{name}/eval/summary.json")
        trees = self.trees(name)
        return {"name": name, "source": "store", "run": run, "phase": phase, "step": step,
                "message": status.get("message", ""), "startTime": status.get("startTime"),
                "completionTime": status.get("completionTime"), "updatedTime": status.get("updatedTime"),
                "conditions": [], "steps": steps, "model": (spec.get("model") or {}).get("base"),
                "fromRound": (spec.get("model") or {}).get("fromRound"), "passRate": headline(summary),
                "collected": len(trees), "kind": self.kind(name, trees), "progress": self.progress(name, spec, trees),
                "spec": spec}

    def rounds(self) -> list[dict[str, Any]]:
        return [self.round(n) for n in self.round_names()]

    def kind(self, name: str, trees: list[dict[str, Any]] | None = None) -> str | None:
        """function, repo or mixed: from the evaluation's records (they say), else from the trees' shape."""
        kinds = {r.get("kind") for modes in self.eval_results(name).values() for rows in modes.values()
                 for r in rows[:50] if r.get("kind")}
        if not kinds:
            kinds = {tree_kind(t) for t in (self.trees(name) if trees is None else trees)}
        return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"

    # ---- progress inside a step ---------------------------------------------------------------------------

    def progress(self, name: str, spec: dict[str, Any] | None = None,
                 trees: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Inside collect (trees done of the shards' tasks, samples, sandbox runs) and train (step, loss,
        reward accuracy), from the partial trajectory files and the steps' progress records."""
        spec = self.spec(name) if spec is None else spec
        shards = int((spec.get("collect") or {}).get("shards", 1))
        planned = [self.json(f"rounds/{name}/progress/collect-shard-{i}-of-{shards}.json") for i in range(shards)]
        markers = [self.json(f"rounds/{name}/steps/collect-shard-{i}-of-{shards}.json") for i in range(shards)]
        return {"collect": collect_progress(self.trees(name) if trees is None else trees, planned, markers),
                "train": train_progress(self.json(f"rounds/{name}/progress/train.json"))}

    # ---- evaluation ---------------------------------------------------------------------------------------

    def summary(self, name: str) -> dict[str, Any] | None:
        self.require(name)
        return self.json(f"rounds/{name}/eval/summary.json")

    def eval_results(self, name: str) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """{arm: {mode: per-task records}} from eval/<mode>.jsonl and eval/baseline/<mode>.jsonl."""
        self.require(name)
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

    def arm_mode(self, name: str, arm: str | None, mode: str | None) -> tuple[str, str, list[dict[str, Any]]]:
        """(arm, mode, records): the round arm and its first mode unless named; a name the round does not
        have is a BadRequest that lists what it has."""
        results = self.eval_results(name)
        if not results:
            raise NotFound(f"round {name!r} has no per-task evaluation results yet (eval/<mode>.jsonl)")
        arm = arm or ("round" if "round" in results else sorted(results)[0])
        if arm not in results:
            raise BadRequest(f"round {name!r} has no arm {arm!r}: it has {', '.join(sorted(results))}")
        modes = results[arm]
        mode = mode or next(iter(sorted(modes)))
        if mode not in modes:
            raise BadRequest(f"round {name!r} arm {arm!r} has no mode {mode!r}: it has {', '.join(sorted(modes))}")
        return arm, mode, modes[mode]

    def test_set(self, name: str) -> dict[str, Any] | None:
        """What the round was evaluated on: the task kind and the set of task ids (as a digest). Two rounds
        lie on one learning curve only when these agree."""
        results = self.eval_results(name).get("round") or {}
        ids = sorted({r.get("task_id", "") for rows in results.values() for r in rows})
        if not ids:
            return None
        kinds = {r.get("kind") or "function" for rows in results.values() for r in rows}
        return {"kind": kinds.pop() if len(kinds) == 1 else "mixed", "tasks": len(ids),
                "digest": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]}

    # ---- trajectories and pairs ---------------------------------------------------------------------------

    def trajectory_files(self, name: str) -> list[str]:
        """The shard files the trees are read from: a finished shard's file, or while collect runs (or after
        it stopped) the partial it appends each finished tree to. A shard with a partial shows the partial:
        it is the run in progress (finishing a shard removes its partials). Shards of another shard count
        than the spec's are an earlier layout, and left out."""
        shards = (self.spec(name).get("collect") or {}).get("shards")
        by_shard: dict[str, dict[str, list[str]]] = {}
        for key in self.store.list(f"rounds/{name}/trajectories"):
            match = SHARD_FILE.match(key[len(f"rounds/{name}/"):])
            if not match or (shards is not None and int(match[3]) != int(shards)):
                continue
            by_shard.setdefault(match[1], {"done": [], "partial": []})["partial" if match[4] else "done"].append(key)
        return [k for shard in sorted(by_shard) for k in (by_shard[shard]["partial"] or by_shard[shard]["done"])]

    def trees(self, name: str) -> list[dict[str, Any]]:
        """Every tree of the round, one per task (a task in two partials of a shard: the later file wins)."""
        self.require(name)
        out: dict[str, dict[str, Any]] = {}
        for key in self.trajectory_files(name):
            for record in self.jsonl(key):
                out[str(record.get("task_id"))] = record
        return list(out.values())

    def tree(self, name: str, task_id: str) -> dict[str, Any]:
        for record in self.trees(name):
            if record.get("task_id") == task_id:
                return record
        raise NotFound(f"round {name!r} has no search tree for task {task_id!r}")

    def pairs(self, name: str) -> list[dict[str, Any]]:
        self.require(name)
        return self.jsonl(f"rounds/{name}/preferences.jsonl")

    def pair_stats(self, name: str) -> dict[str, Any] | None:
        self.require(name)
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
            raise NotFound(f"no campaign {name!r} in this store (expected campaigns/{name}/campaign.json)")
        rounds = set(self.round_names())
        curve = found.get("learningCurve") or []
        return {"name": name, **found, "roundsInStore": [p.get("name") for p in curve if p.get("name") in rounds]}

    def require(self, name: str) -> None:
        if not self.exists(name):
            raise NotFound(f"no round {name!r} in this store")
