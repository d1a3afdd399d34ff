"""What running a candidate against a task's tests produced; the only thing the rest of AgentQ sees."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

Status = Literal["passed", "failed", "error", "timeout", "memory", "killed", "parse_error"]
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """`text` as it may enter JSON, a prompt or a tokenizer: a lone surrogate (a candidate can raise, print or
    answer one, and it makes `str.encode` fail wherever the text goes next) becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value


class TestResult(BaseModel):
    __test__ = False  # not a pytest class

    name: str
    passed: bool
    message: str = ""

    _text = field_validator("name", "message", mode="before")(lambda v: _safe(v))


class Verdict(BaseModel):
    status: Status
    tests: list[TestResult] = Field(default_factory=list)
    expected_tests: int = Field(0, description="How many test_* functions the task defines.")
    message: str = Field("", description="First failing test's message, or why the run could not finish.")
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration_s: float = 0.0
    cpu_s: float | None = Field(None, description="CPU seconds of the candidate's process tree, where a cgroup "
                                "meters them (None: not measured).")
    isolation: list[str] = Field(default_factory=list, description="Isolation that had to be weakened.")
    profile: str = Field("", description="The isolation profile the run had: root (distinct uids, cgroups), "
                         "userns (a non-root pod's user-namespace jail), none (weak isolation, allowed).")

    # Everything a candidate can put into a verdict is made safe here, for local and remote verdicts alike.
    _text = field_validator("message", "stdout_tail", "stderr_tail", "isolation", mode="before")(lambda v: _safe(v))

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def run_seconds(self) -> float:
        """The run's time as a time budget counts it: CPU seconds where metered, else wall-clock seconds."""
        return self.cpu_s if self.cpu_s is not None else self.duration_s

    @property
    def n_passed(self) -> int:
        return sum(t.passed for t in self.tests)

    @property
    def reward(self) -> float:
        """Fraction of expected tests that ran and passed (1.0 only for a full pass)."""
        if self.status == "passed":
            return 1.0
        if self.expected_tests <= 0:
            return 0.0
        return min(self.n_passed, self.expected_tests) / self.expected_tests

    def feedback(self, limit: int = 600, hide_prefix: str | None = None) -> str:
        """Short text for the model's next prompt.

        With `hide_prefix`, tests whose names start with it are only counted, never quoted: a prompt must
        not reveal hidden test inputs, or the model learns to special-case them.
        """
        if self.status == "passed":
            return f"All {self.expected_tests} tests passed."
        head = f"{self.status}: {self.n_passed}/{self.expected_tests} tests passed."
        detail = self.message.strip()
        if hide_prefix is not None and self.tests:
            shown = [t for t in self.tests if not t.name.startswith(hide_prefix)]
            first_visible = next((t for t in shown if not t.passed), None)
            hidden_failed = sum(not t.passed for t in self.tests if t.name.startswith(hide_prefix))
            detail = first_visible.message.strip() if first_visible else ""
            if hidden_failed:
                detail = f"{detail}\n{hidden_failed} hidden test(s) failed.".strip()
        text = f"{head}\n{detail}" if detail else head
        return text if len(text) <= limit else text[: limit - 3] + "..."
