"""Repository task builds on the layouts libraries ship in, and the checks every kept task passes, on small
libraries made here: a single top-level module, a suite declared through pytest's `testpaths` and
`python_files`, a `src/` layout; a pass-to-pass test that reaches the bug through a cached value, and an
order-dependent test that fails on the original tree inside the task's subset."""

from __future__ import annotations

import argparse
import json

import pytest

from agentq.cli import main as cli_main
from agentq.policy.base import BatchPolicy, Request, Sample
from agentq.sandbox.repo import RepoSandbox
from agentq.tasks.layout import LibraryRejected, detect
from agentq.tasks.mutate import mutations
from agentq.tasks.repos import LibraryBuild
from agentq.tasks.schema import read_tasks
from tests.test_repo_tasks import MINILIB, MINITESTS, make_sdist

CODE = MINILIB


def suite_for(module: str) -> str:
    return MINITESTS.replace("from minilib import", f"from {module} import")


LAYOUTS = {
    # one module at the top of the tree, tests beside it in tests/
    "onemodule": {"onemodule.py": CODE, "tests/test_onemodule.py": suite_for("onemodule"),
                  "setup.py": "from setuptools import setup\nsetup(name='onemodule', py_modules=['onemodule'])\n"},
    # the suite is found only through pytest's configuration: checks/check_*.py; every warning an error (click)
    "declared": {"declared/__init__.py": CODE, "checks/check_declared.py": suite_for("declared"),
                 "pyproject.toml": '[tool.pytest.ini_options]\ntestpaths = ["checks"]\n'
                                   'python_files = ["check_*.py"]\nfilterwarnings = ["error"]\n'},
    # src layout
    "srclayout": {"src/srclayout/__init__.py": "from srclayout.core import clamp, total\n",
                  "src/srclayout/core.py": CODE, "tests/test_core.py": suite_for("srclayout")},
}


def test_layouts_are_read_as_pytest_reads_them(tmp_path):
    for name, files in LAYOUTS.items():
        for rel, text in files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
    one = detect(tmp_path / "onemodule")
    assert one.test_target == ("tests/",) and one.source_files(tmp_path / "onemodule") == ["onemodule.py"]
    declared = detect(tmp_path / "declared")
    assert declared.config == "pyproject.toml" and declared.test_target == ("checks/",)
    assert declared.python_files == ("check_*.py",)
    assert declared.source_files(tmp_path / "declared") == ["declared/__init__.py"]
    assert declared.is_test_file("checks/check_declared.py")
    src = detect(tmp_path / "srclayout")
    assert src.roots == ("src", ".") and src.source_files(tmp_path / "srclayout") == [
        "src/srclayout/__init__.py", "src/srclayout/core.py"]
    (tmp_path / "none" / "none.py").parent.mkdir()
    (tmp_path / "none" / "none.py").write_text(CODE)
    with pytest.raises(LibraryRejected, match="no module matching test_"):
        detect(tmp_path / "none")


def test_a_package_named_as_a_test_path_keeps_its_code(tmp_path):
    """`testpaths = pkg` (toolz does this): the package's test folders are the suite, its modules the code."""
    files = {"pkg/__init__.py": CODE, "pkg/tests/test_pkg.py": suite_for("pkg"),
             "setup.cfg": "[tool:pytest]\ntestpaths = pkg\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    layout = detect(tmp_path)
    assert layout.test_target == ("pkg/tests/",) and layout.source_files(tmp_path) == ["pkg/__init__.py"]


def test_a_library_the_test_environment_also_has_is_tested_from_the_tree(tmp_path):
    """pytest imports pygments before any test runs; pygments' own tests must still import the tree's copy, or
    every mutant of it survives. pluggy stays the trusted one: the tree cannot shadow pytest's machinery."""
    files = {"pygments/__init__.py": "WHERE = 'tree'\n", "pluggy/__init__.py": "WHERE = 'tree'\n",
             "tests/test_where.py": "import pluggy\nimport pygments\n\n\ndef test_tree_copy():\n"
                                    "    assert pygments.WHERE == 'tree'\n\n\ndef test_trusted_pluggy():\n"
                                    "    assert not hasattr(pluggy, 'WHERE') and pluggy.HookimplMarker\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    report = RepoSandbox().run(tmp_path, ["tests/test_where.py"])
    assert report.status == "finished" and report.outcomes == {
        "tests/test_where.py::test_tree_copy": ("passed", ""),
        "tests/test_where.py::test_trusted_pluggy": ("passed", "")}


def test_every_layout_yields_validated_tasks(tmp_path, capsys):
    data = tmp_path / "data"
    for name, files in LAYOUTS.items():
        make_sdist(data / "repos", name, files)
    out = tmp_path / "repos.jsonl"
    assert cli_main(["tasks", "build", "--source", "repos", "--data-dir", str(data), "--out", str(out),
                     "--per-library", "3", "--combine", "0", "--jobs", "2", "--test-share", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rejected_libraries"] == []
    tasks = read_tasks(out, kinds=("repo",))
    assert {t.group for t in tasks} == set(LAYOUTS), summary["libraries"]
    by_group = {t.group: t for t in tasks}
    assert by_group["declared"].test_target == ["checks/"]
    assert by_group["declared"].fail_to_pass[0].startswith("checks/check_declared.py::")
    assert by_group["srclayout"].metadata["file"] == "src/srclayout/core.py"
    assert by_group["onemodule"].metadata["file"] == "onemodule.py"
    capsys.readouterr()
    assert cli_main(["tasks", "validate", str(out), "--data-dir", str(data), "--cache", str(tmp_path / "c"),
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["valid"] == len(tasks)


CHECKLIB = {
    "checklib/__init__.py": "",
    # a memo: the second call of square(3) reads the cache and never runs the line that fills it
    "checklib/memo.py": "_memo = {}\n\n\ndef square(x):\n    if x not in _memo:\n        _memo[x] = x * x\n"
                        "    return _memo[x]\n\n\ndef cube(x):\n    return x * x * x\n",
    "checklib/scale.py": "SCALE = 1\n\n\ndef scaled(x):\n    return x * SCALE\n\n\ndef one():\n    return 1\n",
    "tests/test_memo.py": "from checklib.memo import cube, square\n\n\ndef test_square():\n    assert square(3) == 9\n"
                          "\n\ndef test_square_cached():\n    assert square(3) == 9\n\n\ndef test_cube():\n"
                          "    assert cube(2) == 8\n",
    # test_scaled passes only after test_a_setup ran (it sets SCALE without running a line of scale.py)
    "tests/test_scale.py": "from checklib import scale\n\n\ndef test_a_setup():\n    scale.SCALE = 3\n\n\n"
                           "def test_scaled():\n    assert scale.scaled(2) == 6\n\n\ndef test_one():\n"
                           "    assert scale.one() == 1\n",
}


@pytest.fixture(scope="module")
def checklib(tmp_path_factory) -> LibraryBuild:
    root = tmp_path_factory.mktemp("checklib")
    sdist = make_sdist(root / "repos", "checklib", CHECKLIB)
    args = argparse.Namespace(seed=0, per_operator=100, per_library=100, wrong_variable_share=0.2, max_failing=20,
                              max_p2p=200, run_timeout=120.0, test_timeout=10)
    lib = LibraryBuild(sdist, "0" * 64, RepoSandbox(), root / "trees", args)
    yield lib
    lib.close()


def _site(source: str, operator: str, old: str, new: str):
    return next(m for m in mutations(source) if m.operator == operator and old in m.old_lines[0]
                and new in m.new_lines[0])


def test_a_pass_to_pass_test_that_reaches_the_bug_through_a_cache_drops_the_mutant(checklib):
    base = checklib.baseline()
    assert "tests/test_memo.py::test_square_cached" in base.stable
    source = (checklib.pristine / "checklib/memo.py").read_text()
    bug = _site(source, "op_swap", "_memo[x] = x * x", "_memo[x] = x / x")
    # the cached test never runs the mutated line, so coverage alone would keep it as a pass-to-pass test
    assert "tests/test_memo.py::test_square_cached" not in checklib.covering(base, "checklib/memo.py",
                                                                            range(bug.start, bug.end + 1))
    outcome = checklib.run_mutant(base, [("checklib/memo.py", bug)], "op_swap")
    assert outcome.result == "p2p_fails_on_mutant", outcome
    kept = checklib.run_mutant(base, [("checklib/memo.py", _site(source, "op_swap", "x * x * x", "x / x * x"))],
                               "op_swap")
    assert kept.result == "kept" and kept.task["fail_to_pass"] == ["tests/test_memo.py::test_cube"], kept


def test_a_task_whose_subset_fails_on_the_original_tree_is_dropped(checklib):
    base = checklib.baseline()
    assert "tests/test_scale.py::test_scaled" in base.stable  # in the whole suite, after test_a_setup
    source = (checklib.pristine / "checklib/scale.py").read_text()
    outcome = checklib.run_mutant(base, [("checklib/scale.py", _site(source, "op_swap", "x * SCALE", "x / SCALE"))],
                                  "op_swap")
    # it fails on the mutant twice and keeps its P2P tests, but alone with them on the original tree it fails too
    assert outcome.result == "subset_fails_on_original", outcome
    assert set(outcome.phases) >= {"detect", "recheck", "original"}


def test_mutants_caught_by_the_same_tests_share_one_run_on_the_original_tree(checklib, monkeypatch):
    """Each kept mutant still gets all three checks, but the original tree (which never changes) runs a given
    subset once; the runs read the library's warm bytecode cache."""
    base = checklib.baseline()
    checklib.warm(base)
    assert any(checklib.pycache.rglob("memo.*.pyc"))
    source = (checklib.pristine / "checklib/memo.py").read_text()
    runs: list[list[str]] = []
    monkeypatch.setattr(checklib, "_original", {})  # what earlier tests on this library ran on the original tree
    real = checklib._run
    monkeypatch.setattr(checklib, "_run", lambda b, tree, tests, maxfail=None: runs.append(list(tests))
                        or real(b, tree, tests, maxfail))
    outcomes = [checklib.run_mutant(base, [("checklib/memo.py", m)], m.operator)
                for m in mutations(source) if m.function == "cube"]
    kept = [o for o in outcomes if o.result == "kept"]
    assert len(kept) >= 2, outcomes
    subsets = {tuple(o.task["fail_to_pass"] + o.task["pass_to_pass"]) for o in kept}
    assert len(subsets) == 1 and all(set(o.phases) >= {"detect", "recheck", "original"} for o in kept)
    # per kept mutant one run of the subset on the mutant, plus one on the original tree for all of them
    assert sum(tuple(r) in subsets for r in runs) == len(kept) + 1


def test_a_sandbox_that_cannot_run_pytest_stops_the_build_before_any_mutant(checklib, monkeypatch, tmp_path):
    from agentq.sandbox.repo import RunReport

    broken = RunReport({}, None, 0, "crashed", 0.1, "bwrap: Can't find source path x: No such file or directory", [])
    monkeypatch.setattr(checklib, "pycache", tmp_path / "fresh.pycache")
    monkeypatch.setattr(checklib.sandbox, "warm_pycache", lambda *a: broken)
    with pytest.raises(SystemExit, match="checklib-0.1: pytest did not finish .* bwrap: Can't find source path"):
        checklib.warm(checklib.baseline())
    assert not (tmp_path / "fresh.pycache").exists()


class Writer(BatchPolicy):
    """A scripted model for the LM modes: a fixed rewrite for rewrite prompts, a fixed report for issue prompts."""

    def __init__(self, rewrite: str, issue: str) -> None:
        self.rewrite, self.issue, self.purposes = rewrite, issue, []

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        self.purposes += [r.prompt.purpose for r in requests]
        return [[Sample(text=self.rewrite if r.prompt.purpose == "rewrite" else self.issue)] for r in requests]


REWRITTEN = "```python\ndef clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return lo\n" \
            "    return x\n```"


@pytest.mark.parametrize(("issue", "by"), [
    ("clamp(9, 0, 5) returns 0 instead of 5 since the last release.", "model"),
    ("test_clamp_high fails: clamp(9, 0, 5) returns 0.", "template"),  # names a failing test: falls back
])
def test_a_model_rewrites_a_function_with_a_bug_and_writes_the_issue(tmp_path, issue, by):
    """SWE-smith's LM modes through the policy interface: the rewrite is checked like any mutant; the model's
    issue is kept only when it passes the leak check."""
    sdist = make_sdist(tmp_path / "repos", "onemodule", LAYOUTS["onemodule"])
    writer = Writer(REWRITTEN, issue)
    args = argparse.Namespace(seed=0, per_operator=100, per_library=100, wrong_variable_share=0.2, max_failing=20,
                              max_p2p=200, run_timeout=120.0, test_timeout=10, rewrite_policy=writer, rewrites=2,
                              issue_policy=writer)
    lib = LibraryBuild(sdist, "0" * 64, RepoSandbox(), tmp_path / "trees", args)
    try:
        base = lib.baseline()
        [(rel, bug)] = lib.model_rewrites(base)
        assert (rel, bug.operator, bug.function) == ("onemodule.py", "lm_rewrite", "clamp")
        outcome = lib.run_mutant(base, [(rel, bug)], bug.operator)
    finally:
        lib.close()
    assert outcome.result == "kept", outcome
    assert outcome.task["fail_to_pass"] == ["tests/test_onemodule.py::test_clamp_high"]
    assert outcome.task["metadata"]["issue_by"] == by and (outcome.task["issue"] == issue) == (by == "model")
    assert writer.purposes == ["rewrite", "rewrite", "issue"]  # total's answer rewrote clamp: dropped


def test_a_rewrite_that_renames_or_breaks_the_function_is_no_mutant():
    from agentq.tasks.rewrite import functions, to_mutation

    [node] = [n for n in functions(CODE) if n.name == "clamp"]
    assert to_mutation(CODE, node, REWRITTEN) is not None
    assert to_mutation(CODE, node, REWRITTEN.replace("def clamp", "def clip")) is None
    assert to_mutation(CODE, node, "```python\ndef clamp(x, lo, hi:\n    pass\n```") is None
    unchanged = "def clamp" + CODE.split("def clamp", 1)[1].split("\n\n\n")[0]
    assert to_mutation(CODE, node, f"```python\n{unchanged}\n```") is None
