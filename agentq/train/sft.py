"""`train.method: sft`: supervised fine-tuning with LoRA on the SFT examples the preferences step writes.

The examples (agentq/repair/sft.py) are prompt -> resolving answer; TRL's SFTTrainer learns the answer only
(prompt-completion format: the loss covers the completion), with the same LoRA settings as DPO and the same
adapter files out, so merge and evaluate do not care which method trained. Over-long prompts are cut from their
middle (agentq/train/dpo.py: fit_prompt), as for DPO, so the problem statement stays: a repair prompt holds whole
files. No held-out split: there is no reward accuracy to pick a checkpoint by, so the last adapter is kept.
`train.method: expert_iteration` trains the same way on the passing samples alone (`expert_examples`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from agentq.config import ConfigError, TrainSpec
from agentq.io import atomic_write_json, read_jsonl, write_jsonl
from agentq.train.dpo import ADAPTER_FILES, default_device, fit_prompt, lora_config


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """Prompt-completion records from sft.jsonl (`messages` ending in the assistant's answer)."""
    examples = []
    for lineno, record in enumerate(read_jsonl(path), 1):
        messages = record.get("messages")
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise ConfigError(f"{path}:{lineno}: field 'messages': expected chat messages ending with the "
                              "assistant's answer")
        examples.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return examples


def expert_examples(sft_path: str | Path, out_path: str | Path, per_task: int) -> Path:
    """Expert iteration's data: the `positive` examples of sft.jsonl (a tree's first prompt -> an answer that
    passed every test), distinct answers only, at most `per_task` per task (rejection-sampling fine-tuning
    keeps distinct correct samples; an easy task's many identical passes would otherwise dominate)."""
    kept: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    count: dict[str, int] = {}
    for record in read_jsonl(sft_path):
        task, answer = str(record.get("task_id")), record["messages"][-1]["content"]
        if record.get("kind") != "positive" or (task, answer) in seen or count.get(task, 0) >= per_task:
            continue
        seen.add((task, answer))
        count[task] = count.get(task, 0) + 1
        kept.append(record)
    write_jsonl(out_path, kept)
    return Path(out_path)


def train_sft(examples_path: str | Path, model_dir: str | Path, out_dir: str | Path, spec: TrainSpec,
              *, device: str | None = None) -> dict[str, Any]:
    """Train, then write the adapter, train_log.jsonl and training_summary.json into out_dir."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from agentq.train.base_model import load_base

    device = device or default_device()
    out_dir = Path(out_dir)
    examples = read_examples(examples_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    on_gpu = device != "cpu"
    model = load_base(model_dir, spec, device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    per_device = min(spec.per_device_batch_size, spec.effective_batch_size)
    args = SFTConfig(
        output_dir=str(out_dir / ".trainer"), learning_rate=spec.learning_rate,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=max(1, spec.effective_batch_size // per_device),
        num_train_epochs=spec.epochs, max_steps=spec.max_steps or -1, max_length=spec.max_length,
        completion_only_loss=True, logging_steps=1, save_strategy="no",
        report_to="none", bf16=on_gpu, use_cpu=not on_gpu, seed=spec.seed, data_seed=spec.seed,
        dataloader_num_workers=0,
    )
    fitted = [{**e, "prompt": fit_prompt(e["prompt"], len(tokenizer(e["completion"][0]["content"],
                                                                  add_special_tokens=False)["input_ids"]),
                                         tokenizer, spec.max_length)} for e in examples]
    start = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(fitted),
                         processing_class=tokenizer, peft_config=lora_config(spec))
    result = trainer.train()
    trainer.model.save_pretrained(out_dir / ".trainer" / "final")
    for name in ADAPTER_FILES:
        (out_dir / name).write_bytes((out_dir / ".trainer" / "final" / name).read_bytes())
    logs = [e for e in trainer.state.log_history if "loss" in e]
    write_jsonl(out_dir / "train_log.jsonl", logs)
    summary = {"method": "sft", "examples": len(examples), "steps": trainer.state.global_step,
               "train_loss": result.training_loss, "train_runtime_s": round(time.perf_counter() - start, 2),
               "device": device, "base_model": str(model_dir), "spec": spec.model_dump(mode="json", by_alias=True)}
    atomic_write_json(out_dir / "training_summary.json", summary)
    shutil.rmtree(out_dir / ".trainer", ignore_errors=True)
    return summary
