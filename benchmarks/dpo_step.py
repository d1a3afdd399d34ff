"""DPO step cost: the original design's training configuration against ours, same pairs, one run.

Original (Agent Q reproduction): bf16 on GPU, LoRA r=32 on the seven projections, gradient checkpointing,
effective batch 16 as 1 x 16 accumulation, and a reference forward (adapter disabled) on every step.
Ours, one change per row so each gain is attributable:
  +precompute  reference log-probs computed once before training (TRL precompute_ref_log_probs), in
               batches of 16, so each step runs only the policy; the precompute time is counted
  +batch4      4 pairs per device x 4 accumulation (same effective batch of 16): fewer, fuller kernels
  +no-ckpt     no gradient checkpointing (no recomputed forward), where memory allows
Padding-free batches are not in this table: TRL 1.16 accepts `padding_free=True` but warns and falls
back to padded batches ("temporarily unavailable since the DPO refactor"), so it would measure nothing.

    python benchmarks/dpo_step.py                                  # CPU: tiny model, proves it works
    python benchmarks/dpo_step.py --model-shape qwen2.5-7b --write-docs   # GPU: random 7B-shaped weights
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentq.config import TrainSpec
from agentq.io import replace_markdown_section
from agentq.policy.tiny import QWEN25_CODER_7B_ARCH

SECTION = "DPO step"
ORIGINAL_MINUTES, ORIGINAL_PAIRS = 19, 1352  # the original round on one H100
VARIANTS: dict[str, dict[str, Any]] = {
    "original": {"precompute_ref_log_probs": False},  # TrainSpec's default is now precompute on
    "+precompute": {"precompute_ref_log_probs": True, "precompute_ref_batch_size": 16},
    "+batch4": {"precompute_ref_log_probs": True, "precompute_ref_batch_size": 16, "per_device": 4},
    "+no-ckpt": {
        "precompute_ref_log_probs": True,
        "precompute_ref_batch_size": 16,
        "per_device": 4,
        "checkpointing": False,
    },
}
WORDS = (
    "def",
    "return",
    "if",
    "else",
    "for",
    "in",
    "range",
    "len",
    "while",
    "None",
    "True",
    "result",
    "items",
    "value",
    "index",
    "count",
    "total",
    "append",
    "sorted",
    "key",
    "lambda",
    "x",
    "y",
    "n",
    "+",
    "-",
    "==",
    "<",
    ">",
    "(",
    ")",
    ":",
    "[",
    "]",
    ",",
    "0",
    "1",
    "2",
)


def code_text(rng: random.Random, tokenizer: Any, tokens: int) -> str:
    """Code-looking text cut to exactly `tokens` tokens, so both variants see identical lengths."""
    lines = []
    while len(tokenizer("\n".join(lines))["input_ids"]) < tokens + 8:
        lines.append("    " * rng.randint(0, 2) + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))))
    return tokenizer.decode(tokenizer("\n".join(lines))["input_ids"][:tokens])


def make_pairs(tokenizer: Any, n: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        # sibling rewrites vary in length around the target, which is what makes padding cost something
        c_len = max(8, int(completion_tokens * rng.uniform(0.6, 1.0)))
        r_len = max(8, int(completion_tokens * rng.uniform(0.6, 1.0)))
        pairs.append(
            {
                "prompt": [{"role": "user", "content": "Fix the bug:\n" + code_text(rng, tokenizer, prompt_tokens)}],
                "chosen": [{"role": "assistant", "content": code_text(rng, tokenizer, c_len)}],
                "rejected": [{"role": "assistant", "content": code_text(rng, tokenizer, r_len)}],
            }
        )
    return pairs


def random_7b(device: str) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device(device):
        return Qwen2ForCausalLM(Qwen2Config(**QWEN25_CODER_7B_ARCH)).to(torch.bfloat16)


def run_variant(
    name: str, pairs: list[dict], model_dir: Path, spec: TrainSpec, device: str, shape: str, steps: int
) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    from agentq.train.dpo import build_trainer

    opts = dict(VARIANTS[name])
    per_device = opts.pop("per_device", 1)
    spec = spec.model_copy(
        update={
            "per_device_batch_size": per_device,
            "gradient_checkpointing": opts.pop("checkpointing", True),
            "max_steps": steps,
        }
    )
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device != "cpu":
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    work = Path(tempfile.mkdtemp(prefix=f"dpo-bench-{name.strip('+')}-"))
    try:
        model = random_7b(device) if shape == "qwen2.5-7b" else None
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        setup_start = time.perf_counter()
        # a fresh dataset cache dir per variant: TRL caches precomputed log-probs by fingerprint
        trainer = build_trainer(
            model_dir,
            pairs,
            [],
            spec,
            work,
            device,
            callbacks=[StepClock()],
            model=model,
            report_to="none",
            logging_steps=max(1, steps),
            **opts,
        )
        setup_s = time.perf_counter() - setup_start
        train_start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - train_start
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None
        del trainer, model
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if device != "cpu":
            torch.cuda.empty_cache()
    durations = [b - a for a, b in zip([train_start, *step_ends], step_ends, strict=False)]
    # the first step pays for allocator warm-up and kernel selection; steady state is what a round runs at
    steady = statistics.median(durations[1:]) if len(durations) > 1 else durations[0]
    return {
        "variant": name,
        "per_device": per_device,
        "accumulation": spec.effective_batch_size // per_device,
        "checkpointing": spec.gradient_checkpointing,
        "precompute": bool(opts.get("precompute_ref_log_probs")),
        "setup_s": round(setup_s, 2),
        "train_s": round(train_s, 2),
        "steps": len(durations),
        "pairs": len(durations) * spec.effective_batch_size,
        "s_per_step": round(steady, 3),
        "peak_gpu_gb": round(peak_gb, 1) if peak_gb is not None else None,
    }


def add_totals(rows: list[dict[str, Any]]) -> None:
    """Charge precompute to the variants that use it: their extra setup time over the original's (which
    tokenizes the same pairs and loads the same model), spread over the steps it serves."""
    for r in rows:
        precompute_s = max(0.0, r["setup_s"] - rows[0]["setup_s"]) if r["precompute"] else 0.0
        r["precompute_s"] = round(precompute_s, 2)
        r["s_per_step_incl_precompute"] = round(r["s_per_step"] + precompute_s / r["steps"], 3)
        r["pairs_per_s"] = round(r["pairs"] / (r["train_s"] + precompute_s), 3)


def device_name(device: str) -> str:
    import platform

    import torch

    if device == "cpu":
        # other work on a shared machine skews CPU figures; say how busy it was
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads, load average {load})"
    return torch.cuda.get_device_name(0)


def table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    lines = [
        "| variant | batch x accum | ckpt | ref log-probs | s/step | s/step incl. precompute | pairs/s | "
        "speed-up vs original | peak GPU GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['per_device']} x {r['accumulation']} | {'yes' if r['checkpointing'] else 'no'} | "
            f"{'precomputed' if r['precompute'] else 'every step'} | {r['s_per_step']:.3f} | "
            f"{r['s_per_step_incl_precompute']:.3f} | {r['pairs_per_s']:.2f} | "
            f"{base['s_per_step_incl_precompute'] / r['s_per_step_incl_precompute']:.2f}x | "
            f"{r['peak_gpu_gb'] if r['peak_gpu_gb'] is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=["tiny", "qwen2.5-7b"], default="tiny")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 3 tiny, 6 7b)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 128 tiny, 700 7b")
    parser.add_argument("--completion-tokens", type=int, default=None, help="default 96 tiny, 450 7b")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument(
        "--write-docs",
        default=None,
        nargs="?",
        const="docs/benchmarks.md",
        help="replace the 'DPO step' section of this markdown file (default docs/benchmarks.md)",
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 avoids OpenMP spin-waiting on a machine shared with other work")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON last")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from agentq.policy.tiny import tiny_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    big = args.model_shape == "qwen2.5-7b"
    if big and device == "cpu":
        parser.error("--model-shape qwen2.5-7b needs a GPU")
    steps = args.steps or (6 if big else 3)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or names[:1] != ["original"]:
        parser.error(f"--variants must start with 'original' and use only {', '.join(VARIANTS)} (got {names})")
    model_dir = tiny_model_dir()  # the tokenizer (and for --model-shape tiny, the weights)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_tokens = args.prompt_tokens or (700 if big else 128)
    completion_tokens = args.completion_tokens or (450 if big else 96)
    spec = TrainSpec(max_length=prompt_tokens + completion_tokens + 64, eval_share=0.0)
    pairs = make_pairs(tokenizer, steps * spec.effective_batch_size, prompt_tokens, completion_tokens)

    rows = []
    for name in names:
        print(f"dpo_step: {name} ...", file=sys.stderr, flush=True)
        rows.append(run_variant(name, pairs, model_dir, spec, device, args.model_shape, steps))
    add_totals(rows)

    shape = "Qwen2.5-Coder-7B shape, random weights, bf16" if big else "tiny random Qwen2 (agentq.policy.tiny), fp32"
    header = (
        f"## DPO step\n\nDevice: {device_name(device)}. Model: {shape}; LoRA r=32/alpha=64 on the seven "
        f"projections; effective batch 16; {steps} optimizer steps per variant on the same "
        f"{len(pairs)} pairs (prompt {prompt_tokens} tokens, completions 60-100% of {completion_tokens}). "
        f"s/step is the median after the first step; precompute time is spread over the steps it serves. "
        f"Reference: the original round took {ORIGINAL_MINUTES} min for {ORIGINAL_PAIRS} pairs on one H100 "
        f"({ORIGINAL_MINUTES * 60 / (ORIGINAL_PAIRS / 16):.1f} s/step); the goal is half.\n"
    )
    section = (
        header
        + "\n"
        + table(rows)
        + "\n\nCommand: `python benchmarks/dpo_step.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`\n"
    )
    print(section)
    if args.write_docs:
        replace_markdown_section(args.write_docs, SECTION, section)
        print(f"wrote the DPO step section of {args.write_docs}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
