"""Localisation tasks: a report, failing test ids and gold files, from a repo-task JSONL or synthesised.

Repo tasks (the tasks JSONL contract: `kind: repo`, `repo.sdist`, `bug_patch`, `fail_to_pass`, `issue`) give
gold files as the files their `bug_patch` touches. Until such a corpus exists, `synthetic_tasks` makes one
from a pristine source tree without running any test: a random function of a random source file that some
test file imports; the report is what a repo task's report looks like (the failing test ids and a first
error line) with the test ids of tests in the test files importing that module, and an error line naming the
function. It is easier than a real report (the function's name is given) and says so wherever it is used.
"""

from __future__ import annotations

import ast
import random
import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from agentq.io import read_jsonl
from agentq.localize.repo import Repository, is_test_path

_DIFF_FILE = re.compile(r"^\+\+\+ b/(\S+)|^--- a/(\S+)", re.M)
ERRORS = ("AssertionError: assert {f}(...) == expected", "TypeError: {f}() returned an unexpected value",
          "AssertionError: wrong result from {f}", "ValueError: raised inside {f}")


@dataclass(frozen=True)
class LocTask:
    task_id: str
    group: str
    repo: str  # the sdist file name or the repository directory
    issue: str
    test_ids: tuple[str, ...]
    gold: tuple[str, ...]


def patch_files(diff: str) -> list[str]:
    """The files a unified diff touches (b/ side, else a/ side), once each in order."""
    out: list[str] = []
    for new, old in _DIFF_FILE.findall(diff):
        path = new or old
        if path != "/dev/null" and path not in out:
            out.append(path)
    return out


def read_repo_tasks(path: str | Path) -> list[LocTask]:
    """Localisation view of a repo-task JSONL (function tasks in the same file are skipped)."""
    tasks = []
    for lineno, rec in enumerate(read_jsonl(path), 1):
        if rec.get("kind") != "repo":
            continue
        try:
            tasks.append(LocTask(task_id=rec["task_id"], group=rec["group"], repo=rec["repo"]["sdist"],
                                 issue=rec["issue"], test_ids=tuple(rec["fail_to_pass"]),
                                 gold=tuple(patch_files(rec["bug_patch"]))))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: line {lineno}: repo task lacks field {err}") from None
    return tasks


def unpack_sdist(sdist: Path, cache: Path) -> Path:
    """The sdist's top directory under `cache` (as `cache/<file stem>`), unpacked once (safe extraction: the
    `data` filter)."""
    name = sdist.name.removesuffix(".tar.gz")
    target = cache / name
    if not target.is_dir():
        tmp = cache / f".{name}.partial"
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        # An sdist's top directory is usually its file name's stem; some older ones differ in case or spelling.
        tops = [tmp / name] if (tmp / name).is_dir() else [p for p in tmp.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise ValueError(f"{sdist.name}: expected one top directory, found {len(tops)}")
        tops[0].rename(target)
        shutil.rmtree(tmp)
    return target


def _functions(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    return sorted({n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                   })


def _test_names(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            names.append(node.name)
        elif isinstance(node, ast.ClassDef) and "Test" in node.name:
            names += [f"{node.name}::{m.name}" for m in node.body
                      if isinstance(m, ast.FunctionDef) and m.name.startswith("test")]
    return names


def synthetic_tasks(repo: Repository, group: str, source: str, n: int, seed: int = 0) -> list[LocTask]:
    """Up to n tasks on distinct (file, function) pairs, each with 1-3 failing test ids."""
    rng = random.Random(f"{seed}:{group}")
    importers: dict[str, list[str]] = {}
    for test in (p for p in repo.files if is_test_path(p)):
        for target in repo.graph.successors(test):
            importers.setdefault(target, []).append(test)
    sites = [(path, fn) for path in repo.candidates if path in importers for fn in _functions(repo.files[path])]
    rng.shuffle(sites)
    tasks = []
    for path, fn in sites[:n]:
        test_file = rng.choice(sorted(importers[path]))
        names = _test_names(repo.files[test_file])
        if not names:
            continue
        # Prefer tests that mention the function, as a failing test usually would.
        mentioning = [t for t in names if fn in t] or names
        ids = tuple(f"{test_file}::{t}" for t in rng.sample(mentioning, min(len(mentioning), rng.randint(1, 3))))
        error = rng.choice(ERRORS).format(f=fn)
        issue = "\n".join(f"FAILED {t} - {error}" for t in ids)
        tasks.append(LocTask(task_id=f"{group}__synthetic__{path}:{fn}", group=group, repo=source, issue=issue,
                             test_ids=ids, gold=(path,)))
    return tasks
