"""The sandbox bench's accounting (agentq/sandbox/bench.py): where a candidate's CPU goes, and what a network
namespace per run would cost. The bench itself is a long run (`agentq sandbox bench --json`), not a test."""

from __future__ import annotations

import os

import pytest

from agentq.sandbox import Limits, LocalExecutor
from agentq.sandbox.bench import cost_breakdown, netns_cost


def test_the_breakdown_accounts_for_the_workers_measures_and_the_executors_own():
    with LocalExecutor(workers=1, limits=Limits(timeout_s=10)) as executor:
        code, tests = "def f():\n    return 1\n", "from solution import *\n\ndef test_f():\n    assert f() == 1\n"
        assert all(v.passed for v in executor.run_many([(code, tests)] * 5))
        costs = executor.costs.per_run()
    assert costs["runs"] == 5 and {"template_fork", "template_rest", "candidate_setup", "candidate",
                                   "tests"} <= set(costs["cpu_ms"])
    assert all(costs["cpu_ms"][k] > 0 for k in ("template_fork", "candidate_setup", "candidate", "tests"))
    parts = cost_breakdown(costs, executor_ms=0.5)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"), abs=0.01)
    measured = ("template_fork", "template_rest", "candidate_setup", "candidate", "tests")
    assert parts["total"] == pytest.approx(0.5 + sum(costs["cpu_ms"][k] for k in measured), abs=0.01)
    assert all(v >= 0 for v in parts.values())


def test_a_network_namespace_per_run_is_measured_or_says_why_not():
    measured = netns_cost(runs=20)
    if os.geteuid() == 0:
        assert isinstance(measured, dict) and set(measured) == {"wall_ms", "cpu_ms"}
    else:
        assert isinstance(measured, dict) or "not measured" in measured
