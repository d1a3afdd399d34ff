"""The issue text of a repository task: what a developer would report, written from pytest's own report.

A report a developer can act on shows the code that misbehaves and what happened: the failing check (the
statement pytest marks with `>` and the lines of the test before it), the assertion with the values pytest
printed for it, or the exception and the call that raised it. It never names the failing tests (their ids
are the hidden fail-to-pass set an evaluation must not see), the changed lines, or the file the bug is in;
`leaks` is the check, and a text that cannot avoid a leak is no task (`issue_leaks`). Tests that fail the
same way are reported once; at most MAX_SNIPPETS distinct failures are shown.

An issue can also be written by a model (SWE-smith's LM mode, `model_issue`): it is given the same failures
and the bug's diff, asked for a report that neither names the tests nor shows the fix, and its answer goes
through the same leak check; an answer that leaks falls back to the report written here.
"""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentq.policy.base import Policy
    from agentq.tasks.schema import RepoTask

MAX_SNIPPETS = 3
MAX_CODE_LINES = 10
MAX_ERROR_LINES = 12
_PARAMS = re.compile(r"\[.*\]$")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_CARETS = re.compile(r"^[\s^~]*\^[\s^~]*$")  # Python 3.11+ position markers under a traceback line


def failing_test_names(nodeids: list[str]) -> list[str]:
    """The test functions' own names (`tests/t.py::TestX::test_y[1]` -> `test_y`), which a text must not show.
    An item without a name of its own (pygments collects each example file as `path::`) has none to hide: an
    empty name would match between any two punctuation marks, and every issue would look like a leak."""
    return sorted({_PARAMS.sub("", n.rsplit("::", 1)[-1]) for n in nodeids if "::" in n} - {""})


def leaks(text: str, mutation_lines: list[str], paths: list[str], tests: list[str] = ()) -> list[str]:
    """What in a text gives the task away: a changed line (either side), a source path, a failing test's id or
    name (a name as a whole word)."""
    found = [line.strip() for line in mutation_lines if len(line.strip()) >= 4 and line.strip() in text]
    found += [p for p in paths if p in text]
    found += [t for t in tests if t in text]
    found += [n for n in failing_test_names(list(tests)) if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text)]
    return found


def _code(entry: dict) -> list[str]:
    """The test's lines up to and including the failing statement (`>` and its continuation), without the
    `def` line and decorators above it, dedented."""
    lines = [ln for ln in entry.get("lines", []) if not (ln.startswith("E ") or ln.rstrip() == "E"
                                                          or _CARETS.match(ln))]
    marked = next((i for i, ln in enumerate(lines) if ln.startswith(">")), None)
    if marked is None:
        return []
    end = marked + 1
    while end < len(lines) and lines[end].strip() and not lines[end].startswith(">"):
        end += 1
    body = [" " + ln[1:] if ln.startswith(">") else ln for ln in lines[:end]]
    start = max((i + 1 for i, ln in enumerate(body[:marked + 1]) if re.match(r"\s*(async\s+)?def |\s*@", ln)),
                default=0)
    body = [ln for ln in body[start:] if ln.strip()][-MAX_CODE_LINES:]
    return textwrap.dedent("\n".join(ln.rstrip() for ln in body)).splitlines()


def _errors(traceback: list[dict], message: str) -> list[str]:
    """The `E` lines of the frame that raised (pytest prints the exception and the assertion's values there)."""
    for entry in reversed(traceback):
        lines = [ln[1:].strip() if i == 0 else ln[1:] for i, ln in enumerate(
            [ln for ln in entry.get("lines", []) if ln.startswith("E ") or ln.rstrip() == "E"])]
        if lines:
            text = textwrap.dedent("\n".join(ln.rstrip() for ln in lines[1:]))
            return [lines[0], *(text.splitlines() if text.strip() else [])][:MAX_ERROR_LINES]
    return [message.strip()] if message.strip() else []


def _asserted(line: str) -> bool:
    """An assertion's failure (`assert 1 == 2`, `AssertionError: ...`), as against an exception raised."""
    return line.startswith(("assert ", "AssertionError"))


def failure(traceback: list[dict], message: str, test_file: str) -> tuple[list[str], list[str], bool]:
    """(the check's code, the error lines, raised inside the library) of one failing test."""
    own = [e for e in traceback if e.get("path", "").endswith(test_file.rsplit("/", 1)[-1])] or traceback[:1]
    code = _code(own[0]) if own else []
    raised_inside = bool(traceback) and traceback[-1] is not (own[0] if own else None)
    return code, _errors(traceback, message), raised_inside


def issue_text(name: str, version: str, failing: dict[str, str], tracebacks: dict[str, list[dict]],
               mutation_lines: list[str], paths: list[str]) -> str | None:
    """The report for a bug whose failing tests are `failing` (id -> first message line); None when every way of
    writing it leaks."""
    seen_errors: set[str] = set()
    blocks: list[tuple[bool, str]] = []
    heads: list[str] = []  # the first error line of each distinct failure, in test order
    same = 0
    forbidden = (mutation_lines, paths, sorted(failing))
    for nodeid in sorted(failing):
        code, errors, inside = failure(tracebacks.get(nodeid, []), failing[nodeid], nodeid.split("::", 1)[0])
        key = _ADDRESS.sub("0x", "\n".join(errors))
        if not errors or key in seen_errors:
            same += bool(errors)
            continue
        asserted = _asserted(errors[0])
        block = ""
        if code:
            verb = "fails with" if asserted and not inside else "raises"
            block = f"This check {verb}:\n\n```python\n" + "\n".join(code) + "\n```\n\n"
        block += "```\n" + "\n".join(errors) + "\n```"
        if leaks(block, *forbidden):
            block = "```\n" + errors[0] + "\n```"  # the values alone, without the test's code
            if leaks(block, *forbidden):
                continue
        seen_errors.add(key)
        heads.append(errors[0])
        if len(blocks) < MAX_SNIPPETS:
            blocks.append((bool(code), block))
        else:
            same += 1
    if not blocks:
        return None
    first = heads[0]
    headline = "wrong results" if _asserted(first) else f"{first.split(':', 1)[0][:80]} raised"
    shown = [b for _, b in sorted(blocks, key=lambda b: not b[0])]  # the ones with code first
    parts = [f"{name} {version}: {headline} in code that worked before", *shown]
    if same:
        parts.append(f"{same} more check(s) of the test suite fail the same way or alike.")
    parts.append("The tests are right; the library is wrong. Fix the library.")
    text = "\n\n".join(parts)
    return None if leaks(text, *forbidden) else text


ISSUE_PROMPT = """You are writing a GitHub issue about a bug in {name} {version}. Here are the failures the bug \
causes in the test suite:

{failures}

For your eyes only (never quote it, never name its file or lines), the change that introduced the bug:

```diff
{patch}
```

Write the issue as a user of the library would: what they called, what they expected and what happened \
instead. Do not name any test, do not quote the diff, do not say where the bug is or how to fix it. Reply with \
the issue text only."""


def model_issue(policy: Policy, task: RepoTask, template: str, mutation_lines: list[str], paths: list[str],
                seed: int = 0) -> tuple[str, str]:
    """(issue, who wrote it: "model" or "template"): the model's report when it passes the leak check."""
    from agentq.policy.base import Prompt, Request

    prompt = Prompt(messages=[{"role": "user", "content": ISSUE_PROMPT.format(
        name=task.repo.name, version=task.repo.version, failures=template, patch=task.bug_patch)}], task=task,
        purpose="issue")
    answer = policy.generate_batch([Request(prompt, 1, 0.0, 1024, seed)])[0][0].text.strip()
    if answer and not leaks(answer, mutation_lines, paths, task.fail_to_pass):
        return answer, "model"
    return template, "template"
