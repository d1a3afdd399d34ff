"""Hidden differential tests: constraint parsing, input shapes, seed determinism, and a hard-coding candidate
that passes the visible examples but fails the hidden cases through the real sandbox."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agentq.cli import main as cli_main
from agentq.sandbox import LocalExecutor
from agentq.screening import screen
from agentq.tasks.debugbench import load_debugbench
from agentq.tasks.hidden import add_hidden_tests, coverage, fits_outputs, plan_problem, read_probe
from agentq.tasks.hidden_inputs import InputModel, parse_constraints, parse_number
from agentq.tasks.schema import HIDDEN_TEST_PREFIX, read_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# (file, index) -> slug: a plain list problem, a linked list, and one whose buggy code the examples miss.
SUBSET = {
    ("condition_error", 5): "binary-search",
    ("condition_error", 65): "remove-linked-list-elements",
    ("condition_error", 25): "plus-one",
}


@pytest.mark.parametrize(
    ("text", "value"),
    [("104", 10**4), ("10^9", 10**9), ("2 * 105", 2 * 10**5), ("-231", -(2**31)), ("231 - 1", 2**31 - 1),
     ("500", 500), ("n", None)],
)
def test_parse_number_reads_the_data_sets_spellings(text, value):
    assert parse_number(text) == value


def test_parse_constraints_reads_chains_lists_strictness_and_node_ranges():
    bounds = parse_constraints(
        "1 <= nums.length <= 104\n-104 < nums[i], target < 104\n0 <= k <= nums.length\n1 <= m, n <= 100\n"
        "n == grid[i].length\nThe number of nodes in the tree is in the range [0, 5000].\n-100 <= Node.val <= 100"
    )
    assert bounds[("nums", 0, "len")] == (1, 10**4)
    assert bounds[("nums", 1, "val")] == bounds[("target", 0, "val")] == (-9999, 9999)
    assert bounds[("k", 0, "val")] == (0, None)  # its upper bound is symbolic: left to the examples' relations
    assert bounds[("m", 0, "val")] == bounds[("n", 0, "val")] == (1, 100)
    assert bounds[("Node", 0, "len")] == (0, 5000) and bounds[("Node", 1, "val")] == (-100, 100)


def test_inputs_keep_what_every_example_shares():
    examples = [
        {"nums": [1, 3, 5, 8], "n": 4, "k": 2, "edges": [[0, 1], [1, 3]]},
        {"nums": [-2, 0, 7], "n": 3, "k": 3, "edges": [[2, 0]]},
    ]
    model = InputModel(["nums", "n", "k", "edges"], ["plain"] * 4, examples, "-10 <= nums[i] <= 10")
    rng = random.Random(1)
    samples = [model.sample(rng) for _ in range(200)]
    assert all(s is not None for s in samples)
    assert len({repr(s) for s in samples}) > 100
    for s in samples:
        assert s["nums"] == sorted(set(s["nums"])), s  # sorted and distinct, as in every example
        assert s["n"] == len(s["nums"]) and 1 <= s["k"] <= len(s["nums"]), s
        assert all(-10 <= v <= 10 for v in s["nums"]), s
        assert all(len(edge) == 2 and min(edge) >= 0 and max(edge) < s["n"] for edge in s["edges"]), s


def test_outputs_must_look_like_the_examples_outputs():
    assert fits_outputs([3, 4], [[0, 1], []]) and fits_outputs([], [[0, 1]])
    assert not fits_outputs(None, [[0, 1]]) and not fits_outputs(1, [True]) and not fits_outputs(["a"], [[1]])
    assert read_probe("AssertionError: PROBE 0.000100 6 [1, 2] at tests.py line 9: raise ...") == (0.0001, "[1, 2]")
    assert read_probe("AssertionError: PROBE 0.000100 9 [1, 2]") == "too_large"
    assert read_probe("candidate raised IndexError: list index out of range") == "raised"


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("db")
    (root / "debugbench").mkdir()
    for (stem, index), slug in SUBSET.items():
        rows = json.loads((DATA / "debugbench" / f"python3_{stem}.json").read_text())
        assert rows[index]["slug"] == slug
        (root / "debugbench" / f"python3_{slug}.json").write_text(json.dumps([rows[index]]))
    return root


@pytest.fixture(scope="module")
def tasks(subset):
    return {t.group: t for t in load_debugbench(subset).tasks}


def test_candidate_inputs_are_deterministic_for_a_seed(tasks):
    task = tasks["binary-search"]
    first, again, other = (plan_problem(task, 10, seed) for seed in (0, 0, 1))
    assert first.inputs == again.inputs
    assert first.inputs != other.inputs
    assert len(first.inputs) == 40 and all(v["nums"] == sorted(set(v["nums"])) for v in first.inputs)


@pytest.fixture(scope="module")
def hidden(tasks):
    with LocalExecutor(workers=2) as executor:
        first, stats = add_hidden_tests(list(tasks.values()), executor, 10, seed=0)
        second, _ = add_hidden_tests(list(tasks.values()), executor, 10, seed=0)
    return first, second, stats


def test_hidden_tests_are_deterministic_and_hidden_cases_are_added(hidden):
    first, second, stats = hidden
    assert [t.hidden_tests for t in first] == [t.hidden_tests for t in second]
    assert stats.problems == 3
    for task in first:
        assert task.metadata["hidden"] == {"cases": 10, "seed": 0}
        assert task.hidden_tests.count(f"def {HIDDEN_TEST_PREFIX}") == 10
        assert "test_example_" not in task.hidden_tests  # visible cases are not repeated
    assert coverage(first, 10) == {
        "tasks": 3, "with_n": 3, "share_with_n": 1.0, "cases_per_task": {10: 3}, "skipped": {}
    }


BINARY_SEARCH_HARDCODED = """\
class Solution:
    def search(self, nums: List[int], target: int) -> int:
        if nums == [-1, 0, 3, 5, 9, 12] and target == 9:
            return 4
        return -1
"""


def test_hard_coded_candidate_passes_visible_fails_hidden_and_is_flagged(hidden):
    task = next(t for t in hidden[0] if t.group == "binary-search")
    with LocalExecutor(workers=1) as executor:
        visible = executor.run(BINARY_SEARCH_HARDCODED, task.tests)
        full = executor.run(BINARY_SEARCH_HARDCODED, task.all_tests())
        reference = executor.run(task.reference_code, task.all_tests())
    assert visible.passed
    assert not full.passed
    assert all(t.passed for t in full.tests if not t.name.startswith(HIDDEN_TEST_PREFIX))
    assert any(not t.passed for t in full.tests if t.name.startswith(HIDDEN_TEST_PREFIX))
    assert reference.passed
    assert "hidden_fail" in screen(task, BINARY_SEARCH_HARDCODED, full)
    assert screen(task, task.reference_code, reference) == []


def test_buggy_code_the_examples_miss_is_caught_by_hidden_cases(hidden):
    task = next(t for t in hidden[0] if t.group == "plus-one")
    with LocalExecutor(workers=1) as executor:
        visible, full = executor.run_many([(task.buggy_code, task.tests), (task.buggy_code, task.all_tests())])
    assert visible.passed  # why the build used to reject plus-one as buggy_passes
    assert not full.passed


def test_build_with_hidden_keeps_the_task_the_examples_missed(subset, tmp_path, capsys):
    out = tmp_path / "db.jsonl"
    args = ["tasks", "build", "--source", "debugbench", "--data-dir", str(subset), "--out", str(out)]
    assert cli_main([*args, "--hidden", "5", "--test-share", "0.5", "--json"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["valid"] == 3 and summary["rejected"] == {} and summary["overlap"] == 0
    assert summary["hidden"]["with_n"] == 3
    assert "overlap check: " in printed and "0 sharing a group, 0 sharing a normalised reference" in printed
    assert all(t.hidden_tests for t in read_tasks(out))
