"""SWE-bench instances: the Lite file's 12-field rows and the newer (swebench v5) rows that also carry the
instance's `image`, `eval_script`, `log_parser` and `eval_type`.

Here they load, validate and become repo tasks (`repo: {git_url, commit}`: the base commit is the buggy tree,
so `bug_patch` is empty; the gold patch and its files are kept in metadata for localisation). They run only
on a cluster with the instance images (controller/swebench.py): no Docker engine and no network here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
                  "test_patch": instance["test_patch"], "version": instance["version"], **extra},
    )
