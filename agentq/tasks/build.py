"""`agentq tasks build`: raw data set -> validated task JSONL plus its train/test split.

Every instance ends up in exactly one place: the output (valid), or `<stem>.rejected.jsonl` with its reason
(tests could not be built, reference fails, buggy code passes, ...); the counts per reason are printed.
With `--hidden N`, hidden differential cases are added before validation (so the buggy code may fail only
on them), and the split goes through the same leak-free path and overlap check as `agentq tasks split`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from agentq.io import write_jsonl
from agentq.sandbox import LocalExecutor
from agentq.tasks.debugbench import load_debugbench
from agentq.tasks.hidden import add_hidden_tests, coverage
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.leakcheck import overlap_report
from agentq.tasks.schema import Task, write_tasks
from agentq.tasks.split import split_leak_free
from agentq.tasks.validate import check_tasks


def sibling(out: Path, kind: str) -> Path:
    """`tasks.jsonl` -> `tasks.<kind>.jsonl`."""
    return out.with_name(f"{out.stem}.{kind}.jsonl")


def load_source(source: str, data_dir: str | Path) -> tuple[list[Task], list[dict]]:
    """Tasks with built tests, and the instances whose tests could not be built (id, group, reason, detail)."""
    if source == "humanevalfix":
        return load_humanevalfix(data_dir), []
    if source == "debugbench":
        loaded = load_debugbench(data_dir)
        return loaded.tasks, [vars(r) for r in loaded.rejected]
    raise ValueError(f"unknown source {source!r}; expected debugbench or humanevalfix")


def main(args: argparse.Namespace) -> int:
    if args.source == "repos":
        from agentq.tasks.repos import build

        return build(args)
    started = time.monotonic()
    out = Path(args.out)
    if not 0.0 <= args.test_share <= 1.0:
        print(f"agentq tasks build: --test-share must be between 0 and 1, got {args.test_share}", file=sys.stderr)
        return 2
    try:
        tasks, rejected = load_source(args.source, args.data_dir)
    except (OSError, ValueError) as err:
        print(f"agentq tasks build: {err}", file=sys.stderr)
        return 2
    instances = len(tasks) + len(rejected)
    print(f"{args.source}: {instances} instances, tests built for {len(tasks)}; validating in the sandbox...")
    with LocalExecutor(allow_weak_isolation=getattr(args, "allow_weak_isolation", False)) as executor:
        if args.hidden > 0:
            tasks, stats = add_hidden_tests(tasks, executor, args.hidden, args.seed)
            dropped = ", ".join(f"{k} {v}" for k, v in stats.dropped.most_common()) or "none"
            print(f"hidden tests: {stats.problems} problems probed in {stats.seconds:.1f}s; inputs dropped: {dropped}")
            if args.source == "humanevalfix":
                print("hidden tests: none for humanevalfix: its upstream check() tests already go beyond the examples")
        checked = check_tasks(tasks, executor)
    groups = {t.id: t.group for t in tasks}
    invalid = checked.invalid
    rejected += [{"id": i.id, "group": groups[i.id], "reason": i.reason, "detail": i.detail} for i in invalid]
    bad = {i.id for i in invalid}
    # Each task keeps its reference's measured run time: candidates get a time budget derived from it.
    valid = [t.model_copy(update={"reference_seconds": checked.reference_seconds.get(t.id)})
             for t in tasks if t.id not in bad]
    train, test, leaks = split_leak_free(valid, args.test_share, args.seed)
    if leaks:  # cannot happen after merging; the check is there so that it would be caught if it did
        print(overlap_report(train, test, leaks), file=sys.stderr)
        print("\n".join(f"  leak: {leak}" for leak in leaks[:50]), file=sys.stderr)
        return 1

    write_tasks(out, valid)
    write_tasks(sibling(out, "train"), train)
    write_tasks(sibling(out, "test"), test)
    write_jsonl(sibling(out, "rejected"), rejected)

    counts = Counter(r["reason"] for r in rejected)
    print(f"valid: {len(valid)}  rejected: {len(rejected)}")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {reason:<22} {n}")
    n_groups = (len({t.group for t in train}), len({t.group for t in test}))
    print(
        f"split (seed {args.seed}, test share {args.test_share}): train {len(train)} tasks / {n_groups[0]} groups, "
        f"test {len(test)} tasks / {n_groups[1]} groups"
    )
    print(overlap_report(train, test, leaks))
    hidden = coverage(valid, args.hidden) if args.hidden > 0 else None
    if hidden:
        print(
            f"hidden tests: {hidden['with_n']}/{hidden['tasks']} valid tasks ({hidden['share_with_n']:.1%}) have >= "
            f"{args.hidden} cases; cases per task {hidden['cases_per_task']}; skipped {hidden['skipped']}"
        )
    print(f"wrote {out}, {sibling(out, 'train')}, {sibling(out, 'test')}, {sibling(out, 'rejected')}")
    if args.json:
        summary = {
            "source": args.source,
            "instances": instances,
            "valid": len(valid),
            "rejected": dict(sorted(counts.items())),
            "train": len(train),
            "test": len(test),
            "train_groups": n_groups[0],
            "test_groups": n_groups[1],
            "out": str(out),
            "overlap": len(leaks),
            **({"hidden": hidden} if hidden else {}),
            "seconds": round(time.monotonic() - started, 1),
        }
        print(json.dumps(summary))
    return 0
