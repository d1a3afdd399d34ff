"""The base model a LoRA adapter trains on, shared by both methods (DPO, SFT).

`train.quantization: nf4` is QLoRA (Dettmers et al., 2023): the frozen base is loaded in 4-bit NF4 on the GPU
and only the adapter trains in bf16, which puts a 7B model's DPO (policy and, through the disabled adapter, its
reference) in a fraction of the memory of a bf16 base. The adapter it writes is an ordinary LoRA adapter:
merge folds it into the full-precision base, as for one trained without quantisation. It needs CUDA and
bitsandbytes (the train image installs it); on a CPU machine it is one clear error, not a silent full load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentq.config import TrainSpec
from agentq.policy.models import nf4_config


def load_kwargs(model_dir: str | Path, spec: TrainSpec, device: str) -> dict[str, Any]:
    """from_pretrained's arguments: bf16 on a GPU, fp32 on CPU; 4-bit NF4 on GPU 0 for QLoRA."""
    import torch

    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    if spec.quantization == "nf4":
        return {"dtype": dtype, "device_map": {"": 0},
                "quantization_config": nf4_config(f"train base {str(model_dir)!r}", torch.bfloat16,
                                                  "train.quantization")}
    return {"dtype": dtype}


def load_base(model_dir: str | Path, spec: TrainSpec, device: str) -> Any:
    """The base model, ready for a PEFT adapter (a 4-bit one prepared for k-bit training: norms in fp32,
    input gradients on for gradient checkpointing)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs(model_dir, spec, device))
    if spec.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    return model
