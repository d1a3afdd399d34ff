"""A warm sandbox worker: one per core, started once, forks two processes per run.

Start-up of Python dominates a short test run, so the server (already inside its bubblewrap sandbox, see
jail.py) imports the harness, the wire codec and the LeetCode prelude once, and then for each job forks

* the run's init, pid 1 of a new PID namespace (trusted code only): it joins the worker's cgroups, takes
  new IPC and mount namespaces with fresh tmpfs /tmp and /dev/shm and a fresh /proc, writes solution.py,
  forks the candidate process and reaps; when it dies, the kernel kills everything in the namespace;
* the candidate process: new session, scrubbed environment, rlimits, its own unprivileged uid and no
  capabilities; it imports the candidate and answers calls;
* the test process: own process group, another unprivileged uid, not dumpable, rlimits; it reads the
  tests straight from the executor's socket (so they are never in memory a candidate is forked from), runs
  them against a proxy of the candidate and reports each result on a pipe only the server holds.

The server enforces the wall-clock deadline, kills everything the candidate started, and answers the
executor with the raw facts; the executor turns them into a Verdict (outcome.py).

Protocol on the executor socket (wire framing): server -> {"ready", "pid", "isolation"}; then per job
executor -> {"code", "test_names", "tests_len", "tests_code_len", "limits"} + tests_len bytes (the tests'
marshalled code object, tests_code_len bytes, then their source), server -> result.
"""

from __future__ import annotations

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
        time.sleep(0.002)
    return None


def _candidate_status(status_r: int, init_status: int | None) -> int | None:
    """The candidate's own wait status as its init reported it, else the init's."""
    try:
        data = os.read(status_r, 4)
    except OSError:
        data = b""
    finally:
        os.close(status_r)
    return int.from_bytes(data, "little", signed=True) if len(data) == 4 else init_status


def _tail(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Server:
    def __init__(self, conn: socket.socket):
        self.conn = conn
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
            self.notes.append("no per-run namespaces: candidates share this worker's PID, IPC and mount namespaces")
        self.prelude = leetcode.prelude_namespace()
        self.devnull = os.open(os.devnull, os.O_RDWR)
        # Everything imported so far is shared with every child; keep the collector from touching (and so
        # copying) those pages in each of them.
        gc.freeze()

    def _probe_namespaces(self) -> bool:
        """Whether a run can get its own PID, IPC and mount namespaces here (it needs CAP_SYS_ADMIN)."""
        try:
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
        """Answer jobs until the executor hangs up (closing its end is how it stops a worker)."""
        try:
            wire.send(self.conn, {"ready": True, "pid": os.getpid(), "isolation": self.notes})
            while True:
                try:
                    job = wire.recv(self.conn)
                except (EOFError, ConnectionError):
                    return
                result = self.run(job)
                wire.send(self.conn, result)
                if result.get("fatal"):
                    return
        except ConnectionError:
            return
        finally:
            self.conf.close()

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        rundir = tempfile.mkdtemp(prefix="agentq-run-")
        try:
            return self._run_in(rundir, job)
        finally:
            shutil.rmtree(rundir, ignore_errors=True)

    def _run_in(self, rundir: str, job: dict[str, Any]) -> dict[str, Any]:
        limits = job["limits"]
        os.chmod(rundir, 0o711)
        out_path, err_path = os.path.join(rundir, "stdout"), os.path.join(rundir, "stderr")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        out_fd, err_fd = os.open(out_path, flags, 0o600), os.open(err_path, flags, 0o600)
        cand_sock, test_sock = socket.socketpair()
        res_r, res_w = os.pipe()
        status_r, status_w = os.pipe()
        self.conf.prepare_run(limits)
        cpu_before = self.conf.cpu_used()
        start = time.monotonic()
        deadline = start + float(limits["timeout_s"])
        if self.run_namespaces:
            isolation.new_pid_namespace()
        try:
            cand_pid = os.fork()
            if cand_pid == 0:
                self._run_init(cand_sock, status_w, out_fd, err_fd, rundir, job["code"], limits)
        finally:
            if self.run_namespaces:
                isolation.restore_pid_namespace(self.pid_ns)
        test_pid = os.fork()
        if test_pid == 0:
            self._tests_child(test_sock, res_w, out_fd, err_fd, rundir, job, limits)
        for closing in (cand_sock, test_sock):
            closing.close()
        for fd in (res_w, status_w, out_fd, err_fd):
            os.close(fd)
        budget = limits.get("time_budget_s")
        events, ended = self._collect(res_r, deadline, None if budget is None else float(budget), cpu_before)
        duration = time.monotonic() - start
        cpu_after = self.conf.cpu_used()
        timed_out = ended is not None
        if timed_out:
            os.kill(test_pid, signal.SIGKILL)
        _, test_status = os.waitpid(test_pid, 0)
        cand_status = _poll(cand_pid)
        if cand_status is None and any(e.get("gone") or e.get("e") == "import_error" for e in events):
            cand_status = _wait_briefly(cand_pid)  # it closed its pipe while exiting; let it finish dying
        self.conf.kill_candidates(cand_pid)
        isolation.reap_orphans()
        cand_status = _candidate_status(status_r, cand_status)
        limit = int(limits["output_bytes"])
        result: dict[str, Any] = {
            "events": events,
            "timed_out": timed_out,
            "budget_spent": ended == "budget",
            "duration_s": round(duration, 6),
            "cpu_s": None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 6),
            "candidate_exit": _exit_info(cand_status),
            "tests_exit": _exit_info(test_status),
            "stdout": _tail(out_path, limit),
            "stderr": _tail(err_path, limit),
            "isolation": self.notes,
        }
        if not any(e.get("e") == "got_tests" for e in events):
            # The tests may still sit in our socket: the stream is out of step, so this server must go.
            result["fatal"] = "the test process died before reading the tests"
        return result

    def _collect(
        self, fd: int, deadline: float, budget: float | None, used_at_start: float | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The test process's events until it closes its pipe, and what ended the run early: "wall" (the
        deadline passed), "budget" (the candidate's tree spent its time budget), or None (it finished).
        `used_at_start`: the worker cgroup's CPU seconds before the run, None where nothing meters them."""
        buf, ended, wall_reason = bytearray(), None, "wall"
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

    def _run_init(
        self, sock: socket.socket, status_w: int, out_fd: int, err_fd: int, rundir: str, code: str, limits: dict
    ) -> NoReturn:
        """The run's init (pid 1 of its own PID namespace, trusted code only): set up, start the candidate,
        reap, and report the candidate's wait status. When it dies the kernel kills the whole namespace."""
        try:
            os.setsid()
            (sock_fd, status_fd) = _arrange_fds(out_fd, err_fd, self.devnull, [sock.fileno(), status_w])
            self.conf.join()
            uid = self.conf.candidate_uid
            if self.run_namespaces:
                isolation.fresh_run_mounts(uid, max(TMPFS_MIN_MB, 4 * int(limits["file_mb"])))
                work = "/tmp"
            else:
                work = os.path.join(rundir, "work")
                os.mkdir(work, 0o700)
                if self.conf.root:
                    os.chown(work, uid, uid)
            solution = os.path.join(work, "solution.py")
            with open(solution, "w", encoding="utf-8", errors="surrogatepass") as fh:
                fh.write(code)
            if self.conf.root:
                os.chown(solution, uid, uid)
            child = os.fork()
            if child == 0:
                os.close(status_fd)
                self._candidate(sock_fd, work, solution, code, limits)
            os.close(sock_fd)
            while True:  # reap everything re-parented to us until the candidate itself is done
                pid, status = os.waitpid(-1, 0)
                if pid == child:
                    os.write(status_fd, status.to_bytes(4, "little", signed=True))
                    os._exit(0)
        except BaseException:  # noqa: BLE001 - never return into the server's loop
            os._exit(70)

    def _candidate(self, sock_fd: int, work: str, solution: str, code: str, limits: dict) -> NoReturn:
        try:
            os.chdir(work)
            os.environ.clear()
            os.environ.update(candidate_env(work))
            self.conf.enter(limits, self.conf.candidate_uid, int(limits["max_procs"]))
            random.seed(0)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            candidate.serve(socket.socket(fileno=sock_fd), code, solution, self.prelude)
        except BaseException:  # noqa: BLE001 - never return into the init's loop
            os._exit(70)

    def _tests_child(
        self, sock: socket.socket, res_w: int, out_fd: int, err_fd: int, rundir: str, job: dict, limits: dict
    ) -> NoReturn:
        try:
            os.setpgid(0, 0)
            keep = [self.conn.fileno(), sock.fileno(), res_w]
            conn_fd, sock_fd, res_fd = _arrange_fds(out_fd, err_fd, self.devnull, keep)
            os.chdir(rundir)
            self.conf.enter(limits, self.conf.tests_uid, TESTS_NPROC)
            isolation.not_dumpable()  # setuid made it dumpable again
            random.seed(0)
            conn = socket.socket(fileno=conn_fd)
            payload = wire.recv_exact(conn, int(job["tests_len"]))
            conn.close()
            split = int(job["tests_code_len"])
            tests = harness.Tests(marshal.loads(payload[:split]), payload[split:].decode("utf-8", "surrogatepass"))

            def report(event: dict[str, Any]) -> None:
                data = memoryview(json.dumps(event).encode() + b"\n")
                while data:
                    data = data[os.write(res_fd, data) :]

            report({"e": "got_tests"})
            channel = harness.Channel(socket.socket(fileno=sock_fd))
            harness.run_tests(channel, tests, list(job["test_names"]), self.prelude, report)
        except BaseException:  # noqa: BLE001 - a missing `end` marker is how the executor learns of this
            os._exit(70)
        os._exit(0)


def main() -> None:
    Server(socket.socket(fileno=int(sys.argv[1]))).serve()


if __name__ == "__main__":
    main()
