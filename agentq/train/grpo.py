"""`train.method: grpo`: GRPO (Shao et al., 2024) with the sandbox as the verifiable reward, through TRL's GRPOTrainer.

Preference pairs need siblings the tests tell apart, and a weak model passes rarely: most of its collected
trees make no pair. GRPO learns from the rewards themselves: for each training prompt it samples a group
(`train.grpo.groupSize`), runs every completion against the task's visible + hidden tests in the sandbox (the
reward is the share of tests passed, 0 for an answer with no program), and pushes up the completions better
than their group's mean, with a KL penalty (`train.grpo.klCoef`) to the starting model. A group whose rewards
are all equal teaches nothing, so the prompts are the tasks whose collected trees saw rewards differ (all
training tasks when none did). The prompts are the trees' depth-1 prompts, exactly what collection asked.

With `train.evalShare` > 0, whole tasks are held out and the checkpoint kept is the one with the best mean
reward on them (TRL's `eval_reward`: completions sampled and run in the sandbox like training ones): the
validation pass rate chooses, not the last step. Repository tasks are not trained with GRPO here (a patch run
takes seconds to minutes; the round says so in one line).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from agentq.config import ConfigError, TrainSpec
from agentq.io import atomic_write_json
from agentq.search.problems import FunctionProblem
from agentq.tasks.schema import Task

REWARD_METRIC = "eval_reward"


class SandboxReward:
    """TRL reward function: each completion's share of its task's tests passed (visible + hidden), 0 without a
    program; one sandbox batch per call. `__name__` is what TRL logs the reward under."""

    __name__ = "tests"

    def __init__(self, tasks: dict[str, Task], executor: Any) -> None:
        self.tasks, self.executor = tasks, executor
        self.calls = 0

    def __call__(self, prompts: list, completions: list, task_id: list[str], **_: Any) -> list[float]:
        self.calls += 1
        problems = [FunctionProblem(self.tasks[t], self.executor) for t in task_id]
        readings = [p.read(_text(c)) for p, c in zip(problems, completions, strict=True)]
        runnable = [i for i, r in enumerate(readings) if r.code is not None]
        verdicts = self.executor.run_many([problems[i].job(readings[i].code) for i in runnable]) if runnable else []
        rewards = [0.0] * len(completions)
        for i, verdict in zip(runnable, verdicts, strict=True):
            rewards[i] = float(verdict.reward)
        return rewards


def _text(completion: Any) -> str:
    """A completion as TRL hands it over: a string, or chat messages (the assistant's answer)."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion)


def grpo_prompts(records: list[dict[str, Any]], tasks: dict[str, Task]) -> list[dict[str, Any]]:
    """One example per function task: its tree's depth-1 prompt and task id; tasks whose collected rewards
    differed first (only those, when any did: a group of equal rewards has no advantage to learn from)."""
    mixed, flat = [], []
    for record in records:
        if record["task_id"] not in tasks:
            continue
        depth1 = [n for n in record["nodes"] if n["depth"] == 1]
        if not depth1:
            continue
        example = {"prompt": depth1[0]["prompt"], "task_id": record["task_id"], "group": record.get("group")}
        rewards = {round(n["reward"], 6) for n in record["nodes"][1:]}
        (mixed if len(rewards) > 1 else flat).append(example)
    return mixed or flat


def grpo_config(spec: TrainSpec, work_dir: Path, device: str, *, max_completion_length: int, temperature: float,
                has_eval: bool) -> Any:
    from trl import GRPOConfig

    on_gpu = device != "cpu"
    group = spec.grpo.group_size
    per_device = max(group, min(spec.per_device_batch_size, spec.effective_batch_size) // group * group)
    return GRPOConfig(
        output_dir=str(work_dir), learning_rate=spec.learning_rate, beta=spec.grpo.kl_coef,
        num_generations=group, per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=max(1, spec.effective_batch_size // per_device),
        max_completion_length=max_completion_length, temperature=temperature,
        num_train_epochs=spec.epochs, max_steps=spec.max_steps or -1,
        gradient_checkpointing=spec.gradient_checkpointing, bf16=on_gpu, use_cpu=not on_gpu,
        logging_steps=1, eval_strategy="steps" if has_eval else "no", eval_steps=spec.eval_steps,
        save_strategy="no", report_to=["wandb"] if spec.wandb else "none", seed=spec.seed, data_seed=spec.seed,
        dataloader_num_workers=0,
    )


def train_grpo(examples: list[dict[str, Any]], tasks: dict[str, Task], executor: Any, model_dir: str | Path,
               out_dir: str | Path, spec: TrainSpec, *, max_completion_length: int, temperature: float,
               device: str | None = None) -> dict[str, Any]:
    """Train, then write the adapter (best held-out reward when tasks are held out, else the last),
    train_log.jsonl and training_summary.json into out_dir."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from agentq.train.base_model import load_base
    from agentq.train.dpo import ADAPTER_FILES, _best_callback, default_device, lora_config, split_pairs
    from agentq.train.progress import use_step_bar

    if not examples:
        raise ConfigError("train.method grpo: no function-task prompts to train on (repo tasks are not supported)")
    device = device or default_device()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, held_out = split_pairs(examples, spec.eval_share, spec.seed,
                                  groups=[str(e.get("group") or e["task_id"]) for e in examples])
    work = out_dir / ".trainer"
    log_path = out_dir / "train_log.jsonl"
    log_path.unlink(missing_ok=True)
    best = _best_callback(log_path, work / "best", REWARD_METRIC)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    reward = SandboxReward(tasks, executor)
    args = grpo_config(spec, work, device, max_completion_length=max_completion_length, temperature=temperature,
                       has_eval=bool(held_out))
    columns = ("prompt", "task_id")
    start = time.perf_counter()
    trainer = use_step_bar(GRPOTrainer(
        model=load_base(model_dir, spec, device), reward_funcs=[reward], args=args,
        train_dataset=Dataset.from_list([{k: e[k] for k in columns} for e in train]),
        eval_dataset=Dataset.from_list([{k: e[k] for k in columns} for e in held_out]) if held_out else None,
        processing_class=tokenizer, peft_config=lora_config(spec), callbacks=[best],
    ))
    result = trainer.train()
    if best.best_step is None:  # nothing held out: the last adapter is all there is
        trainer.model.save_pretrained(work / "best")
    for name in ADAPTER_FILES:
        (out_dir / name).write_bytes((work / "best" / name).read_bytes())
    logs = [e for e in trainer.state.log_history if "loss" in e]  # train_log.jsonl: written step by step
    rewards = [e["reward"] for e in logs if "reward" in e]
    summary = {"method": "grpo", "prompts": len(examples), "train_prompts": len(train), "eval_prompts": len(held_out),
               "steps": trainer.state.global_step,
               "best_step": best.best_step if best.best_step is not None else trainer.state.global_step,
               "best_eval_reward": best.best, "eval_history": [{"step": s, "reward": v} for s, v in best.history],
               "train_rewards": rewards, "reward_calls": reward.calls, "train_loss": result.training_loss,
               "group_size": spec.grpo.group_size, "kl_coef": spec.grpo.kl_coef,
               "train_runtime_s": round(time.perf_counter() - start, 2), "device": device,
               "base_model": str(model_dir), "spec": spec.model_dump(mode="json", by_alias=True)}
    atomic_write_json(out_dir / "training_summary.json", summary)
    shutil.rmtree(work, ignore_errors=True)
    return summary
