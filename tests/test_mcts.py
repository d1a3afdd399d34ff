"""MCTS mechanics with a scripted policy and a fake sandbox: selection, backprop, critique, budget, records."""

import math

import pytest

from agentq.policy.base import Sample
from agentq.sandbox.verdict import TestResult, Verdict
from agentq.search.critique import NEUTRAL_Q, rank_to_q
from agentq.search.mcts import Node, Search, SearchParams, blended_q, ucb1
from agentq.tasks.schema import Task

TASK = Task(id="t1", source="test", group="g", description="Return x + 1.", buggy_code="def f(x):\n    return x\n",
            reference_code="def f(x):\n    return x + 1\n", entry_point="f", tests="from solution import *\n")


def fenced(code: str) -> str:
    return f"```python\n{code}```"


class ScriptPolicy:
    """Answers rewrite prompts from a queue of completions and critique prompts with a fixed answer."""

    def __init__(self, completions: list[str], critique: str = "2 > 1") -> None:
        self.completions = list(completions)
        self.critique = critique
        self.calls: list[tuple[str, int, float]] = []

    def generate(self, prompts, *, n, temperature, max_new_tokens, seed):
        purpose = prompts[0].purpose
        self.calls.append((purpose, n, temperature))
        if purpose == "critique":
            return [[Sample(self.critique)]]
        return [[Sample(self.completions.pop(0)) for _ in range(n)]]


class FakeSandbox:
    """Reward = fraction of the 4 tests a candidate 'passes', read from a `# score N` comment."""

    def __init__(self) -> None:
        self.runs = 0

    def run_many(self, jobs):
        self.runs += len(jobs)
        out = []
        for code, _tests in jobs:
            score = int(code.split("# score ")[1].split()[0]) if "# score " in code else 0
            tests = [TestResult(name=f"test_{i}", passed=i < score) for i in range(4)]
            out.append(Verdict(status="passed" if score == 4 else "failed", tests=tests, expected_tests=4))
        return out


def cand(score: int) -> str:
    return fenced(f"def f(x):\n    return x + 1  # score {score}\n")


def test_rank_to_q_maps_best_to_one_and_worst_to_zero():
    assert rank_to_q([2, 0, 1]) == [0.5, 0.0, 1.0]
    assert rank_to_q([0]) == [NEUTRAL_Q]
    with pytest.raises(ValueError):
        rank_to_q([0, 0])


def test_ucb1_prefers_unvisited_then_balances_value_and_exploration():
    params = SearchParams(exploration=1.0, alpha=1.0)
    fresh = Node(id=1, parent=0, depth=1)
    assert ucb1(fresh, 10, params) == math.inf
    good = Node(id=2, parent=0, depth=1, visits=5, value_sum=4.0)
    rare = Node(id=3, parent=0, depth=1, visits=1, value_sum=0.5)
    assert ucb1(good, 6, params) == pytest.approx(0.8 + math.sqrt(math.log(6) / 5))
    assert ucb1(rare, 6, params) == pytest.approx(0.5 + math.sqrt(math.log(6) / 1))
    assert ucb1(rare, 6, params) > ucb1(good, 6, params)
    assert ucb1(rare, 6, params.replace(exploration=0.0)) < ucb1(good, 6, params.replace(exploration=0.0))


def test_blended_q():
    assert blended_q(1.0, 0.0, 0.5) == 0.5
    assert blended_q(0.2, 1.0, 0.0) == 1.0


def test_first_rollout_expands_root_tests_and_backpropagates_running_mean():
    policy = ScriptPolicy([cand(1), cand(3)])
    sandbox = FakeSandbox()
    search = Search(TASK, policy, sandbox, SearchParams(k=2, rollouts=1, depth=2))
    search.run()
    root, a, b = search.nodes
    assert (a.reward, b.reward) == (0.25, 0.75)
    assert root.visits == 2 and root.q_mcts == pytest.approx(0.5)
    assert (a.visits, b.visits) == (1, 1)
    assert sandbox.runs == 2
    # critique "2 > 1" (after the prompt's "RANKING:" prefix) ranks the second candidate best
    assert (a.q_ai, b.q_ai) == (0.0, 1.0)
    assert [c[0] for c in policy.calls] == ["rewrite", "critique"]


def test_selection_follows_ucb_and_child_prompt_carries_parent_and_feedback():
    policy = ScriptPolicy([cand(1), cand(3), cand(2), cand(2)])
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=2, depth=2, exploration=0.0))
    search.run()
    # with no exploration the better child (id 2: reward 0.75, Q_ai 1.0) is expanded
    assert search.nodes[2].children == [3, 4] and search.nodes[1].children == []
    child_prompt = search.nodes[3].prompt[-1]["content"]
    assert "# score 3" in child_prompt and "1/4 tests passed" not in child_prompt and "3/4 tests passed" in child_prompt
    # rewards 0.5 and 0.5 reach node 2 and the root as visits and a running mean
    assert search.nodes[2].visits == 3 and search.nodes[2].q_mcts == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert search.nodes[0].visits == 4 and search.nodes[0].q_mcts == pytest.approx((0.25 + 0.75 + 1.0) / 4)


def test_stops_early_on_full_pass_and_respects_depth():
    search = Search(TASK, ScriptPolicy([cand(4), cand(0)]), FakeSandbox(), SearchParams(k=2, rollouts=5, depth=3))
    search.run()
    assert search.solved and search.stats.rollouts == 1 and search.best().reward == 1.0
    no_stop = SearchParams(k=1, rollouts=5, depth=1, stop_on_pass=False)
    shallow = Search(TASK, ScriptPolicy([cand(1)] * 5), FakeSandbox(), no_stop).run()
    assert max(n.depth for n in shallow.nodes) == 1 and shallow.stats.samples == 1  # depth 1: root only expands


def test_unparseable_answer_is_a_parse_error_candidate_not_a_crash():
    sandbox = FakeSandbox()
    search = Search(TASK, ScriptPolicy(["I cannot help with that.", cand(2)]), sandbox, SearchParams(k=2, rollouts=1))
    search.run()
    bad = search.nodes[1]
    assert bad.code is None and bad.verdict.status == "parse_error" and bad.reward == 0.0
    assert sandbox.runs == 1 and search.stats.parse_errors == 1


def test_unusable_critique_falls_back_to_neutral_and_is_counted():
    policy = ScriptPolicy([cand(1), cand(2)], critique="they are both fine")
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=1)).run()
    assert [n.q_ai for n in search.nodes[1:]] == [NEUTRAL_Q, NEUTRAL_Q]
    assert search.stats.critique_fallbacks == 1 and search.stats.critique_calls == 1


def test_record_holds_tree_and_every_parameter():
    search = Search(TASK, ScriptPolicy([cand(1), cand(3)]), FakeSandbox(), SearchParams(k=2, rollouts=1)).run()
    record = search.record()
    assert record["params"]["k"] == 2 and record["params"]["exploration"] == 1.0
    assert [n["parent"] for n in record["nodes"]] == [None, 0, 0]
    assert {"prompt", "completion", "verdict", "q_mcts", "q_ai", "visits", "flags"} <= set(record["nodes"][1])
