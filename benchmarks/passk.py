"""pass@k curves of a model on a slice of tasks: where does the base pass sometimes, so the loop has signal?

Preference pairs need siblings the tests tell apart, expert iteration needs passing samples, GRPO needs
groups whose rewards differ. A slice where the model never passes (or always does) teaches nothing, so the
quickstart and the learning benchmark pick their slice and budget from this: n samples per task through
evaluate's own full_rewrite path (batched, judged on visible + hidden tests), the unbiased pass@k for
k = 1, 2, 4, ... n (Chen et al.), and per task the share of samples that pass, the mean graded reward, and
whether its samples' rewards differ by more than the pair threshold (a task that can make pairs).

    python benchmarks/passk.py --tasks 24 --samples 16 --json            # SmolLM2-135M bf16, HumanEvalFix train
    python benchmarks/passk.py --model tiny --dtype float32 --tasks 2 --samples 4 --json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from agentq.config import RoundSpec
from agentq.evaluate import answer_records
from agentq.policy.base import load_policy
from agentq.sandbox.executor import LocalExecutor
from agentq.sandbox.limits import Limits
from agentq.stats import pass_at_k
from agentq.tasks.schema import read_tasks

ROOT = Path(__file__).resolve().parents[1]


def curve(records: list[dict[str, Any]], n: int) -> dict[int, float]:
    """Mean unbiased pass@k over tasks, for k = 1, 2, 4, ... up to n (and n itself)."""
    ks = sorted({*(2 ** i for i in range(n.bit_length()) if 2 ** i <= n), n})
    return {k: round(sum(pass_at_k(r["n"], r["correct"], k) for r in records) / len(records), 4) for k in ks}


def task_rows(records: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        rewards = [s.get("reward", 0.0) for s in r["samples"] if not s["parse_failure"]]
        rows.append({"task_id": r["task_id"], "passed": r["correct"], "n": r["n"],
                     "parse_failures": sum(s["parse_failure"] for s in r["samples"]),
                     "mean_reward": round(sum(rewards) / len(r["samples"]), 3),
                     "pairable": bool(rewards) and max(rewards) - min(rewards) > threshold})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tasks-file", default=str(ROOT / "data" / "humanevalfix.train.jsonl"))
    parser.add_argument("--offset", type=int, default=0, help="skip this many tasks of the file first")
    parser.add_argument("--tasks", type=int, default=24)
    parser.add_argument("--samples", type=int, default=16, help="n samples per task (k runs up to n; <= 64)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="tasks per generate call")
    parser.add_argument("--threshold", type=float, default=0.1, help="preferences.threshold, for `pairable`")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.samples <= 64:
        parser.error("--samples must be 1..64")

    tasks = read_tasks(args.tasks_file)[args.offset: args.offset + args.tasks]
    spec = RoundSpec.model_validate({
        "model": {"base": args.model, "backend": "hf", "dtype": args.dtype, "maxNewTokens": args.max_new_tokens},
        "dataset": {"train": args.tasks_file, "test": args.tasks_file},
        "collect": {"temperature": args.temperature},
        "evaluate": {"modes": ["full_rewrite"], "samples": args.samples},
        "store": {"path": "unused"},
    })
    load_start = os.getloadavg()
    policy = load_policy(spec.model)
    start = time.perf_counter()
    with LocalExecutor(limits=Limits(timeout_s=5)) as executor:
        records = list(answer_records(tasks, "full_rewrite", policy, executor, spec, args.batch))
    seconds = time.perf_counter() - start
    rows = task_rows(records, args.threshold)
    tokens = sum(r["tokens_out"] for r in records)
    out = {"model": args.model, "dtype": args.dtype, "tasks_file": args.tasks_file, "offset": args.offset,
           "tasks": len(tasks), "samples": args.samples, "temperature": args.temperature,
           "max_new_tokens": args.max_new_tokens, "pass_at_k": curve(records, args.samples),
           "greedy_solved": sum(r["solved"] for r in records),
           "tasks_with_a_pass": sum(r["passed"] > 0 for r in rows),
           "pairable_tasks": sum(r["pairable"] for r in rows),
           "parse_failure_share": round(sum(r["parse_failures"] for r in rows) / (len(rows) * args.samples), 3),
           "mean_reward": round(sum(r["mean_reward"] for r in rows) / len(rows), 3),
           "seconds": round(seconds, 1), "tok_per_s": round(tokens / seconds, 1),
           "loadavg_start": [round(x, 2) for x in load_start],
           "loadavg_end": [round(x, 2) for x in os.getloadavg()], "per_task": rows}
    print(f"{args.model} on {len(tasks)} tasks of {Path(args.tasks_file).name} (from {args.offset}), "
          f"{args.samples} samples at T={args.temperature}: " +
          ", ".join(f"pass@{k} {v:.1%}" for k, v in out["pass_at_k"].items()))
    print(f"tasks with a pass {out['tasks_with_a_pass']}/{len(tasks)}, pairable {out['pairable_tasks']}/{len(tasks)}, "
          f"parse failures {out['parse_failure_share']:.0%}, mean reward {out['mean_reward']:.2f}; "
          f"{out['seconds']}s, {out['tok_per_s']} tok/s, load average {out['loadavg_start']} -> {out['loadavg_end']}")
    for r in rows:
        print(f"  {r['task_id']}: {r['passed']}/{r['n']} pass, mean reward {r['mean_reward']:.2f}"
              f"{', pairable' if r['pairable'] else ''}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
