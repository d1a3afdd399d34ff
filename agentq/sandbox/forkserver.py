"""The fork server inside each worker's sandbox: a clean template that forks the run's init for each job.

Why fork before the job is read: every process forked from a Python process inherits its whole heap, and freed
blocks keep their bytes. A server that read a job or a result and then forked the next candidate handed it the
previous run's failure messages (which quote expected values) through `gc.get_objects()`, `sys._getframe()` or
a plain read of its own memory. So the template (this process, once set up) never receives a job, never sees a
result, never holds a test. Per run it forks the run's init, pid 1 of a new PID namespace, which

1. reads the job (the candidate's code and limits) from the job socket, unshares a mount and IPC namespace
   of its own (fresh tmpfs scratch and /proc), and forks the candidate (its uid, the worker's cgroups, no
   capability, rlimits, and, by the worker's seccomp filter, no socket but AF_UNIX, so no run changes network
   state a later one could read), which has read nothing but its own job;
2. only then reads the tests from the tests socket, drops to the tests' uid (not dumpable, so the candidate,
   which sees it as pid 1, can neither trace it nor read it through /proc, and a signal reaches it only where
   it has a handler), runs them against a proxy of the candidate (harness.py) and sends the outcomes to the
   executor with its result, while a timer signal ends the run at the deadline, the time budget or the memory
   bound;
3. exits, and with it, by the kernel's hand, everything the candidate started.

The template reaps it and adds a trailer (its exit status and CPU), without reading anything of the run.
Two processes per run, not three: a separate test process and collector cost a fork, an exit and a pipe.

Protocol (wire framing). Job socket: template -> {"ready", "pid", "isolation"}; per run executor -> {"code",
"limits"}; the run's init -> {"events": [{"e": ...}, ...], "result": {...}} (events that outgrow
EVENTS_FLUSH_BYTES go ahead, {"events": [...]}); template -> {"trailer", "runner_exit", "cpu_ms"}.
Tests socket: per run executor -> {"test_names", "protected", "tests_len", "tests_code_len"} + tests_len bytes
(the tests' marshalled code object, tests_code_len bytes, then their source).
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
# The run's init holds the tests' events and sends them with its result, one message a run. Sent one by one, each
# was a system call and a wake-up of the executor's thread: about 0.7 ms of CPU a run across both sides (HumanEvalFix
# has seven tests a task). Events that outgrow this many bytes go ahead, so no message nears wire.MAX_MESSAGE.
EVENTS_FLUSH_BYTES = 1 << 20
MEMORY_POLL_S = 0.02  # how often the run's init sums its processes' memory where no cgroup limits it
# How the runner tells the template why it ended (anything else: it crashed).
EXIT_HANGUP = 3  # the executor closed the job socket: the worker is being stopped
EXIT_FATAL = 4  # the tests socket is out of step: this worker must go


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


def _poll(pid: int) -> int | None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if done else None


def _wait_briefly(pid: int, seconds: float = 0.2) -> int | None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status = _poll(pid)
        if status is not None:
            return status
        time.sleep(0.0005)
    return None


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
        self.conf = isolation.Confinement()
        self.notes += self.conf.notes
        self.pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        self.run_namespaces = self._probe_namespaces()
        if not self.run_namespaces:
            self.notes.append("no per-run namespaces: candidates share this worker's PID, IPC, network and mount "
                              "namespaces")
        self.prelude = leetcode.prelude_namespace()
        self.builtins = leetcode.prelude_builtins(self.prelude)
        isolation.drop_bounding_set()  # for every child at once (none of these processes ever executes a program)
        self.devnull = os.open(os.devnull, os.O_RDWR)
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

    def _one_run(self) -> bool:
        """Fork the next run's init (it waits for the job), reap it, send the trailer. False: stop serving."""
        cpu_at_start = time.process_time()
        if self.run_namespaces:
            isolation.new_pid_namespace()
        try:
            init = os.fork()
            if init == 0:
                _RunInit(self).main()
        finally:
            if self.run_namespaces:
                isolation.restore_pid_namespace(self.pid_ns)
        forking = time.process_time() - cpu_at_start
        # As pid 1 of its namespace, it exits only once the kernel has killed and reaped everything in it.
        _, status, usage = os.wait4(init, 0)
        if not self.run_namespaces:
            self.conf.kill_candidates(None)
        isolation.reap_orphans()
        code = os.waitstatus_to_exitcode(status)
        if code == EXIT_HANGUP:
            return False
        wire.send(self.job, {"trailer": True, "runner_exit": _exit_info(status),
                             "cpu_ms": {"template_fork": _ms(forking), "run": _ms(_cpu(usage))}})
        return code != EXIT_FATAL



class RunEnded(Exception):
    """The watcher ended the run (deadline, time budget or memory): what the run's init reports, once."""


class _RunInit:
    """The run's init: pid 1 of the run's PID namespace, trusted code only (see the module docstring)."""

    def __init__(self, server: Server) -> None:
        self.server, self.conf = server, server.conf
        self.done = False
        self.reporting = False  # inside report(): an alarm that ends the run waits for the send to finish
        self.pending: str | None = None
        self.events: list[dict[str, Any]] = []
        self.sent = 0  # events[:sent] went ahead of the result (EVENTS_FLUSH_BYTES)
        self.unsent_bytes = 0

    def main(self) -> NoReturn:
        try:
            os.setsid()
            # pid 1 of the run: a signal from the candidate reaches it only where it has a handler (SIGINT's)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                job = wire.recv(self.server.job)
            except (EOFError, OSError, wire.ProtocolError):
                os._exit(EXIT_HANGUP)
            self.run(job)
        except BaseException:  # noqa: BLE001 - never return into the template's loop
            os._exit(70)

    # --- the run ------------------------------------------------------------------------------------------

    def run(self, job: dict[str, Any]) -> NoReturn:
        server, limits = self.server, job["limits"]
        self.limits = limits
        self.received, cpu_received = time.monotonic(), time.process_time()
        uid = self.conf.candidate_uid
        if server.run_namespaces:
            isolation.fresh_run_mounts(uid, max(TMPFS_MIN_MB, 4 * int(limits["file_mb"])))
            work = "/tmp"
        else:
            import tempfile  # weak isolation only: the template does not carry it into every fork

            work = tempfile.mkdtemp(prefix="agentq-run-")
            if self.conf.root:
                os.chown(work, uid, uid)
        self.work = work
        self.conf.prepare_run(limits)
        self.conf.open_meter()  # kept open across the change of uid below
        solution = os.path.join(work, "solution.py")
        fd = os.open(solution, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, job["code"].encode("utf-8", "surrogatepass"))
            if self.conf.root:
                os.fchown(fd, uid, uid)
        finally:
            os.close(fd)
        self.out_fd, self.err_fd = os.memfd_create("stdout"), os.memfd_create("stderr")
        cand_sock, test_sock = socket.socketpair()
        self.cpu_before = self.conf.cpu_used()
        self.start, cpu_start = time.monotonic(), time.process_time()
        self.cand_pid = os.fork()
        if self.cand_pid == 0:
            test_sock.close()
            self._candidate(cand_sock.detach(), solution, job["code"], limits)
        cand_sock.close()
        self.forked, self.cpu_forked = time.monotonic(), time.process_time()
        self.cpu_ms = {"init_setup": _ms(cpu_start - cpu_received), "init_fork": _ms(self.cpu_forked - cpu_start)}
        # Only now, with the candidate running on what it inherited, do the tests come into this process.
        conn_fd, sock_fd, job_fd = _arrange_fds(self.out_fd, self.err_fd, server.devnull,
                                                [server.tests.detach(), test_sock.detach(), server.job.detach()])
        self.out_fd, self.err_fd = 1, 2  # the output memfds, as this process's own stdout and stderr now
        self.conf.open_meter()  # again: closing every other descriptor closed it
        self.job_sock = socket.socket(fileno=job_fd)
        conn = socket.socket(fileno=conn_fd)
        header = wire.recv(conn)
        payload = wire.recv_exact(conn, int(header["tests_len"]))
        conn.close()
        self.conf.enter(limits, self.conf.tests_uid, TESTS_NPROC)
        isolation.not_dumpable()  # setuid made it dumpable again
        self._start_watch()
        random.seed(0)
        split = int(header["tests_code_len"])
        tests = harness.Tests(marshal.loads(payload[:split]), payload[split:].decode("utf-8", "surrogatepass"))
        del payload
        self.report({"e": "got_tests"})
        channel = harness.Channel(socket.socket(fileno=sock_fd))
        with contextlib.suppress(RunEnded):
            harness.run_tests(channel, tests, list(header["test_names"]), server.prelude, self.report,
                              frozenset(header.get("protected", ())), server.builtins)
        self.finish(None)

    def report(self, event: dict[str, Any]) -> None:
        if self.done:
            raise RunEnded("the run has ended")
        self.reporting = True
        try:
            self.events.append(event)
            self.unsent_bytes += 64 + len(str(event.get("message", "")))
            if self.unsent_bytes > EVENTS_FLUSH_BYTES:
                wire.send(self.job_sock, {"events": self.events[self.sent:]})
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
        if self.budget is not None and self.cpu_before is None:  # no CPU meter: the budget is wall-clock time
            if now + self.budget < self.deadline:
                self.deadline, self.wall_reason = now + self.budget, "budget"
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
            if isolation.namespace_memory() > self.memory:
                wait, reason = 0.0, "memory"
            else:
                wait = min(wait, MEMORY_POLL_S)
        return wait, reason

    def _memory_bound(self) -> int | None:
        """Bytes the candidate's processes may hold together, where no cgroup holds them to it (the "userns"
        profile: this init measures them); None where a cgroup does or there is no run namespace."""
        if not self.server.run_namespaces or self.conf.limits_memory:
            return None
        return int(self.limits["memory_mb"]) << 20

    def finish(self, ended: str | None) -> NoReturn:
        """Send the run's result and exit, which ends the run."""
        self.done = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        collected, cpu_collected = time.monotonic(), time.process_time()
        cand_status = _poll(self.cand_pid)
        if cand_status is None and any(e.get("gone") or e.get("e") == "import_error" for e in self.events):
            cand_status = _wait_briefly(self.cand_pid)  # it closed its socket while exiting
        cpu_after = self.conf.cpu_used()
        if not self.server.run_namespaces:
            with contextlib.suppress(OSError):
                os.killpg(self.cand_pid, signal.SIGKILL)  # where it can (same uid); the template does the rest
            __import__("shutil").rmtree(self.work, ignore_errors=True)
        limit = int(self.limits["output_bytes"])
        self.cpu_ms["init_tests"] = _ms(cpu_collected - self.cpu_forked)
        result = {
            "timed_out": ended in ("wall", "budget"),
            "budget_spent": ended == "budget",
            "memory_spent": ended == "memory",
            "duration_s": round(collected - self.start, 6),
            "cpu_s": None if self.cpu_before is None or cpu_after is None else
            round(cpu_after - self.cpu_before, 6),
            "candidate_exit": _exit_info(cand_status),
            "stdout": _tail(self.out_fd, limit),
            "stderr": _tail(self.err_fd, limit),
            "isolation": self.server.notes,
            # Where the run's time went (agentq sandbox bench): wall clock of its phases, CPU of this process.
            "phases_ms": {"setup": _ms(self.start - self.received), "fork": _ms(self.forked - self.start),
                          "run": _ms(collected - self.forked)},
            "cpu_ms": {**self.cpu_ms, "init_total": _ms(time.process_time())},
        }
        wire.send(self.job_sock, {"events": self.events[self.sent:], "result": result})
        fatal = not any(e.get("e") == "got_tests" for e in self.events)
        os._exit(EXIT_FATAL if fatal else 0)

    def _candidate(self, sock_fd: int, solution: str, code: str, limits: dict) -> NoReturn:
        try:
            os.setsid()  # its own process group, which is killed where it is not in a namespace of its own
            self.conf.join()  # the cgroups, before anything of the candidate runs; the init stays outside
            (sock,) = _arrange_fds(self.out_fd, self.err_fd, self.server.devnull, [sock_fd])
            os.chdir(self.work)
            os.environ.clear()
            os.environ.update(candidate_env(self.work))
            self.conf.enter(limits, self.conf.candidate_uid, int(limits["max_procs"]))
            random.seed(0)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            candidate.serve(socket.socket(fileno=sock), code, solution, self.server.prelude, self.server.builtins)
        except BaseException:  # noqa: BLE001 - never return into the init
            os._exit(70)


def main() -> None:
    Server(socket.socket(fileno=int(sys.argv[1])), socket.socket(fileno=int(sys.argv[2]))).serve()


if __name__ == "__main__":
    main()
