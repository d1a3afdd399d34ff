"""Two rounds task by task: which tasks the later round fixed, which it broke, which both or neither solved.

The summary's paired difference says how much two arms differ; this says where. Tasks are paired by id within
one mode (greedy answers, `solved`), so only tasks both rounds evaluated count, and the rows not paired are
counted apart rather than read as failures. Rounds of different task kinds are not compared: a function
task and a repository task never share an id, and an empty table would look like a finding.
"""

from __future__ import annotations

from typing import Any

OUTCOMES = ("fixed", "broken", "both", "neither")


def outcome(before: bool, after: bool) -> str:
    return ("both" if before else "fixed") if after else ("broken" if before else "neither")


def compare_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(one row per task both evaluated, {fixed, broken, both, neither, onlyA, onlyB})."""
    first = {r["task_id"]: r for r in a if "task_id" in r}
    second = {r["task_id"]: r for r in b if "task_id" in r}
    rows = []
    for task_id in sorted(first.keys() & second.keys()):
        x, y = first[task_id], second[task_id]
        rows.append({"task_id": task_id, "group": y.get("group", x.get("group")), "kind": y.get("kind", x.get("kind")),
                     "a_solved": bool(x.get("solved")), "b_solved": bool(y.get("solved")),
                     "a_status": x.get("status"), "b_status": y.get("status"),
                     "outcome": outcome(bool(x.get("solved")), bool(y.get("solved")))})
    counts = {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES}
    counts.update(onlyA=len(first.keys() - second.keys()), onlyB=len(second.keys() - first.keys()))
    return rows, counts
