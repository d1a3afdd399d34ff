"""The reflection taxonomy, and a loop that fixes a task on its second attempt after naming the first failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentq.repair.loop import reflection_loop
from agentq.repair.patch import ApplyError, ParseError, Patch, answer_to_patch
from agentq.repair.reflection import (
    ADVICE,
    Category,
    RunOutcome,
    categorize,
    failing_output,
    repair_messages,
    traceback_files,
)

GOOD = Patch(diff="diff --git a/pkg/calc.py b/pkg/calc.py\n...", files=("pkg/calc.py",),
             new_text={"pkg/calc.py": "def add(a, b):\n    return a + b\n"})
F2P = "tests/test_calc.py::test_add"
P2P = "tests/test_calc.py::test_mul"


def verdict(**kw) -> RunOutcome:
    return RunOutcome(**{"fail_to_pass": {F2P: True}, "pass_to_pass": {P2P: True}, **kw})


@pytest.mark.parametrize("outcome, run, expected", [
    (ParseError("no edit"), None, Category.MALFORMED),
    (ApplyError("SEARCH text not found"), None, Category.DOES_NOT_APPLY),
    (Patch(diff="", files=(), new_text={}), None, Category.NO_CHANGE),
    (Patch(diff="x", files=("a.py",), new_text={"a.py": "def f(:\n"}), None, Category.SYNTAX_ERROR),
    (GOOD, verdict(applied=False, apply_error="error: patch failed"), Category.DOES_NOT_APPLY),
    (GOOD, verdict(timed_out=True), Category.TIMEOUT),
    (GOOD, verdict(collection_error="ImportError while importing test module: cannot import name 'add'"),
     Category.IMPORT_ERROR),
    (GOOD, verdict(collection_error="E   IndentationError: unexpected indent"), Category.SYNTAX_ERROR),
    (GOOD, verdict(crashed=True), Category.CRASH),
    (GOOD, verdict(fail_to_pass={}), Category.CRASH),
    (GOOD, verdict(pass_to_pass={P2P: False}), Category.REGRESSION),
    (GOOD, verdict(fail_to_pass={F2P: False}, output='File "pkg/other.py", line 3, in add\nAssertionError'),
     Category.WRONG_FILE),
    (GOOD, verdict(fail_to_pass={F2P: False}, output='File "pkg/calc.py", line 2, in add\nAssertionError'),
     Category.TEST_ASSERTION),
    (GOOD, verdict(), Category.RESOLVED),
])
def test_each_failure_falls_in_its_category(outcome, run, expected):
    assert categorize(outcome, run) is expected


def test_wrong_file_uses_the_localisation_set_when_the_output_names_no_file():
    failed = verdict(fail_to_pass={F2P: False}, output="assert 1 == 3")
    assert categorize(GOOD, failed, suspects={"pkg/other.py"}) is Category.WRONG_FILE
    assert categorize(GOOD, failed, suspects={"pkg/calc.py"}) is Category.TEST_ASSERTION
    assert traceback_files('  File "./pkg/a.py", line 3\npkg/b.py:12: AssertionError') == {"pkg/a.py", "pkg/b.py"}


def test_the_next_prompt_carries_the_category_its_advice_and_the_output():
    out = failing_output(GOOD, verdict(fail_to_pass={F2P: False}, output="E   assert -1 == 3"))
    assert F2P in out and "assert -1 == 3" in out
    messages = repair_messages("FAILED tests/test_calc.py::test_add", {"pkg/calc.py": "def add(a, b): ..."},
                               [("answer one", Category.TEST_ASSERTION, out)])
    user = messages[-1]["content"]
    assert "## Attempt 1: failing tests still fail" in user and ADVICE[Category.TEST_ASSERTION] in user
    assert "E   assert -1 == 3" in user and "### pkg/calc.py" in user and "<<<<<<< SEARCH" in user
    long = failing_output(GOOD, verdict(fail_to_pass={F2P: False}, output="x" * 10_000))
    assert len(long) == 2000 and long.startswith("...")


def pytest_runner(root: Path, work: Path):
    """The executor's job in miniature: apply the patch to a fresh copy and run the task's tests in a real
    pytest process (issue 15's repository executor does this in the sandbox)."""

    def run(patch: Patch) -> RunOutcome:
        copy = work / f"run-{len(list(work.iterdir()))}"
        shutil.copytree(root, copy)
        applied = subprocess.run(["git", "apply", "-"], input=patch.diff, text=True, cwd=copy, capture_output=True)
        if applied.returncode:
            return RunOutcome(applied=False, apply_error=applied.stderr)
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", F2P, P2P],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=120)
        passed = set(re.findall(r"^PASSED (\S+)", proc.stdout, re.M))
        return RunOutcome(fail_to_pass={F2P: F2P in passed}, pass_to_pass={P2P: P2P in passed},
                           output=proc.stdout[-1500:])

    return run


def test_the_loop_fixes_a_task_on_its_second_attempt_and_names_the_first_failure(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "calc.py").write_text("def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n")
    (root / "tests" / "test_calc.py").write_text(
        "from pkg.calc import add, mul\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\n"
        "def test_mul():\n    assert mul(2, 3) == 6\n")
    answers = iter([
        # A wrong edit: touches the right file but not the bug; the failing test still fails.
        "pkg/calc.py\n<<<<<<< SEARCH\n    return a * b\n=======\n    return b * a\n>>>>>>> REPLACE\n",
        "pkg/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n>>>>>>> REPLACE\n",
    ])
    prompts: list[list[dict]] = []

    def generate(messages):
        prompts.append(messages)
        return next(answers)

    (tmp_path / "runs").mkdir()
    context = {"pkg/calc.py": (root / "pkg" / "calc.py").read_text()}
    attempts = reflection_loop(str(root), "FAILED tests/test_calc.py::test_add - assert -1 == 3", context,
                               generate, pytest_runner(root, tmp_path / "runs"), suspects={"pkg/calc.py"})
    assert [a.category for a in attempts] == [Category.TEST_ASSERTION, Category.RESOLVED]
    assert "assert -1 == 3" in attempts[0].output or "AssertionError" in attempts[0].output
    second = prompts[1][-1]["content"]
    assert "## Attempt 1: failing tests still fail" in second and "return b * a" in second
    assert "+    return a + b" in attempts[1].diff


def test_the_loop_stops_after_n_attempts_and_never_runs_a_malformed_answer(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    ran = []
    attempts = reflection_loop(str(tmp_path), "report", {}, lambda m: "no idea", lambda p: ran.append(p),
                               max_attempts=2)
    assert [a.category for a in attempts] == [Category.MALFORMED, Category.MALFORMED] and not ran
    assert attempts[0].diff is None and "no search/replace block" in attempts[0].output


def test_an_apply_error_from_parsing_is_quoted_back(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(ApplyError) as err:
        answer_to_patch(tmp_path, "a.py\n<<<<<<< SEARCH\ny = 2\n=======\ny = 3\n>>>>>>> REPLACE\n")
    assert "SEARCH text not found" in failing_output(err.value, None)
