"""pytest plugin loaded into every repository run (`-p agentq_pytest_report`): one JSON line per test outcome.

Why a plugin rather than `--junitxml`: junit names a test by dotted class and name, which cannot be mapped
back to a pytest node id in general (parametrised ids, tests inside packages); the executor needs node ids to
compare with a task's fail-to-pass and pass-to-pass lists. The file is read on the trusted side after the run.
Only the standard library is used here: the plugin runs inside the sandbox, next to the repository's code.
"""

from __future__ import annotations

import json
import os

_PATH = os.environ.get("AGENTQ_REPORT", "/results/report.jsonl")
_fh = None


def _write(record: dict) -> None:
    global _fh
    if _fh is None:
        _fh = open(_PATH, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole session
    _fh.write(json.dumps(record) + "\n")
    _fh.flush()


def _first_line(report) -> str:
    text = getattr(report, "longreprtext", "") or ""
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    line = getattr(crash, "message", "") if crash is not None else ""
    if not line:
        lines = [s for s in text.splitlines() if s.strip()]
        errors = [s for s in lines if s.startswith("E ")]
        line = (errors or lines or [""])[0]
    return line.strip().splitlines()[0][:500] if line.strip() else ""


def _traceback(report) -> list[dict]:
    """pytest's own traceback of a failure, capped: each entry's file, line and the lines pytest shows for it
    (source with `>` at the failing line, `E` lines with the exception and the assertion's values). The
    repository task builder writes issue texts from it."""
    entries = getattr(getattr(getattr(report, "longrepr", None), "reprtraceback", None), "reprentries", None) or []
    out = []
    for entry in [*entries[:1], *entries[1:][-2:]]:
        where = getattr(entry, "reprfileloc", None)
        lines = [str(line)[:300] for line in getattr(entry, "lines", [])][-40:]
        out.append({"path": str(getattr(where, "path", "")), "lineno": getattr(where, "lineno", None), "lines": lines})
    return out


def pytest_runtest_logreport(report) -> None:
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
        record = {"nodeid": report.nodeid, "when": report.when, "outcome": outcome, "message": _first_line(report)}
        if report.failed:
            record["traceback"] = _traceback(report)
        _write(record)


def pytest_collectreport(report) -> None:
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "error", "message": _first_line(report)})


def pytest_sessionfinish(session, exitstatus) -> None:
    global _fh
    _write({"end": True, "exitstatus": int(exitstatus), "collected": session.testscollected})
    _fh.close()
    _fh = None
