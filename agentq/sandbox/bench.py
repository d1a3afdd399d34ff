"""`agentq sandbox bench`: the warm executor against one fresh `python -m pytest` per candidate.

Every HumanEvalFix canonical and buggy solution goes through both paths in the same run, under the same
limits, each path using all cores (the naive path runs one pytest per core at a time). Start-up of the
fork servers is reported but not counted: it is paid once per executor, not per candidate. Neither is the
timing of the reference solutions, which `agentq tasks build` pays once per task: the warm path runs each
candidate with the time budget derived from it (limits.for_reference), and once more with the spec's
timeout alone, to show what the budget is worth.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor

from agentq.sandbox.executor import LocalExecutor
from agentq.sandbox.limits import BUDGET_FACTOR, BUDGET_FLOOR_S, Limits, budgeted
from agentq.sandbox.naive import STARTUP_ALLOWANCE_S, run_naive
from agentq.sandbox.verdict import Verdict
from agentq.tasks.humanevalfix import load_humanevalfix

# Three buggy HumanEvalFix programs loop forever, so the timeout is part of the measured cost. Canonical
# runs take well under 0.1 s warm; 2 s leaves room for a busy machine without dominating the total.
# A busy loop is cut at 1 s of CPU on both sides; the 2 s wall clock is for programs that block or sleep.
BENCH_LIMITS = Limits(timeout_s=2.0, cpu_s=1, memory_mb=1024)


def _run_naive_all(items: list[tuple[str, str]], workers: int) -> list[Verdict]:
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(workers):
        slots.put(slot)

    def one(item: tuple[str, str]) -> Verdict:
        slot = slots.get()  # a uid per concurrent run: cleaning up one run must not kill another
        try:
            return run_naive(*item, BENCH_LIMITS, slot=slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))


def main(args: argparse.Namespace) -> int:
    tasks = load_humanevalfix(args.data_dir)
    items = [(t.reference_code or "", t.tests) for t in tasks] + [(t.buggy_code, t.tests) for t in tasks]
    ids = [t.id for t in tasks] * 2
    n = len(tasks)
    workers = os.cpu_count() or 1

    start = time.perf_counter()
    with LocalExecutor(workers=workers, limits=BENCH_LIMITS,
                       allow_weak_isolation=getattr(args, "allow_weak_isolation", False)) as executor:
        executor.run_many(items[:workers])  # wait for the fork servers to be up
        startup = time.perf_counter() - start
        # What `agentq tasks build` stores as Task.reference_seconds (check_tasks): the reference's run time.
        reference_s = [v.run_seconds for v in executor.run_many(items[:n])]
        start = time.perf_counter()
        plain = executor.run_many(items)
        plain_s = time.perf_counter() - start
        refs = reference_s * 2  # a buggy candidate gets its task's budget, like any other candidate
        jobs = [budgeted(code, tests, BENCH_LIMITS, ref) for (code, tests), ref in zip(items, refs, strict=True)]
        start = time.perf_counter()
        warm = executor.run_many(jobs)
        warm_s = time.perf_counter() - start
    start = time.perf_counter()
    naive = _run_naive_all(items, workers)
    naive_s = time.perf_counter() - start

    warm_per_s, naive_per_s, plain_per_s = len(items) / warm_s, len(items) / naive_s, len(items) / plain_s
    agree = [w.passed == v.passed for w, v in zip(warm, naive, strict=True)]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    summary = {
        "warm_per_s": round(warm_per_s, 2),
        "warm_timeout_only_per_s": round(plain_per_s, 2),
        "naive_per_s": round(naive_per_s, 2),
        "ratio": round(warm_per_s / naive_per_s, 2),
        "agreement": round(sum(agree) / len(agree), 4),
        "canonical_pass": sum(v.passed for v in warm[:n]),
        "buggy_not_pass": sum(not v.passed for v in warm[n:]),
        "agreement_timeout_only": round(sum(w.passed == v.passed for w, v in zip(plain, naive, strict=True))
                                        / len(items), 4),
        "load": load,
    }
    print(f"HumanEvalFix: {n} tasks, {len(items)} candidates (canonical + buggy); {workers} cores, load {load}")
    print(f"limits: timeout {BENCH_LIMITS.timeout_s:g} s, cpu {BENCH_LIMITS.cpu_s} s, "
          f"memory {BENCH_LIMITS.memory_mb} MB, file {BENCH_LIMITS.file_mb} MB, {BENCH_LIMITS.max_procs} processes")
    budgets = sorted(j[2].time_budget_s for j in jobs if len(j) == 3)
    print(f"time budget: max({BUDGET_FLOOR_S:g} s, {BUDGET_FACTOR:g} x reference run time), at most the timeout; "
          f"median {budgets[len(budgets) // 2]:g} s, max {budgets[-1]:g} s")
    print(f"warm executor : {workers} fork servers         {warm_s:7.2f} s  {warm_per_s:7.2f} candidates/s"
          f"  (fork-server start-up {startup:.2f} s, not counted)")
    print(f"  same, timeout only (no budget)     {plain_s:7.2f} s  {plain_per_s:7.2f} candidates/s")
    print(f"naive baseline: fresh pytest, {workers} in parallel  {naive_s:7.2f} s  {naive_per_s:7.2f} candidates/s"
          f"  (wall clock +{STARTUP_ALLOWANCE_S:g} s for start-up)")
    print(f"ratio {summary['ratio']:.1f}x; verdict agreement (pass / not pass) {summary['agreement']:.4f}; "
          f"canonical pass {summary['canonical_pass']}/{n}; buggy not pass {summary['buggy_not_pass']}/{n}")
    statuses: dict[str, int] = {}
    for v in warm[n:]:
        statuses[v.status] = statuses.get(v.status, 0) + 1
    print(f"buggy verdicts (warm): {statuses}")
    for task_id, verdict in zip(ids[:n], warm[:n], strict=True):
        if not verdict.passed:  # a correct program the warm path did not pass: the budget or the load?
            print(f"  warm canonical not passing {task_id}: {verdict.status} (cpu {verdict.cpu_s}, wall "
                  f"{verdict.duration_s:.2f} s): {verdict.message[:160]}")
    for i, ok in enumerate(agree):
        if not ok:
            kind = "canonical" if i < n else "buggy"
            print(f"  disagreement {ids[i]} ({kind}): warm {warm[i].status}, naive {naive[i].status}")
    if args.json:
        print(json.dumps(summary))
    return 0
