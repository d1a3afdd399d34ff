"""SWE-bench instances: the Lite file's 12-field rows and the newer (swebench v5) rows that also carry the
instance's `image`, `eval_script`, `log_parser` and `eval_type`.

Here they load, validate and become repo tasks (`repo: {git_url, commit}`: the base commit is the buggy tree,
so `bug_patch` is empty; the gold patch, its files and what a grader needs to rebuild the row are kept in
metadata). Their candidate patches run only in the instance images, as Kubernetes Jobs graded by the
`swebench` package (controller/swebench.py, reached through `sandbox.swebenchUrl`). Prompts still need the
code at the base commit: `GitTrees` reads it from a local mirror of the repository (`git clone --mirror`,
kept under the data folder's git/ as `<owner>__<name>.git`), never from the network.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from agentq.sandbox.repo import git
from agentq.tasks.schema import RepoRef, RepoTask

FIELDS = ("repo", "instance_id", "base_commit", "patch", "test_patch", "problem_statement", "hints_text",
          "created_at", "version", "FAIL_TO_PASS", "PASS_TO_PASS", "environment_setup_commit")
RUN_FIELDS = ("image", "eval_script", "log_parser", "eval_type")  # v5 rows: what a cluster run needs


class SwebenchError(ValueError):
    """A bad row: the message names the file, the row and the field."""


def _tests(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise SwebenchError(f"{where}: expected a JSON-encoded list of test ids") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise SwebenchError(f"{where}: expected a list of test ids")
    return value


def patch_files(patch: str) -> list[str]:
    """The files a git diff touches (its `diff --git a/X b/X` lines)."""
    return list(dict.fromkeys(line.split()[2][2:] for line in patch.splitlines() if line.startswith("diff --git ")))


def load_instances(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a SWE-bench JSON list (or JSONL), checked; the two test lists decoded to lists."""
    path = Path(path)
    text = path.read_text()
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x]
    except ValueError as err:
        raise SwebenchError(f"{path}: not JSON or JSONL ({err})") from None
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(row, dict):
            raise SwebenchError(f"{where}: expected an object")
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise SwebenchError(f"{where} ({row.get('instance_id', '?')}): missing field(s) {', '.join(missing)}")
        where = f"{path}: {row['instance_id']}"
        if row["instance_id"] in seen:
            raise SwebenchError(f"{where}: duplicate instance_id")
        seen.add(row["instance_id"])
        out.append({**row, "FAIL_TO_PASS": _tests(row["FAIL_TO_PASS"], f"{where}: field FAIL_TO_PASS"),
                    "PASS_TO_PASS": _tests(row["PASS_TO_PASS"], f"{where}: field PASS_TO_PASS")})
    return out


def runnable(instance: dict[str, Any]) -> list[str]:
    """The run fields this row lacks (empty: a cluster can run it as it is)."""
    return [f for f in RUN_FIELDS if not instance.get(f)]


def to_repo_task(instance: dict[str, Any]) -> RepoTask:
    extra = {f: instance[f] for f in RUN_FIELDS if instance.get(f)}
    return RepoTask(
        task_id=instance["instance_id"], group=instance["repo"],
        repo=RepoRef(git_url=f"https://github.com/{instance['repo']}.git", commit=instance["base_commit"],
                     name=instance["repo"], version=instance["version"]),
        bug_patch="", fail_to_pass=instance["FAIL_TO_PASS"], pass_to_pass=instance["PASS_TO_PASS"],
        issue=instance["problem_statement"], test_target=patch_files(instance["test_patch"]),
        metadata={"source": "swe-bench", "gold_patch": instance["patch"], "gold_files": patch_files(instance["patch"]),
                  "test_patch": instance["test_patch"], "version": instance["version"],
                  "environment_setup_commit": instance["environment_setup_commit"],
                  "created_at": instance["created_at"], **extra},
    )


def instance_row(task: dict[str, Any]) -> dict[str, Any]:
    """The SWE-bench row a repo task was made from (`to_repo_task` inverted): what the grader and the instance's
    evaluation script are built from."""
    meta = task.get("metadata", {})
    if meta.get("source") != "swe-bench":
        raise SwebenchError(f"task {task.get('task_id')}: not a SWE-bench task (metadata.source)")
    row = {"repo": task["group"], "instance_id": task["task_id"], "base_commit": task["repo"]["commit"],
           "patch": meta.get("gold_patch", ""), "test_patch": meta.get("test_patch", ""),
           "problem_statement": task["issue"], "hints_text": "", "created_at": meta.get("created_at", ""),
           "version": meta.get("version", ""), "FAIL_TO_PASS": task["fail_to_pass"],
           "PASS_TO_PASS": task.get("pass_to_pass", []),
           "environment_setup_commit": meta.get("environment_setup_commit", "")}
    return {**row, **{f: meta[f] for f in RUN_FIELDS if meta.get(f)}}


class GitTrees:
    """Trees of git-sourced tasks at their commit, from local mirrors under `root` (`<owner>__<name>.git`, bare
    or not, or `<owner>__<name>/`), unpacked once into `cache` as a git repository at a `base` commit (what the
    patch reader and localisation expect of a pristine tree). Nothing is fetched."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root, self.cache = Path(root), Path(cache)

    def mirror(self, name: str) -> Path:
        slug = name.replace("/", "__")
        for candidate in (self.root / f"{slug}.git", self.root / slug):
            if candidate.is_dir():
                return candidate
        raise ValueError(f"repository {name}: no local mirror at {self.root / slug}.git (make one with `git clone "
                         f"--mirror https://github.com/{name}.git {self.root / slug}.git` where the network is "
                         "reachable)")

    def pristine(self, repo: dict) -> Path:
        name, commit = repo.get("name") or "", repo.get("commit") or ""
        tree = self.cache / f"{name.replace('/', '__')}@{commit[:12]}"
        if (tree / ".git").is_dir():
            return tree
        mirror = self.mirror(name)
        self.cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{tree.name}-", dir=self.cache))
        try:
            archive = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(mirror), "archive", "--format=tar",
                                      commit], capture_output=True)
            if archive.returncode != 0:
                raise ValueError(f"repository {name}: commit {commit} is not in {mirror} "
                                 f"({archive.stderr.decode(errors='replace').strip()[:200]})")
            subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive.stdout, check=True)
            git(scratch, "init", "-q", "-b", "main")
            git(scratch, "add", "-A", "-f")
            git(scratch, "commit", "-q", "-m", f"base: {name}@{commit}")
            with contextlib.suppress(OSError):  # another process finished first: keep theirs
                scratch.rename(tree)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return tree
