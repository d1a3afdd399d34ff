"""The reflection loop: up to N attempts, each prompted with the earlier attempts' categories and output.

As a search strategy this is MCTS with depth N and one child per node (K=1); the model call and the test run
are parameters, so the same loop runs with any backend and with the repository executor that issue 15
provides (or any callable that turns a Patch into a RunOutcome).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentq.repair.patch import ApplyError, ParseError, Patch, answer_to_patch
from agentq.repair.reflection import Category, RunOutcome, categorize, failing_output, repair_messages, syntax_errors

DEFAULT_ATTEMPTS = 3


@dataclass
class Attempt:
    answer: str
    diff: str | None  # None when the answer did not parse or apply
    category: Category
    output: str


def reflection_loop(root: str, issue: str, context: dict[str, str], generate: Callable[[list[dict]], str],
                    run: Callable[[Patch], RunOutcome], max_attempts: int = DEFAULT_ATTEMPTS,
                    suspects: set[str] = frozenset()) -> list[Attempt]:
    """Attempts in order; the last is RESOLVED when the loop fixed the task. A patch that does not parse,
    apply or compile is categorised without a test run."""
    attempts: list[Attempt] = []
    for _ in range(max_attempts):
        messages = repair_messages(issue, context, [(a.answer, a.category, a.output) for a in attempts])
        answer = generate(messages)
        try:
            outcome: Patch | Exception = answer_to_patch(root, answer)
        except (ParseError, ApplyError) as err:
            outcome = err
        runnable = isinstance(outcome, Patch) and not outcome.empty and not syntax_errors(outcome)
        verdict = run(outcome) if runnable else None
        category = categorize(outcome, verdict, suspects)
        attempts.append(Attempt(answer=answer, diff=outcome.diff if isinstance(outcome, Patch) else None,
                                category=category, output=failing_output(outcome, verdict)))
        if category is Category.RESOLVED:
            break
    return attempts
