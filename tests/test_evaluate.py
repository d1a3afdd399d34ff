"""Evaluation records and their summaries: per-sample verdicts, pass@k, paired comparison with the base."""

import pytest

from agentq.config import RoundSpec
from agentq.evaluate import answer_records, compare, evaluate_task, summarize
from agentq.policy.base import BatchPolicy, Sample
from agentq.sandbox.verdict import Verdict
from agentq.tasks.schema import Task

TASK = Task(id="t1", source="test", group="g", description="Return x + 1.", buggy_code="def f(x):\n    return x\n",
            reference_code="def f(x):\n    return x + 1\n", entry_point="f",
            tests="from solution import *\n\ndef test_one():\n    assert f(1) == 2\n")
SPEC = RoundSpec.model_validate({"dataset": {"train": "a", "test": "b"}, "store": {"path": "s"},
                                 "evaluate": {"samples": 4, "passK": 2}})


class Answers(BatchPolicy):
    """Greedy requests get one fixed answer; sampled ones get a fixed list (a pass when the code says so)."""

    def __init__(self, greedy: str, sampled: list[str]) -> None:
        self.greedy, self.sampled = greedy, sampled
        self.temperatures: list[float] = []
        self.calls = 0

    def generate_batch(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            self.temperatures.append(r.temperature)
            texts = [self.greedy] if r.temperature == 0 else self.sampled[:r.n]
            out.append([Sample(f"```python\n{t}```") for t in texts])
        return out


class Sandbox:
    def run_many(self, jobs):
        return [Verdict(status="passed" if "+ 1" in code else "failed", expected_tests=1) for code, _ in jobs]


GOOD, BAD = "def f(x):\n    return x + 1\n", "def f(x):\n    return x\n"


def test_greedy_and_every_sample_are_judged_and_stored():
    policy = Answers(BAD, [GOOD, BAD, GOOD, BAD])
    record = evaluate_task(TASK, "full_rewrite", policy, Sandbox(), SPEC)
    assert policy.temperatures == [0.0, SPEC.collect.temperature]
    assert record["solved"] is False and record["status"] == "failed"  # the greedy answer
    assert record["n"] == 4 and record["correct"] == 2
    assert [s["solved"] for s in record["samples"]] == [True, False, True, False]
    one = evaluate_task(TASK, "zero_shot", Answers(GOOD, []), Sandbox(),
                        SPEC.model_copy(update={"evaluate": SPEC.evaluate.model_copy(update={"samples": 1,
                                                                                            "pass_k": 1})}))
    assert one["n"] == 1 and one["correct"] == 1 and one["solved"]  # one sample: the greedy answer itself


def test_single_prompt_modes_batch_tasks_into_one_generate_call_and_keep_task_order():
    tasks = [TASK.model_copy(update={"id": f"t{i}", "group": f"g{i}"}) for i in range(5)]
    policy = Answers(GOOD, [GOOD, BAD, BAD, BAD])
    records = list(answer_records(tasks, "full_rewrite", policy, Sandbox(), SPEC, batch=2))
    assert policy.calls == 3  # 2 + 2 + 1 tasks, each call holding the greedy and the sampled request of each
    assert policy.temperatures == [0.0, SPEC.collect.temperature] * 5
    assert [r["task_id"] for r in records] == [t.id for t in tasks]
    assert all(r["solved"] and r["n"] == 4 and r["correct"] == 1 for r in records)


def record(task_id, group, correct, n=4, solved=False):
    return {"task_id": task_id, "group": group, "n": n, "correct": correct, "solved": solved,
            "visible_solved": solved, "parse_failure": False}


def test_summary_reports_unbiased_pass_at_1_and_k_and_greedy():
    records = [record("a", "g1", 2, solved=True), record("b", "g2", 0), record("c", "g2", 4, solved=True)]
    s = summarize(records, k=2)
    assert s["pass_at_1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["pass_at_2"] == pytest.approx((1 - 1 / 6 + 0 + 1) / 3)
    assert s["greedy_solved"] == 2 and s["samples_per_task"] == 4
    assert s["pass_at_k_curve"][0] == pytest.approx(s["pass_at_1"]) and s["pass_at_k_curve"][1] == s["pass_at_2"]
    assert s["pass_at_k_curve"] == sorted(s["pass_at_k_curve"]) and s["pass_at_k_curve"][3] == pytest.approx(2 / 3)
    low, high = s["pass_at_1_ci95"]
    assert low <= s["pass_at_1"] <= high


def test_paired_comparison_counts_wins_losses_and_pairs_by_task():
    base = [record(f"t{i}", f"g{i // 2}", 0, solved=False) for i in range(10)]
    new = [record(f"t{i}", f"g{i // 2}", 4 if i < 8 else 0, solved=i < 8) for i in range(10)]
    new.append(record("only-new", "gx", 4, solved=True))  # not in the base: not paired
    c = compare(new, base)
    assert c["tasks"] == 10 and c["groups"] == 5
    assert c["delta_pass_at_1"] == pytest.approx(0.8)
    assert (c["greedy_wins"], c["greedy_losses"]) == (8, 0)
    assert c["mcnemar_p"] == pytest.approx(2 / 256)
    assert 0 < c["delta_ci95"][0] <= 0.8 <= c["delta_ci95"][1]
    same = compare(base, base)
    assert same["delta_pass_at_1"] == 0 and same["mcnemar_p"] == 1.0


def test_report_tables_carry_base_row_delta_interval_p_value_and_compute_curve():
    from agentq.report import arm_rows, comparison_rows, compute_rows, verdict_line

    base = [record(f"t{i}", f"g{i}", 0) for i in range(6)]
    new = [record(f"t{i}", f"g{i}", 4 if i < 5 else 0, solved=i < 5) for i in range(6)]
    summary = {"round": "r1", "model": "m", "from_round": None,
               "modes": {"full_rewrite": summarize(new, 2)},
               "baseline": {"model": "m", "modes": {"full_rewrite": summarize(base, 2)}},
               "comparison": {"full_rewrite": compare(new, base)}}
    table = arm_rows(summary)
    assert "| base: m | full_rewrite | 6 | 4 | 0.0% |" in table and "| r1: m + adapter | full_rewrite |" in table
    assert "pass@2" in table
    comparison = comparison_rows(summary)
    assert "+83.3%" in comparison and "5 / 0" in comparison and f"{2 / 32:.3g}" in comparison
    assert "k=4" in compute_rows(summary)
    assert "a gain: the interval excludes zero" in verdict_line(summary)


def test_the_mcts_modes_strategy_follows_evaluate_then_collect_and_the_report_says_it():
    from agentq.report import search_line
    from agentq.search.mcts import SearchParams

    def spec(collect, evaluate):
        return RoundSpec.model_validate({"dataset": {"train": "a", "test": "b"}, "store": {"path": "s"},
                                         "collect": collect, "evaluate": evaluate})

    mcts = SearchParams.for_evaluate(spec({"strategy": "mcts"}, {"k": 3, "rollouts": 5, "depth": 2}))
    assert (mcts.k, mcts.rollouts, mcts.depth, mcts.critique, mcts.stop_on_pass) == (3, 5, 2, True, True)
    chain = SearchParams.for_evaluate(spec({"strategy": "reflection", "attempts": 4}, {"k": 3}))
    assert (chain.k, chain.root_k, chain.rollouts, chain.depth, chain.critique) == (1, 1, 4, 4, False)
    own = SearchParams.for_evaluate(spec({"strategy": "reflection", "attempts": 4}, {"strategy": "mcts", "k": 3}))
    assert (own.k, own.critique) == (3, True)  # evaluate's setting wins, and the mcts search critiques again
    assert SearchParams.for_evaluate(spec({}, {"strategy": "reflection", "attempts": 2})).rollouts == 2
    records = [{**record(f"t{i}", f"g{i}", int(i == 0), n=1, solved=i == 0), "strategy": "reflection",
                "attempts": a} for i, a in enumerate([1, 3, 3])]
    s = summarize(records)
    assert s["strategy"] == "reflection" and s["mean_attempts"] == pytest.approx(7 / 3)
    assert "strategy" not in summarize([record("a", "g", 1)])  # single-prompt modes search nothing
    line = search_line({"round": "r1", "model": "m", "from_round": None, "modes": {"mcts": s},
                        "baseline": {"model": "m", "modes": {"mcts": {**s, "mean_attempts": 2.5}}}})
    assert line.endswith("base reflection, 2.50 attempts per task; r1 reflection, 2.33 attempts per task."), line
    assert search_line({"round": "r1", "model": "m", "from_round": None, "modes": {"zero_shot": {}}}) == ""


def test_records_count_tokens_and_the_summary_prices_them_per_task():
    from agentq.config import PricingSpec, ScriptedSpec
    from agentq.policy.base import spent
    from agentq.policy.prompts import rewrite_prompt
    from agentq.policy.scripted import ScriptedPolicy, token_count
    from agentq.report import token_rows

    class Keeping(ScriptedPolicy):
        def __init__(self, spec: ScriptedSpec) -> None:
            super().__init__(spec)
            self.groups: list = []

        def generate_batch(self, requests):
            out = super().generate_batch(requests)
            self.groups += out
            return out

    policy = Keeping(ScriptedSpec())
    one = evaluate_task(TASK, "full_rewrite", policy, Sandbox(), SPEC)
    prompt = token_count(rewrite_prompt(TASK).text())
    assert one["tokens_in"] == 2 * prompt > 0  # the greedy call and the sampled call, one prompt each
    assert one["tokens_out"] == spent(policy.groups)[1] > 0
    searched = evaluate_task(TASK, "mcts", policy, Sandbox(), SPEC)
    assert searched["tokens_in"] > 0 and searched["tokens_out"] > 0
    records = [{**record("a", "g", 1), "tokens_in": 1000, "tokens_out": 300},
               {**record("b", "g", 1), "tokens_in": 3000, "tokens_out": 100}]
    price = PricingSpec.model_validate({"inputPerMillion": 2.5, "outputPerMillion": 10})
    s = summarize(records, pricing=price)
    assert (s["mean_tokens_in"], s["mean_tokens_out"]) == (2000, 200)
    assert s["cost_per_task_usd"] == pytest.approx((2000 * 2.5 + 200 * 10) / 1e6)
    assert "cost_per_task_usd" not in summarize(records) and "mean_tokens_in" not in summarize(
        [record("c", "g", 1)])  # records from before tokens were counted: no figure rather than a zero
    rows = token_rows({"round": "r", "model": "m", "from_round": None, "pairs": 1, "modes": {"mcts": s}})
    assert "| r: m + adapter | mcts | 2000 | 200 | 0.007000 |" in rows
