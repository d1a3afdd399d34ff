"""The TaskRunner both task kinds are judged through (agentq.tasks.schema): function runs go to a
LocalExecutor or RemoteExecutor, repository runs to a RepoExecutor over a folder of sdists (or to a remote
sandbox server that has one). Callers hold one Runner and call `task.judge(candidates, runner)`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentq.sandbox.repo import SdistStore
    from agentq.sandbox.verdict import Verdict
    from agentq.tasks.schema import RepoTask


class Runner:
    def __init__(self, functions: Any = None, repos: SdistStore | Any = None, workers: int = 1) -> None:
        self.functions, self.repos, self.workers = functions, repos, max(1, workers)

    def run_functions(self, jobs: list[tuple[str, str]]) -> list[Verdict]:
        if self.functions is None:
            raise ValueError("this runner has no executor for function tasks")
        return self.functions.run_many(jobs)

    def run_repo(self, task: RepoTask, patches: list[str]) -> list[Verdict]:
        if self.repos is None:
            raise ValueError(f"task {task.task_id}: this runner has no repository executor (give --data-dir)")
        record = task.model_dump(exclude_none=True)
        if len(patches) <= 1 or self.workers == 1:
            return list(self.repos.run_task(record, patches))
        with ThreadPoolExecutor(self.workers) as pool:
            return [v[0] for v in pool.map(lambda p: self.repos.run_task(record, [p]), patches)]
