"""A repository patch, parsed and checked before anything touches the tree, then applied here in Python.

Why not `git apply` with GNU `patch` as a fallback, as before: both are tools that read a tree a candidate
writes to. A hunk against `.git/config` that git refused was applied by `patch`, and the trusted side's next
`git status` ran the command it configured (`core.fsmonitor`) as root. So a candidate patch is now only data:

* parsed here (unified or git format) into per-file edits; renames, copies, mode changes, binary patches,
  symlinks (mode 120000) and submodules are refused, as are paths that are absolute, leave the tree, pass
  through a hidden directory (`.git/` among them) or a symlink, or name anything but a regular file;
* held against the task's policy (`RepoPolicy`): a fix edits or adds Python source inside the library's own
  packages (or edits one of its existing top-level modules); edits to test files and pytest configuration are
  dropped (and reported as restored); anything else, such as a new `sitecustomize.py`, `pytest.py` or report
  plugin at the root, a `.pytest.toml`, a `.pth` file or a data file, is refused as the verdict;
* checked for code that reaches past the library into the interpreter (`reach`): a fix that adds dynamic
  attribute access, `exec`/`eval`, imports of the test machinery, frames or the garbage collector, which the
  file did not have before, is refused (the runtime guard in pytest_boot.py backs this up);
* applied by `apply_edits`: each hunk where its context matches, at its line or the nearest offset, then with
  up to FUZZ context lines ignored at either end (GNU patch's fuzz), written with O_NOFOLLOW after the
  checks, all or nothing.

No tool runs on the tree and no configuration is read; `git` is never run on a tree a candidate wrote to.
"""

from __future__ import annotations

import ast
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FUZZ = 3
MAX_PATCH_BYTES = 4 << 20
# Top-level files of a project that are not the library's modules.
NOT_LIBRARY = frozenset({"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "tasks.py", "manage.py"})
# Module names the test run imports (or Python imports at start-up) that a fix must never add anywhere.
RESERVED_NAMES = frozenset({"sitecustomize.py", "usercustomize.py", "conftest.py", "pytest.py", "_pytest.py",
                            "pluggy.py", "agentq_pytest_report.py", "agentq_pytest_boot.py"})
TEST_CONFIG = frozenset({"conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini",
                         "setup.cfg", "pyproject.toml", "noxfile.py"})
TEST_DIRS = frozenset({"tests", "test", "testing"})


class PatchRefused(ValueError):
    """A patch that is not applied at all; the message is the verdict's."""


@dataclass
class Hunk:
    old_start: int
    old: list[str]  # context and removed lines, with their line endings
    new: list[str]  # context and added lines
    lead: int = 0  # context lines before the first change
    trail: int = 0  # context lines after the last change


@dataclass
class FileEdit:
    path: str
    kind: Literal["modify", "create", "delete"]
    hunks: list[Hunk] = field(default_factory=list)


@dataclass
class Applied:
    status: Literal["applied", "fuzzy", "empty"]
    paths: list[str]  # files written or removed
    dropped: list[str]  # test and configuration files the patch touched, left as they were


# --- parsing -----------------------------------------------------------------------------------------------

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_REFUSED_HEADERS = {
    "rename from": "renames", "rename to": "renames", "copy from": "copies", "copy to": "copies",
    "old mode": "mode changes", "new mode": "mode changes", "GIT binary patch": "binary patches",
    "Binary files": "binary patches", "similarity index": "renames", "dissimilarity index": "renames",
}
_SAFE_CHAR = re.compile(r"^[A-Za-z0-9_.\-+/@=,~]+$")


def _strip_prefix(raw: str) -> str | None:
    """`a/pkg/x.py` -> `pkg/x.py` (p1, as git and patch -p1 read it); /dev/null -> None."""
    path = raw.split("\t")[0].strip()
    if path == "/dev/null":
        return None
    if path.startswith('"'):
        raise PatchRefused(f"quoted path {path[:80]!r}: file names with special characters are not a fix")
    return path.split("/", 1)[1] if "/" in path else path


def safe_relative(path: str) -> str:
    """A normalised relative path inside the tree, or PatchRefused: no absolute paths, no `..`, no hidden or
    empty components (`.git/` among them), only ordinary characters."""
    if not path or len(path) > 400 or not _SAFE_CHAR.match(path):
        raise PatchRefused(f"path {path[:80]!r}: only plain relative paths are applied")
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise PatchRefused(f"path {path!r}: absolute, hidden (.git/ and kin) or leaving the tree")
    return path


def parse_patch(patch: str) -> list[FileEdit]:
    """The files a unified or git-format diff edits, with their hunks; PatchRefused for anything else."""
    if len(patch.encode("utf-8", "surrogatepass")) > MAX_PATCH_BYTES:
        raise PatchRefused(f"the patch is larger than {MAX_PATCH_BYTES} bytes")
    lines = patch.splitlines(keepends=True)
    edits: list[FileEdit] = []
    # A git header with no ---/+++ after it: an empty file created or deleted (its mode line says which).
    pending: list[str | None] = [None, None]

    def flush() -> None:
        if pending[0] is not None and pending[1] is not None:
            edits.append(FileEdit(safe_relative(pending[0]), pending[1]))  # type: ignore[arg-type]
        pending[:] = [None, None]

    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r\n")
        if line.startswith("diff --git "):
            flush()
            old_new = line[len("diff --git "):].split(" b/")
            if len(old_new) != 2 or _strip_prefix(old_new[0]) != old_new[1]:
                raise PatchRefused(f"{line[:80]}: a git header naming two paths (a rename or copy)")
            pending[0] = old_new[1]
        for prefix, what in _REFUSED_HEADERS.items():
            if line.startswith(prefix):
                raise PatchRefused(f"the patch has {what} ({line[:80]}); a fix edits files in place")
        if line.startswith(("new file mode ", "deleted file mode ")):
            if line.rsplit(" ", 1)[-1] not in ("100644", "100755"):
                raise PatchRefused(f"{line[:80]}: only regular files (no symlinks, no submodules)")
            pending[1] = "create" if line.startswith("new") else "delete"
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            pending[:] = [None, None]
            old, new = _strip_prefix(line[4:]), _strip_prefix(lines[i + 1][4:].rstrip("\r\n"))
            if old is None and new is None:
                raise PatchRefused("a file diff from /dev/null to /dev/null")
            if old is not None and new is not None and old != new:
                raise PatchRefused(f"{old} -> {new}: renames are not applied; a fix edits files in place")
            path = safe_relative(new if new is not None else old)  # type: ignore[arg-type]
            kind: Literal["modify", "create", "delete"] = "create" if old is None else "delete" if new is None \
                else "modify"
            edit = FileEdit(path, kind)
            i += 2
            while i < len(lines) and lines[i].startswith("@@"):
                hunk, i = _parse_hunk(lines, i, path)
                edit.hunks.append(hunk)
            if not edit.hunks and kind == "modify":
                raise PatchRefused(f"{path}: a file header without hunks")
            edits.append(edit)
            continue
        i += 1
    flush()
    seen = Counter(e.path for e in edits)
    twice = [p for p, n in seen.items() if n > 1]
    if twice:
        raise PatchRefused(f"{twice[0]}: the patch edits the same file twice")
    if not edits and patch.strip():
        raise PatchRefused("no file diff found (expected unified diff headers: --- a/path, +++ b/path, @@ ...)")
    return edits


def _parse_hunk(lines: list[str], i: int, path: str) -> tuple[Hunk, int]:
    match = _HUNK.match(lines[i])
    if not match:
        raise PatchRefused(f"{path}: malformed hunk header {lines[i][:80]!r}")
    old_count = 1 if match[2] is None else int(match[2])
    new_count = 1 if match[4] is None else int(match[4])
    hunk = Hunk(int(match[1]), [], [])
    i += 1
    seen_change, trailing = False, 0
    while old_count > 0 or new_count > 0:
        if i >= len(lines):
            raise PatchRefused(f"{path}: a hunk ends before its line counts say")
        raw = lines[i]
        tag, text = (raw[0], raw[1:]) if raw not in ("\n", "\r\n") else (" ", raw)
        if tag == "\\":  # "\ No newline at end of file" belongs to the line before
            i += 1
            continue
        if tag == " ":
            hunk.old.append(text)
            hunk.new.append(text)
            old_count, new_count = old_count - 1, new_count - 1
            if seen_change:
                trailing += 1
            else:
                hunk.lead += 1
        elif tag == "-":
            hunk.old.append(text)
            old_count -= 1
            seen_change, trailing = True, 0
        elif tag == "+":
            hunk.new.append(text)
            new_count -= 1
            seen_change, trailing = True, 0
        else:
            raise PatchRefused(f"{path}: unexpected line in a hunk: {raw[:80]!r}")
        if old_count < 0 or new_count < 0:
            raise PatchRefused(f"{path}: a hunk has more lines than its header says")
        i += 1
        while i < len(lines) and lines[i].startswith("\\"):
            _strip_newline(hunk, lines[i - 1][0])
            i += 1
    hunk.trail = trailing if seen_change else 0
    return hunk, i


def _strip_newline(hunk: Hunk, tag: str) -> None:
    """`\\ No newline at end of file` after a line: that line has no line ending on its side(s)."""
    sides = {" ": (hunk.old, hunk.new), "-": (hunk.old,), "+": (hunk.new,)}.get(tag, ())
    for side in sides:
        if side:
            side[-1] = side[-1].rstrip("\r\n")


# --- what a repository fix may touch ------------------------------------------------------------------------

def is_test_path(path: str, test_target: Iterable[str] = ()) -> bool:
    """A path a candidate patch may not change: under a test directory, a test module, or pytest config."""
    name = path.rsplit("/", 1)[-1]
    if name in TEST_CONFIG or name.startswith("test_") or name.endswith("_test.py"):
        return True
    if any(p in TEST_DIRS for p in path.split("/")[:-1]):
        return True
    return any(path == t.rstrip("/") or path.startswith(t.rstrip("/") + "/") for t in test_target if t != ".")


@dataclass(frozen=True)
class RepoPolicy:
    """What a fix of this repository may touch: `.py` files inside its packages (directories with an
    `__init__.py` under an import root, as the pristine tree has them) and its existing top-level modules.

    One more kind of file: a new top-level test file that the run itself names (an honest search runs the
    agent's own reproduction test, `reproduce_issue.py::test_x`, and nothing else). A task's tests always name
    files the pristine tree has, so a run judged by them never admits a new file this way."""

    roots: tuple[str, ...]  # import roots ("src", ".")
    packages: frozenset[str]  # package directories, relative to the tree
    modules: frozenset[str]  # existing top-level modules of an import root
    test_target: tuple[str, ...] = ()
    own_tests: frozenset[str] = frozenset()  # new top-level files the run's test ids name

    @classmethod
    def of(cls, tree: Path, test_target: Iterable[str] = (), run_tests: Iterable[str] = ()) -> RepoPolicy:
        roots = ("src", ".") if (tree / "src").is_dir() else (".",)
        packages, modules = set(), set()
        for root in roots:
            base = tree / root
            for entry in sorted(base.iterdir()) if base.is_dir() else []:
                rel = str(entry.relative_to(tree))
                if entry.name.startswith(".") or entry.is_symlink() or is_test_path(rel, test_target):
                    continue
                if entry.is_file() and entry.suffix == ".py" and entry.name not in NOT_LIBRARY:
                    modules.add(rel)
                elif entry.is_dir() and (entry / "__init__.py").is_file() and entry.name not in TEST_DIRS:
                    packages.add(rel)
        files = {t.split("::", 1)[0] for t in run_tests}
        own = {f for f in files if "/" not in f and f.endswith(".py") and not (tree / f).exists()}
        return cls(roots, frozenset(packages), frozenset(modules), tuple(test_target), frozenset(own))

    def why_not(self, path: str) -> str | None:
        """None when a fix may write `path`, else why not (a test path is for `is_test_path`, not this)."""
        name = path.rsplit("/", 1)[-1]
        if not name.endswith(".py"):
            return f"{path}: a fix changes Python source only (.py files of the library)"
        if name in RESERVED_NAMES:
            return f"{path}: a module of that name would be imported by the test run or by Python itself"
        if path in self.modules or path in self.own_tests:
            return None
        if any(path.startswith(pkg + "/") for pkg in self.packages):
            return None
        return f"{path}: outside the library's packages ({', '.join(sorted(self.packages | self.modules)) or 'none'})"


# --- code that reaches past the library --------------------------------------------------------------------

# Attribute and name lookups an honest repair does not need and a forgery does: frames, code objects, module and
# function internals, the interpreter's import machinery, dynamic code.
_REACH_ATTRS = frozenset({
    "__dict__", "__globals__", "__code__", "__closure__", "__builtins__", "__import__", "__subclasses__",
    "__bases__", "__mro__", "__getattribute__", "__self__", "__func__", "__wrapped__", "f_back", "f_globals",
    "f_locals", "f_builtins", "f_code", "tb_frame", "gi_frame", "cr_frame", "ag_frame", "co_code", "modules",
    "meta_path", "path_hooks", "path_importer_cache", "_getframe", "_current_frames", "settrace", "setprofile",
    "addaudithook", "get_objects", "get_referrers", "get_referents",
})
_REACH_NAMES = frozenset({"exec", "eval", "compile", "globals", "vars", "locals", "breakpoint", "__import__",
                          "__builtins__", "attrgetter", "methodcaller"})
_REACH_MODULES = frozenset({"ctypes", "_ctypes", "gc", "inspect", "importlib", "builtins", "pytest", "_pytest",
                            "pluggy", "agentq", "agentq_pytest_report", "agentq_pytest_boot", "pickle", "marshal",
                            "copyreg", "shelve", "dill", "mmap", "code", "codeop", "runpy", "pdb", "bdb"})
_REACH_TEXT = re.compile("|".join([r"pytest", r"pluggy", r"agentq", r"AGENTQ", r"/proc/",
                                   *(re.escape(a) for a in sorted(_REACH_ATTRS) if a.startswith("__"))]))


def reach(source: str) -> Counter[str]:
    """How often `source` reaches past its own library (by kind); a parse failure counts as one."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Counter({"unparsable": 1})
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _REACH_ATTRS:
            found[f".{node.attr}"] += 1
        elif isinstance(node, ast.Name) and node.id in _REACH_NAMES:
            found[node.id] += 1
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in _REACH_MODULES:
                    found[f"import {module.split('.')[0]}"] += 1
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "delattr") and len(node.args) >= 2 and \
                not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                     and not node.args[1].value.startswith("__")):
            found[f"{node.func.id} with a computed name"] += 1
        elif isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
            text = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
            for hit in _REACH_TEXT.findall(text):
                found[f"text {hit!r}"] += 1
    return found


def new_reach(before: str, after: str) -> list[str]:
    """What `after` reaches for more often than `before` did (an edit keeps what the file already had)."""
    more = reach(after) - reach(before)
    return sorted(more)


# --- applying ------------------------------------------------------------------------------------------------

def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _check_target(root: Path, edit: FileEdit) -> None:
    """Every directory on the way is a real directory inside the tree; the file is regular (or absent)."""
    current = root
    for part in edit.path.split("/")[:-1]:
        current = current / part
        st = _lstat(current)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise PatchRefused(f"{edit.path}: {current.relative_to(root)} is not a directory (a link or a file)")
    st = _lstat(root / edit.path)
    if edit.kind == "create":
        if st is not None:
            raise PatchRefused(f"{edit.path}: the patch creates a file that exists")
    elif st is None:
        raise PatchRefused(f"{edit.path}: no such file in the tree")
    elif not stat.S_ISREG(st.st_mode):
        raise PatchRefused(f"{edit.path}: not a regular file (a link, a device or a FIFO)")


def _read(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        return fh.read().decode("utf-8", "surrogateescape")


def _write(root: Path, rel: str, text: str) -> None:
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        if _lstat(current) is None:
            os.mkdir(current, 0o755)
    fd = os.open(root / rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode("utf-8", "surrogateescape"))


def _find(lines: list[str], old: list[str], want: int, start: int) -> int | None:
    """Where `old` occurs at or after `start`, nearest to `want` first."""
    if not old:
        return max(start, min(want, len(lines)))
    last = len(lines) - len(old)
    if last < start:
        return None
    want = min(max(want, start), last)
    for distance in range(max(want - start, last - want) + 1):
        for at in (want - distance, want + distance) if distance else (want,):
            if start <= at <= last and lines[at : at + len(old)] == old:
                return at
    return None


def apply_hunks(text: str, hunks: list[Hunk], path: str) -> tuple[str, bool]:
    """`text` with every hunk applied (and whether fuzz was needed), or PatchRefused naming the hunk.

    As GNU patch does: a hunk goes where its old lines are, nearest to its line number shifted by what the hunks
    before it moved; failing that, with up to FUZZ context lines dropped at either end."""
    lines = text.splitlines(keepends=True)
    offset, start, fuzzy = 0, 0, False
    for number, hunk in enumerate(hunks, 1):
        want = hunk.old_start - 1 + offset if hunk.old else hunk.old_start + offset
        for fuzz in range(FUZZ + 1):
            cut_lead, cut_trail = min(fuzz, hunk.lead), min(fuzz, hunk.trail)
            if fuzz and not (cut_lead or cut_trail):
                break  # no context left to drop
            old = hunk.old[cut_lead : len(hunk.old) - cut_trail]
            at = _find(lines, old, want + cut_lead, start)
            if at is not None:
                fuzzy |= fuzz > 0
                break
        if at is None:
            raise PatchRefused(f"{path}: hunk {number} does not match the file (context or removed lines differ)")
        new = hunk.new[cut_lead : len(hunk.new) - cut_trail]
        lines[at : at + len(old)] = new
        offset += (at - (want + cut_lead)) + len(new) - len(old)
        start = at + len(new)
    return "".join(lines), fuzzy


def plan(root: Path, edits: list[FileEdit]) -> tuple[dict[str, str | None], bool]:
    """The new text of every file the edits touch (None: removed), all computed before anything is written,
    and whether any hunk needed fuzz."""
    out: dict[str, str | None] = {}
    fuzzy = False
    for edit in edits:
        _check_target(root, edit)
        before = "" if edit.kind == "create" else _read(root / edit.path)
        after, fuzzed = apply_hunks(before, edit.hunks, edit.path)
        fuzzy |= fuzzed
        if edit.kind == "delete":
            if after.strip():
                raise PatchRefused(f"{edit.path}: the patch deletes the file but its hunks leave text in it")
            out[edit.path] = None
        else:
            out[edit.path] = after
    return out, fuzzy


def apply_edits(root: Path, edits: list[FileEdit]) -> Applied:
    """Apply checked edits: all of them or none (PatchRefused says which hunk failed)."""
    if not edits:
        return Applied("empty", [], [])
    texts, fuzzy = plan(root, edits)
    for rel, text in texts.items():
        if text is None:
            os.unlink(root / rel)
        else:
            _write(root, rel, text)
    return Applied("fuzzy" if fuzzy else "applied", list(texts), [])
