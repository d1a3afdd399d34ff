"""QLoRA's base load (`train.quantization: nf4`): the 4-bit config both methods train on, and its clear error
on a machine without CUDA. A 4-bit run itself needs a GPU (bitsandbytes has no CPU path), so these tests pin
what is handed to from_pretrained; the full-precision path is exercised by every tiny training test."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from agentq.config import TrainSpec
from agentq.policy.models import ModelLoadError
from agentq.train import base_model


def test_full_precision_is_fp32_on_cpu_and_bf16_on_gpu():
    spec = TrainSpec()
    assert base_model.load_kwargs("m", spec, "cpu") == {"dtype": torch.float32}
    assert base_model.load_kwargs("m", spec, "cuda") == {"dtype": torch.bfloat16}


def test_nf4_on_a_gpu_machine_loads_the_frozen_base_in_4_bit(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a))
    kwargs = base_model.load_kwargs("m", TrainSpec(quantization="nf4"), "cuda")
    config = kwargs["quantization_config"]
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert kwargs["device_map"] == {"": 0}


def test_nf4_without_cuda_fails_before_loading_and_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"train\.quantization nf4 needs a CUDA GPU.*set train\.quantization: "
                                             "none"):
        base_model.load_base(tmp_path / "no-model-here", TrainSpec(quantization="nf4"), "cpu")


def test_nf4_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ModelLoadError, match=r"needs bitsandbytes \(pip install 'agentq\[cuda\]'\)"):
        base_model.load_kwargs("m", TrainSpec(quantization="nf4"), "cuda")


def test_a_qlora_round_on_a_cpu_machine_stops_at_train_with_one_line(monkeypatch, tmp_path, capsys):
    """A setting this machine cannot honour is a user error: one line naming it, exit 2, no traceback."""
    from agentq import cli
    from agentq.config import load_round
    from agentq.workspace import RoundWorkspace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("AGENTQ_WORK_DIR", str(tmp_path / "work"))
    path = tmp_path / "round.yaml"
    path.write_text(f"""
metadata: {{name: q}}
spec:
  model: {{base: tiny}}
  dataset: {{train: t.jsonl, test: t.jsonl}}
  store: {{path: {tmp_path / 'store'}}}
  train: {{quantization: nf4}}
""")
    ws = RoundWorkspace(load_round(path), str(path))
    turn = [{"role": "user", "content": "fix f"}]
    pair = {"prompt": turn, "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}], "task_id": "t"}
    ws.store.put_text(ws.key("preferences.jsonl"), "".join(json.dumps(pair) + "\n" for _ in range(4)))
    ws.finish("preferences", "prefs-digest", {"pairs": 4})
    assert cli.main(["train", "--round", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.quantization nf4 needs a CUDA GPU" in err[0], err
