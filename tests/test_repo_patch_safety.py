"""Issue 23, failures 1, 3 and 5: hostile repository patches and hostile code in a repository run, as root and as
the sandbox pods' unprivileged user, through the repository executor and through the sandbox server
(tests/repo_attack_driver.py runs them in a process of that user, with a TMPDIR of its own).

Before: a hunk against `.git/config` that `git apply` refused was applied by GNU patch and the trusted side's
`git status` ran its fsmonitor command as root; a `sitecustomize.py`, a `pytest.py`, a module named like the
report plugin or an unknown configuration file (`.pytest.toml`) forged the run, as did pytest internals reached
by names built from two strings; a FIFO or a link to /dev/zero in place of the report file hung the run or
exhausted the trusted process; every byte of stderr was kept. Each is an attack below, and none may resolve
the task, run anything on the host, leave a temporary tree or a process, or hold the stream in memory.

Run against main before this issue (the driver's patch attacks, as root, locally): git_config_fsmonitor ran its
command on the host; pytest_toml, sitecustomize, pytest_module, report_plugin_module and two_strings resolved
the task with the bug still in place; report_fifo hung the run and left its temporary trees.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from unprivileged import POD_UID, REPO, env, python_for, scratch_for

from agentq.sandbox.treepatch import PatchRefused, RepoPolicy, new_reach, parse_patch

REFUSED = {"git_config_fsmonitor", "git_hook", "symlink_to_tests", "path_out_of_the_tree", "absolute_path",
           "rename_tests_away", "pytest_toml", "sitecustomize", "pytest_module", "report_plugin_module",
           "report_plugin_in_package", "two_strings", "data_file"}
DROPPED = {"pytest_ini_addopts", "conftest_forges"}  # test configuration: left as it was, the run goes on
IN_TREE = {"report_pipe_forgery", "frames", "gc_objects", "module_assignment", "proc_mem", "fifo_and_zero",
           "shadow_modules"}


def _processes_with(needle: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                line = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in line:
            found.append(line)
    return found


@pytest.mark.parametrize("mode", ["local", "server"])
@pytest.mark.parametrize("user", ["root", "unprivileged"])
def test_hostile_repository_patches_resolve_nothing_and_leave_nothing(user, mode):
    if os.geteuid() != 0:
        pytest.skip("switching to the pods' uid (and the root case) needs root")
    uid = POD_UID if user == "unprivileged" else 0
    tmp = scratch_for(uid)
    marker = f"marker-{secrets.token_hex(4)}"
    python = python_for(uid) if uid else [sys.executable]
    try:
        proc = subprocess.run([*python, str(REPO / "tests" / "repo_attack_driver.py"), "--mode", mode,
                               "--marker", marker], user=uid, env=env({"TMPDIR": str(tmp)}), cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["uid"] == uid
        verdicts = result["verdicts"]
        assert verdicts.pop("honest_fix")["resolved"] is True  # so "not resolved" below means the attack failed
        for name, verdict in verdicts.items():
            assert not verdict["resolved"], (name, verdict)
        for name in REFUSED:
            assert verdicts[name]["patch_status"] == "refused", (name, verdicts[name])
        for name in DROPPED:  # the library file of the patch applied, its test configuration not
            assert verdicts[name]["patch_status"] in ("empty", "applied") and verdicts[name]["status"] == "failed", \
                verdicts[name]
        flood = verdicts["stderr_flood"]
        assert flood["status"] == "failed" and flood["stderr_len"] <= 2000, flood
        assert flood["maxrss_mb"] < 400, flood  # 512 MB went through stderr; a tail of it was kept
        assert verdicts["hang"]["status"] == "timeout" and verdicts["hang"]["seconds"] < 60, verdicts["hang"]
        for name in ("report_fifo", "report_zero"):  # the run ends as any failing run does
            assert verdicts[name]["status"] == "failed" and verdicts[name]["seconds"] < 60, verdicts[name]
        if mode == "local":
            for name in IN_TREE:
                run = verdicts[f"in_tree_{name}"]
                assert run["seconds"] < 60 and not run["resolved"], (name, run)
            assert verdicts["in_tree_report_pipe_forgery"]["status"] == "finished"
        # Nothing ran on the host, nothing was left behind.
        assert not list(tmp.glob(f"{marker}*")), list(tmp.glob(f"{marker}*"))
        leftovers = [p.name for p in tmp.iterdir() if p.name not in ("data", "trees", "work")]
        assert not leftovers, leftovers
        assert not list((tmp / "work").iterdir()) if (tmp / "work").exists() else True
        assert not _processes_with("agentq_pytest_boot.py") or all(str(tmp) not in p for p in
                                                                   _processes_with("agentq_pytest_boot.py"))
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


# --- the patch check, without running anything --------------------------------------------------------------

@pytest.mark.parametrize("patch, why", [
    ("--- a/.git/config\n+++ b/.git/config\n@@ -1 +1,2 @@\n [core]\n+\tfsmonitor = x\n", "hidden"),
    ("--- a/pkg/../../x.py\n+++ b/pkg/../../x.py\n@@ -1 +1 @@\n-a\n+b\n", "leaving the tree"),
    ("diff --git a/pkg/a.py b/pkg/b.py\nrename from pkg/a.py\nrename to pkg/b.py\n", "two paths"),
    ("diff --git a/pkg/a.py b/pkg/a.py\nold mode 100644\nnew mode 100755\n", "mode changes"),
    ("diff --git a/pkg/a.py b/pkg/a.py\nnew file mode 120000\n--- /dev/null\n+++ b/pkg/a.py\n@@ -0,0 +1 @@\n+/etc\n",
     "regular files"),
    ("diff --git a/pkg/a.so b/pkg/a.so\nGIT binary patch\nliteral 1\n", "binary"),
    ('--- "a/pkg/\\303\\251.py"\n+++ "b/pkg/\\303\\251.py"\n@@ -1 +1 @@\n-a\n+b\n', "quoted path"),
    ("--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1,3 +1,3 @@\n-a\n+b\n", "line counts"),
    ("--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1 +1 @@\n-a\n+b\n--- a/pkg/a.py\n+++ b/pkg/a.py\n@@ -1 +1 @@\n-b\n+c\n",
     "twice"),
])
def test_patches_that_are_not_plain_edits_are_refused_before_anything_reads_them(patch, why):
    with pytest.raises(PatchRefused, match=why):
        parse_patch(patch)


def test_links_on_the_way_to_a_file_are_refused(tmp_path):
    from agentq.sandbox.treepatch import plan

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("a\n")
    (tmp_path / "pkg" / "t").symlink_to("../tests")
    (tmp_path / "pkg" / "l.py").symlink_to("/etc/passwd")
    for target in ("pkg/t/test_x.py", "pkg/l.py"):
        with pytest.raises(PatchRefused, match="link"):
            plan(tmp_path, parse_patch(f"--- a/{target}\n+++ b/{target}\n@@ -1 +1 @@\n-a\n+b\n"))
    assert (tmp_path / "tests" / "test_x.py").read_text() == "a\n"


def test_a_fix_may_touch_the_librarys_python_source_only(tmp_path):
    for rel in ("src/lib/__init__.py", "src/lib/core.py", "src/single.py", "setup.py", "tests/test_a.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    policy = RepoPolicy.of(tmp_path, ["tests/"])
    assert policy.why_not("src/lib/core.py") is None and policy.why_not("src/lib/new/module.py") is None
    assert policy.why_not("src/single.py") is None
    for path in ("src/new.py", "sitecustomize.py", "src/lib/sitecustomize.py", "setup.py", "src/lib/data.json",
                 "src/lib/x.pth", "pytest.py", "src/lib/agentq_pytest_report.py", "other/mod.py"):
        assert policy.why_not(path), path


def test_a_new_top_level_file_is_admitted_only_as_the_test_the_run_names(tmp_path):
    """An honest search runs the agent's own `reproduce_issue.py::test_x`: that file, new, is what the run needs;
    a name the run does not test, a file the tree has, a nested path or a reserved name stays refused."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("")
    (tmp_path / "setup.py").write_text("")
    runs = ["reproduce_issue.py::test_x", "setup.py::test_y", "lib/sub/new_check.py::test_z", "conftest.py::t"]
    policy = RepoPolicy.of(tmp_path, ["tests/"], runs)
    assert policy.why_not("reproduce_issue.py") is None
    for path in ("other.py", "setup.py", "lib2/new_check.py", "conftest.py"):
        assert policy.why_not(path), path
    assert RepoPolicy.of(tmp_path, ["tests/"]).why_not("reproduce_issue.py")


@pytest.mark.parametrize("added", [
    'import sys\nm = getattr(sys, "mod" + "ules")',
    '__import__("_py" + "test")',
    "import importlib\nimportlib.import_module(name)",
    "import gc\ngc.get_objects()",
    "import sys\nsys._getframe().f_back.f_globals",
    'exec("x" + "=1")',
    "f.__code__ = g.__code__",
    "from operator import attrgetter\nattrgetter(n)(x)",
    'open("/proc/self/mem")',
    "import _pytest.runner",
])
def test_code_reaching_past_the_library_is_refused_only_where_a_fix_adds_it(added):
    before = "def f(x):\n    return x\n"
    assert new_reach(before, before + added + "\n")
    assert not new_reach(before + added + "\n", before.replace("x\n", "x + 1\n") + added + "\n")
    assert not new_reach(before, before.replace("return x", "return getattr(x, 'real')"))
