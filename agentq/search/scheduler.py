"""Many search trees advanced together, so an accelerator sees hundreds of sequences per call, not two.

Each tree (`Search.steps`) is a generator that waits on one need at a time: generations (an expansion
or a critique) or sandbox runs. The scheduler keeps up to `in_flight` trees open and serves their needs
as a pipeline, so generation never waits for a sandbox batch it does not need:

* Sandbox runs: every waiting candidate goes to the executor in one `run_many` on a worker thread; while
  that batch runs, newly waiting candidates queue for the next one.
* Batched backends (hf, vllm, scripted): every waiting generation of one policy in one `generate_batch`.
  Before it, the call waits for the sandbox batch in flight at most `sync_wait` of the last generate call's
  time, so the trees that batch releases join this call (a padded batch costs little more per row) without a
  slow batch (a candidate running into its time limit) holding up the trees that are ready.
* Backends that take requests one at a time (`submit`, the openai backend in front of a server's continuous
  batching): each request is sent the moment its tree needs it and its tree moves on the moment it is
  answered, so the server always holds every pending request instead of idling until the slowest
  sample of a batch is done.

With a backend that answers each request from its own seed alone (the scripted mock) a tree does not
depend on its companions or on the order needs are served in: trees come out as the sequential path
writes them, in the order they finish. One scheduler serves one executor.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from agentq.policy.base import Policy
from agentq.search.mcts import Executor, Generate, Need, Run, Search

SYNC_WAIT = 0.25  # share of the last generate call's time a batch call waits for the sandbox batch in flight


@dataclass
class SchedulerStats:
    """What the batching achieved; benchmarks report sequences per generate call and idle shares from these."""

    generate_calls: int = 0
    requests: int = 0
    sequences: int = 0  # samples asked for (n per request)
    run_calls: int = 0
    runs: int = 0
    ticks: int = 0
    generate_s: float = 0.0  # wall time inside generate_batch calls (batched backends)
    sandbox_wait_s: float = 0.0  # wall time the loop sat waiting for the sandbox alone


@dataclass
class _Open:
    search: Search
    steps: Generator[Need, Any, Search]
    need: Need
    busy: bool = False  # its need is being served (in a sandbox batch, or requests at the server)
    futures: list[Future] = field(default_factory=list)


class Scheduler:
    def __init__(self, in_flight: int, sync_wait: float = SYNC_WAIT) -> None:
        if in_flight < 1:
            raise ValueError(f"trees in flight must be at least 1, got {in_flight}")
        self.in_flight, self.sync_wait = in_flight, sync_wait
        self.stats = SchedulerStats()
        self._last_generate_s = 0.0

    def run(self, searches: Iterable[Search]) -> Iterator[Search]:
        """Finished searches, as each tree finishes; at most `in_flight` are open at once, so a caller that
        saves each one as it comes loses at most those on a kill."""
        waiting = iter(searches)
        open_trees: list[_Open] = []
        finished: list[Search] = []
        sandbox: tuple[Future, list[_Open]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox") as pool:
            while True:
                yield from finished  # handed back before more trees open: a kill loses at most `in_flight`
                finished.clear()
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
                self.stats.ticks += 1
                if sandbox is None:
                    sandbox = self._submit_runs(open_trees, pool)
                self._submit_requests(open_trees)
                batched = [t for t in open_trees if not t.busy and isinstance(t.need, Generate)]
                if batched and sandbox is not None and self.sync_wait > 0:
                    wait([sandbox[0]], timeout=self.sync_wait * self._last_generate_s)
                if sandbox is not None and sandbox[0].done():
                    self._advance_all(sandbox[1], sandbox[0].result(), lambda t: len(t.need.jobs), finished)
                    sandbox = None
                    batched = [t for t in open_trees if not t.busy and isinstance(t.need, Generate)]
                if batched:
                    self._generate(batched, finished)
                elif sandbox is not None or any(t.futures for t in open_trees):
                    started = time.perf_counter()
                    pending = [sandbox[0]] if sandbox is not None else []
                    pending += [f for t in open_trees for f in t.futures if not f.done()]
                    wait(pending, return_when=FIRST_COMPLETED)
                    if sandbox is not None and sandbox[0].done():
                        self.stats.sandbox_wait_s += time.perf_counter() - started
                        self._advance_all(sandbox[1], sandbox[0].result(), lambda t: len(t.need.jobs), finished)
                        sandbox = None
                for tree in open_trees:
                    if tree.futures and all(f.done() for f in tree.futures):
                        answers = [f.result() for f in tree.futures]
                        tree.futures = []
                        self._advance(tree, answers, finished)
                open_trees = [t for t in open_trees if t.search not in finished]

    def _submit_runs(self, trees: list[_Open], pool: ThreadPoolExecutor) -> tuple[Future, list[_Open]] | None:
        """Every waiting candidate in one sandbox batch on the worker thread."""
        runs = [t for t in trees if not t.busy and isinstance(t.need, Run)]
        if not runs:
            return None
        executor: Executor = runs[0].need.executor
        if any(t.need.executor is not executor for t in runs):
            raise ValueError("one scheduler serves the trees of one executor")
        jobs = [job for t in runs for job in t.need.jobs]
        for tree in runs:
            tree.busy = True
        self.stats.run_calls += 1
        self.stats.runs += len(jobs)
        return pool.submit(executor.run_many, jobs), runs

    def _submit_requests(self, trees: list[_Open]) -> None:
        """Requests of backends that take them one at a time go out now, each tree's on their own."""
        for tree in trees:
            if tree.busy or not isinstance(tree.need, Generate):
                continue
            submit = getattr(tree.need.policy, "submit", None)
            if submit is None:
                continue
            tree.busy = True
            tree.futures = [submit(request) for request in tree.need.requests]
            self.stats.requests += len(tree.need.requests)
            self.stats.sequences += sum(r.n for r in tree.need.requests)

    def _generate(self, trees: list[_Open], finished: list[Search]) -> None:
        """One generate_batch per policy over every waiting tree of that policy."""
        by_policy: dict[int, tuple[Policy, list[_Open]]] = {}
        for tree in trees:
            assert isinstance(tree.need, Generate)
            by_policy.setdefault(id(tree.need.policy), (tree.need.policy, []))[1].append(tree)
        for policy, waiting in by_policy.values():
            requests = [r for t in waiting for r in t.need.requests]  # type: ignore[union-attr]
            started = time.perf_counter()
            answers = policy.generate_batch(requests)
            self._last_generate_s = time.perf_counter() - started
            self.stats.generate_s += self._last_generate_s
            self.stats.generate_calls += 1
            self.stats.requests += len(requests)
            self.stats.sequences += sum(r.n for r in requests)
            self._advance_all(waiting, answers, lambda t: len(t.need.requests), finished)

    def _advance_all(self, trees: list[_Open], results: list[Any], size: Any, finished: list[Search]) -> None:
        at = 0
        for tree in trees:
            count = size(tree)
            self._advance(tree, results[at:at + count], finished)
            at += count

    @staticmethod
    def _advance(tree: _Open, result: Any, finished: list[Search]) -> None:
        """Hand a tree what it waited for; it then waits on its next need, or is finished."""
        tree.busy = False
        try:
            tree.need = tree.steps.send(result)
        except StopIteration:
            finished.append(tree.search)
