"""Train/test split by problem identity (`group`), never by task.

DebugBench implants several bugs into the same LeetCode problem; if one went to train and another to test,
the test set would measure memorisation. Each group's side is decided by a hash of (seed, group) alone, so it
is deterministic across runs and machines, and a group keeps its side when other groups are added. Groups
that are near-duplicates of each other (leakcheck.py) are merged first and go to one side together.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

from agentq.tasks.leakcheck import Leak, find_leaks, merge_groups, overlap_report
from agentq.tasks.schema import Task, TaskFileError, read_tasks, write_tasks


def in_test(group: str, test_share: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"{seed}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_share


def split_leak_free(
    tasks: list[Task], test_share: float = 0.2, seed: int = 0, merge: bool = True
) -> tuple[list[Task], list[Task], list[Leak]]:
    """(train, test, leaks). Groups linked by a near-duplicate are merged first, so leaks is empty unless
    `merge` is off; the check is run either way, independently of how the split was made."""
    if not 0.0 <= test_share <= 1.0:
        raise ValueError(f"test share must be between 0 and 1, got {test_share}")
    merged = merge_groups(tasks) if merge else {t.group: t.group for t in tasks}
    train, test = [], []
    for task in tasks:
        (test if in_test(merged[task.group], test_share, seed) else train).append(task)
    return train, test, find_leaks(train, test)


def main(args: argparse.Namespace) -> int:
    """`agentq tasks split IN --out-prefix P`: P.train.jsonl and P.test.jsonl, written only if nothing leaks."""
    if not 0.0 <= args.test_share <= 1.0:
        print(f"agentq tasks split: --test-share must be between 0 and 1, got {args.test_share}", file=sys.stderr)
        return 2
    try:
        tasks = read_tasks(args.file)
    except (TaskFileError, OSError) as err:
        print(f"agentq tasks split: {err}", file=sys.stderr)
        return 2
    train, test, leaks = split_leak_free(tasks, args.test_share, args.seed, merge=not args.no_merge)
    groups = {t.group for t in tasks}
    merged = f"{len(set(merge_groups(tasks).values()))} after merging near-duplicates"
    merged = "not merged" if args.no_merge else merged
    print(f"{len(tasks)} tasks, {len(groups)} groups ({merged})")
    print(overlap_report(train, test, leaks))
    if leaks:
        for leak in leaks[:50]:
            print(f"  leak: {leak}", file=sys.stderr)
        more = f" (first 50 of {len(leaks)} shown)" if len(leaks) > 50 else ""
        print(f"agentq tasks split: refusing to write a split that leaks{more}", file=sys.stderr)
        return 1
    prefix = args.out_prefix
    write_tasks(f"{prefix}.train.jsonl", train)
    write_tasks(f"{prefix}.test.jsonl", test)
    print(f"wrote {prefix}.train.jsonl ({len(train)} tasks), {prefix}.test.jsonl ({len(test)} tasks)")
    return 0
