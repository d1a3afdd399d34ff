"""Pair construction: the tests decide, the critique only breaks ties it is sure of, stats say which."""

import pytest

from agentq.policy.base import BatchPolicy, Sample
from agentq.policy.prompts import format_ranking
from agentq.preferences import PairPolicy, build_pairs, pairs_from_tree
from agentq.sandbox.verdict import TestResult, Verdict
from agentq.search.mcts import Search, SearchParams
from agentq.tasks.schema import Task

PROMPT = [{"role": "user", "content": "fix it"}]


def node(i, parent, reward, votes=(0.5, 0.5), *, code="x = 1", flags=None, completion=None, batch=0):
    return {"id": i, "parent": parent, "children": [], "prompt": PROMPT, "completion": completion or f"answer {i}",
            "code": code, "q_mcts": reward, "q_ai": sum(votes) / len(votes), "q_ai_votes": list(votes),
            "reward": reward, "flags": flags or [], "batch": batch,
            "verdict": {"status": "passed" if reward == 1.0 else "failed"}}


def tree(*children, task_id="t1", group="g1"):
    root = node(0, None, 0.0)
    root["children"] = [c["id"] for c in children]
    return {"task_id": task_id, "group": group, "nodes": [root, *children]}


def test_tests_decide_and_a_disagreeing_critique_changes_nothing():
    record = tree(node(1, 0, 1.0, votes=(0.0, 0.0)), node(2, 0, 0.25, votes=(1.0, 1.0)))
    [pair] = pairs_from_tree(record, PairPolicy(threshold=0.1, critique_ties=True))
    assert pair["chosen"] == [{"role": "assistant", "content": "answer 1"}]
    assert pair["rejected"][0]["content"] == "answer 2"
    assert pair["decided_by"] == "tests" and pair["delta_reward"] == pytest.approx(0.75) and pair["chosen_passed"]
    assert pair["group"] == "g1" and pair["task_id"] == "t1" and pair["prompt"] == PROMPT
    assert pairs_from_tree(record, PairPolicy(threshold=0.75)) == []  # the gap must exceed the threshold


def test_ties_are_dropped_unless_asked_and_the_critique_is_consistent():
    sure = tree(node(1, 0, 0.0, votes=(1.0, 1.0)), node(2, 0, 0.0, votes=(0.0, 0.0)))
    flipped = tree(node(1, 0, 0.0, votes=(1.0, 0.0)), node(2, 0, 0.0, votes=(0.0, 1.0)))
    single = tree(node(1, 0, 0.0, votes=(1.0,)), node(2, 0, 0.0, votes=(0.0,)))  # not debiased: not enough
    assert pairs_from_tree(sure, PairPolicy()) == []  # off by default
    [pair] = pairs_from_tree(sure, PairPolicy(critique_ties=True))
    assert pair["decided_by"] == "critique" and pair["chosen"][0]["content"] == "answer 1"
    assert pairs_from_tree(flipped, PairPolicy(critique_ties=True)) == []
    assert pairs_from_tree(single, PairPolicy(critique_ties=True)) == []
    other_batch = tree(node(1, 0, 0.0, votes=(1.0, 1.0)), node(2, 0, 0.0, votes=(0.0, 0.0), batch=1))
    assert pairs_from_tree(other_batch, PairPolicy(critique_ties=True)) == []


def test_critique_never_picks_the_lower_reward_inside_the_threshold():
    record = tree(node(1, 0, 0.5, votes=(1.0, 1.0)), node(2, 0, 0.55, votes=(0.0, 0.0)))
    assert pairs_from_tree(record, PairPolicy(threshold=0.1, critique_ties=True)) == []


def test_flagged_or_codeless_candidates_are_never_chosen():
    flagged = tree(node(1, 0, 1.0, flags=["hardcoded_examples"]), node(2, 0, 0.0))
    codeless = tree(node(1, 0, 0.5, code=None), node(2, 0, 0.0))
    assert pairs_from_tree(flagged, PairPolicy()) == [] and pairs_from_tree(codeless, PairPolicy()) == []
    # but a flagged candidate may still be the rejected side
    flagged_low = tree(node(1, 0, 0.0, flags=["introspection"]), node(2, 0, 1.0))
    assert len(pairs_from_tree(flagged_low, PairPolicy())) == 1


def test_a_parse_failure_pairs_with_a_runnable_answer_only_when_the_round_asks():
    broken = node(2, 0, 0.0, code=None)
    broken["verdict"] = {"status": "parse_error"}
    record = tree(node(1, 0, 0.5), broken)
    pairs, stats = build_pairs([record], PairPolicy())
    assert pairs == [] and stats["sibling_comparisons"] == {"parse_failure": 1}
    [pair] = pairs_from_tree(record, PairPolicy(parse_failure_pairs=True))
    assert pair["decided_by"] == "tests" and pair["rejected"][0]["content"] == "answer 2"


def test_dedupe_and_stats():
    record = tree(node(1, 0, 1.0), node(2, 0, 0.0, flags=["hidden_fail"]), node(3, 0, 0.0, votes=(1.0, 1.0)))
    same_again = {**record, "task_id": "t2"}
    pairs, stats = build_pairs([record, same_again, tree(task_id="t3")], PairPolicy(critique_ties=True))
    assert len(pairs) == 3
    assert stats["tasks"] == 3 and stats["pairs"] == 3 and stats["tasks_with_pairs"] == 1
    assert stats["decided_by_tests"] == 2 and stats["decided_by_critique"] == 1
    assert stats["test_decided_share"] == pytest.approx(2 / 3) and stats["groups_with_pairs"] == 1
    assert stats["sibling_comparisons"] == {"critique": 2, "tests": 4}
    assert stats["chosen_passes_all_share"] == pytest.approx(2 / 3)
    assert stats["flagged_candidates"] == 2 and stats["flag_reasons"] == {"hidden_fail": 2}
    assert stats["delta_reward_histogram"]["0.9-1.0"] == 2 and stats["delta_reward_histogram"]["0.0-0.1"] == 1


def test_identical_completions_make_no_pair():
    record = tree(node(1, 0, 1.0, completion="same"), node(2, 0, 0.0, completion="same"))
    assert pairs_from_tree(record, PairPolicy()) == []


# ---- a real search whose critic confidently disagrees with the tests ----

TASK = Task(id="t1", source="test", group="g", description="Return x + 1.", buggy_code="def f(x):\n    return x\n",
            reference_code="def f(x):\n    return x + 1\n", entry_point="f", tests="from solution import *\n")


def score_of(code: str) -> int:
    return int(code.split("# score ")[1].split()[0]) if "# score " in code else 0


class InvertedCritic(BatchPolicy):
    """Rewrites cycle through scores 0..4 (many ties); the critique ranks the *worst* tested candidate first,
    the same way in both presentation orders, i.e. a confident critic that always disagrees with the tests."""

    def __init__(self) -> None:
        self.drawn = 0

    def generate_batch(self, requests):
        out = []
        for prompt, n in ((r.prompt, r.n) for r in requests):
            if prompt.purpose == "critique":
                order = sorted(range(len(prompt.candidates)), key=lambda i: score_of(prompt.candidates[i]))
                out.append([Sample(f"The first one looks cleanest.\n{format_ranking(order)}")])
                continue
            samples = []
            for _ in range(n):
                score = [0, 4, 2, 0, 1, 2, 3][self.drawn % 7]
                samples.append(Sample(f"```python\ndef f(x):\n    return x + 1  # score {score} v{self.drawn}\n```"))
                self.drawn += 1
            out.append(samples)
        return out


class FakeSandbox:
    def run_many(self, jobs):
        out = []
        for code, _ in jobs:
            score = score_of(code)
            tests = [TestResult(name=f"test_{i}", passed=i < score) for i in range(4)]
            out.append(Verdict(status="passed" if score == 4 else "failed", tests=tests, expected_tests=4))
        return out


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("critique_ties", [False, True])
def test_a_critic_that_disagrees_with_the_tests_never_yields_a_lower_reward_chosen_side(k, critique_ties):
    params = SearchParams(k=k, rollouts=6, depth=3, stop_on_pass=False, seed=1)
    record = Search(TASK, InvertedCritic(), FakeSandbox(), params).run().record()
    rewards = {n["id"]: n["reward"] for n in record["nodes"]}
    assert len({r for r in rewards.values()}) > 2  # the tree has real contrast to get wrong
    pairs, stats = build_pairs([record], PairPolicy(threshold=0.1, critique_ties=critique_ties))
    assert stats["decided_by_tests"] > 0
    for p in pairs:
        assert p["chosen_reward"] >= p["rejected_reward"]
        if p["decided_by"] == "tests":
            assert p["chosen_reward"] > p["rejected_reward"] + 0.1
    # every sibling pair the tests separate is kept, the right way round
    separated = sum(
        1 for parent in record["nodes"] for i, a in enumerate(parent["children"]) for b in parent["children"][i + 1:]
        if abs(rewards[a] - rewards[b]) > 0.1
    )
    assert stats["decided_by_tests"] == separated
    # the critic is confident but only ever about ties, where it picks the lower score: never made a pair
    # against the tests (equal rewards give a pair whose chosen and rejected rewards are equal)
    assert all(p["chosen_reward"] == p["rejected_reward"] for p in pairs if p["decided_by"] == "critique")
