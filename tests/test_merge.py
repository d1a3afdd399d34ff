"""Merging a LoRA adapter into the tiny Qwen2, and the logits check that guards the published model."""

from __future__ import annotations

import json

import pytest

from agentq.config import LORA_TARGETS
from agentq.train.merge import MergeCheckError, check_merge, merge_adapter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """The tiny base and an adapter with random (non-zero) LoRA A and B, so merging changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agentq.policy.tiny import tiny_model_dir

    base = tiny_model_dir()
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
    adapter = tmp_path_factory.mktemp("adapter")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(adapter)
    return base, adapter


def test_merge_matches_base_plus_adapter(base_and_adapter, tmp_path):
    from transformers import AutoTokenizer

    base, adapter = base_and_adapter
    out = tmp_path / "merged"
    summary = merge_adapter(base, adapter, out, device="cpu")
    assert summary["max_abs_diff"] <= summary["tolerance"]
    assert json.loads((out / "merge_summary.json").read_text())["max_abs_diff"] == summary["max_abs_diff"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert AutoTokenizer.from_pretrained(out).chat_template == AutoTokenizer.from_pretrained(base).chat_template
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary directory left behind
    assert summary["adapter_change_measurable"] and summary["adapter_change_kept"] > 0.99
    # the adapter is not a no-op: the unmerged base would fail the same check
    with pytest.raises(MergeCheckError, match="max abs logit diff"):
        check_merge(base, base, adapter, device="cpu")


def test_a_lost_adapter_fails_even_under_a_loose_tolerance(base_and_adapter):
    """rtol 5 lets any logit move by five times the largest logit: only the adapter-change check is left,
    and the base model standing in for the merge has lost the whole adapter."""
    base, adapter = base_and_adapter
    with pytest.raises(MergeCheckError, match=r"merged model lost the adapter: .* 100% of the adapter's own change"):
        check_merge(base, base, adapter, atol=1e-5, rtol=5.0, device="cpu")


def test_adapter_change_check_on_synthetic_logits():
    import torch

    from agentq.train.merge import compare

    base = torch.zeros(4, 8)
    base[:, 0] = 30.0  # a large logit: bf16's 2% of it (0.6) exceeds the adapter's whole effect (0.3)
    reference = base.clone()
    reference[:, 1] += 0.3
    assert compare(reference, base, "bfloat16")["max_abs_diff"] == pytest.approx(0.3)  # the old check alone passes
    with pytest.raises(MergeCheckError, match="lost the adapter"):
        compare(reference, base, "bfloat16", base=base)
    kept = compare(reference, reference + 0.01, "bfloat16", base=base)
    assert kept["adapter_change_kept"] == pytest.approx(1 - 0.01 / 0.3, rel=1e-3)
    tiny = compare(base + 0.001, base, "bfloat16", base=base)  # a change below rounding cannot be judged
    assert tiny["adapter_change_measurable"] is False


def test_corrupted_merged_weight_fails_the_check(base_and_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    base, adapter = base_and_adapter
    out = tmp_path / "merged"
    merge_adapter(base, adapter, out, device="cpu")
    assert check_merge(out, base, adapter, device="cpu")["max_abs_diff"] < 1e-4
    weights = load_file(out / "model.safetensors")
    key = "model.layers.1.mlp.down_proj.weight"
    weights[key] = weights[key] * 1.05
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergeCheckError, match=r"max abs logit diff \S+ > tolerance \S+"):
        check_merge(out, base, adapter, device="cpu")


def test_failed_check_publishes_nothing(base_and_adapter, tmp_path):
    base, adapter = base_and_adapter
    out = tmp_path / "merged"
    out.mkdir()
    (out / "previous.txt").write_text("round before")
    with pytest.raises(MergeCheckError, match=r"tolerance 0 \(atol 0 \+ rtol 0"):
        merge_adapter(base, adapter, out, atol=0.0, rtol=0.0, device="cpu")  # float rounding exceeds zero
    assert [p.name for p in out.iterdir()] == ["previous.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


@pytest.mark.parametrize("strength", [0.9, 0.5])
def test_a_merge_that_lost_a_weak_adapter_is_refused(base_and_adapter, tmp_path, strength):
    """The same adapter scaled down until its effect sits below the old fixed bar (10 x atol = 1e-4 in float32):
    the base standing in for its merge used to pass as 'not measurable'; judged against the adapter's own
    effect (above float32 rounding), it is refused, and a real merge of the weak adapter still passes."""
    import shutil

    from safetensors.torch import load_file, save_file

    base, adapter = base_and_adapter
    original = load_file(adapter / "adapter_model.safetensors")
    weak = tmp_path / "weak"
    shutil.copytree(adapter, weak)

    def scaled(scale: float) -> dict:
        save_file({k: v * scale if "lora_B" in k else v for k, v in original.items()},
                  weak / "adapter_model.safetensors", metadata={"format": "pt"})
        return merge_adapter(base, weak, tmp_path / "merged", device="cpu")

    # the adapter's effect is nearly linear in B once small: one step to measure the slope, one to land on target
    probe = 1e-3
    scale = probe * strength * 1e-4 / scaled(probe)["adapter_change"]
    kept = scaled(scale)
    assert kept["adapter_change"] < 1e-4 and kept["adapter_change_measurable"]  # below the old bar, still judged
    assert kept["adapter_change_kept"] > 0.9
    with pytest.raises(MergeCheckError, match="merged model lost the adapter"):
        check_merge(base, base, weak, device="cpu")


def test_a_missing_adapter_file_is_one_clear_line(base_and_adapter, tmp_path):
    from agentq.train.merge import AdapterMissing

    base, adapter = base_and_adapter
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    with pytest.raises(AdapterMissing) as err:
        merge_adapter(base, tmp_path / "adapter", tmp_path / "out", device="cpu")
    message = str(err.value)
    assert "\n" not in message and "missing adapter_model.safetensors" in message and "Repo id" not in message
    assert not (tmp_path / "out").exists()
