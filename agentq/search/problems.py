"""What a search needs to know about one task's kind, so `Search` and evaluation never branch on it.

A *problem* is a task seen by the search: its root candidate, the sandbox job for a candidate, the prompt that
expands a node (given the path from the root), how a model's answer becomes a candidate (or a verdict without
a run), and what a finished run says about the candidate (screening flags; for repo tasks the reflection
category and the output the next prompt quotes), and how siblings are shown to the critic. Function tasks are
full rewrites of one function; repo tasks are patches against a repository (agentq/repair/problem.py).
`problem_for` is the one place that picks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agentq.policy.prompts import FEEDBACK_LIMIT, critique_prompt, extract_code, rewrite_prompt, zero_shot_prompt
from agentq.sandbox.limits import budgeted
from agentq.sandbox.verdict import Verdict
from agentq.screening import screen
from agentq.tasks.schema import HIDDEN_TEST_PREFIX, Task

if TYPE_CHECKING:
    from agentq.policy.base import Prompt
    from agentq.search.mcts import Node


@dataclass
class Reading:
    """A model answer read as a candidate: `code` (a program or a diff; None when the answer holds none) and,
    when the answer is judged without a run (parse failure, a patch that cannot run), its verdict."""

    code: str | None
    verdict: Verdict | None = None
    category: str | None = None
    feedback: str | None = None


class Problem(Protocol):
    task: Any
    notes: dict[str, Any]  # facts about the problem for the tree's record (a repo task: how it was localised)

    def root_code(self) -> str: ...

    def job(self, code: str) -> Any: ...

    def prompt(self, path: list[Node]) -> Prompt: ...

    def first_prompt(self, mode: str) -> Prompt: ...

    def read(self, answer: str) -> Reading: ...

    def judged(self, node: Node) -> None: ...

    def can_grow(self, node: Node) -> bool: ...

    def critique_prompt(self, siblings: list[Node]) -> Prompt: ...

    def final(self, code: str, executor: Any) -> dict[str, Any]: ...


class FunctionProblem:
    """A function task: candidates are full rewrites, judged on visible + hidden tests (collection), or on the
    visible ones only (`visible_only`: evaluation searches, whose final answer is then judged on all)."""

    notes: dict[str, Any] = {}

    def __init__(self, task: Task, executor: Any, visible_only: bool = False) -> None:
        self.task = task
        self.reward_tests = task.tests if visible_only else task.all_tests()
        self.base_limits = getattr(executor, "limits", None)  # None: a test double without limits

    def root_code(self) -> str:
        return self.task.buggy_code

    def job(self, code: str) -> Any:
        """A sandbox job for `code`, with the task's time budget when its reference run time is known."""
        return budgeted(code, self.reward_tests, self.base_limits, self.task.reference_seconds)

    def prompt(self, path: list[Node]) -> Prompt:
        """K rewrites of the leaf, conditioned on its code and visible test feedback."""
        leaf = path[-1]
        feedback = visible_feedback(leaf.verdict)
        if leaf.parent is None:
            return rewrite_prompt(self.task, parent_feedback=feedback)
        return rewrite_prompt(self.task, parent_code=leaf.code, parent_feedback=feedback)

    def first_prompt(self, mode: str) -> Prompt:
        return zero_shot_prompt(self.task) if mode == "zero_shot" else rewrite_prompt(self.task)

    def read(self, answer: str) -> Reading:
        code = extract_code(answer, self.task.entry_point)
        if code is None:
            return Reading(None, Verdict(status="parse_error", message="no Python program found in the answer"))
        return Reading(code)

    def judged(self, node: Node) -> None:
        node.flags = screen(self.task, node.code, node.verdict)

    def can_grow(self, node: Node) -> bool:
        """A parse error has nothing to improve on."""
        return node.code is not None

    def critique_prompt(self, siblings: list[Node]) -> Prompt:
        """Siblings shown as programs with their visible test results (a parse error: the raw answer)."""
        return critique_prompt(self.task, [n.code or n.completion for n in siblings],
                               [visible_feedback(n.verdict) for n in siblings])

    def final(self, code: str, executor: Any) -> dict[str, Any]:
        """Score one final answer on visible + hidden tests, and on the visible ones alone (one run: the
        visible tests come first in `all_tests()`, so their results are in it)."""
        from agentq.sandbox.executor import find_tests

        task = self.task
        job = budgeted(code, task.all_tests(), getattr(executor, "limits", None), task.reference_seconds)
        full: Verdict = executor.run_many([job])[0]
        visible = find_tests(task.tests)
        passed = {t.name for t in full.tests if t.passed}
        visible_solved = full.passed or (not isinstance(visible, str) and set(visible.names) <= passed)
        return {"parse_failure": False, "solved": full.passed, "visible_solved": visible_solved,
                "status": full.status, "reward": full.reward, "message": full.message[:500]}


def visible_feedback(verdict: Verdict | None) -> str | None:
    """Feedback for the next prompt, from visible tests only: hidden test inputs must never reach a prompt."""
    if verdict is None:
        return None
    return verdict.feedback(limit=FEEDBACK_LIMIT, hide_prefix=HIDDEN_TEST_PREFIX)


def problem_for(task: Any, executor: Any, visible_only: bool = False) -> Problem:
    """The problem of a task of either kind; repo tasks need an executor with a repository store (Runner).
    `visible_only` (evaluation): function tasks are rewarded by their visible tests; repo tasks are honest, run
    only the agent's own reproduction tests, and their hidden tests judge the final answer alone."""
    if task.kind == "repo":
        from agentq.repair.problem import RepoProblem

        return RepoProblem.build(task, executor, honest=visible_only)
    return FunctionProblem(task, executor, visible_only)
