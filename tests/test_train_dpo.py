"""DPO training: pair reading, the held-out split, best-checkpoint selection, and a real tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentq.config import RoundFile, TrainSpec
from agentq.store import sha256_file
from agentq.train import dpo, merge
from agentq.train.dpo import (
    BEST_METRIC,
    PreferenceFileError,
    _best_callback,
    is_improvement,
    pair_groups,
    read_pairs,
    split_pairs,
)


def select_best(history: list[tuple[int, float]]) -> tuple[int, float] | None:
    """The (step, metric) a run following `is_improvement` ships, for a sequence of evaluations."""
    best: tuple[int, float] | None = None
    for step, value in history:
        if is_improvement(best[1] if best else None, value):
            best = (step, value)
    return best

def pair(i: int, **extra) -> dict:
    return {
        "prompt": [
            {"role": "system", "content": "Fix the bug."},
            {"role": "user", "content": f"def f{i}(x): return x-1"},
        ],
        "chosen": [{"role": "assistant", "content": f"def f{i}(x):\n    return x + 1"}],
        "rejected": [{"role": "assistant", "content": f"def f{i}(x):\n    return x - {i}"}],
        **extra,
    }


def write_pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(pair(i, task_id=f"t{i % 3}", delta_q=0.5)) + "\n" for i in range(n)))
    return path


def test_read_pairs_drops_metadata(tmp_path):
    pairs = read_pairs(write_pairs(tmp_path / "p.jsonl", 3))
    assert len(pairs) == 3 and all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)
    assert pairs[1]["chosen"][0]["content"].startswith("def f1")


def test_empty_preference_file_is_a_clear_error(tmp_path):
    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(PreferenceFileError, match=r"no preference pairs in .*p\.jsonl; collection produced none"):
        read_pairs(tmp_path / "p.jsonl")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": [], "chosen": [], "rejected": []}, r"p\.jsonl:2: field 'prompt': expected a non-empty list"),
        ({"prompt": [{"role": "user"}], "chosen": [], "rejected": []}, r":2: field 'prompt'\[0\]: expected"),
        (
            {"prompt": [{"role": "user", "content": "x"}], "chosen": [{"role": "assistant", "content": "y"}]},
            r":2: missing field 'rejected'",
        ),
    ],
)
def test_bad_pairs_name_file_line_and_field(tmp_path, record, message):
    (tmp_path / "p.jsonl").write_text(json.dumps(pair(0)) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(PreferenceFileError, match=message):
        read_pairs(tmp_path / "p.jsonl")


def test_split_is_seeded_and_never_starves_either_side():
    pairs = [pair(i) for i in range(20)]
    train, held = split_pairs(pairs, 0.1, seed=3)
    assert (len(train), len(held)) == (18, 2)
    assert split_pairs(pairs, 0.1, seed=3) == (train, held)
    assert split_pairs(pairs, 0.1, seed=4)[1] != held
    assert sorted(p["prompt"][1]["content"] for p in train + held) == sorted(p["prompt"][1]["content"] for p in pairs)
    assert [len(s) for s in split_pairs(pairs[:2], 0.01, 0)] == [1, 1]  # share > 0: at least one held out
    assert [len(s) for s in split_pairs(pairs[:2], 0.9, 0)] == [1, 1]  # ... and at least one to train on
    assert [len(s) for s in split_pairs(pairs[:1], 0.5, 0)] == [1, 0]
    assert [len(s) for s in split_pairs(pairs, 0.0, 0)] == [20, 0]


def test_selection_ships_the_peak_not_the_last():
    # the original run's shape: better mid-run than at the end
    assert select_best([(50, 0.5), (150, 0.719), (300, 0.597)]) == (150, 0.719)
    assert select_best([(1, 0.5), (2, 0.72), (3, 0.6)]) == (2, 0.72)
    assert select_best([(1, 0.6), (2, 0.6)]) == (1, 0.6)  # a tie keeps the earlier, less drifted adapter
    assert select_best([(1, math.nan), (2, 0.4)]) == (2, 0.4)
    assert select_best([]) is None
    assert is_improvement(None, 0.0) and not is_improvement(0.5, 0.5)


def test_callback_saves_the_adapter_of_the_best_evaluation(tmp_path):
    """The keeper fed a metric sequence that peaks mid-run keeps the mid-run snapshot on disk."""

    class Model:
        step = 0

        def save_pretrained(self, directory):
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / "adapter_model.safetensors").write_text(f"weights at step {self.step}")

    keeper = _best_callback(tmp_path / "log.jsonl", tmp_path / "best", BEST_METRIC)
    model = Model()
    for step, accuracy in [(10, 0.5), (20, 0.72), (30, 0.6)]:
        model.step = step
        state = SimpleNamespace(global_step=step)
        keeper.on_log(None, state, None, logs={"loss": 0.6}, model=model)
        keeper.on_log(None, state, None, logs={BEST_METRIC: accuracy, "eval_loss": 0.6}, model=model)
    assert (keeper.best_step, keeper.best) == (20, 0.72)
    assert (tmp_path / "best" / "adapter_model.safetensors").read_text() == "weights at step 20"
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 10, 20, 20, 30, 30]


@pytest.mark.slow
def test_tiny_run_ships_the_best_checkpoint(tmp_path):
    """A real DPO run on the tiny model whose held-out accuracy is scripted to peak at step 2 of 3."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from agentq.policy.tiny import tiny_model_dir
    from agentq.train.dpo import train_dpo

    scripted = {1: 0.5, 2: 0.72, 3: 0.6}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    real: dict[int, float] = {}

    class ScriptMetric(TrainerCallback):
        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if BEST_METRIC in logs:
                real[state.global_step] = logs[BEST_METRIC]
                logs[BEST_METRIC] = scripted[state.global_step]
                snapshots[state.global_step] = {
                    k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()
                }

    spec = TrainSpec(
        max_steps=3,
        effective_batch_size=4,
        per_device_batch_size=2,
        eval_steps=2,
        eval_share=0.25,
        learning_rate=5e-3,
        max_length=256,
        lora={"r": 4, "alpha": 8},
    )
    out = tmp_path / "adapter"
    summary = train_dpo(
        write_pairs(tmp_path / "p.jsonl", 16), tiny_model_dir(), out, spec, device="cpu", callbacks=[ScriptMetric()]
    )

    # eval_steps=2 evaluates at step 2; the last step (3) is always evaluated as well
    assert sorted(real) == [2, 3] and all(0.0 <= v <= 1.0 for v in real.values())
    assert summary["steps"] == 3 and summary["best_step"] == 2 and summary["best_eval_reward_accuracy"] == 0.72
    # 16 pairs from 3 tasks: one whole task is held out, never a few of its sibling pairs
    assert (summary["train_pairs"], summary["eval_pairs"]) in {(10, 6), (11, 5)}
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_log.jsonl",
        "training_summary.json",
    ]
    shipped = load_file(out / "adapter_model.safetensors")
    assert shipped.keys() == snapshots[2].keys()
    assert all(torch.equal(shipped[k], snapshots[2][k]) for k in shipped)
    assert any(not torch.equal(shipped[k], snapshots[3][k]) for k in shipped)  # training moved on after step 2
    lora_b = [v for k, v in shipped.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the adapter actually learned something

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_rows = [e for e in log if "loss" in e]
    assert [e["step"] for e in train_rows] == [1, 2, 3]
    assert all({"rewards/accuracies", "rewards/margins"} <= e.keys() for e in train_rows)
    assert [e["step"] for e in log if BEST_METRIC in e] == [2, 3]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == sorted(spec.lora.target_modules)
    assert json.loads((out / "training_summary.json").read_text())["best_step"] == 2


# ---- `train` and `merge` as round steps: preferences in the store in, adapter and merged model out ----


@pytest.fixture
def ws(tmp_path, monkeypatch):
    from agentq.workspace import RoundWorkspace

    monkeypatch.setenv("AGENTQ_WORK_DIR", str(tmp_path / "work"))
    round_file = RoundFile.model_validate(
        {
            "metadata": {"name": "r1"},
            "spec": {
                "model": {"base": "tiny"},
                "dataset": {"train": "train.jsonl", "test": "test.jsonl"},
                "store": {"path": str(tmp_path / "store")},
                "train": {
                    "maxSteps": 2,
                    "effectiveBatchSize": 2,
                    "evalSteps": 1,
                    "maxLength": 256,
                    "lora": {"r": 4, "alpha": 8},
                    "learningRate": 1e-3,
                },
            },
        }
    )
    return RoundWorkspace(round_file, str(tmp_path / "round.yaml"))


@pytest.mark.slow
def test_train_then_merge_publish_to_the_store(ws):
    ws.store.put_text(ws.key("preferences.jsonl"), "".join(json.dumps(pair(i, task_id="t")) + "\n" for i in range(8)))
    ws.finish("preferences", "prefs-digest", {"pairs": 8})

    result = dpo.run(ws)
    assert result["steps"] == 2 and result["pairs"] == 8 and result["bestStep"] in (1, 2)
    assert ws.store.list(ws.key("adapter")) == [
        ws.key(f"adapter/{name}")
        for name in ("adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "training_summary.json")
    ]
    adapter_sha = ws.store.sha256(ws.key("adapter/adapter_model.safetensors"))
    assert adapter_sha is not None
    shown = ws.store.get_json(ws.key("progress/train.json"))  # what the dashboard showed while it trained
    assert (shown["method"], shown["step"], shown["maxSteps"]) == ("dpo", 2, 2)
    assert [h["step"] for h in shown["history"] if "loss" in h] == [1, 2]
    assert dpo.run(ws) == result  # finished: a re-run does nothing
    assert ws.store.sha256(ws.key("adapter/adapter_model.safetensors")) == adapter_sha

    merged = merge.run(ws)
    assert merged["maxAbsLogitDiff"] >= 0
    keys = ws.store.list(ws.key("merged"))
    assert ws.key("merged/model.safetensors") in keys and ws.key("merged/merge_summary.json") in keys
    assert ws.store.get_json(ws.key("merged/merge_summary.json"))["max_abs_diff"] == merged["maxAbsLogitDiff"]


@pytest.mark.slow
def test_no_pairs_train_nothing_and_merge_publishes_the_base(ws, capsys):
    """A model the tests cannot tell apart from itself yields no pairs: the round still completes, with
    its model unchanged, rather than failing at train."""
    ws.store.put_text(ws.key("preferences.jsonl"), "")
    ws.finish("preferences", "prefs-digest", {"pairs": 0})
    assert dpo.run(ws) == {"pairs": 0, "steps": 0}
    assert "no preference pairs in file://" in capsys.readouterr().out
    assert ws.store.list(ws.key("adapter")) == []
    assert merge.run(ws) == {"maxAbsLogitDiff": 0.0}
    base = Path(dpo.base_model_dir(ws))
    assert ws.store.sha256(ws.key("merged/model.safetensors")) == sha256_file(base / "model.safetensors")


def test_split_keeps_each_task_on_one_side():
    pairs = [{"prompt": [{"role": "user", "content": str(i)}], "chosen": [], "rejected": []} for i in range(12)]
    groups = [f"task-{i // 3}" for i in range(12)]  # four tasks, three sibling pairs each
    train, held = split_pairs(pairs, 0.25, seed=1, groups=groups)
    side = {g: (p in held) for p, g in zip(pairs, groups, strict=True)}
    assert all(side[g] == (p in held) for p, g in zip(pairs, groups, strict=True))
    assert len(held) == 3 and len(train) == 9
    # one problem only: holding any of it out would leak, so nothing is held out
    assert split_pairs(pairs[:3], 0.5, seed=1, groups=["t"] * 3) == (pairs[:3], [])


def test_held_out_pairs_share_no_group_with_training_pairs(tmp_path):
    """Pairs of different tasks of one problem (DebugBench: one slug, many bug types) stay on one side."""
    records = [pair(i, task_id=f"debugbench/bug{i % 5}-{i}", group=f"slug-{i % 4}") for i in range(40)]
    records.append(pair(40, task_id="old-file-without-group"))  # an older file: its task id is its group
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    groups = pair_groups(path)
    assert groups[:4] == ["slug-0", "slug-1", "slug-2", "slug-3"] and groups[-1] == "old-file-without-group"
    for seed in range(5):
        train, held = split_pairs(read_pairs(path), 0.25, seed=seed, groups=groups)
        by_content = {json.dumps(r["prompt"]): g for r, g in zip(records, groups, strict=True)}
        held_groups = {by_content[json.dumps(p["prompt"])] for p in held}
        train_groups = {by_content[json.dumps(p["prompt"])] for p in train}
        assert held and train and not held_groups & train_groups


@pytest.mark.slow
def test_wandb_runs_offline_and_leaves_the_run_under_the_adapter(tmp_path, monkeypatch):
    from agentq.policy.tiny import tiny_model_dir
    from agentq.train.dpo import train_dpo

    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", "/nonexistent")  # restored after the test; train_dpo must replace it
    spec = TrainSpec(max_steps=1, effective_batch_size=2, eval_share=0.0, max_length=256,
                     lora={"r": 4, "alpha": 8}, wandb=True)
    out = tmp_path / "adapter"
    train_dpo(write_pairs(tmp_path / "p.jsonl", 4), tiny_model_dir(), out, spec, device="cpu", run_name="r1-train")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (out / "wandb").iterdir())
    files = {p.name for p in runs[0].rglob("*") if p.is_file()}
    assert any(name.endswith(".wandb") for name in files)  # the run's event log, ready for `wandb sync`
    assert (out / "adapter_model.safetensors").exists()


def test_config_defaults_and_the_optional_sft_term(tmp_path):
    from agentq.train.dpo import dpo_config

    plain = dpo_config(TrainSpec(effective_batch_size=2), tmp_path, "cpu", has_eval=False)
    assert list(plain.loss_type) == ["sigmoid"] and plain.precompute_ref_log_probs
    assert plain.per_device_train_batch_size == 2 and plain.gradient_accumulation_steps == 1  # never above the batch
    wide = dpo_config(TrainSpec(effective_batch_size=16), tmp_path, "cpu", has_eval=False)
    assert (wide.per_device_train_batch_size, wide.gradient_accumulation_steps) == (4, 4)
    rpo = dpo_config(TrainSpec(sft_weight=0.5), tmp_path, "cpu", has_eval=False)
    assert list(rpo.loss_type) == ["sigmoid", "sft"] and list(rpo.loss_weights) == [1.0, 0.5]
