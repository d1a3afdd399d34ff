"""pytest plugin loaded into every repository run by agentq_pytest_boot.py: one signed record per test outcome.

Why a plugin rather than `--junitxml`: junit names a test by dotted class and name, which cannot be mapped
back to a pytest node id in general (parametrised ids, tests inside packages); the executor needs node ids to
compare with a task's fail-to-pass and pass-to-pass lists.

Why signed, and written to a pipe: the repository's code runs in this process and can write to any file or
descriptor it holds. Each record goes to an inherited pipe as `<json>\\t<hmac>\\n`, the HMAC-SHA256 of the JSON
under a key the trusted side made for this run and the boot script read before any repository code ran. The
C objects doing the signing and the writing are taken when this module is configured (so later patches of
`json`, `hmac` or `os` do not reach them), and the JSON is built here from builtin `str` methods, which cannot
be patched. The trusted side reads the pipe with a size cap and a deadline and drops any line whose HMAC does
not match. Only the standard library is used.
"""

from __future__ import annotations

from typing import Any

_emit = None
_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def _writer(fd: int, key: bytes):  # noqa: ANN202 - a closure over captured C functions
    import _hashlib
    import os

    mac = _hashlib.hmac_new(key, digestmod="sha256")
    copy, write, to_str, is_bool, is_int, is_dict, is_list, is_tuple = mac.copy, os.write, str, bool, int, dict, \
        list, tuple

    def text(value: Any) -> str:
        kind = type(value)
        if value is None:
            return "null"
        if kind is is_bool:
            return "true" if value else "false"
        if kind is is_int:
            return int.__repr__(value)
        if kind is is_dict:
            return "{" + ",".join(text(to_str(k)) + ":" + text(v) for k, v in dict.items(value)) + "}"
        if kind is is_list or kind is is_tuple:
            return "[" + ",".join(text(v) for v in list.__iter__(list(value))) + "]"
        return '"' + str.translate(to_str(value), _ESCAPES) + '"'

    def emit(record: dict[str, Any]) -> None:
        payload = text(record)
        signed = copy()
        signed.update(str.encode(payload, "utf-8", "surrogatepass"))
        data = str.encode(payload + "\t" + signed.hexdigest() + "\n", "utf-8", "surrogatepass")
        while data:
            data = data[write(fd, data):]

    return emit


def configure(fd: int, key: bytes) -> None:
    global _emit
    _emit = _writer(fd, key)


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
        _emit(record)


def pytest_collectreport(report) -> None:
    if report.failed:
        _emit({"nodeid": report.nodeid, "when": "collect", "outcome": "error", "message": _first_line(report)})


def pytest_sessionfinish(session, exitstatus) -> None:
    _emit({"end": True, "exitstatus": int(exitstatus), "collected": int(session.testscollected)})
