"""Runs issue 23's hostile repository patches (and in-tree attacks on the test run) through a RepoExecutor or a
token-guarded sandbox server and prints one JSON object: each attack's verdict and the run's wall time.
test_repo_patch_safety.py starts it as root and as the sandbox pods' unprivileged user (a separate process:
the sandbox inherits its uid), with its own TMPDIR, and then checks the host: no marker a trusted tool would
have written, no temporary tree left, nothing still running.

Every attack targets minilib's buggy tree, whose fail-to-pass tests fail: an attack that works turns the
verdict into "resolved" (or runs a command on the host). Patch attacks go through the whole repository
executor; in-tree attacks put hostile code into the tree as if a patch had brought it past the patch check,
and run the sandbox on it with that file marked as the candidate's, to show what the run itself refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from tests.test_repo_tasks import BUG, F2P, FIX, MINILIB, MINITESTS, P2P, make_sdist

BUGGY = MINILIB.replace("if x < lo:", "if x > lo:")  # the tree after the task's bug patch
FIRST_LINE = MINILIB.splitlines()[0]  # where _prepend puts an attack
NODES = [*F2P, *P2P]
GIT_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"


def peak_rss_mb() -> int:
    """This process's peak resident memory since it started (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over from before exec, so a driver started by a large pytest process would report pytest's size."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) >> 10 for line in fh if line.startswith("VmHWM:"))


def _new_file(path: str, text: str, mode: str = "100644") -> str:
    lines = text.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return (f"diff --git a/{path} b/{path}\nnew file mode {mode}\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n{body}")


def _prepend(path: str, first_line: str, code: str) -> str:
    """A patch adding `code` after the first line of an existing file."""
    lines = code.splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return f"--- a/{path}\n+++ b/{path}\n@@ -1,1 +1,{1 + len(lines)} @@\n {first_line}\n{body}"


# What a forged run writes: every test passed, in the report format of old (a file named by an environment
# variable, spelled in two pieces so no line names it).
FORGE = """import json as _json, os as _os
_path = _os.environ.get("AGENTQ_" + "REPORT")
if _path:
    with open(_path, "a") as _fh:
        for _n in NODES:
            _fh.write(_json.dumps({"nodeid": _n, "when": "call", "outcome": "passed", "message": ""}) + "\\n")
        _fh.write(_json.dumps({"end": True, "exitstatus": 0, "collected": len(NODES)}) + "\\n")
    _os._exit(0)
"""
# A pytest plugin that turns every test into one that passes (hook names do not match the old guard's \\bpytest\\b).
SKIP_EVERY_TEST = ("def pytest_collection_modifyitems(items):\n    for item in items:\n"
                   "        item.runtest = lambda: None\n")


_REPLACE_REPORT = """import os as _o
for _p in [_o.environ[k] for k in _o.environ if k.endswith("REPORT")]:
    try:
        _o.unlink(_p)
    except OSError:
        pass
    {}
    _o._exit(0)"""


def patch_attacks(marker: str) -> dict[str, str]:
    fsmonitor = f"\tfsmonitor = \"touch {marker}-fsmonitor\"\n"
    forge = f"NODES = {NODES!r}\n{FORGE}"
    return {
        # Issue 23, failure 1: git apply refused .git/, GNU patch took it, the trusted `git status` ran fsmonitor.
        "git_config_fsmonitor": "--- a/.git/config\n+++ b/.git/config\n@@ -1,5 +1,6 @@\n"
                                + "".join(f" {line}\n" for line in GIT_CONFIG.splitlines()[:5]) + f"+{fsmonitor}",
        "git_hook": _new_file(".git/hooks/post-checkout", f"#!/bin/sh\ntouch {marker}-hook"),
        "symlink_to_tests": "diff --git a/minilib/link.py b/minilib/link.py\nnew file mode 120000\n"
                            "--- /dev/null\n+++ b/minilib/link.py\n@@ -0,0 +1 @@\n+../tests/test_minilib.py\n"
                            "\\ No newline at end of file\n",
        "path_out_of_the_tree": _new_file("../escape.py", "x = 1"),
        "absolute_path": "--- /dev/null\n+++ /etc/agentq-escape.py\n@@ -0,0 +1 @@\n+x = 1\n",
        "rename_tests_away": "diff --git a/tests/test_minilib.py b/tests/moved.py\nsimilarity index 100%\n"
                             "rename from tests/test_minilib.py\nrename to tests/moved.py\n",
        # Issue 23, failure 3: module shadowing, configuration the restore step did not know, pytest internals by
        # names built from two strings. Each of these resolved the task on main before this issue.
        "pytest_toml": _new_file(".pytest.toml", '["\\u0070ytest"]\naddopts = ["-p", "minilib._plugin"]')
                       + _new_file("minilib/_plugin.py", SKIP_EVERY_TEST),
        "pytest_ini_addopts": _new_file("pytest.ini", "[pytest]\naddopts = -p minilib._plugin")
                              + _new_file("minilib/_plugin.py", SKIP_EVERY_TEST),
        "conftest_forges": _new_file("tests/conftest.py", SKIP_EVERY_TEST),
        "sitecustomize": _new_file("sitecustomize.py", forge),
        "pytest_module": _new_file("pytest.py", forge),
        "report_plugin_module": _new_file("agentq_pytest_report.py", forge),
        "report_plugin_in_package": _new_file("minilib/agentq_pytest_report.py", forge),
        "two_strings": _prepend("minilib/__init__.py", FIRST_LINE,
                                'import sys as _s\n_m = _s.modules.get("_py" + "test.python")\n'
                                'setattr(_m.Function, "run" + "test", lambda self: None)'),
        "data_file": _new_file("minilib/data.pth", "import os"),
        # Issue 23, failure 5: the report file of old replaced with a FIFO (the run hung, its trees stayed) or a
        # link to /dev/zero (the trusted process ran out of memory); stderr read whole.
        "report_fifo": _prepend("minilib/__init__.py", FIRST_LINE, _REPLACE_REPORT.format(
            "_o.mkfifo(_p)")),
        "report_zero": _prepend("minilib/__init__.py", FIRST_LINE, _REPLACE_REPORT.format(
            '_o.symlink("/dev/zero", _p)')),
        "stderr_flood": _prepend("minilib/__init__.py", FIRST_LINE,
                                 "import os as _os\n_chunk = b'x' * (1 << 20)\nfor _ in range(512):\n"
                                 "    _os.write(2, _chunk)"),
        "hang": _prepend("minilib/__init__.py", FIRST_LINE, "import time as _t\n_t.sleep(10 ** 6)"),
    }


# Code placed in the tree as if it had passed the patch check; the run must still refuse what it tries.
IN_TREE: dict[str, str | dict[str, str]] = {
    # Signed records only: lines written into every descriptor (the report pipe among them) are ignored.
    "report_pipe_forgery": '''
import os as _os
_FAKE = b"".join(b'{"nodeid":"%s","when":"call","outcome":"passed","message":""}\\t0\\n' % n.encode()
                 for n in NODES) + b'{"end":true,"exitstatus":0,"collected":3}\\t0\\n'
for _fd in range(3, 64):
    try:
        _os.write(_fd, _FAKE)
    except OSError:
        pass
''',
    # Frames: walk up to pytest and rewrite what it holds.
    "frames": '''
import sys as _s
_f = _s._getframe()
while _f is not None:
    _f.f_globals.get("__name__")
    _f = _f.f_back
''',
    # The collector's view of every object (a report, pytest's runner) from a thread, off the main stack.
    "gc_objects": '''
import gc as _gc
_reports = [o for o in _gc.get_objects() if type(o).__name__ == "TestReport"]
''',
    # pytest's own modules, by two strings, then assignment.
    "module_assignment": '''
import sys as _s
_runner = getattr(_s, "mod" + "ules")["_py" + "test.runner"]
_runner.call_and_report = lambda *a, **k: None
''',
    # Modules named like what the run imports, at the tree's root (as if the sdist had them): never imported.
    "shadow_modules": {name: f"NODES = {NODES!r}\n{FORGE}" for name in
                       ("sitecustomize.py", "pytest.py", "agentq_pytest_report.py", "pluggy.py")},
    # Read its own memory through /proc (where the key was).
    "proc_mem": '''
open("/proc/self/mem", "rb").close()
''',
    # The report file paths of old, made into a FIFO and a link to /dev/zero; a directory nobody may enter.
    "fifo_and_zero": '''
import os as _os
for _path in ("/results/report.jsonl", "/repo/report.jsonl", "/tmp/report.jsonl"):
    try:
        _os.makedirs(_os.path.dirname(_path), exist_ok=True)
        _os.mkfifo(_path)
    except OSError:
        pass
try:
    _os.symlink("/dev/zero", "/repo/zero")
    _os.mkdir("/repo/closed")
    _os.chmod("/repo/closed", 0)
except OSError:
    pass
''',
}


def make_data(root: Path) -> Path:
    make_sdist(root / "repos", "minilib", {"minilib/__init__.py": MINILIB, "tests/test_minilib.py": MINITESTS})
    return root


def task_record() -> dict:
    return {"task_id": "minilib-0.1__attack", "kind": "repo", "group": "minilib",
            "repo": {"sdist": "minilib-0.1.tar.gz", "name": "minilib", "version": "0.1"}, "bug_patch": BUG,
            "fail_to_pass": F2P, "pass_to_pass": P2P, "issue": "clamp is wrong", "test_target": ["tests/"],
            "metadata": {}}


def _verdict(v) -> dict:
    return {"status": v.status, "resolved": v.resolved, "patch_status": v.patch_status, "message": v.message[:300],
            "f2p_passed": v.f2p_passed, "stderr_len": len(v.stderr_tail)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["local", "server"], required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--only", default="", help="comma-separated attack names")
    args = parser.parse_args()

    from agentq.sandbox import LocalExecutor, RemoteExecutor
    from agentq.sandbox.repo import RepoExecutor, RepoLimits, SdistStore
    from agentq.sandbox.server import SandboxServer

    root = Path(os.environ["TMPDIR"])
    data = make_data(root / "data")
    limits = RepoLimits(timeout_s=20)
    executor = RepoExecutor(root / "trees", limits=limits)
    store = SdistStore(data / "repos", executor)
    wanted = set(filter(None, args.only.split(",")))
    out: dict[str, dict] = {}
    runner = store
    functions = httpd = None
    if args.mode == "server":
        functions = LocalExecutor(workers=1, allow_weak_isolation=os.geteuid() != 0)
        httpd = SandboxServer(("127.0.0.1", 0), functions, token=args.marker, repos=store)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        runner = RemoteExecutor(f"http://127.0.0.1:{httpd.server_address[1]}", token=args.marker)
    try:
        # The honest fix resolves, so each "not resolved" below says the attack failed, not the set-up.
        for name, patch in {"honest_fix": FIX, **patch_attacks(str(root / args.marker))}.items():
            if wanted and name not in wanted and name != "honest_fix":
                continue
            started = time.monotonic()
            (verdict,) = runner.run_task(task_record(), [patch])
            out[name] = {**_verdict(verdict), "seconds": round(time.monotonic() - started, 1),
                         "maxrss_mb": peak_rss_mb()}
        if args.mode == "local" and any(not wanted or name in wanted for name in IN_TREE):
            from agentq.sandbox.repo import copy_tree, remove_tree

            pristine = store.pristine(task_record()["repo"])
            for name, code in IN_TREE.items():
                if wanted and name not in wanted:
                    continue
                work = root / "work" / name
                copy_tree(pristine, work, with_git=False)
                # The bug stays: only a forgery passes.
                own = code if isinstance(code, str) else ""
                files = {"minilib/__init__.py": f"{BUGGY}NODES = {NODES!r}\n{own}",
                         **(code if isinstance(code, dict) else {})}
                for rel, text in files.items():
                    (work / rel).write_text(text)
                started = time.monotonic()
                report = executor.sandbox.run(work, NODES, candidate_files=list(files))
                outcomes = {n: report.outcomes.get(n, ("missing", ""))[0] for n in NODES}
                out[f"in_tree_{name}"] = {"status": report.status, "outcomes": outcomes,
                                          "resolved": all(o == "passed" for o in outcomes.values()),
                                          "stderr": report.stderr_tail[-600:],
                                          "seconds": round(time.monotonic() - started, 1)}
                remove_tree(work)
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if functions is not None:
            functions.close()
    print(json.dumps({"uid": os.geteuid(), "verdicts": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
