"""A repository as localisation sees it: its Python files, their module names and the import graph.

Candidates are the files a fix may touch: every `.py` file outside the test directories (a failure report's
bug lives in the code under test). Test files stay in the graph, because the failing tests' imports are
evidence (`graph.import_prior`).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

# Directories that never hold the code under test.
SKIP_DIRS = frozenset({".git", ".hg", ".tox", ".nox", ".venv", "venv", "build", "dist", "__pycache__", "node_modules",
                       ".eggs", "docs", "doc", "examples", "benchmarks", "scripts"})
MAX_FILE_BYTES = 1_000_000


def is_test_path(path: str) -> bool:
    """`tests/...`, `.../test/...`, `test_x.py`, `x_test.py`, `conftest.py`."""
    parts = path.split("/")
    name = parts[-1]
    return (any(p in ("test", "tests", "testing") for p in parts[:-1]) or name.startswith("test_")
            or name.endswith("_test.py") or name == "conftest.py")


def module_name(path: str, files: dict[str, str]) -> str:
    """The dotted name a file is imported as: its package chain up to the first directory without an
    `__init__.py` (`src/pkg/sub/mod.py` -> `pkg.sub.mod`, `tests/test_x.py` -> `test_x`)."""
    parts = path[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    start = len(parts) - 1
    while start > 0 and "/".join(parts[:start]) + "/__init__.py" in files:
        start -= 1
    return ".".join(parts[start:])


def _statements(nodes: list[ast.AST]) -> Iterator[ast.AST]:
    """Every statement, nested ones too (under def, class, if, try, with, match...), without walking into
    expressions: imports are statements, and a full `ast.walk` of a large tree costs several times its parse."""
    for node in nodes:
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, name, None) or [])


def _imports(package: list[str], tree: ast.AST) -> list[tuple[str, str | None]]:
    """(absolute module, imported name or None) for each import; `package` is the importing file's package
    as module parts (what relative imports count from)."""
    out: list[tuple[str, str | None]] = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            out.extend((module, a.name) for a in node.names if module and a.name != "*")
            if module and any(a.name == "*" for a in node.names):
                out.append((module, None))
    return out


@dataclass
class Repository:
    """Files (path -> text, paths relative to the root with `/`), candidates and the import graph."""

    root: Path
    files: dict[str, str]
    graph: nx.DiGraph = field(repr=False)

    @property
    def candidates(self) -> list[str]:
        return [p for p in self.files if not is_test_path(p)]

    @classmethod
    def scan(cls, root: str | Path) -> Repository:
        root = Path(root)
        files: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                full = Path(dirpath, name)
                if name.endswith(".py") and full.stat().st_size <= MAX_FILE_BYTES:
                    files[full.relative_to(root).as_posix()] = full.read_text(encoding="utf-8", errors="replace")
        return cls(root=root, files=files, graph=import_graph(files))


def import_graph(files: dict[str, str]) -> nx.DiGraph:
    """Edge a -> b when file a imports module b, resolved against the repository's own files only.

    `from pkg import name` goes to `pkg/name.py` when that is a module, else to the file `pkg/__init__.py`
    re-exports `name` from (followed through up to three re-exports), else to `pkg/__init__.py` itself: tests
    mostly import from a package's top, and the file that defines the name is the evidence."""
    by_module: dict[str, str] = {}
    for path in sorted(files, key=lambda p: p.count("/")):
        by_module.setdefault(module_name(path, files), path)
    imports: dict[str, list[tuple[str, str | None]]] = {}
    for path, text in files.items():
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        parts = module_name(path, files).split(".")
        imports[path] = _imports(parts if path.endswith("__init__.py") else parts[:-1], tree)
    # name -> the file a module's `from x import name` takes it from (its re-exports)
    reexports = {path: {name: by_module[module] for module, name in pairs if name and module in by_module}
                 for path, pairs in imports.items()}

    def resolve(module: str, name: str | None) -> str | None:
        if name and f"{module}.{name}" in by_module:
            return by_module[f"{module}.{name}"]
        target = by_module.get(module)
        for _ in range(3):
            source = reexports.get(target, {}).get(name) if target and name else None
            if source is None or source == target:
                break
            target = source
        return target

    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for path, pairs in imports.items():
        for module, name in pairs:
            target = resolve(module, name)
            if target and target != path:
                graph.add_edge(path, target)
    return graph
