"""The fork server inside each worker's sandbox: a clean template that forks two fresh processes per run.

Why two processes forked before the job is read: every process forked from a Python process inherits its
whole heap, and freed blocks keep their bytes. A server that read a job or a result and then forked the next
candidate handed it the previous run's failure messages (which quote expected values) through
`gc.get_objects()`, `sys._getframe()` or a plain read of its own memory. So the template (this process, once
set up) never receives a job, never sees a result, never holds a test: per run it makes the run's channels
(a socket pair, a pipe, two memfds for output) and forks

* the test process (trusted, the tests' uid), which reads only the tests from the executor's tests socket,
  runs them against a proxy of the candidate (harness.py) and writes each outcome to the events pipe, and
* the runner, pid 1 of a new PID namespace, which reads the job (the candidate's code and limits) from the
  job socket, unshares a mount, IPC and network namespace of its own (fresh tmpfs scratch and /proc, no
  interface up), joins the worker's cgroups, forks the candidate (its uid, no capability, rlimits), enforces
  the deadline and the time budget while it collects the test process's events, kills everything left in
  its namespace, and answers the executor.

Both exit after one run, so whatever they read dies with them. The template then reaps them and adds the test
process's exit status (a trailer it writes without reading anything of the run).

Protocol (wire framing). Job socket: template -> {"ready", "pid", "isolation"}; per run executor -> {"code",
"limits"}, runner -> result, template -> {"trailer", "tests_exit", "cpu"}. Tests socket: per run executor ->
{"test_names", "protected", "tests_len", "tests_code_len", "limits"} + tests_len bytes (the tests'
marshalled code object, tests_code_len bytes, then their source).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import marshal
import os
import random
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any, NoReturn

from agentq.sandbox import candidate, harness, isolation, leetcode, wire

TESTS_NPROC = 4
TMPFS_MB = 512
TMPFS_MIN_MB = 64
MAX_EVENTS_BYTES = 4 << 20
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
    return round(usage.ru_utime + usage.ru_stime, 6)


class Server:
    def __init__(self, job: socket.socket, tests: socket.socket):
        self.job, self.tests = job, tests
        self.notes: list[str] = []
        self.jailed = bool(os.environ.get("AGENTQ_SANDBOX_UIDS"))
        if not self.jailed:  # run directly (weak isolation allowed): the old, weaker set-up
            self.notes.append("no bubblewrap: the candidate sees the host's filesystem (read-only where "
                              "permissions say so), its processes and its SysV IPC")
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
        """Fork the next run's test process and runner (they wait for the job), reap them, send the trailer.
        False: stop serving."""
        cand_sock, test_sock = socket.socketpair()
        events_r, events_w = os.pipe()
        out_fd, err_fd = os.memfd_create("stdout"), os.memfd_create("stderr")
        test_pid = os.fork()
        if test_pid == 0:
            self._tests_child(test_sock, events_w, out_fd, err_fd)
        test_sock.close()  # before the runner is forked: its copy of the events pipe must see the end
        os.close(events_w)
        if self.run_namespaces:
            isolation.new_pid_namespace()
        try:
            runner_pid = os.fork()
            if runner_pid == 0:
                cand_sock_fd = cand_sock.detach()
                self._runner(cand_sock_fd, events_r, out_fd, err_fd)
        finally:
            if self.run_namespaces:
                isolation.restore_pid_namespace(self.pid_ns)
        cand_sock.close()
        for fd in (events_r, out_fd, err_fd):
            os.close(fd)
        _, runner_status, runner_usage = os.wait4(runner_pid, 0)
        # The runner has answered (or died): the test process has nothing left to say. It may still be busy in
        # a test's own code after a timeout, so it is stopped here, not waited for.
        with contextlib.suppress(OSError):
            os.killpg(test_pid, signal.SIGKILL)
        _, test_status, test_usage = os.wait4(test_pid, 0)
        isolation.reap_orphans()
        code = os.waitstatus_to_exitcode(runner_status)
        if code == EXIT_HANGUP:
            return False
        wire.send(self.job, {"trailer": True, "runner_exit": _exit_info(runner_status),
                             "tests_exit": _exit_info(test_status),
                             "cpu": {"runner": _cpu(runner_usage), "tests": _cpu(test_usage)}})
        return code != EXIT_FATAL

    # --- the runner: pid 1 of the run -------------------------------------------------------------------

    def _runner(self, cand_sock: int, events_r: int, out_fd: int, err_fd: int) -> NoReturn:
        try:
            self.tests.close()
            os.setsid()
            try:
                job = wire.recv(self.job)
            except (EOFError, OSError, wire.ProtocolError):
                os._exit(EXIT_HANGUP)
            # pid 1 of the run: a signal from the candidate reaches it only where it has a handler (SIGINT's)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            result = self._run(job, cand_sock, events_r, out_fd, err_fd)
            wire.send(self.job, result)
            os._exit(EXIT_FATAL if result.get("fatal") else 0)
        except BaseException:  # noqa: BLE001 - never return into the template's loop
            os._exit(70)

    def _run(self, job: dict[str, Any], cand_sock: int, events_r: int, out_fd: int, err_fd: int) -> dict[str, Any]:
        limits = job["limits"]
        received = time.monotonic()
        uid = self.conf.candidate_uid
        if self.run_namespaces:
            isolation.fresh_run_mounts(uid, max(TMPFS_MIN_MB, 4 * int(limits["file_mb"])))
            work = "/tmp"
        else:
            work = tempfile.mkdtemp(prefix="agentq-run-")
            if self.conf.root:
                os.chown(work, uid, uid)
        try:
            self.conf.prepare_run(limits)
            solution = os.path.join(work, "solution.py")
            with open(solution, "w", encoding="utf-8", errors="surrogatepass") as fh:
                fh.write(job["code"])
            if self.conf.root:
                os.chown(solution, uid, uid)
            cpu_before = self.conf.cpu_used()
            start = time.monotonic()
            cand_pid = os.fork()
            if cand_pid == 0:
                os.close(events_r)
                self._candidate(cand_sock, out_fd, err_fd, work, solution, job["code"], limits)
            os.close(cand_sock)
            forked = time.monotonic()
            budget = limits.get("time_budget_s")
            deadline = start + float(limits["timeout_s"])
            events, ended = self._collect(events_r, deadline, None if budget is None else float(budget), cpu_before,
                                          self._memory_bound(limits))
            collected = time.monotonic()
            cand_status = _poll(cand_pid)
            if cand_status is None and any(e.get("gone") or e.get("e") == "import_error" for e in events):
                cand_status = _wait_briefly(cand_pid)  # it closed its socket while exiting; let it finish dying
            cpu_after = self.conf.cpu_used()
            cand_status = self._stop_candidates(cand_pid, cand_status)
        finally:
            if not self.run_namespaces:
                shutil.rmtree(work, ignore_errors=True)
        limit = int(limits["output_bytes"])
        result: dict[str, Any] = {
            "events": events,
            "timed_out": ended in ("wall", "budget"),
            "budget_spent": ended == "budget",
            "memory_spent": ended == "memory",
            "duration_s": round(collected - start, 6),
            "cpu_s": None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 6),
            "candidate_exit": _exit_info(cand_status),
            "stdout": _tail(out_fd, limit),
            "stderr": _tail(err_fd, limit),
            "isolation": self.notes,
            "phases_ms": {name: round(1000 * seconds, 3) for name, seconds in (
                ("setup", start - received), ("fork", forked - start), ("run", collected - forked),
                ("cleanup", time.monotonic() - collected))},
        }
        if not any(e.get("e") == "got_tests" for e in events):
            # The tests may still sit in the tests socket: the stream is out of step, so this worker must go.
            result["fatal"] = "the test process died before reading the tests"
        return result

    def _stop_candidates(self, cand_pid: int, status: int | None) -> int | None:
        """Kill whatever the candidate left; its own wait status where it had ended by itself."""
        if self.run_namespaces:  # we are pid 1 of the run: everything it started is in our namespace
            if status is None:
                status = _poll(cand_pid)
            isolation.kill_namespace()
            return status
        self.conf.kill_candidates(cand_pid)
        isolation.reap_orphans()
        return status

    def _memory_bound(self, limits: dict) -> int | None:
        """Bytes the candidate's processes may hold together, where no cgroup holds them to it (the "userns"
        profile: the run's init measures them); None where a cgroup does or there is no run namespace."""
        if not self.run_namespaces or any((g / "memory.max").exists() or (g / "memory.limit_in_bytes").exists()
                                          for g in self.conf.cgroups):
            return None
        return int(limits["memory_mb"]) << 20

    def _collect(
        self, fd: int, deadline: float, budget: float | None, used_at_start: float | None,
        memory: int | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The test process's events until it closes its pipe, and what ended the run early: "wall" (the
        deadline passed), "budget" (the candidate's tree spent its time budget), "memory" (its processes hold
        more than `memory` bytes together), or None (it finished). `used_at_start`: the worker cgroup's CPU
        seconds before the run, None where nothing meters them."""
        buf, ended, wall_reason = bytearray(), None, "wall"
        next_look = time.monotonic() + MEMORY_POLL_S
        if budget is not None and used_at_start is None:  # no CPU meter here: the budget is wall-clock time
            if time.monotonic() + budget < deadline:
                deadline, wall_reason = time.monotonic() + budget, "budget"
            budget = None
        try:
            while True:
                left = deadline - time.monotonic()
                wait = left
                if budget is not None and used_at_start is not None:
                    # The tree uses at most one core (its cgroup's CPU quota), so the rest of the budget cannot
                    # be spent in less wall time than it: waiting that long and looking again is exact enough.
                    unspent = budget - ((self.conf.cpu_used() or 0.0) - used_at_start)
                    if unspent <= 0:
                        ended = "budget"
                        break
                    wait = min(left, unspent)
                if left <= 0:
                    ended = wall_reason
                    break
                if memory is not None:
                    now = time.monotonic()
                    if now >= next_look:
                        if isolation.namespace_memory() > memory:
                            ended = "memory"
                            break
                        next_look = now + MEMORY_POLL_S
                    wait = min(wait, max(next_look - now, 0.0))
                if not select.select([fd], [], [], wait)[0]:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                if len(buf) < MAX_EVENTS_BYTES:
                    buf += chunk
        finally:
            os.close(fd)
        events = []
        for line in bytes(buf).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events, ended

    def _candidate(self, sock_fd: int, out_fd: int, err_fd: int, work: str, solution: str, code: str,
                   limits: dict) -> NoReturn:
        try:
            os.setsid()  # its own process group, which the runner kills where it is not the namespace's init
            self.conf.join()  # the cgroups, before anything of the candidate runs; the runner stays outside
            (sock,) = _arrange_fds(out_fd, err_fd, self.devnull, [sock_fd])
            os.chdir(work)
            os.environ.clear()
            os.environ.update(candidate_env(work))
            self.conf.enter(limits, self.conf.candidate_uid, int(limits["max_procs"]))
            random.seed(0)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            candidate.serve(socket.socket(fileno=sock), code, solution, self.prelude)
        except BaseException:  # noqa: BLE001 - never return into the runner
            os._exit(70)

    # --- the test process -----------------------------------------------------------------------------

    def _tests_child(self, sock: socket.socket, events_w: int, out_fd: int, err_fd: int) -> NoReturn:
        try:
            os.setpgid(0, 0)
            conn_fd, sock_fd, res_fd = _arrange_fds(out_fd, err_fd, self.devnull,
                                                    [self.tests.fileno(), sock.fileno(), events_w])
            os.chdir("/")
            conn = socket.socket(fileno=conn_fd)
            try:
                header = wire.recv(conn)
            except (EOFError, OSError, wire.ProtocolError):
                os._exit(0)  # the executor hung up: no run
            self.conf.enter(header["limits"], self.conf.tests_uid, TESTS_NPROC)
            isolation.not_dumpable()  # setuid made it dumpable again
            random.seed(0)
            payload = wire.recv_exact(conn, int(header["tests_len"]))
            conn.close()
            split = int(header["tests_code_len"])
            tests = harness.Tests(marshal.loads(payload[:split]), payload[split:].decode("utf-8", "surrogatepass"))

            def report(event: dict[str, Any]) -> None:
                data = memoryview(json.dumps(event).encode() + b"\n")
                while data:
                    data = data[os.write(res_fd, data) :]

            report({"e": "got_tests"})
            channel = harness.Channel(socket.socket(fileno=sock_fd))
            harness.run_tests(channel, tests, list(header["test_names"]), self.prelude, report,
                              frozenset(header.get("protected", ())))
        except BaseException:  # noqa: BLE001 - a missing `end` marker is how the executor learns of this
            os._exit(70)
        os._exit(0)


def main() -> None:
    Server(socket.socket(fileno=int(sys.argv[1])), socket.socket(fileno=int(sys.argv[2]))).serve()


if __name__ == "__main__":
    main()
