"""Task format, schema v2: one JSON object per line. Other tools produce it, so field names are fixed.

v2 adds repository tasks (`"kind": "repo"`: a library, a bug as a diff against it, fail-to-pass and
pass-to-pass pytest node ids, an issue text). A line without `kind` is a function task exactly as in v1, so
every v1 file still loads. The two kinds meet the rest of AgentQ through one interface, the methods both
models share: `problem_text()` (what a prompt shows), `start_candidate()` (the root of a search: the buggy
function, or the empty patch), and `judge(candidates, runner)` (verdicts with rewards, from the runner that
fits the kind: `TaskRunner` below), so callers never branch on the kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentq.io import read_jsonl, write_jsonl

if TYPE_CHECKING:
    from agentq.sandbox.verdict import Verdict

# Hidden test functions carry this prefix, so feedback shown to a model can leave them out.
HIDDEN_TEST_PREFIX = "test_hidden_"


class Task(BaseModel):
    """A bug-fix task. `tests` is Python source defining `test_*` functions that `from solution import *`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1)
    source: str = Field(..., min_length=1)
    group: str = Field(..., min_length=1, description="Problem identity; train/test splits never share one.")
    description: str
    buggy_code: str
    reference_code: str | None = None
    entry_point: str = Field(..., min_length=1, description="Function name, or `Solution.method`.")
    tests: str = Field(..., min_length=1)
    hidden_tests: str | None = Field(None, description="Extra cases never shown in a prompt (optional in v1).")
    metadata: dict[str, Any] = Field(default_factory=dict)
    reference_seconds: float | None = Field(
        None, ge=0, description="Run time of the reference solution against all tests in the sandbox, measured "
        "by `agentq tasks build`: CPU seconds of its process tree where a cgroup meters them, else wall-clock "
        "seconds. Candidates get a time budget derived from it (agentq.sandbox.limits.for_reference); absent in "
        "task files built before it existed, which then keep the spec's timeout.")

    kind: ClassVar[str] = "function"

    def all_tests(self) -> str:
        """Visible and hidden tests together: what rewards and pass rates are computed on."""
        return self.tests if not self.hidden_tests else f"{self.tests}\n\n{self.hidden_tests}"

    def problem_text(self) -> str:
        return f"{self.description.strip()}\n\nBuggy code:\n{self.buggy_code}"

    def start_candidate(self) -> str:
        return self.buggy_code

    def judge(self, candidates: list[str], runner: TaskRunner) -> list[Verdict]:
        return runner.run_functions([(code, self.all_tests()) for code in candidates])


class RepoRef(BaseModel):
    """Which repository a repo task is against: an sdist (name, version, sha256) or a git URL and commit."""

    model_config = ConfigDict(extra="forbid")

    sdist: str | None = None
    name: str | None = None
    version: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    git_url: str | None = None
    commit: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> RepoRef:
        if not (self.sdist and self.name and self.version) and not (self.git_url and self.commit):
            raise ValueError("expected sdist, name and version (and sha256), or git_url and commit")
        return self


class RepoTask(BaseModel):
    """A repository-level bug: `bug_patch` turns the pristine tree into the buggy one; the candidate is a patch
    against the buggy tree, judged by the repository's own tests (the F2P ids must pass, P2P must keep passing)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["repo"] = "repo"

    task_id: str = Field(..., min_length=1)
    group: str = Field(..., min_length=1, description="The library: splits are by repository.")
    repo: RepoRef
    bug_patch: str = Field(..., description="Empty only for a git source whose commit is itself buggy (SWE-bench).")
    fail_to_pass: list[str] = Field(..., min_length=1)
    pass_to_pass: list[str] = Field(default_factory=list)
    issue: str = Field(..., min_length=1)
    test_target: list[str] = Field(..., min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bug_given(self) -> RepoTask:
        if not self.bug_patch.strip() and not self.repo.git_url:
            raise ValueError("bug_patch: an sdist task needs the diff that makes the buggy tree")
        return self

    @property
    def id(self) -> str:
        return self.task_id

    def problem_text(self) -> str:
        name = self.repo.name or self.repo.git_url or "the repository"
        return f"Repository: {name} {self.repo.version or self.repo.commit or ''}\n\n{self.issue.strip()}"

    def start_candidate(self) -> str:
        return ""  # the empty patch: the buggy tree as it is

    def judge(self, candidates: list[str], runner: TaskRunner) -> list[Verdict]:
        return runner.run_repo(self, candidates)


AnyTask = Task | RepoTask


class TaskRunner(Protocol):
    """What `judge` needs: function runs (LocalExecutor.run_many) and repository runs (RepoExecutor)."""

    def run_functions(self, jobs: list[tuple[str, str]]) -> list[Verdict]: ...

    def run_repo(self, task: RepoTask, patches: list[str]) -> list[Verdict]: ...


class TaskFileError(ValueError):
    pass


def read_tasks(path: str | Path, kinds: tuple[str, ...] = ("function",)) -> list[Any]:
    """Read a task file; a bad line raises TaskFileError naming the file, line and field.

    `kinds` are the task kinds the caller can handle (function only by default, so code written for
    function tasks never receives a repo task unawares); a line of another kind is an error naming it.
    """
    tasks: list[Any] = []
    seen: dict[str, int] = {}
    try:
        records = list(enumerate(read_jsonl(path), 1))
    except (ValueError, OSError) as err:
        raise TaskFileError(str(err)) from None
    for lineno, record in records:
        kind = record.get("kind", "function") if isinstance(record, dict) else "function"
        if kind not in ("function", "repo"):
            raise TaskFileError(f"{path}: line {lineno}: field kind: expected 'function' or 'repo', got {kind!r}")
        if kind not in kinds:
            raise TaskFileError(f"{path}: line {lineno}: a {kind} task, but this command takes only "
                                f"{' or '.join(kinds)} tasks")
        try:
            task = Task.model_validate(record) if kind == "function" else RepoTask.model_validate(record)
        except ValidationError as err:
            problems = "; ".join(
                f"field {'.'.join(map(str, e['loc'])) or '(object)'}: {e['msg']}" for e in err.errors()
            )
            ident = record.get("id", record.get("task_id", "?"))
            raise TaskFileError(f"{path}: line {lineno} (task {ident}): {problems}") from None
        if task.id in seen:
            raise TaskFileError(f"{path}: line {lineno}: duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = lineno
        tasks.append(task)
    return tasks


def write_tasks(path: str | Path, tasks: list[Task] | list[RepoTask] | list[AnyTask]) -> None:
    write_jsonl(path, (t.model_dump(exclude_none=True) for t in tasks))
