"""`agentq round run` on repo tasks, the tiny preset: collect (MCTS over patches, scripted repair answers) ->
preferences (sibling pairs decided by the repository's tests) -> train (DPO) -> merge -> evaluate (resolve rate),
on a small corpus built here from a real library of ../shared/data/repos; and a round with the reflection
strategy (K=1 chains) trained by SFT on its resolving attempts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agentq.cli import main
from agentq.config import load_round
from agentq.io import read_jsonl
from agentq.localize.pipeline import Localizer, Model
from agentq.localize.repo import Repository
from agentq.repair.problem import buggy_tree
from agentq.tasks.schema import read_tasks, write_tasks
from agentq.workspace import RoundWorkspace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIBRARY = "cachetools-8.0.0.tar.gz"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (DATA / "repos" / LIBRARY).exists(), reason="needs ../shared/data/repos")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repo-round")
    (tmp / "data" / "repos").mkdir(parents=True)
    for name in (LIBRARY, "SHA256SUMS"):
        (tmp / "data" / "repos" / name).symlink_to(DATA / "repos" / name)
    corpus = tmp / "corpus.jsonl"
    assert main(["tasks", "build", "--source", "repos", "--data-dir", str(tmp / "data"), "--out", str(corpus),
                 "--per-library", "12", "--per-operator", "2", "--combine", "0", "--test-timeout", "10", "--jobs", "2",
                 "--json"]) == 0
    tasks = read_tasks(corpus, kinds=("repo",))
    assert len(tasks) >= 2, "the build kept fewer than two cachetools mutants"
    write_tasks(tmp / "train.jsonl", tasks)
    write_tasks(tmp / "test.jsonl", tasks[:2])
    return tmp


def round_yaml(tmp: Path, name: str, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  model: {base: tiny, backend: scripted, scripted: {pReference: 0.4, pBuggy: 0.2, pMutant: 0.3, "
        "pGarbage: 0.1}, pricing: {inputPerMillion: 2.5, outputPerMillion: 10}}\n"
        "  dataset: {train: train.jsonl, test: test.jsonl, repoData: data}\n"
        "  store: {path: store}\n"
        + extra
    )
    return path


def test_tiny_round_on_repo_tasks(workdir, capsys):
    assert main(["round", "run", str(round_yaml(workdir, "repo1")), "--preset", "tiny"]) == 0
    store = workdir / "store" / "rounds" / "repo1"
    for name in ("eval/report.md", "eval/summary.json", "preferences.jsonl", "adapter/adapter_model.safetensors",
                 "merged/config.json"):
        assert (store / name).exists(), name
    trees = list(read_jsonl(store / "trajectories" / "shard-0-of-1.jsonl"))
    assert len(trees) == len(read_tasks(workdir / "train.jsonl", kinds=("repo",)))
    attempts = [n for t in trees for n in t["nodes"][1:]]
    assert {n["category"] for n in attempts} >= {"resolved"}
    assert all(n["prompt"][-1]["content"].startswith("## Failure report") for n in attempts)
    batches = [n for n in attempts if len(n["q_ai_votes"]) == 2]  # siblings critiqued, shown order and reversed
    assert batches and all(t["stats"]["critique_calls"] >= 2 for t in trees if len(t["nodes"]) > 2)
    assert all(t["stats"]["tokens_in"] > 0 and t["stats"]["tokens_out"] > 0 for t in trees)
    assert_prompts_use_the_rounds_localisation_model(workdir, store, trees)
    pairs = list(read_jsonl(store / "preferences.jsonl"))
    assert pairs and all(p["decided_by"] == "tests" for p in pairs)
    assert all("<<<<<<< SEARCH" in p["chosen"][0]["content"] for p in pairs)
    assert [r for r in read_jsonl(store / "adapter" / "train_log.jsonl") if "loss" in r], "DPO logged no step"
    summary = json.loads((store / "eval" / "summary.json").read_text())
    for mode in ("zero_shot", "full_rewrite", "mcts"):
        result = summary["modes"][mode]
        assert result["tasks"] == 2 and result["resolve_rate"] == result["greedy_solved"] / 2, result
        records = list(read_jsonl(store / "eval" / f"{mode}.jsonl"))
        assert all(r["tokens_in"] > 0 and r["tokens_out"] > 0 for r in records)
        assert result["mean_tokens_in"] == sum(r["tokens_in"] for r in records) / 2
        assert result["cost_per_task_usd"] == pytest.approx(
            (result["mean_tokens_in"] * 2.5 + result["mean_tokens_out"] * 10) / 1e6)
    report = (store / "eval" / "report.md").read_text()
    assert "Resolve rate" in report and "## Tokens and cost per task" in report
    assert summary["modes"]["mcts"]["strategy"] == "mcts"


def assert_prompts_use_the_rounds_localisation_model(workdir: Path, store: Path, trees: list[dict]) -> None:
    """Collect fitted the localisation model on the training tasks and stored it; every task was localised by
    it, and every prompt's files are its conformal prediction set (best first, within the context budget)."""
    stored = json.loads((store / "localize" / "model.json").read_text())
    assert stored["model"] is not None, stored["reason"]
    assert stored["tasks"] == len(read_tasks(workdir / "train.jsonl", kinds=("repo",)))
    model = Model.from_json(stored["model"])
    assert model.stages == ("bm25", "ppr") and 0 < model.conformal.qhat <= 1  # no test prior: the issue alone
    tasks = {t.id: t for t in read_tasks(workdir / "train.jsonl", kinds=("repo",))}
    ws = RoundWorkspace(load_round(workdir / "repo1.yaml"), str(workdir / "repo1.yaml"), save_spec=False)
    with ws.runner() as runner:
        for record in trees:
            task = tasks[record["task_id"]]
            tree = buggy_tree(task, runner)
            located = Localizer(Repository.scan(tree)).locate(task.issue, [], model)
            notes = record["localization"]
            assert notes["by"] == "model" and notes["set_size"] == len(located.prediction_set)
            assert notes["files"] and notes["files"] == located.prediction_set[: len(notes["files"])]
            for node in record["nodes"][1:]:
                shown = re.findall(r"^### (\S+)$", node["prompt"][-1]["content"], re.M)
                assert shown == notes["files"], (task.id, shown, notes)


def test_reflection_round_trains_by_sft(workdir):
    """The reflection strategy leaves chains (no siblings, so no pairs): the round trains on its SFT examples."""
    extra = "  collect: {strategy: reflection, attempts: 3}\n  train: {method: sft}\n"
    assert main(["round", "run", str(round_yaml(workdir, "reflect", extra)), "--preset", "tiny"]) == 0
    store = workdir / "store" / "rounds" / "reflect"
    trees = list(read_jsonl(store / "trajectories" / "shard-0-of-1.jsonl"))
    assert trees and any(t["solved"] for t in trees)
    for tree in trees:
        nodes = tree["nodes"]
        assert all(len(n["children"]) <= 1 for n in nodes)  # a chain
        assert 2 <= len(nodes) <= 4 and tree["params"]["k"] == 1
        assert tree["solved"] == (nodes[-1]["category"] == "resolved")
        for earlier, later in zip(nodes[1:], nodes[2:], strict=False):
            assert f"## Attempt {earlier['depth']}: {earlier['category']}" in later["prompt"][-1]["content"]
    examples = list(read_jsonl(store / "sft.jsonl"))
    assert sum(t["solved"] for t in trees) == sum(e["kind"] == "positive" for e in examples)
    assert not (store / "preferences.jsonl").read_text().strip()
    summary = json.loads((store / "adapter" / "training_summary.json").read_text())
    assert summary["method"] == "sft" and summary["steps"] >= 1 and summary["examples"] == len(examples)
    assert [r for r in read_jsonl(store / "adapter" / "train_log.jsonl") if "loss" in r]
    assert (store / "merged" / "config.json").exists() and (store / "eval" / "summary.json").exists()
    mcts = json.loads((store / "eval" / "summary.json").read_text())["modes"]["mcts"]
    assert mcts["strategy"] == "reflection" and 1 <= mcts["mean_attempts"] <= 3, mcts
    assert "reflection, " in (store / "eval" / "report.md").read_text()


def test_the_localisation_model_is_fitted_once_per_training_set(workdir, monkeypatch):
    """A resumed collect, another shard and evaluate read the stored model back; other training tasks refit it.
    The fit is deterministic, so shards that race to fit it store the same model."""
    from agentq.repair import localization

    ws = RoundWorkspace(load_round(round_yaml(workdir, "loc")), str(workdir / "loc.yaml"))
    stored = workdir / "store" / "rounds" / "loc" / "localize" / "model.json"
    with ws.runner() as runner:
        first = localization.round_model(ws, runner).model
        assert first is not None and stored.is_file()
        tasks = read_tasks(workdir / "train.jsonl", kinds=("repo",))
        spec = ws.round.spec.localize
        assert localization.fit_model(tasks, runner, spec)[0].to_json() == first.to_json()
        monkeypatch.setattr(localization, "fit_model", lambda *args: pytest.fail("fitted again"))
        assert localization.round_model(ws, runner).model.to_json() == first.to_json()
        record = json.loads(stored.read_text())
        ws.store.put_text(ws.key(localization.KEY), json.dumps({**record, "inputs_digest": "other training tasks"}))
        monkeypatch.setattr(localization, "fit_model", lambda *args: (None, "too few usable tasks"))
        assert localization.round_model(ws, runner).model is None  # prompts then rank by BM25
        assert json.loads(stored.read_text())["reason"] == "too few usable tasks"


def test_the_localize_settings_choose_the_stages_and_the_coverage(workdir):
    """`localize: {dense: true, coverage: 0.8}` fits a model over the dense stage too, calibrated at alpha 0.2,
    and the prompts' localisation runs the same encoder (a model with a dense stage cannot rank without one)."""
    from agentq.repair import localization
    from agentq.repair.problem import RepoProblem

    path = round_yaml(workdir, "dense", "  localize: {dense: true, coverage: 0.8}\n")
    ws = RoundWorkspace(load_round(path), str(path))
    with ws.runner() as runner:
        found = localization.round_model(ws, runner)
        assert found.model.stages == ("bm25", "dense", "ppr") and found.embedder is not None
        assert found.model.conformal.alpha == pytest.approx(0.2)
        runner.localization = found
        task = read_tasks(workdir / "test.jsonl", kinds=("repo",))[0]
        assert RepoProblem.build(task, runner).notes["localization"]["by"] == "model"
        trained = read_tasks(workdir / "train.jsonl", kinds=("repo",))[0]
        cache = buggy_tree(trained, runner).parent.parent / "embeddings"
        embedded = sorted(cache.iterdir())
        assert embedded  # a training task's prompt reads back the embeddings its fit wrote
        RepoProblem.build(trained, runner)
        assert sorted(cache.iterdir()) == embedded
