"""Task format, schema v1: one JSON object per line. Other tools produce it, so field names are fixed (fields
added later are optional, so older files still load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentq.io import read_jsonl, write_jsonl

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

    def all_tests(self) -> str:
        """Visible and hidden tests together: what rewards and pass rates are computed on."""
        return self.tests if not self.hidden_tests else f"{self.tests}\n\n{self.hidden_tests}"


class TaskFileError(ValueError):
    pass


def read_tasks(path: str | Path) -> list[Task]:
    """Read a task file; a bad line raises TaskFileError naming the file, line and field."""
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    try:
        records = list(enumerate(read_jsonl(path), 1))
    except (ValueError, OSError) as err:
        raise TaskFileError(str(err)) from None
    for lineno, record in records:
        try:
            task = Task.model_validate(record)
        except ValidationError as err:
            problems = "; ".join(
                f"field {'.'.join(map(str, e['loc'])) or '(object)'}: {e['msg']}" for e in err.errors()
            )
            ident = record.get("id", "?")
            raise TaskFileError(f"{path}: line {lineno} (task {ident}): {problems}") from None
        if task.id in seen:
            raise TaskFileError(f"{path}: line {lineno}: duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = lineno
        tasks.append(task)
    return tasks


def write_tasks(path: str | Path, tasks: list[Task]) -> None:
    write_jsonl(path, (t.model_dump(exclude_none=True) for t in tasks))
