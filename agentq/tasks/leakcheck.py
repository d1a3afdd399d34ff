"""Near-duplicate detection between tasks, so no problem sits on both sides of a train/test split.

`group` is the corpus's own idea of problem identity, but the same problem can hide under two groups
(two slugs for one LeetCode problem, a reference pasted into another data set). Two fingerprints catch
what group names miss:

* the reference with comments, docstrings and layout removed and every function's local names
  (parameters, assigned names, loop and comprehension variables) renamed in order of first use, so
  renaming `nums` to `arr` or re-indenting does not hide a copy;
* the description lowercased with example blocks, punctuation and whitespace removed.

`merge_groups` joins every group linked by a shared fingerprint (union-find), so a split over the merged
groups cannot leak; `find_leaks` is the independent check run on the split that is about to be written.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from agentq.tasks.schema import Task

MIN_DESCRIPTION_CHARS = 30  # shorter texts ("Fix bugs in f.") say too little to identify a problem
_EXAMPLE_HEADER = re.compile(r"^\s*(?:example\s*\d*\s*:|for example\b)", re.IGNORECASE)
_DOCTEST = re.compile(r"^\s*>>>")


def _docstring_free(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return body[1:] or [ast.Pass()]
    return body


class _Canonical(ast.NodeTransformer):
    """Docstrings and annotations out; in each top-level function or method, local names become `_v0`, ..."""

    def __init__(self) -> None:
        self.names: dict[str, str] | None = None

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> ast.AST:
        outer = self.names is None
        if outer:
            self.names = {}
            declared = {n for sub in ast.walk(node) if isinstance(sub, ast.Global | ast.Nonlocal) for n in sub.names}
            for sub in _preorder(node):
                bound = _bound_name(sub) if sub is not node else None
                if bound and bound not in declared and bound not in self.names:
                    self.names[bound] = f"_v{len(self.names)}"
        if not isinstance(node, ast.Lambda):
            node.body = _docstring_free(node.body)
            node.returns = None  # type hints do not change what a program does
        self.generic_visit(node)
        if outer:
            self.names = None
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = _docstring_free(node.body)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if self.names and node.id in self.names:
            node.id = self.names[node.id]
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        if self.names and node.arg in self.names:
            node.arg = self.names[node.arg]
        node.annotation = None
        return node


def _preorder(node: ast.AST):
    """Depth-first, source order (ast.walk is breadth-first): "first use" means reading order."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _preorder(child)


def _bound_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.arg):
        return node.arg
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
        return node.id
    if isinstance(node, ast.ExceptHandler):
        return node.name
    return None


def normalise_code(code: str) -> str:
    """Canonical text of a program; code that does not parse is normalised by whitespace only."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return " ".join(code.split())
    tree.body = _docstring_free(tree.body)
    return ast.unparse(_Canonical().visit(tree))


def normalise_description(text: str) -> str:
    """Lowercase letters and digits only, with `Example n:` blocks (to the next blank line) and doctests cut."""
    kept, in_example = [], False
    for line in text.splitlines():
        if _EXAMPLE_HEADER.match(line):
            in_example = True
        elif not line.strip():
            in_example = False
        if not in_example and not _DOCTEST.match(line):
            kept.append(line)
    return re.sub(r"[^a-z0-9]", "", "\n".join(kept).lower())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprints(task: Task) -> list[str]:
    """`code:<hash>` of the reference (if any) and `text:<hash>` of a long enough description."""
    prints = []
    if task.reference_code:
        prints.append(f"code:{_digest(normalise_code(task.reference_code))}")
    text = normalise_description(task.description)
    if len(text) >= MIN_DESCRIPTION_CHARS:
        prints.append(f"text:{_digest(text)}")
    return prints


def merge_groups(tasks: list[Task]) -> dict[str, str]:
    """group -> the group it is merged into: the smallest name among all groups linked by a fingerprint."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    owner: dict[str, str] = {}
    for task in tasks:
        find(task.group)
        for fp in fingerprints(task):
            union(owner.setdefault(fp, task.group), task.group)
    return {group: find(group) for group in parent}


_KINDS = {"group": "group", "code": "normalised reference", "text": "normalised description"}


@dataclass(frozen=True)
class Leak:
    train_id: str
    test_id: str
    kind: str  # "group", "code" or "text"
    group: str  # the test task's group

    def __str__(self) -> str:
        what = f"group {self.group!r}" if self.kind == "group" else f"a {_KINDS[self.kind]}"
        return f"{self.train_id} (train) and {self.test_id} (test) share {what}"


def find_leaks(train: list[Task], test: list[Task]) -> list[Leak]:
    """For each test task and each kind of identity it shares with the train side, one train task sharing it."""
    seen: dict[str, Task] = {}
    for task in train:
        for key in [f"group:{task.group}", *fingerprints(task)]:
            seen.setdefault(key, task)
    return [
        Leak(seen[key].id, task.id, key.split(":", 1)[0], task.group)
        for task in test
        for key in [f"group:{task.group}", *fingerprints(task)]
        if key in seen
    ]


def overlap_report(train: list[Task], test: list[Task], leaks: list[Leak]) -> str:
    """The line `tasks split` and `tasks build` print; every count must be 0."""
    counts = Counter(leak.kind for leak in leaks)
    found = ", ".join(f"{counts[kind]} sharing a {name}" for kind, name in _KINDS.items())
    return f"overlap check: {len(train)} train vs {len(test)} test tasks: {found}"
