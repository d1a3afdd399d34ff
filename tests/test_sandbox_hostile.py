"""Issue 11's and issue 23's hostile candidates, as root and as the sandbox pods' unprivileged uid (10001),
through the local executor and through the server (tests/hostile_driver.py runs them in a process of that user):
none passes, none leaves anything behind on the host, and the server holds against slow and oversized requests.
As root the sandbox has its "root" isolation profile (uids of its own, cgroups), as uid 10001 the "userns" one
(the lead's decision for non-root pods, /work/NEWS.md 21:40); both are full isolation and every verdict names
its profile. The memory attack is then stopped by the test process, which sums the run's processes' memory."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hostile_driver import ORDER, shm_key
from unprivileged import POD_UID, REPO, env, python_for


def _cmdlines() -> str:
    text = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                text.append(fh.read().decode("utf-8", "replace"))
        except OSError:
            pass
    return "\n".join(text)


@pytest.fixture()
def answer_file():
    """A world-readable file holding the answer, like a task file or ../shared/data on the host."""
    folder = tempfile.mkdtemp(prefix="agentq-oracle-")
    os.chmod(folder, 0o755)
    marker = secrets.token_hex(6)
    path = Path(folder) / "tasks.jsonl"
    path.write_text(f'{{"reference": "ANSWER-{marker}=3"}}\n')
    path.chmod(0o644)
    yield marker, str(path)
    path.unlink()
    os.rmdir(folder)


@pytest.mark.parametrize("mode", ["local", "server"])
@pytest.mark.parametrize("user", ["root", "unprivileged"])
def test_hostile_candidates_neither_pass_nor_survive(user, mode, answer_file):
    marker, oracle = answer_file
    if user == "root" and os.geteuid() != 0:
        pytest.skip("the root case needs root")
    uid = POD_UID if user == "unprivileged" and os.geteuid() == 0 else os.geteuid()
    snooped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"ANSWER-{marker}=3"])
    paths = [oracle, str(REPO / "README.md"), str(REPO.parent / "shared" / "data")]
    args = [str(REPO / "tests" / "hostile_driver.py"), "--mode", mode, "--marker", marker, "--paths", json.dumps(paths)]
    if user == "unprivileged":
        args.append("--allow-weak")
    try:
        python = python_for(uid) if uid != os.geteuid() else [sys.executable]
        proc = subprocess.run([*python, *args], user=uid, env=env({"LEAK": f"ANSWER-{marker}=3"}), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
    finally:
        snooped.kill()
        snooped.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    verdicts = result["verdicts"]
    assert list(verdicts) == ORDER
    # Both are full isolation (no refusal, nothing weakened), each under its own profile.
    assert result["refused"] is None
    assert all(v["isolation"] == [] for v in verdicts.values())
    profile = "root" if uid == 0 else "userns"
    assert all(v["profile"] == profile for v in verdicts.values()), {n: v["profile"] for n, v in verdicts.items()}
    # Issue 23 (failures 2, 4, 6, 7 as this user, through this path): the thief's sibling did quote the answer,
    # the lone surrogate arrives as U+FFFD, and (below) none of them passed.
    assert "424242" in verdicts["leak_wrong_sibling"]["message"]
    assert "bad \ufffd value" in verdicts["lone_surrogate"]["message"], verdicts["lone_surrogate"]
    if mode == "server":  # failure 8
        server = result["server"]
        assert server["while_trickling"] == [200, 200] and max(server["trickler_cut_s"]) < 15, server
        assert (server["body_9mb"], server["compiler_exhausting_tests"]) == (413, 400), server
    for name, verdict in verdicts.items():
        assert verdict["status"] != "passed", (name, verdict)
    # Nothing survives on the host: no daemon, no SysV segment, no planted file.
    time.sleep(0.2)
    assert f"DAEMON-{marker}" not in _cmdlines()
    with open("/proc/sysvipc/shm") as fh:
        keys = {int(line.split()[0]) for line in list(fh)[1:]}
    assert shm_key(marker) not in keys
    for folder in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", str(REPO), str(REPO.parent)):
        assert not os.path.exists(os.path.join(folder, f"agentq-{marker}")), folder


def test_candidate_holds_no_capability_and_sees_only_its_own_processes():
    from agentq.sandbox import LocalExecutor

    code = (
        "import os\n"
        "def probe():\n"
        "    status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines() if ':' in l)\n"
        "    caps = [status[k].strip() for k in ('CapEff', 'CapPrm', 'CapInh', 'CapBnd', 'CapAmb')]\n"
        "    return caps, sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), os.path.exists('/work')\n"
    )
    tests = "from solution import *\ndef test_probe():\n    caps, pids, work = probe()\n" \
            "    assert caps == ['0000000000000000'] * 5, caps\n    assert pids == [1, 2], pids\n    assert not work\n"
    with LocalExecutor(workers=1) as executor:
        verdict = executor.run(code, tests)
    assert verdict.passed, verdict


def test_sandbox_uids_fit_the_user_namespace():
    from agentq.sandbox.jail import CANDIDATE_UID_BASE, pick_uids

    host = "         0          0 4294967295\n"
    assert pick_uids(host, 1234, 3)[0] == CANDIDATE_UID_BASE + 1234 * 256 + 3
    pod = "         0     165536      65536\n"  # a pod with hostUsers: false
    cand, tests = pick_uids(pod, 4_000_123, 7)
    assert 32768 <= cand < 49152 <= tests < 65536 and cand != tests
    assert pick_uids(pod, 10, 1) != pick_uids(pod, 10, 2)


def test_bubblewrap_that_cannot_start_means_refusal_or_an_explicit_weak_run(monkeypatch):
    """A pod whose seccomp profile forbids user namespaces: bwrap exits at once."""
    from agentq.sandbox import LocalExecutor, jail
    from agentq.sandbox.executor import WorkerDied

    monkeypatch.setattr(jail, "bwrap_path", lambda: "/bin/false")
    with pytest.raises(WorkerDied, match="did not start.*allowWeakIsolation"):
        LocalExecutor(workers=1)
    with LocalExecutor(workers=1, allow_weak_isolation=True) as executor:
        tests = "from solution import *\ndef test_f():\n    assert f() == 1\n"
        verdict = executor.run("def f():\n    return 1\n", tests)
    assert verdict.passed and any("bubblewrap cannot start" in note for note in verdict.isolation), verdict


def test_seccomp_refuses_tracing_keyrings_and_new_user_namespaces_but_not_threads_or_programs():
    from agentq.sandbox import LocalExecutor

    code = (
        "import ctypes, subprocess, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def probe():\n"
        "    def errno_of(result):\n"
        "        return ctypes.get_errno() if result == -1 else 0\n"
        "    t = threading.Thread(target=lambda: None)\n"
        "    t.start()\n"
        "    t.join()\n"
        "    echoed = subprocess.run(['/usr/bin/echo', 'hi'], capture_output=True).stdout\n"
        "    return [echoed, errno_of(libc.ptrace(0, 0, 0, 0)), errno_of(libc.unshare(0x10000000)),\n"
        "            errno_of(libc.syscall(250, 0, 0, 0, 0, 0))]  # keyctl\n"
    )
    tests = "from solution import *\ndef test_probe():\n    assert probe() == [b'hi\\n', 1, 1, 1]\n"
    with LocalExecutor(workers=1) as executor:
        verdict = executor.run(code, tests)
    assert verdict.passed, verdict


def test_commands_refuse_without_isolation_in_one_line_unless_told(monkeypatch, tmp_path, capsys):
    from agentq.cli import main
    from agentq.sandbox import jail
    from agentq.tasks.schema import Task, write_tasks

    task = Task(id="t1", source="test", group="g", description="add one", buggy_code="def inc(x):\n    return x\n",
                reference_code="def inc(x):\n    return x + 1\n", entry_point="inc",
                tests="from solution import *\ndef test_one():\n    assert inc(1) == 2\n")
    write_tasks(tmp_path / "tasks.jsonl", [task])
    monkeypatch.setattr(jail, "bwrap_path", lambda: None)  # a machine without bubblewrap
    assert main(["tasks", "validate", str(tmp_path / "tasks.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("agentq: bubblewrap (bwrap) is not installed") and len(err.strip().splitlines()) == 1
    assert main(["tasks", "validate", str(tmp_path / "tasks.jsonl"), "--allow-weak-isolation"]) == 0


def test_the_candidates_whole_tree_shares_one_core_and_one_memory_limit():
    """Processes of a candidate are in the worker's cpu, memory and pids cgroups, with one core between them."""
    import threading

    from agentq.sandbox import Limits, LocalExecutor

    code = "import os, time\ndef f():\n    pid = os.fork()\n    if pid == 0:\n        time.sleep(3)\n" \
           "        os._exit(0)\n    time.sleep(2)\n    return 1\n"
    tests = "from solution import *\ndef test_f():\n    assert f() == 1\n"
    with LocalExecutor(workers=1, limits=Limits(timeout_s=6, memory_mb=300)) as executor:
        (worker,) = executor._all
        groups = {g.parent.parent.name: g for g in worker.jail.cgroups}
        seen: dict[str, int] = {}

        def watch() -> None:
            time.sleep(1.2)
            for name, group in groups.items():
                seen[name] = len((group / "cgroup.procs").read_text().split())

        watcher = threading.Thread(target=watch)
        watcher.start()
        verdict = executor.run(code, tests)
        watcher.join()
        assert verdict.passed, verdict
        assert all(n >= 2 for n in seen.values()), seen  # the candidate and its child (the runner stays out)
        if set(groups) == {"cgroup"}:  # cgroup v2: one group with every controller
            (group,) = groups.values()
            assert (group / "cpu.max").read_text().split() == ["100000", "100000"]
            assert (group / "memory.max").read_text().strip() == str(300 << 20)
        else:
            # cpuacct only meters CPU time (the time budget), where the kernel has it
            assert set(groups) - {"cpuacct"} == {"pids", "memory", "cpu"}
            assert (groups["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "100000"
            assert (groups["cpu"] / "cpu.cfs_period_us").read_text().strip() == "100000"
            assert (groups["memory"] / "memory.limit_in_bytes").read_text().strip() == str(300 << 20)
        assert all((g / "cgroup.procs").read_text().split() == [] for g in groups.values())  # all gone after


def test_cgroup_v2_delegates_the_three_controllers_or_says_why_not(tmp_path):
    """Against a stand-in for /sys/fs/cgroup (this machine may run cgroup v1): what is written where."""
    from agentq.sandbox.jail import _make_cgroup_v2

    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (group,) = _make_cgroup_v2("123-4", tmp_path)
    assert group == tmp_path / "agentq-sandbox" / "123-4" and group.is_dir()
    for level in (tmp_path, tmp_path / "agentq-sandbox"):
        assert (level / "cgroup.subtree_control").read_text() == "+pids +memory +cpu"
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    assert _make_cgroup_v2("123-5", tmp_path) == "no cgroup: cgroup v2 at " + str(tmp_path) + \
        " lacks the memory, pids controller(s)"
