"""Leak-free splits: the normalisers, near-duplicate merging, and `agentq tasks split` refusing a leaking split."""

from __future__ import annotations

from agentq.cli import main as cli_main
from agentq.tasks.leakcheck import find_leaks, fingerprints, merge_groups, normalise_code, normalise_description
from agentq.tasks.schema import Task, read_tasks, write_tasks
from agentq.tasks.split import in_test, split_leak_free

TWO_SUM = '''
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        """One pass with a dictionary."""
        seen = {}  # value -> index
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
'''

TWO_SUM_RENAMED = """class Solution:
  def twoSum(self, arr, goal):
    # remember where each value was
    where = {}
    for j, value in enumerate(arr):
        if goal - value in where: return [where[goal - value], j]
        where[value] = j
"""


def test_normaliser_ignores_comments_docstrings_layout_annotations_and_local_names():
    assert normalise_code(TWO_SUM) == normalise_code(TWO_SUM_RENAMED)
    assert "seen" not in normalise_code(TWO_SUM) and "enumerate" in normalise_code(TWO_SUM)


def test_normaliser_still_sees_real_differences():
    assert normalise_code(TWO_SUM) != normalise_code(TWO_SUM.replace("target - x", "target + x"))
    assert normalise_code(TWO_SUM) != normalise_code(TWO_SUM.replace("enumerate", "reversed_enumerate"))
    assert normalise_code(TWO_SUM) != normalise_code(TWO_SUM.replace("twoSum", "threeSum"))  # the entry point
    # a module-level name is not local: renaming it is a different program
    assert normalise_code("N = 3\ndef f():\n    return N\n") != normalise_code("M = 3\ndef f():\n    return M\n")


def test_description_normaliser_drops_examples_case_and_punctuation():
    text = "Given an array nums, return indices.\n\nExample 1:\nInput: nums = [2,7]\nOutput: [0,1]\n\nNote: unique."
    assert normalise_description(text) == "givenanarraynumsreturnindicesnoteunique"
    shouted = "GIVEN an array nums -- return indices!\nNote:   unique"
    assert normalise_description(shouted) == normalise_description(text)


def task(i: int, group: str, reference: str = TWO_SUM, description: str | None = None) -> Task:
    return Task(
        id=f"t{i}",
        source="test",
        group=group,
        description=description or f"Problem {group}: a description long enough to count as a fingerprint.",
        buggy_code="class Solution:\n    pass\n",
        reference_code=reference,
        entry_point="Solution.twoSum",
        tests="from solution import *\n\ndef test_one():\n    assert True\n",
    )


def apart(a: str, b: str) -> int:
    """A seed that puts groups a and b on different sides at test share 0.5."""
    return next(s for s in range(1000) if in_test(a, 0.5, s) != in_test(b, 0.5, s))


def test_near_duplicates_merge_transitively_and_deterministically():
    tasks = [
        task(1, "b-two-sum"),
        task(2, "a-copy", TWO_SUM_RENAMED, description="Another text long enough to be a fingerprint."),
        task(3, "c-same", "def f():\n    return 1\n", description="Another text, long enough to be a fingerprint!"),
        task(4, "d-other", "def g():\n    return 2\n"),
    ]
    merged = merge_groups(tasks)
    assert merged == {"b-two-sum": "a-copy", "a-copy": "a-copy", "c-same": "a-copy", "d-other": "d-other"}
    assert merge_groups(list(reversed(tasks))) == merged
    assert len(fingerprints(task(5, "x", description="Fix bugs in f."))) == 1  # too short to be a fingerprint


def test_leaking_split_is_refused_naming_the_pair(tmp_path, capsys):
    seed = apart("alpha", "beta")
    path = tmp_path / "tasks.jsonl"
    other_text = "A different statement, long enough to be a fingerprint."
    write_tasks(path, [task(1, "alpha"), task(2, "beta", TWO_SUM_RENAMED, description=other_text)])
    prefix = tmp_path / "split"
    args = ["tasks", "split", str(path), "--out-prefix", str(prefix), "--test-share", "0.5", "--seed", str(seed)]
    assert cli_main([*args, "--no-merge"]) == 1
    out, err = capsys.readouterr()
    assert "1 sharing a normalised reference" in out
    assert "refusing to write a split that leaks" in err
    assert "(train) and" in err and "t1" in err and "t2" in err and "normalised reference" in err
    assert not list(tmp_path.glob("split.*"))

    assert cli_main(args) == 0  # merged into one group: both on one side, nothing shared
    out = capsys.readouterr().out
    assert "overlap check: 2 train vs 0 test tasks" in out or "overlap check: 0 train vs 2 test tasks" in out
    assert "0 sharing a group, 0 sharing a normalised reference, 0 sharing a normalised description" in out
    train, test = read_tasks(f"{prefix}.train.jsonl"), read_tasks(f"{prefix}.test.jsonl")
    assert sorted(t.id for t in train + test) == ["t1", "t2"] and (not train or not test)


def test_leak_free_split_matches_the_plain_split_when_nothing_is_duplicated():
    tasks = [task(i, f"g{i % 30}", f"def f{i % 30}():\n    return {i % 30}\n") for i in range(120)]
    train, test, leaks = split_leak_free(tasks, 0.3, seed=5)
    assert leaks == [] and find_leaks(train, test) == []
    assert {t.group for t in test} == {t.group for t in tasks if in_test(t.group, 0.3, 5)}


def test_split_rejects_a_bad_task_file(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "x"}\n')
    assert cli_main(["tasks", "split", str(path), "--out-prefix", str(tmp_path / "p")]) == 2
    assert "line 1" in capsys.readouterr().err
