"""Repository runs per minute: the warm repo executor against a cold baseline, on tasks of a repo corpus.

Each run is what search and validation do: the task's buggy tree (bug patch applied) plus a candidate patch
(here the empty patch), then the task's fail-to-pass and pass-to-pass tests under the sandbox. Warm = the
pristine tree unpacked once per library and copied per run; cold (the baseline, measured in the same
invocation on the same tasks, alternating with the warm runs) = the sdist unpacked and committed to git again
for every run.

    PYTHONPATH=. python benchmarks/repo_runs.py --tasks data/repos.jsonl --data-dir ../shared/data --runs 12 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agentq.sandbox.repo import RepoExecutor, SdistStore
from agentq.tasks.schema import read_tasks


def one_run(store: SdistStore, task, cold: bool, data_dir: Path) -> tuple[float, bool]:
    """(seconds, whether the verdict was as expected: every F2P failing, every P2P passing)."""
    started = time.monotonic()
    if cold:
        with tempfile.TemporaryDirectory(prefix="agentq-cold-") as cache:
            store = SdistStore(data_dir / "repos", RepoExecutor(Path(cache)))
            verdict = store.run_task(task.model_dump(exclude_none=True), [""])[0]
    else:
        verdict = store.run_task(task.model_dump(exclude_none=True), [""])[0]
    return time.monotonic() - started, verdict.f2p_passed == 0 and verdict.p2p_passed == verdict.p2p_total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", required=True, help="a repo-task JSONL (agentq tasks build --source repos)")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--runs", type=int, default=12, help="tasks to run (spread over the libraries)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tasks = read_tasks(args.tasks, kinds=("repo",))
    by_lib: dict[str, list] = {}
    for task in tasks:
        by_lib.setdefault(task.group, []).append(task)
    picked: list = []
    while len(picked) < min(args.runs, len(tasks)):  # round-robin over libraries
        for lib in sorted(by_lib):
            if by_lib[lib] and len(picked) < args.runs:
                picked.append(by_lib[lib].pop(0))
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="agentq-warm-") as cache:
        store = SdistStore(data_dir / "repos", RepoExecutor(Path(cache)))
        for task in picked:  # warm-up: unpack each library once, as a long-lived executor would have
            store.pristine(task.repo.model_dump(exclude_none=True))
        # Warm and cold runs alternate task by task, so a change in the machine's load hits both sides alike.
        runs = {False: [], True: []}
        for task in picked:
            for cold in (False, True):
                runs[cold].append(one_run(store, task, cold, data_dir))
    warm_runs, cold_runs = [s for s, _ in runs[False]], [s for s, _ in runs[True]]
    warm_s, cold_s = sum(warm_runs), sum(cold_runs)
    warm_ok, cold_ok = sum(ok for _, ok in runs[False]), sum(ok for _, ok in runs[True])
    n = len(picked)
    result = {
        "runs": n, "libraries": sorted({t.group for t in picked}),
        "warm_runs_per_min": round(60 * n / warm_s, 1), "cold_runs_per_min": round(60 * n / cold_s, 1),
        "speedup_vs_cold": round(cold_s / warm_s, 2),
        "warm_median_s": round(statistics.median(warm_runs), 2),
        "cold_median_s": round(statistics.median(cold_runs), 2),
        "tests_per_run_median": statistics.median(len(t.fail_to_pass) + len(t.pass_to_pass) for t in picked),
        "as_expected": {"warm": warm_ok, "cold": cold_ok},
    }
    print(f"{n} repo runs over {len(result['libraries'])} libraries: warm {result['warm_runs_per_min']} runs/min "
          f"(median {result['warm_median_s']} s), cold {result['cold_runs_per_min']} runs/min "
          f"(median {result['cold_median_s']} s): x{result['speedup_vs_cold']}")
    print(f"runs with the expected verdict (F2P fail, P2P pass): warm {warm_ok}/{n}, cold {cold_ok}/{n}")
    if args.json:
        print(json.dumps(result))
    return 0 if warm_ok == n else 1


if __name__ == "__main__":
    sys.exit(main())
