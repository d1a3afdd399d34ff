"""A model's answer -> a well-formed unified diff against the work tree.

Two answer formats are read: search/replace blocks (the format the repair prompts ask for)

    path/to/file.py
    <<<<<<< SEARCH
    exact lines of the current file
    =======
    their replacement
    >>>>>>> REPLACE

and a unified diff (in a ```diff fence or bare). The path line may be written as the prompt shows files
(`### path/to/file.py`, in backticks or bold), and the code itself may hold a `=======` line (a reST underline
in a docstring): a block with several such lines is split at the one whose SEARCH part fits the file.
Either way the result is rebuilt with difflib from the files' old and new text, so what reaches the sandbox
is always a diff `git apply` takes, whatever line counts the model wrote. Two failures are kept apart:
`ParseError`, an answer that holds no edit in either format (a malformed answer, counted apart from failed
fixes), and `ApplyError`, well-formed edits that do not match the tree (search text not found or ambiguous,
a hunk that does not apply, a path outside the repository).
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_SEARCH = re.compile(r"^<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^={5,9}\s*$")
_REPLACE = re.compile(r"^>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^\s*```[\w+-]*\s*$")
_DIFF_FENCE = re.compile(r"```(?:diff|patch|udiff)?[ \t]*\n(.*?)```", re.DOTALL)
_DIFF_HEADER = re.compile(r"^--- (\S+).*\n\+\+\+ (\S+)", re.MULTILINE)
GIT_TIMEOUT_S = 30


class ParseError(ValueError):
    """The answer holds no edit in a known format."""


class ApplyError(ValueError):
    """Well-formed edits that do not fit the work tree."""


@dataclass(frozen=True)
class Edit:
    path: str
    search: str
    replace: str
    # Every (search, replace) reading of the block, when its code holds a `=======` line too; the first that
    # fits the file is the edit (`search`/`replace` are the first reading).
    readings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Patch:
    """A diff in git format (a/ and b/ prefixes, paths relative to the root) and the files it changes.
    An empty diff is a valid answer that changes nothing."""

    diff: str
    files: tuple[str, ...]
    new_text: dict[str, str]

    @property
    def empty(self) -> bool:
        return not self.diff


def _path_line(lines: list[str], before: int) -> str:
    """The file a block edits: the last line above its SEARCH marker that is not blank or a fence, with the
    decoration models add (`### `, backticks, bold, a trailing colon) taken off."""
    for line in reversed(lines[:before]):
        if line.strip() and not _FENCE.match(line):
            return re.sub(r"^(?:#+\s*|(?:file|path)\s*:\s*)", "", line.strip(), flags=re.I).strip("`*: \t")
    return ""


def parse_edits(answer: str) -> list[Edit]:
    """Search/replace blocks in order; a marker outside a complete block means a block the model broke, which is
    a parse error."""
    lines = answer.splitlines(keepends=True)
    edits: list[Edit] = []
    i = 0
    while i < len(lines):
        if _REPLACE.match(lines[i]):
            raise ParseError("a REPLACE marker without its SEARCH marker: a block is broken")
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if _REPLACE.match(lines[j]) or _SEARCH.match(lines[j])),
                   None)
        if end is None or _SEARCH.match(lines[end]):
            raise ParseError("a SEARCH marker without its REPLACE marker: a block is broken")
        body = lines[i + 1 : end]
        dividers = [k for k, line in enumerate(body) if _DIVIDER.match(line)]
        if not dividers:
            raise ParseError("a search/replace block without its ======= divider")
        readings = tuple(("".join(body[:k]), "".join(body[k + 1 :])) for k in dividers)
        path = _path_line(lines, i)
        if not path:
            raise ParseError("a search/replace block without the file path above it")
        edits.append(Edit(path, *readings[0], readings=readings))
        i = end + 1
    return edits


def parse_diff(answer: str) -> str | None:
    """The unified diff in the answer (fenced first, else bare from its first `--- ` header), or None."""
    for body in [m.group(1) for m in _DIFF_FENCE.finditer(answer)] + [answer]:
        header = _DIFF_HEADER.search(body)
        if header:
            start = body.rfind("\n", 0, header.start()) + 1
            git = body.rfind("diff --git", 0, header.start())
            return body[git if git >= 0 else start :].rstrip() + "\n"
    return None


def _safe(path: str) -> str:
    clean = PurePosixPath(path)
    if clean.is_absolute() or ".." in clean.parts or not clean.parts:
        raise ApplyError(f"{path!r}: not a path inside the repository")
    return clean.as_posix()


def _replace_once(text: str, edit: Edit) -> str:
    """Exact match first; else the same lines with trailing whitespace ignored (a common model slip)."""
    if not edit.search.strip():
        raise ApplyError(f"{edit.path}: empty SEARCH block for an existing file")
    count = text.count(edit.search)
    if count == 1:
        return text.replace(edit.search, edit.replace, 1)
    if count > 1:
        raise ApplyError(f"{edit.path}: SEARCH text occurs {count} times; include more lines to make it unique")
    lines = text.splitlines(keepends=True)
    want = [ln.rstrip() for ln in edit.search.splitlines()]
    hits = [i for i in range(len(lines) - len(want) + 1)
            if [ln.rstrip() for ln in lines[i : i + len(want)]] == want]
    if len(hits) != 1:
        raise ApplyError(f"{edit.path}: SEARCH text not found" if not hits else
                         f"{edit.path}: SEARCH text occurs {len(hits)} times; include more lines")
    i = hits[0]
    replacement = edit.replace if edit.replace.endswith("\n") or not edit.replace else edit.replace + "\n"
    return "".join(lines[:i]) + replacement + "".join(lines[i + len(want) :])


def _diff(root: Path, new_text: dict[str, str]) -> Patch:
    """The git-format diff from the tree's files to `new_text` (files whose text is unchanged are dropped)."""
    parts: list[str] = []
    changed: dict[str, str] = {}
    for path in sorted(new_text):
        old_file = root / path
        old = old_file.read_text(encoding="utf-8") if old_file.is_file() else None
        new = new_text[path]
        if old == new:
            continue
        changed[path] = new
        lines = difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                     "/dev/null" if old is None else f"a/{path}", f"b/{path}")
        body = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
        mode = "new file mode 100644\n" if old is None else ""
        parts.append(f"diff --git a/{path} b/{path}\n{mode}{body}")
    return Patch(diff="".join(parts), files=tuple(changed), new_text=changed)


def edits_to_patch(root: str | Path, edits: list[Edit]) -> Patch:
    """Apply search/replace edits in order to the files' text (an empty SEARCH creates a new file)."""
    root = Path(root)
    texts: dict[str, str] = {}
    for edit in edits:
        path = _safe(edit.path)
        if path not in texts:
            file = root / path
            if not file.is_file():
                if edit.search.strip():
                    raise ApplyError(f"{path}: no such file in the repository")
                texts[path] = edit.replace
                continue
            texts[path] = file.read_text(encoding="utf-8")
        texts[path] = _replace_fitting(texts[path], path, edit.readings or ((edit.search, edit.replace),))
    return _diff(root, texts)


def _replace_fitting(text: str, path: str, readings: tuple[tuple[str, str], ...]) -> str:
    """The first reading of a block whose SEARCH part fits the file; the first reading's error otherwise."""
    first: ApplyError | None = None
    for search, replace in readings:
        try:
            return _replace_once(text, Edit(path, search, replace))
        except ApplyError as err:
            first = first or err
    assert first is not None
    raise first


def diff_to_patch(root: str | Path, diff: str) -> Patch:
    """Apply a model's unified diff to copies of the files it names, then rebuild the diff with difflib.

    `git apply --recount` forgives wrong hunk line counts, `--unidiff-zero` a hunk whose context is cut short
    at one end (git would otherwise pin it to the file's start or end); -p1 for a/ b/ paths, else -p0."""
    root = Path(root)
    headers = _DIFF_HEADER.findall(diff)
    prefixed = all(new.startswith("b/") or new == "/dev/null" for _, new in headers)
    strip = 1 if prefixed else 0
    paths = {_safe(p.split("/", strip)[-1] if strip else p) for pair in headers for p in pair if p != "/dev/null"}
    with tempfile.TemporaryDirectory(prefix="agentq-patch-") as tmp:
        work = Path(tmp)
        for path in paths:
            if (root / path).is_file():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / path, work / path)
        proc = subprocess.run(["git", "apply", "--recount", "--unidiff-zero", "--whitespace=nowarn", f"-p{strip}", "-"],
                              input=diff, text=True, cwd=work, capture_output=True, timeout=GIT_TIMEOUT_S)
        if proc.returncode != 0:
            raise ApplyError(f"the diff does not apply: {proc.stderr.strip().splitlines()[0] if proc.stderr else ''}")
        new_text = {p: (work / p).read_text(encoding="utf-8") for p in paths if (work / p).is_file()}
    return _diff(root, new_text)


def answer_to_patch(root: str | Path, answer: str) -> Patch:
    """Search/replace blocks when the answer has any, else a unified diff; neither is a ParseError."""
    edits = parse_edits(answer)
    if edits:
        return edits_to_patch(root, edits)
    diff = parse_diff(answer)
    if diff is None:
        raise ParseError("no search/replace block and no unified diff in the answer")
    return diff_to_patch(root, diff)


def diff_hunks(diff: str) -> list[tuple[str, str, str]]:
    """(path, old text, new text) of each hunk of a git-format diff, context lines on both sides: the edit that
    turns the old side into the new one (the inverse edit swaps them)."""
    hunks: list[tuple[str, str, str]] = []
    path, old, new = "", [], []
    for line in [*diff.splitlines(keepends=True), "@@\n"]:
        if line.startswith(("@@", "diff --git")) or (line.startswith("+++ ") and not old and not new):
            if old or new:
                hunks.append((path, "".join(old), "".join(new)))
            old, new = [], []
            if line.startswith("+++ "):
                target = line[4:].split("\t")[0].strip()
                path = target.split("/", 1)[1] if target.startswith("b/") else target
        elif line.startswith(("--- ", "\\")):
            continue
        elif line.startswith("+"):
            new.append(line[1:])
        elif line.startswith("-"):
            old.append(line[1:])
        elif line.startswith(" ") or line == "\n":
            old.append(line[1:] if line.startswith(" ") else line)
            new.append(line[1:] if line.startswith(" ") else line)
    return [(p, o, n) for p, o, n in hunks if p]


def search_replace(edits: list[tuple[str, str, str]]) -> str:
    """(path, search, replace) edits written as the SEARCH/REPLACE blocks the repair prompts ask for."""
    return "\n\n".join(f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE"
                        for path, search, replace in edits) + "\n"
