"""Localisation: each stage on a small repository written here, and the conformal set's coverage on a corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from agentq.localize.conformal import Conformal, fit_temperature, softmax
from agentq.localize.corpus import patch_files, read_repo_tasks, synthetic_tasks, unpack_sdist
from agentq.localize.dense import Embedder, EmbedderError, chunks
from agentq.localize.fusion import Reranker, features, ranks, rrf
from agentq.localize.graph import files_of_tests, import_prior, personalized_pagerank
from agentq.localize.lexical import BM25Index
from agentq.localize.pipeline import Localizer, Model, fuse
from agentq.localize.repo import Repository, module_name
from agentq.localize.tokens import code_tokens, split_identifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

FILES = {
    "pkg/__init__.py": "from pkg.http import parse_response\n",
    "pkg/http.py": "from pkg import util\n\ndef parse_response(raw):\n    return util.strip_header(raw)\n",
    "pkg/util.py": "def strip_header(raw):\n    return raw.split('\\n\\n', 1)[-1]\n",
    "pkg/colors.py": "def rgb_to_hex(r, g, b):\n    return '#%02x%02x%02x' % (r, g, b)\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/mod.py": "from .. import colors\nfrom ..util import strip_header\n",
    "tests/test_http.py": "from pkg.http import parse_response\n\ndef test_parse():\n    assert parse_response('a')\n",
    "tests/test_top.py": "from pkg import parse_response\nimport pkg.sub\n",
    "src/lib/__init__.py": "from ._impl import run\n",
    "src/lib/_impl.py": "from . import __name__ as _n\n\ndef run():\n    pass\n",
}


@pytest.fixture
def repo(tmp_path) -> Repository:
    for path, text in FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return Repository.scan(tmp_path)


def test_identifiers_split_at_camel_case_and_snake_case():
    assert split_identifier("parseHTTPResponse") == ["parsehttpresponse", "parse", "http", "response"]
    assert split_identifier("strip_header") == ["strip_header", "strip", "header"]
    assert split_identifier("groupby") == ["groupby"]
    assert "response" in code_tokens("FAILED tests/x.py::test_y - HTTPResponse wrong")


def test_module_names_follow_packages_and_imports_resolve_relative_ones(repo):
    assert module_name("pkg/sub/mod.py", repo.files) == "pkg.sub.mod"
    assert module_name("pkg/__init__.py", repo.files) == "pkg"
    assert module_name("tests/test_http.py", repo.files) == "test_http"
    assert set(repo.graph.successors("pkg/sub/mod.py")) == {"pkg/colors.py", "pkg/util.py"}
    assert set(repo.graph.successors("tests/test_http.py")) == {"pkg/http.py"}
    # From a package's top, a name goes to the file that defines it (through the __init__ re-export).
    assert set(repo.graph.successors("tests/test_top.py")) == {"pkg/http.py", "pkg/sub/__init__.py"}
    # src layout: module names start below src/, relative imports resolve against them.
    assert module_name("src/lib/_impl.py", repo.files) == "lib._impl"
    assert set(repo.graph.successors("src/lib/__init__.py")) == {"src/lib/_impl.py"}
    assert "tests/test_http.py" not in repo.candidates


def test_bm25_ranks_the_file_whose_identifiers_the_report_names_first(repo):
    index = BM25Index({p: repo.files[p] for p in repo.candidates})
    scores = index.scores("AssertionError: rgbToHex returned the wrong colour")
    assert max(scores, key=scores.get) == "pkg/colors.py"
    assert set(index.scores("nothing matches zzz").values()) == {0.0}


def test_ppr_spreads_a_seed_along_imports_and_the_prior_follows_the_failing_tests(repo):
    ppr = personalized_pagerank(repo.graph, {"pkg/http.py": 1.0}, repo.candidates)
    assert ppr["pkg/util.py"] > ppr["pkg/colors.py"]  # http imports util; colors is two hops further
    tests = files_of_tests(["tests/test_http.py::test_parse[1]", "missing.py::t"], repo.files)
    assert tests == ["tests/test_http.py"]
    prior = import_prior(repo.graph, tests, repo.candidates)
    assert prior["pkg/http.py"] == 1.0 and prior["pkg/util.py"] == 0.5 and prior["pkg/colors.py"] == 0.0


def test_rrf_rewards_agreement_and_the_reranker_learns_which_feature_is_informative():
    a = {"x": 3.0, "y": 2.0, "z": 1.0}
    b = {"y": 3.0, "x": 2.0, "z": 1.0}
    assert ranks(a) == {"x": 1, "y": 2, "z": 3}
    fused = rrf([a, b])
    assert fused["z"] < fused["x"] == fused["y"]
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(40):
        paths = [f"f{i}" for i in range(8)]
        gold = rng.integers(8)
        good = {p: float(rng.normal() + 3 * (i == gold)) for i, p in enumerate(paths)}
        noise = {p: float(rng.normal()) for p in paths}
        names, x = features({"good": good, "noise": noise}, paths)
        groups.append((x, np.arange(8) == gold))
    model = Reranker.fit(names, groups)
    weight = dict(zip(names, model.weights, strict=True))
    assert weight["good.norm"] + weight["good.rr"] > abs(weight["noise.norm"]) + abs(weight["noise.rr"])


def test_temperature_scaling_sharpens_informative_scores_and_sets_grow_with_coverage():
    rng = np.random.default_rng(1)
    groups = []
    for _ in range(300):
        gold = rng.integers(20)
        scores = rng.normal(size=20) * 0.01
        scores[gold] += 0.02  # informative but on a tiny scale (like RRF scores): needs a small temperature
        groups.append((scores, np.arange(20) == gold))
    assert fit_temperature(groups) < 0.1
    sizes = []
    for alpha in (0.3, 0.1, 0.02):
        conformal = Conformal.calibrate(groups[:150], alpha)
        sizes.append(np.mean([len(conformal.predict(s)) for s, _ in groups[150:]]))
    assert sizes[0] < sizes[1] < sizes[2]


def synthetic_coverage(groups: list[tuple[np.ndarray, np.ndarray]], alpha: float, splits: int) -> tuple[float, float]:
    """Mean coverage and set size over random half/half calibration/test splits of the scored tasks."""
    rng = random.Random(0)
    covered, sizes = [], []
    for _ in range(splits):
        order = list(range(len(groups)))
        rng.shuffle(order)
        calib, test = order[: len(order) // 2], order[len(order) // 2 :]
        conformal = Conformal.calibrate([groups[i] for i in calib], alpha)
        for i in test:
            scores, gold = groups[i]
            chosen = conformal.predict(scores)
            covered.append(bool(gold[chosen].sum() == gold.sum() and gold.any()))
            sizes.append(len(chosen))
    return float(np.mean(covered)), float(np.mean(sizes))


@pytest.mark.skipif(not (DATA / "repos").is_dir(), reason="needs ../shared/data/repos")
def test_conformal_set_reaches_its_coverage_on_a_calibration_test_split_of_a_corpus(tmp_path):
    """Synthetic localisation tasks on toolz and sqlparse (BM25 + PPR + test prior, fused by RRF): over random
    calibration/test splits the 90% set covers 90% of test tasks on average, with fewer files than the whole
    candidate list (a set of every file would cover trivially). Split conformal's expected coverage over
    random splits of a pool is at least 1 - alpha; the mean over 200 splits estimates it within about 0.005,
    hence the 0.01 slack."""
    groups, candidates = [], []
    for sdist in ("toolz-1.2.0.tar.gz", "sqlparse-0.6.1.tar.gz"):
        repo = Repository.scan(unpack_sdist(DATA / "repos" / sdist, tmp_path))
        localizer = Localizer(repo)
        for task in synthetic_tasks(repo, sdist.split("-")[0], sdist, n=60, seed=3):
            stages = localizer.evidence(task.issue, list(task.test_ids))
            groups.append((fuse(stages, ("bm25", "ppr", "prior"), localizer.paths),
                           np.array([p in task.gold for p in localizer.paths])))
            candidates.append(len(localizer.paths))
    assert len(groups) >= 80
    coverage, size = synthetic_coverage(groups, alpha=0.1, splits=200)
    assert coverage >= 0.89, coverage
    assert size < 0.5 * np.mean(candidates), (size, np.mean(candidates))
    # The guarantee is what the threshold is for: a looser target gives smaller sets and less coverage.
    loose_coverage, loose_size = synthetic_coverage(groups, alpha=0.4, splits=200)
    assert loose_size < size and loose_coverage < coverage


def test_a_trained_model_round_trips_and_locates_the_file(repo, tmp_path):
    localizer = Localizer(repo)
    report, failing = "FAILED tests/test_http.py::test_parse - parse_response", ["tests/test_http.py::test_parse"]
    stages = localizer.evidence(report, failing)
    names, x = features(stages, localizer.paths)
    gold = np.array([p == "pkg/http.py" for p in localizer.paths])
    model = Model(stages=tuple(sorted(stages)), reranker=Reranker.fit(names, [(x, gold)] * 4),
                  conformal=Conformal(temperature=1.0, qhat=0.5, alpha=0.1))
    model.save(tmp_path / "model.json")
    loaded = Model.load(tmp_path / "model.json")
    result = localizer.locate(report, failing, loaded)
    assert result.ranked[0] == "pkg/http.py" and result.prediction_set[0] == "pkg/http.py"
    assert abs(sum(result.probabilities) - 1) < 1e-9
    assert result.probabilities == sorted(result.probabilities, reverse=True)
    with pytest.raises(ValueError, match=r"stage\(s\) \['dense'\]"):
        localizer.locate(report, failing, Model(("bm25", "dense"), loaded.reranker, loaded.conformal))
    assert list(localizer.context(result)) == result.prediction_set
    assert localizer.context(result)["pkg/http.py"] == FILES["pkg/http.py"]


def test_patch_files_are_the_gold_files():
    diff = ("diff --git a/toolz/x.py b/toolz/x.py\n--- a/toolz/x.py\n+++ b/toolz/x.py\n@@ -1 +1 @@\n-a\n+b\n"
            "--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+c\n")
    assert patch_files(diff) == ["toolz/x.py", "new.py"]


def test_chunks_follow_top_level_definitions():
    text = "import os\n\n@dec\ndef a():\n    pass\n\nclass B:\n    x = 1\n"
    parts = chunks("m.py", text)
    assert len(parts) == 3 and parts[1].startswith("m.py\n@dec\ndef a") and all(p.startswith("m.py\n") for p in parts)


@pytest.mark.slow
def test_the_packaged_embedding_model_puts_the_relevant_text_first(repo):
    embedder = Embedder.load()
    vectors = embedder.embed(["convert red green blue to a hex colour string", "split an HTTP header off a body",
                              "rgb to hex colour"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[2] @ vectors[0] > vectors[2] @ vectors[1]
    localizer = Localizer(repo, embedder)
    dense = localizer.evidence("the colour hex string is wrong", [])["dense"]
    assert max(dense, key=dense.get) == "pkg/colors.py"


def test_a_directory_without_an_onnx_model_is_refused_by_name(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(EmbedderError, match=str(tmp_path)):
        Embedder.load(tmp_path)


def test_softmax_is_a_distribution():
    p = softmax(np.array([1000.0, 0.0, -5.0]), 1.0)
    assert abs(p.sum() - 1) < 1e-12 and p[0] > 0.999


def test_repo_task_lines_give_report_failing_tests_and_gold_files(tmp_path):
    record = {"kind": "repo", "task_id": "toolz-1.2.0__op_swap__toolz/itertoolz.py:10", "group": "toolz",
              "repo": {"sdist": "toolz-1.2.0.tar.gz", "name": "toolz", "version": "1.2.0"},
              "bug_patch": "diff --git a/toolz/itertoolz.py b/toolz/itertoolz.py\n--- a/toolz/itertoolz.py\n"
                           "+++ b/toolz/itertoolz.py\n@@ -1 +1 @@\n-a\n+b\n",
              "fail_to_pass": ["toolz/tests/test_itertoolz.py::test_groupby"], "pass_to_pass": [],
              "issue": "1 test fails", "test_target": ["toolz/"]}
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({"id": "a function task"}) + "\n")
    [task] = read_repo_tasks(path)
    assert task.gold == ("toolz/itertoolz.py",) and task.test_ids == ("toolz/tests/test_itertoolz.py::test_groupby",)
    assert task.repo == "toolz-1.2.0.tar.gz" and task.group == "toolz"
    del record["issue"]
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"tasks.jsonl: line 1: repo task lacks field 'issue'"):
        read_repo_tasks(path)


def test_a_models_conformal_set_sizes_the_prompt_context(repo):
    """With a model, the prompt's files are its prediction set, ranked from the issue alone (the failing test's
    imports, http.py and util.py, do not pull them in); without one, the CONTEXT_FILES best by BM25. Small files
    fit the budget whole: their functions are shown in full."""
    from agentq.localize.conformal import Conformal
    from agentq.repair.localization import RoundLocalization
    from agentq.repair.problem import CONTEXT_FILES, localised_context
    from agentq.tasks.schema import RepoTask

    task = RepoTask(task_id="t", group="pkg", repo={"sdist": "pkg-1.0.tar.gz", "name": "pkg", "version": "1.0"},
                    bug_patch="x", issue="the colour hex string is wrong",
                    fail_to_pass=["tests/test_http.py::test_parse"], test_target=["tests"])
    names = features({s: dict.fromkeys(repo.candidates, 0.0) for s in ("bm25", "ppr")}, repo.candidates)[0]
    weights = np.array([10.0 if n == "bm25.norm" else 0.0 for n in names])
    model = Model(stages=("bm25", "ppr"), reranker=Reranker(names=names, weights=weights),
                  conformal=Conformal(temperature=1.0, qhat=0.5, alpha=0.1))
    context, notes = localised_context(repo.root, task, RoundLocalization(model))
    assert list(context) == ["pkg/colors.py"] and "pkg/http.py" not in context
    assert "    return '#%02x%02x%02x' % (r, g, b)" in context["pkg/colors.py"]
    assert notes["by"] == "model" and notes["files"] == ["pkg/colors.py"] and notes["set_size"] == 1
    fallback, notes = localised_context(repo.root, task)
    assert len(fallback) == CONTEXT_FILES and "pkg/colors.py" in fallback  # the report's "hex" matches it
    assert notes["by"] == "bm25" and notes["files"] == list(fallback) and notes["context_tokens"] > 0
