"""Run untrusted candidate programs against a task's tests: `LocalExecutor` here, `RemoteExecutor` over HTTP."""

from __future__ import annotations

from agentq.sandbox.client import RemoteExecutor, SandboxUnavailable
from agentq.sandbox.executor import LocalExecutor
from agentq.sandbox.limits import Limits
from agentq.sandbox.verdict import TestResult, Verdict

__all__ = ["Limits", "LocalExecutor", "RemoteExecutor", "SandboxUnavailable", "TestResult", "Verdict", "make_executor"]


def make_executor(spec) -> LocalExecutor | RemoteExecutor:  # spec: agentq.config.SandboxSpec
    """The executor a round's `sandbox:` section asks for: remote when it names a URL, local otherwise."""
    limits = Limits(timeout_s=spec.timeout_seconds, memory_mb=spec.memory_mb)
    if spec.url:
        return RemoteExecutor(spec.url, limits=limits)
    return LocalExecutor(workers=spec.workers, limits=limits)
