"""LocalExecutor: a pool of warm fork servers (one per core) that run candidates against tests.

How a run is kept honest (details in forkserver.py, harness.py, wire.py, isolation.py):

* The candidate never shares an address space with the verdict. A trusted test process runs the tests;
  its `solution` module is a proxy whose calls go over a pipe to the untrusted candidate process, and
  only plain data comes back. `sys.exit`, `os._exit`, `SystemExit` subclasses, atexit hooks, printed
  "3 passed", `gc`/`settrace`/builtins patching all happen in a process whose only influence is the
  plain data it returns (or its death, which fails the test).
* The test process reports each test on a pipe the candidate does not hold; a pass needs every test
  found here statically (with `ast`, before anything runs) reported run and passed, an end marker and a
  clean exit.
* Each worker lives in a bubblewrap sandbox (jail.py: minimal read-only root, own PID/IPC/UTS/network
  namespaces, seccomp). Each candidate runs under an unprivileged uid of its own worker (not a shared
  65534: one candidate must not be able to kill another worker's candidate), in a PID, IPC and mount
  namespace of its own with fresh tmpfs /tmp and /dev/shm and a fresh /proc, with a scrubbed environment,
  no capabilities, rlimits and memory/pids cgroups; all it started dies with the run's init.
* Full isolation is one of two profiles (jail.py): "root" (distinct uids, cgroups) or "userns" (a non-root pod:
  the worker's own user namespace, the run's namespaces, seccomp, rlimits, a memory bound across the candidate's
  processes kept by the test process). Without either (no bubblewrap) the executor refuses to start unless
  `allow_weak_isolation`; then what is missing is listed in `self.isolation` and every `Verdict.isolation`, and
  `Verdict.profile` is "none".
"""

from __future__ import annotations

import dis
import functools
import io
import marshal
import math
import os
import queue
import socket
import subprocess
import sys
import threading
import tokenize
import types
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentq.sandbox import jail, wire
from agentq.sandbox.limits import Job, Limits, item_limits
from agentq.sandbox.outcome import verdict_from_run
from agentq.sandbox.verdict import Verdict

# The executor waits this long beyond the run's own timeout before it declares the worker hung.
GRACE_S = 30.0
MAX_CODE_BYTES = 4 << 20
WEAK_HINT = ("set sandbox.allowWeakIsolation: true (agentq sandbox serve --allow-weak-isolation) to run anyway, "
             "or see docs/deploy.md for what the sandbox needs")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerDied(RuntimeError):
    pass


@dataclass(frozen=True)
class CompiledTests:
    """What the test process needs: the test names, the source (for failure messages), its bytecode, and the
    names the tests bind themselves (which `from solution import *` must not replace)."""

    names: tuple[str, ...]
    payload: bytes  # marshalled code object followed by the UTF-8 source
    code_len: int
    own_names: tuple[str, ...] = ()


@functools.lru_cache(maxsize=512)
def find_tests(tests: str) -> CompiledTests | str:
    """Compile the tests here, outside the candidate's reach: their test_* names, or why they cannot run.

    Compiling once per distinct tests source (MCTS runs many candidates against the same tests) also saves
    the test process about a millisecond and a half per run. The names come from the tokens, not from an
    `ast` tree: this runs on run_many's threads, and CPython 3.11's conversion of a parse into `ast` objects
    is not thread-safe (SystemError "AST constructor recursion depth mismatch").
    """
    try:
        code = compile(tests, "tests.py", "exec", dont_inherit=True)
        names = [n for n in _module_level_functions(tests) if n.startswith("test_")]
    except SyntaxError as err:
        return f"the tests do not compile: {err.msg} (tests.py line {err.lineno})"
    except (ValueError, tokenize.TokenError) as err:
        return f"the tests do not compile: {err}"
    except (RecursionError, MemoryError, OverflowError) as err:  # nesting that exhausts the compiler
        return f"the tests do not compile: {type(err).__name__}: {str(err)[:200]}"
    if not names:
        return "the tests define no test_* function"
    marshalled = marshal.dumps(code)
    payload = marshalled + tests.encode("utf-8", "surrogatepass")
    return CompiledTests(tuple(dict.fromkeys(names)), payload, len(marshalled), _bound_names(code))


def _bound_names(code: types.CodeType) -> tuple[str, ...]:
    """Every global name the tests bind (top-level assignments, defs, imports; `global` stores in functions),
    read from the bytecode: thread-safe, unlike building an `ast` here."""
    names: set[str] = set()
    todo = [code]
    while todo:
        current = todo.pop()
        top = current is code
        for ins in dis.get_instructions(current):
            if ins.opname == "STORE_GLOBAL" or top and ins.opname in ("STORE_NAME", "DELETE_NAME"):
                names.add(ins.argval)
        todo += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    return tuple(sorted(names))


def _module_level_functions(source: str) -> list[str]:
    """Names of the functions a module defines at its top level (`def`/`async def` at column 0), in order."""
    names, after_def = [], False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if after_def and tok.type == tokenize.NAME:
            names.append(tok.string)
        after_def = tok.type == tokenize.NAME and tok.string == "def" and (
            tok.start[1] == 0 or tok.line[: tok.start[1]].strip() == "async")
    return names


def _unusable_code(code: str) -> str | None:
    """Why this code cannot even be handed to a worker (it would break the framing or the file write)."""
    try:
        size = len(code.encode("utf-8"))
    except UnicodeEncodeError as err:
        return f"the code is not valid text: {err.reason} at position {err.start}"
    if size > MAX_CODE_BYTES:
        return f"the code is {size} bytes; the sandbox takes at most {MAX_CODE_BYTES}"
    return None


class _Worker:
    """One fork server process (inside its bubblewrap sandbox) and the socket to it; one thread at a time."""

    def __init__(self, allow_weak: bool, jailed: bool = True) -> None:
        ours, theirs = socket.socketpair()  # jobs and results
        tests_ours, tests_theirs = socket.socketpair()  # tests, read only by each run's test process
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": _PACKAGE_ROOT,
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        prefix: list[str] = []
        self.jail: jail.Jail | None = None
        try:
            if not jailed:
                raise jail.IsolationUnavailable("bubblewrap cannot start here (no user namespaces allowed?)")
            self.jail = jail.make_jail()
            prefix, env = self.jail.argv, self.jail.env
        except jail.IsolationUnavailable as err:
            if not allow_weak:
                raise jail.IsolationUnavailable(f"{err}; {WEAK_HINT}") from None
            self.weak_reason = str(err)
        self.proc = subprocess.Popen(
            [*prefix, os.path.realpath(sys.executable), "-P", "-s", "-m", "agentq.sandbox.forkserver",
             str(theirs.fileno()), str(tests_theirs.fileno())],
            pass_fds=[theirs.fileno(), tests_theirs.fileno(), *(self.jail.pass_fds if self.jail else [])],
            env=env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        tests_theirs.close()
        if self.jail is not None:
            self.jail.started()
        self.sock, self.tests_sock = ours, tests_ours
        self.isolation: list[str] | None = None
        self.jail_notes = self.jail.notes if self.jail else [self.weak_reason]
        self.profile = self.jail.profile if self.jail else "none"

    def _ready(self) -> None:
        if self.isolation is None:
            self.sock.settimeout(GRACE_S)
            hello = wire.recv(self.sock)
            self.isolation = list(dict.fromkeys([*self.jail_notes, *hello.get("isolation", [])]))

    def run(self, code: str, tests: CompiledTests, limits: Limits) -> dict[str, Any]:
        """The run's raw facts: the events the test process sent with its result, and the template's trailer."""
        events: list[dict[str, Any]] = []
        result: dict[str, Any] | None = None
        try:
            self._ready()
            sent_limits = limits.model_dump()
            self.sock.settimeout(limits.timeout_s + GRACE_S)
            self.tests_sock.settimeout(limits.timeout_s + GRACE_S)
            wire.send(self.sock, {"code": code, "limits": sent_limits})
            wire.send(self.tests_sock, {"test_names": list(tests.names), "protected": list(tests.own_names),
                                        "limits": sent_limits, "tests_len": len(tests.payload),
                                        "tests_code_len": tests.code_len})
            self.tests_sock.sendall(tests.payload)
            while True:
                message = wire.recv(self.sock)
                if type(message) is not dict or message.get("trailer"):
                    break
                if type(message.get("events")) is list:
                    events += message["events"]
                if "result" in message and result is None and type(message["result"]) is dict:
                    result = message["result"]
        except (OSError, EOFError, wire.ProtocolError) as err:
            raise WorkerDied(f"sandbox worker {self.proc.pid} stopped: {err}") from None
        trailer = message if type(message) is dict else {}
        if not any(e.get("e") == "got_tests" for e in events):
            # The test process died before it read the tests (never the candidate's doing: it cannot reach it); the
            # tests may still sit in the tests socket, out of step, so this worker goes and the run is retried.
            self.close()
            raise WorkerDied(f"sandbox worker {self.proc.pid}: the run ended before its tests were read "
                             f"({trailer.get('runner_exit')})")
        raw = dict(result or {})
        raw["events"] = events
        raw["tests_exit"] = trailer.get("runner_exit")  # how the test process came through the run
        raw["candidate_exit"] = trailer.get("candidate_exit")  # the template reaped the run
        raw["cpu_ms"] = {**(raw.get("cpu_ms") or {}), **(trailer.get("cpu_ms") or {})}
        return raw

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.sock.fileno() >= 0

    def close(self) -> None:
        self.sock.close()
        self.tests_sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.jail is not None:
            self.jail.close()


class RunCosts:
    """Where the workers' time went, summed over runs: the runner's phases (wall ms) and CPU ms of the template's
    forks, the runner's phases, the candidate's processes, the runner in all (with the candidate) and the test
    process, as the worker measured them. What `agentq sandbox bench` breaks its per-candidate cost into."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs = 0
        self.phases_ms: dict[str, float] = {}
        self.cpu_ms: dict[str, float] = {}

    def add(self, raw: dict[str, Any]) -> None:
        with self._lock:
            self.runs += 1
            for table, values in ((self.phases_ms, raw.get("phases_ms")), (self.cpu_ms, raw.get("cpu_ms"))):
                for name, value in (values or {}).items():
                    if isinstance(value, int | float):
                        table[name] = table.get(name, 0.0) + value

    def per_run(self) -> dict[str, Any]:
        with self._lock:
            n = max(self.runs, 1)
            return {"runs": self.runs, "phases_ms": {k: round(v / n, 3) for k, v in self.phases_ms.items()},
                    "cpu_ms": {k: round(v / n, 3) for k, v in self.cpu_ms.items()}}


def _usable_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Cores this process may use: the CPUs it may run on (a pinned container sees fewer than os.cpu_count()),
    capped by its cgroup's CPU quota (a pod's CPU limit), so a sandbox pod limited to 2 CPUs on a 64-core
    node starts 2 warm workers, not 64 that the limit would throttle."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cpu_quota(root: str) -> float | None:
    """The CPU limit in cores from cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us / cfs_period_us); None: none."""
    try:
        limit, period = Path(root, "cpu.max").read_text().split()
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


class LocalExecutor:
    """Runs candidates on this machine. Thread-safe; `run_many` keeps the input order.

    Refuses to start (IsolationUnavailable) when full isolation cannot be had, unless `allow_weak_isolation`;
    then every verdict lists what was weakened in `Verdict.isolation`.
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None, allow_weak_isolation: bool = False):
        self.limits = limits or Limits()
        self.workers = workers or _usable_cores()
        self.allow_weak = allow_weak_isolation
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        self._jailed = True
        self.isolation: list[str] = []
        self.profile = "none"
        self.costs = RunCosts()
        try:
            first = self._start_workers()
            self.isolation = list(first.isolation or [])
            self.profile = first.profile
            if self.isolation and not self.allow_weak:
                raise jail.IsolationUnavailable(
                    f"full sandbox isolation is not available here ({'; '.join(self.isolation)}); {WEAK_HINT}"
                )
        except BaseException:
            self._close_workers()
            raise
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    def _start_workers(self) -> _Worker:
        """Start the pool and wait for one worker's hello (what isolation it has); bubblewrap failing to start
        (a pod without user namespaces) falls back to unjailed workers only when weak isolation is allowed."""
        for _ in range(self.workers):
            self._idle.put(self._spawn())
        first = self._idle.get()
        try:
            first._ready()
        except (OSError, EOFError, wire.ProtocolError) as err:
            self._idle.put(first)
            if first.jail is None or not self.allow_weak:
                hint = f"; {WEAK_HINT}" if first.jail is not None else ""
                raise WorkerDied(f"sandbox worker {first.proc.pid} did not start: {err}{hint}") from None
            self._close_workers()
            self._idle = queue.SimpleQueue()
            self._jailed = False
            return self._start_workers()
        self._idle.put(first)
        return first

    def _spawn(self) -> _Worker:
        worker = _Worker(self.allow_weak, self._jailed)
        with self._lock:
            self._all = [w for w in self._all if w.alive] + [worker]
        return worker

    def run(self, code: str, tests: str, limits: Limits | None = None) -> Verdict:
        if self._closed:
            raise RuntimeError("the executor is closed")
        limits = limits or self.limits
        compiled = find_tests(tests)
        if isinstance(compiled, str):
            return Verdict(status="error", message=compiled)
        unusable = _unusable_code(code)
        if unusable:
            return Verdict(status="error", expected_tests=len(compiled.names), message=unusable)
        names = list(compiled.names)
        worker = self._idle.get()
        try:
            for attempt in range(2):
                try:
                    raw = worker.run(code, compiled, limits)
                    raw["isolation"] = worker.isolation  # what bwrap could not do, and what the server could not
                    raw["profile"] = worker.profile
                    self.costs.add(raw)
                    break
                except WorkerDied as err:
                    # Not the candidate's doing when isolation holds (it cannot signal the server), so retry
                    # once on a fresh worker; a second death is reported rather than retried forever.
                    worker.close()
                    worker = self._spawn()
                    if attempt == 1:
                        return Verdict(status="killed", expected_tests=len(names), message=str(err))
            if not worker.alive:
                worker.close()
                worker = self._spawn()
        finally:
            self._idle.put(worker)
        return verdict_from_run(raw, names, limits)

    def run_many(self, items: Iterable[Job], limits: Limits | None = None) -> list[Verdict]:
        """Run (code, tests) or (code, tests, limits) items; an item's own limits (its task's time budget,
        `limits.for_reference`) win over `limits`, which win over the executor's."""
        return list(self._pool.map(lambda item: self.run(item[0], item[1], item_limits(item, limits)), items))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._close_workers()

    def _close_workers(self) -> None:
        with self._lock:
            workers = list(self._all)
        for worker in workers:
            worker.close()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
