"""Why an attempt failed, and the next prompt: the reflection loop's taxonomy.

A failed attempt falls in one category, decided in a fixed order from the patch and the repository verdict
(the first that holds wins): the answer is malformed (a parse failure: counted apart from failed fixes), it
changes nothing, the patch does not apply, the changed code does not compile, the run timed out, the suite
cannot import the code, the run crashed, the failing tests pass but a passing one broke, the patch touches
none of the files the evidence points to, or the failing tests still fail. The next prompt names the category,
says what it usually means, and quotes the failing output.

`RunOutcome` holds only what the taxonomy needs, so the taxonomy does not depend on one executor. From issue
15's `agentq.sandbox.repo.RepoVerdict` (as of its branch): `applied` = `patch_status` not in ("failed",
"refused"), with `apply_error` = its `message` otherwise; `timed_out` = `status == "timeout"`; `crashed` =
`status` in ("error", "killed", "memory") with the patch applied, or a message starting "pytest did not
finish"; `collection_error` = its run report's collect errors, joined; `fail_to_pass` / `pass_to_pass` =
`{t.name: t.passed}` over `tests[:f2p_total]` / the rest; `output` = `message` plus `stderr_tail`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from agentq.policy.prompts import RANKING_LABEL
from agentq.repair.context import CHARS_PER_TOKEN, estimate_tokens, file_block
from agentq.repair.patch import ApplyError, ParseError, Patch

OUTPUT_LIMIT = 2000
_TRACE_FILE = re.compile(r'(?:File "|^)([\w./-]+\.py)(?:", line |:)\d+', re.MULTILINE)
_SYNTAX = re.compile(r"\b(?:SyntaxError|IndentationError|TabError)\b")
_IMPORT = re.compile(r"\b(?:ImportError|ModuleNotFoundError|cannot import name|circular import)\b")


class Category(StrEnum):
    MALFORMED = "malformed answer"
    NO_CHANGE = "no change"
    DOES_NOT_APPLY = "patch does not apply"
    SYNTAX_ERROR = "syntax error"
    TIMEOUT = "timeout"
    IMPORT_ERROR = "import error"
    CRASH = "crash"
    REGRESSION = "regression in a passing test"
    WRONG_FILE = "wrong file"
    TEST_ASSERTION = "failing tests still fail"
    UNCHECKED = "not checked"
    RESOLVED = "resolved"


ADVICE = {
    Category.MALFORMED: "The answer could not be read. Reply only with SEARCH/REPLACE blocks in the format shown.",
    Category.NO_CHANGE: "The edit changed nothing. The SEARCH and REPLACE parts must differ.",
    Category.DOES_NOT_APPLY: "The SEARCH text must be copied exactly from the current file, with enough lines to "
                             "be unique.",
    Category.SYNTAX_ERROR: "The edited file no longer compiles. Check indentation and brackets.",
    Category.TIMEOUT: "The tests ran out of time: the change likely introduced an endless loop or very slow path.",
    Category.IMPORT_ERROR: "The package no longer imports: a name was removed or renamed, or an import is wrong.",
    Category.CRASH: "The test run crashed before reporting results.",
    Category.REGRESSION: "The failing tests pass now, but a test that passed before fails: the change is too broad.",
    Category.WRONG_FILE: "The change is in a file the failure does not go through; look at the files in the "
                         "traceback.",
    Category.TEST_ASSERTION: "The failing tests still fail: the change does not fix the behaviour they check.",
    Category.UNCHECKED: "Nothing ran: the answer had no reproduction test, so the change could not be checked.",
}


@dataclass
class RunOutcome:
    applied: bool = True
    apply_error: str = ""
    timed_out: bool = False
    crashed: bool = False
    collection_error: str = ""
    fail_to_pass: dict[str, bool] = field(default_factory=dict)
    pass_to_pass: dict[str, bool] = field(default_factory=dict)
    output: str = ""

    @property
    def resolved(self) -> bool:
        return (self.applied and not (self.timed_out or self.crashed or self.collection_error)
                and bool(self.fail_to_pass) and all(self.fail_to_pass.values()) and all(self.pass_to_pass.values()))


def syntax_errors(patch: Patch) -> dict[str, str]:
    """Changed Python files that do not compile, with the compiler's message (checked before any test run)."""
    errors = {}
    for path, text in patch.new_text.items():
        if path.endswith(".py"):
            try:
                compile(text, path, "exec")
            except (SyntaxError, ValueError) as err:
                errors[path] = f"{type(err).__name__}: {err}"
    return errors


def traceback_files(output: str) -> set[str]:
    """Repository files a failing output's tracebacks go through (`File "pkg/x.py", line 3` or `pkg/x.py:3`)."""
    return {m.lstrip("./") for m in _TRACE_FILE.findall(output)}


def categorize(patch: Patch | Exception, verdict: RunOutcome | None, suspects: set[str] = frozenset()) -> Category:
    """The category of an attempt. `patch` is the parsed patch or the ParseError/ApplyError that parsing
    raised; `verdict` is None when nothing ran; `suspects` are the files the evidence points to (the
    localisation set), to which the failing output's traceback files are added."""
    if isinstance(patch, ParseError):
        return Category.MALFORMED
    if isinstance(patch, ApplyError):
        return Category.DOES_NOT_APPLY
    if isinstance(patch, Exception):
        raise TypeError(f"not a patch outcome: {patch!r}")
    if patch.empty:
        return Category.NO_CHANGE
    if syntax_errors(patch):
        return Category.SYNTAX_ERROR
    if verdict is None:
        raise ValueError("a non-empty, compiling patch needs a verdict to be categorised")
    if not verdict.applied:
        return Category.DOES_NOT_APPLY
    if verdict.timed_out:
        return Category.TIMEOUT
    if verdict.collection_error:
        return (Category.SYNTAX_ERROR if _SYNTAX.search(verdict.collection_error) else
                Category.IMPORT_ERROR if _IMPORT.search(verdict.collection_error) else Category.CRASH)
    if verdict.crashed or not verdict.fail_to_pass:
        return Category.CRASH
    if all(verdict.fail_to_pass.values()):
        return Category.REGRESSION if not all(verdict.pass_to_pass.values()) else Category.RESOLVED
    if _IMPORT.search(verdict.output) and not any(verdict.fail_to_pass.values()):
        return Category.IMPORT_ERROR
    evidence = set(suspects) | traceback_files(verdict.output)
    if evidence and not evidence & set(patch.files):
        return Category.WRONG_FILE
    return Category.TEST_ASSERTION


def failing_output(patch: Patch | Exception, verdict: RunOutcome | None) -> str:
    """What the next prompt quotes: the parse/apply/compile error, else the run's failing output."""
    if isinstance(patch, Exception):
        text = str(patch)
    elif not patch.empty and (errors := syntax_errors(patch)):
        text = "\n".join(f"{p}: {e}" for p, e in errors.items())
    elif verdict is None:
        text = ""
    else:
        failed = [t for t, ok in {**verdict.fail_to_pass, **verdict.pass_to_pass}.items() if not ok]
        head = f"Still failing: {', '.join(failed[:10])}" + (" ..." if len(failed) > 10 else "") if failed else ""
        text = "\n".join(x for x in (verdict.apply_error, verdict.collection_error, head, verdict.output) if x)
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT else "..." + text[-(OUTPUT_LIMIT - 3) :]


FORMAT = (
    "Reply with one or more edits in exactly this format (the SEARCH part copied exactly from the current file):\n"
    "path/to/file.py\n<<<<<<< SEARCH\n<lines to replace>\n=======\n<new lines>\n>>>>>>> REPLACE"
)
SYSTEM = "You are an expert Python programmer. You fix bugs in repositories by editing their files."


def failure_report(issue: str) -> str:
    """The section every repair prompt opens with: what the scripted server knows a repo task's prompt by."""
    return f"## Failure report\n{issue.strip()}"


REPRODUCTION_FILE = "reproduce_issue.py"
HONEST = (f"You cannot run the project's test suite. To check a fix, your answer may also create the file "
          f"`{REPRODUCTION_FILE}` (a block with an empty SEARCH part) holding test functions `def test_...():` that "
          "reproduce the issue with plain `assert` statements (do not import pytest). It runs against your patched "
          "code and its results are shown with your next attempt; it is not part of the fix.")


def _attempt(n: int, answer: str, category: Category, output: str) -> str:
    return (f"## Attempt {n}: {category.value}\n{answer.strip()}\n\n{ADVICE[category]}"
            + (f"\n\nOutput:\n```\n{output}\n```" if output else ""))


def repair_messages(issue: str, context: dict[str, str], attempts: list[tuple[str, Category, str]] = (),
                    honest: bool = False, budget: int | None = None) -> list[dict]:
    """Chat messages for an attempt: the report, the files in the localisation set, and for each earlier
    failed attempt its answer, category, advice and failing output (most recent last). `honest` (evaluation):
    the model is told it may write its own reproduction test, the only test it gets to see run. With a
    `budget` (estimated tokens), the oldest attempts are left out, and the last one cut, until the prompt fits;
    the report and the files are sized to the budget by the caller (agentq/repair/problem.py)."""
    files = "\n\n".join(file_block(path, text) for path, text in context.items())
    head = [failure_report(issue), f"## Relevant files\n{files}"]
    tail = [FORMAT + (f"\n\n{HONEST}" if honest else "")]
    shown = [_attempt(n, *a) for n, a in enumerate(attempts, 1)]

    def messages(parts: list[str]) -> list[dict]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join([*head, *parts, *tail])}]

    if budget is None:
        return messages(shown)
    parts: list[str] = []
    for k in range(len(shown) + 1):
        kept = shown[k:]
        parts = ([f"({k} earlier attempt(s) left out to fit the prompt.)"] if k else []) + kept
        if prompt_tokens(messages(parts)) <= budget or len(kept) <= 1:
            break
    over = prompt_tokens(messages(parts)) - budget
    if over > 0 and parts:  # the last attempt alone is too long: cut it
        cut = parts[-1][: max(0, len(parts[-1]) - int(over * CHARS_PER_TOKEN) - 64)]
        parts = parts[:-1] + ([cut + "\n[... cut to fit the prompt]"] if len(cut) > 200 else [])
    return messages(parts)


def prompt_tokens(messages: list[dict]) -> int:
    """The estimated tokens of a chat prompt (agentq/repair/context.py's estimate; a few per message for the
    chat template)."""
    return sum(estimate_tokens(m["content"]) + 4 for m in messages)


def critique_messages(issue: str, candidates: list[tuple[str | None, str, str, str]]) -> list[dict]:
    """Chat messages that ask for a best-first ranking of sibling attempts, in the format `parse_ranking` reads.

    Each candidate is (diff, answer, category, output): its patch as a diff (None or empty when there is none to
    run: the answer is shown instead), the reflection category and the failing output, the same things a repair prompt
    quotes. Nothing else: no test source, no reference patch. The report opens the message as in the repair
    prompts, so a prefix cache serves both."""
    blocks = []
    for i, (diff, answer, category, output) in enumerate(candidates, 1):
        shown = f"```diff\n{diff.rstrip()}\n```" if diff else f"No runnable patch; the answer was:\n{_clip(answer)}"
        block = f"### Candidate {i}\n{shown}\nResult: {category}"
        blocks.append(block + (f"\n```\n{output}\n```" if output else ""))
    user = (f"{failure_report(issue)}\n\n## Candidate patches\n" + "\n\n".join(blocks) + "\n\n"
            "Which candidate is most likely a correct fix? Think briefly about what each one changes, then end with "
            f"one line `{RANKING_LABEL} ` followed by all {len(candidates)} candidate numbers, best first, "
            "separated by `>`.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_LIMIT else text[: OUTPUT_LIMIT - 3] + "..."
