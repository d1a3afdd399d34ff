"""The TaskRunner both task kinds are judged through (agentq.tasks.schema): function runs go to a
LocalExecutor or RemoteExecutor, repository runs to a RepoExecutor over a folder of sdists, or to a remote
sandbox server that has one (`remote_repos`: the sdists are then still read here, for the buggy trees that
answers are parsed against, but no patch runs here). Callers hold one Runner and call
`task.judge(candidates, runner)`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentq.sandbox.repo import SdistStore
    from agentq.sandbox.verdict import Verdict
    from agentq.tasks.schema import RepoTask


@dataclass(frozen=True)
class RepoJob:
    """One candidate patch for one repo task: what a search over patches asks `Runner.run_many` to run."""

    task: RepoTask
    patch: str


class Runner:
    def __init__(self, functions: Any = None, repos: SdistStore | Any = None, workers: int = 1,
                 remote_repos: Any = None, git_repos: Any = None) -> None:
        self.functions, self.repos, self.workers = functions, repos, max(1, workers)
        self.remote_repos = remote_repos  # a RemoteExecutor whose server runs the patches (`/run_repo`)
        # Tasks from git sources (SWE-bench): a service with the same `/run_repo` contract that runs each patch in
        # its instance image as a Kubernetes Job (`python -m controller.swebench serve`).
        self.git_repos = git_repos
        # The round's localisation model (agentq.repair.localization), which repo problems built on this runner
        # rank their files with; collect and evaluate set it, None ranks by BM25.
        self.localization: Any = None

    def run_functions(self, jobs: list[tuple[str, str]]) -> list[Verdict]:
        if self.functions is None:
            raise ValueError("this runner has no executor for function tasks")
        return self.functions.run_many(jobs)

    def run_repo(self, task: RepoTask, patches: list[str]) -> list[Verdict]:
        runs = self.git_repos if task.repo.git_url and self.git_repos is not None else self.remote_repos or self.repos
        if runs is None:
            raise ValueError(f"task {task.task_id}: this runner has no repository executor (give --data-dir)")
        record = task.model_dump(exclude_none=True)
        if len(patches) <= 1 or self.workers == 1:
            return list(runs.run_task(record, patches))
        with ThreadPoolExecutor(self.workers) as pool:
            return [v[0] for v in pool.map(lambda p: runs.run_task(record, [p]), patches)]

    def run_many(self, jobs: list[Any]) -> list[Verdict]:
        """Verdicts in job order for a batch that may mix function jobs and RepoJobs (what a scheduler
        serving trees of both kinds hands over): function jobs go to the function executor in one call,
        repo jobs to the repository executor, `workers` at a time."""
        repo = [i for i, job in enumerate(jobs) if isinstance(job, RepoJob)]
        other = [i for i, job in enumerate(jobs) if not isinstance(job, RepoJob)]
        out: list[Any] = [None] * len(jobs)
        if other:
            for i, verdict in zip(other, self.run_functions([jobs[i] for i in other]), strict=True):
                out[i] = verdict
        if repo:
            def one(i: int) -> Verdict:
                return self.run_repo(jobs[i].task, [jobs[i].patch])[0]

            with ThreadPoolExecutor(self.workers) as pool:
                for i, verdict in zip(repo, pool.map(one, repo), strict=True):
                    out[i] = verdict
        return out

    @property
    def limits(self) -> Any:
        return getattr(self.functions, "limits", None)

    @property
    def isolation(self) -> list[str]:
        return list(getattr(self.functions, "isolation", []))
