"""The fork server inside each worker's sandbox: a clean template, a test process, and per run the candidate.

Why fork before the job is read: every process forked from a Python process inherits its whole heap, and freed
blocks keep their bytes. A server that read a job or a result and then forked the next candidate handed it the
previous run's failure messages (which quote expected values) through `gc.get_objects()`, `sys._getframe()` or
a plain read of its own memory. So the template (this process, once set up) never receives a job, never sees a
result, never holds a test. What runs a run:

1. The test process, forked from the template once (and again after a run its watch ended, below): the tests'
   uid, no capability, not dumpable, outside every run's PID namespace, so a candidate can neither see it,
   signal it, trace it nor read it. Per run it takes from the template the run's ends (its socket to the
   candidate, the output files), reads the tests from the tests socket, runs them against a proxy of the
   candidate (harness.py) and sends the outcomes to the executor with the result, while a timer signal ends the
   run at the deadline, the time budget or the memory bound. It holds earlier runs' tests and results and never
   forks: nothing of it reaches a candidate. A run its watch ended also ends it (the signal came in the middle of
   the tests), and the template forks a new one.
2. The run's init, pid 1 of a new PID namespace: libc's pause() in a clone of the template that shares its memory
   (isolation.spawn_namespace_init), there so that the candidate is pid 2 and killing it ends every process of
   the run.
3. The candidate, forked from the template into that namespace: it reads its own job (code and limits), unshares
   a mount and IPC namespace (fresh tmpfs scratch and /proc), writes the solution file, then joins the worker's
   cgroups, drops to its uid with no capability under rlimits (and, by the worker's seccomp filter, no socket but
   AF_UNIX, so no run changes network state a later one could read) and imports the candidate's code.

Once the test process says the run is over, the template kills the init, and with it, by the kernel's hand,
everything of the run, reaps the candidate and sends the trailer (its exit status, the processes' CPU).

Why so few processes forked per run: a forked process pays a copy-on-write fault for every page it writes
(Python's reference counts write to every object it touches), and tearing its copy of the address space down
costs as much again. The tests used to run in a forked init that also set the run up: that process cost about
3 ms of CPU a run, more than the candidate's own work. (docs/benchmarks.md has the figures.)

Protocol (wire framing). Job socket: template -> {"ready", "pid", "isolation"}; per run executor -> {"code",
"limits"}; the test process -> {"events": [{"e": ...}, ...], "result": {...}} (events that outgrow
EVENTS_FLUSH_BYTES go ahead, {"events": [...]}); template -> {"trailer", "runner_exit", "candidate_exit",
"cpu_ms"}. Tests socket: per run executor -> {"test_names", "protected", "limits", "tests_len",
"tests_code_len"} + tests_len bytes (the tests' marshalled code object, tests_code_len bytes, then their source).
Template -> test process (a datagram socket): per run the CPU meter's reading with the run's three descriptors;
back, once the result is sent: two bytes, whether the candidate hung up ("W") and whether the test process is
exiting ("X"). Candidate -> template (a pipe, closed before the candidate's code runs): "J<set-up CPU
microseconds>" once it has read the job and set the run up.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import marshal
import os
import random
import resource
import signal
import socket
import sys
import time
from typing import Any, NoReturn

from agentq.sandbox import candidate, harness, isolation, leetcode, wire

TESTS_NPROC = 4
TMPFS_MB = 512
TMPFS_MIN_MB = 64
# The test process holds the tests' events and sends them with its result, one message a run. Sent one by one, each
# was a system call and a wake-up of the executor's thread: about 0.7 ms of CPU a run across both sides (HumanEvalFix
# has seven tests a task). Events that outgrow this many bytes go ahead, so no message nears wire.MAX_MESSAGE.
EVENTS_FLUSH_BYTES = 1 << 20
MEMORY_POLL_S = 0.02  # how often the test process sums the run's memory where no cgroup limits it
# Where no cgroup meters the candidate's CPU (the "userns" profile), the time budget is wall-clock time, which
# load on the machine stretches: there it is never less than this (limits.BUDGET_FLOOR_S is CPU time).
WALL_BUDGET_FLOOR_S = 0.25
EXIT_WAIT_S = 0.2  # how long the template waits for the exit status of a candidate that hung up
# How a process tells the template why it ended (anything else: it crashed).
EXIT_HANGUP = 3  # the executor closed its socket: the worker is being stopped


def candidate_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}


def _arrange_fds(stdout_fd: int, stderr_fd: int, devnull: int, keep: list[int]) -> list[int]:
    """In a child: stdin from /dev/null, stdout/stderr to the run's files, `keep` as fds 3.., close the rest."""
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (devnull, stdout_fd, stderr_fd, *keep)]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
    os.closerange(len(moved), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    return list(range(3, len(moved)))


def _exit_info(status: int | None) -> dict[str, Any] | None:
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"signal": sig, "name": signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)}
    return {"code": os.waitstatus_to_exitcode(status)}


def _tail(fd: int, limit: int) -> str:
    """The last `limit` bytes of an output memfd, read without following anything the candidate made."""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, min(limit, size), max(0, size - limit)).decode("utf-8", "replace")
    except OSError:
        return ""


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _ms(seconds: float) -> float:
    return round(1000 * seconds, 3)


class Server:
    """The template: set up once, then per run start the run's init and candidate and hand the test process the
    run's ends; it reads nothing of the run but its end."""

    def __init__(self, job: socket.socket, tests: socket.socket):
        self.job, self.tests = job, tests
        self.notes: list[str] = []
        self.jailed = bool(os.environ.get("AGENTQ_SANDBOX_UIDS"))
        if not self.jailed:  # run directly (weak isolation allowed): the old, weaker set-up
            self.notes.append("no bubblewrap: the candidate sees the host's filesystem (read-only where "
                              "permissions say so), its processes and its SysV IPC, and no seccomp filter keeps "
                              "it from network sockets, whose state the runs of a worker then share")
            private = isolation.private_tmp(TMPFS_MB)
            exposed = isolation.expose_interpreter() if private is None else None
            self.notes.extend(filter(None, [isolation.unshare_network(), private, exposed]))
        isolation.become_subreaper()
        isolation.not_dumpable()
        # No Python signal handler in this process: the run's init (isolation.spawn_namespace_init) shares its
        # memory and inherits its handlers, and a Python handler would run there on this process's state.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.conf = isolation.Confinement()
        self.notes += self.conf.notes
        self.pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        self.run_namespaces = self._probe_namespaces()
        if not self.run_namespaces:
            self.notes.append("no per-run namespaces: candidates share this worker's PID, IPC, network and mount "
                              "namespaces")
        else:  # every run's scratch is /tmp of its own mount namespace: set the candidates' environment once
            os.environ.clear()
            os.environ.update(candidate_env("/tmp"))
        self.prelude = leetcode.prelude_namespace()
        self.builtins = leetcode.prelude_builtins(self.prelude)
        isolation.drop_bounding_set()  # for every child at once (none of these processes ever executes a program)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.conf.open_meter()  # kept open by the test process across its change of uid
        self.tester: int | None = None  # the test process's pid
        self.control: socket.socket | None = None  # the datagram socket to it
        # Everything imported so far is shared with every child; keep the collector from touching (and so
        # copying) those pages in each of them.
        gc.freeze()

    def _probe_namespaces(self) -> bool:
        """Whether a run can get its own PID, IPC, network and mount namespaces here (needs CAP_SYS_ADMIN)."""
        try:
            isolation.private_mounts()
            isolation.new_pid_namespace()
        except OSError:
            return False
        child = os.fork()
        if child == 0:
            try:
                isolation.fresh_run_mounts(self.conf.candidate_uid, 1)
            except BaseException:  # noqa: BLE001
                os._exit(1)
            os._exit(0)
        isolation.restore_pid_namespace(self.pid_ns)
        return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0

    def serve(self) -> None:
        """Run jobs until the executor hangs up (closing its end is how it stops a worker)."""
        try:
            wire.send(self.job, {"ready": True, "pid": os.getpid(), "isolation": self.notes})
            while self._one_run():
                pass
        except ConnectionError:
            return
        finally:
            self.conf.close()

    def _start_tester(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _Tester(self, theirs).main()
        theirs.close()
        self.tester, self.control = pid, ours
        return ours

    def _tester_gone(self) -> dict[str, Any]:
        """Reap the test process, which has ended; a new one is forked for the next run."""
        assert self.tester is not None and self.control is not None
        self.control.close()
        try:
            status: int | None = os.waitpid(self.tester, 0)[1]
        except ChildProcessError:
            status = None
        self.tester = self.control = None
        return _exit_info(status) or {"code": None}

    def _one_run(self) -> bool:
        """Start the run's candidate (it reads the job itself), let the test process run the tests, end the run,
        send the trailer. False: stop serving."""
        cpu_at_start = time.process_time()
        control = self.control or self._start_tester()
        out_fd, err_fd = os.memfd_create("stdout"), os.memfd_create("stderr")
        cand_end, tests_end = socket.socketpair()
        news_r, news_w = os.pipe()
        work = "/tmp" if self.run_namespaces else self._scratch()
        cpu_before = self.conf.cpu_used()
        init = None
        if self.run_namespaces:
            isolation.new_pid_namespace()
        try:
            if self.run_namespaces:
                init = isolation.spawn_namespace_init()  # pid 1, so that the candidate is pid 2
            pid = os.fork()
            if pid == 0:
                os.close(news_r)
                _Candidate(self, work, cand_end.detach(), out_fd, err_fd, news_w).main()
        finally:
            if self.run_namespaces:
                isolation.restore_pid_namespace(self.pid_ns)
        forking = time.process_time() - cpu_at_start
        os.close(news_w)
        cand_end.close()
        try:
            socket.send_fds(control, [b"%r" % cpu_before], [tests_end.fileno(), out_fd, err_fd])
            reply = control.recv(4096)
        except OSError:
            reply = b""
        finally:
            tests_end.close()
            os.close(out_fd)
            os.close(err_fd)
        hung_up, exiting = reply[:1] == b"W", reply[1:2] == b"X"
        tests_exit = {"code": 0} if reply and not exiting else self._tester_gone()
        setup_cpu_s = _read_news(news_r)
        exited = _reap(pid, EXIT_WAIT_S if hung_up else 0.0)
        usage = self._end_run(init, pid, work, exited)
        if setup_cpu_s is None or tests_exit.get("code") == EXIT_HANGUP:
            # The candidate ended before it had read the job (the executor hung up, or the job may still wait in
            # the job socket, out of step): this worker must go.
            return False
        trailer = {"trailer": True, "runner_exit": tests_exit,
                   "candidate_exit": _exit_info(exited[0] if exited else None),
                   "cpu_ms": {"template_fork": _ms(forking), "candidate_setup": _ms(setup_cpu_s),
                              "candidate": _ms(_cpu(usage) - setup_cpu_s),
                              "template_rest": _ms(time.process_time() - cpu_at_start - forking)}}
        wire.send(self.job, trailer)
        return True

    def _scratch(self) -> str:
        import tempfile  # weak isolation only: the template does not carry it into every fork

        work = tempfile.mkdtemp(prefix="agentq-run-")
        if self.conf.root:
            os.chown(work, self.conf.candidate_uid, self.conf.candidate_uid)
        return work

    def _end_run(self, init: int | None, pid: int, work: str,
                 exited: tuple[int, resource.struct_rusage] | None) -> resource.struct_rusage:
        """Kill the run's init (the kernel then kills every process of its PID namespace) and whatever else the
        cgroups hold; the candidate process's resource usage (`exited`: it was reaped already)."""
        if init is not None:
            os.kill(init, signal.SIGKILL)
        else:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)  # its own process group, where it can; the cgroups do the rest
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # The candidate first: the dying init waits until every process of its namespace is reaped, this one too.
        usage = exited[1] if exited else os.wait4(pid, 0)[2]
        if init is not None:
            os.waitpid(init, 0)
        else:
            self.conf.kill_candidates()
            __import__("shutil").rmtree(work, ignore_errors=True)
        isolation.reap_orphans()
        return usage


def _read_news(fd: int) -> float | None:
    """The candidate's line on the template's pipe, "J<setup CPU microseconds>", written once it has read the job
    and set the run up; None where it ended before. Read to the end, which comes when the candidate closes the
    pipe, before its code runs (the tests may end before the candidate has read the job: this waits for it)."""
    data = b""
    while chunk := os.read(fd, 64):
        data += chunk
    os.close(fd)
    return int(data[1:]) / 1e6 if data[:1] == b"J" and data[1:].isdigit() else None


def _reap(pid: int, seconds: float) -> tuple[int, resource.struct_rusage] | None:
    """The candidate's wait status and resource usage if it has exited, or does within `seconds` (it hung up: it
    is exiting); None while it runs."""
    end = time.monotonic() + seconds
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, usage
        if time.monotonic() >= end:
            return None
        time.sleep(0.0005)


class RunEnded(Exception):
    """The watcher ended the run (deadline, time budget or memory): what the test process reports, once."""


class _Tester:
    """The worker's test process (see the module docstring): set up once, then one `_TestRun` per run."""

    def __init__(self, server: Server, control: socket.socket) -> None:
        self.server, self.conf, self.control = server, server.conf, control
        self.job_sock = server.job

    def main(self) -> NoReturn:
        try:
            os.setsid()
            os.close(self.server.pid_ns)
            resource.setrlimit(resource.RLIMIT_NPROC, (TESTS_NPROC, TESTS_NPROC))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            isolation.drop_privileges(self.conf.tests_uid)
            isolation.not_dumpable()  # setuid made it dumpable again
            while True:
                try:
                    message, fds, _, _ = socket.recv_fds(self.control, 4096, 3)
                except OSError:
                    os._exit(EXIT_HANGUP)
                if not message or len(fds) != 3:
                    os._exit(EXIT_HANGUP)  # the template is gone
                _TestRun(self, None if message == b"None" else float(message), fds).run()
        except BaseException:  # noqa: BLE001 - never return into the template's loop
            os._exit(70)

    def limit(self, limits: dict[str, Any]) -> None:
        """This run's limits, as soft limits under the hard ones this process started with (a pod's, or none): a
        later run may ask for more."""
        with open("/proc/self/statm", "rb") as fh:  # what it holds already (it lives on) plus the run's memory
            held = int(fh.read().split()[0]) * resource.getpagesize()
        # RLIMIT_CPU counts this process's whole life: the run may use cpu_s more than it has used so far.
        used = int(_cpu(resource.getrusage(resource.RUSAGE_SELF))) + 1
        for res, value in ((resource.RLIMIT_AS, held + (int(limits["memory_mb"]) << 20)),
                           (resource.RLIMIT_FSIZE, int(limits["file_mb"]) << 20),
                           (resource.RLIMIT_CPU, used + int(limits["cpu_s"]))):
            hard = resource.getrlimit(res)[1]
            resource.setrlimit(res, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


class _TestRun:
    """One run in the test process: read the tests, run them, watch the limits, send the result."""

    def __init__(self, tester: _Tester, cpu_before: float | None, fds: list[int]) -> None:
        self.tester, self.conf, self.cpu_before = tester, tester.conf, cpu_before
        self.sock_fd, self.out_fd, self.err_fd = fds
        self.done = False
        self.reporting = False  # inside report(): an alarm that ends the run waits for the send to finish
        self.pending: str | None = None
        self.events: list[dict[str, Any]] = []
        self.sent = 0  # events[:sent] went ahead of the result (EVENTS_FLUSH_BYTES)
        self.unsent_bytes = 0

    def run(self) -> None:
        tests_sock = self.tester.server.tests
        try:
            header = wire.recv(tests_sock)
            # The run's clock starts here, not when the template set the run up: it does that as soon as the last
            # run ended, and the candidate's process then waits for its job (the executor sends job and tests
            # together).
            self.start, self.cpu_start = time.monotonic(), time.process_time()
            payload = wire.recv_exact(tests_sock, int(header["tests_len"]))
        except (EOFError, OSError):
            os._exit(EXIT_HANGUP)
        self.limits = limits = header["limits"]
        self.tester.limit(limits)
        for fd, target in ((self.out_fd, 1), (self.err_fd, 2)):  # the tests' output goes to the run's files
            os.dup2(fd, target)
        self.report({"e": "got_tests"})  # before the watch, which may end the run at its first look
        self._start_watch()
        random.seed(0)
        split = int(header["tests_code_len"])
        tests = harness.Tests(marshal.loads(payload[:split]), payload[split:].decode("utf-8", "surrogatepass"))
        del payload
        channel = harness.Channel(socket.socket(fileno=self.sock_fd))
        with contextlib.suppress(RunEnded):
            harness.run_tests(channel, tests, list(header["test_names"]), self.tester.server.prelude, self.report,
                              frozenset(header.get("protected", ())), self.tester.server.builtins)
        self.finish(None)
        channel.sock.sock.close()
        harness.forget_run()

    def report(self, event: dict[str, Any]) -> None:
        if self.done:
            raise RunEnded("the run has ended")
        self.reporting = True
        try:
            self.events.append(event)
            self.unsent_bytes += 64 + len(str(event.get("message", "")))
            if self.unsent_bytes > EVENTS_FLUSH_BYTES:
                wire.send(self.tester.job_sock, {"events": self.events[self.sent:]})
                self.sent, self.unsent_bytes = len(self.events), 0
        finally:
            self.reporting = False
        if self.pending is not None:
            self.finish(self.pending)

    # --- the watch: deadline, time budget, memory ----------------------------------------------------------
    # A timer signal (SIGALRM) in this process, not a thread: a run that ends before its first look costs nothing
    # (a thread cost each run about 0.5 ms), and the handler runs in the thread that runs the tests, between
    # their steps or in place of a blocking receive. The tests must not use SIGALRM themselves.

    def _start_watch(self) -> None:
        limits, now = self.limits, time.monotonic()
        self.deadline, self.wall_reason = self.start + float(limits["timeout_s"]), "wall"
        budget = limits.get("time_budget_s")
        self.budget = None if budget is None else float(budget)
        self.budget_s = self.budget  # the budget applied, for the verdict's message
        if self.budget is not None and self.cpu_before is None:  # no CPU meter: the budget is wall-clock time
            self.budget_s = max(self.budget, WALL_BUDGET_FLOOR_S)
            if now + self.budget_s < self.deadline:
                self.deadline, self.wall_reason = now + self.budget_s, "budget"
            self.budget = None
        self.memory = self._memory_bound()
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._on_alarm()

    def _on_alarm(self, *_: object) -> None:
        """End the run at the deadline, when the candidate's tree has spent its time budget (CPU seconds of its
        cgroup, else wall-clock seconds), or when its processes together exceed the memory bound; else look
        again when the earliest of them could next be reached. (Also what a stray SIGALRM causes: a look.)"""
        if self.done:
            return
        try:
            wait, reason = self._next_look()
        except Exception:  # noqa: BLE001 - a run whose limits cannot be looked at is ended, not left unwatched
            wait, reason = 0.0, "wall"
        if wait > 0:
            signal.setitimer(signal.ITIMER_REAL, wait)
        elif self.reporting:
            self.pending = reason  # report() ends the run once its message is whole
        else:
            self.finish(reason)

    def _next_look(self) -> tuple[float, str]:
        """Seconds until a limit could next be reached and which (0 or less: it is reached)."""
        wait, reason = self.deadline - time.monotonic(), self.wall_reason
        if wait > 0 and self.budget is not None:
            # The tree uses at most one core (its cgroup's CPU quota), so the rest of the budget cannot be spent
            # in less wall time than it: waiting that long and looking again is exact enough.
            unspent = self.budget - ((self.conf.cpu_used() or 0.0) - (self.cpu_before or 0.0))
            wait, reason = (unspent, "budget") if unspent < wait else (wait, reason)
        if wait > 0 and self.memory is not None:
            if isolation.run_memory() > self.memory:
                wait, reason = 0.0, "memory"
            else:
                wait = min(wait, MEMORY_POLL_S)
        return wait, reason

    def _memory_bound(self) -> int | None:
        """Bytes the candidate's processes may hold together, where no cgroup holds them to it (the "userns"
        profile: this process measures them); None where a cgroup does or there is no run namespace."""
        if not self.tester.server.run_namespaces or self.conf.limits_memory:
            return None
        return int(self.limits["memory_mb"]) << 20

    def finish(self, ended: str | None) -> None:
        """Send the run's result and tell the template the run is over. A run the watch ended (`ended`) also ends
        this process: the signal came in the middle of the tests, which must not go on (the template forks a new
        test process for the next run)."""
        self.done = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        collected, cpu_collected = time.monotonic(), time.process_time()
        cpu_after = self.conf.cpu_used()
        limit = int(self.limits["output_bytes"])
        for stream in (sys.stdout, sys.stderr):
            try:  # noqa: SIM105 - what the tests printed, into the run's files before they are read
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        result = {
            "timed_out": ended in ("wall", "budget"),
            "budget_spent": ended == "budget",
            "budget_s": self.budget_s,
            "memory_spent": ended == "memory",
            "duration_s": round(collected - self.start, 6),
            "cpu_s": None if self.cpu_before is None or cpu_after is None else
            round(cpu_after - self.cpu_before, 6),
            "stdout": _tail(self.out_fd, limit),
            "stderr": _tail(self.err_fd, limit),
            "isolation": self.tester.server.notes,
            # Where the run's time went (agentq sandbox bench): wall clock of its phases, CPU of this process.
            "phases_ms": {"run": _ms(collected - self.start)},
            "cpu_ms": {"tests": _ms(cpu_collected - self.cpu_start)},
        }
        wire.send(self.tester.job_sock, {"events": self.events[self.sent:], "result": result})
        gone = any(e.get("gone") or e.get("e") == "import_error" for e in self.events)
        self.tester.control.send((b"W" if gone else b"-") + (b"X" if ended is not None else b"-"))
        if ended is not None:
            os._exit(0)
        devnull = self.tester.server.devnull
        for fd, target in ((self.out_fd, 1), (self.err_fd, 2)):
            os.dup2(devnull, target)
            os.close(fd)


class _Candidate:
    """The candidate's process, pid 2 of the run's PID namespace: trusted code until `candidate.serve` runs the
    candidate's code. It reads its own job and sets the run up (scratch, /proc, cgroup limits, solution file):
    a process forked per run pays a copy-on-write fault for every page it writes, so the set-up is done here, in
    the one Python process a run forks, not in another."""

    def __init__(self, server: Server, work: str, sock_fd: int, out_fd: int, err_fd: int, news_fd: int) -> None:
        self.server, self.conf, self.work = server, server.conf, work
        self.sock_fd, self.out_fd, self.err_fd, self.news_fd = sock_fd, out_fd, err_fd, news_fd

    def main(self) -> NoReturn:
        try:
            os.setsid()  # its own process group, which is killed where it is not in a namespace of its own
            cpu_start = time.process_time()
            try:
                job = wire.recv(self.server.job)
            except (EOFError, OSError, wire.ProtocolError):
                os._exit(EXIT_HANGUP)
            limits, code, uid = job["limits"], job["code"], self.conf.candidate_uid
            if self.server.run_namespaces:
                isolation.fresh_run_mounts(uid, max(TMPFS_MIN_MB, 4 * int(limits["file_mb"])))
            self.conf.prepare_run(limits)
            solution = os.path.join(self.work, "solution.py")
            fd = os.open(solution, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, code.encode("utf-8", "surrogatepass"))
                if self.conf.root:
                    os.fchown(fd, uid, uid)
            finally:
                os.close(fd)
            # The job is out of the job socket and the run is set up (with this process's CPU for it).
            os.write(self.news_fd, b"J%d" % int(1e6 * (time.process_time() - cpu_start)))
            self.conf.join()  # the cgroups, and so the time budget, from here on
            (sock,) = _arrange_fds(self.out_fd, self.err_fd, self.server.devnull, [self.sock_fd])  # closes news_fd
            os.chdir(self.work)
            if not self.server.run_namespaces:
                os.environ.clear()
                os.environ.update(candidate_env(self.work))
            self.conf.enter(limits, uid, int(limits["max_procs"]))
            random.seed(0)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            candidate.serve(socket.socket(fileno=sock), code, solution, self.server.prelude, self.server.builtins)
        except BaseException:  # noqa: BLE001 - never return into the template's loop
            os._exit(70)


def main() -> None:
    Server(socket.socket(fileno=int(sys.argv[1])), socket.socket(fileno=int(sys.argv[2]))).serve()


if __name__ == "__main__":
    main()
