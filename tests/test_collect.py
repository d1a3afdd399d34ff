"""`agentq collect` + `agentq preferences` through the CLI: shards split the tasks, each tree lands once."""

from pathlib import Path

import pytest

from agentq.cli import main
from agentq.collect import shard_tasks
from agentq.config import ConfigError
from agentq.io import read_jsonl
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_shards_partition_the_tasks():
    tasks = list(range(11))
    shards = [shard_tasks(tasks, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == tasks
    assert shards[1] == [1, 4, 7, 10]
    with pytest.raises(ConfigError, match="need 0 <= shard < num_shards"):
        shard_tasks(tasks, 3, 3)


def test_two_shards_then_preferences_on_20_tasks(tmp_path, capsys):
    write_tasks(tmp_path / "train.jsonl", load_humanevalfix(DATA)[:20])
    (tmp_path / "round.yaml").write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: c}\nspec:\n"
        "  model: {base: tiny, backend: scripted}\n"
        "  dataset: {train: train.jsonl, test: train.jsonl}\n"
        "  collect: {shards: 2, k: 2, rollouts: 4, depth: 2, stopOnPass: false}\n"
        "  store: {path: store}\n"
    )
    round_yaml = str(tmp_path / "round.yaml")
    assert main(["preferences", "--round", round_yaml]) == 2  # no shard has run yet
    assert f"run `agentq collect --round {round_yaml} --shard 0 --num-shards 2` first" in capsys.readouterr().err
    for shard in ("0", "1"):
        assert main(["collect", "--round", round_yaml, "--shard", shard, "--num-shards", "2"]) == 0
    out = tmp_path / "store" / "rounds" / "c"
    ids = [[r["task_id"] for r in read_jsonl(out / f"trajectories/shard-{i}-of-2.jsonl")] for i in range(2)]
    assert len(ids[0]) == len(ids[1]) == 10 and not set(ids[0]) & set(ids[1])
    assert main(["preferences", "--round", round_yaml]) == 0
    pairs = list(read_jsonl(out / "preferences.jsonl"))
    assert pairs and all(p["chosen"][0]["role"] == "assistant" and p["delta_reward"] > 0.1 for p in pairs)
    assert all(p["decided_by"] == "tests" and p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert {p["task_id"] for p in pairs} <= set(ids[0] + ids[1])
    # each tree spent its budget: 4 expansions of k=2 samples, the buggy root run once
    trees = list(read_jsonl(out / "trajectories/shard-0-of-2.jsonl"))
    assert all(t["stats"]["rollouts"] == 4 and t["stats"]["samples"] == 8 for t in trees)
    assert all(t["nodes"][0]["verdict"] is not None and t["group"] for t in trees)
    assert main(["round", "clean", round_yaml]) == 0
    assert not (tmp_path / "store" / "rounds" / "c").exists()
    assert "removed" in capsys.readouterr().out
