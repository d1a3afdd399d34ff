"""Prompt contents and the two parsers that read model answers back (code extractor, ranking)."""

from __future__ import annotations

import pytest

from agentq.policy.prompts import (
    critique_prompt,
    extract_code,
    format_ranking,
    parse_ranking,
    rewrite_prompt,
    zero_shot_prompt,
)
from agentq.tasks.schema import Task

TASK = Task(
    id="demo/0",
    source="demo",
    group="demo",
    description="Return the sum of the two largest numbers in xs. Example: top2([1, 5, 3]) == 8",
    buggy_code="def top2(xs):\n    xs = sorted(xs)\n    return xs[0] + xs[1]\n",
    reference_code="def top2(xs):\n    xs = sorted(xs)\n    return xs[-1] + xs[-2]\n",
    entry_point="top2",
    tests="def test_visible_SECRET_VISIBLE():\n    assert top2([1, 5, 3]) == 8\n",
    hidden_tests="def test_hidden_SECRET_HIDDEN():\n    assert top2([2, 2]) == 4\n",
)


def user_text(prompt) -> str:
    return "\n".join(m["content"] for m in prompt.messages)


def test_rewrite_prompt_shows_problem_and_buggy_code_but_never_tests():
    prompt = rewrite_prompt(TASK)
    text = user_text(prompt)
    assert TASK.description in text and TASK.buggy_code.strip() in text
    assert "SECRET" not in text
    assert "```python" in text and "top2" in text
    assert prompt.purpose == "rewrite" and prompt.task is TASK
    assert [m["role"] for m in prompt.messages] == ["system", "user"]


def test_child_prompt_carries_parent_and_truncated_feedback():
    parent = "def top2(xs):\n    return max(xs) * 2\n"
    feedback = "failed: 0/1 tests passed.\n" + "x" * 5000
    text = user_text(rewrite_prompt(TASK, parent_code=parent, parent_feedback=feedback))
    assert parent.strip() in text
    assert "failed: 0/1 tests passed." in text
    assert "x" * 5000 not in text and "..." in text
    assert "previous attempt" in text.lower()


def test_zero_shot_prompt_asks_for_thought_and_code():
    prompt = zero_shot_prompt(TASK)
    text = user_text(prompt)
    assert "THOUGHT:" in text and "CODE:" in text and "SECRET" not in text
    assert prompt.purpose == "zero_shot"


def test_critique_prompt_numbers_candidates_and_shows_the_ranking_format():
    cands = ["def top2(xs):\n    return 1\n", "def top2(xs):\n    return 2\n", "def top2(xs):\n    return 3\n"]
    prompt = critique_prompt(TASK, cands)
    text = user_text(prompt)
    for i, code in enumerate(cands, 1):
        assert f"Candidate {i}" in text and code.strip() in text
    assert "RANKING:" in text and "SECRET" not in text
    assert "1 > 2" not in text  # no concrete order to copy: small models copied "1 > 2" every time
    assert prompt.purpose == "critique" and prompt.candidates == cands and prompt.answer_prefix == ""


def test_critique_prompt_shows_each_candidates_test_results():
    cands = ["def top2(xs):\n    return 1\n", "def top2(xs):\n    return 2\n"]
    text = user_text(critique_prompt(TASK, cands, ["failed: 0/1 tests passed.", "All 1 tests passed."]))
    first, second = text.split("### Candidate 2")
    assert "Test results: failed: 0/1 tests passed." in first and "Test results: All 1 tests passed." in second
    assert "Think" in text  # room to reason before the RANKING line


def test_depth_one_prompt_carries_the_buggy_codes_results():
    text = user_text(rewrite_prompt(TASK, parent_feedback="failed: 0/1 tests passed.\nassert 6 == 8"))
    assert "## Test results of the buggy code\nfailed: 0/1 tests passed." in text and "previous attempt" not in text


DEBUGBENCH_TASK = TASK.model_copy(update={
    "description": "Given an array nums, return the sum of its two largest values.",
    "metadata": {"examples": ["Input: nums = [1,5,3]\nOutput: 8", "Input: nums = [2,2]\nOutput: 4"],
                 "constraints": "2 <= nums.length <= 10^5"},
})


@pytest.mark.parametrize("build", [rewrite_prompt, zero_shot_prompt, lambda t: critique_prompt(t, ["a", "b"])])
def test_prompts_show_the_statements_examples_and_constraints(build):
    text = user_text(build(DEBUGBENCH_TASK))
    assert "Example 1:\nInput: nums = [1,5,3]\nOutput: 8" in text and "Example 2:" in text
    assert "### Constraints\n2 <= nums.length <= 10^5" in text
    # a description that already quotes its examples is not given them twice
    quoted = DEBUGBENCH_TASK.model_copy(update={"description": "Sum. Input: nums = [1,5,3]\nOutput: 8"})
    assert "### Examples" not in user_text(build(quoted))


REF = "def top2(xs):\n    xs = sorted(xs)\n    return xs[-1] + xs[-2]\n"


@pytest.mark.parametrize(
    "answer, expected",
    [
        (f"Here you go:\n```python\n{REF}```\nDone.", REF),
        (f"```\n{REF}```", REF),
        (f"```py\n{REF}```", REF),
        (f"THOUGHT: index from the end.\nCODE:\n```python\n{REF}```", REF),
        # unterminated final fence: a truncated answer that still parses
        (f"Fixed:\n```python\n{REF}", REF),
        # bare code between prose
        (f"The fix is below.\n\n{REF}\nThis passes the example.", REF),
        (REF, REF),
        # a shell block and a python block: only python counts
        (f"Run it with\n```bash\npython x.py\n```\nCode:\n```python\n{REF}```", REF),
    ],
)
def test_extract_code_finds_the_program(answer, expected):
    assert extract_code(answer, "top2") == expected


def test_several_fences_prefer_the_one_defining_the_entry_point():
    helper = "def helper(x):\n    return x\n"
    answer = f"```python\n{REF}```\nand a helper:\n```python\n{helper}```"
    assert extract_code(answer, "top2") == REF
    # without an entry point the last complete python block wins
    assert extract_code(answer) == helper


def test_several_fences_skip_broken_blocks():
    answer = f"```python\n{REF}```\nor maybe\n```python\ndef top2(xs:\n```"
    assert extract_code(answer, "top2") == REF


def test_class_entry_point_is_recognised():
    sol = "class Solution:\n    def f(self, x):\n        return x\n"
    other = "def g():\n    return 1\n"
    assert extract_code(f"```python\n{sol}```\n```python\n{other}```", "Solution.f") == sol


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "Sorry",
        "I am not sure what the bug is. Could you provide more context?",
        "```python\ndef top2(xs:\n    return\n```",
        "The fix is to check the loop bounds and the return value carefully.",
        "```text\nhello world\n```",
    ],
)
def test_extract_code_returns_none_for_garbage(answer):
    assert extract_code(answer, "top2") is None


@pytest.mark.parametrize(
    "text, k, expected",
    [
        ("RANKING: 2 > 1 > 3", 3, [1, 0, 2]),
        ("Thinking...\nranking: 1, 3, 2.", 3, [0, 2, 1]),
        ("RANKING: Candidate 2 > Candidate 1", 2, [1, 0]),
        ("RANKING: [3] > [1] > [2]", 3, [2, 0, 1]),
        ("RANKING: #2 > #1", 2, [1, 0]),
        ("RANKING: 1", 1, [0]),
        ("RANKING: 1 > 2\nOn reflection:\nRANKING: 2 > 1", 2, [1, 0]),
    ],
)
def test_parse_ranking_reads_permutations(text, k, expected):
    assert parse_ranking(text, k) == expected


@pytest.mark.parametrize(
    "text, k",
    [
        ("RANKING: 1 > 1 > 2", 3),
        ("RANKING: 1 > 4 > 2", 3),
        ("RANKING: 1 > 2", 3),
        ("RANKING: 0 > 1", 2),
        ("I like the second one best.", 2),
        ("RANKING: the second is best", 2),
        ("RANKING:", 2),
    ],
)
def test_parse_ranking_rejects_unusable_answers(text, k):
    assert parse_ranking(text, k) is None


def test_format_ranking_round_trips():
    for order in ([0], [2, 0, 1], [3, 1, 0, 2]):
        assert parse_ranking(f"Some reasoning.\n{format_ranking(order)}", len(order)) == order


def test_every_prompt_of_a_task_opens_with_the_same_system_text_problem_and_buggy_code():
    """A prefix cache (vLLM, SGLang) reuses what prompts share only when it is their very start."""
    import os

    parent = "def top2(xs):\n    return max(xs) * 2\n"
    prompts = [rewrite_prompt(TASK, parent_feedback="failed: 0/1"),
               rewrite_prompt(TASK, parent_code=parent, parent_feedback="failed: 0/1"),
               critique_prompt(TASK, [parent, TASK.reference_code], ["failed", "passed"]),
               zero_shot_prompt(TASK)]
    assert len({p.messages[0]["content"] for p in prompts}) == 1
    users = [p.messages[1]["content"] for p in prompts]
    shared = os.path.commonprefix(users)
    assert shared.startswith("## Problem\n") and TASK.description in shared
    assert f"## Buggy code\n```python\n{TASK.buggy_code.strip()}\n```" in shared
    # The next prompt of another task shares only the system text.
    other = TASK.model_copy(update={"buggy_code": "def top2(xs):\n    return 0\n"})
    assert TASK.buggy_code.strip() not in os.path.commonprefix([users[0], rewrite_prompt(other).messages[1]["content"]])
