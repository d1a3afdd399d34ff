"""A small round store written the way the steps write it, for the dashboard tests (no model, no sandbox).

Function rounds: `r1` finished with an old-format summary (no intervals, no base) and `r2` finished with the
paired format (a base arm, bootstrap intervals, a comparison); `half` was run step by step and has
markers only, up to preferences. `repo` is a repository round (patch trees shaped as RepoProblem's records:
the empty patch at the root, unified diffs, reflection categories, a node whose answer held no patch).
`c` is a campaign of r1 and r2. `hostile(store)` adds a round whose name and task ids are markup.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agentq.io import append_jsonl
from agentq.store import FileStore

BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a * b\n"
PROMPT = [{"role": "user", "content": "fix add"}]


def spec(name: str, from_round: str | None = None, shards: int = 1) -> str:
    model = f"{{base: tiny, backend: scripted{', fromRound: ' + from_round if from_round else ''}}}"
    return (f"apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {{name: {name}}}\nspec:\n"
            f"  model: {model}\n  dataset: {{train: t.jsonl, test: t.jsonl}}\n  collect: {{shards: {shards}}}\n"
            "  store: {path: store}\n")


def verdict(status: str, passed: int, total: int) -> dict[str, Any]:
    tests = [{"name": f"test_{i}", "passed": i < passed,
              "message": "" if i < passed else f"assert add(1, {i}) == {1 + i}"} for i in range(total)]
    return {"status": status, "tests": tests, "expected_tests": total, "message": "" if status == "passed" else
            tests[passed]["message"]}


def tree(task_id: str) -> dict[str, Any]:
    nodes = [
        {"id": 0, "parent": None, "depth": 0, "prompt": [], "completion": "", "code": BUGGY, "verdict": None,
         "reward": 0.0, "flags": [], "q_mcts": 0.5, "q_ai": 0.5, "visits": 2, "children": [1, 2]},
        {"id": 1, "parent": 0, "depth": 1, "prompt": PROMPT, "completion": f"```python\n{FIXED}```",
         "code": FIXED, "verdict": verdict("passed", 2, 2), "reward": 1.0, "flags": [], "q_mcts": 1.0, "q_ai": 0.8,
         "visits": 1, "children": []},
        {"id": 2, "parent": 0, "depth": 1, "prompt": PROMPT, "completion": f"```python\n{WRONG}```",
         "code": WRONG, "verdict": verdict("failed", 1, 2), "reward": 0.5, "flags": [], "q_mcts": 0.5, "q_ai": 0.2,
         "visits": 1, "children": []},
    ]
    return {"task_id": task_id, "group": task_id, "params": {}, "solved": True,
            "stats": {"samples": 2, "executions": 2, "wall_s": 0.5}, "nodes": nodes, "inputs_digest": "d"}


def pair(task_id: str) -> dict[str, Any]:
    return {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": f"```python\n{FIXED}```"}],
            "rejected": [{"role": "assistant", "content": f"```python\n{WRONG}```"}], "task_id": task_id,
            "delta_reward": 0.5, "decided_by": "tests", "chosen_passed": True}


OLD_SUMMARY = {"round": "r1", "model": "tiny", "from_round": None, "finished_at": 100.0,
               "modes": {"zero_shot": {"tasks": 10, "solved": 3, "pass_rate": 0.3, "visible_pass_rate": 0.4,
                                       "parse_failures": 1, "wrong_fixes": 6}}}
NEW_SUMMARY = {
    "round": "r2", "model": "tiny", "from_round": "r1", "finished_at": 200.0,
    "modes": {"zero_shot": {"tasks": 10, "pass_at_1": 0.5, "pass_at_1_ci95": [0.2, 0.8], "pass_rate": 0.5,
                            "greedy_solved": 5, "solved": 5, "visible_pass_rate": 0.6, "parse_failures": 0,
                            "samples_per_task": 4, "pass_at_4": 0.7}},
    "baseline": {"model": "r1", "modes": {"zero_shot": {"tasks": 10, "pass_at_1": 0.3, "pass_at_1_ci95": [0.1, 0.6],
                                                         "pass_rate": 0.3, "greedy_solved": 3, "solved": 3,
                                                         "visible_pass_rate": 0.4, "parse_failures": 1}}},
    "comparison": {"zero_shot": {"tasks": 10, "groups": 10, "delta_pass_at_1": 0.2, "delta_ci95": [-0.1, 0.5],
                                 "greedy_wins": 3, "greedy_losses": 1, "mcnemar_p": 0.625}},
}


def marker(store: FileStore, name: str, step: str, result: dict[str, Any], at: float) -> None:
    store.put_json(f"rounds/{name}/steps/{step}.json", {"digest": "x", "finished_at": at, "result": result})


def status(phase: str, step: str, done: list[str], running: str | None = None) -> dict[str, Any]:
    steps: dict[str, Any] = {s: {"state": "Pending"} for s in ("collect", "preferences", "train", "merge", "evaluate")}
    for i, s in enumerate(done):
        steps[s] = {"state": "Succeeded", "startTime": 10.0 * i, "completionTime": 10.0 * i + 5}
    if running:
        steps[running] = {"state": "Running", "startTime": 1000.0}
    return {"phase": phase, "step": step, "startTime": 0.0, "steps": steps, "updatedTime": 1.0}


def finished_round(store: FileStore, name: str, summary: dict[str, Any], from_round: str | None = None) -> None:
    store.put_text(f"rounds/{name}/spec.yaml", spec(name, from_round))
    for i, step in enumerate(("collect-shard-0-of-1", "preferences", "train", "merge", "evaluate")):
        marker(store, name, step, {"tasks": 2} if i == 0 else {}, 10.0 * i + 5)
    store.put_json(f"rounds/{name}/status.json", {**status("Succeeded", "evaluate",
                   ["collect", "preferences", "train", "merge", "evaluate"]), "completionTime": 50.0})
    store.put_text(f"rounds/{name}/trajectories/shard-0-of-1.jsonl",
                   "".join(json.dumps(tree(t)) + "\n" for t in ("task/a", "task/b")))
    store.put_text(f"rounds/{name}/preferences.jsonl",
                   "".join(json.dumps(pair(t)) + "\n" for t in ("task/a", "task/b")))
    store.put_json(f"rounds/{name}/preferences.stats.json", {"pairs": 2})
    store.put_json(f"rounds/{name}/eval/summary.json", summary)
    for arm in ("", "baseline/") if summary.get("baseline") else ("",):
        rows = [{"task_id": f"t{i}", "group": f"g{i // 2}", "kind": "function", "mode": "zero_shot", "solved": i < 3,
                 "status": "passed" if i < 3 else "failed", "reward": 1.0 if i < 3 else 0.5, "n": 1,
                 "correct": int(i < 3), "seconds": 0.4 + i / 10, "inputs_digest": "x",
                 "message": "" if i < 3 else f"test_check: AssertionError: add(1, {i}) == {1 + i}"} for i in range(10)]
        store.put_text(f"rounds/{name}/eval/{arm}zero_shot.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    store.put_text(f"rounds/{name}/eval/zero_shot.shard-0-of-1.jsonl", "{}\n")  # never listed as a mode


CAMPAIGN = {"campaign": "c", "mode": "zero_shot", "rounds": 2, "plannedRounds": 3, "stopped": "NoGain",
            "bestPassRate": 0.5, "learningCurve": [
                {"round": 1, "name": "r1", "mode": "zero_shot", "passRate": 0.3, "delta": None, "deltaCi95": None,
                 "gain": False},
                {"round": 2, "name": "r2", "mode": "zero_shot", "passRate": 0.5, "delta": 0.2,
                 "deltaCi95": [-0.1, 0.5], "gain": False}]}


def build(root: Path) -> FileStore:
    store = FileStore(root)
    finished_round(store, "r1", OLD_SUMMARY)
    finished_round(store, "r2", NEW_SUMMARY, from_round="r1")
    store.put_text("rounds/half/spec.yaml", spec("half", shards=2))
    marker(store, "half", "collect-shard-0-of-2", {"tasks": 1, "samples": 3}, 1.0)
    marker(store, "half", "collect-shard-1-of-2", {"tasks": 2, "samples": 4}, 2.0)
    repo_round(store)
    store.put_json("campaigns/c/campaign.json", CAMPAIGN)
    return store


# ---- a repository round ---------------------------------------------------------------------------------

REPO_PATCH = ("diff --git a/src/lib/core.py b/src/lib/core.py\n--- a/src/lib/core.py\n+++ b/src/lib/core.py\n"
              "@@ -10,3 +10,3 @@\n def size(items):\n-    return len(items) - 1\n+    return len(items)\n \n")
WRONG_PATCH = ("diff --git a/src/lib/util.py b/src/lib/util.py\n--- a/src/lib/util.py\n+++ b/src/lib/util.py\n"
               "@@ -1,2 +1,2 @@\n-X = 1\n+X = 2\n \n")


def repo_verdict(status: str, failing: list[str]) -> dict[str, Any]:
    tests = [{"name": "tests/test_core.py::test_size", "passed": not failing, "message": "; ".join(failing)},
             {"name": "tests/test_core.py::test_other", "passed": True, "message": ""}]
    return {"status": status, "tests": tests, "expected_tests": 2, "message": "; ".join(failing), "f2p_total": 1,
            "f2p_passed": int(not failing)}


def repo_tree(task_id: str) -> dict[str, Any]:
    fail = ["AssertionError: 2 != 3"]
    nodes = [
        {"id": 0, "parent": None, "depth": 0, "prompt": [], "completion": "", "code": "",
         "verdict": repo_verdict("failed", fail), "reward": 0.0, "flags": [], "q_mcts": 0.3, "q_ai": 0.5,
         "visits": 3, "children": [1, 2, 3]},
        {"id": 1, "parent": 0, "depth": 1, "prompt": PROMPT, "completion": "src/lib/core.py\n<<<<<<< SEARCH ...",
         "code": REPO_PATCH, "verdict": repo_verdict("passed", []), "reward": 1.0, "flags": [], "category": "resolved",
         "feedback": "", "q_mcts": 1.0, "q_ai": 0.7, "visits": 1, "children": []},
        {"id": 2, "parent": 0, "depth": 1, "prompt": PROMPT, "completion": "src/lib/util.py\n<<<<<<< SEARCH ...",
         "code": WRONG_PATCH, "verdict": repo_verdict("failed", fail), "reward": 0.0, "flags": [],
         "category": "wrong file", "feedback": "Still failing: tests/test_core.py::test_size", "q_mcts": 0.0,
         "q_ai": 0.3, "visits": 1, "children": []},
        {"id": 3, "parent": 0, "depth": 1, "prompt": PROMPT, "completion": "I am not sure.", "code": None,
         "verdict": {"status": "parse_error", "tests": [], "expected_tests": 0,
                     "message": "no SEARCH/REPLACE block in the answer"}, "reward": 0.0, "flags": [],
         "category": "malformed", "feedback": "no SEARCH/REPLACE block", "q_mcts": 0.0, "q_ai": 0.0, "visits": 1,
         "children": []},
    ]
    return {"task_id": task_id, "group": "lib", "params": {}, "solved": True, "localization": {
        "by": "bm25", "files": ["src/lib/core.py"]}, "stats": {"samples": 3, "executions": 2, "wall_s": 12.0},
        "nodes": nodes, "inputs_digest": "d"}


REPO_TASKS = ("lib-1.0__op_swap__src/lib/core.py:11__aa", "lib-1.0__cmp_swap__src/lib/core.py:20__bb")


def repo_round(store: FileStore, name: str = "repo", solved: tuple[int, ...] = (0,), from_round: str | None = None,
               at: float = 400.0) -> None:
    store.put_text(f"rounds/{name}/spec.yaml", spec(name, from_round))
    for i, step in enumerate(("collect-shard-0-of-1", "preferences", "train", "merge", "evaluate")):
        marker(store, name, step, {"tasks": 2} if i == 0 else {}, 300.0 + i)
    store.put_json(f"rounds/{name}/status.json", {**status("Succeeded", "evaluate",
                   ["collect", "preferences", "train", "merge", "evaluate"]), "completionTime": 350.0})
    store.put_text(f"rounds/{name}/trajectories/shard-0-of-1.jsonl",
                   "".join(json.dumps(repo_tree(t)) + "\n" for t in REPO_TASKS))
    chosen = {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": "src/lib/core.py\n<<<<<<< SEARCH ..."}],
              "rejected": [{"role": "assistant", "content": "src/lib/util.py\n<<<<<<< SEARCH ..."}],
              "task_id": REPO_TASKS[0], "group": "lib", "delta_reward": 1.0, "decided_by": "tests",
              "chosen_passed": True}
    store.put_text(f"rounds/{name}/preferences.jsonl", json.dumps(chosen) + "\n")
    store.put_json(f"rounds/{name}/preferences.stats.json", {"pairs": 1, "decided_by_tests": 1})
    modes = {"zero_shot": {"tasks": 2, "pass_at_1": 0.5, "pass_at_1_ci95": [0.0, 1.0], "pass_rate": 0.5,
                           "greedy_solved": 1, "solved": 1}}
    store.put_json(f"rounds/{name}/eval/summary.json", {"round": name, "model": "tiny", "from_round": from_round,
                                                      "finished_at": at, "modes": modes})
    rows = [{"task_id": t, "group": "lib", "kind": "repo", "mode": "zero_shot", "solved": i in solved,
             "status": "passed" if i in solved else "failed", "reward": float(i in solved), "n": 1,
             "correct": int(i in solved), "seconds": 4.0, "message": "" if i in solved else "AssertionError: 2 != 3"}
            for i, t in enumerate(REPO_TASKS)]
    store.put_text(f"rounds/{name}/eval/zero_shot.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


# ---- hostile text ----------------------------------------------------------------------------------------

# A task id and a round name that break out of a quoted attribute, an inline handler and an element: any
# page that builds HTML from them runs `window.__pwned = ...` or loads an image that does.
HOSTILE_TASK = "task/x');window.__pwned='task';('\"><img src=x onerror=\"window.__pwned='img'\">"
HOSTILE_ROUND = "r<img src=x onerror=window.__pwned=1>'"


def hostile(store: FileStore) -> None:
    name = HOSTILE_ROUND
    store.put_text(f"rounds/{name}/spec.yaml", spec("hostile"))
    marker(store, name, "collect-shard-0-of-1", {"tasks": 1}, 1.0)
    store.put_json(f"rounds/{name}/status.json", {**status("Failed", "preferences", ["collect"]),
                                                  "message": "<script>window.__pwned='message'</script>",
                                                  "completionTime": 2.0})
    record = tree(HOSTILE_TASK)
    record["nodes"][1]["completion"] = "<img src=x onerror=\"window.__pwned='answer'\">"
    record["nodes"][1]["verdict"]["tests"][0]["name"] = "<b onmouseover=window.__pwned=1>t</b>"
    store.put_text(f"rounds/{name}/trajectories/shard-0-of-1.jsonl", json.dumps(record) + "\n")
    store.put_text(f"rounds/{name}/preferences.jsonl", json.dumps(pair(HOSTILE_TASK)) + "\n")
    rows = [{"task_id": HOSTILE_TASK, "kind": "function", "mode": "zero_shot", "solved": False, "status": "failed",
             "message": "<svg onload=window.__pwned=2>"}]
    store.put_text(f"rounds/{name}/eval/zero_shot.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    store.put_json(f"rounds/{name}/eval/summary.json", {"round": name, "model": "<i>m</i>", "finished_at": 5.0,
                                                      "modes": {"zero_shot": {"tasks": 1, "solved": 0,
                                                                              "pass_rate": 0.0}}})


# ---- what a round does while it runs ---------------------------------------------------------------------


def runner(store: FileStore, name: str, fetch: bool = False) -> Any:
    """The embedded runner's own status writer (agentq.round.Progress) for round `name`: each `runner()` is a
    new `agentq round run` of it."""
    from types import SimpleNamespace

    from agentq.round import Progress

    ws = SimpleNamespace(store=store, key=lambda rel: f"rounds/{name}/{rel}",
                         round=SimpleNamespace(spec=SimpleNamespace(model=SimpleNamespace(
                             fetch_from="x" if fetch else None))))
    return Progress(ws)


class Collector:
    """Appends finished trees as agentq/collect.py does: to a local file, each time published whole to the shard's
    partial key in the store, after noting how many tasks the shard holds."""

    def __init__(self, store: FileStore, name: str, local: Path, tasks: int, shard: int = 0, shards: int = 1,
                 digest: str = "0123abcd") -> None:
        self.store, self.local = store, local
        self.key = f"rounds/{name}/trajectories/shard-{shard}-of-{shards}.jsonl.partial-{digest}"
        store.put_json(f"rounds/{name}/progress/collect-shard-{shard}-of-{shards}.json",
                       {"tasks": tasks, "done": 0, "startTime": 0.0})

    def add(self, record: dict[str, Any]) -> float:
        """Append and publish one tree; returns the time it became visible in the store."""
        append_jsonl(self.local, {**record, "inputs_digest": "0123abcd"})
        self.store.put_file(self.key, self.local)
        return time.time()
