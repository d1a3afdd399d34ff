"""SFT examples from search trees: what a resolving attempt teaches beyond preference pairs.

Two kinds, from every node that passed: *positive* (the tree's first prompt, the issue and localised code with
no earlier attempt -> the resolving answer) and *reflection* (the node's own prompt, which quotes the failed
attempts on its path with their categories and output -> the resolving answer; only when it has ancestors
that failed). A K=1 reflection chain has no siblings and so no preference pairs; these examples are what it
leaves for training. A repo answer is rewritten from its diff as SEARCH/REPLACE blocks (the format the
prompts ask for), so a model that answered with a unified diff still teaches the asked-for format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agentq.repair.patch import diff_hunks, search_replace


def _answer(node: dict[str, Any]) -> str:
    if node.get("category") and node.get("code"):  # a repo attempt: its diff, as the format asked for
        return search_replace(diff_hunks(node["code"]))
    return node["completion"]


def sft_examples(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-format examples (`messages`: prompt + assistant answer) with their kind, task and group."""
    examples = []
    for record in records:
        first = next((n["prompt"] for n in record["nodes"] if n["depth"] == 1), None)
        for node in record["nodes"][1:]:
            if not (node.get("verdict") and node["verdict"]["status"] == "passed") or node.get("flags"):
                continue
            answer = [{"role": "assistant", "content": _answer(node)}]
            meta = {"task_id": record["task_id"], "group": record.get("group") or record["task_id"]}
            if first is not None:
                examples.append({"messages": [*first, *answer], "kind": "positive", **meta})
            if node["depth"] > 1:  # its prompt quotes the failed attempts above it
                examples.append({"messages": [*node["prompt"], *answer], "kind": "reflection", **meta})
    return examples
