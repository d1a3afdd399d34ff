"""Preference pairs from search trees: the step between collection and DPO.

Siblings share a prompt, so comparing them isolates the effect of the answer. The tests decide: of two
siblings whose test rewards (visible + hidden) differ by more than the threshold, the higher-reward one
is chosen, whatever the critique says. The critique only ever breaks ties, and only when asked to
(`critiqueTies`) and when it prefers the same sibling in both presentation orders; even then it can never
make a lower-reward sibling the chosen one. With the critique blended into the score instead, a random
critic decided most pairs and turned pass-vs-fail pairs around, so DPO learned the critic, not the tests.
The step also writes sft.jsonl, the SFT examples of the trees' passing attempts (agentq/repair/sft.py).
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

from agentq import steplog
from agentq.io import write_jsonl
from agentq.repair.sft import sft_examples
from agentq.search.critique import consistent_preference
from agentq.workspace import RoundWorkspace, digest


@dataclass(frozen=True)
class PairPolicy:
    threshold: float = 0.1
    critique_ties: bool = False
    parse_failure_pairs: bool = False


def _parse_failure(node: dict[str, Any]) -> bool:
    return bool(node.get("verdict")) and node["verdict"].get("status") == "parse_error"


def _usable(node: dict[str, Any]) -> bool:
    """A node that may be *chosen*: it holds code and was not flagged as a reward hack."""
    return node.get("code") is not None and not node.get("flags")


def _votes(node: dict[str, Any]) -> list[float]:
    return list(node.get("q_ai_votes") or [])


def judge_pair(a: dict[str, Any], b: dict[str, Any], policy: PairPolicy) -> tuple[str, dict | None, dict | None]:
    """(outcome, chosen, rejected) for two siblings; outcome names why a pair was or was not made."""
    if a["completion"] == b["completion"]:
        return "identical", None, None
    if not policy.parse_failure_pairs and (_parse_failure(a) or _parse_failure(b)):
        # An answer with no program teaches the format, not the fix: counted apart unless the round asks for it.
        return "parse_failure", None, None
    ra, rb = a["reward"], b["reward"]
    if abs(ra - rb) > policy.threshold:
        chosen, rejected = (a, b) if ra > rb else (b, a)
        return ("tests", chosen, rejected) if _usable(chosen) else ("chosen_unusable", None, None)
    if not policy.critique_ties:
        return "tie", None, None
    if a.get("batch", 0) != b.get("batch", 0):
        return "tie_other_batch", None, None  # votes from two judgements are not comparable
    preference = consistent_preference(_votes(a), _votes(b))
    if preference == 0:
        return "critique_unsure", None, None
    chosen, rejected = (a, b) if preference > 0 else (b, a)
    if chosen["reward"] < rejected["reward"]:
        return "critique_against_tests", None, None  # within the threshold, the tests lean the other way
    return ("critique", chosen, rejected) if _usable(chosen) else ("chosen_unusable", None, None)


def pairs_from_tree(record: dict[str, Any], policy: PairPolicy,
                    outcomes: Counter[str] | None = None) -> list[dict[str, Any]]:
    """The preference pairs among each node's children; `outcomes` counts every sibling comparison."""
    nodes = {n["id"]: n for n in record["nodes"]}
    pairs = []
    for parent in record["nodes"]:
        kids = [nodes[i] for i in parent["children"]]
        for a, b in itertools.combinations(kids, 2):
            outcome, chosen, rejected = judge_pair(a, b, policy)
            if outcomes is not None:
                outcomes[outcome] += 1
            if chosen is None or rejected is None:
                continue
            pairs.append({
                "prompt": chosen["prompt"],
                "chosen": [{"role": "assistant", "content": chosen["completion"]}],
                "rejected": [{"role": "assistant", "content": rejected["completion"]}],
                "task_id": record["task_id"],
                "group": record.get("group") or record["task_id"],
                "decided_by": outcome,
                "delta_reward": round(chosen["reward"] - rejected["reward"], 6),
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
    outcomes: Counter[str] = Counter()
    tasks = flagged = 0
    flag_reasons: Counter[str] = Counter()
    for record in records:
        tasks += 1
        for node in record["nodes"]:
            for reason in node.get("flags") or []:
                flag_reasons[reason] += 1
            flagged += bool(node.get("flags"))
        for pair in pairs_from_tree(record, policy, outcomes):
            key = _pair_key(pair)
            if key in seen:
                continue
            seen.add(key)
            pairs.append(pair)
            per_task[pair["task_id"]] += 1
    bins = [round(0.1 * i, 1) for i in range(11)]
    histogram = Counter(min(int(p["delta_reward"] * 10), 9) for p in pairs)
    decided = Counter(p["decided_by"] for p in pairs)
    stats = {
        "tasks": tasks,
        "pairs": len(pairs),
        "tasks_with_pairs": len(per_task),
        "pairs_per_task": {"mean": len(pairs) / tasks if tasks else 0.0, "max": max(per_task.values(), default=0)},
        "decided_by_tests": decided["tests"],
        "decided_by_critique": decided["critique"],
        "test_decided_share": decided["tests"] / len(pairs) if pairs else 0.0,
        "sibling_comparisons": dict(sorted(outcomes.items())),
        "groups_with_pairs": len({p["group"] for p in pairs}),
        "delta_reward_histogram": {f"{bins[i]:.1f}-{bins[i + 1]:.1f}": histogram.get(i, 0) for i in range(10)},
        "chosen_passes_all_share": (sum(p["chosen_passed"] for p in pairs) / len(pairs)) if pairs else 0.0,
        "flagged_candidates": flagged,
        "flag_reasons": dict(flag_reasons),
        "threshold": policy.threshold,
        "critique_ties": policy.critique_ties,
        "parse_failure_pairs": policy.parse_failure_pairs,
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
    pairs, stats = build_pairs(ws.read_trajectories(),
                               PairPolicy(spec.threshold, spec.critique_ties, spec.parse_failure_pairs))
    ws.write_preferences(pairs, stats)
    examples = sft_examples(ws.read_trajectories())
    write_jsonl(ws.work_path("sft.jsonl"), examples)
    ws.publish("sft.jsonl")
    result = {"pairs": stats["pairs"], "sftExamples": len(examples), "flagged": stats["flagged_candidates"],
              "chosenPassShare": round(stats["chosen_passes_all_share"], 4),
              "testDecided": stats["decided_by_tests"]}
    if not pairs:  # say why, before the train step refuses an empty file
        ties = stats["sibling_comparisons"].get("tie", 0)
        steplog.log("no pairs", level="warning", threshold=spec.threshold, ties=ties,
                    message=f"preferences: no sibling pair differs in test reward by more than {spec.threshold} "
                            f"({ties} ties); DPO needs at least one: give collection more budget "
                            "(collect.rollouts, collect.rootK) or tasks the model sometimes fixes")
    return ws.finish("preferences", inputs_digest, result,
                     f"preferences: {result['pairs']} pairs ({stats['decided_by_tests']} decided by tests, "
                     f"{stats['decided_by_critique']} by the critique; {result['chosenPassShare']:.0%} of chosen "
                     f"pass all tests, {result['flagged']} candidates flagged) -> {ws.describe('preferences.jsonl')}; "
                     f"{len(examples)} SFT examples -> {ws.describe('sft.jsonl')}")


def main(args: argparse.Namespace) -> int:
    run(RoundWorkspace.from_args(args))
    return 0
