"""Resource limits for one sandboxed run; sent along with every job, so one executor can mix them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(5.0, gt=0, le=3600, description="Wall clock for the whole run (both processes).")
    memory_mb: int = Field(1024, ge=64, description="RLIMIT_AS of the candidate and of the test process.")
    file_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: the largest file a candidate can write.")
    max_procs: int = Field(32, ge=1, description="RLIMIT_NPROC (and pids.max) for the candidate's uid.")
    output_bytes: int = Field(4096, ge=0, description="Bytes of stdout/stderr kept, from the end.")
