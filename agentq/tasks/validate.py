"""`agentq tasks validate FILE`: every task's reference must pass its tests and its buggy code must not.

A task that fails either check cannot teach or measure repair: a reference that fails means the tests are
wrong (or the reference is), buggy code that passes means the tests do not see the bug. Both runs go
through the sandbox, exactly as candidates will.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from agentq.sandbox import LocalExecutor, Verdict
from agentq.tasks.schema import Task, TaskFileError, read_tasks


@dataclass
class Invalid:
    id: str
    reason: str
    detail: str = ""


def _reference_problem(verdict: Verdict) -> tuple[str, str] | None:
    if verdict.passed:
        return None
    if verdict.status == "timeout":
        return "reference_timeout", verdict.message
    if verdict.message.startswith("the tests failed to import") or verdict.message.startswith("the tests do not"):
        return "tests_error", verdict.message
    return "reference_fails", verdict.message


@dataclass
class Checked:
    invalid: list[Invalid]
    reference_seconds: dict[str, float]  # task id -> its reference's run time (`Verdict.run_seconds`), when it passed


def check_tasks(tasks: list[Task], executor: LocalExecutor) -> Checked:
    """Run all references and buggy programs in one batch (the executor spreads them over its workers)."""
    with_reference = [t for t in tasks if t.reference_code is not None]
    verdicts = executor.run_many(
        [(t.reference_code, t.all_tests()) for t in with_reference] + [(t.buggy_code, t.all_tests()) for t in tasks]
    )
    reference = dict(zip((t.id for t in with_reference), verdicts[: len(with_reference)], strict=True))
    buggy = verdicts[len(with_reference) :]
    invalid = []
    for task, buggy_verdict in zip(tasks, buggy, strict=True):
        problem = _reference_problem(reference[task.id]) if task.id in reference else None
        if problem is None and buggy_verdict.passed:
            problem = "buggy_passes", "the buggy code passes every test, so the tests do not expose the bug"
        if problem:
            invalid.append(Invalid(task.id, *problem))
    timings = {i: v.run_seconds for i, v in reference.items() if v.passed}
    return Checked(invalid, timings)


def main(args: argparse.Namespace) -> int:
    try:
        tasks = read_tasks(args.file)
    except (TaskFileError, OSError) as err:
        print(f"agentq tasks validate: {err}", file=sys.stderr)
        return 2
    with LocalExecutor(allow_weak_isolation=getattr(args, "allow_weak_isolation", False)) as executor:
        invalid = check_tasks(tasks, executor).invalid
    for item in invalid:
        print(f"invalid {item.id}: {item.reason}: {item.detail[:300]}")
    without_reference = sum(t.reference_code is None for t in tasks)
    note = f" ({without_reference} without a reference: only the buggy code was checked)" if without_reference else ""
    print(f"{len(tasks) - len(invalid)}/{len(tasks)} tasks valid{note}")
    if args.json:
        summary = {
            "tasks": len(tasks),
            "valid": len(tasks) - len(invalid),
            "invalid": [asdict(i) for i in invalid],
        }
        print(json.dumps(summary))
    return 0 if not invalid else 1
