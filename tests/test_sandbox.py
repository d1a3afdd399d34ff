"""The local executor against hostile candidates: for each, the executor survives, the verdict is right, and
the next (honest) candidate still passes. Real fork servers, real processes, real sockets."""

from __future__ import annotations

import os
import socket
import textwrap
import time

import pytest

from agentq.sandbox import Limits, LocalExecutor, Verdict
from agentq.sandbox.limits import BUDGET_FLOOR_S, for_reference

TESTS = textwrap.dedent(
    """
    from solution import *

    def test_small():
        assert add(1, 2) == 3

    def test_negative():
        assert add(-4, 1) == -3
    """
)
GOOD = "def add(a, b):\n    return a + b\n"
FAST = Limits(timeout_s=1.5, memory_mb=512)


@pytest.fixture(scope="module")
def ex():
    with LocalExecutor(workers=2, limits=FAST) as executor:
        yield executor


def check(ex: LocalExecutor, code: str, status: str | set[str], tests: str = TESTS) -> Verdict:
    """Run a hostile candidate, check its verdict, then prove the executor still passes an honest one."""
    verdict = ex.run(textwrap.dedent(code), tests)
    wanted = {status} if isinstance(status, str) else status
    assert verdict.status in wanted, verdict
    assert not verdict.passed
    after = ex.run(GOOD, TESTS)
    assert after.status == "passed", after
    return verdict


def candidate_processes(ex: LocalExecutor) -> list[int]:
    """Live processes running under any of this executor's candidate uids."""
    uids = {int(w.jail.env["AGENTQ_SANDBOX_UIDS"].split(",")[0]) for w in ex._all if w.jail}
    assert uids, "the executor's workers run without bubblewrap"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as fh:
                uid = int(next(line for line in fh if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration):
            continue
        if uid in uids:
            found.append(int(pid))
    return found


def test_honest_and_wrong_candidates(ex):
    good = ex.run(GOOD, TESTS)
    assert good.status == "passed" and good.expected_tests == 2 and good.reward == 1.0
    assert [t.name for t in good.tests] == ["test_small", "test_negative"]
    assert good.isolation == []
    bad = ex.run("def add(a, b):\n    return a - b\n", TESTS)
    assert bad.status == "failed" and bad.reward == 0.0
    assert bad.message.startswith("test_small: AssertionError at tests.py line 5: assert add(1, 2) == 3")
    half = ex.run("def add(a, b):\n    return a + b if a > 0 else 0\n", TESTS)
    assert half.status == "failed" and half.reward == 0.5
    assert half.feedback().startswith("failed: 1/2 tests passed.")


def test_run_many_keeps_order_and_is_parallel(ex):
    items = [(f"def add(a, b):\n    return a + b + {i % 2}\n", TESTS) for i in range(12)]
    verdicts = ex.run_many(items)
    assert [v.status for v in verdicts] == ["passed" if i % 2 == 0 else "failed" for i in range(12)]


def test_tests_that_do_not_compile_are_an_error_not_a_crash(ex):
    verdict = ex.run(GOOD, "from solution import *\ndef test_x(:\n    pass\n")
    assert verdict.status == "error" and "do not compile" in verdict.message and "line 2" in verdict.message
    assert ex.run(GOOD, "from solution import *\nx = 1\n").message == "the tests define no test_* function"
    assert ex.run(GOOD, "from solution import *\ndef test_a():\n    return 1\nreturn 2\n").status == "error"
    assert ex.run(GOOD, TESTS).passed


def test_tests_failing_at_import_are_an_error(ex):
    tests = "from solution import *\nraise RuntimeError('broken task')\ndef test_a(): pass\n"
    verdict = check(ex, GOOD, "error", tests=tests)
    assert "broken task" in verdict.message


def test_candidate_that_does_not_compile(ex):
    verdict = check(ex, "def add(a, b)\n    return a + b\n", "error")
    assert "SyntaxError" in verdict.message and "line 1" in verdict.message


def test_fork_bomb_is_contained_and_cleaned_up(ex):
    bomb = """
        import os
        def add(a, b):
            if os.fork() == 0:
                os.setsid()  # leave the process group: only the uid/cgroup sweep finds these
                while True:
                    try:
                        os.fork()
                    except OSError:
                        pass
            return a + b
    """
    verdict = ex.run(textwrap.dedent(bomb), TESTS)
    assert verdict.status in {"passed", "failed", "error"}  # the sum is right; what matters is what follows
    assert candidate_processes(ex) == []
    assert ex.run(GOOD, TESTS).passed


def test_fork_bomb_at_import(ex):
    check(ex, "import os\nwhile True:\n    os.fork()\n", {"error", "failed", "killed"})
    assert candidate_processes(ex) == []


def test_memory_bomb(ex):
    verdict = check(ex, "def add(a, b):\n    x = bytearray(8 << 30)\n    return a + b\n", "memory")
    assert "MemoryError" in verdict.message
    check(ex, "x = [0] * (4 << 30)\ndef add(a, b):\n    return a + b\n", "memory")


def test_infinite_loop_times_out(ex):
    verdict = check(ex, "def add(a, b):\n    while True:\n        pass\n", "timeout")
    assert "timed out after 1.5s while running test_small" in verdict.message
    check(ex, "while True:\n    pass\n", "timeout")
    assert candidate_processes(ex) == []


def test_annotations_are_evaluated_as_plain_python_would(ex):
    """The sandbox's own `from __future__ import annotations` must not make a candidate's annotations lazy."""
    verdict = check(ex, "def add(a: ArrayList[int], b) -> int:\n    return a + b\n", "error")
    assert "NameError" in verdict.message and "ArrayList" in verdict.message


def test_busy_loop_is_cut_by_cpu_time_before_the_wall_clock(ex):
    limits = Limits(timeout_s=20.0, cpu_s=1, memory_mb=512)
    verdict = ex.run("def add(a, b):\n    while True:\n        pass\n", TESTS, limits=limits)
    assert verdict.status == "timeout" and "used up its CPU time" in verdict.message, verdict
    assert verdict.duration_s < 10  # the 20 s wall clock never came into it
    assert ex.run(GOOD, TESTS, limits=limits).passed


def test_a_runs_clock_starts_with_its_job_not_when_the_worker_got_ready_for_it():
    """A worker readies the next run (its candidate's process waits for the job) as soon as the last one ends; a
    job that comes later must still get its whole timeout (here the timeout counted from the readying would end
    0.2 s into a run that needs 0.6 s)."""
    slow = "import time\ndef add(a, b):\n    time.sleep(0.3)\n    return a + b\n"
    with LocalExecutor(workers=1, limits=Limits(timeout_s=1.0, memory_mb=512)) as executor:
        assert executor.run(GOOD, TESTS).passed
        time.sleep(0.8)
        verdict = executor.run(slow, TESTS)
    assert verdict.passed, verdict


def test_time_budget_cuts_a_busy_loop_by_its_cgroup_cpu_time_and_spares_an_honest_run(ex):
    """The budget derived from a reference's run time ends a loop after that much CPU of the candidate's tree,
    long before the 20 s wall clock; an honest candidate under the same budget passes, its CPU time measured."""
    limits = for_reference(Limits(timeout_s=20.0, memory_mb=512), reference_s=0.01)
    assert limits.time_budget_s == BUDGET_FLOOR_S
    verdict = ex.run("def add(a, b):\n    while True:\n        pass\n", TESTS, limits=limits)
    assert verdict.status == "timeout" and f"time budget of {BUDGET_FLOOR_S:g}s" in verdict.message, verdict
    assert verdict.cpu_s is not None and BUDGET_FLOOR_S <= verdict.cpu_s < 1.0, verdict.cpu_s
    assert verdict.duration_s < 10
    honest = ex.run(GOOD, TESTS, limits=limits)
    assert honest.passed and honest.cpu_s is not None and 0 < honest.cpu_s < BUDGET_FLOOR_S, honest
    assert candidate_processes(ex) == []


def test_time_budget_is_capped_by_the_timeout_and_absent_without_a_reference():
    base = Limits(timeout_s=2.0)
    assert for_reference(base, None) is base
    assert for_reference(base, 0.1).time_budget_s == pytest.approx(0.4)  # 4 x the reference's time
    assert for_reference(base, 10.0).time_budget_s == 2.0  # never above the spec's timeout


def test_sleeping_candidate_times_out_by_wall_clock(ex):
    check(ex, "import time\ndef add(a, b):\n    time.sleep(60)\n", "timeout")


def test_one_gigabyte_file_write_hits_the_file_size_limit(ex):
    code = """
        def add(a, b):
            with open("big.bin", "wb") as fh:
                for _ in range(1024):
                    fh.write(b"\\0" * (1 << 20))
            return a + b
    """
    verdict = check(ex, code, "failed")
    assert "File too large" in verdict.message


def test_no_network_even_to_loopback(ex):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = f"""
        import socket
        def add(a, b):
            s = socket.socket()
            s.settimeout(1)
            s.connect(("127.0.0.1", {port}))
            return a + b
    """
    try:
        verdict = check(ex, code, "failed")
        # A candidate may open no socket but AF_UNIX (the worker's seccomp filter).
        assert "candidate raised PermissionError" in verdict.message, verdict
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


def test_environment_secrets_are_invisible(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-4711")
    snoop = """
        import os
        def add(a, b):
            seen = repr(dict(os.environ))
            for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self", "1"]:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as fh:
                        seen += fh.read().decode("utf-8", "replace")
                except OSError:
                    pass
            print(seen)
            assert "PATH" in os.environ  # it did read a real environment
            return seen
    """
    tests = "from solution import *\ndef test_no_secret():\n    assert 'fake-secret-4711' not in add(1, 2)\n"
    with LocalExecutor(workers=1, limits=FAST) as executor:
        verdict = executor.run(textwrap.dedent(snoop), tests)
    assert verdict.status == "passed", verdict
    assert "PATH" in verdict.stdout_tail and "fake-secret-4711" not in verdict.stdout_tail


@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "os.killpg(0, signal.SIGKILL)",
        "os.kill(1, signal.SIGKILL)",
        # kill -9 of every pid it can see (guarded: never as root, where isolation would be missing anyway)
        "[os.kill(int(p), signal.SIGKILL) for p in os.listdir('/proc') if p.isdigit() and os.getuid() != 0]",
        "os.getuid() != 0 and os.kill(-1, signal.SIGKILL)",
    ],
)
def test_killing_the_parent_or_everything(ex, attack):
    code = f"""
        import os, signal
        def add(a, b):
            try:
                {attack}
            except OSError:
                pass
            return a + b + 1
    """
    check(ex, code, {"failed", "killed"})


FAKES = {
    "sys.exit(0) at import": ("import sys\nsys.exit(0)\n", "error"),
    "os._exit(0) at import": ("import os\nos._exit(0)\n", "error"),
    "sys.exit(0) in a call": ("import sys\ndef add(a, b):\n    sys.exit(0)\n", "failed"),
    "os._exit(0) in a call": ("import os\ndef add(a, b):\n    os._exit(0)\n", "failed"),
    "SystemExit subclass": ("class Done(SystemExit):\n    pass\ndef add(a, b):\n    raise Done(0)\n", "failed"),
    "KeyboardInterrupt subclass": ("class K(KeyboardInterrupt):\n    pass\ndef add(a, b):\n    raise K()\n", "failed"),
    "printing fake results": (
        "import sys\nprint('2 passed in 0.01s')\n"
        "print('{\"e\": \"test\", \"name\": \"test_small\", \"passed\": true}\\n{\"e\": \"end\"}')\n"
        "sys.stderr.write('OK\\n')\ndef add(a, b):\n    return 0\n",
        "failed",
    ),
    "atexit hook": (
        "import atexit, os\natexit.register(lambda: os.write(1, b'2 passed'))\n"
        "def add(a, b):\n    raise SystemExit(0)\n",
        "failed",
    ),
    "writing to inherited fds": (
        "import os\nfake = b'{\"e\": \"test\", \"name\": \"test_small\", \"passed\": true}\\n{\"e\": \"end\"}\\n'\n"
        "def add(a, b):\n    for fd in range(0, 256):\n        try:\n            os.write(fd, fake)\n"
        "        except OSError:\n            pass\n    return 0\n",
        "failed",
    ),
    "patching test functions via gc from a thread": (
        "import gc, threading, time, types\n"
        "def patch():\n    while True:\n        for o in gc.get_objects():\n"
        "            if isinstance(o, types.FunctionType) and o.__name__.startswith('test_'):\n"
        "                o.__code__ = (lambda: None).__code__\n        time.sleep(0.001)\n"
        "threading.Thread(target=patch, daemon=True).start()\ndef add(a, b):\n    time.sleep(0.05)\n    return 0\n",
        "failed",
    ),
    "sys.settrace line jumps": (
        "import sys\ndef tracer(frame, event, arg):\n"
        "    if frame.f_code.co_filename == 'tests.py' and event == 'line':\n"
        "        try:\n            frame.f_lineno = frame.f_lineno + 1\n        except ValueError:\n            pass\n"
        "    return tracer\nsys.settrace(tracer)\ndef add(a, b):\n    sys.settrace(tracer)\n    return 0\n",
        "failed",
    ),
    "patching builtins": (
        "import builtins\nclass Yes:\n    def __eq__(self, other):\n        return True\n"
        "builtins.AssertionError = type('Quiet', (Exception,), {})\nbuiltins.print = lambda *a, **k: None\n"
        "def add(a, b):\n    return 0\n",
        "failed",
    ),
    "object whose __eq__ is always True": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return Yes()\n",
        "failed",
    ),
    "int subclass that equals everything": (
        "class Liar(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Liar(0)\n",
        "failed",
    ),
}


@pytest.mark.parametrize("name", list(FAKES))
def test_verdicts_cannot_be_faked(ex, name):
    code, status = FAKES[name]
    check(ex, code, status)


def test_stdlib_imports_work_under_the_unprivileged_uid(ex):
    code = "import decimal, fractions\ndef add(a, b):\n    return int(fractions.Fraction(a)) + int(decimal.Decimal(b))"
    assert ex.run(code, TESTS).passed


def test_files_stay_private_and_root_stays_unreadable(ex):
    marker = f"/tmp/agentq-escape-{os.getpid()}"
    code = f"""
        import os
        def add(a, b):
            with open("{marker}", "w") as fh:
                fh.write("escaped")
            for secret in ("/etc/shadow", "/root/.bash_history", "/proc/1/environ"):
                try:
                    open(secret).read()
                    return "read " + secret
                except OSError:
                    pass
            return a + b
    """
    assert ex.run(textwrap.dedent(code), TESTS).passed
    assert not os.path.exists(marker)


def test_output_tails_are_bounded_and_kept():
    limits = Limits(timeout_s=2, output_bytes=100)
    with LocalExecutor(workers=1, limits=limits) as executor:
        verdict = executor.run("print('x' * 5000 + 'END')\n" + GOOD, TESTS)
    assert verdict.passed and len(verdict.stdout_tail) <= 100 and verdict.stdout_tail.rstrip().endswith("END")


def test_worker_that_dies_is_replaced(ex):
    victim = ex._all[0]
    victim.proc.kill()
    victim.proc.wait()
    verdicts = ex.run_many([(GOOD, TESTS)] * 4)
    assert all(v.passed for v in verdicts), verdicts


def test_default_workers_follow_the_cgroup_cpu_limit(tmp_path):
    """A sandbox pod limited to 2 CPUs on a big node starts 2 warm workers (cgroup v2 and v1 layouts)."""
    from agentq.sandbox.executor import _usable_cores

    cores = _usable_cores(str(tmp_path / "none"))
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("150000 100000\n")
    assert _usable_cores(str(tmp_path / "v2")) == min(cores, 2)
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert _usable_cores(str(tmp_path / "v2")) == cores
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _usable_cores(str(tmp_path / "v1")) == 1
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _usable_cores(str(tmp_path / "v1")) == cores
