"""A search tree as the tree browser shows it: each node's code as a diff against the buggy program, its
verdict and failing tests, Q values and visits, and the preference pairs it entered as chosen or rejected.

Pairs are matched to nodes by what they hold (the shared prompt and the node's completion), not by
re-running pair construction: the rule that makes pairs changes between versions, the pairs file is what
training actually saw.

Two kinds of tree: a function task's nodes hold whole programs, shown as a diff against the buggy program; a
repository task's nodes hold patches (the root is the empty patch on the buggy tree), shown as they are. A
node whose answer could not be read has no program at all, and says so.
"""

from __future__ import annotations

import difflib
import json
from typing import Any


def code_diff(before: str | None, after: str | None) -> str:
    """Unified diff of a candidate against the buggy program ('' when equal or when there is no code)."""
    if before is None or after is None:
        return ""
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile="buggy", tofile="candidate", n=2)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True)


def _content(turns: Any) -> str | None:
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
        return turns[-1].get("content")
    return turns if isinstance(turns, str) else None


def pair_roles(record: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """{node id: [{pair, role, partner, delta}]} for the pairs of this tree's task (pair = index in the file)."""
    by_content: dict[tuple[str, str], int] = {}
    for node in record.get("nodes", []):
        if node.get("parent") is not None:
            by_content.setdefault((_prompt_key(node.get("prompt")), node.get("completion") or ""), node["id"])
    roles: dict[int, list[dict[str, Any]]] = {}
    for index, pair in enumerate(pairs):
        if pair.get("task_id") != record.get("task_id"):
            continue
        prompt = _prompt_key(pair.get("prompt"))
        chosen = by_content.get((prompt, _content(pair.get("chosen")) or ""))
        rejected = by_content.get((prompt, _content(pair.get("rejected")) or ""))
        delta = pair.get("delta_reward", pair.get("delta_q"))
        how = pair.get("decided_by")
        for node_id, role, partner in ((chosen, "chosen", rejected), (rejected, "rejected", chosen)):
            if node_id is not None:
                roles.setdefault(node_id, []).append({"pair": index, "role": role, "partner": partner,
                                                      "delta": delta, "decided_by": how})
    return roles


def tree_kind(record: dict[str, Any]) -> str:
    """`repo` when the candidates are patches (a repository task: the record notes how it was localised, its
    nodes carry the reflection category, its root is the empty patch), else `function`."""
    if record.get("kind") in ("function", "repo"):
        return record["kind"]
    nodes = record.get("nodes") or []
    if "localization" in record or any("category" in n for n in nodes) or (nodes and nodes[0].get("code") == ""):
        return "repo"
    return "function"


def node_change(kind: str, buggy: str | None, node: dict[str, Any]) -> tuple[str, str]:
    """(what the node changed, how to read it): `diff` against the buggy program, `patch` as the node's own
    unified diff, `none` for an answer with no program in it, `same` for a program equal to the buggy one,
    `root` for the root."""
    code = node.get("code")
    if node.get("parent") is None:
        return "", "root"
    if code is None:
        return "", "none"
    if kind == "repo":
        return code, "patch" if code.strip() else "same"
    diff = code_diff(buggy, code)
    return diff, "diff" if diff else "same"


def annotate(record: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """The tree with per-node display fields; prompts are left out (the same long text on every sibling)."""
    nodes = record.get("nodes", [])
    kind = tree_kind(record)
    buggy = nodes[0].get("code") if nodes else None
    roles = pair_roles(record, pairs)
    out = []
    for node in nodes:
        verdict = node.get("verdict") or {}
        tests = verdict.get("tests") or []
        change, change_kind = node_change(kind, buggy, node)
        root = "buggy repository" if kind == "repo" else "buggy program"
        out.append({
            "id": node["id"], "parent": node.get("parent"), "depth": node.get("depth", 0),
            "children": node.get("children", []), "code": node.get("code"), "diff": change, "change": change_kind,
            "completion": node.get("completion", ""), "category": node.get("category"),
            "feedback": (node.get("feedback") or "")[:2000],
            "status": verdict.get("status") if verdict and node.get("parent") is not None else
            (root if node.get("parent") is None else None),
            "passed_tests": sum(bool(t.get("passed")) for t in tests), "expected_tests": verdict.get("expected_tests"),
            "failing_tests": [{"name": t.get("name"), "message": (t.get("message") or "")[:400]}
                              for t in tests if not t.get("passed")],
            "message": (verdict.get("message") or "")[:600],
            "reward": node.get("reward"), "q_mcts": node.get("q_mcts"), "q_ai": node.get("q_ai"),
            "visits": node.get("visits"), "flags": node.get("flags") or [], "pairs": roles.get(node["id"], []),
        })
    return {"task_id": record.get("task_id"), "group": record.get("group"), "solved": record.get("solved"),
            "kind": kind, "stats": record.get("stats") or {}, "params": record.get("params") or {},
            "localization": record.get("localization"), "buggy_code": buggy if kind == "function" else None,
            "nodes": out}


def tree_row(record: dict[str, Any]) -> dict[str, Any]:
    """One line of the trees list."""
    stats = record.get("stats") or {}
    nodes = record.get("nodes", [])
    return {"task_id": record.get("task_id"), "group": record.get("group"), "kind": tree_kind(record),
            "solved": record.get("solved"), "nodes": len(nodes), "samples": stats.get("samples"),
            "executions": stats.get("executions"),
            "best_reward": max((n.get("reward") or 0.0 for n in nodes[1:]), default=0.0),
            "seconds": stats.get("wall_s")}
