"""Preference pairs from search trees: the step between collection and DPO.

Siblings share a prompt, so comparing them isolates the effect of the answer. Each is scored by the
blended Q = alpha*Q_mcts + (1-alpha)*Q_ai (the search's return mixed with the model's own critique, as
in Agent Q); a pair is kept only when the scores differ by more than a threshold, so that DPO is not
asked to separate answers the evidence cannot tell apart.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agentq.search.mcts import blended_q
from agentq.workspace import RoundWorkspace, digest


@dataclass(frozen=True)
class PairPolicy:
    alpha: float = 0.5
    threshold: float = 0.1


def _usable(node: dict[str, Any]) -> bool:
    """A node that may be *chosen*: it holds code and was not flagged as a reward hack."""
    return node.get("code") is not None and not node.get("flags")


def pairs_from_tree(record: dict[str, Any], policy: PairPolicy) -> list[dict[str, Any]]:
    """All sibling pairs of one trajectory record whose blended Q differ by more than the threshold."""
    nodes = {n["id"]: n for n in record["nodes"]}
    pairs = []
    for parent in record["nodes"]:
        kids = [nodes[i] for i in parent["children"]]
        for a, b in itertools.combinations(kids, 2):
            qa = blended_q(a["q_mcts"], a["q_ai"], policy.alpha)
            qb = blended_q(b["q_mcts"], b["q_ai"], policy.alpha)
            if abs(qa - qb) <= policy.threshold or a["completion"] == b["completion"]:
                continue
            (chosen, q_c), (rejected, q_r) = sorted([(a, qa), (b, qb)], key=lambda x: -x[1])
            if not _usable(chosen):
                continue
            pairs.append({
                "prompt": chosen["prompt"],
                "chosen": [{"role": "assistant", "content": chosen["completion"]}],
                "rejected": [{"role": "assistant", "content": rejected["completion"]}],
                "task_id": record["task_id"],
                "delta_q": round(q_c - q_r, 6),
                "chosen_passed": bool(chosen["verdict"] and chosen["verdict"]["status"] == "passed"),
                "chosen_reward": chosen["reward"],
                "rejected_reward": rejected["reward"],
            })
    return pairs


def _pair_key(pair: dict[str, Any]) -> str:
    blob = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_pairs(records: Iterable[dict[str, Any]], policy: PairPolicy) -> tuple[list[dict], dict[str, Any]]:
    """Deduplicated pairs over all trees, and the stats a person reads to judge the data."""
    pairs: list[dict[str, Any]] = []
    seen: set[str] = set()
    per_task: Counter[str] = Counter()
    tasks = flagged = 0
    flag_reasons: Counter[str] = Counter()
    for record in records:
        tasks += 1
        for node in record["nodes"]:
            for reason in node.get("flags") or []:
                flag_reasons[reason] += 1
            flagged += bool(node.get("flags"))
        for pair in pairs_from_tree(record, policy):
            key = _pair_key(pair)
            if key in seen:
                continue
            seen.add(key)
            pairs.append(pair)
            per_task[pair["task_id"]] += 1
    bins = [round(0.1 * i, 1) for i in range(11)]
    histogram = Counter(min(int(p["delta_q"] * 10), 9) for p in pairs)
    stats = {
        "tasks": tasks,
        "pairs": len(pairs),
        "tasks_with_pairs": len(per_task),
        "pairs_per_task": {"mean": len(pairs) / tasks if tasks else 0.0, "max": max(per_task.values(), default=0)},
        "delta_q_histogram": {f"{bins[i]:.1f}-{bins[i + 1]:.1f}": histogram.get(i, 0) for i in range(10)},
        "chosen_passes_all_share": (sum(p["chosen_passed"] for p in pairs) / len(pairs)) if pairs else 0.0,
        "flagged_candidates": flagged,
        "flag_reasons": dict(flag_reasons),
        "alpha": policy.alpha,
        "threshold": policy.threshold,
    }
    return pairs, stats


def preferences_digest(ws: RoundWorkspace) -> str:
    n = ws.round.spec.collect.shards
    shards = [ws.step_digest(f"collect-shard-{i}-of-{n}") for i in range(n)]
    return digest("preferences", ws.settings("preferences"), shards)


def run(ws: RoundWorkspace) -> dict[str, Any]:
    inputs_digest = preferences_digest(ws)
    done_result = ws.finished("preferences", inputs_digest, "preferences")
    if done_result is not None:
        return done_result
    spec = ws.round.spec.preferences
    pairs, stats = build_pairs(ws.read_trajectories(), PairPolicy(spec.alpha, spec.threshold))
    ws.write_preferences(pairs, stats)
    result = {"pairs": stats["pairs"], "flagged": stats["flagged_candidates"],
              "chosenPassShare": round(stats["chosen_passes_all_share"], 4)}
    return ws.finish("preferences", inputs_digest, result,
                     f"preferences: {result['pairs']} pairs ({result['chosenPassShare']:.0%} of chosen pass all "
                     f"tests, {result['flagged']} candidates flagged) -> {ws.describe('preferences.jsonl')}")


def main(args: argparse.Namespace) -> int:
    run(RoundWorkspace.from_args(args))
    return 0
