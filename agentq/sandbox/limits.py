"""Resource limits for one sandboxed run; sent along with every job, so one executor can mix them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(5.0, gt=0, le=3600, description="Wall clock for the whole run (both processes).")
    cpu_s: int = Field(0, ge=0, le=3600, description="RLIMIT_CPU of each process, in whole seconds; 0 means "
                       "the wall timeout + 1. A busy loop dies after this much CPU time however loaded the "
                       "machine is, where a wall-clock limit alone would need slack for the load.")
    memory_mb: int = Field(1024, ge=64, description="RLIMIT_AS of the candidate and of the test process.")
    file_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: the largest file a candidate can write.")
    max_procs: int = Field(32, ge=1, description="RLIMIT_NPROC (and pids.max) for the candidate's uid.")
    output_bytes: int = Field(4096, ge=0, description="Bytes of stdout/stderr kept, from the end.")

    @model_validator(mode="after")
    def _default_cpu(self) -> Limits:
        if self.cpu_s == 0:  # frozen model: set the derived default once, so every process sees one number
            object.__setattr__(self, "cpu_s", int(self.timeout_s) + 1)
        return self
