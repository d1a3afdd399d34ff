"""Sampling speed inside the round's steps: output tokens/s of collect and evaluate next to generation.py's figure.

`benchmarks/generation.py` measures what the backend does with one batched call (the same prompts, K samples
each, after a warm-up). A round's steps add everything around it: the search's bookkeeping, the sandbox, the
scheduler's batching, the tail when few trees are left. This runs all three in one process on the same model,
backend and token limit: generation.py's `measure` on the collect tasks' first prompts (treesInFlight x K),
then the real collect step on those tasks (tokens over the search loop's wall time), then evaluate's
single-prompt mode on test tasks (`mode_records`, greedy + samples), then generation.py's measure again (the
bare figure is the mean of the two, which bracket the steps). The figure that matters is the ratio
generation / step (1.0: the step samples as fast as the bare backend; the issue asks for at most 1.5). The
load average is printed at the start and the end: on a shared machine absolute figures move, the ratios
measured in one run much less.

    python benchmarks/sampling.py --json                          # SmolLM2-135M bf16 on this CPU
    python benchmarks/sampling.py --model tiny --tasks 4 --test-tasks 4 --max-new-tokens 32 --json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from generation import measure  # noqa: E402  (the generation benchmark's own measurement)

from agentq import collect  # noqa: E402
from agentq.config import load_round  # noqa: E402
from agentq.evaluate import mode_records  # noqa: E402
from agentq.io import read_jsonl  # noqa: E402
from agentq.policy.base import load_policy, reusing_policies  # noqa: E402
from agentq.policy.prompts import rewrite_prompt  # noqa: E402
from agentq.tasks.schema import read_tasks, write_tasks  # noqa: E402
from agentq.workspace import RoundWorkspace  # noqa: E402


def round_document(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": "sampling"},
        "spec": {
            "model": {"base": args.model, "backend": "hf", "dtype": args.dtype, "maxNewTokens": args.max_new_tokens},
            "dataset": {"train": "train.jsonl", "test": "test.jsonl"},
            "collect": {"shards": 1, "k": args.k, "rollouts": args.rollouts, "depth": 2, "critic": "none",
                        "treesInFlight": args.in_flight},
            "evaluate": {"modes": ["full_rewrite"], "samples": args.samples},
            "sandbox": {"timeoutSeconds": 5},
            "store": {"path": "store"},
        },
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--train-file", default=str(ROOT / "data" / "humanevalfix.train.jsonl"))
    parser.add_argument("--test-file", default=str(ROOT / "data" / "humanevalfix.test.jsonl"))
    parser.add_argument("--tasks", type=int, default=8, help="collect tasks (one tree each)")
    parser.add_argument("--test-tasks", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=8, help="collect.treesInFlight (and evaluate's batch)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="evaluate's sampled answers per task")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started_load = loadavg()
    work = Path(tempfile.mkdtemp(prefix="agentq-sampling-"))
    train = read_tasks(args.train_file)[: args.tasks]
    test = read_tasks(args.test_file)[: args.test_tasks]
    write_tasks(work / "train.jsonl", train)
    write_tasks(work / "test.jsonl", test)
    (work / "round.yaml").write_text(yaml.safe_dump(round_document(args), sort_keys=False))
    ws = RoundWorkspace(load_round(work / "round.yaml"), str(work / "round.yaml"))
    spec = ws.round.spec

    variant = "hf-bf16" if args.dtype == "bfloat16" else "hf-fp32"
    prompts = [rewrite_prompt(t) for t in train[: args.in_flight]]
    print(f"sampling: generation benchmark ({len(prompts)} prompts x {args.k}) ...", file=sys.stderr, flush=True)
    generation = measure(args.model, variant, prompts, k=args.k, temperature=spec.collect.temperature,
                         max_new_tokens=args.max_new_tokens, seed=0)
    rows: dict[str, Any] = {"generation": generation}
    with reusing_policies():
        # loaded before the steps (they find it loaded): their CPU time is then the sampling's, not the load's
        policy = load_policy(spec.model, path_override=ws.model_source()[0])
        print("sampling: collect ...", file=sys.stderr, flush=True)
        cpu = time.process_time()
        result = collect.run(ws, 0, 1)
        cpu_s = time.process_time() - cpu
        tokens = sum(r["stats"]["tokens_out"] for r in read_jsonl(ws.fetch(ws.shard_key(0, 1))))
        rows["collect"] = {"tasks": result["tasks"], "samples": result["samples"], "tokens": tokens,
                           "tok_per_s": result["tokensPerSecond"], "tok_per_cpu_s": round(tokens / cpu_s, 1)}
        print("sampling: evaluate (full_rewrite) ...", file=sys.stderr, flush=True)
        with ws.runner() as executor:
            start, cpu = time.perf_counter(), time.process_time()
            records = list(mode_records("full_rewrite", test, policy, executor, spec))
            seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
        tokens = sum(r["tokens_out"] for r in records)
        rows["evaluate"] = {"tasks": len(records), "answers": sum(r["n"] + 1 for r in records),
                            "tokens": tokens, "seconds": round(seconds, 1), "tok_per_s": round(tokens / seconds, 1),
                            "tok_per_cpu_s": round(tokens / cpu_s, 1)}
    # Measured again after the steps: on a shared machine the load moves, and the mean of the two bare figures
    # brackets the steps' measurements (their spread says how much the load moved meanwhile).
    print("sampling: generation benchmark again ...", file=sys.stderr, flush=True)
    again = measure(args.model, variant, prompts, k=args.k, temperature=spec.collect.temperature,
                    max_new_tokens=args.max_new_tokens, seed=0)
    rows["generation_after"] = again
    figures = [g["tok_per_s"] for g in (generation, again) if g.get("tok_per_s")]
    bare = round(sum(figures) / len(figures), 1) if figures else None
    out = {"model": args.model, "dtype": args.dtype, "max_new_tokens": args.max_new_tokens, "k": args.k,
           "in_flight": args.in_flight, "rows": rows, "generation_tok_per_s": bare,
           "loadavg_start": started_load, "loadavg_end": loadavg(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    cpu_figures = [g["tok_per_cpu_s"] for g in (generation, again) if g.get("tok_per_cpu_s")]
    bare_cpu = sum(cpu_figures) / len(cpu_figures) if cpu_figures else None
    for step in ("collect", "evaluate"):
        mine, mine_cpu = rows[step]["tok_per_s"], rows[step]["tok_per_cpu_s"]
        out[f"generation_over_{step}"] = round(bare / mine, 2) if bare and mine else None
        # per CPU-second of this process: what the step's own code costs, whatever the neighbours' load
        out[f"generation_over_{step}_cpu"] = round(bare_cpu / mine_cpu, 2) if bare_cpu and mine_cpu else None
    print(f"load average {started_load} -> {out['loadavg_end']} ({os.cpu_count()} cores)")
    print(f"generation.py measure: {bare} tok/s (mean of {figures} before and after the steps; "
          f"{generation.get('batch')}, up to {args.max_new_tokens} tokens)")
    for step in ("collect", "evaluate"):
        print(f"{step}: {rows[step]['tok_per_s']} tok/s; generation / {step} = {out[f'generation_over_{step}']} "
              f"(per CPU-second of this process: {out[f'generation_over_{step}_cpu']})")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
