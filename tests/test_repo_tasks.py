"""Repository tasks: schema v2, the mutation operators, the issue leak check, the repo executor (patches that
edit tests, patches that do not apply, a real fix) and `tasks build --source repos` + `tasks validate`, on a
tiny library made here and on a real sdist from ../shared/data/repos."""

from __future__ import annotations

import ast
import gc
import io
import json
import os
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from agentq.cli import main as cli_main
from agentq.sandbox.repo import RepoExecutor, changed_paths, copy_tree, is_test_path, needed_plugins, passed
from agentq.tasks.mutate import OPERATORS, mutations
from agentq.tasks.repos import issue_text, leaks
from agentq.tasks.schema import RepoTask, Task, TaskFileError, read_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

MINILIB = '''"""A tiny library for the repo-task tests."""


def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def total(xs):
    s = 0
    for x in xs:
        s += x
    return s
'''
MINITESTS = '''from minilib import clamp, total


def test_clamp_low():
    assert clamp(-1, 0, 5) == 0


def test_clamp_high():
    assert clamp(9, 0, 5) == 5


def test_clamp_mid():
    assert clamp(3, 0, 5) == 3


def test_total():
    assert total([1, 2, 3]) == 6
'''


def make_sdist(directory: Path, name: str, files: dict[str, str], version: str = "0.1") -> Path:
    """A source distribution NAME-VERSION.tar.gz, as PyPI serves one: one top directory holding PKG-INFO and
    `files`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}.tar.gz"
    files = {"PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", **files}
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


BUG = """diff --git a/minilib/__init__.py b/minilib/__init__.py
--- a/minilib/__init__.py
+++ b/minilib/__init__.py
@@ -4,7 +4,7 @@


 def clamp(x, lo, hi):
-    if x < lo:
+    if x > lo:
         return lo
     if x > hi:
         return hi
"""
FIX = BUG.replace("-    if x < lo:\n+    if x > lo:", "-    if x > lo:\n+    if x < lo:")
EDIT_TESTS = """diff --git a/tests/test_minilib.py b/tests/test_minilib.py
--- a/tests/test_minilib.py
+++ b/tests/test_minilib.py
@@ -1,8 +1,8 @@
 from minilib import clamp, total


 def test_clamp_low():
-    assert clamp(-1, 0, 5) == 0
+    assert True


 def test_clamp_high():
diff --git a/tests/conftest.py b/tests/conftest.py
new file mode 100644
--- /dev/null
+++ b/tests/conftest.py
@@ -0,0 +1 @@
+collect_ignore = ["test_minilib.py"]
"""
F2P = ["tests/test_minilib.py::test_clamp_high", "tests/test_minilib.py::test_clamp_low",
       "tests/test_minilib.py::test_clamp_mid"]
P2P = ["tests/test_minilib.py::test_total"]


def minilib_data(tmp_path_factory) -> Path:
    """A data folder whose repos/ holds the minilib sdist (what `dataset.repoData` and --repo-data-dir name)."""
    root = tmp_path_factory.mktemp("data")
    make_sdist(root / "repos", "minilib", {"minilib/__init__.py": MINILIB, "tests/test_minilib.py": MINITESTS})
    return root


@pytest.fixture(scope="module")
def minilib(tmp_path_factory) -> Path:
    return minilib_data(tmp_path_factory)


@pytest.fixture(scope="module")
def executor(tmp_path_factory) -> RepoExecutor:
    return RepoExecutor(tmp_path_factory.mktemp("trees"))


# --- schema v2 -------------------------------------------------------------------------------------------

def repo_record(**fields) -> dict:
    base = {"task_id": "minilib-0.1__cmp_swap__minilib/__init__.py:5", "kind": "repo", "group": "minilib",
            "repo": {"sdist": "minilib-0.1.tar.gz", "name": "minilib", "version": "0.1"},
            "bug_patch": BUG, "fail_to_pass": F2P, "pass_to_pass": P2P, "issue": "tests fail",
            "test_target": ["tests/"], "metadata": {"operator": "cmp_swap", "file": "minilib/__init__.py"}}
    return {**base, **fields}


def test_schema_v2_reads_function_and_repo_tasks_and_v1_lines_unchanged(tmp_path):
    function = {"id": "f1", "source": "s", "group": "g", "description": "d", "buggy_code": "x = 1\n",
                "entry_point": "f", "tests": "def test_a():\n    pass\n"}
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(function) + "\n" + json.dumps(repo_record()) + "\n")
    tasks = read_tasks(path, kinds=("function", "repo"))
    assert isinstance(tasks[0], Task) and isinstance(tasks[1], RepoTask)
    assert tasks[1].id == tasks[1].task_id and tasks[1].start_candidate() == ""
    assert "kind" not in tasks[0].model_dump(exclude_none=True)  # v1 lines are written back as v1
    with pytest.raises(TaskFileError, match="line 2: a repo task, but this command takes only function tasks"):
        read_tasks(path)


@pytest.mark.parametrize(("change", "message"), [
    ({"fail_to_pass": []}, "field fail_to_pass"),
    ({"repo": {"name": "x"}}, "expected sdist, name and version"),
    ({"kind": "module"}, "field kind: expected 'function' or 'repo'"),
])
def test_schema_v2_bad_repo_lines_name_the_field(tmp_path, change, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(repo_record(**change)) + "\n")
    with pytest.raises(TaskFileError, match=message):
        read_tasks(path, kinds=("function", "repo"))


# --- mutation operators ------------------------------------------------------------------------------------

SAMPLE = '''def f(items, limit):
    count = 0
    seen = []
    for item in items:
        if item in seen:
            continue
        if count >= limit and not item:
            break
        count += 1
        seen.append(item[1:])
    return count * 2 if seen else None
'''


def by_operator(source: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for m in mutations(source):
        new = m.apply(source)
        ast.parse(new)  # every mutant is still Python
        out.setdefault(m.operator, []).append(("".join(m.old_lines).strip(), "".join(m.new_lines).strip()))
    return out


def test_every_operator_makes_a_minimal_splice():
    found = by_operator(SAMPLE)
    assert set(found) == set(OPERATORS)
    assert ("count += 1", "count -= 1") in found["op_swap"]
    assert ("if count >= limit and not item:", "if count > limit and not item:") in found["cmp_swap"]
    assert ("if item in seen:", "if item not in seen:") in found["cmp_swap"]
    assert ("if count >= limit and not item:", "if count >= limit or not item:") in found["bool_swap"]
    assert ("if count >= limit and not item:", "if not item:") in found["removed_condition"]
    assert ("if count >= limit and not item:", "if count >= limit:") in found["removed_condition"]
    assert ("return count * 2 if seen else None", "return count * 2 if not seen else None") in found["negated_test"]
    assert ("seen.append(item[1:])", "seen.append(item[2:])") in found["off_by_one"]
    assert ("seen.append(item[1:])", "seen.append(item[0:])") in found["off_by_one"]


def test_removed_guard_deletes_the_if_statement():
    guards = [m for m in mutations(SAMPLE) if m.operator == "removed_guard"]
    assert {"".join(m.old_lines).split()[1] for m in guards} == {"item", "count"}
    for m in guards:
        assert m.new_lines == ()
        assert "if False" not in m.apply(SAMPLE) and "continue" not in m.apply(SAMPLE) or "break" not in m.apply(
            SAMPLE)


def test_wrong_variable_is_bound_earlier_in_the_same_function():
    source = "def g(a, b):\n    c = a + 1\n    return c * b\n\n\ndef h(z):\n    return z\n"
    wrong = [m for m in mutations(source) if m.operator == "wrong_variable"]
    assert wrong, "expected wrong-variable mutants"
    for m in wrong:
        line = m.new_lines[0]
        assert "z" not in line  # h's parameter is another scope
        new_names = {n.id for n in ast.walk(ast.parse(line.strip()))
                     if isinstance(n, ast.Name)} - {"return"}
        assert new_names <= {"a", "b", "c"}
    assert not [m for m in mutations(source) if m.operator == "wrong_variable" and m.function == "h"]


def test_mutations_outside_function_bodies_are_not_made():
    assert mutations("X = 1 + 2\nif X > 2:\n    Y = True\n") == []


# --- issue text and its leak check -------------------------------------------------------------------------

def test_leak_check_refuses_changed_lines_paths_and_failing_tests():
    changed = ["    if x < lo:\n", "    if x > lo:\n"]
    assert leaks("AssertionError: if x > lo: failed", changed, ["minilib/__init__.py"]) == ["if x > lo:"]
    assert leaks("see minilib/__init__.py line 5", changed, ["minilib/__init__.py"]) == ["minilib/__init__.py"]
    assert leaks("test_clamp_low() failed", [], [], [F2P[1]]) == ["test_clamp_low"]
    assert leaks("test_clamp_lower is another name", [], [], [F2P[1]]) == []
    # an item with no name of its own (pygments' example files: `path::`) leaves nothing to match
    assert leaks('the tokens differ ("aspx" lexer), see: the golden file', [], [], ["tests/ex/a.aspx::"]) == []


TRACEBACKS = {
    F2P[1]: [{"path": "tests/test_minilib.py", "lineno": 5, "lines": [
        "    def test_clamp_low():", ">       assert clamp(-1, 0, 5) == 0", "E       assert 5 == 0",
        "E        +  where 5 = clamp(-1, 0, 5)"]}],
    F2P[0]: [{"path": "tests/test_minilib.py", "lineno": 9, "lines": [
        "    def test_clamp_high():", ">       assert clamp(9, 0, 5) == 5"]},
        {"path": "minilib/__init__.py", "lineno": 5, "lines": [
            "    def clamp(x, lo, hi):", ">       if x > lo:", "E       TypeError: boom"]}],
}


def test_issue_text_shows_the_check_and_its_values_never_the_tests_or_the_bug():
    changed = ["    if x < lo:\n", "    if x > lo:\n"]
    failing = {F2P[1]: "assert 5 == 0", F2P[0]: "TypeError: boom"}
    text = issue_text("minilib", "0.1", failing, TRACEBACKS, changed, ["minilib/__init__.py"])
    assert text is not None
    assert "assert clamp(-1, 0, 5) == 0" in text and "where 5 = clamp(-1, 0, 5)" in text  # the check, its values
    assert "TypeError: boom" in text and "clamp(9, 0, 5)" in text  # the exception and the call that raised it
    assert not leaks(text, changed, ["minilib/__init__.py"], list(failing))
    assert "test_clamp" not in text and "if x > lo" not in text and "minilib/__init__.py" not in text
    # a failure whose only report would leak the changed line is no task
    assert issue_text("minilib", "0.1", {F2P[2]: "if x > lo: failed"}, {}, changed, []) is None


# --- the repository executor -------------------------------------------------------------------------------

def test_test_paths_and_patch_paths():
    assert is_test_path("tests/test_minilib.py", ["tests/"]) and is_test_path("pkg/conftest.py", ["tests/"])
    assert is_test_path("pyproject.toml", ["tests/"]) and not is_test_path("minilib/__init__.py", ["tests/"])
    assert changed_paths(EDIT_TESTS) == ["tests/test_minilib.py", "tests/conftest.py"]


def test_a_suite_gets_the_plugins_pytest_reads_it_using(tmp_path):
    """pytest-cov is loaded for `--cov` in pytest's own section, not for a tox command, a dependency list or
    "pragma: no cover" (each cost seconds a run); hypothesis for a test module that imports it."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def f():  # pragma: no cover\n    pass\n")
    (tmp_path / "tox.ini").write_text("[testenv]\ncommands = pytest --cov=pkg\n[pytest]\naddopts = -ra\n")
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["pytest-cov"]\n')
    assert needed_plugins(tmp_path) == ["pytest_timeout"]
    uses = tmp_path / "uses"
    (uses / "tests").mkdir(parents=True)
    (uses / "tests" / "test_b.py").write_text("from hypothesis import given\n")
    (uses / "setup.cfg").write_text("[tool:pytest]\naddopts = --cov=pkg\n[flake8]\nmax-line-length = 99\n")
    assert set(needed_plugins(uses)) == {"pytest_timeout", "pytest_cov", "hypothesispytest"}


def test_a_fix_resolves_and_the_buggy_tree_fails(minilib, executor):
    pristine = executor.pristine(minilib / "repos" / "minilib-0.1.tar.gz")
    fixed = executor.run(pristine, FIX, F2P, P2P, ["tests/"], base_patch=BUG)
    assert fixed.resolved and fixed.reward == 1.0 and fixed.patch_status == "applied", fixed.message
    buggy = executor.run(pristine, "", F2P, P2P, ["tests/"], base_patch=BUG)
    assert (buggy.f2p_passed, buggy.p2p_passed, buggy.patch_status) == (0, 1, "empty")
    assert not buggy.resolved and buggy.reward == 0.0
    assert "test_clamp_high" in buggy.message and "assert" in buggy.message
    assert not (pristine / ".coverage").exists() and not executor.run(pristine, "", F2P, P2P, ["tests/"]).tests[
        0].message  # the pristine tree passes and was never written to


def test_a_patch_that_edits_the_tests_cannot_pass(minilib, executor):
    pristine = executor.pristine(minilib / "repos" / "minilib-0.1.tar.gz")
    verdict = executor.run(pristine, EDIT_TESTS, F2P, P2P, ["tests/"], base_patch=BUG)
    assert sorted(verdict.restored) == ["tests/conftest.py", "tests/test_minilib.py"]
    assert verdict.f2p_passed == 0 and not verdict.resolved


def test_a_patch_that_does_not_apply_is_its_own_verdict(minilib, executor):
    pristine = executor.pristine(minilib / "repos" / "minilib-0.1.tar.gz")
    stale = FIX.replace("if x > lo:", "if x >= lo:")
    verdict = executor.run(pristine, stale, F2P, P2P, ["tests/"], base_patch=BUG)
    assert verdict.patch_status == "failed" and verdict.status == "error" and verdict.reward == 0.0
    assert "does not apply" in verdict.message and not verdict.tests


def test_a_patch_reaching_for_pytest_is_refused(minilib, executor):
    pristine = executor.pristine(minilib / "repos" / "minilib-0.1.tar.gz")
    forge = FIX.replace("+    if x < lo:", "+    if x < lo:\n+        import _pytest")
    verdict = executor.run(pristine, forge, F2P, P2P, ["tests/"], base_patch=BUG)
    assert verdict.patch_status == "refused" and verdict.reward == 0.0


def test_a_warm_bytecode_cache_never_serves_a_changed_module_and_no_run_writes_it(minilib, executor, tmp_path,
                                                                                   monkeypatch):
    """The build's bytecode cache (warm_pycache): filled once, read by every run. A mutant of the same size with
    the original's mtime (what would fool a timestamp pyc) still runs as mutated; a run cannot write the cache.
    The cache's path may be relative (the build's default: beside --out)."""
    sandbox = executor.sandbox
    monkeypatch.chdir(tmp_path)
    work, cache = tmp_path / "work", Path("pyc")
    work.mkdir()
    cache.mkdir()
    copy_tree(executor.pristine(minilib / "repos" / "minilib-0.1.tar.gz"), work)
    sandbox.warm_pycache(work, cache, ["minilib/__init__.py"], ["tests/"])
    names = {p.name for p in cache.rglob("*.pyc")}
    assert {n.split(".")[0] for n in names} >= {"__init__", "test_minilib"}, names
    assert any("pytest" in n for n in names)  # pytest's rewritten test module, too
    assert all(passed(o) for o, _ in sandbox.run(work, F2P + P2P, pycache=cache).outcomes.values())
    lib = work / "minilib" / "__init__.py"
    before = lib.stat()
    lib.write_text(MINILIB.replace("if x < lo", "if x > lo"))
    os.utime(lib, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert lib.stat().st_size == before.st_size
    report = sandbox.run(work, F2P + P2P, pycache=cache)
    assert {n for n, (o, _) in report.outcomes.items() if not passed(o)} == set(F2P)
    if sandbox.bwrap is not None:
        (work / "tests" / "test_write.py").write_text(
            "import os, pathlib\n\ndef test_write():\n"
            "    pathlib.Path(os.environ['PYTHONPYCACHEPREFIX'], 'planted.pyc').write_text('x')\n")
        report = sandbox.run(work, ["tests/test_write.py"], pycache=cache)
        assert report.outcomes["tests/test_write.py::test_write"][0] == "failed"
        assert not (cache / "planted.pyc").exists()


# --- build + validate ----------------------------------------------------------------------------------------

def test_build_keeps_caught_mutants_rejects_a_library_without_tests_and_validates(minilib, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(minilib, data)
    make_sdist(data / "repos", "notests", {"notests/__init__.py": "def f():\n    return 1\n"})
    out = tmp_path / "repos.jsonl"
    argv = ["tasks", "build", "--source", "repos", "--data-dir", str(data), "--out", str(out),
            "--per-library", "3", "--holdout", "minilib", "--json"]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rejected_libraries"] == [{"library": "notests-0.1", "reason": "no pytest suite found (no "
                                              "tests/, test/ or testing/ folder, no test folder inside a package, "
                                              "no module matching test_*.py *_test.py)"}]
    tasks = read_tasks(out, kinds=("repo",))
    assert tasks and summary["tasks"] == len(tasks) and summary["test"] == len(tasks)
    for task in tasks:
        assert len(task.fail_to_pass) >= 1 and not set(task.fail_to_pass) & set(task.pass_to_pass)
        assert "minilib/__init__.py" not in task.issue and task.metadata["file"] == "minilib/__init__.py"
        assert changed_paths(task.bug_patch) == ["minilib/__init__.py"]
    # resumable: a second build runs nothing new and writes the same tasks
    progress = (tmp_path / "repos.progress.jsonl").read_text()
    assert cli_main(argv) == 0
    assert (tmp_path / "repos.progress.jsonl").read_text() == progress
    assert read_tasks(out, kinds=("repo",)) == tasks
    capsys.readouterr()
    assert cli_main(["tasks", "validate", str(out), "--data-dir", str(data), "--cache", str(tmp_path / "c"),
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["valid"] == len(tasks)


def test_an_interrupted_build_drops_its_queued_mutants_and_resumes(minilib, tmp_path, capsys, monkeypatch):
    """SIGTERM (a pod of the fan-out deleted; Ctrl-C takes the same way out) while mutants are queued: the build
    stops after the one running, instead of first running every queued one; the same command then runs what is
    left. SIGTERM because the command installs its handler itself: SIGINT's is whatever earlier tests left."""
    from agentq.tasks import repos

    started, real, ended = [], repos._run_once, threading.Event()

    def interrupted_at_first(*args):  # noqa: ANN002, ANN202
        started.append(args[2])
        if len(started) == 1:
            try:
                time.sleep(0.5)  # the main thread queues the other mutants and waits for them
                os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread
                time.sleep(0.5)
                raise RuntimeError("this mutant was interrupted")
            finally:
                ended.set()
        return real(*args)

    monkeypatch.setattr(repos, "_run_once", interrupted_at_first)
    out = tmp_path / "repos.jsonl"
    argv = ["tasks", "build", "--source", "repos", "--data-dir", str(minilib), "--out", str(out),
            "--per-library", "4", "--combine", "0", "--jobs", "1", "--json"]
    assert cli_main(argv) == 143
    assert "terminated; re-run the same command to resume" in capsys.readouterr().err
    assert len(started) == 1 and not out.exists()
    # In a process the progress file's lock goes with it; here it goes when the running mutant's thread ends.
    assert ended.wait(10)
    time.sleep(0.1)
    gc.collect()
    assert cli_main(argv) == 0
    assert len(started) == 5 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mutants_run"] == 4


@pytest.mark.skipif(not (DATA / "repos" / "cachetools-8.0.0.tar.gz").exists(), reason="needs ../shared/data/repos")
def test_build_and_validate_a_real_library_from_shared_data(tmp_path, capsys):
    """The fresh-clone check: a small corpus from a real sdist (sha256 checked), then validated."""
    data = tmp_path / "data"
    (data / "repos").mkdir(parents=True)
    for name in ("cachetools-8.0.0.tar.gz", "SHA256SUMS"):
        (data / "repos" / name).symlink_to(DATA / "repos" / name)
    out = tmp_path / "repos.jsonl"
    assert cli_main(["tasks", "build", "--source", "repos", "--data-dir", str(data), "--out", str(out),
                     "--per-library", "6", "--per-operator", "1", "--combine", "0", "--jobs", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["libraries"]["cachetools-8.0.0"]["stable_tests"] > 300
    tasks = read_tasks(out, kinds=("repo",))
    assert tasks, summary
    assert cli_main(["tasks", "validate", str(out), "--data-dir", str(data), "--cache", str(tmp_path / "c"),
                     "--json"]) == 0


def test_the_http_sandbox_serves_repo_runs(minilib, tmp_path):
    import threading

    from agentq.sandbox import LocalExecutor, RemoteExecutor, SandboxUnavailable
    from agentq.sandbox.repo import SdistStore
    from agentq.sandbox.server import SandboxServer

    task = RepoTask.model_validate(repo_record()).model_dump(exclude_none=True)
    with LocalExecutor(workers=1) as executor:
        store = SdistStore(minilib / "repos", RepoExecutor(tmp_path / "trees"))
        servers = [SandboxServer(("127.0.0.1", 0), executor, repos=store),
                   SandboxServer(("127.0.0.1", 0), executor)]
        for httpd in servers:
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{servers[0].server_address[1]}"
            fixed, stale = RemoteExecutor(url).run_task(task, [FIX, FIX.replace("if x > lo:", "if x >= lo:")])
            assert fixed.resolved and fixed.reward == 1.0
            assert stale.patch_status == "failed" and not stale.resolved
            with pytest.raises(SandboxUnavailable, match="does not serve repository runs"):
                RemoteExecutor(f"http://127.0.0.1:{servers[1].server_address[1]}").run_task(task, [FIX])
        finally:
            for httpd in servers:
                httpd.shutdown()
                httpd.server_close()


HOSTILE = '''
import os
import socket
import subprocess

subprocess.Popen(["sleep", "317"], start_new_session=True)
for address in (("1.1.1.1", 53), ("127.0.0.1", HOST_PORT)):  # the internet; a server on the host's loopback
    try:
        socket.create_connection(address, timeout=2)
        raise SystemError(f"reached {address}")
    except OSError:
        pass
for path in ("/usr/sandbox-escape", "/etc/sandbox-escape", os.path.expanduser("~/../sandbox-escape")):
    try:
        open(path, "w").close()
        raise SystemError(f"wrote {path}")
    except OSError:
        pass
'''


def test_a_hostile_patch_reaches_no_network_writes_nothing_outside_and_leaves_no_process(minilib, executor):
    import socket

    pristine = executor.pristine(minilib / "repos" / "minilib-0.1.tar.gz")
    host = socket.create_server(("127.0.0.1", 0))
    hostile = HOSTILE.replace("HOST_PORT", str(host.getsockname()[1]))
    header, rest = FIX.split("@@ -4,7 +4,7 @@\n", 1)
    added = "".join(f"+{line}\n" for line in hostile.splitlines())
    patch = f"{header}@@ -1,1 +1,{1 + len(hostile.splitlines())} @@\n \"\"\"A tiny library for the repo-task " \
            f"tests.\"\"\"\n{added}@@ -4,7 +4,7 @@\n{rest}"
    with host:
        verdict = executor.run(pristine, patch, F2P, P2P, ["tests/"], base_patch=BUG)
    assert verdict.patch_status != "failed", verdict.message
    assert verdict.resolved, verdict.message  # every escape attempt raised OSError inside the sandbox
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == "sleep 317"]
    assert not leftovers
    assert not Path("/usr/sandbox-escape").exists() and not Path("/etc/sandbox-escape").exists()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_a_corrupt_archive_is_rejected_with_one_line(tmp_path, capsys):
    (tmp_path / "repos").mkdir()
    (tmp_path / "repos" / "broken-1.0.tar.gz").write_bytes(b"not a tar archive")
    out = tmp_path / "repos.jsonl"
    assert cli_main(["tasks", "build", "--source", "repos", "--data-dir", str(tmp_path), "--out", str(out),
                     "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"] == 0
    assert summary["rejected_libraries"] == [{"library": "broken-1.0", "reason": "broken-1.0.tar.gz: not a readable "
                                              "source archive (expected a .tar.gz)"}]
