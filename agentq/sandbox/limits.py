"""Resource limits for one sandboxed run; sent along with every job, so one executor can mix them."""

from __future__ import annotations

from typing import TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A candidate's time budget in the spirit of EvalPlus: max(floor, k x the reference solution's time), capped by
# the spec's timeout. The time is CPU time of the candidate's process tree where the sandbox meters it (a
# cgroup), which load on the machine does not stretch, so the floor can be small: a correct program needs about
# the reference's CPU, and a loop that never ends is cut after a fraction of a second instead of the timeout.
# The floor only decides for references under floor / k (25 ms): it absorbs a run's fixed cost and the spread
# between repeats. Measured on the 397 distinct HumanEvalFix and DebugBench references (three runs each, the CPU
# the cgroup metered, docs/benchmarks.md): median 2.2 ms, 99th percentile 11.5 ms, repeats of one program within
# 3.1x of each other; 0.1 s is 8.7x the 99th percentile. (It was 0.25 s: every looping candidate then cost as
# much CPU as about 40 correct ones.)
BUDGET_FLOOR_S = 0.1
BUDGET_FACTOR = 4.0


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(5.0, gt=0, le=3600, description="Wall clock for the whole run (both processes).")
    cpu_s: int = Field(0, ge=0, le=3600, description="RLIMIT_CPU of each process, in whole seconds; 0 means "
                       "the wall timeout + 1. A busy loop dies after this much CPU time however loaded the "
                       "machine is, where a wall-clock limit alone would need slack for the load.")
    time_budget_s: float | None = Field(None, gt=0, le=3600, description="Run time the candidate may use, derived "
                                        "from the reference solution's (`for_reference`): CPU seconds of its whole "
                                        "process tree where a cgroup meters them, else wall-clock seconds. Spent: "
                                        "the run ends as a timeout. Unset: only timeout_s and cpu_s apply.")
    memory_mb: int = Field(1024, ge=64, description="RLIMIT_AS of the candidate and of the test process.")
    file_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: the largest file a candidate can write.")
    max_procs: int = Field(32, ge=1, description="RLIMIT_NPROC (and pids.max) for the candidate's uid.")
    output_bytes: int = Field(4096, ge=0, description="Bytes of stdout/stderr kept, from the end.")

    @model_validator(mode="after")
    def _default_cpu(self) -> Limits:
        if self.cpu_s == 0:  # frozen model: set the derived default once, so every process sees one number
            object.__setattr__(self, "cpu_s", int(self.timeout_s) + 1)
        return self


def for_reference(limits: Limits, reference_s: float | None, floor_s: float = BUDGET_FLOOR_S,
                  factor: float = BUDGET_FACTOR) -> Limits:
    """`limits` with the time budget of a task whose reference solution ran `reference_s` seconds in the sandbox
    (`Task.reference_seconds`); unchanged for a task that carries no measurement (older task files)."""
    if reference_s is None:
        return limits
    budget = min(limits.timeout_s, max(floor_s, factor * reference_s))
    return limits.model_copy(update={"time_budget_s": round(budget, 4)})


# What an executor's run_many takes: (code, tests), or (code, tests, limits) for a run with limits of its own.
Job: TypeAlias = tuple[str, str] | tuple[str, str, Limits]


def item_limits(item: Job, default: Limits | None) -> Limits | None:
    return item[2] if len(item) == 3 else default  # type: ignore[misc]


def budgeted(code: str, tests: str, base: Limits | None, reference_s: float | None) -> Job:
    """A job for `code` with the time budget of a task whose reference ran `reference_s` seconds. `base`: the
    executor's limits, which the budget is added to (None, as for a test double without limits: a plain job)."""
    if base is None or reference_s is None:
        return (code, tests)
    return (code, tests, for_reference(base, reference_s))
