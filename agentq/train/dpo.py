"""`agentq train`: DPO with a LoRA adapter on the round's preference pairs.

The shipped adapter is the checkpoint with the best reward accuracy on held-out pairs, not the last one:
the original run peaked at 71.9% at step 150 and had fallen to 59.7% by its end, so "train, then save"
ships a worse model than one the run already had.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from agentq.config import ConfigError, TrainSpec
from agentq.io import append_jsonl, atomic_write_json, read_jsonl

PAIR_FIELDS = ("prompt", "chosen", "rejected")
BEST_METRIC = "eval_rewards/accuracies"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class PreferenceFileError(ConfigError):
    """A preference file that cannot be trained on; the message names the file, line and field.

    A ConfigError so the CLI prints it as one actionable line rather than a traceback."""


def _check_messages(value: Any, where: str, field: str) -> None:
    if not isinstance(value, list) or not value:
        raise PreferenceFileError(f"{where}: field {field!r}: expected a non-empty list of chat messages")
    for i, msg in enumerate(value):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
            raise PreferenceFileError(
                f"{where}: field {field!r}[{i}]: expected {{'role': str, 'content': str}}, got {msg!r:.80}"
            )


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Chat-format pairs with only the fields TRL reads; metadata (task_id, delta_q, ...) is dropped here
    because TRL would otherwise try to collate it."""
    pairs = []
    try:
        for lineno, record in enumerate(read_jsonl(path), 1):
            where = f"{path}:{lineno}"
            for field in PAIR_FIELDS:
                if field not in record:
                    raise PreferenceFileError(f"{where}: missing field {field!r}")
                _check_messages(record[field], where, field)
            pairs.append({field: record[field] for field in PAIR_FIELDS})
    except OSError as err:
        raise PreferenceFileError(f"{path}: cannot read: {err.strerror}") from None
    except ValueError as err:
        if isinstance(err, PreferenceFileError):
            raise
        raise PreferenceFileError(str(err)) from None
    if not pairs:
        raise PreferenceFileError(f"no preference pairs in {path}; collection produced none")
    return pairs


def pair_groups(path: str | Path) -> list[str]:
    """The problem (task `group`) each pair came from, in file order; older files without groups fall back
    to the task id, then to the prompt. DebugBench has one problem under many bug types: split by task id,
    94% of held-out pairs shared a problem with training pairs."""
    return [str(r.get("group") or r.get("task_id") or json.dumps(r.get("prompt"), sort_keys=True))
            for r in read_jsonl(path)]


def split_pairs(pairs: list[dict], share: float, seed: int,
                groups: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(train, held out): a seeded shuffle, at least one held-out pair whenever share > 0 and there are two.

    With `groups`, whole groups (problems) go to one side: pairs of one problem share a statement and
    often a chosen answer, so splitting them would let eval reward accuracy measure memorisation.
    A single group cannot be held out without leaking into training: then nothing is held out and the
    last adapter ships.
    """
    if share <= 0 or len(pairs) < 2:
        return list(pairs), []
    if groups is None:
        groups = [str(i) for i in range(len(pairs))]
    if len(set(groups)) < 2:
        return list(pairs), []
    names = sorted(set(groups))
    random.Random(seed).shuffle(names)
    target = max(1, round(share * len(pairs)))
    held_names: set[str] = set()
    held_count = 0
    for name in names[:-1]:  # always leave at least one group to train on
        if held_count >= target:
            break
        held_names.add(name)
        held_count += groups.count(name)
    train = [p for p, g in zip(pairs, groups, strict=True) if g not in held_names]
    held = [p for p, g in zip(pairs, groups, strict=True) if g in held_names]
    return train, held


CUT_MARK = "\n[... {} characters cut to fit train.maxLength ...]\n"


def fit_prompt(messages: list[dict[str, str]], completion_tokens: int, tokenizer: Any,
               max_length: int) -> list[dict[str, str]]:
    """The prompt cut to leave room for its answer within max_length tokens, from the middle of its longest
    message, so the problem statement at its start and the instructions at its end both stay.

    TRL's keep_end cut the statement (training prompts then differed from the ones the model answers) and is
    deprecated; its keep_start cuts the answer. Cutting here, the completion keeps at least half the room.
    """
    budget = max_length - min(completion_tokens, max_length // 2)

    def length(msgs: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    excess = length(messages) - budget
    if excess <= 0:
        return messages
    longest = max(range(len(messages)), key=lambda i: len(messages[i]["content"]))
    content = messages[longest]["content"]

    def keeping(keep: int) -> list[dict[str, str]]:
        head, tail = content[: keep // 2], content[len(content) - (keep - keep // 2):]
        cut = CUT_MARK.format(len(content) - keep)
        return [*messages[:longest], {**messages[longest], "content": head + cut + tail}, *messages[longest + 1:]]

    low, high = 0, len(content) - 1  # the most characters kept that fit: a binary search on their count
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(keeping(middle)) <= budget else (low, middle - 1)
    return keeping(low)


def fit_pairs(pairs: list[dict[str, Any]], tokenizer: Any, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Pairs whose prompt is cut to fit (fit_prompt) beside their longer answer; returns how many were cut."""
    fitted, cut = [], 0
    for pair in pairs:
        answer = max(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
                     for key in ("chosen", "rejected") for m in pair[key])
        prompt = fit_prompt(pair["prompt"], answer, tokenizer, max_length)
        cut += prompt is not pair["prompt"]
        fitted.append({**pair, "prompt": prompt})
    return fitted, cut


def is_improvement(best: float | None, value: float) -> bool:
    """Strictly better only: on a tie the earlier (less trained, less drifted) checkpoint stays."""
    return not math.isnan(value) and (best is None or value > best)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def base_model_dir(ws: Any) -> str:
    """The directory training and merging load: the round's base (GGUF materialised) or an earlier round's merge."""
    from agentq.policy.models import loadable_dir, resolve_model

    source, _ = ws.model_source()
    spec = ws.round.spec.model
    return loadable_dir(resolve_model(spec if source == spec.base else source)).location


def wandb_environment(out_dir: Path, project: str) -> None:
    """Offline unless the environment says otherwise (a cluster Job usually has no route to wandb.ai), with
    the run's files under `out_dir` (the round's adapter/, which is published), not in a deleted work dir."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError("train.wandb: true needs the wandb package: pip install 'agentq[train]'") from None
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_DIR"] = str(out_dir)
    os.environ.setdefault("WANDB_PROJECT", project)


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()  # flush the run's files before adapter/ is published


def _best_callback(log_path: Path, best_dir: Path, metric: str) -> Any:
    from transformers import TrainerCallback

    class BestCheckpoint(TrainerCallback):
        """Logs every record to JSONL and snapshots the adapter whenever the held-out metric improves."""

        def __init__(self) -> None:
            self.best: float | None = None
            self.best_step: int | None = None
            self.history: list[tuple[int, float]] = []

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = True  # the last step is a candidate too, whatever eval_steps says
            return control

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            logs = dict(logs or {})
            append_jsonl(log_path, {"step": state.global_step, "time": round(time.time(), 3), **logs})
            if metric in logs:
                value = float(logs[metric])
                self.history.append((state.global_step, value))
                if is_improvement(self.best, value):
                    self.best, self.best_step = value, state.global_step
                    model.save_pretrained(best_dir)

    return BestCheckpoint()


def dpo_config(spec: TrainSpec, work_dir: Path, device: str, *, has_eval: bool, run_name: str | None = None,
               **overrides: Any) -> Any:
    """The DPOConfig for a TrainSpec; overrides let the benchmark vary one setting at a time."""
    from trl import DPOConfig

    on_gpu = device != "cpu"
    per_device = min(spec.per_device_batch_size, spec.effective_batch_size)  # never more than the batch asked for
    options: dict[str, Any] = dict(
        output_dir=str(work_dir),
        beta=spec.beta,
        learning_rate=spec.learning_rate,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=max(1, spec.effective_batch_size // per_device),
        precompute_ref_log_probs=spec.precompute_ref_log_probs,
        # RPO: the SFT term keeps the chosen answers likely, not only likelier than the rejected ones
        loss_type=["sigmoid", "sft"] if spec.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, spec.sft_weight] if spec.sft_weight > 0 else None,
        precompute_ref_batch_size=16,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps or -1,
        max_length=spec.max_length,
        # Prompts are cut to fit beforehand (fit_pairs: from their middle, the problem statement kept); what
        # TRL still truncates is the end of an over-long answer.
        truncation_mode="keep_start",
        activation_checkpointing=spec.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        bf16=on_gpu,
        use_cpu=not on_gpu,
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=spec.eval_steps,
        save_strategy="no",
        report_to=["wandb"] if spec.wandb else "none",
        run_name=run_name,
        seed=spec.seed,
        data_seed=spec.seed,
        dataloader_num_workers=0,
    )
    options.update(overrides)
    return DPOConfig(**options)


def lora_config(spec: TrainSpec) -> Any:
    """The adapter both training methods (DPO, SFT) train."""
    from peft import LoraConfig

    return LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=list(spec.lora.target_modules), task_type="CAUSAL_LM")


def build_trainer(
    model_dir: Path,
    train: list[dict],
    held_out: list[dict],
    spec: TrainSpec,
    work_dir: Path,
    device: str,
    callbacks: list | None = None,
    model: Any = None,
    run_name: str | None = None,
    **overrides: Any,
) -> Any:
    """A DPOTrainer; `model` replaces loading model_dir's weights (the benchmark builds random 7B-shaped
    weights in place rather than writing 15 GB to disk), the tokenizer still comes from model_dir."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    from agentq.train.base_model import load_base
    from agentq.train.progress import use_step_bar

    if model is None:
        model = load_base(model_dir, spec, device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, _ = fit_pairs(train, tokenizer, spec.max_length)
    held_out, _ = fit_pairs(held_out, tokenizer, spec.max_length)
    lora = lora_config(spec)
    args = dpo_config(spec, work_dir, device, has_eval=bool(held_out), run_name=run_name, **overrides)
    return use_step_bar(DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(held_out) if held_out else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    ))


def train_dpo(
    pairs_path: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    spec: TrainSpec,
    *,
    device: str | None = None,
    callbacks: list | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Train, then write the best adapter, train_log.jsonl and training_summary.json into out_dir.

    With `spec.wandb` the W&B run (named `run_name`) is written offline under out_dir/wandb.

    Extra callbacks run before the checkpoint keeper, so whatever they observe in a log record is what
    the keeper judges.
    """
    device = device or default_device()
    out_dir = Path(out_dir)
    pairs = read_pairs(pairs_path)
    train, held_out = split_pairs(pairs, spec.eval_share, spec.seed, groups=pair_groups(pairs_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".trainer"
    log_path = out_dir / "train_log.jsonl"
    log_path.unlink(missing_ok=True)
    best = _best_callback(log_path, work / "best", BEST_METRIC)
    if spec.wandb:
        wandb_environment(out_dir, project="agentq")
    start = time.perf_counter()
    trainer = build_trainer(Path(model_dir), train, held_out, spec, work, device,
                            callbacks=[*(callbacks or []), best], run_name=run_name)
    try:
        result = trainer.train()
    finally:
        if spec.wandb:
            _finish_wandb()
    final = trainer.state.global_step
    if best.best_step is None:  # nothing held out: the last adapter is all there is
        trainer.model.save_pretrained(work / "best")
    for name in ADAPTER_FILES:
        shutil.copyfile(work / "best" / name, out_dir / name)
    shutil.rmtree(work, ignore_errors=True)
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    summary = {
        "pairs": len(pairs),
        "train_pairs": len(train),
        "eval_pairs": len(held_out),
        "steps": final,
        "best_step": best.best_step if best.best_step is not None else final,
        "best_eval_reward_accuracy": best.best,
        "eval_history": [{"step": s, "reward_accuracy": v} for s, v in best.history],
        "final_train_metrics": train_logs[-1] if train_logs else {},
        "final_eval_reward_accuracy": best.history[-1][1] if best.history else None,
        "train_runtime_s": round(time.perf_counter() - start, 2),
        "train_loss": result.training_loss,
        "device": device,
        "base_model": str(model_dir),
        "spec": spec.model_dump(mode="json", by_alias=True),
    }
    atomic_write_json(out_dir / "training_summary.json", summary)
    return summary


def run(ws: Any) -> dict[str, Any]:
    """The round step: preferences from the store in, the best adapter published to rounds/<r>/adapter."""
    from agentq.workspace import digest

    spec = ws.round.spec.train
    _, model_digest = ws.model_source()
    inputs_digest = digest("train", ws.settings("train"), model_digest, ws.step_digest("preferences"))
    done_result = ws.finished("train", inputs_digest, "train")
    if done_result is not None:
        return done_result
    if spec.method in ("sft", "expert_iteration"):
        return _run_sft(ws, inputs_digest)
    if spec.method == "grpo":
        return _run_grpo(ws, inputs_digest)
    pairs_path = ws.fetch("preferences.jsonl")
    if not pairs_path.exists() or pairs_path.stat().st_size == 0:
        # The tests told no siblings apart (a weak model fails everything): nothing to learn, which is a
        # result, not an error. No adapter is written; merge then publishes the base unchanged.
        return ws.finish("train", inputs_digest, {"pairs": 0, "steps": 0},
                         f"train: no preference pairs in {ws.describe('preferences.jsonl')}: nothing to learn, "
                         "the round's model stays its base")
    from agentq.train.progress import StoreProgress

    shown = StoreProgress(ws.store, ws.key("progress/train.json"), "dpo")  # the dashboard's view of training
    with ws.store.writing_dir(ws.key("adapter")) as out_dir:
        summary = train_dpo(pairs_path, base_model_dir(ws), out_dir, spec, callbacks=[shown],
                            run_name=f"{ws.name}-train")
    result = {
        "pairs": summary["pairs"],
        "steps": summary["steps"],
        "bestStep": summary["best_step"],
        "rewardAccuracy": summary["best_eval_reward_accuracy"],
    }
    return ws.finish(
        "train", inputs_digest, result,
        f"train: {summary['steps']} steps on {summary['train_pairs']} pairs; best step {summary['best_step']} "
        f"(eval reward accuracy {summary['best_eval_reward_accuracy']}) -> {ws.describe('adapter')}",
    )


def _run_sft(ws: Any, inputs_digest: str) -> dict[str, Any]:
    from agentq.train.sft import expert_examples, train_sft

    spec = ws.round.spec.train
    path = ws.fetch("sft.jsonl")
    if spec.method == "expert_iteration" and path.exists():
        path = expert_examples(path, ws.work_path("expert.jsonl"), spec.examples_per_task)
    if not path.exists() or path.stat().st_size == 0:
        return ws.finish("train", inputs_digest, {"examples": 0, "steps": 0},
                         f"train: no SFT examples in {ws.describe('sft.jsonl')} (no attempt resolved its task): "
                         "nothing to learn, the round's model stays its base")
    with ws.store.writing_dir(ws.key("adapter")) as out_dir:
        summary = train_sft(path, base_model_dir(ws), out_dir, spec)
    return ws.finish("train", inputs_digest, {"examples": summary["examples"], "steps": summary["steps"]},
                     f"train ({spec.method}): {summary['steps']} steps on {summary['examples']} examples -> "
                     f"{ws.describe('adapter')}")


def _run_grpo(ws: Any, inputs_digest: str) -> dict[str, Any]:
    """GRPO on the training tasks' depth-1 prompts, rewarded by this round's sandbox."""
    from agentq.train.grpo import grpo_prompts, train_grpo

    spec = ws.round.spec
    tasks = {t.id: t for t in ws.tasks("train")[0] if t.kind == "function"}
    examples = grpo_prompts(list(ws.read_trajectories()), tasks)
    if not examples:
        raise ConfigError(f"{ws.source}: train.method grpo needs function tasks with collected trees; "
                          f"{len(tasks)} function tasks in spec.dataset.train, none with a depth-1 prompt")
    with ws.executor() as executor, ws.store.writing_dir(ws.key("adapter")) as out_dir:
        summary = train_grpo(examples, tasks, executor, base_model_dir(ws), out_dir, spec.train,
                             max_completion_length=spec.model.max_new_tokens, temperature=spec.collect.temperature)
    result = {"prompts": summary["prompts"], "steps": summary["steps"], "bestStep": summary["best_step"],
              "evalReward": summary["best_eval_reward"]}
    return ws.finish("train", inputs_digest, result,
                     f"train (grpo): {summary['steps']} steps on {summary['train_prompts']} prompts x "
                     f"{summary['group_size']} samples (KL {summary['kl_coef']}); best step {summary['best_step']} "
                     f"(held-out reward {summary['best_eval_reward']}) -> {ws.describe('adapter')}")


def main(args: argparse.Namespace) -> int:
    from agentq.workspace import RoundWorkspace

    run(RoundWorkspace.from_args(args))
    return 0
