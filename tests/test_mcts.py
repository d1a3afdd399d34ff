"""MCTS mechanics with a scripted policy and a fake sandbox: selection, backprop, critique, budget, records."""

import math

import pytest

from agentq.policy.base import Sample
from agentq.sandbox.limits import Limits
from agentq.sandbox.verdict import TestResult, Verdict
from agentq.search.critique import NEUTRAL_Q, CritiqueGate, _orders, rank_to_q
from agentq.search.mcts import Node, Search, SearchParams, blended_q, ucb1
from agentq.tasks.schema import Task

TASK = Task(id="t1", source="test", group="g", description="Return x + 1.", buggy_code="def f(x):\n    return x\n",
            reference_code="def f(x):\n    return x + 1\n", entry_point="f", tests="from solution import *\n")


def fenced(code: str) -> str:
    return f"```python\n{code}```"


class ScriptPolicy:
    """Answers rewrite prompts from a queue of completions and critique prompts with a fixed answer."""

    def __init__(self, completions: list[str], critique: str = "by_score") -> None:
        self.completions = list(completions)
        self.critique = critique  # "by_score": best test score first, whatever the order shown; else a fixed answer
        self.calls: list[tuple[str, int, float]] = []
        self.prompts: list = []

    def generate(self, prompts, *, n, temperature, max_new_tokens, seed):
        purpose = prompts[0].purpose
        self.calls.append((purpose, n, temperature))
        self.prompts += prompts
        if purpose == "critique":
            return [[Sample(self._rank(p))] for p in prompts]
        return [[Sample(self.completions.pop(0)) for _ in range(n)]]

    def generate_batch(self, requests):
        first = requests[0]  # the search asks one kind of thing per call
        return self.generate([r.prompt for r in requests], n=first.n, temperature=first.temperature,
                             max_new_tokens=first.max_new_tokens, seed=first.seed)

    def _rank(self, prompt) -> str:
        if self.critique != "by_score":
            return self.critique
        scores = [int(c.split("# score ")[1].split()[0]) if "# score " in c else -1 for c in prompt.candidates]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        return "Reasoning first.\nRANKING: " + " > ".join(str(i + 1) for i in order)


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


def test_root_is_run_first_then_one_rollout_expands_tests_critiques_and_backpropagates():
    policy = ScriptPolicy([cand(1), cand(3)])
    sandbox = FakeSandbox()
    search = Search(TASK, policy, sandbox, SearchParams(k=2, rollouts=1, depth=2))
    search.run()
    root, a, b = search.nodes
    assert root.verdict is not None and root.reward == 0.0  # the buggy program, tested once
    assert (a.reward, b.reward) == (0.25, 0.75)
    assert root.visits == 2 and root.q_mcts == pytest.approx(0.5)
    assert (a.visits, b.visits) == (1, 1)
    assert sandbox.runs == 3
    # judged in both orders, both times the better-scoring candidate first: consistent votes
    assert (a.q_ai_votes, b.q_ai_votes) == ([0.0, 0.0], [1.0, 1.0]) and (a.q_ai, b.q_ai) == (0.0, 1.0)
    assert [c[0] for c in policy.calls] == ["rewrite", "critique"]
    assert search.stats.critique_calls == 2 and search.stats.critique_flips == 0
    # depth-1 prompts carry the buggy program's test results
    assert "Test results of the buggy code" in a.prompt[-1]["content"]
    critiques = [p for p in policy.prompts if p.purpose == "critique"]
    assert [c.candidates for c in critiques] == [[a.code, b.code], [b.code, a.code]]
    assert "Test results: failed: 1/4 tests passed." in critiques[0].messages[-1]["content"]


class LimitedSandbox(FakeSandbox):
    """A sandbox with limits of its own, as LocalExecutor and RemoteExecutor have; records each job's limits."""

    limits = Limits(timeout_s=5.0)

    def __init__(self) -> None:
        super().__init__()
        self.job_limits: list = []

    def run_many(self, jobs):
        self.job_limits += [job[2] if len(job) == 3 else None for job in jobs]
        return super().run_many([job[:2] for job in jobs])


def test_every_run_of_a_task_with_a_reference_time_gets_the_derived_time_budget():
    timed = TASK.model_copy(update={"reference_seconds": 0.1})
    sandbox = LimitedSandbox()
    Search(timed, ScriptPolicy([cand(1), cand(3)]), sandbox, SearchParams(k=2, rollouts=1, depth=2)).run()
    assert [lim.time_budget_s for lim in sandbox.job_limits] == [pytest.approx(0.4)] * 3  # root + 2 children
    assert {lim.timeout_s for lim in sandbox.job_limits} == {5.0}
    untimed = LimitedSandbox()
    Search(TASK, ScriptPolicy([cand(1), cand(3)]), untimed, SearchParams(k=2, rollouts=1, depth=2)).run()
    assert untimed.job_limits == [None] * 3  # an older task file: the executor's own limits apply


def test_a_position_biased_critique_counts_as_no_preference():
    policy = ScriptPolicy([cand(1), cand(3)], critique="RANKING: 1 > 2")  # always the first shown
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=1)).run()
    a, b = search.nodes[1:]
    assert (a.q_ai_votes, b.q_ai_votes) == ([1.0, 0.0], [0.0, 1.0]) and a.q_ai == b.q_ai == 0.5
    assert search.stats.critique_flips == 1


def test_a_judge_that_always_prefers_the_middle_slot_yields_no_position_only_pairs():
    """K = 3 siblings of equal test reward, a judge that always ranks the middle slot first: judged in the shown
    order and reversed only, the middle candidate stayed ahead of both others (position-only pairs with ties on);
    judged in every cyclic rotation, each candidate sits in the middle once and no preference survives."""
    from agentq.preferences import PairPolicy, build_pairs

    assert sorted(map(tuple, _orders(3))) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    policy = ScriptPolicy([fenced(f"def f(x):\n    return x + {i}  # score 2\n") for i in range(3)],
                          critique="Reasoning.\nRANKING: 2 > 1 > 3")
    gate = CritiqueGate()
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=3, rollouts=1), gate=gate).run()
    siblings = search.nodes[1:]
    assert search.stats.critique_calls == 3 and gate.usable == 3
    assert all(sorted(n.q_ai_votes) == [0.0, 0.5, 1.0] for n in siblings)  # best, middle and worst once each
    pairs, stats = build_pairs([search.record()], PairPolicy(threshold=0.1, critique_ties=True))
    assert pairs == [] and stats["sibling_comparisons"] == {"critique_unsure": 3}


def test_a_critic_that_cannot_rank_is_switched_off_for_the_shard_and_says_so():
    gate = CritiqueGate(after=4)
    for i in range(4):
        policy = ScriptPolicy([cand(1), cand(3)] * 2, critique="they both look fine")
        search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=2, depth=1), gate=gate).run()
        asked = [c for c in policy.calls if c[0] == "critique"]
        assert len(asked) == (2 if i == 0 else 0)  # 2 expansions x 2 judgements, then the critic is not asked
    assert gate.off and gate.judgements == 4 and gate.usable == 0
    assert "usable ranking in 0 of 4" in gate.warning and "collect.critic: none" in gate.warning
    assert all(n.q_ai == NEUTRAL_Q for n in search.nodes[1:])


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


@pytest.mark.parametrize(("k", "root_k", "depth", "rollouts"), [(2, None, 2, 10), (1, None, 1, 5), (2, 4, 2, 7),
                                                                 (3, None, 3, 9)])
def test_the_budget_spent_is_rollouts(k, root_k, depth, rollouts):
    """Every tree spends exactly `rollouts` expansions: nodes that cannot grow deeper are widened."""
    policy = ScriptPolicy([cand(i % 4) for i in range(200)])
    params = SearchParams(k=k, root_k=root_k, rollouts=rollouts, depth=depth, stop_on_pass=False)
    search = Search(TASK, policy, FakeSandbox(), params).run()
    rewrites = [c for c in policy.calls if c[0] == "rewrite"]
    assert search.stats.rollouts == rollouts == len(rewrites)
    root_batches = len(search.nodes[0].children) // (root_k or k)
    assert search.stats.samples == root_batches * (root_k or k) + (rollouts - root_batches) * k
    assert max(n.depth for n in search.nodes) <= depth
    assert all(not n.children for n in search.nodes if n.depth == depth)


def test_stops_early_on_full_pass_only_when_asked():
    search = Search(TASK, ScriptPolicy([cand(4), cand(0)]), FakeSandbox(), SearchParams(k=2, rollouts=5, depth=3,
                                                                                       stop_on_pass=True))
    search.run()
    assert search.solved and search.stats.rollouts == 1 and search.best().reward == 1.0
    policy = ScriptPolicy([cand(4), cand(0)] * 5)
    full = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=5, depth=3, stop_on_pass=False)).run()
    assert full.stats.rollouts == 5 and full.nodes[1].children == []  # a solved node is not expanded


def test_unparseable_answer_is_a_parse_error_candidate_never_expanded():
    sandbox = FakeSandbox()
    policy = ScriptPolicy(["I cannot help with that.", cand(2), cand(1), cand(1)])
    search = Search(TASK, policy, sandbox, SearchParams(k=2, rollouts=2, depth=2, exploration=0.0))
    search.run()
    bad = search.nodes[1]
    assert bad.code is None and bad.verdict.status == "parse_error" and bad.reward == 0.0
    assert sandbox.runs == 1 + 1 + 2 and search.stats.parse_errors == 1
    assert bad.children == [] and search.nodes[2].children == [3, 4]  # the parse error was never a parent
    assert "# score 2" in search.nodes[3].prompt[-1]["content"]  # its children saw their real parent


def test_parse_error_siblings_leave_the_root_to_widen():
    policy = ScriptPolicy(["no code here", "nor here", cand(1), cand(2)])
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=2, depth=2)).run()
    assert search.nodes[0].children == [1, 2, 3, 4] and search.stats.rollouts == 2


def test_unusable_critique_falls_back_to_neutral_and_is_counted():
    policy = ScriptPolicy([cand(1), cand(2)], critique="they are both fine")
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=1)).run()
    assert [n.q_ai for n in search.nodes[1:]] == [NEUTRAL_Q, NEUTRAL_Q]
    assert search.stats.critique_fallbacks == 2 and search.stats.critique_calls == 2


def test_record_holds_tree_and_every_parameter():
    search = Search(TASK, ScriptPolicy([cand(1), cand(3)]), FakeSandbox(), SearchParams(k=2, rollouts=1)).run()
    record = search.record()
    assert record["params"]["k"] == 2 and record["params"]["exploration"] == 1.0
    assert [n["parent"] for n in record["nodes"]] == [None, 0, 0]
    assert {"prompt", "completion", "verdict", "q_mcts", "q_ai", "q_ai_votes", "batch", "visits", "flags"} \
        <= set(record["nodes"][1])


def test_no_critic_makes_no_critique_calls_and_leaves_q_ai_neutral():
    policy = ScriptPolicy([cand(1), cand(3), cand(2), cand(2)])
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=2, rollouts=2, critique=False)).run()
    assert [c[0] for c in policy.calls] == ["rewrite", "rewrite"] and search.stats.critique_calls == 0
    assert all(n.q_ai == NEUTRAL_Q and n.q_ai_votes == [] for n in search.nodes)


class HiddenFailSandbox:
    """Every candidate fails one visible test with a long message and one hidden test quoting its input."""

    def run_many(self, jobs):
        tests = [TestResult(name="test_visible", passed=False, message="visible: " + "v" * 1000),
                 TestResult(name="test_hidden_1", passed=False, message="assert f(SECRET_INPUT) == 3")]
        return [Verdict(status="failed", tests=tests, expected_tests=2, message="visible: " + "v" * 1000)
                for _ in jobs]


def test_prompts_keep_the_1500_char_feedback_and_never_quote_hidden_tests():
    policy = ScriptPolicy([cand(1)] * 8)
    Search(TASK, policy, HiddenFailSandbox(), SearchParams(k=2, rollouts=2, depth=2)).run()
    texts = [p.messages[-1]["content"] for p in policy.prompts]
    assert any("v" * 1000 in t for t in texts if "Test results of the buggy code" in t)  # not cut at 600
    critique_texts = [p.messages[-1]["content"] for p in policy.prompts if p.purpose == "critique"]
    assert critique_texts and all("1 hidden test(s) failed" in t for t in critique_texts)
    assert not any("SECRET_INPUT" in t or "test_hidden" in t for t in texts)


class Recording:
    """Passes requests to a policy and keeps every request and sample group, to add up what a search spent."""

    def __init__(self, policy) -> None:
        self.policy, self.requests, self.groups = policy, [], []

    def generate_batch(self, requests):
        out = self.policy.generate_batch(requests)
        self.requests += requests
        self.groups += out
        return out


def test_a_tree_counts_the_tokens_of_every_expansion_and_critique_once():
    from agentq.config import ScriptedSpec
    from agentq.policy.base import spent
    from agentq.policy.scripted import ScriptedPolicy, token_count

    policy = Recording(ScriptedPolicy(ScriptedSpec()))
    search = Search(TASK, policy, FakeSandbox(), SearchParams(k=3, rollouts=3, depth=2, stop_on_pass=False)).run()
    stats = search.stats
    assert stats.rollouts == 3 and stats.critique_calls > 0
    assert stats.tokens_in > 0 and stats.tokens_out > 0
    assert (stats.tokens_in, stats.tokens_out) == spent(policy.groups)
    # each request's prompt once, however many samples it asked for; critiques included
    assert stats.tokens_in == sum(token_count(r.prompt.text() + r.prompt.answer_prefix) for r in policy.requests)
    critiques = [g for r, g in zip(policy.requests, policy.groups, strict=True) if r.prompt.purpose == "critique"]
    assert critiques and spent(critiques)[1] > 0
    assert stats.tokens_out == sum(token_count(s.text) for g in policy.groups for s in g)
    record = search.record()["stats"]
    assert (record["tokens_in"], record["tokens_out"]) == (stats.tokens_in, stats.tokens_out)
