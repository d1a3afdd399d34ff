"""Learning: does the loop make the model better? base -> round 1 -> round 2 for DPO, expert iteration and GRPO.

Every round is a real `agentq round run` (collect on the same training slice with the same budget and seed,
then the method's training, merge, evaluate), round 2 starting from round 1's merge of the same method; the
three round-1 collections would be the same trees (same base, settings and seed), so they are collected once. The
base is scored once on the held-out test slice through evaluate's own code with the rounds' settings (same
prompts, seeds, greedy + sampled answers), and every round is paired with it per task: pass@1 delta with a 95%
interval resampled by group, the exact McNemar p on the greedy answers, the pass@k curve over the samples. A
power analysis says what the slice could have seen: the exact McNemar test's power at +5, +10 and +20 points
for this many test tasks (discordance taken from the measured rounds), and the tasks 80% power would need.
What each round had to learn from (pairs, passing examples, GRPO prompts) and what it sampled is listed too.

    python benchmarks/learning.py --json                      # SmolLM2-135M bf16 on CPU, HumanEvalFix slices
    python benchmarks/learning.py --model tiny --backend scripted --train-tasks 3 --test-tasks 3 --json  # smoke
    # GPU mode (the device machine: one H100, 15 min): a bigger slice and budget, same code
    python benchmarks/learning.py --dtype bfloat16 --train-tasks 64 --test-tasks 33 --samples 8 --rollouts 4 \\
        --steps 32 --json

A 135M model on a few tasks may well not improve, and a few test tasks cannot show a small gain: the table
and the power analysis say which.
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

from agentq.config import load_round
from agentq.evaluate import compare, mode_records, summarize
from agentq.io import read_jsonl, replace_markdown_section
from agentq.policy.base import load_policy, reusing_policies
from agentq.round import apply_preset, run_round
from agentq.stats import mcnemar_power, tasks_for_power
from agentq.tasks.schema import read_tasks, write_tasks
from agentq.workspace import RoundWorkspace

SECTION = "Learning"
ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dpo", "expert_iteration", "grpo")
DELTAS = (0.05, 0.10, 0.20)


def round_document(name: str, method: str, args: argparse.Namespace, from_round: str | None) -> dict[str, Any]:
    model: dict[str, Any] = {"base": args.model, "backend": args.backend, "dtype": args.dtype,
                             "maxNewTokens": args.max_new_tokens}
    if from_round:
        model["fromRound"] = from_round
    train: dict[str, Any] = {"method": method, "maxSteps": args.steps, "effectiveBatchSize": 4, "evalSteps": 2,
                             "maxLength": 1024, "learningRate": args.learning_rate, "lora": {"r": 8, "alpha": 16},
                             "seed": args.seed, "grpo": {"groupSize": args.group_size, "klCoef": args.kl_coef}}
    if method != "dpo":
        train["evalShare"] = 0.0  # a held-out reward costs sampling on CPU; DPO's held-out pairs cost one pass
    return {
        "apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": name},
        "spec": {
            "model": model,
            "dataset": {"train": "train.jsonl", "test": "test.jsonl"},
            "collect": {"shards": 1, "k": args.k, "rootK": args.k, "rollouts": args.rollouts, "depth": 2,
                        "critic": "none", "seed": args.seed, "treesInFlight": args.in_flight},
            "train": train,
            "evaluate": {"modes": ["full_rewrite"], "baseline": False, "samples": args.samples},
            "sandbox": {"timeoutSeconds": 5},
            "store": {"path": "store"},
        },
    }


def share_collection(source: RoundWorkspace, target: RoundWorkspace) -> None:
    """Round 1 of every method starts from the same base with the same collect settings and seed, so its trees
    are the same: collected once, by the first method's round, and given to the others with its completion
    marker (whose digest names the settings, tasks and model, not the round). Every method then learns from
    the same data, and the benchmark spends the collection once."""
    step = "collect-shard-0-of-1"
    for relative in ("trajectories/shard-0-of-1.jsonl", f"steps/{step}.json"):
        source.store.get_file(source.key(relative), target.work_path(f"shared/{relative}"))
        target.store.put_file(target.key(relative), target.work_path(f"shared/{relative}"))


def row(method: str, model: str, records: list[dict], base: list[dict] | None) -> dict[str, Any]:
    s = summarize(records)
    out = {"method": method, "model": model, "tasks": s["tasks"], "samples": s["samples_per_task"],
           "pass_at_1": s["pass_at_1"], "ci95": s["pass_at_1_ci95"], "greedy_solved": s["greedy_solved"],
           "pass_at_k_curve": s.get("pass_at_k_curve", [s["pass_at_1"]])}
    if base is not None:
        c = compare(records, base)
        out.update({"delta": c["delta_pass_at_1"], "delta_ci95": c["delta_ci95"], "mcnemar_p": c["mcnemar_p"],
                    "wins": c["greedy_wins"], "losses": c["greedy_losses"],
                    "significant": c["delta_ci95"][0] > 0 and c["mcnemar_p"] < 0.05})
    return out


def learned_from(ws: RoundWorkspace) -> dict[str, Any]:
    """What a round had to learn from and what it spent, from its steps' completion markers."""
    collect = (ws.marker("collect-shard-0-of-1") or {}).get("result", {})
    prefs = (ws.marker("preferences") or {}).get("result", {})
    train = (ws.marker("train") or {}).get("result", {})
    return {"round": ws.name, "method": ws.round.spec.train.method, "collect_samples": collect.get("samples", 0),
            "solved_trees": collect.get("solved", 0), "tokens_per_s": collect.get("tokensPerSecond"),
            "pairs": prefs.get("pairs", 0), "test_decided": prefs.get("testDecided", 0),
            "sft_examples": prefs.get("sftExamples", 0), "train_steps": train.get("steps", 0),
            "train_examples": train.get("examples", train.get("prompts", train.get("pairs", 0)))}


def power_rows(n: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Power of the exact McNemar test on n test tasks, discordance from the measured rounds (losses per task,
    at least 2%); and the tasks 80% power needs at +10 points."""
    losses = [r["losses"] / r["tasks"] for r in rows if "losses" in r and r["tasks"]]
    p_loss = max([0.02, *losses])
    return {"tasks": n, "p_loss": round(p_loss, 3),
            "power": {f"+{d:.0%}": round(mcnemar_power(n, d, p_loss), 3) for d in DELTAS},
            "tasks_for_80pct_at_10pts": tasks_for_power(0.10, p_loss)}


def markdown(rows: list[dict[str, Any]], rounds: list[dict[str, Any]], power: dict[str, Any],
             args: argparse.Namespace, wall: float, loads: list[list[float]]) -> str:
    answers = f"greedy + {args.samples} sampled answers (T = 0.8)" if args.samples > 1 else "the greedy answer"
    lines = [f"## {SECTION}", "",
             f"Model {args.model} ({args.backend}, {args.dtype}); {args.train_tasks} training tasks (from "
             f"{Path(args.train_file).name}, offset {args.train_offset}) and {args.test_tasks} test tasks (from "
             f"{Path(args.test_file).name}). Per round, every method: collect rootK = k = {args.k}, rollouts "
             f"{args.rollouts}, depth 2, critic none, at most {args.max_new_tokens} new tokens; {args.steps} training "
             f"steps at lr {args.learning_rate} (LoRA r 8); GRPO groups of {args.group_size}, KL {args.kl_coef}. "
             f"Test: {answers} per task. Wall time {wall / 60:.0f} min; load "
             f"average {loads[0]} at the start, {loads[1]} at the end (2 shared cores).", "",
             "| method | model | pass@1 | 95% CI | greedy | delta vs base [95% CI] | McNemar p | pass@k, k = 1.. |",
             "|---|---|---:|---|---:|---|---:|---|"]
    for r in rows:
        delta = f"{r['delta']:+.1%} [{r['delta_ci95'][0]:+.1%}, {r['delta_ci95'][1]:+.1%}]" if "delta" in r else "-"
        p = f"{r['mcnemar_p']:.3g}" if "mcnemar_p" in r else "-"
        curve = " ".join(f"{x:.2f}" for x in r["pass_at_k_curve"])
        ci = f"[{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]"
        lines.append(f"| {r['method']} | {r['model']} | {r['pass_at_1']:.1%} | {ci} "
                     f"| {r['greedy_solved']}/{r['tasks']} | {delta} | {p} | {curve} |")
    lines += ["", "| round | method | collect samples | trees solved | pairs (test-decided) | SFT examples | "
                  "train steps | trained on | collect tok/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['method']} | {r['collect_samples']} | {r['solved_trees']} | {r['pairs']} "
                     f"({r['test_decided']}) | {r['sft_examples']} | {r['train_steps']} | {r['train_examples']} | "
                     f"{r['tokens_per_s']} |")
    significant = [f"{r['method']} {r['model']}" for r in rows if r.get("significant")]
    lines += ["", f"Significant gains (interval above 0 and McNemar p < 0.05): {', '.join(significant) or 'none'}.",
              "", f"Power of the exact McNemar test on {power['tasks']} test tasks (losses per task "
              f"{power['p_loss']:.0%}): " + ", ".join(f"{k} points: {v:.0%}" for k, v in power["power"].items())
              + f"; 80% power at +10 points needs {power['tasks_for_80pct_at_10pts']} tasks.", "",
              f"Command: `python benchmarks/learning.py {' '.join(sys.argv[1:])}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm", "scripted"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--train-file", default=str(ROOT / "data" / "humanevalfix.train.jsonl"))
    parser.add_argument("--test-file", default=str(ROOT / "data" / "humanevalfix.test.jsonl"))
    parser.add_argument("--train-offset", type=int, default=0, help="the training slice starts here (passk.py)")
    parser.add_argument("--train-tasks", type=int, default=8)
    parser.add_argument("--test-tasks", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="training steps per round, every method")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--kl-coef", type=float, default=0.04)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default=None, help="tiny: the machinery only (scripted generation)")
    parser.add_argument("--workdir", default=None, help="where rounds are written (default: a fresh temp dir)")
    parser.add_argument("--write-docs", default=None, help="replace the Learning section of this markdown file")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")

    start, loads = time.perf_counter(), [[round(x, 2) for x in os.getloadavg()]]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agentq-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    train = read_tasks(args.train_file)[args.train_offset: args.train_offset + args.train_tasks]
    test = read_tasks(args.test_file)[: args.test_tasks]
    write_tasks(work / "train.jsonl", train)
    write_tasks(work / "test.jsonl", test)

    def workspace(method: str, i: int) -> RoundWorkspace:
        name = f"{method.replace('_', '-')}-r{i}"
        previous = f"{method.replace('_', '-')}-r{i - 1}" if i > 1 else None
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(round_document(name, method, args, previous), sort_keys=False))
        return RoundWorkspace(apply_preset(load_round(path), args.preset), str(path))

    # The base first, on the test slice through evaluate's code with the rounds' settings: every round is
    # paired with it, and each round's row is written as it finishes (a stopped run keeps the finished ones).
    first = workspace(methods[0], 1)
    spec = first.round.spec
    print("== base on the test slice", flush=True)
    with reusing_policies(), first.runner() as executor:
        policy = load_policy(spec.model.model_copy(update={"from_round": None}))
        base = list(mode_records("full_rewrite", test, policy, executor, spec))
        del policy
    rows = [row("-", "base", base, None)]
    rounds: list[dict[str, Any]] = []
    progress = work / "rows.jsonl"
    progress.write_text(json.dumps(rows[0]) + "\n")
    for i in range(1, args.rounds + 1):
        for method in methods:
            ws = workspace(method, i)
            if i == 1 and method != methods[0]:
                share_collection(first, ws)
            print(f"== {ws.name}", flush=True)
            run_round(ws)
            rows.append(row(method, ws.name, list(read_jsonl(ws.fetch("eval/full_rewrite.jsonl"))), base))
            rounds.append(learned_from(ws))
            with progress.open("a") as fh:
                fh.write(json.dumps({**rows[-1], **rounds[-1]}) + "\n")
    power = power_rows(len(test), rows)
    wall = time.perf_counter() - start
    loads.append([round(x, 2) for x in os.getloadavg()])
    text = markdown(rows, rounds, power, args, wall, loads)
    print(text)
    if args.write_docs:
        replace_markdown_section(args.write_docs, SECTION, text)
    if args.json:
        print(json.dumps({"rows": rows, "rounds": rounds, "power": power, "wall_s": round(wall, 1),
                          "loadavg": loads, "workdir": str(work)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
