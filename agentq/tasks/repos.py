"""`agentq tasks build --source repos`: repository-level tasks from source distributions, SWE-smith style.

One environment per repository, bugs injected procedurally (mutate.py), a bug kept only when the repository's
own tests catch it. Per library: check the sha256 against SHA256SUMS, unpack a pristine git tree once, find
the pytest suite (or reject the library with the reason, one line), run it twice (the second time with
per-test coverage contexts) and keep the tests that pass both times. Mutation sites are taken only on lines
some stable test executes: a line no test runs cannot make a test fail. Each mutant is written into a scratch
copy (never the pristine tree) and run against exactly the tests that cover its line, which is sound (a test
that does not execute the line cannot see it) and cuts a mutant's run from the whole suite to a handful of
tests. Kept: the tests still collect, 1 <= failing <= cap, nothing timed out, the same failing set on a second
run. Every finished mutant and library is appended to `<out>.progress.jsonl`, so a killed build resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from agentq.io import append_jsonl, atomic_write_json, read_jsonl, write_jsonl
from agentq.sandbox.repo import (
    RepoLimits,
    RepoSandbox,
    copy_tree,
    git,
    is_test_path,
    passed,
    python_path,
    sdist_stem,
    unpack_pristine,
)
from agentq.tasks.mutate import OPERATORS, Mutation, mutations
from agentq.tasks.schema import RepoRef, RepoTask, write_tasks

TEST_DIRS = ("tests", "test", "testing")
SKIP_DIRS = {"docs", "doc", "examples", "example", "benchmarks", "bench", "scripts", "tools", "build", ".git"}
MAX_ISSUE_TESTS = 8


class LibraryRejected(ValueError):
    """A library that cannot yield tasks; the message is the one-line reason."""


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


def find_test_target(tree: Path) -> list[str]:
    """Where the suite lives: a top-level tests/ (test/, testing/), else tests inside the package."""
    def has_tests(d: Path) -> bool:
        return any(d.rglob("test_*.py")) or any(d.rglob("*_test.py"))

    for name in TEST_DIRS:
        if (tree / name).is_dir() and has_tests(tree / name):
            return [f"{name}/"]
    roots = [tree / p for p in python_path(tree)]
    inside = sorted({str(d.relative_to(tree)) + "/" for root in roots for name in TEST_DIRS
                     for d in root.glob(f"*/{name}") if d.is_dir() and has_tests(d)})
    if inside:
        return inside
    raise LibraryRejected("no pytest suite found (no tests/, test/ or <package>/tests with test_*.py files)")


def source_files(tree: Path, test_target: list[str]) -> list[str]:
    """The library's own modules: .py files under its import roots, not tests, docs, examples or setup."""
    files = []
    for root in python_path(tree):
        base = tree / root
        for path in sorted(base.rglob("*.py")):
            rel = str(path.relative_to(tree))
            parts = path.relative_to(base).parts
            if root == "." and len(parts) == 1:
                continue  # setup.py, conftest.py, noxfile.py at the top level
            if set(parts[:-1]) & SKIP_DIRS or is_test_path(rel, test_target) or ".dist-info" in rel:
                continue
            files.append(rel)
    return list(dict.fromkeys(files))


def reset_scratch(work: Path) -> None:
    git(work, "checkout", "-q", "--", ".")
    git(work, "clean", "-qfdx", "-e", "*.dist-info")


def measure_baseline(sandbox: RepoSandbox, pristine: Path, scratch: Path, library: str) -> Baseline:
    """Run the suite twice (the second run with coverage per test); keep the tests that passed both times."""
    target = find_test_target(pristine)
    started = time.monotonic()
    first = sandbox.run(scratch, ["--continue-on-collection-errors", *target])
    reset_scratch(scratch)
    seconds = time.monotonic() - started
    if first.status == "timeout":
        raise LibraryRejected(f"the suite did not finish within {sandbox.limits.timeout_s:.0f} s")
    # The project's own coverage configuration is left out (`--cov-config=/dev/null`): it may name coverage
    # plugins the environment lacks (pyflakes: covdefaults), and only the line map is wanted here.
    roots = [f"--cov={p}" for p in python_path(pristine)]
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


def leaks(text: str, mutation_lines: list[str], paths: list[str]) -> list[str]:
    """What in an issue text gives the bug away: a changed line (either side) or a source path."""
    found = [line.strip() for line in mutation_lines if len(line.strip()) >= 4 and line.strip() in text]
    found += [p for p in paths if p in text]
    return found


def issue_text(name: str, version: str, failing: dict[str, str], mutation_lines: list[str],
               paths: list[str]) -> str | None:
    """The failure report: failing test ids and the first line of each error; None if it cannot avoid a leak."""
    shown = sorted(failing)[:MAX_ISSUE_TESTS]
    more = len(failing) - len(shown)
    for with_messages in (True, False):
        lines = [f"Running the test suite of {name} {version}, {len(failing)} test(s) fail:", ""]
        for nodeid in shown:
            lines.append(f"- {nodeid}")
            message = failing[nodeid].strip()
            if with_messages and message and not leaks(message, mutation_lines, paths):
                lines.append(f"    {message[:300]}")
        if more:
            lines.append(f"- ... and {more} more")
        lines += ["", "They passed before. Find the bug in the library and fix it without changing the tests."]
        text = "\n".join(lines)
        if not leaks(text, mutation_lines, paths):
            return text
    return None


@dataclass
class Outcome:
    key: str
    library: str
    operator: str
    result: str  # "kept" or the reason it was dropped
    seconds: float
    task: dict | None = None


class LibraryBuild:
    """Mutants of one library, run in its scratch copy."""

    def __init__(self, sdist: Path, sha: str, sandbox: RepoSandbox, cache: Path, args: argparse.Namespace) -> None:
        self.sdist, self.sha, self.sandbox, self.args = sdist, sha, sandbox, args
        self.stem = sdist_stem(sdist)
        self.pristine = unpack_pristine(sdist, cache)
        self.name, _, self.version = self.stem.rpartition("-")
        self.scratch = Path(tempfile.mkdtemp(prefix=f"agentq-scratch-{self.stem}-"))
        copy_tree(self.pristine, self.scratch)
        self.baseline_path = cache / f"{self.stem}.baseline.json"

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def baseline(self) -> Baseline:
        if self.baseline_path.exists():
            raw = json.loads(self.baseline_path.read_text())
            raw["coverage"] = {f: {int(k): v for k, v in lines.items()} for f, lines in raw["coverage"].items()}
            return Baseline(**raw)
        base = measure_baseline(self.sandbox, self.pristine, self.scratch, self.stem)
        atomic_write_json(self.baseline_path, asdict(base))
        return base

    def candidates(self, base: Baseline) -> list[tuple[str, Mutation]]:
        """Mutation sites on covered lines, sampled round-robin over operators under the caps."""
        sites: dict[str, list[tuple[str, Mutation]]] = defaultdict(list)
        for rel in source_files(self.pristine, base.test_target):
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
        picked: list[tuple[str, Mutation]] = []
        queues = [sites[op] for op in OPERATORS if sites.get(op)]
        while queues and len(picked) < self.args.per_library:
            for q in list(queues):
                if q and len(picked) < self.args.per_library:
                    picked.append(q.pop(0))
                if not q:
                    queues.remove(q)
        return picked

    def covering(self, base: Baseline, rel: str, lines: range) -> list[str]:
        if not base.coverage:
            return list(base.stable)
        by_line = base.coverage.get(rel, {})
        return sorted({t for ln in lines for t in by_line.get(ln, [])})

    def run_mutant(self, base: Baseline, edits: list[tuple[str, Mutation]], operator: str) -> Outcome:
        started = time.monotonic()
        key = hashlib.sha256(json.dumps([(r, m.start, m.new_lines) for r, m in edits]).encode()).hexdigest()[:16]
        by_file: dict[str, list[Mutation]] = defaultdict(list)
        for rel, m in edits:
            by_file[rel].append(m)
        try:
            for rel, ms in by_file.items():
                source = (self.pristine / rel).read_text(encoding="utf-8", errors="surrogateescape")
                for m in sorted(ms, key=lambda m: -m.start):
                    source = m.apply(source)
                (self.scratch / rel).write_text(source, encoding="utf-8", errors="surrogateescape")
            patch = git(self.scratch, "diff", "--no-color", "--no-ext-diff").stdout
            if not patch.strip():
                return Outcome(key, self.stem, operator, "no_change", 0.0)
            selected = sorted({t for rel, m in edits for t in self.covering(base, rel, range(m.start, m.end + 1))})
            if not selected:
                return Outcome(key, self.stem, operator, "uncovered", 0.0)
            verdicts = []
            for _ in range(2):
                report = self.sandbox.run(self.scratch, selected)
                git(self.scratch, "clean", "-qfdx", "-e", "*.dist-info")  # what the run wrote; the mutant stays
                if report.collect_errors:
                    return Outcome(key, self.stem, operator, "collect_error", time.monotonic() - started)
                if report.status != "finished":
                    return Outcome(key, self.stem, operator, report.status, time.monotonic() - started)
                failing = {n: report.outcomes.get(n, ("missing", "did not run"))[1] for n in selected
                           if not passed(report.outcomes.get(n, ("missing", ""))[0])}
                if any("Timeout" in msg for msg in failing.values()):
                    return Outcome(key, self.stem, operator, "timeout", time.monotonic() - started)
                if not failing:
                    return Outcome(key, self.stem, operator, "survived", time.monotonic() - started)
                if len(failing) > self.args.max_failing:
                    return Outcome(key, self.stem, operator, "too_many_failures", time.monotonic() - started)
                verdicts.append(failing)
            if set(verdicts[0]) != set(verdicts[1]):
                return Outcome(key, self.stem, operator, "flaky", time.monotonic() - started)
        finally:
            reset_scratch(self.scratch)
        failing = verdicts[0]
        changed = [ln for _, m in edits for ln in (*m.old_lines, *m.new_lines)]
        issue = issue_text(self.name, self.version, failing, changed, sorted(by_file) + ["/repo"])
        if issue is None:
            return Outcome(key, self.stem, operator, "issue_leaks", time.monotonic() - started)
        files = sorted(by_file)
        p2p_pool = sorted({t for rel in files for lines in base.coverage.get(rel, {}).values() for t in lines}
                          - set(failing)) if base.coverage else sorted(set(base.stable) - set(failing))
        rng = random.Random(key)
        p2p = sorted(rng.sample(p2p_pool, min(len(p2p_pool), self.args.max_p2p)))
        rel0, m0 = edits[0]
        task = RepoTask(
            task_id=f"{self.stem}__{operator}__{rel0}:{m0.start}__{key[:6]}",
            group=self.name,
            repo=RepoRef(sdist=self.sdist.name, name=self.name, version=self.version, sha256=self.sha),
            bug_patch=patch, fail_to_pass=sorted(failing), pass_to_pass=p2p, issue=issue,
            test_target=base.test_target,
            metadata={"operator": operator, "file": rel0, "function": m0.function, "line": m0.start,
                      "mutants": len(edits), "edits": [{"file": r, "line": m.start, "operator": m.operator}
                                                       for r, m in edits]},
        )
        return Outcome(key, self.stem, operator, "kept", time.monotonic() - started,
                       task.model_dump(exclude_none=True))


def combinations(kept: list[tuple[str, Mutation]], count: int, seed: str) -> list[list[tuple[str, Mutation]]]:
    """Up to `count` sets of 2-3 kept mutants of one module, on distinct lines (a harder task)."""
    by_file: dict[str, list[tuple[str, Mutation]]] = defaultdict(list)
    for rel, m in kept:
        by_file[rel].append((rel, m))
    rng = random.Random(seed)
    out = []
    files = [f for f, ms in sorted(by_file.items()) if len(ms) >= 2]
    for _ in range(count * 4):
        if not files or len(out) >= count:
            break
        pool = by_file[rng.choice(files)]
        size = min(len(pool), rng.choice((2, 3)))
        combo = rng.sample(pool, size)
        spans = sorted((m.start, m.end) for _, m in combo)
        if all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False)):
            out.append(sorted(combo, key=lambda e: e[1].start))
    return out


def build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data_dir = Path(args.data_dir) / "repos"
    out = Path(args.out)
    progress_path = out.with_name(f"{out.stem}.progress.jsonl")
    cache = Path(args.cache or out.with_name(f"{out.stem}.trees"))
    sdists = sorted(data_dir.glob("*.tar.gz"))
    if args.libraries:
        wanted = set(args.libraries.split(","))
        sdists = [s for s in sdists if sdist_stem(s).rpartition("-")[0] in wanted or sdist_stem(s) in wanted]
    if not sdists:
        print(f"agentq tasks build: no *.tar.gz under {data_dir}", file=sys.stderr)
        return 2
    sums = read_checksums(data_dir)
    done: dict[str, dict] = {}
    if progress_path.exists():
        for rec in read_jsonl(progress_path):
            done[f"{rec['library']}/{rec['key']}"] = rec
    limits = RepoLimits(timeout_s=args.run_timeout, per_test_s=30)
    sandbox_weak = getattr(args, "allow_weak_isolation", False)
    sandbox = RepoSandbox(limits, allow_weak_isolation=sandbox_weak)
    rejected_libs: list[dict] = []
    libraries: dict[str, dict] = {}
    for sdist in tqdm(sdists, desc="libraries", unit="lib", disable=args.json):
        stem = sdist_stem(sdist)
        lib_started = time.monotonic()
        expected = sums.get(sdist.name)
        if expected and sha256(sdist) != expected:
            rejected_libs.append({"library": stem, "reason": f"sha256 does not match SHA256SUMS ({expected[:12]}...)"})
            continue
        lib = None
        try:
            lib = LibraryBuild(sdist, expected or sha256(sdist), sandbox, cache, args)
            base = lib.baseline()
            # Mutant runs get their own, tighter limits: a mutant that loops is dropped, not waited for.
            lib.sandbox = RepoSandbox(RepoLimits(timeout_s=min(args.run_timeout, 60 + 2 * base.seconds),
                                                 per_test_s=args.test_timeout), sandbox_weak)
            picked = lib.candidates(base)
            kept_edits: list[tuple[str, Mutation]] = []
            for rel, m in tqdm(picked, desc=stem, unit="mutant", leave=False, disable=args.json):
                outcome = _run_once(lib, base, [(rel, m)], m.operator, done, progress_path)
                if outcome["result"] == "kept":
                    kept_edits.append((rel, m))
            for combo in combinations(kept_edits, args.combine, f"{args.seed}/{stem}"):
                _run_once(lib, base, combo, "combined", done, progress_path)
            libraries[stem] = {"stable_tests": len(base.stable), "suite_s": base.seconds,
                               "sites_picked": len(picked), "seconds": round(time.monotonic() - lib_started, 1)}
        except LibraryRejected as err:
            rejected_libs.append({"library": stem, "reason": str(err)})
        except (OSError, ValueError, subprocess.CalledProcessError) as err:
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            rejected_libs.append({"library": stem, "reason": " ".join(reason.split())[:300]})
        finally:
            if lib is not None:
                lib.close()
    return _finish(args, out, done, libraries, rejected_libs, time.monotonic() - started)


def _run_once(lib: LibraryBuild, base: Baseline, edits: list[tuple[str, Mutation]], operator: str,
              done: dict[str, dict], progress_path: Path) -> dict:
    key = hashlib.sha256(json.dumps([(r, m.start, m.new_lines) for r, m in edits]).encode()).hexdigest()[:16]
    if f"{lib.stem}/{key}" in done:
        return done[f"{lib.stem}/{key}"]
    record = asdict(lib.run_mutant(base, edits, operator))
    record["seconds"] = round(record["seconds"], 2)
    append_jsonl(progress_path, record)
    done[f"{lib.stem}/{key}"] = record
    return record


def held_out(groups: list[str], share: float, seed: int) -> set[str]:
    """The libraries for evaluation: round(share * n) of them (at least one when share > 0 and there are two or
    more), those first in the seeded hash order `agentq tasks split` uses, so the choice is stable across runs.
    A plain per-group hash threshold would leave 15 libraries with no held-out one about 1 time in 30."""
    if share <= 0 or len(groups) < 2:
        return set()
    k = min(len(groups) - 1, max(1, round(share * len(groups))))
    return set(sorted(groups, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).digest())[:k])


def _finish(args: argparse.Namespace, out: Path, done: dict[str, dict], libraries: dict[str, dict],
            rejected_libs: list[dict], seconds: float) -> int:
    records = list(done.values())  # every library of the progress file, finished in this run or before
    tasks, seen = [], set()
    for rec in records:
        if rec["result"] == "kept" and rec["task"]["bug_patch"] not in seen:
            seen.add(rec["task"]["bug_patch"])
            tasks.append(RepoTask.model_validate(rec["task"]))
    holdout = set(args.holdout.split(",")) if args.holdout else held_out(sorted({t.group for t in tasks}),
                                                                         args.test_share, args.seed)
    test = [t for t in tasks if t.group in holdout]
    train = [t for t in tasks if t not in test]
    write_tasks(out, tasks)
    write_tasks(out.with_name(f"{out.stem}.train.jsonl"), train)
    write_tasks(out.with_name(f"{out.stem}.test.jsonl"), test)
    write_jsonl(out.with_name(f"{out.stem}.rejected.jsonl"), rejected_libs)
    per_lib: dict[str, Counter] = defaultdict(Counter)
    per_op: dict[str, Counter] = defaultdict(Counter)
    for rec in records:
        per_lib[rec["library"]][rec["result"]] += 1
        per_op[rec["operator"]][rec["result"]] += 1
    print(f"{'library':<28}{'tried':>7}{'kept':>7}{'stable tests':>14}{'suite s':>9}{'build s':>9}")
    for lib in sorted(per_lib.keys() | libraries.keys()):
        c, info = per_lib[lib], libraries.get(lib, {})
        print(f"{lib:<28}{sum(c.values()):>7}{c['kept']:>7}{info.get('stable_tests', '-'):>14}"
              f"{info.get('suite_s', '-'):>9}{info.get('seconds', '-'):>9}")
    print(f"{'operator':<20}{'tried':>7}{'kept':>7}{'valid %':>9}  dropped")
    for op, c in sorted(per_op.items()):
        tried = sum(c.values())
        dropped = ", ".join(f"{k} {v}" for k, v in c.most_common() if k != "kept")
        print(f"{op:<20}{tried:>7}{c['kept']:>7}{100 * c['kept'] / max(tried, 1):>8.0f}%  {dropped}")
    for rej in rejected_libs:
        print(f"rejected {rej['library']}: {rej['reason']}")
    groups = sorted({t.group for t in test})
    print(f"tasks: {len(tasks)} (train {len(train)}, test {len(test)}: held-out libraries {', '.join(groups)})")
    print(f"wrote {out} in {seconds:.0f} s")
    if args.json:
        print(json.dumps({
            "source": "repos", "tasks": len(tasks), "train": len(train), "test": len(test),
            "test_libraries": groups, "rejected_libraries": rejected_libs, "seconds": round(seconds, 1),
            "libraries": {lib: {**libraries.get(lib, {}), **dict(per_lib[lib])}
                          for lib in sorted(per_lib.keys() | libraries.keys())},
            "operators": {op: dict(c) for op, c in sorted(per_op.items())},
        }))
    return 0
