"""Raw facts of a run (from the fork server) -> Verdict. Pure, so every rule is testable without processes.

A pass needs, from the test process only: a result for every expected test, all passed, the `end` marker
and exit code 0. Nothing the candidate prints or returns other than plain data is consulted.
"""

from __future__ import annotations

from typing import Any

from agentq.sandbox.limits import Limits
from agentq.sandbox.verdict import Status, TestResult, Verdict


def _death(exit_info: dict[str, Any] | None, when: str, default: Status) -> tuple[Status, str]:
    """Why the candidate process stopped answering, from its wait status."""
    if exit_info is None:
        return default, f"the candidate stopped answering {when}"
    if "signal" in exit_info:
        name = exit_info.get("name", exit_info["signal"])
        if name == "SIGXCPU":
            return "timeout", f"the candidate used up its CPU time {when}"
        return "killed", f"the candidate process was killed by {name} {when}"
    return default, f"the candidate process exited with code {exit_info.get('code')} {when}"


def verdict_from_run(raw: dict[str, Any], test_names: list[str], limits: Limits) -> Verdict:
    events = [e for e in raw.get("events", []) if isinstance(e, dict)]
    by_name: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("e") == "test" and e.get("name") in test_names and e["name"] not in by_name:
            by_name[e["name"]] = e
    results = [
        TestResult(name=n, passed=by_name[n].get("passed") is True, message=str(by_name[n].get("message", "")))
        for n in test_names
        if n in by_name
    ]
    common = {
        "tests": results,
        "expected_tests": len(test_names),
        "stdout_tail": str(raw.get("stdout", "")),
        "stderr_tail": str(raw.get("stderr", "")),
        "duration_s": float(raw.get("duration_s", 0.0)),
        "cpu_s": None if raw.get("cpu_s") is None else float(raw["cpu_s"]),
        "isolation": list(raw.get("isolation", [])),
        "profile": str(raw.get("profile", "")),
    }
    cand_exit = raw.get("candidate_exit")
    kinds = {e.get("e"): e for e in reversed(events)}  # first event of each kind wins
    if raw.get("timed_out"):
        pending = next((n for n in test_names if n not in by_name), None)
        where = f" while running {pending}" if pending else ""
        if raw.get("budget_spent"):
            budget = raw.get("budget_s") or limits.time_budget_s
            message = (f"used up its time budget of {budget:g}s (derived from the reference "
                       f"solution's run time){where}")
            return Verdict(status="timeout", message=message, **common)
        return Verdict(status="timeout", message=f"timed out after {limits.timeout_s:g}s{where}", **common)
    if raw.get("memory_spent"):
        return Verdict(status="memory", message=f"the candidate's processes together used more than "
                       f"{limits.memory_mb} MB", **common)
    if "import_error" in kinds:
        info = kinds["import_error"]
        if not info.get("type"):
            status, message = _death(cand_exit, "while importing solution.py", "error")
            return Verdict(status=status, message=message, **common)
        where = f" ({info['where']})" if info.get("where") else ""
        status = "memory" if info["type"] == "MemoryError" else "error"
        message = f"solution.py failed to import: {info['type']}: {info.get('message', '')}{where}"
        return Verdict(status=status, message=message, **common)
    if "tests_error" in kinds:
        message = f"the tests failed to import: {kinds['tests_error'].get('message', '')}"
        return Verdict(status="error", message=message, **common)
    tests_exit = raw.get("tests_exit")
    if "end" not in kinds or tests_exit != {"code": 0}:
        status = "killed" if tests_exit and "signal" in tests_exit else "error"
        return Verdict(status=status, message=f"the test process ended abnormally ({tests_exit})", **common)
    failed = [by_name[r.name] for r in results if not r.passed]
    if not failed and len(results) == len(test_names):
        return Verdict(status="passed", **common)
    if not failed:
        return Verdict(status="error", message="some tests reported no result", **common)
    first = failed[0]
    message = f"{first['name']}: {first.get('message', '')}"
    if first.get("gone"):
        status, why = _death(cand_exit, f"during {first['name']}", "failed")
        return Verdict(status=status, message=f"{why}; {first.get('message', '')}", **common)
    return Verdict(status="memory" if first.get("memory") else "failed", message=message, **common)
