"""Issue 23, failure 4: helpers the tests call run with the tests' own builtins and globals, whatever the candidate
exports, for the project's task files and for any other.

`from solution import *` used to bind every name the candidate exported, so a candidate exporting `sum` replaced
the builtin that HumanEval-32's `poly` (a helper taken from the reference) calls, and one exporting a helper's
name (listed in its `__all__`) replaced a hand-written task's helper defined before the import.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_driver import FORGED_HELPERS, HELPER_TESTS

from agentq.sandbox import Limits, LocalExecutor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FORGED_SUM = "def find_zero(xs):\n    return 0.0\n\n\ndef sum(*args, **kwargs):\n    return 0\n"
@pytest.fixture(scope="module")
def ex():
    with LocalExecutor(workers=1, limits=Limits(timeout_s=10)) as executor:
        yield executor


def test_a_candidate_exporting_sum_does_not_change_a_reference_helper(ex):
    from agentq.tasks.humanevalfix import load_humanevalfix

    if not (DATA / "humanevalfix").is_dir():
        pytest.fail(f"HumanEvalFix data missing under {DATA}: the test needs ../shared/data")
    task = next(t for t in load_humanevalfix(DATA) if t.id.endswith("HumanEval-32"))
    assert "sum(" in task.tests and "def poly" in task.tests  # the helper that calls the builtin
    assert ex.run(task.reference_code or "", task.tests).passed
    forged = ex.run(FORGED_SUM, task.tests)
    assert forged.status == "failed", forged


def test_a_hand_written_task_keeps_its_own_helpers_and_builtins(ex):
    assert ex.run("def double(x):\n    return 2 * x\n", HELPER_TESTS).passed
    forged = ex.run(FORGED_HELPERS, HELPER_TESTS)
    assert forged.status == "failed", forged


def test_a_candidate_cannot_export_builtins_into_the_tests(ex):
    forged = "__all__ = ['f', '__builtins__']\n__builtins__ = {'len': lambda x: 3}\n\n\ndef f():\n    return [1]\n"
    verdict = ex.run(forged, "from solution import *\n\n\ndef test_f():\n    assert len(f()) == 3\n")
    assert verdict.status == "failed", verdict


def test_a_function_named_like_a_builtin_is_still_reachable_by_name(ex):
    tests = "from solution import *\nfrom solution import max\n\n\ndef test_max():\n    assert max([1, 5]) == 'five'\n"
    assert ex.run("def max(xs):\n    return 'five'\n", tests).passed
