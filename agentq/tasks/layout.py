"""Where a library's code and its pytest suite live, read the way pytest itself finds them.

Three layouts the builder must read, each seen in the wild: a package (or several) at the top of the tree or
under `src/`, a single top-level module (`xmltodict.py` beside `tests/`), and a suite that pytest finds only
through its configuration (`testpaths` naming the folders, `python_files` naming the modules, e.g.
`check_*.py`). The configuration is the file pytest would read first (pytest.ini, .pytest.ini, pyproject.toml,
tox.ini, setup.cfg, with the section each one uses); without `testpaths` the suite is a top-level tests/,
test/ or testing/ folder, else test folders inside the packages, else test modules beside the code.
"""

from __future__ import annotations

import configparser
import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agentq.sandbox.repo import is_test_path, python_path

TEST_DIRS = ("tests", "test", "testing")
SKIP_DIRS = {"docs", "doc", "examples", "example", "benchmarks", "bench", "scripts", "tools", "build", ".git",
             ".tox", ".nox", ".venv", "venv", "__pycache__"}
DEFAULT_PYTHON_FILES = ("test_*.py", "*_test.py")
# Top-level modules that are never the library: packaging, task runners, test configuration.
NOT_LIBRARY = {"setup.py", "conftest.py", "noxfile.py", "fabfile.py", "tasks.py", "manage.py", "runtests.py",
               "run_tests.py", "dodo.py", "pavement.py"}


class LibraryRejected(ValueError):
    """A library that cannot yield tasks; the message is the one-line reason."""


@dataclass(frozen=True)
class Layout:
    roots: tuple[str, ...]  # import roots inside the tree (`src` first for a src layout, then `.`)
    test_target: tuple[str, ...]  # what pytest is given: folders end in `/`, modules are paths
    python_files: tuple[str, ...]
    config: str | None  # the pytest configuration file that set testpaths/python_files, if any

    def is_test_file(self, rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]
        return (is_test_path(rel, list(self.test_target)) or name == "conftest.py"
                or any(fnmatch.fnmatch(name, p) for p in self.python_files))

    def source_files(self, tree: Path) -> list[str]:
        """The library's own modules: `.py` files under its import roots, not tests, docs, examples or
        packaging; a top-level module counts (a single-module library is one)."""
        files = []
        for root in self.roots:
            base = tree / root
            for path in sorted(base.rglob("*.py")):
                rel = path.relative_to(tree).as_posix()
                parts = path.relative_to(base).parts
                if len(parts) == 1 and (parts[0] in NOT_LIBRARY or root != "." and parts[0] == "__main__.py"):
                    continue
                if set(parts[:-1]) & SKIP_DIRS or ".dist-info" in rel or any(p.startswith(".") for p in parts):
                    continue
                if not self.is_test_file(rel):
                    files.append(rel)
        return list(dict.fromkeys(files))


def _words(value: object) -> list[str]:
    """An ini value (whitespace-separated, possibly over several lines) or a TOML string/list, as a list."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def pytest_config(tree: Path) -> tuple[str | None, dict[str, list[str]]]:
    """(file, {testpaths, python_files}) from the configuration pytest would use, the first that has its section."""
    for name, section in (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", None),
                          ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        path = tree / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if section is None:
            try:
                tool = tomllib.loads(text).get("tool", {}).get("pytest")
            except tomllib.TOMLDecodeError:
                continue
            if not isinstance(tool, dict):
                continue
            options = tool.get("ini_options", tool)
            return name, {k: _words(options.get(k)) for k in ("testpaths", "python_files")}
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(text)
        except configparser.Error:
            continue
        if parser.has_section(section) or (name.endswith("pytest.ini")):
            options = parser[section] if parser.has_section(section) else {}
            return name, {k: _words(options.get(k, "")) for k in ("testpaths", "python_files")}
    return None, {"testpaths": [], "python_files": []}


def _holds_library(folder: Path, patterns: tuple[str, ...]) -> bool:
    """Whether a folder holds library code besides tests (a package named as a test path): a module that is not
    a test, conftest or empty `__init__.py`, outside its test folders."""
    for path in folder.rglob("*.py"):
        if set(path.relative_to(folder).parts[:-1]) & set(TEST_DIRS) or path.name == "conftest.py":
            continue
        if any(fnmatch.fnmatch(path.name, pat) for pat in patterns):
            continue
        if path.name != "__init__.py" or path.read_text(encoding="utf-8", errors="replace").strip():
            return True
    return False


def detect(tree: Path) -> Layout:
    """The layout of an unpacked library, or LibraryRejected saying what was looked for."""
    config, options = pytest_config(tree)
    patterns = tuple(options["python_files"]) or DEFAULT_PYTHON_FILES
    roots = tuple(python_path(tree))

    def has_tests(d: Path) -> bool:
        return any(fnmatch.fnmatch(p.name, pat) for p in d.rglob("*.py") for pat in patterns)

    declared = [p.strip("/") for p in options["testpaths"] if (tree / p).exists()]
    if declared:
        target: list[str] = []
        for path in declared:
            if not (tree / path).is_dir():
                target.append(path)
            elif _holds_library(tree / path, patterns):
                # `testpaths = toolz`: the package itself; its test folders are the suite, the rest is code
                target += sorted({p.parent.relative_to(tree).as_posix() + "/" for p in (tree / path).rglob("*.py")
                                  if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)})
            else:
                target.append(f"{path}/")
        if target:
            return Layout(roots, tuple(dict.fromkeys(target)), patterns, config)
    for name in TEST_DIRS:
        if (tree / name).is_dir() and has_tests(tree / name):
            return Layout(roots, (f"{name}/",), patterns, config)
    inside = sorted({d.relative_to(tree).as_posix() + "/" for root in roots for name in TEST_DIRS
                     for d in (tree / root).glob(f"*/{name}") if d.is_dir() and has_tests(d)})
    if inside:
        return Layout(roots, tuple(inside), patterns, config)
    beside = sorted({p.relative_to(tree).as_posix() for root in roots for p in (tree / root).glob("**/*.py")
                     if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
                     and not set(p.relative_to(tree).parts[:-1]) & SKIP_DIRS})
    if beside:
        return Layout(roots, tuple(beside), patterns, config)
    where = f"{config}: testpaths {options['testpaths']} not found; " if options["testpaths"] else ""
    raise LibraryRejected(f"no pytest suite found ({where}no tests/, test/ or testing/ folder, no test folder "
                          f"inside a package, no module matching {' '.join(patterns)})")
