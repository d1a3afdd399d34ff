"""Generated tests must not be fooled by what a candidate returns; checked in-process and with real pytest runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentq.sandbox.leetcode import PRELUDE
from agentq.tasks.canon import _canon
from agentq.tasks.debugbench import build_tests
from agentq.tasks.humanevalfix import load_humanevalfix

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class LyingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __bool__(self):
        return True


class PretendsToBeInt:
    __class__ = property(lambda self: int)  # isinstance(x, int) is True, type(x) is not


def test_exact_plain_values_pass_through_unchanged():
    for value in [0, -3, 2.5, "s", b"b", True, None, 1j]:
        assert _canon(value) is value


def test_subclasses_are_rebuilt_with_the_base_types_methods():
    got = _canon(LyingInt(5))
    assert type(got) is int and got == 5 and got != 6
    nested = _canon([LyingInt(1), (LyingInt(2),), {"k": LyingInt(3)}, {LyingInt(4)}])
    assert nested == [1, (2,), {"k": 3}, {4}]
    assert type(nested[0]) is int and type(nested[1][0]) is int


@pytest.mark.parametrize("value", [AlwaysEqual(), PretendsToBeInt(), [1, AlwaysEqual()], {"k": object()}, iter([1])])
def test_anything_else_raises(value):
    with pytest.raises(TypeError, match="expected plain data"):
        _canon(value)


def run_pytest(tmp_path: Path, solution: str, tests: str) -> subprocess.CompletedProcess:
    (tmp_path / "solution.py").write_text(solution)
    (tmp_path / "test_task.py").write_text(tests)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_task.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        # Plain pytest, minus the third-party plugins installed here: they only add start-up time.
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


@pytest.fixture(scope="module")
def humanevalfix():
    return {t.id: t for t in load_humanevalfix(DATA)}


LIAR = "class _Liar:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\n"
LYING_INT = "class _Lie(int):\n    def __eq__(self, other): return True\n    __hash__ = int.__hash__\n"


@pytest.mark.parametrize("number", [0, 52, 13, 2])
def test_humanevalfix_references_pass_the_same_tests(tmp_path, humanevalfix, number):
    task = humanevalfix[f"humanevalfix/HumanEval-{number}"]
    honest = run_pytest(tmp_path, task.reference_code, task.tests)
    assert honest.returncode == 0, honest.stdout[-2000:]


@pytest.mark.parametrize(
    ("task_id", "solution"),
    [
        # returns bool; an always-equal, always-true object would satisfy `== True`, `== False` and `assert f()`
        ("humanevalfix/HumanEval-0", LIAR + "def has_close_elements(numbers, threshold):\n    return _Liar()\n"),
        ("humanevalfix/HumanEval-52", LIAR + "def below_threshold(l, t):\n    return _Liar()\n"),
        ("humanevalfix/HumanEval-13", LYING_INT + "def greatest_common_divisor(a, b):\n    return _Lie(0)\n"),
        # `assert abs(truncate_number(x) - 0.33) < 1e-6` with the candidate's own `abs` in the star import
        ("humanevalfix/HumanEval-2", "def abs(x):\n    return 0\n\ndef truncate_number(number):\n    return 42.0\n"),
    ],
)
def test_humanevalfix_tests_fail_lying_candidates(tmp_path, humanevalfix, task_id, solution):
    lying = run_pytest(tmp_path, solution, humanevalfix[task_id].tests)
    assert lying.returncode == 1, lying.stdout[-2000:]
    # each upstream assert is its own test (graded rewards): a liar must pass none of them
    assert " failed" in lying.stdout and " passed" not in lying.stdout, lying.stdout[-2000:]


TWO_SUM = """class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, n in enumerate(nums):
            if target - n in seen:
                return [seen[target - n], i]
            seen[n] = i
"""


@pytest.fixture(scope="module")
def two_sum_tests():
    examples = [
        "Input: nums = [2,7,11,15], target = 9\nOutput: [0,1]",
        "Input: nums = [3,3], target = 6\nOutput: [1,0]",
    ]
    return build_tests(TWO_SUM, examples, "You can return the answer in any order.").source


def test_debugbench_reference_passes_the_same_tests(tmp_path, two_sum_tests):
    honest = run_pytest(tmp_path, PRELUDE + TWO_SUM, two_sum_tests)
    assert honest.returncode == 0, honest.stdout[-2000:]
    assert "2 passed" in honest.stdout


@pytest.mark.parametrize(
    "body",
    [
        LIAR + "class Solution:\n    def twoSum(self, nums, target):\n        return _Liar()\n",
        "class _L(list):\n    def __eq__(self, o): return True\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return _L([9, 9])\n",
        # the tests sort any-order answers; a star-imported `sorted` must not decide what they compare
        "def sorted(*a, **k):\n    return [0, 1]\n\n"
        "class Solution:\n    def twoSum(self, nums, target):\n        return [7, 7]\n",
    ],
)
def test_debugbench_tests_fail_lying_candidates(tmp_path, two_sum_tests, body):
    lying = run_pytest(tmp_path, PRELUDE + body, two_sum_tests)
    assert lying.returncode == 1, lying.stdout[-2000:]
