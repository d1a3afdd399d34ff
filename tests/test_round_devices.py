"""The embedded runner over several GPUs: which shards go to which device, and real worker processes.

No GPU here: the device list is injected; the workers are real spawned processes running the scripted backend,
each with its own CUDA_VISIBLE_DEVICES, which is all the runner decides.
"""

from __future__ import annotations

import os
from pathlib import Path

from agentq.config import RoundSpec, load_round
from agentq.io import read_jsonl
from agentq.round import local_devices, plan_shards, run_sharded
from agentq.tasks.humanevalfix import load_humanevalfix
from agentq.tasks.schema import write_tasks
from agentq.workspace import RoundWorkspace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def spec(backend: str) -> RoundSpec:
    return RoundSpec.model_validate({"model": {"base": "tiny", "backend": backend},
                                     "dataset": {"train": "t.jsonl", "test": "t.jsonl"}, "store": {"path": "s"}})


def test_shards_go_round_robin_to_devices_and_no_worker_is_idle():
    assert plan_shards(4, ["0", "1"]) == [("0", [0, 2]), ("1", [1, 3])]
    assert plan_shards(3, ["0", "1"]) == [("0", [0, 2]), ("1", [1])]
    assert plan_shards(1, ["0", "1", "2"]) == [("0", [0])]
    assert plan_shards(3, []) == [(None, [0, 1, 2])]  # CPU: every shard in this process, as before


def test_devices_come_from_cuda_visible_devices_and_only_for_backends_that_load_the_model_here():
    assert local_devices(spec("hf"), {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert local_devices(spec("vllm"), {"CUDA_VISIBLE_DEVICES": "GPU-a1b2"}) == ["GPU-a1b2"]
    assert local_devices(spec("hf"), {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local_devices(spec("hf"), {"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert local_devices(spec("scripted"), {"CUDA_VISIBLE_DEVICES": "0,1"}) == []  # nothing to place


def test_collect_shards_run_in_one_process_per_device_each_loading_the_model_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQ_WORK_DIR", str(tmp_path / "work"))
    write_tasks(tmp_path / "train.jsonl", load_humanevalfix(DATA)[:6])
    (tmp_path / "r.yaml").write_text(
        "apiVersion: agentq.dev/v1alpha1\nkind: AgentQRound\nmetadata: {name: gpus}\nspec:\n"
        "  model: {base: tiny, backend: scripted}\n  dataset: {train: train.jsonl, test: train.jsonl}\n"
        "  collect: {shards: 3, k: 2, rollouts: 2, depth: 2}\n  store: {path: store}\n"
    )
    ws = RoundWorkspace(load_round(tmp_path / "r.yaml"), str(tmp_path / "r.yaml"))
    workers = run_sharded(ws, "collect", devices=["0", "1"])
    assert [(w["device"], w["shards"], w["loads"]) for w in workers] == [("0", [0, 2], 1), ("1", [1], 1)]
    assert len({w["pid"] for w in workers} | {os.getpid()}) == 3  # two workers, neither of them this process
    shards = tmp_path / "store" / "rounds" / "gpus" / "trajectories"
    ids = [r["task_id"] for i in range(3) for r in read_jsonl(shards / f"shard-{i}-of-3.jsonl")]
    assert sorted(ids) == sorted(t.id for t in load_humanevalfix(DATA)[:6])

    # One device (or none): in this process, the model still loaded once for all shards.
    (tmp_path / "r.yaml").write_text((tmp_path / "r.yaml").read_text().replace("rollouts: 2", "rollouts: 1"))
    ws = RoundWorkspace(load_round(tmp_path / "r.yaml"), str(tmp_path / "r.yaml"))
    assert [(w["pid"], w["shards"], w["loads"]) for w in run_sharded(ws, "collect", devices=[])] == \
        [(os.getpid(), [0, 1, 2], 1)]
