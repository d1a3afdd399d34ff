"""`agentq tasks validate FILE`: every task's reference must pass its tests and its buggy code must not.

A task that fails either check cannot teach or measure repair: a reference that fails means the tests are
wrong (or the reference is), buggy code that passes means the tests do not see the bug. Both runs go
through the sandbox, exactly as candidates will.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from agentq.sandbox import LocalExecutor, Verdict
from agentq.sandbox.runner import Runner
from agentq.tasks.schema import RepoTask, Task, TaskFileError, read_tasks


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


NEEDS_CLUSTER = "needs_cluster"


def check_repo_tasks(tasks: list[RepoTask], runner: Runner) -> list[Invalid]:
    """Reference = the pristine tree passes every F2P and P2P test (a SWE-bench task: its gold patch resolves it);
    the buggy tree (the empty patch judged through the task interface) fails every F2P test and keeps every P2P
    test. A SWE-bench task without a SWE-bench runner (`--swebench-url`) is not checked (NEEDS_CLUSTER), which
    is not a verdict on the task."""
    invalid = []
    for task in tasks:
        if task.repo.git_url and runner.git_repos is None:
            invalid.append(Invalid(task.task_id, NEEDS_CLUSTER, "a SWE-bench instance runs only in its instance "
                                   "image: pass --swebench-url (python -m controller.swebench serve on a cluster)"))
            continue
        try:
            if task.repo.git_url:
                reference = task.judge([task.metadata.get("gold_patch", "")], runner)[0]
            else:
                reference = runner.repos.run_task(task.model_dump(exclude_none=True), [""], buggy=False)[0]
            buggy = task.judge([task.start_candidate()], runner)[0]
        except ValueError as err:
            invalid.append(Invalid(task.task_id, "repo_unavailable", str(err)))
            continue
        if reference.status == "timeout":
            invalid.append(Invalid(task.task_id, "reference_timeout", reference.message))
        elif not reference.passed:
            invalid.append(Invalid(task.task_id, "reference_fails", reference.message))
        elif buggy.f2p_passed:
            invalid.append(Invalid(task.task_id, "buggy_passes",
                                   f"{buggy.f2p_passed}/{buggy.f2p_total} fail-to-pass tests pass on the buggy tree"))
        elif buggy.p2p_passed != buggy.p2p_total:
            invalid.append(Invalid(task.task_id, "buggy_breaks_p2p",
                                   f"{buggy.p2p_total - buggy.p2p_passed} pass-to-pass tests fail on the buggy tree"))
    return invalid


def main(args: argparse.Namespace) -> int:
    try:
        tasks = read_tasks(args.file, kinds=("function", "repo"))
    except (TaskFileError, OSError) as err:
        print(f"agentq tasks validate: {err}", file=sys.stderr)
        return 2
    weak = getattr(args, "allow_weak_isolation", False)
    repo_tasks = [t for t in tasks if isinstance(t, RepoTask)]
    tasks = [t for t in tasks if not isinstance(t, RepoTask)]
    invalid: list[Invalid] = []
    if repo_tasks:
        from agentq.sandbox.client import RemoteExecutor
        from agentq.sandbox.repo import RepoExecutor, SdistStore
        from agentq.tasks.swebench import GitTrees

        cache = Path(args.cache) if getattr(args, "cache", None) else Path(tempfile.gettempdir()) / "agentq-repos"
        # A local repository sandbox only for sdist tasks: SWE-bench ones run in their instance images, and
        # where validation of those runs (the runner's pod) there may be no bubblewrap to build one with.
        store = SdistStore(Path(args.data_dir) / "repos", RepoExecutor(cache, allow_weak_isolation=weak),
                           git=GitTrees(Path(args.data_dir) / "git", cache / "git")) \
            if any(not t.repo.git_url for t in repo_tasks) else None
        url = getattr(args, "swebench_url", None)
        invalid += check_repo_tasks(repo_tasks, Runner(repos=store, git_repos=RemoteExecutor(url) if url else None))
    if tasks:
        with LocalExecutor(allow_weak_isolation=weak) as executor:
            invalid += check_tasks(tasks, executor).invalid
    tasks = [*tasks, *repo_tasks]
    unchecked = [i for i in invalid if i.reason == NEEDS_CLUSTER]
    invalid = [i for i in invalid if i.reason != NEEDS_CLUSTER]
    for item in invalid:
        print(f"invalid {item.id}: {item.reason}: {item.detail[:300]}")
    checked = len(tasks) - len(unchecked)
    without_reference = sum(getattr(t, "reference_code", "") is None for t in tasks)
    note = f" ({without_reference} without a reference: only the buggy code was checked)" if without_reference else ""
    print(f"{checked - len(invalid)}/{checked} tasks valid{note}")
    if unchecked:
        print(f"{len(unchecked)} SWE-bench task(s) not checked: {unchecked[0].detail}")
    if args.json:
        summary = {
            "tasks": len(tasks),
            "checked": checked,
            "valid": checked - len(invalid),
            "invalid": [asdict(i) for i in invalid],
            "not_checked": [i.id for i in unchecked],
        }
        print(json.dumps(summary))
    return 0 if not invalid else 1
