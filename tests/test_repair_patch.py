"""Model answers -> diffs that git applies; malformed answers and edits that do not fit are told apart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentq.repair.patch import ApplyError, ParseError, answer_to_patch, parse_edits

CALC = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n"


@pytest.fixture
def tree(tmp_path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "calc.py").write_text(CALC)
    (tmp_path / "pkg" / "tail.py").write_text("X = 1")  # no newline at the end
    return tmp_path


def applied(tree: Path, diff: str, tmp_path_factory) -> dict[str, str]:
    """The tree's files after `git apply` of the diff on a copy: the diff must be well-formed git input."""
    copy = tmp_path_factory.mktemp("copy")
    subprocess.run(["cp", "-a", f"{tree}/.", str(copy)], check=True)
    subprocess.run(["git", "apply", "-"], input=diff, text=True, cwd=copy, check=True, capture_output=True)
    return {p.relative_to(copy).as_posix(): p.read_text() for p in copy.rglob("*") if p.is_file()}


def block(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def test_search_replace_blocks_become_a_diff_git_applies(tree, tmp_path_factory):
    answer = ("The bug is the operator.\n```python\n" + block("pkg/calc.py", "    return a - b\n", "    return a + b\n")
              + "```\n" + block("pkg/tail.py", "X = 1\n", "X = 2\n"))
    patch = answer_to_patch(tree, answer)
    assert patch.files == ("pkg/calc.py", "pkg/tail.py")
    assert patch.diff.startswith("diff --git a/pkg/calc.py b/pkg/calc.py\n--- a/pkg/calc.py\n+++ b/pkg/calc.py\n")
    files = applied(tree, patch.diff, tmp_path_factory)
    assert files["pkg/calc.py"] == CALC.replace("a - b", "a + b")
    assert files["pkg/tail.py"] == "X = 2\n"


def test_trailing_whitespace_slips_in_search_text_are_forgiven(tree):
    patch = answer_to_patch(tree, block("pkg/calc.py", "    return a - b   \n", "    return a + b\n"))
    assert "+    return a + b\n" in patch.diff


def test_a_model_diff_with_wrong_line_counts_is_rebuilt(tree, tmp_path_factory):
    answer = ("```diff\n--- a/pkg/calc.py\n+++ b/pkg/calc.py\n@@ -1,9 +1,9 @@\n def add(a, b):\n-    return a - b\n"
              "+    return a + b\n```\n")
    patch = answer_to_patch(tree, answer)
    assert "@@ -1,5 +1,5 @@" in patch.diff
    assert applied(tree, patch.diff, tmp_path_factory)["pkg/calc.py"] == CALC.replace("a - b", "a + b")
    bare = "--- pkg/calc.py\n+++ pkg/calc.py\n@@ -5,2 +5,2 @@\n def mul(a, b):\n-    return a * b\n+    return b * a\n"
    assert answer_to_patch(tree, bare).files == ("pkg/calc.py",)


def test_a_new_file_is_created_by_an_empty_search(tree, tmp_path_factory):
    patch = answer_to_patch(tree, block("pkg/new.py", "", "Y = 3\n"))
    assert "new file mode 100644" in patch.diff and "--- /dev/null" in patch.diff
    assert applied(tree, patch.diff, tmp_path_factory)["pkg/new.py"] == "Y = 3\n"


def test_an_edit_that_changes_nothing_is_an_empty_patch(tree):
    patch = answer_to_patch(tree, block("pkg/calc.py", "    return a - b\n", "    return a - b\n"))
    assert patch.empty and patch.files == ()


@pytest.mark.parametrize("answer, error", [
    (block("pkg/calc.py", "    return a / b\n", "x\n"), "not found"),
    (block("pkg/calc.py", "(a, b):\n", "(a, c):\n"), "occurs 2 times"),
    (block("../outside.py", "x\n", "y\n"), "not a path inside"),
    (block("pkg/missing.py", "x\n", "y\n"), "no such file"),
    ("```diff\n--- a/pkg/calc.py\n+++ b/pkg/calc.py\n@@ -1,2 +1,2 @@\n def sub(a, b):\n-    return 0\n"
     "+    return 1\n```", "does not apply"),
])
def test_edits_that_do_not_fit_the_tree_are_apply_errors(tree, answer, error):
    with pytest.raises(ApplyError, match=error):
        answer_to_patch(tree, answer)


@pytest.mark.parametrize("answer", [
    "I think the bug is in add, it should use plus.",
    "pkg/calc.py\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n",  # no REPLACE marker
    "```python\ndef add(a, b):\n    return a + b\n```",
])
def test_answers_without_a_readable_edit_are_parse_errors(tree, answer):
    with pytest.raises(ParseError):
        answer_to_patch(tree, answer)


def test_several_blocks_on_one_file_apply_in_order():
    edits = parse_edits(block("a.py", "x\n", "y\n") + "\n" + block("a.py", "y\n", "z\n"))
    assert [(e.path, e.search, e.replace) for e in edits] == [("a.py", "x\n", "y\n"), ("a.py", "y\n", "z\n")]
