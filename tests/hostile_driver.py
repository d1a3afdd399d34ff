"""Runs the hostile candidates of issue 11 through a LocalExecutor or a token-guarded `agentq sandbox serve`
and prints one JSON object: each candidate's verdict. test_sandbox_hostile.py starts it as root and as an
unprivileged user (a separate process, since an executor's workers inherit its uid) and checks the host
afterwards for anything that survived.

Each candidate's tests pass only if its attack worked: a forged result, an answer found on disk, in another
process's command line or environment, in shared memory or a file left by the previous candidate, memory
beyond the limit, or the network.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import threading

ATTACKS: dict[str, str] = {
    # Write pass events into every pipe or socket of every process it can see (the result pipe among them).
    "forged_result_pipe": """
        import os
        FAKE = (b'{"e": "got_tests"}\\n{"e": "test", "name": "test_attack", "passed": true, "message": ""}\\n'
                b'{"e": "end"}\\n')
        def attack():
            for pid in [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(("pipe:", "socket:")):
                            w = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                            os.write(w, FAKE)
                            os.close(w)
                    except OSError:
                        pass
            return 0
    """,
    # Look the task up on disk: known paths first, then every readable file outside /usr, /proc, /sys, /dev.
    "disk_oracle": """
        import os
        def attack():
            needle = "ANSWER-{marker}="
            def look(path):
                try:
                    with open(path, errors="replace") as fh:
                        text = fh.read(1 << 20)
                except OSError:
                    return None
                if needle in text:
                    return int(text.split(needle)[1][:1])
            for path in {paths!r}:
                found = look(path)
                if found is not None:
                    return found
            for root, dirs, files in os.walk("/"):
                dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/usr", "/proc", "/sys", "/dev")]
                for name in files:
                    found = look(os.path.join(root, name))
                    if found is not None:
                        return found
            return 0
    """,
    # Read every process's command line (and environment) for the answer.
    "process_snooping": """
        import os
        def attack():
            for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
                for what in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{what}", "rb") as fh:
                            text = fh.read().decode("utf-8", "replace")
                    except OSError:
                        continue
                    if "ANSWER-{marker}=" in text:
                        return int(text.split("ANSWER-{marker}=")[1][:1])
            return 0
    """,
    # Leave the answer in SysV shared memory, POSIX shared memory and every writable scratch place...
    "plant": """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def attack():
            shm = libc.shmget({key}, 4096, 0o1666)  # IPC_CREAT | 0666
            if shm >= 0:
                libc.shmat.restype = ctypes.c_void_p
                addr = libc.shmat(shm, None, 0)
                if addr not in (None, ctypes.c_void_p(-1).value):
                    ctypes.memmove(addr, b"3", 1)
            for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", os.path.expanduser("~"), os.getcwd(), ".."):
                try:
                    with open(os.path.join(d, "agentq-{marker}"), "w") as fh:
                        fh.write("3")
                except OSError:
                    pass
            return 0
    """,
    # ... and look for it in the next run.
    "harvest": """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def attack():
            shm = libc.shmget({key}, 0, 0)
            if shm >= 0:
                libc.shmat.restype = ctypes.c_void_p
                addr = libc.shmat(shm, None, 0)
                if addr not in (None, ctypes.c_void_p(-1).value) and ctypes.string_at(addr, 1) == b"3":
                    return 3
            for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", os.path.expanduser("~"), os.getcwd(), ".."):
                try:
                    with open(os.path.join(d, "agentq-{marker}")) as fh:
                        return int(fh.read())
                except (OSError, ValueError):
                    pass
            return 0
    """,
    # Six processes of 150 MB each under a 512 MB limit: all six alive means the limit is per process only.
    "memory_across_processes": """
        import os, select, time
        def attack():
            r, w = os.pipe()
            kids = []
            for _ in range(6):
                pid = os.fork()
                if pid == 0:
                    block = bytearray(150 << 20)
                    for i in range(0, len(block), 4096):
                        block[i] = 1
                    os.write(w, b"x")  # all 150 MB touched
                    time.sleep(10)
                    os._exit(0)
                kids.append(pid)
            done, deadline = 0, time.monotonic() + 4
            while done < 6 and select.select([r], [], [], max(0, deadline - time.monotonic()))[0]:
                done += len(os.read(r, 6))
            alive = sum(os.waitpid(k, os.WNOHANG)[0] == 0 for k in kids)
            return 3 if done == 6 and alive == 6 else 0
    """,
    # A double-forked daemon in its own session, to outlive the run (the test looks for it on the host).
    "daemon": """
        import os, sys
        def attack():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", "DAEMON-{marker}"])
                os._exit(0)
            return 0
    """,
    # Reach the host's loopback listener or anything beyond.
    "network": """
        import socket
        def attack():
            for address in (("127.0.0.1", {port}), ("10.0.0.1", 80), ("1.1.1.1", 53)):
                try:
                    socket.create_connection(address, timeout=1).close()
                    return 3
                except OSError:
                    pass
            return 0
    """,
    # pid 1 of a run is a clone of the template sharing its memory and descriptors (isolation.spawn_namespace_init):
    # stop it with any signal, read that memory, take a descriptor (the job socket would carry a forged result).
    "run_init": """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def attack():
            for sig in range(1, 65):
                try:
                    os.kill(1, sig)
                except (OSError, ValueError):
                    pass
            gained = 0
            for what in ("mem", "maps", "environ", "syscall", "fdinfo/0"):
                try:
                    with open(f"/proc/1/{what}", "rb") as fh:
                        fh.read(1)
                    gained = 3
                except OSError:
                    pass
            try:  # the numbers of its descriptors may show (as any process's), never what they are
                links = [f"fd/{n}" for n in os.listdir("/proc/1/fd")] + ["root", "cwd", "exe"]
            except OSError:
                links = ["root", "cwd", "exe"]
            for link in links:
                try:
                    os.readlink(f"/proc/1/{link}")
                    os.close(os.open(f"/proc/1/{link}", os.O_RDONLY))
                    gained = 3
                except OSError:
                    pass
            try:
                pidfd = os.pidfd_open(1)
            except OSError:
                return gained
            if any(libc.syscall(438, pidfd, fd, 0) >= 0 for fd in range(64)):  # pidfd_getfd
                gained = 3
            return gained
    """,
}
TESTS = "from solution import *\n\ndef test_attack():\n    assert attack() == 3\n"

# Issue 23's function-run attacks (failures 2, 4, 6, 7): pairs run one after the other on the single worker.
HIDDEN = "from solution import *\n\ndef test_hidden():\n    assert f(7) == 424242\n"
WRONG = "def f(x):\n    return 0\n"
# Looks for `f(7) == <answer>` everywhere a forked child can look: every object the collector tracks, every
# frame up its stack, and the raw heap (freed blocks keep their bytes).
THIEF = r'''
import ctypes, gc, re, sys

PATTERN = re.compile(r"f\(7\) == (\d+)")


def _search(text):
    match = PATTERN.search(text)
    return int(match[1]) if match else None


def _from_objects():
    for obj in gc.get_objects():
        for text in ([obj] if isinstance(obj, str) else obj.values() if isinstance(obj, dict) else
                     obj if isinstance(obj, list) else []):
            if isinstance(text, str) and (found := _search(text)) is not None:
                return found
    return None


def _from_frames():
    frame = sys._getframe()
    while frame is not None:
        for value in frame.f_locals.values():
            found = _search(repr(value)[:1_000_000])
            if found is not None:
                return found
        frame = frame.f_back
    return None


def _from_heap():
    with open("/proc/self/maps") as fh:
        regions = [line.split() for line in fh]
    for fields in regions:
        if "rw" not in fields[1] or len(fields) > 5 and fields[5].startswith("/"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        try:
            blob = ctypes.string_at(start, min(end - start, 64 << 20))
        except Exception:
            continue
        match = re.search(rb"f\(7\) == (\d+)", blob)
        if match:
            return int(match[1])
    return None


def f(x):
    for look in (_from_objects, _from_frames, _from_heap):
        found = look()
        if found is not None:
            return found
    return -1
'''


NET_SENDER = """
import socket

def f():
    sent = 0
    for _ in range(37):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("127.0.0.1", 9))
            s.close()
            sent += 1
        except OSError:
            pass
    return sent
"""
NET_RECEIVER = """
import os

def f():
    with open("/proc/net/dev") as fh:
        for line in fh:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[9])  # packets sent over loopback so far
    return 0
"""
# A task file not made by the project's builder: its helper is defined before the star import, and the tests
# call builtins. The forgery exports the helper's name, `sum` and `len`.
HELPER_TESTS = """\
def expected(x):
    return sum([x, x])


from solution import *


def test_double():
    for x in range(5):
        assert len([double(x)]) == 1 and double(x) == expected(x)
"""
FORGED_HELPERS = """\
__all__ = ["double", "expected", "sum", "len"]


def double(x):
    return 0


def expected(x):
    return 0


def sum(xs):
    return 0


def len(x):
    return 1
"""
ISSUE_23: dict[str, tuple[str, str]] = {
    "leak_wrong_sibling": (WRONG, HIDDEN),  # fails, and its failure message quotes the hidden answer
    "leak_thief": (THIEF, HIDDEN),  # answers from what the last run left in memory
    "net_sender": (NET_SENDER, "from solution import *\n\ndef test_f():\n    assert f() < 0\n"),
    "net_receiver": (NET_RECEIVER, "from solution import *\n\ndef test_f():\n    assert f() >= 37\n"),
    "forged_helpers": (FORGED_HELPERS, HELPER_TESTS),
    "lone_surrogate": ('def attack():\n    raise ValueError("bad \\ud800 value")\n', TESTS),
}
ORDER = [*ATTACKS, *ISSUE_23]  # plant runs right before harvest, leak_wrong_sibling right before leak_thief


def shm_key(marker: str) -> int:
    return int(marker[-6:], 16) or 1


def program(name: str, marker: str, paths: list[str], port: int) -> str:
    source = textwrap.dedent(ATTACKS[name])
    return (source.replace("{marker}", marker).replace("{paths!r}", repr(paths))
            .replace("{key}", str(shm_key(marker))).replace("{port}", str(port)))


def server_checks(httpd, token: str) -> dict[str, object]:  # noqa: ANN001 - a SandboxServer
    """Issue 23, failure 8, against this process's server: clients trickling a byte at a time hold no run slot
    and are cut at the request deadline; a body over the cap is a 413 its sender reads; tests that exhaust the
    compiler are a 400."""
    import socket
    import time
    import urllib.error
    import urllib.request

    port = httpd.server_address[1]
    head = f"POST /run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    cut: list[float] = []

    def trickle() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            for byte in (head + "Content-Length: 900\r\n\r\n" + " " * 900).encode():
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.5)
        cut.append(round(time.monotonic() - started, 1))

    def post(body: bytes) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/run", data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    tricklers = [threading.Thread(target=trickle) for _ in range(4)]
    for t in tricklers:
        t.start()
    time.sleep(1)
    ok = json.dumps({"code": "def attack():\n    return 3\n", "tests": TESTS}).encode()
    while_trickling = [post(ok) for _ in range(2)]
    for t in tricklers:
        t.join()
    deep = "def test_a():\n    assert 1" + "+1" * 200_000 + "\n"
    return {"while_trickling": while_trickling, "trickler_cut_s": sorted(cut),
            "body_9mb": post(json.dumps({"code": "#" * (9 << 20), "tests": TESTS}).encode()),
            "compiler_exhausting_tests": post(json.dumps({"code": "x = 1", "tests": deep}).encode())}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["local", "server"], required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--paths", default="[]", help="JSON list of files holding ANSWER-<marker>=3")
    parser.add_argument("--port", type=int, default=9)
    parser.add_argument("--allow-weak", action="store_true")
    args = parser.parse_args()

    from agentq.sandbox import Limits, LocalExecutor, RemoteExecutor
    from agentq.sandbox.jail import IsolationUnavailable
    from agentq.sandbox.server import SandboxServer

    limits = Limits(timeout_s=8, memory_mb=512)
    out: dict[str, object] = {}
    try:
        LocalExecutor(workers=1, limits=limits).close()
        out["refused"] = None
    except IsolationUnavailable as err:
        out["refused"] = str(err)
    executor = LocalExecutor(workers=1, limits=limits, allow_weak_isolation=args.allow_weak)
    runner: LocalExecutor | RemoteExecutor = executor
    httpd = None
    if args.mode == "server":
        httpd = SandboxServer(("127.0.0.1", 0), executor, token=args.marker, read_timeout_s=2.0,
                              request_deadline_s=4.0, max_concurrent=1)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        runner = RemoteExecutor(f"http://127.0.0.1:{httpd.server_address[1]}", limits=limits, token=args.marker)
    paths = json.loads(args.paths)
    verdicts = {}
    try:
        for name in ORDER:
            code, tests = ISSUE_23[name] if name in ISSUE_23 else (program(name, args.marker, paths, args.port), TESTS)
            verdict = runner.run(code, tests)
            verdicts[name] = verdict.model_dump(mode="json", include={"status", "message", "isolation", "profile"})
        if httpd is not None:
            out["server"] = server_checks(httpd, args.marker)
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        executor.close()
    out["verdicts"] = verdicts
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
