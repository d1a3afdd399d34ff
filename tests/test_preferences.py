"""Pair construction from trajectory records: threshold, ordering, dedupe, flagged candidates, stats."""

import pytest

from agentq.preferences import PairPolicy, build_pairs, pairs_from_tree

PROMPT = [{"role": "user", "content": "fix it"}]


def node(i, parent, q_mcts, q_ai, *, code="x = 1", passed=False, flags=None, completion=None):
    return {"id": i, "parent": parent, "children": [], "prompt": PROMPT, "completion": completion or f"answer {i}",
            "code": code, "q_mcts": q_mcts, "q_ai": q_ai, "reward": q_mcts, "flags": flags or [],
            "verdict": {"status": "passed" if passed else "failed"}}


def tree(*children, task_id="t1"):
    root = node(0, None, 0.5, 0.5)
    root["children"] = [c["id"] for c in children]
    return {"task_id": task_id, "nodes": [root, *children]}


def test_pair_kept_only_above_threshold_with_higher_q_chosen():
    record = tree(node(1, 0, 1.0, 0.0, passed=True), node(2, 0, 0.0, 0.0))  # blended 0.5 vs 0.0
    [pair] = pairs_from_tree(record, PairPolicy(alpha=0.5, threshold=0.1))
    assert pair["chosen"] == [{"role": "assistant", "content": "answer 1"}]
    assert pair["rejected"][0]["content"] == "answer 2"
    assert pair["delta_q"] == pytest.approx(0.5) and pair["chosen_passed"]
    assert pair["prompt"] == PROMPT
    assert pairs_from_tree(record, PairPolicy(alpha=0.5, threshold=0.5)) == []  # |dQ| must exceed theta


def test_alpha_weighs_search_value_against_critique():
    record = tree(node(1, 0, 1.0, 0.0), node(2, 0, 0.0, 1.0))
    assert pairs_from_tree(record, PairPolicy(alpha=0.5, threshold=0.0)) == []  # a tie
    [by_search] = pairs_from_tree(record, PairPolicy(alpha=0.9, threshold=0.1))
    [by_critic] = pairs_from_tree(record, PairPolicy(alpha=0.1, threshold=0.1))
    assert by_search["chosen"][0]["content"] == "answer 1" and by_critic["chosen"][0]["content"] == "answer 2"


def test_flagged_or_codeless_candidates_are_never_chosen():
    flagged = tree(node(1, 0, 1.0, 1.0, flags=["hardcoded_examples"]), node(2, 0, 0.0, 0.0))
    codeless = tree(node(1, 0, 0.5, 1.0, code=None), node(2, 0, 0.0, 0.0))
    policy = PairPolicy(0.5, 0.1)
    assert pairs_from_tree(flagged, policy) == [] and pairs_from_tree(codeless, policy) == []
    # but a flagged candidate may still be the rejected side
    flagged_low = tree(node(1, 0, 0.0, 0.0, flags=["introspection"]), node(2, 0, 1.0, 1.0))
    assert len(pairs_from_tree(flagged_low, policy)) == 1


def test_dedupe_and_stats():
    record = tree(node(1, 0, 1.0, 1.0, passed=True), node(2, 0, 0.0, 0.0, flags=["hidden_fail"]))
    same_again = {**record, "task_id": "t2"}
    pairs, stats = build_pairs([record, same_again, tree(task_id="t3")], PairPolicy(0.5, 0.1))
    assert len(pairs) == 1
    assert stats["tasks"] == 3 and stats["pairs"] == 1 and stats["tasks_with_pairs"] == 1
    assert stats["chosen_passes_all_share"] == 1.0
    assert stats["flagged_candidates"] == 2 and stats["flag_reasons"] == {"hidden_fail": 2}
    assert stats["delta_q_histogram"]["0.9-1.0"] == 1


def test_identical_completions_make_no_pair():
    record = tree(node(1, 0, 1.0, 1.0, completion="same"), node(2, 0, 0.0, 0.0, completion="same"))
    assert pairs_from_tree(record, PairPolicy(0.5, 0.1)) == []
