"""`agentq tasks build --source repos`: repository-level tasks from source distributions, SWE-smith style.

One environment per repository, bugs injected procedurally (mutate.py, or rewritten by a model), a bug kept
only when the repository's own tests catch it. Per library: check the sha256 against SHA256SUMS, unpack a
pristine git tree once, find the code and the pytest suite as pytest would (layout.py: packages, `src/`, a
single top-level module, `testpaths`/`python_files`; or reject the library with the reason, one line), run
the suite twice (the second time with per-test coverage contexts) and keep the tests that pass both times.
Mutation sites are taken only on lines some stable test executes. Each mutant is written into a scratch copy
(never the pristine tree) and checked in three runs:

1. the tests that cover its lines (`--maxfail` past the failure cap, a time limit scaled from the suite's,
   and pytest-timeout's thread method, which ends the whole run at the first test past `--test-timeout`: a
   mutant that loops costs seconds, not a run limit): they must collect, finish, and 1 <= failing <= cap;
2. the failing tests and the sampled pass-to-pass tests together, on the mutant: the same tests fail again
   (not flaky) and every P2P test passes (a P2P test that reaches the bug some way coverage did not see, such
   as a cached value, drops the mutant);
3. the same subset on the original tree: everything passes (a test that fails inside this subset on the
   original, e.g. an order-dependent one, drops it).

So every kept task passes `agentq tasks validate` by construction. The issue is written from run 1's pytest
report (issues.py), before runs 2 and 3 (a leaking issue drops the mutant). What keeps the runs cheap without
skipping any: each library's bytecode cache (RepoSandbox.warm_pycache, read-only in every run) spares each run
compiling the library and re-rewriting the tests' asserts; the P2P sample is seeded by the files and the tests
that failed, so mutants caught by the same tests share a subset and run 3 happens once per distinct subset
(the original tree never changes); runs 2 and 3 stop at the first failure that decides the drop.

Every finished mutant and library is appended to `<out>.progress.jsonl` with the time each run took, so a
killed build resumes and the summary says where time goes. `--jobs N` runs N mutants at once (each worker its
own scratch copy; the next library's baseline overlaps them); `--shard I --num-shards N` builds every N-th
library into its own progress file (one pod of an Indexed Job each: controller/corpus.py), and a build without
`--shard` over the same `--out` merges every shard's progress into the corpus, running only what no shard
finished.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agentq.io import append_jsonl, atomic_write_json, read_jsonl, repair_jsonl, write_jsonl
from agentq.sandbox.repo import (
    RepoLimits,
    RepoSandbox,
    RunReport,
    copy_tree,
    git,
    passed,
    sdist_stem,
    unpack_pristine,
)
from agentq.tasks.issues import issue_text, leaks, model_issue
from agentq.tasks.layout import Layout, LibraryRejected, detect
from agentq.tasks.mutate import OPERATORS, Mutation, calls, mutations
from agentq.tasks.rewrite import rewrites
from agentq.tasks.schema import RepoRef, RepoTask, write_tasks

__all__ = ["LibraryRejected", "build", "issue_text", "leaks"]
# A mutant's run may take this much longer than the same tests took in the baseline, plus a floor for start-up.
RUN_SLACK, RUN_FLOOR_S = 5.0, 30.0


@dataclass
class Baseline:
    """A library's stable suite: tests passing on two runs, and which of them execute each source line."""

    library: str
    test_target: list[str]
    stable: list[str]
    seconds: float
    coverage: dict[str, dict[int, list[str]]] = field(default_factory=dict)  # file -> line -> test ids


def read_checksums(data_dir: Path) -> dict[str, str]:
    sums = data_dir / "SHA256SUMS"
    if not sums.exists():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[1].lstrip("*")] = parts[0].lower()
    return out


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def reset_scratch(work: Path) -> None:
    git(work, "checkout", "-q", "--", ".")
    git(work, "clean", "-qfdx", "-e", "*.dist-info")


def measure_baseline(sandbox: RepoSandbox, pristine: Path, scratch: Path, library: str) -> Baseline:
    """Run the suite twice (the second run with coverage per test); keep the tests that passed both times."""
    layout = detect(pristine)
    target = list(layout.test_target)
    started = time.monotonic()
    first = sandbox.run(scratch, ["--continue-on-collection-errors", *target])
    reset_scratch(scratch)
    seconds = time.monotonic() - started
    if first.status == "timeout":
        raise LibraryRejected(f"the suite did not finish within {sandbox.limits.timeout_s:.0f} s")
    # The project's own coverage configuration is left out (`--cov-config=/dev/null`): it may name coverage
    # plugins the environment lacks (pyflakes: covdefaults), and only the line map is wanted here.
    roots = [f"--cov={p}" for p in layout.roots]
    second = sandbox.run(scratch, ["--continue-on-collection-errors", *roots, "--cov-config=/dev/null",
                                   "--cov-context=test", "--cov-report=", *target], plugins=("pytest_cov",))
    coverage = _read_coverage(scratch / ".coverage")
    reset_scratch(scratch)
    if second.status != "finished" or not coverage:
        # No line map (coverage failed or timed out): a plain second run decides stability, and each mutant
        # then runs against every stable test, slower but still sound.
        second = sandbox.run(scratch, ["--continue-on-collection-errors", *target])
        coverage = {}
        reset_scratch(scratch)
    stable = sorted(n for n, (o, _) in first.outcomes.items()
                    if o == "passed" and passed(second.outcomes.get(n, ("missing", ""))[0]))
    if not stable:
        why = first.collect_errors[0][1] if first.collect_errors else first.stderr_tail.strip().splitlines()[-1:]
        raise LibraryRejected(f"no test passed twice (collected {first.collected}; {str(why)[:200]})")
    keep = set(stable)
    covered = {f: {ln: sorted(set(ts) & keep) for ln, ts in lines.items() if set(ts) & keep}
               for f, lines in coverage.items()}
    return Baseline(library, target, stable, round(seconds, 2), covered)


def _read_coverage(path: Path) -> dict[str, dict[int, list[str]]]:
    """file (relative to the tree) -> line -> test node ids, from coverage.py's SQLite data with contexts."""
    if not path.exists():
        return {}
    from coverage import CoverageData  # the test environment's coverage.py (pinned with pytest-cov)

    data = CoverageData(basename=str(path))
    data.read()
    out: dict[str, dict[int, list[str]]] = {}
    for measured in data.measured_files():
        rel = measured.removeprefix("/repo/")
        by_line = data.contexts_by_lineno(measured)
        out[rel] = {ln: sorted({c.split("|")[0] for c in ctxs if c}) for ln, ctxs in by_line.items()}
    with contextlib.suppress(sqlite3.Error):
        path.unlink()
    return out


@dataclass
class Outcome:
    key: str
    library: str
    operator: str
    result: str  # "kept" or the reason it was dropped
    seconds: float
    task: dict | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step: apply, detect, recheck, original


Edits = list[tuple[str, Mutation]]


def mutant_key(edits: Edits) -> str:
    return hashlib.sha256(json.dumps([(r, m.start, m.new_lines) for r, m in edits]).encode()).hexdigest()[:16]


class LibraryBuild:
    """Mutants of one library: the pristine tree, its baseline, and one scratch copy per worker thread."""

    def __init__(self, sdist: Path, sha: str, sandbox: RepoSandbox, cache: Path, args: argparse.Namespace) -> None:
        self.sdist, self.sha, self.sandbox, self.args = sdist, sha, sandbox, args
        self.stem = sdist_stem(sdist)
        self.pristine = unpack_pristine(sdist, cache)
        self.layout: Layout = detect(self.pristine)
        self.name, _, self.version = self.stem.rpartition("-")
        self.baseline_path = cache / f"{self.stem}.baseline.json"
        self.pycache = cache / f"{self.stem}.pycache"
        self._warm = False
        self._scratch: dict[int, Path] = {}
        self._lock = threading.Lock()
        self._original: dict[str, bool] = {}  # a test subset -> whether it all passed on the original tree
        self.issue_policy = getattr(args, "issue_policy", None)

    def scratch(self) -> Path:
        """This thread's private copy of the pristine tree (made on first use)."""
        me = threading.get_ident()
        with self._lock:
            tree = self._scratch.get(me)
            if tree is None:
                tree = self._scratch[me] = Path(tempfile.mkdtemp(prefix=f"agentq-scratch-{self.stem}-"))
        if not any(tree.iterdir()):
            copy_tree(self.pristine, tree)
        return tree

    def close(self) -> None:
        for tree in self._scratch.values():
            shutil.rmtree(tree, ignore_errors=True)

    def baseline(self) -> Baseline:
        if self.baseline_path.exists():
            raw = json.loads(self.baseline_path.read_text())
            raw["coverage"] = {f: {int(k): v for k, v in lines.items()} for f, lines in raw["coverage"].items()}
            # A baseline for another layout reading, or one whose coverage run failed (under load it can time out:
            # without a line map every mutant runs the whole suite), is measured again.
            if raw["test_target"] == list(self.layout.test_target) and raw["coverage"]:
                return Baseline(**raw)
        base = measure_baseline(self.sandbox, self.pristine, self.scratch(), self.stem)
        atomic_write_json(self.baseline_path, asdict(base))
        return base

    def warm(self, base: Baseline) -> None:
        """The library's bytecode cache, filled once (RepoSandbox.warm_pycache): every later run reads it and
        compiles only what a mutant changed. A cache for another interpreter or mount point is filled again.
        The fill is a trusted run of the pristine suite's collection: if pytest did not get to its end there, the
        sandbox itself is broken, and the build stops rather than record every mutant as crashed."""
        stamp = self.pycache / ".warm"
        key = json.dumps([sys.version, sys.prefix, self.sandbox.bwrap is not None])
        if not (stamp.exists() and stamp.read_text() == key):
            shutil.rmtree(self.pycache, ignore_errors=True)
            fresh = Path(tempfile.mkdtemp(prefix=f".{self.pycache.name}-", dir=self.pycache.parent))
            scratch = self.scratch()
            try:
                report = self.sandbox.warm_pycache(scratch, fresh, self.layout.source_files(self.pristine),
                                                   base.test_target)
            finally:
                reset_scratch(scratch)
            if report.exitstatus is None:
                shutil.rmtree(fresh, ignore_errors=True)
                why = (report.stderr_tail.strip().splitlines() or [report.status])[-1]
                raise SystemExit(f"agentq tasks build: {self.stem}: pytest did not finish collecting the pristine "
                                 f"suite in the sandbox ({report.status}): {why[:300]}")
            (fresh / ".warm").write_text(key)
            fresh.chmod(0o755)
            fresh.rename(self.pycache)
        self._warm = True

    def candidates(self, base: Baseline) -> Edits:
        """Mutation sites on covered lines, sampled round-robin over operators under the caps. Wrong-variable
        sites, the commonest by far, are capped to a share of the others (`--wrong-variable-share`)."""
        sites: dict[str, Edits] = defaultdict(list)
        for rel in self.layout.source_files(self.pristine):
            lines = base.coverage.get(rel)
            if base.coverage and not lines:
                continue
            for m in mutations((self.pristine / rel).read_text(encoding="utf-8", errors="surrogateescape")):
                if not base.coverage or any(ln in lines for ln in range(m.start, m.end + 1)):
                    sites[m.operator].append((rel, m))
        rng = random.Random(f"{self.args.seed}/{self.stem}")
        for op in sites:
            rng.shuffle(sites[op])
            sites[op] = sites[op][: self.args.per_operator]
        others = sum(len(v) for op, v in sites.items() if op != "wrong_variable")
        share = self.args.wrong_variable_share
        if "wrong_variable" in sites and share < 1:
            sites["wrong_variable"] = sites["wrong_variable"][: int(others * share / (1 - share)) if others else 0]
        picked: Edits = []
        queues = [sites[op] for op in OPERATORS if sites.get(op)]
        while queues and len(picked) < self.args.per_library:
            for q in list(queues):
                if q and len(picked) < self.args.per_library:
                    picked.append(q.pop(0))
                if not q:
                    queues.remove(q)
        return picked

    def model_rewrites(self, base: Baseline) -> Edits:
        """Bugs written by `--rewrite-model` (agentq/tasks/rewrite.py), `--rewrites` per library at most, spread
        over the covered source files; none without a model."""
        policy, count = getattr(self.args, "rewrite_policy", None), getattr(self.args, "rewrites", 0)
        if policy is None or count <= 0:
            return []
        files = [rel for rel in self.layout.source_files(self.pristine) if base.coverage.get(rel)]
        random.Random(f"{self.args.seed}/{self.stem}/rewrite").shuffle(files)
        out: Edits = []
        for i, rel in enumerate(files):
            want = count // len(files) + (i < count % len(files))
            if want:
                source = (self.pristine / rel).read_text(encoding="utf-8", errors="surrogateescape")
                out += [(rel, m) for m in rewrites(policy, self.name, source, set(base.coverage[rel]), want,
                                                   f"{self.args.seed}/{self.stem}/{rel}")]
        return out

    def covering(self, base: Baseline, rel: str, lines: range) -> list[str]:
        if not base.coverage:
            return list(base.stable)
        by_line = base.coverage.get(rel, {})
        return sorted({t for ln in lines for t in by_line.get(ln, [])})

    def broken_collection(self, report: RunReport) -> bool:
        """A test module the mutant stopped from importing. Files pytest imports only because a node id names
        them (pygments' example files are collected by its conftest, not as modules) fail the same way on the
        original tree, so their errors do not count."""
        return any(self.layout.is_test_file(path.split("::", 1)[0]) or path.endswith("conftest.py")
                   for path, _ in report.collect_errors)

    def _run(self, base: Baseline, tree: Path, tests: list[str], maxfail: int | None = None) -> RunReport:
        """A run of `tests` in `tree`, with a time limit scaled from what those tests took in the baseline; the
        first test past --test-timeout ends the run (its report then has no end: `timed_out`)."""
        expected = base.seconds * len(tests) / max(len(base.stable), 1)
        limits = RepoLimits(timeout_s=min(self.args.run_timeout, RUN_FLOOR_S + RUN_SLACK * expected),
                            per_test_s=self.args.test_timeout)
        sandbox = RepoSandbox(limits, allow_weak_isolation=self.sandbox.bwrap is None)
        options = ["--timeout-method=thread", "--continue-on-collection-errors",
                   *([f"--maxfail={maxfail}"] if maxfail else [])]
        report = sandbox.run(tree, [*options, *tests], pycache=self.pycache if self._warm else None)
        git(tree, "clean", "-qfdx", "-e", "*.dist-info")  # what the run wrote; the tree's sources stay
        return report

    def passes_on_original(self, base: Baseline, subset: list[str]) -> bool:
        """Whether `subset`, in this order, all passes on the original tree: run once per distinct subset (the
        original tree never changes; mutants caught by the same tests share their P2P sample, so their subsets
        recur), stopping at the first failure."""
        key = "\n".join(subset)
        with self._lock:
            if key in self._original:
                return self._original[key]
        report = self._run(base, self.scratch(), subset, maxfail=1)
        green = (report.status == "finished" and not self.broken_collection(report)
                 and all(passed(report.outcomes.get(n, ("missing", ""))[0]) for n in subset))
        with self._lock:
            self._original[key] = green
        return green

    def run_mutant(self, base: Baseline, edits: Edits, operator: str) -> Outcome:
        started = time.monotonic()
        phases: dict[str, float] = {}
        key = mutant_key(edits)

        def done(result: str, task: dict | None = None) -> Outcome:
            return Outcome(key, self.stem, operator, result, time.monotonic() - started, task,
                           {k: round(v, 2) for k, v in phases.items()})

        def timed(phase: str, fn, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202 - a stopwatch around a call
            t = time.monotonic()
            try:
                return fn(*a, **kw)
            finally:
                phases[phase] = phases.get(phase, 0.0) + time.monotonic() - t

        scratch = self.scratch()
        by_file: dict[str, list[Mutation]] = defaultdict(list)
        for rel, m in edits:
            by_file[rel].append(m)
        try:
            t = time.monotonic()
            for rel, ms in by_file.items():
                source = (self.pristine / rel).read_text(encoding="utf-8", errors="surrogateescape")
                for m in sorted(ms, key=lambda m: -m.start):
                    source = m.apply(source)
                (scratch / rel).write_text(source, encoding="utf-8", errors="surrogateescape")
            patch = git(scratch, "diff", "--no-color", "--no-ext-diff").stdout
            phases["apply"] = time.monotonic() - t
            if not patch.strip():
                return done("no_change")
            selected = sorted({t for rel, m in edits for t in self.covering(base, rel, range(m.start, m.end + 1))})
            if not selected:
                return done("uncovered")
            # 1. the covering tests on the mutant: which fail
            first = timed("detect", self._run, base, scratch, selected, self.args.max_failing + 1)
            if self.broken_collection(first):
                return done("collect_error")
            if first.status != "finished":
                return done("timeout" if timed_out(first, self.args.test_timeout) else first.status)
            failing = {n: first.outcomes.get(n, ("missing", "did not run"))[1] for n in selected
                       if not passed(first.outcomes.get(n, ("missing", ""))[0])}
            if any("Timeout" in msg for msg in failing.values()):
                return done("timeout")
            if not failing:
                return done("survived")
            if len(failing) > self.args.max_failing:
                return done("too_many_failures")
            files = sorted(by_file)
            changed = [ln for _, m in edits for ln in (*m.old_lines, *m.new_lines)]
            issue = issue_text(self.name, self.version, failing, first.tracebacks, changed, files + ["/repo"])
            if issue is None:
                return done("issue_leaks")
            pool = sorted({t for rel in files for lines in base.coverage.get(rel, {}).values() for t in lines}
                          - set(failing)) if base.coverage else sorted(set(base.stable) - set(failing))
            # Seeded by what was caught, not by the mutant: mutants caught by the same tests get the same sample.
            p2p = sorted(random.Random(json.dumps([files, sorted(failing)])).sample(pool, min(len(pool),
                                                                                         self.args.max_p2p)))
            subset = [*sorted(failing), *p2p]  # the order `agentq tasks validate` runs them in
            # 2. failing + P2P on the mutant: the same tests fail again, and every P2P test passes (the failing
            # tests come first, so one failure more than they are ends the run: the mutant is dropped either way)
            second = timed("recheck", self._run, base, scratch, subset, len(failing) + 1)
            if second.status != "finished" or self.broken_collection(second):
                return done("timeout" if timed_out(second, self.args.test_timeout) else "flaky")
            again = {n for n in subset if not passed(second.outcomes.get(n, ("missing", ""))[0])}
            if again & set(p2p):
                return done("p2p_fails_on_mutant")
            if again != set(failing):
                return done("flaky")
        finally:
            reset_scratch(scratch)
        # 3. the same subset on the original tree: everything passes
        if not timed("original", self.passes_on_original, base, subset):
            return done("subset_fails_on_original")
        rel0, m0 = edits[0]
        task = RepoTask(
            task_id=f"{self.stem}__{operator}__{rel0}:{m0.start}__{key[:6]}",
            group=self.name,
            repo=RepoRef(sdist=self.sdist.name, name=self.name, version=self.version, sha256=self.sha),
            bug_patch=patch, fail_to_pass=sorted(failing), pass_to_pass=p2p, issue=issue,
            test_target=base.test_target,
            metadata={"operator": operator, "file": rel0, "function": m0.function, "line": m0.start,
                      "mutants": len(edits), "issue_by": "template",
                      "edits": [{"file": r, "line": m.start, "operator": m.operator, "function": m.function}
                                for r, m in edits]},
        )
        if self.issue_policy is not None:
            text, by = timed("issue_model", model_issue, self.issue_policy, task, issue, changed, files + ["/repo"])
            task = task.model_copy(update={"issue": text, "metadata": {**task.metadata, "issue_by": by}})
        return done("kept", task.model_dump(exclude_none=True))


def timed_out(report: RunReport, test_timeout: float) -> bool:
    """A run the wall-clock limit stopped, or one that ended without pytest's end of session after running past
    the per-test limit (pytest-timeout's thread method ends the process at once)."""
    return report.status == "timeout" or (report.exitstatus is None and report.duration_s >= test_timeout)


def combinations(kept: Edits, count: int, seed: str, call_graph: dict[str, dict[str, set[str]]]) -> list[Edits]:
    """Up to `count` sets of 2-3 kept mutants that one bug hunt meets together: in the same function, or in
    two functions of one module where one calls the other (a call chain), on distinct lines."""
    groups: dict[tuple[str, str], Edits] = defaultdict(list)
    for rel, m in kept:
        groups[(rel, m.function)].append((rel, m))
    pools: list[Edits] = [g for g in groups.values() if len(g) >= 2]
    for (rel, caller), edits in sorted(groups.items()):
        for callee in sorted(call_graph.get(rel, {}).get(caller, set())):
            if (rel, callee) in groups:
                pools.append(edits + groups[(rel, callee)])
    rng = random.Random(seed)
    out: list[Edits] = []
    seen: set[str] = set()
    for _ in range(count * 4):
        if not pools or len(out) >= count:
            break
        pool = rng.choice(pools)
        combo = sorted(rng.sample(pool, min(len(pool), rng.choice((2, 3)))), key=lambda e: (e[0], e[1].start))
        spans = sorted((r, m.start, m.end) for r, m in combo)
        apart = all(a[0] != b[0] or a[2] < b[1] for a, b in zip(spans, spans[1:], strict=False))
        if apart and mutant_key(combo) not in seen:
            seen.add(mutant_key(combo))
            out.append(combo)
    return out


class Progress:
    """The build's record of finished mutants and libraries: this run's progress file (appended under a lock
    by every worker) plus whatever other shards' progress files over the same output hold."""

    def __init__(self, out: Path, shard: int | None, num_shards: int, quiet: bool) -> None:
        suffix = f".shard-{shard}-of-{num_shards}" if shard is not None else ""
        self.path = out.with_name(f"{out.stem}.progress{suffix}.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(self.path.with_suffix(".lock"), "w")  # noqa: SIM115 - held for the whole build
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"agentq tasks build: another build is writing {self.path}; wait for it or stop "
                             "it (two builds on one progress file would run the same mutants twice)") from None
        self.done: dict[str, dict] = {}
        for path in sorted(out.parent.glob(f"{out.stem}.progress*.jsonl")):
            repair_jsonl(path) if path == self.path else None
            for rec in read_jsonl(path):
                self.done[f"{rec['library']}/{rec['key']}"] = rec
        self.quiet, self.started, self.ran = quiet, time.monotonic(), 0
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            append_jsonl(self.path, record)
            self.done[f"{record['library']}/{record['key']}"] = record
            self.ran += 1
            if self.ran % 25 == 0:
                self.say(f"{self.ran} mutants run, {sum(r['result'] == 'kept' for r in self.done.values())} "
                         f"tasks kept so far, {time.monotonic() - self.started:.0f} s")

    def say(self, message: str) -> None:
        """A progress line: stderr under --json (stdout keeps the one JSON object), else stdout."""
        print(f"repos: {message}", file=sys.stderr if self.quiet else sys.stdout, flush=True)


def _run_once(lib: LibraryBuild, base: Baseline, edits: Edits, operator: str, progress: Progress) -> dict:
    key = mutant_key(edits)
    if f"{lib.stem}/{key}" in progress.done:
        return progress.done[f"{lib.stem}/{key}"]
    record = asdict(lib.run_mutant(base, edits, operator))
    record["seconds"] = round(record["seconds"], 2)
    progress.add(record)
    return record


def mine(sdists: list[Path], shard: int | None, num_shards: int) -> list[Path]:
    """The libraries of one shard: every num_shards-th in name order, starting at `shard`."""
    if shard is None:
        return sdists
    if not 0 <= shard < num_shards:
        raise SystemExit(f"agentq tasks build: --shard {shard} is not in 0..{num_shards - 1}")
    return [s for i, s in enumerate(sdists) if i % num_shards == shard]


def build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data_dir = Path(args.data_dir) / "repos"
    out = Path(args.out)
    shard, num_shards = getattr(args, "shard", None), getattr(args, "num_shards", 1)
    cache = Path(args.cache or out.with_name(f"{out.stem}.trees"))
    sdists = sorted(data_dir.glob("*.tar.gz"))
    if args.libraries:
        wanted = set(args.libraries.split(","))
        sdists = [s for s in sdists if sdist_stem(s).rpartition("-")[0] in wanted or sdist_stem(s) in wanted]
    if not sdists:
        print(f"agentq tasks build: no *.tar.gz under {data_dir}", file=sys.stderr)
        return 2
    sdists = mine(sdists, shard, num_shards)
    sums = read_checksums(data_dir)
    progress = Progress(out, shard, num_shards, args.json)
    weak = getattr(args, "allow_weak_isolation", False)
    # The baseline runs the whole suite twice (once traced for coverage): it gets its own, longer limit, since a
    # baseline cut short leaves no line map and every mutant then runs the whole suite.
    sandbox = RepoSandbox(RepoLimits(timeout_s=max(args.run_timeout, getattr(args, "baseline_timeout", 1800.0)),
                                     per_test_s=30), allow_weak_isolation=weak)
    args.issue_policy = getattr(args, "issue_policy", None) or _policy(getattr(args, "issue_model", None))
    args.rewrite_policy = getattr(args, "rewrite_policy", None) or _policy(getattr(args, "rewrite_model", None))
    rejected_libs: list[dict] = []
    libraries: dict[str, dict] = {}
    builds: list[LibraryBuild] = []
    pending: dict[str, list[tuple[str, Mutation, Future]]] = {}
    bases: dict[str, Baseline] = {}
    jobs = max(1, getattr(args, "jobs", 1))
    with ThreadPoolExecutor(jobs) as pool, _queue_dropped_on_interrupt(pool):
        for sdist in sdists:
            stem = sdist_stem(sdist)
            lib_started = time.monotonic()
            expected = sums.get(sdist.name)
            if expected and sha256(sdist) != expected:
                rejected_libs.append({"library": stem,
                                      "reason": f"sha256 does not match SHA256SUMS ({expected[:12]}...)"})
                continue
            try:
                lib = LibraryBuild(sdist, expected or sha256(sdist), sandbox, cache, args)
                builds.append(lib)
                base = lib.baseline()  # this thread, while the pool runs the previous libraries' mutants
                picked = lib.candidates(base)
            except LibraryRejected as err:
                rejected_libs.append({"library": stem, "reason": str(err)})
                continue
            except (OSError, ValueError, subprocess.CalledProcessError) as err:
                reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
                rejected_libs.append({"library": stem, "reason": " ".join(reason.split())[:300]})
                continue
            if not picked:
                rejected_libs.append({"library": stem, "reason": "no mutation site on a line a stable test runs "
                                      f"({len(lib.layout.source_files(lib.pristine))} source files found under "
                                      f"{', '.join(lib.layout.roots)})"})
                continue
            libraries[stem] = {"stable_tests": len(base.stable), "suite_s": base.seconds, "sites_picked": len(picked),
                               "test_target": base.test_target, "started": lib_started}
            progress.say(f"{stem}: {len(base.stable)} stable tests, {len(picked)} mutants to try")
            lib.warm(base)
            picked += lib.model_rewrites(base)
            pending[stem] = [(rel, m, pool.submit(_run_once, lib, base, [(rel, m)], m.operator, progress))
                             for rel, m in picked]
            bases[stem] = base
        combos: list[Future] = []
        for lib in builds:
            if lib.stem not in pending:
                continue
            kept = [(rel, m) for rel, m, future in pending[lib.stem] if future.result()["result"] == "kept"]
            graph = {rel: calls((lib.pristine / rel).read_text(encoding="utf-8", errors="surrogateescape"))
                     for rel in {rel for rel, _ in kept}}
            combos += [pool.submit(_run_once, lib, bases[lib.stem], combo, "combined", progress)
                       for combo in combinations(kept, args.combine, f"{args.seed}/{lib.stem}", graph)]
        for future in combos:
            future.result()
    for lib in builds:
        if lib.stem in libraries:
            libraries[lib.stem]["seconds"] = round(time.monotonic() - libraries[lib.stem].pop("started"), 1)
        lib.close()
    return _finish(args, out, progress, libraries, rejected_libs, time.monotonic() - started,
                   write=shard is None)


@contextlib.contextmanager
def _queue_dropped_on_interrupt(pool: ThreadPoolExecutor) -> Iterator[None]:
    """Ctrl-C, or SIGTERM (a pod of the fan-out deleted): the queued mutants are dropped and only the running ones
    end (the next build resumes from the progress file). Without it the pool's exit first ran every mutant still
    queued, thousands of them, so an interrupted build went on for hours."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _policy(model_file: str | None):  # noqa: ANN202 - a Policy, imported only when a model writes issues
    """The policy that writes issues (`--issue-model FILE`: a `model:` block as in a round file), or None."""
    if not model_file:
        return None
    import yaml

    from agentq.config import ModelSpec, parse_model
    from agentq.policy.base import load_policy

    raw = yaml.safe_load(Path(model_file).read_text())
    return load_policy(parse_model(raw.get("model", raw) if isinstance(raw, dict) else raw, ModelSpec, model_file))


def held_out(groups: list[str], share: float, seed: int) -> set[str]:
    """The libraries for evaluation: round(share * n) of them (at least one when share > 0 and there are two or
    more), those first in the seeded hash order `agentq tasks split` uses, so the choice is stable across runs.
    A plain per-group hash threshold would leave 15 libraries with no held-out one about 1 time in 30."""
    if share <= 0 or len(groups) < 2:
        return set()
    k = min(len(groups) - 1, max(1, round(share * len(groups))))
    return set(sorted(groups, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).digest())[:k])


def _phase_means(records: list[dict]) -> dict[str, dict[str, float]]:
    """Mean seconds per step of a mutant's checks, by result: where a build's time goes."""
    by: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        if rec.get("phases"):
            by[rec["result"]].append(rec)
    return {result: {"mutants": len(recs), "seconds": round(sum(r["seconds"] for r in recs) / len(recs), 2),
                     **{p: round(sum(r["phases"].get(p, 0.0) for r in recs) / len(recs), 2)
                        for p in ("apply", "detect", "recheck", "original")}}
            for result, recs in sorted(by.items())}


def _finish(args: argparse.Namespace, out: Path, progress: Progress, libraries: dict[str, dict],
            rejected_libs: list[dict], seconds: float, write: bool = True) -> int:
    records = list(progress.done.values())  # every library of every progress file, this run's or before
    tasks, seen = [], set()
    for rec in records:
        if rec["result"] == "kept" and rec["task"]["bug_patch"] not in seen:
            seen.add(rec["task"]["bug_patch"])
            tasks.append(RepoTask.model_validate(rec["task"]))
    holdout = set(args.holdout.split(",")) if args.holdout else held_out(sorted({t.group for t in tasks}),
                                                                         args.test_share, args.seed)
    test = [t for t in tasks if t.group in holdout]
    train = [t for t in tasks if t not in test]
    if write:
        write_tasks(out, tasks)
        write_tasks(out.with_name(f"{out.stem}.train.jsonl"), train)
        write_tasks(out.with_name(f"{out.stem}.test.jsonl"), test)
        write_jsonl(out.with_name(f"{out.stem}.rejected.jsonl"), rejected_libs)
    per_lib: dict[str, Counter] = defaultdict(Counter)
    per_op: dict[str, Counter] = defaultdict(Counter)
    for rec in records:
        per_lib[rec["library"]][rec["result"]] += 1
        per_op[rec["operator"]][rec["result"]] += 1
    lines = [f"{'library':<28}{'tried':>7}{'kept':>7}{'stable tests':>14}{'suite s':>9}{'build s':>9}"]
    for lib in sorted(per_lib.keys() | libraries.keys()):
        c, info = per_lib[lib], libraries.get(lib, {})
        lines.append(f"{lib:<28}{sum(c.values()):>7}{c['kept']:>7}{info.get('stable_tests', '-'):>14}"
                     f"{info.get('suite_s', '-'):>9}{info.get('seconds', '-'):>9}")
    lines.append(f"{'operator':<20}{'tried':>7}{'kept':>7}{'valid %':>9}  dropped")
    for op, c in sorted(per_op.items()):
        tried = sum(c.values())
        dropped = ", ".join(f"{k} {v}" for k, v in c.most_common() if k != "kept")
        lines.append(f"{op:<20}{tried:>7}{c['kept']:>7}{100 * c['kept'] / max(tried, 1):>8.0f}%  {dropped}")
    lines += [f"rejected {rej['library']}: {rej['reason']}" for rej in rejected_libs]
    groups = sorted({t.group for t in test})
    lines.append(f"tasks: {len(tasks)} (train {len(train)}, test {len(test)}: held-out libraries {', '.join(groups)})")
    lines.append(f"wrote {out} in {seconds:.0f} s" if write else
                 f"shard done in {seconds:.0f} s: {progress.path} (merge: the same command without --shard)")
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps({
            "source": "repos", "tasks": len(tasks), "train": len(train), "test": len(test), "written": write,
            "test_libraries": groups, "rejected_libraries": rejected_libs, "seconds": round(seconds, 1),
            "mutants_run": progress.ran, "progress": str(progress.path),
            "libraries": {lib: {**libraries.get(lib, {}), **dict(per_lib[lib])}
                          for lib in sorted(per_lib.keys() | libraries.keys())},
            "operators": {op: dict(c) for op, c in sorted(per_op.items())},
            "seconds_per_mutant": _phase_means(records),
        }))
    return 0
