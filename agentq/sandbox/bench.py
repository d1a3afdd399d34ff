"""`agentq sandbox bench`: the warm executor against one fresh `python -m pytest` per candidate.

Every HumanEvalFix canonical and buggy solution goes through both paths in the same run, under the same
limits, each with the same number of workers (two per usable core by default, `--workers`: the naive path
runs that many pytest processes at a time). Start-up of the
fork servers is reported but not counted: it is paid once per executor, not per candidate. Neither is the
timing of the reference solutions, which `agentq tasks build` pays once per task: the warm path runs each
candidate with the time budget derived from it (limits.for_reference), and once more with the spec's
timeout alone, to show what the budget is worth.

It also says where a candidate's milliseconds go: CPU of the executor's own process per candidate, and what
the workers measure of each run (the template's forks and its part in the run, the candidate's process setting
the run up and then running the candidate, the test process running the tests); and what a network
namespace per run would cost (the isolation chose a seccomp rule instead: jail.seccomp_program). The load
average is printed before and after: on a shared machine the figures are provisional, and the JSON summary
(`--json`, last line) is what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentq.sandbox.executor import LocalExecutor, _usable_cores
from agentq.sandbox.limits import BUDGET_FACTOR, BUDGET_FLOOR_S, Limits, for_reference
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


def netns_cost(runs: int = 200) -> dict[str, float] | str:
    """CPU and wall milliseconds a network namespace adds to a forked child that creates it and exits (its
    teardown included, as far as this process waits for it), against the same child without one."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def loop(flags: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), 0.0
        for _ in range(runs):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if not flags or libc.unshare(flags) == 0 else 1)
            _, status, usage = os.wait4(pid, 0)
            if status != 0:
                raise OSError("unshare(CLONE_NEWNET) refused")
            cpu += usage.ru_utime + usage.ru_stime
        return 1000 * (time.perf_counter() - wall) / runs, 1000 * cpu / runs

    try:
        plain, netns = loop(0), loop(0x40000000)
    except OSError as err:
        return f"not measured: {err} (needs root or a user namespace of its own)"
    return {"wall_ms": round(netns[0] - plain[0], 3), "cpu_ms": round(netns[1] - plain[1], 3)}


def cost_breakdown(costs: dict[str, Any], executor_ms: float) -> dict[str, float]:
    """CPU milliseconds per candidate by where they went (from RunCosts.per_run and the executor's own CPU). The
    candidate's figure is its process's own, which the template reaps (processes it started and the kernel
    killed with the run are not in it; its cgroup's meter, Verdict.cpu_s, has them)."""
    cpu = costs.get("cpu_ms", {})
    parts = {
        "executor (Python: framing, verdicts; its threads)": executor_ms,
        "template: forks (the run's init by clone, the candidate)": cpu.get("template_fork", 0.0),
        "template: hand-over to the test process, end of the run, trailer": cpu.get("template_rest", 0.0),
        "candidate's process, trusted set-up: job, mount+IPC namespaces, tmpfs, /proc, cgroup limits, solution "
        "file": cpu.get("candidate_setup", 0.0),
        "candidate: cgroups, rlimits, privileges, import, answers, exit (and its budget, if it loops)":
            cpu.get("candidate", 0.0),
        "test process: tests (read, proxy, calls, events, result)": cpu.get("tests", 0.0),
    }
    parts = {k: round(v, 3) for k, v in parts.items()}
    parts["total"] = round(sum(parts.values()), 3)
    return parts


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(args: argparse.Namespace) -> int:
    tasks = load_humanevalfix(args.data_dir)
    items = [(t.reference_code or "", t.tests) for t in tasks] + [(t.buggy_code, t.tests) for t in tasks]
    ids = [t.id for t in tasks] * 2
    n = len(tasks)
    cores = _usable_cores()
    # Two workers a core: a run is a chain of processes handing each other the turn (executor, init, candidate),
    # so one worker leaves its core idle between turns; a second one fills the gaps. The baseline gets as many.
    workers = getattr(args, "workers", None) or 2 * cores
    floor = getattr(args, "budget_floor", None) or BUDGET_FLOOR_S
    load_start = _load()

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
        jobs = [(code, tests, for_reference(BENCH_LIMITS, ref, floor_s=floor))
                for (code, tests), ref in zip(items, refs, strict=True)]
        executor.costs = type(executor.costs)()  # count the measured pass only
        start, cpu_start = time.perf_counter(), time.process_time()
        warm = executor.run_many(jobs)
        warm_s, executor_ms = time.perf_counter() - start, 1000 * (time.process_time() - cpu_start) / len(jobs)
        costs = executor.costs.per_run()
        profile = executor.profile
    load_warm = _load()
    netns = netns_cost()
    start = time.perf_counter()
    naive = _run_naive_all(items, workers)
    naive_s = time.perf_counter() - start

    warm_per_s, naive_per_s, plain_per_s = len(items) / warm_s, len(items) / naive_s, len(items) / plain_s
    agree = [w.passed == v.passed for w, v in zip(warm, naive, strict=True)]
    load = _load()
    breakdown = cost_breakdown(costs, executor_ms)
    ref_sorted = sorted(reference_s)
    loops_ms = 1000 * sum(v.cpu_s or 0.0 for v in warm if v.status == "timeout") / len(warm)
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
        "load_start": load_start,
        "load_after_warm": load_warm,
        "cores": cores,
        "workers": workers,
        "isolation_profile": profile,
        "cpu_ms_per_candidate": breakdown,
        "cpu_ms_per_candidate_in_loop_budgets": round(loops_ms, 3),
        "budget_floor_s": floor,
        # What the floor has to cover: the references' own run time as the budget counts it (their second run).
        "reference_ms": {"median": round(1000 * ref_sorted[len(ref_sorted) // 2], 3),
                         "p99": round(1000 * ref_sorted[int(0.99 * (len(ref_sorted) - 1))], 3),
                         "max": round(1000 * ref_sorted[-1], 3)},
        "wall_ms_per_run": costs.get("phases_ms", {}),
        "netns_per_run_would_add": netns,
    }
    summary["meets_issue_23_goal"] = (summary["warm_per_s"] >= 200 and summary["ratio"] >= 40
                                      and summary["agreement"] == 1.0)
    print(f"HumanEvalFix: {n} tasks, {len(items)} candidates (canonical + buggy); {cores} cores, {workers} workers "
          f"on each path; load average "
          f"{load_start} at the start, {load_warm} after the warm runs, {load} at the end")
    print(f"limits: timeout {BENCH_LIMITS.timeout_s:g} s, cpu {BENCH_LIMITS.cpu_s} s, "
          f"memory {BENCH_LIMITS.memory_mb} MB, file {BENCH_LIMITS.file_mb} MB, {BENCH_LIMITS.max_procs} processes")
    budgets = sorted(j[2].time_budget_s for j in jobs if len(j) == 3)
    print(f"time budget: max({floor:g} s, {BUDGET_FACTOR:g} x reference run time), at most the timeout; "
          f"median {budgets[len(budgets) // 2]:g} s, max {budgets[-1]:g} s; reference run time (ms): "
          + ", ".join(f"{k} {v:g}" for k, v in summary["reference_ms"].items()))
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
    print(f"where a candidate's CPU goes (ms, mean of the {costs['runs']} budgeted runs, isolation profile "
          f"{profile}):")
    for part, ms in breakdown.items():
        print(f"  {ms:8.3f}  {part}")
    print(f"  (of which {loops_ms:.3f} ms is the looping buggy programs' time budgets, spread over every candidate)")
    print(f"wall ms per run (test process): {costs.get('phases_ms', {})}")
    if isinstance(netns, dict):
        print(f"a network namespace per run would add {netns['cpu_ms']:.3f} ms of CPU and {netns['wall_ms']:.3f} ms "
              "of wall time to every run (measured here: fork + unshare(CLONE_NEWNET) + exit vs fork + exit)")
    else:
        print(f"network namespace per run: {netns}")
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
