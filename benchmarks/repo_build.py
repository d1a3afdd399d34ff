"""The repos build's check runs with and without each library's bytecode cache (what a kept mutant's runs cost).

For each library, up to --per-library tasks of a repo corpus: each task's subset (F2P + P2P, in validate's order)
runs on the library's original tree in the sandbox, as the build's third check runs it. Cold = no cache, as every
run was before issue 26's cost work (each run compiled the whole library and re-rewrote every test module's
asserts); warm = the library's cache filled once (`RepoSandbox.warm_pycache`, the fill timed apart) and bound
read-only. Cold and warm alternate task by task, so a change in the machine's load hits both alike; both must
see every test pass. Prints the plugins each suite gets, the median wall seconds per run, the ratio and the load
average; one JSON object last with --json.

    PYTHONPATH=. python benchmarks/repo_build.py --tasks data/repos.jsonl --data-dir ../shared/data \
        --per-library 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from agentq.sandbox.repo import RepoLimits, RepoSandbox, copy_tree, git, needed_plugins, passed, unpack_pristine
from agentq.tasks.layout import detect
from agentq.tasks.schema import read_tasks


def timed_run(sandbox: RepoSandbox, work: Path, tests: list[str], pycache: Path | None) -> tuple[float, bool]:
    """(wall seconds, whether every test passed), as the build's original-tree check runs the subset."""
    started = time.monotonic()
    report = sandbox.run(work, ["--timeout-method=thread", "--continue-on-collection-errors", *tests],
                         pycache=pycache)
    seconds = time.monotonic() - started
    git(work, "clean", "-qfdx", "-e", "*.dist-info")
    return seconds, all(passed(report.outcomes.get(t, ("missing", ""))[0]) for t in tests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", required=True, help="a repo-task JSONL (agentq tasks build --source repos)")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--per-library", type=int, default=3, help="tasks run per library")
    parser.add_argument("--libraries", help="comma-separated library names (default: every library of --tasks)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    by_lib: dict[str, list] = defaultdict(list)
    for task in read_tasks(args.tasks, kinds=("repo",)):
        if task.repo.sdist and (not args.libraries or task.group in args.libraries.split(",")):
            by_lib[task.repo.sdist].append(task)
    if not by_lib:
        print(f"repo_build: no sdist-based repo task in {args.tasks}", file=sys.stderr)
        return 2
    sandbox = RepoSandbox(RepoLimits(timeout_s=600, per_test_s=30))
    rows, all_cold, all_warm, agree = {}, [], [], True
    with tempfile.TemporaryDirectory(prefix="agentq-repo-build-bench-") as tmp:
        for sdist, tasks in sorted(by_lib.items()):
            pristine = unpack_pristine(Path(args.data_dir) / "repos" / sdist, Path(tmp) / "trees")
            # a tree of its own per library: the sandbox remembers each tree's plugins by its path
            work, pycache = Path(tmp) / f"work-{pristine.name}", Path(tmp) / f"pycache-{pristine.name}"
            work.mkdir()
            pycache.mkdir()
            copy_tree(pristine, work)
            layout = detect(pristine)
            started = time.monotonic()
            sandbox.warm_pycache(work, pycache, layout.source_files(pristine), list(layout.test_target))
            warm_s = time.monotonic() - started
            git(work, "clean", "-qfdx", "-e", "*.dist-info")
            cold, warm = [], []
            for i, task in enumerate(tasks[: args.per_library]):
                subset = [*task.fail_to_pass, *task.pass_to_pass]
                for use_cache in ((False, True) if i % 2 == 0 else (True, False)):
                    seconds, ok = timed_run(sandbox, work, subset, pycache if use_cache else None)
                    (warm if use_cache else cold).append(seconds)
                    agree &= ok
            all_cold += cold
            all_warm += warm
            rows[task.group] = {"runs": len(cold), "plugins": needed_plugins(work), "fill_s": round(warm_s, 1),
                                "cold_median_s": round(statistics.median(cold), 2),
                                "warm_median_s": round(statistics.median(warm), 2),
                                "speedup": round(sum(cold) / sum(warm), 2)}
            print(f"{task.group:<16} {len(cold)} runs  cold {rows[task.group]['cold_median_s']:6.2f} s  warm "
                  f"{rows[task.group]['warm_median_s']:6.2f} s  x{rows[task.group]['speedup']:<5} (cache filled in "
                  f"{warm_s:.1f} s; plugins {', '.join(rows[task.group]['plugins'])})", flush=True)
    load = [round(x, 2) for x in os.getloadavg()]
    result = {"libraries": rows, "runs": len(all_cold), "speedup": round(sum(all_cold) / sum(all_warm), 2),
              "cold_median_s": round(statistics.median(all_cold), 2),
              "warm_median_s": round(statistics.median(all_warm), 2), "all_passed": agree, "load_avg": load}
    print(f"{len(all_cold)} subsets: cold median {result['cold_median_s']} s, warm median {result['warm_median_s']} s, "
          f"x{result['speedup']} (load average {load}); every test passed both ways: {agree}")
    if args.json:
        print(json.dumps(result))
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
