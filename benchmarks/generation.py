"""Generation throughput: output tokens/s for one batch of full-rewrite prompts, K samples each, per backend.

Rows, all measured in this run on the same prompts: `hf` bf16, `hf` 4-bit NF4 (the original design's
inference setting), `vllm` bf16 where installed, plus `hf` fp32 on CPU. Rows that cannot run here are
listed with the reason. Ratios are against the NF4 row when it ran (what the original design used),
otherwise against the first row measured.

    python benchmarks/generation.py                        # CPU: tiny and SmolLM2-135M, proves it works
    python benchmarks/generation.py --model-shape qwen2.5-7b --write-docs   # GPU: random 7B-shaped weights
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentq.config import ModelSpec
from agentq.io import replace_markdown_section
from agentq.policy.base import PolicyError, Prompt, load_policy
from agentq.policy.prompts import rewrite_prompt

SECTION = "Generation"


@dataclass(frozen=True)
class Variant:
    label: str
    backend: str
    dtype: str
    quantization: str = "none"


VARIANTS = {
    "hf-fp32": Variant("hf fp32", "hf", "float32"),
    "hf-bf16": Variant("hf bf16", "hf", "bfloat16"),
    "hf-nf4": Variant("hf 4-bit NF4", "hf", "bfloat16", "nf4"),
    "vllm-bf16": Variant("vllm bf16", "vllm", "bfloat16"),
}
BASELINE = "hf-nf4"


def device_name() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    # CPU figures move with whatever else runs on the box, so the load is part of the result.
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"torch threads, load average {os.getloadavg()[0]:.1f} at the end of the run)")


def why_not(variant: Variant) -> str | None:
    """Why a row cannot run on this machine, checked before loading anything."""
    import importlib.util

    import torch

    if variant.quantization == "nf4" and not torch.cuda.is_available():
        return "needs CUDA (bitsandbytes 4-bit)"
    if variant.backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            return "vllm not installed"
        if not torch.cuda.is_available():
            return "needs CUDA"
    return None


def random_7b_dir() -> Path:
    """The Qwen2.5-Coder-7B shape with random weights, built on the GPU once and cached (about 15 GB)."""
    import hashlib

    import torch

    from agentq.cache import cached_build
    from agentq.policy.tiny import QWEN25_CODER_7B_ARCH, build_random_model

    key = hashlib.sha256(repr(sorted(QWEN25_CODER_7B_ARCH.items())).encode()).hexdigest()[:12]
    return cached_build(
        f"qwen2.5-coder-7b-shape-random-{key}",
        lambda d: build_random_model(d, QWEN25_CODER_7B_ARCH, device="cuda", dtype=torch.bfloat16),
    )


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(
    model: str, key: str, prompts: list[Prompt], *, k: int, temperature: float, max_new_tokens: int, seed: int
) -> dict[str, Any]:
    import torch

    variant = VARIANTS[key]
    row: dict[str, Any] = {"model": model, "variant": key, "label": variant.label,
                           "batch": f"{len(prompts)} x {k}", "temperature": temperature}
    reason = why_not(variant)
    if reason:
        return {**row, "skipped": reason}
    spec = ModelSpec(base=model, backend=variant.backend, dtype=variant.dtype, quantization=variant.quantization)
    free_memory()
    started = time.perf_counter()
    try:
        policy = load_policy(spec)
        # Warm-up: first calls pay for kernel selection and allocator growth, not generation.
        policy.generate(prompts[:1], n=1, temperature=temperature, max_new_tokens=4, seed=seed)
    except (PolicyError, RuntimeError, TypeError) as err:  # e.g. bf16 kernels missing on this CPU
        return {**row, "skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    load_s = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    out = policy.generate(prompts, n=k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    tokens = sum(s.tokens for group in out for s in group)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    del policy
    free_memory()
    return {**row, "load_s": round(load_s, 1), "seconds": round(seconds, 2), "tokens": tokens,
            "tok_per_s": round(tokens / seconds, 1), "tok_per_cpu_s": round(tokens / cpu_s, 1) if cpu_s else None,
            "peak_gpu_gb": round(peak, 1) if peak is not None else None}


def add_ratios(rows: list[dict[str, Any]]) -> str:
    """Ratio of each row's tok/s to the baseline of its model; returns the baseline's description."""
    measured = [r for r in rows if "tok_per_s" in r]
    for model in dict.fromkeys(r["model"] for r in measured):
        mine = [r for r in measured if r["model"] == model]
        base = next((r for r in mine if r["variant"] == BASELINE), mine[0])
        for r in mine:
            r["ratio"] = round(r["tok_per_s"] / base["tok_per_s"], 2)
    ran_baseline = any(r["variant"] == BASELINE for r in measured)
    return VARIANTS[BASELINE].label if ran_baseline else "the first measured row of each model"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | backend | prompts x K | new tokens | seconds | tok/s | ratio | load s | peak GPU GB | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['label']} | {r['batch']} | - | - | - | - | - | - | "
                         f"skipped: {r['skipped']} |")
            continue
        peak = r["peak_gpu_gb"] if r["peak_gpu_gb"] is not None else "-"
        note = "greedy" if r["temperature"] == 0 else f"T={r['temperature']}"
        lines.append(f"| {r['model']} | {r['label']} | {r['batch']} | {r['tokens']} | {r['seconds']:.2f} | "
                     f"{r['tok_per_s']:.1f} | {r['ratio']:.2f}x | {r['load_s']:.1f} | {peak} | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-shape", choices=["small", "qwen2.5-7b"], default="small",
                        help="small: tiny + smollm2-135m (CPU); qwen2.5-7b: random 7B-shaped weights (GPU)")
    parser.add_argument("--models", default=None, help="comma list of model bases (overrides --model-shape)")
    parser.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding humanevalfix/")
    parser.add_argument("--prompts", type=int, default=None, help="prompts in the batch (default 4 CPU, 8 GPU)")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 32 CPU, 512 GPU")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 is far faster on a CPU other processes also load (no "
                             "OpenMP threads waiting on each other's time slices)")
    parser.add_argument("--no-greedy-row", action="store_true",
                        help="skip the single-sequence greedy row per model (hf fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--write-docs", default=None, nargs="?", const="docs/benchmarks.md",
                        help=f"replace the '{SECTION}' section of this markdown file (default docs/benchmarks.md)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON last")
    args = parser.parse_args(argv)

    import torch

    from agentq.tasks.humanevalfix import load_humanevalfix

    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    big = args.model_shape == "qwen2.5-7b"
    if big and not gpu:
        parser.error("--model-shape qwen2.5-7b needs a CUDA GPU (a 7B model generates ~1 token/s on a small CPU)")
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        models = [str(random_7b_dir())] if big else ["tiny", "smollm2-135m"]
    default_variants = ["hf-bf16", "hf-nf4", "vllm-bf16"] if gpu else ["hf-fp32", "hf-bf16", "hf-nf4", "vllm-bf16"]
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else default_variants
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    n_prompts = args.prompts or (8 if gpu else 4)
    max_new_tokens = args.max_new_tokens or (512 if gpu else 32)
    tasks = load_humanevalfix(args.data_dir)[:n_prompts]
    prompts = [rewrite_prompt(t) for t in tasks]

    rows = []
    for model in models:
        for key in variants:
            print(f"generation: {model} {key} ...", file=sys.stderr, flush=True)
            rows.append(measure(model, key, prompts, k=args.k, temperature=args.temperature,
                                max_new_tokens=max_new_tokens, seed=args.seed))
        if not args.no_greedy_row:
            key = "hf-bf16" if gpu else "hf-fp32"
            print(f"generation: {model} {key} greedy x1 ...", file=sys.stderr, flush=True)
            rows.append(measure(model, key, prompts[:1], k=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                seed=args.seed))
    baseline = add_ratios(rows)

    shown = [Path(m).name if Path(m).is_absolute() else m for m in models]
    shape = "Qwen2.5-Coder-7B shape (random weights)" if big else ", ".join(shown)
    command = " ".join(["python benchmarks/generation.py", *(argv if argv is not None else sys.argv[1:])])
    section = (
        f"## {SECTION}\n\nDevice: {device_name()}. Model: {shape}. The same {len(prompts)} HumanEvalFix "
        f"full-rewrite prompts, K={args.k} samples each in one batched call, up to {max_new_tokens} new tokens, "
        f"seed {args.seed}; tok/s counts generated tokens (up to and including end-of-sequence) over the "
        f"generate call's wall time, after a warm-up call. Ratio: tok/s over {baseline}. The greedy row is one "
        "prompt, one sequence.\n\n"
        + table(rows)
        + f"\n\nCommand: `{command}`\n"
    )
    if not gpu:
        section += (
            "\nMeasured on CPU only: no GPU was available when this was written, so the NF4 and vLLM rows and the "
            "7B-shaped run (`--model-shape qwen2.5-7b`) have not been measured yet.\n"
        )
    print(section)
    if args.write_docs:
        replace_markdown_section(args.write_docs, SECTION, section)
        print(f"wrote the {SECTION} section of {args.write_docs}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
