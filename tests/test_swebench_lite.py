"""SWE-bench Lite as localisation tasks, offline: gold files from the patch, release choice, skip reasons, and the
benchmark's --lite mode on tiny fake sdists written here (no network: the cache is offline)."""

from __future__ import annotations

import json

import pytest

from agentq.localize.graph import files_of_tests
from agentq.localize.swebench import GOLD_MISSING, NO_SDIST, LiteError, SdistCache, lite_tasks, pick_sdist, read_lite
from tests.test_localization_bench import load_bench
from tests.test_repo_tasks import make_sdist

PATCH = ("diff --git a/{p}/core.py b/{p}/core.py\n--- a/{p}/core.py\n+++ b/{p}/core.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
         "diff --git a/{p}/new.py b/{p}/new.py\n--- /dev/null\n+++ b/{p}/new.py\n@@ -0,0 +1 @@\n+y = 1\n")


def instance(repo: str, n: int, version: str, package: str, patch: str | None = None, issue: str = "") -> dict:
    return {"repo": repo, "instance_id": f"{repo.split('/')[1]}__{n}", "base_commit": "0" * 40,
            "patch": patch or PATCH.format(p=package), "test_patch": "", "version": version,
            "problem_statement": issue or f"the value computed by {package} core is wrong",
            "hints_text": "", "created_at": "", "environment_setup_commit": "",
            "FAIL_TO_PASS": json.dumps([f"tests/test_{package}.py::test_core"]), "PASS_TO_PASS": "[]"}


def tree(package: str) -> dict[str, str]:
    return {f"{package}/__init__.py": "from .core import x\n", f"{package}/core.py": "x = 1  # the value computed\n",
            f"{package}/other.py": "def unrelated_helper():\n    return 'colour'\n",
            f"tests/test_{package}.py": f"from {package}.core import x\n\ndef test_core():\n    assert x\n"}


def test_gold_files_are_the_files_the_patch_touches_and_bad_input_is_one_line(tmp_path):
    lite = tmp_path / "lite.json"
    lite.write_text(json.dumps([instance("pallets/flask", 1, "2.0", "flask")]))
    (inst,) = read_lite(lite)
    assert inst.gold == ("flask/core.py", "flask/new.py") and inst.project == "flask"
    assert inst.test_ids == ("tests/test_flask.py::test_core",) and inst.version == "2.0"
    broken = instance("pallets/flask", 2, "2.0", "flask")
    del broken["patch"]
    lite.write_text(json.dumps([broken]))
    with pytest.raises(LiteError, match=r"instance 0: lacks field\(s\) patch"):
        read_lite(lite)
    lite.write_text("{")
    with pytest.raises(LiteError, match="not a readable JSON list"):
        read_lite(lite)


def test_the_earliest_final_release_of_the_version_is_chosen():
    files = [{"filename": name, "url": name} for name in
             ("Django-3.0.1.tar.gz", "Django-3.0.tar.gz", "Django-3.0rc1.tar.gz", "Django-3.1.tar.gz",
              "Django-3.0-py3-none-any.whl", "django-3.0.2.zip")]
    assert pick_sdist(files, "django", "3.0")["filename"] == "Django-3.0.tar.gz"
    assert pick_sdist([{**files[0], "yanked": True}, files[2]], "django", "3.0") is None  # no final release left
    assert pick_sdist(files, "django", "3.2") is None
    assert pick_sdist([{"filename": "scikit_learn-1.3.0.tar.gz"}], "scikit-learn", "1.3") is not None


def test_instances_are_skipped_per_reason_on_fake_sdists(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    make_sdist(cache, "flask", tree("flask") | {"flask/new.py": ""}, "2.0.0")
    make_sdist(cache, "flask", {}, "2.0.1")  # a later release of the same version is not the one chosen
    make_sdist(cache, "requests", tree("requests"), "2.3.0")  # lacks requests/new.py
    records = [instance("pallets/flask", 1, "2.0", "flask"), instance("psf/requests", 2, "2.3", "requests"),
               instance("pytest-dev/pytest", 3, "6.3", "pytest")]
    (tmp_path / "lite.json").write_text(json.dumps(records))
    tasks, skipped, trees = lite_tasks(read_lite(tmp_path / "lite.json"), SdistCache(cache, offline=True))
    assert [t.task_id for t in tasks] == ["flask__1"] and tasks[0].repo == "flask-2.0.0.tar.gz"
    assert dict(skipped) == {GOLD_MISSING: 1, NO_SDIST: 1}
    assert (trees["flask-2.0.0.tar.gz"] / "flask" / "core.py").read_text() == "x = 1  # the value computed\n"


def test_django_style_test_ids_name_their_test_file():
    files = {"tests/forms_tests/field_tests/test_urlfield.py": "", "tests/test_x.py": ""}
    ids = ["test_clean (forms_tests.field_tests.test_urlfield.URLFieldTest)", "tests/test_x.py::test_y",
           "test_latex_functions"]
    assert files_of_tests(ids, files) == ["tests/forms_tests/field_tests/test_urlfield.py", "tests/test_x.py"]


def test_lite_mode_reports_every_stage_and_the_skips(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    records = []
    for n, (repo, package) in enumerate([("pallets/flask", "flask"), ("psf/requests", "requests"),
                                         ("mwaskom/seaborn", "seaborn"), ("pydata/xarray", "xarray")]):
        make_sdist(cache, package, tree(package) | {f"{package}/new.py": ""}, "1.0.0")
        records += [instance(repo, 10 * n + i, "1.0", package) for i in range(3)]
    records.append(instance("sympy/sympy", 99, "1.1", "sympy"))  # no sdist cached: skipped offline
    lite = tmp_path / "lite.json"
    lite.write_text(json.dumps(records))
    docs = tmp_path / "benchmarks.md"
    argv = ["--lite", str(lite), "--lite-cache", str(cache), "--offline", "--no-dense", "--lite-limit", "2",
            "--write-docs", str(docs), "--json"]
    assert load_bench().main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["instances"] == 9 and result["measured"] == 8 and result["skipped"] == {NO_SDIST: 1}
    assert result["per_repository"] == dict.fromkeys(["mwaskom/seaborn", "pallets/flask", "psf/requests",
                                                       "pydata/xarray"], 2)
    assert [r["stage"] for r in result["rows"]] == ["BM25 only", "+ PPR", "+ test prior",
                                                  "+ reranker (no test prior)", "test prior alone"]
    for row in result["rows"]:
        assert row["tasks"] == 8 and 0 <= row["recall@1"] <= row["recall@5"] <= 1 and row["set_size"] >= 1
    # Gold is core.py and new.py; the statement names "core", so BM25 finds core.py first: half the gold files.
    assert result["rows"][0]["recall@1"] == 0.5
    text = docs.read_text()
    assert "A release sdist approximates the base commit" in text and "1 no sdist of the release" in text


def test_lite_mode_with_too_few_repositories_is_one_clear_line(tmp_path, capsys):
    lite = tmp_path / "lite.json"
    lite.write_text(json.dumps([instance("pallets/flask", 1, "2.0", "flask")]))
    assert load_bench().main(["--lite", str(lite), "--lite-cache", str(tmp_path / "c"), "--offline"]) == 2
    assert "0 measurable instances in fewer than 3 repositories" in capsys.readouterr().err


def test_an_unreachable_index_is_one_clear_error(tmp_path, monkeypatch):
    from agentq.localize import swebench

    monkeypatch.setattr(swebench, "INDEX", "http://127.0.0.1:9/simple")  # the discard port: refused
    with pytest.raises(LiteError, match=r"^http://127.0.0.1:9/simple/flask/: .*pass --offline") as err:
        SdistCache(tmp_path).sdist("flask", "2.0")
    assert "\n" not in str(err.value)
