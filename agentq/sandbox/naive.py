"""The baseline the warm executor is measured against: one fresh `python -m pytest` per candidate.

Same limits as the warm path (rlimits through `prlimit`, an unprivileged uid through `setpriv`, an empty
network namespace through `unshare -n`, a scrubbed environment, a wall-clock timeout that kills the whole
session) and the same LeetCode prelude at the top of `solution.py`, so only the cost differs. Its verdict
comes from pytest's exit code, which a candidate can fake; it exists for the benchmark, not for rewards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from agentq.sandbox import isolation
from agentq.sandbox.leetcode import PRELUDE
from agentq.sandbox.limits import Limits
from agentq.sandbox.verdict import Status, Verdict

NAIVE_UID_BASE = 1_700_000_000
# Generous: the baseline's verdict only has to agree with the warm one, and on a loaded machine a fresh
# interpreter and pytest take many seconds to start (5 s timed out correct programs at load 10). Programs that
# loop are cut by the CPU limit long before it.
STARTUP_ALLOWANCE_S = 30.0
# A fresh interpreter plus pytest's collection costs about 0.7 s of CPU here before the first test line runs
# (the warm path has paid it once, up front): without an allowance the baseline kills correct programs.
STARTUP_CPU_S = 2
_EXIT_STATUS: dict[int, Status] = {0: "passed", 1: "failed"}


def _command(limits: Limits, uid: int | None) -> list[str]:
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_solution.py"]
    if uid is None:
        return pytest
    rlimits = [
        "prlimit",
        f"--as={limits.memory_mb << 20}",
        f"--cpu={limits.cpu_s + STARTUP_CPU_S}:{limits.cpu_s + STARTUP_CPU_S + 1}",
        f"--fsize={limits.file_mb << 20}",
        f"--nproc={limits.max_procs}",
        "--core=0",
    ]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]
    return ["unshare", "-n", *rlimits, *drop, *pytest]


def run_naive(code: str, tests: str, limits: Limits, slot: int = 0) -> Verdict:
    """One candidate, one fresh interpreter. `slot` keeps concurrent runs on distinct uids.

    The wall clock also has to cover interpreter and pytest start-up (about 0.3 s idle, seconds on a busy
    machine), which the warm path never pays, so it gets STARTUP_ALLOWANCE_S on top, and STARTUP_CPU_S on top
    of the CPU limit for the same reason.
    """
    root = os.geteuid() == 0 and all(shutil.which(tool) for tool in ("unshare", "prlimit", "setpriv"))
    uid = NAIVE_UID_BASE + (os.getpid() << 4) + slot if root else None
    workdir = tempfile.mkdtemp(prefix="agentq-naive-")
    try:
        with open(os.path.join(workdir, "solution.py"), "w") as fh:
            fh.write(PRELUDE + "\n" + code)
        with open(os.path.join(workdir, "test_solution.py"), "w") as fh:
            fh.write(tests)
        if uid is not None:
            for name in ("", "solution.py", "test_solution.py"):
                os.chown(os.path.join(workdir, name), uid, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.monotonic()
        proc = subprocess.Popen(
            _command(limits, uid), cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=limits.timeout_s + STARTUP_ALLOWANCE_S)
            status: Status = _EXIT_STATUS.get(proc.returncode, "killed" if proc.returncode < 0 else "error")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status = "timeout"
        finally:
            if uid is not None:
                isolation.kill_uid(uid)
        text = output.decode("utf-8", "replace")
        if status != "passed" and "MemoryError" in text:
            status = "memory"
        notes = [] if uid is not None else ["naive baseline without uid switch, rlimits or netns (not root)"]
        return Verdict(status=status, message=text[-limits.output_bytes :], stdout_tail=text[-limits.output_bytes :],
                       duration_s=time.monotonic() - start, isolation=notes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
