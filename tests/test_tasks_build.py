"""Split determinism, `tasks validate` errors and summary, and a small end-to-end `tasks build` through the sandbox."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from agentq.cli import main as cli_main
from agentq.sandbox import LocalExecutor
from agentq.tasks.build import main as build_main
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import Task, TaskFileError, read_tasks, write_tasks
from agentq.tasks.split import split_leak_free

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_task(i: int, group: str, **fields) -> Task:
    base = {
        "id": f"t{i}",
        "source": "test",
        "group": group,
        "description": "add one",
        "buggy_code": "def inc(x):\n    return x\n",
        "reference_code": "def inc(x):\n    return x + 1\n",
        "entry_point": "inc",
        "tests": "from solution import *\n\ndef test_one():\n    assert inc(1) == 2\n",
    }
    return Task(**{**base, **fields})


def test_split_is_deterministic_and_never_shares_a_group():
    tasks = [make_task(i, f"g{i % 40}") for i in range(400)]
    train, test = split_leak_free(tasks, 0.25, seed=3, merge=False)[:2]
    assert (train, test) == split_leak_free(list(tasks), 0.25, seed=3, merge=False)[:2]
    assert not {t.group for t in train} & {t.group for t in test}
    assert len(train) + len(test) == 400
    assert 4 <= len({t.group for t in test}) <= 18  # about a quarter of 40 groups
    other_seed = split_leak_free(tasks, 0.25, seed=4, merge=False)[1]
    assert {t.group for t in other_seed} != {t.group for t in test}


def test_a_group_keeps_its_side_when_others_are_added():
    small = [make_task(i, f"g{i}") for i in range(30)]
    large = small + [make_task(100 + i, f"new{i}") for i in range(30)]
    small_test = {t.group for t in split_leak_free(small, 0.3, merge=False)[1]}
    large_test = {t.group for t in split_leak_free(large, 0.3, merge=False)[1]}
    assert small_test == {g for g in large_test if g.startswith("g")}


def test_split_rejects_a_share_outside_zero_to_one():
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_leak_free([], 1.5, merge=False)


def test_validate_names_line_and_field_of_a_malformed_task(tmp_path, capsys):
    path = tmp_path / "tasks.jsonl"
    good = make_task(1, "g").model_dump_json()
    bad = json.loads(make_task(2, "g").model_dump_json())
    del bad["entry_point"]
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    assert cli_main(["tasks", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "entry_point" in err and "t2" in err


def test_validate_reports_each_invalid_task_with_its_reason(tmp_path, capsys):
    tasks = [
        make_task(1, "g1"),
        make_task(2, "g2", buggy_code="def inc(x):\n    return x + 1\n"),  # the bug is not there
        make_task(3, "g3", reference_code="def inc(x):\n    return 0\n"),  # the reference is wrong
        make_task(4, "g4", reference_code=None),  # user task without a reference: buggy checked only
    ]
    path = tmp_path / "tasks.jsonl"
    write_tasks(path, tasks)
    assert cli_main(["tasks", "validate", str(path), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"] == 4 and summary["valid"] == 2
    assert sorted((i["id"], i["reason"]) for i in summary["invalid"]) == [
        ("t2", "buggy_passes"),
        ("t3", "reference_fails"),
    ]


# A handful of real DebugBench instances covering each path: plain, linked list, tree, any order, a buggy
# program the examples do not catch, an unparseable example and an unsupported node type.
SUBSET = {
    0: "the-kth-factor-of-n",
    25: "plus-one",
    27: "remove-duplicates-from-sorted-array-ii",
    56: "find-all-lonely-numbers-in-the-array",
    63: "construct-quad-tree",
    65: "remove-linked-list-elements",
    74: "increasing-order-search-tree",
}


@pytest.fixture
def small_data(tmp_path) -> Path:
    rows = json.loads((DATA / "debugbench" / "python3_condition_error.json").read_text())
    chosen = [rows[i] for i in SUBSET]
    assert [r["slug"] for r in chosen] == list(SUBSET.values())
    (tmp_path / "debugbench").mkdir()
    (tmp_path / "debugbench" / "python3_condition_error.json").write_text(json.dumps(chosen))
    (tmp_path / "humanevalfix").mkdir()
    lines = (DATA / "humanevalfix" / "python_humanevalpack.jsonl").read_text().splitlines()
    (tmp_path / "humanevalfix" / "python_humanevalpack.jsonl").write_text("\n".join(lines[:6]) + "\n")
    return tmp_path


def build(source: str, data: Path, out: Path, capsys) -> dict:
    args = ["tasks", "build", "--source", source, "--data-dir", str(data), "--out", str(out)]
    assert cli_main([*args, "--test-share", "0.5", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_build_debugbench_end_to_end(small_data, tmp_path, capsys):
    out = tmp_path / "out" / "db.jsonl"
    summary = build("debugbench", small_data, out, capsys)
    assert summary["instances"] == 7
    assert summary["rejected"] == {"buggy_passes": 1, "unparseable_example": 1, "unsupported_type": 1}
    valid = read_tasks(out)
    assert summary["valid"] == len(valid) == 4
    assert {t.group for t in valid} == {
        "the-kth-factor-of-n",
        "find-all-lonely-numbers-in-the-array",
        "remove-linked-list-elements",
        "increasing-order-search-tree",
    }
    train, test = read_tasks(out.with_name("db.train.jsonl")), read_tasks(out.with_name("db.test.jsonl"))
    assert sorted(t.id for t in train + test) == sorted(t.id for t in valid)
    assert not {t.group for t in train} & {t.group for t in test}
    rejected = [json.loads(line) for line in out.with_name("db.rejected.jsonl").read_text().splitlines()]
    assert {r["group"]: r["reason"] for r in rejected}["plus-one"] == "buggy_passes"
    linked = next(t for t in valid if t.group == "remove-linked-list-elements")
    assert linked.entry_point == "Solution.removeElements" and "_linked(" in linked.tests
    assert "_any_order(" in next(t for t in valid if t.group == "find-all-lonely-numbers-in-the-array").tests


def test_build_humanevalfix_end_to_end_then_validate(small_data, tmp_path, capsys):
    out = tmp_path / "hef.jsonl"
    summary = build("humanevalfix", small_data, out, capsys)
    assert summary["valid"] == 6 and summary["rejected"] == {}
    assert [t.id for t in read_tasks(out)][:2] == ["humanevalfix/HumanEval-0", "humanevalfix/HumanEval-1"]
    # Each task carries its reference's measured run time (CPU seconds here, where a cgroup meters them).
    assert all(t.reference_seconds is not None and 0 < t.reference_seconds < 1 for t in read_tasks(out))
    assert cli_main(["tasks", "validate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "tasks": 6, "checked": 6, "valid": 6, "invalid": [], "not_checked": []}


def test_task_files_without_a_reference_time_still_load(tmp_path):
    path = tmp_path / "old.jsonl"
    old = make_task(0, "g0").model_dump(exclude_none=True)
    assert "reference_seconds" not in old
    path.write_text(json.dumps(old) + "\n")
    assert read_tasks(path)[0].reference_seconds is None
    bad = {**old, "reference_seconds": -1}
    path.write_text(json.dumps(bad) + "\n")
    with pytest.raises(TaskFileError, match="line 1 .*reference_seconds"):
        read_tasks(path)


def test_build_refuses_a_missing_data_dir(tmp_path, capsys):
    args = argparse.Namespace(
        source="debugbench",
        data_dir=str(tmp_path / "nope"),
        out=str(tmp_path / "x.jsonl"),
        test_share=0.2,
        seed=0,
        json=False,
        hidden=0,
    )
    assert build_main(args) == 2
    assert "python3_*.json" in capsys.readouterr().err


def test_helpers_the_tests_call_come_from_the_reference_not_the_candidate():
    """HumanEval-32's check calls `poly`; a candidate redefining `poly` to agree with anything must not pass."""
    tasks = {t.id: t for t in load_humanevalfix(DATA)}
    helped = sorted(t.id for t in tasks.values() if "helpers from the reference" in t.tests)
    assert helped == ["humanevalfix/HumanEval-32", "humanevalfix/HumanEval-38", "humanevalfix/HumanEval-50"]
    task = tasks["humanevalfix/HumanEval-32"]
    cheat = "def poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 12345.0\n"
    cheat_38 = "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"
    with LocalExecutor(workers=2) as executor:
        reference, buggy, cheating, cheating_38 = executor.run_many(
            [(task.reference_code, task.tests), (task.buggy_code, task.tests), (cheat, task.tests),
             (cheat_38, tasks["humanevalfix/HumanEval-38"].tests)]
        )
    assert reference.passed, reference
    assert not buggy.passed and not cheating.passed and not cheating_38.passed, (cheating, cheating_38)


def test_each_assert_of_check_is_a_test_of_its_own_so_rewards_are_graded():
    """HumanEval-0's check holds 7 asserts: 7 tests, and a fix right on some inputs earns that share. A loop of
    asserts is one case with the set-up before it; `assert True` is no case."""
    from agentq.tasks.humanevalfix import rewrite_check

    tasks = {t.id: t for t in load_humanevalfix(DATA)}
    task = tasks["humanevalfix/HumanEval-0"]
    assert task.tests.count("def test_check_") == 7
    always_true = "def has_close_elements(numbers, threshold):\n    return True\n"
    with LocalExecutor(workers=2) as executor:
        reference, partly = executor.run_many([(task.reference_code, task.tests), (always_true, task.tests)])
    assert reference.passed and reference.reward == 1.0
    assert partly.status == "failed" and partly.reward == pytest.approx(4 / 7)  # right where the answer is True
    looped = rewrite_check("def check(f):\n    import math\n    for x in range(3):\n        assert f(x) == x\n"
                           "    assert True\n    y = 2\n    assert f(y) == y\n", "f", "demo")
    assert looped.count("def test_check_") == 2 and looped.count("import math") == 2
