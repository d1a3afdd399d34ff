"""Many search trees advanced together, so an accelerator sees hundreds of sequences per call, not two.

Each tree (`Search.steps`) is a generator that waits on one need at a time: generations (an expansion
or a critique) or sandbox runs. The scheduler keeps up to `in_flight` trees open, and at every tick
serves all their pending needs at once: every waiting generation of one policy in one
`generate_batch`, every waiting candidate in one `run_many`, the sandbox batch on a worker thread while
the policy generates. A tick ends when both are done, so a slow sandbox batch (a candidate that runs
into its timeout) still delays the next tick's generations. With a backend that answers each request
from its own seed alone (the scripted mock) a tree does not depend on its companions: trees come out
as the sequential path writes them, in the order they finish. One scheduler serves one executor.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agentq.policy.base import Policy
from agentq.search.mcts import Executor, Generate, Need, Run, Search


@dataclass
class SchedulerStats:
    """What the batching achieved; benchmarks report sequences per generate call from these."""

    generate_calls: int = 0
    requests: int = 0
    sequences: int = 0  # samples asked for (n per request)
    run_calls: int = 0
    runs: int = 0
    ticks: int = 0


@dataclass
class _Open:
    search: Search
    steps: Generator[Need, Any, Search]
    need: Need
    result: Any = field(default=None)


class Scheduler:
    def __init__(self, in_flight: int) -> None:
        if in_flight < 1:
            raise ValueError(f"trees in flight must be at least 1, got {in_flight}")
        self.in_flight = in_flight
        self.stats = SchedulerStats()

    def run(self, searches: Iterable[Search]) -> Iterator[Search]:
        """Finished searches, as each tree finishes; at most `in_flight` are open at once, so a caller that
        saves each one as it comes loses at most those on a kill."""
        waiting = iter(searches)
        open_trees: list[_Open] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox") as pool:
            while True:
                while len(open_trees) < self.in_flight:
                    search = next(waiting, None)
                    if search is None:
                        break
                    steps = search.steps()
                    try:
                        open_trees.append(_Open(search, steps, next(steps)))
                    except StopIteration:
                        yield search
                if not open_trees:
                    return
                self._serve(open_trees, pool)
                still_open = []
                for tree in open_trees:
                    try:
                        tree.need = tree.steps.send(tree.result)
                        still_open.append(tree)
                    except StopIteration:
                        yield tree.search
                open_trees = still_open

    def _serve(self, trees: list[_Open], pool: ThreadPoolExecutor) -> None:
        """Every pending need answered: sandbox runs on the worker thread while the policies generate."""
        self.stats.ticks += 1
        runs = [t for t in trees if isinstance(t.need, Run)]
        pending: Future | None = None
        if runs:
            executor: Executor = runs[0].need.executor
            if any(t.need.executor is not executor for t in runs):
                raise ValueError("one scheduler serves the trees of one executor")
            jobs = [job for t in runs for job in t.need.jobs]
            pending = pool.submit(executor.run_many, jobs)
            self.stats.run_calls += 1
            self.stats.runs += len(jobs)
        by_policy: dict[int, tuple[Policy, list[_Open]]] = {}
        for tree in trees:
            if isinstance(tree.need, Generate):
                by_policy.setdefault(id(tree.need.policy), (tree.need.policy, []))[1].append(tree)
        for policy, waiting in by_policy.values():
            requests = [r for t in waiting for r in t.need.requests]
            answers = policy.generate_batch(requests)
            self.stats.generate_calls += 1
            self.stats.requests += len(requests)
            self.stats.sequences += sum(r.n for r in requests)
            _split(waiting, answers, lambda t: len(t.need.requests))
        if pending is not None:
            _split(runs, pending.result(), lambda t: len(t.need.jobs))


def _split(trees: list[_Open], results: list[Any], size: Any) -> None:
    at = 0
    for tree in trees:
        count = size(tree)
        tree.result, at = results[at:at + count], at + count
