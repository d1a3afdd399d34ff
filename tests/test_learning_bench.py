"""The learning benchmarks' arithmetic: pass@k curves and pairable tasks (passk.py), the power table (learning.py).
Their end-to-end runs are the tiny rounds of tests/test_train_methods.py and the figures in docs/benchmarks.md."""

from __future__ import annotations

import pytest

from agentq.stats import pass_at_k
from tests.script_module import load_script


def test_passk_curve_and_pairable_tasks():
    passk = load_script("benchmarks/passk.py", "passk_bench")

    def sample(reward, parse_failure=False):
        return {"reward": reward, "parse_failure": parse_failure, "solved": reward == 1.0}

    records = [{"task_id": "a", "n": 4, "correct": 1, "samples": [sample(1.0), sample(0.5), sample(0.5),
                                                                  sample(0.0, True)]},
               {"task_id": "b", "n": 4, "correct": 0, "samples": [sample(0.25)] * 4}]
    curve = passk.curve(records, 4)
    assert list(curve) == [1, 2, 4]
    assert curve[2] == pytest.approx((pass_at_k(4, 1, 2) + 0) / 2, abs=1e-4) and curve[4] == 0.5
    rows = passk.task_rows(records, threshold=0.1)
    assert [(r["pairable"], r["parse_failures"], r["mean_reward"]) for r in rows] == [(True, 1, 0.5),
                                                                                       (False, 0, 0.25)]


def test_learning_power_rows_take_the_measured_losses():
    learning = load_script("benchmarks/learning.py", "learning_bench")
    rows = [{"tasks": 10}, {"tasks": 10, "losses": 1, "wins": 2}, {"tasks": 10, "losses": 0, "wins": 0}]
    power = learning.power_rows(10, rows)
    assert power["p_loss"] == 0.1 and set(power["power"]) == {"+5%", "+10%", "+20%"}
    assert power["power"]["+5%"] <= power["power"]["+20%"] < 0.8
    assert power["tasks_for_80pct_at_10pts"] > 10
