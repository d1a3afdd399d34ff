"""Run untrusted candidate programs against a task's tests: `LocalExecutor` here, `RemoteExecutor` over HTTP.

Exports resolve lazily, so the fork server (`python -m agentq.sandbox.forkserver`) loads only the stdlib
modules it needs: a smaller process is cheaper to fork for every run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentq.config import SandboxSpec
    from agentq.sandbox.client import RemoteExecutor, SandboxUnavailable
    from agentq.sandbox.executor import LocalExecutor
    from agentq.sandbox.limits import Limits
    from agentq.sandbox.verdict import TestResult, Verdict

_EXPORTS = {
    "Limits": "agentq.sandbox.limits",
    "LocalExecutor": "agentq.sandbox.executor",
    "RemoteExecutor": "agentq.sandbox.client",
    "SandboxUnavailable": "agentq.sandbox.client",
    "TestResult": "agentq.sandbox.verdict",
    "Verdict": "agentq.sandbox.verdict",
}
__all__ = ["Limits", "LocalExecutor", "RemoteExecutor", "SandboxUnavailable", "TestResult", "Verdict", "make_executor"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_executor(spec: SandboxSpec) -> LocalExecutor | RemoteExecutor:
    """The executor a round's `sandbox:` section asks for: remote when it names a URL, local otherwise."""
    from agentq.sandbox.client import RemoteExecutor
    from agentq.sandbox.executor import LocalExecutor
    from agentq.sandbox.limits import Limits

    limits = Limits(timeout_s=spec.timeout_seconds, cpu_s=spec.cpu_seconds or 0, memory_mb=spec.memory_mb)
    if spec.url:
        return RemoteExecutor(spec.url, limits=limits)
    return LocalExecutor(workers=spec.workers, limits=limits, allow_weak_isolation=spec.allow_weak_isolation)
