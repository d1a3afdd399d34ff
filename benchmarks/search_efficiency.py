"""Search efficiency: MCTS against best-of-N sampling at the same sample budget, on HumanEvalFix.

The scripted backend answers with the reference at a fixed per-sample probability, so every method
faces the same odds per sample; what differs is how many samples and sandbox executions each spends
before a task is solved. Solved tasks per execution and per sample are the figures search changes are
judged by. The scripted policy does not get better with feedback the way a real model may, so this
isolates the search's bookkeeping (early stops, parse errors, critique calls), not repair skill.

    python benchmarks/search_efficiency.py --p-success 0.2 --budget 8 --tasks 164
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from agentq.config import ScriptedSpec
from agentq.policy.prompts import extract_code, rewrite_prompt
from agentq.policy.scripted import ScriptedPolicy
from agentq.sandbox import Limits, LocalExecutor
from agentq.search.mcts import Search, SearchParams
from agentq.tasks.humanevalfix import load_humanevalfix


@dataclass
class Tally:
    solved: int = 0
    samples: int = 0
    executions: int = 0
    seconds: float = 0.0


def best_of_n(task, policy, executor, n: int, batch: int, seed: int, tally: Tally) -> None:
    """n samples of the root prompt, drawn `batch` at a time, stopping at the first full pass."""
    for start in range(0, n, batch):
        size = min(batch, n - start)
        samples = policy.generate([rewrite_prompt(task)], n=size, temperature=0.8, max_new_tokens=512,
                                  seed=seed + start)[0]
        codes = [c for c in (extract_code(s.text, task.entry_point) for s in samples) if c is not None]
        verdicts = executor.run_many([(c, task.all_tests()) for c in codes])
        tally.samples += len(samples)
        tally.executions += len(codes)
        if any(v.passed for v in verdicts):
            tally.solved += 1
            return


def mcts(task, policy, executor, params: SearchParams, tally: Tally) -> None:
    search = Search(task, policy, executor, params).run()
    tally.samples += search.stats.samples
    tally.executions += search.stats.executions
    tally.solved += search.solved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--tasks", type=int, default=164)
    parser.add_argument("--p-success", type=float, default=0.2, help="per-sample chance of the reference")
    parser.add_argument("--budget", type=int, default=8, help="samples per task for every method")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rest = 1.0 - args.p_success
    mix = ScriptedSpec(p_reference=args.p_success, p_buggy=rest * 0.4, p_mutant=rest * 0.5, p_garbage=rest * 0.1)
    policy = ScriptedPolicy(mix)
    tasks = load_humanevalfix(args.data_dir)[: args.tasks]
    depth = 3
    params = SearchParams(k=args.k, rollouts=args.budget // args.k, depth=depth, seed=args.seed)
    n = args.budget
    methods = {
        f"best-of-{n}": lambda t, ex, tl: best_of_n(t, policy, ex, n, n, args.seed, tl),
        f"best-of-{n} stop k={args.k}": lambda t, ex, tl: best_of_n(t, policy, ex, n, args.k, args.seed, tl),
        f"mcts k={args.k} r={params.rollouts} d={depth}": lambda t, ex, tl: mcts(t, policy, ex, params, tl),
    }
    print(f"{len(tasks)} HumanEvalFix tasks, per-sample success p={args.p_success}, budget {args.budget} samples/task")
    rows = []
    with LocalExecutor(limits=Limits(timeout_s=3.0)) as executor:
        for name, run in methods.items():
            tally = Tally()
            start = time.perf_counter()
            for task in tasks:
                run(task, executor, tally)
            tally.seconds = time.perf_counter() - start
            rows.append((name, tally))
    header = (f"{'method':<24} {'solved':>7} {'samples':>8} {'execs':>6} {'solved/sample':>14} "
              f"{'solved/exec':>12} {'s':>6}")
    print(header)
    print("-" * len(header))
    for name, t in rows:
        print(f"{name:<24} {t.solved:>7} {t.samples:>8} {t.executions:>6} {t.solved / max(t.samples, 1):>14.3f} "
              f"{t.solved / max(t.executions, 1):>12.3f} {t.seconds:>6.1f}")
    base = rows[0][1]
    for name, t in rows[1:]:
        ratio = (t.solved / max(t.executions, 1)) / max(base.solved / max(base.executions, 1), 1e-9)
        print(f"{name}: solved per execution = {ratio:.2f}x {rows[0][0]}")


if __name__ == "__main__":
    main()
