"""Learning: does the loop make the model better? base -> round 1 -> round 2, pass@1 on train and test tasks.

Each round is a real `agentq round run` (collect, test-decided pairs, DPO, merge, evaluate with the
starting model as baseline), round 2 starting from round 1's merge. Then every model (base, round 1,
round 2) is scored on the training tasks (did it learn what it was trained on?) and on held-out test
tasks (does it generalise?) through agentq.evaluate, with the paired delta against the base (95%
bootstrap interval by group, exact McNemar p) and the share of training pairs the tests decided.

    python benchmarks/learning.py                       # SmolLM2-135M on CPU, HumanEvalFix slice
    python benchmarks/learning.py --model Qwen/Qwen2.5-Coder-7B-Instruct --train-tasks 200 --test-tasks 100
    python benchmarks/learning.py --model tiny --backend scripted --json   # a smoke run of the machinery

A 135M model may well not improve; the table says what it measured either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from agentq.config import load_round
from agentq.evaluate import compare, evaluate_task, summarize
from agentq.io import replace_markdown_section
from agentq.policy.base import load_policy
from agentq.round import run_round
from agentq.tasks.schema import read_tasks, write_tasks
from agentq.workspace import RoundWorkspace

SECTION = "Learning"
ROOT = Path(__file__).resolve().parents[1]


def round_document(name: str, args: argparse.Namespace, from_round: str | None) -> dict[str, Any]:
    model: dict[str, Any] = {"base": args.model, "backend": args.backend, "maxNewTokens": args.max_new_tokens}
    if from_round:
        model["fromRound"] = from_round
    return {
        "apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": name},
        "spec": {
            "model": model,
            "dataset": {"train": "train.jsonl", "test": "test.jsonl"},
            "collect": {"shards": 1, "k": 2, "rootK": args.root_k, "rollouts": args.rollouts, "depth": 2,
                        "critic": args.critic, "seed": args.seed},
            "train": {"maxSteps": args.dpo_steps, "effectiveBatchSize": 4, "evalSteps": 2, "maxLength": 1024,
                      "learningRate": args.learning_rate, "lora": {"r": 8, "alpha": 16}, "seed": args.seed},
            "evaluate": {"modes": ["full_rewrite"], "baseline": True, "samples": args.samples},
            "sandbox": {"timeoutSeconds": 5},
            "store": {"path": "store"},
        },
    }


def score(ws: RoundWorkspace, model_dir: str | None, tasks: list, executor: Any) -> list[dict[str, Any]]:
    """full_rewrite records of one model on `tasks` (the base when model_dir is None)."""
    spec = ws.round.spec
    policy = load_policy(spec.model.model_copy(update={"from_round": None}), path_override=model_dir)
    return [evaluate_task(task, "full_rewrite", policy, executor, spec) for task in tasks]


def row(split: str, model: str, records: list[dict], base: list[dict] | None) -> dict[str, Any]:
    s = summarize(records)
    out = {"split": split, "model": model, "tasks": s["tasks"], "samples": s["samples_per_task"],
           "pass_at_1": s["pass_at_1"], "ci95": s["pass_at_1_ci95"], "greedy_solved": s["greedy_solved"]}
    if base is not None:
        c = compare(records, base)
        out.update({"delta": c["delta_pass_at_1"], "delta_ci95": c["delta_ci95"], "mcnemar_p": c["mcnemar_p"]})
    return out


def markdown(rows: list[dict[str, Any]], rounds: list[dict[str, Any]], args: argparse.Namespace, wall: float) -> str:
    lines = [f"## {SECTION}", "",
             f"Model {args.model} ({args.backend}); {args.train_tasks} training and {args.test_tasks} test tasks "
             f"from {args.train_file} / {args.test_file}; per round: rollouts {args.rollouts}, critic "
             f"{args.critic}, {args.dpo_steps} DPO steps at lr {args.learning_rate}; {args.samples} sampled "
             f"answers per task for pass@1. Wall time {wall / 60:.0f} min.", "",
             "| split | model | tasks | pass@1 | 95% CI | greedy | delta vs base [95% CI] | McNemar p |",
             "|---|---|---:|---:|---|---:|---|---:|"]
    for r in rows:
        delta = f"{r['delta']:+.1%} [{r['delta_ci95'][0]:+.1%}, {r['delta_ci95'][1]:+.1%}]" if "delta" in r else "-"
        p = f"{r['mcnemar_p']:.3g}" if "mcnemar_p" in r else "-"
        lines.append(f"| {r['split']} | {r['model']} | {r['tasks']} | {r['pass_at_1']:.1%} | "
                     f"[{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] | {r['greedy_solved']}/{r['tasks']} | {delta} | {p} |")
    lines += ["", "| round | pairs | decided by tests | test-decided share |", "|---|---:|---:|---:|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['pairs']} | {r['decided_by_tests']} | {r['test_decided_share']:.0%} |")
    lines += ["", f"Command: `python benchmarks/learning.py {' '.join(sys.argv[1:])}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm", "scripted"])
    parser.add_argument("--train-file", default=str(ROOT / "data" / "humanevalfix.train.jsonl"))
    parser.add_argument("--test-file", default=str(ROOT / "data" / "humanevalfix.test.jsonl"))
    parser.add_argument("--train-tasks", type=int, default=12)
    parser.add_argument("--test-tasks", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--root-k", type=int, default=4)
    parser.add_argument("--critic", default="none", choices=["self", "scripted", "none"])
    parser.add_argument("--dpo-steps", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where rounds are written (default: a fresh temp dir)")
    parser.add_argument("--write-docs", default=None, help="replace the Learning section of this markdown file")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()

    import tempfile

    start = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="agentq-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    train = read_tasks(args.train_file)[: args.train_tasks]
    test = read_tasks(args.test_file)[: args.test_tasks]
    write_tasks(work / "train.jsonl", train)
    write_tasks(work / "test.jsonl", test)

    workspaces: list[RoundWorkspace] = []
    for i in range(1, args.rounds + 1):
        path = work / f"round-{i}.yaml"
        path.write_text(yaml.safe_dump(round_document(f"round-{i}", args, f"round-{i - 1}" if i > 1 else None),
                                       sort_keys=False))
        ws = RoundWorkspace(load_round(path), str(path))
        print(f"== round {i}", flush=True)
        run_round(ws)
        workspaces.append(ws)

    first = workspaces[0]
    models: list[tuple[str, str | None]] = [("base", None)] + [
        (ws.name, str(ws.model_dir("merged"))) for ws in workspaces]
    rows: list[dict[str, Any]] = []
    with first.executor() as executor:
        records = {name: score(first, model_dir, train, executor) for name, model_dir in models}
    for name, _ in models:
        rows.append(row("train", name, records[name], None if name == "base" else records["base"]))
    # test tasks: the rounds' own evaluations (round 1's baseline arm is the base model)
    from agentq.io import read_jsonl

    test_records = {"base": list(read_jsonl(first.fetch("eval/baseline/full_rewrite.jsonl")))}
    for ws in workspaces:
        test_records[ws.name] = list(read_jsonl(ws.fetch("eval/full_rewrite.jsonl")))
    for name, _ in models:
        rows.append(row("test", name, test_records[name], None if name == "base" else test_records["base"]))
    rounds = []
    for ws in workspaces:
        stats = ws.get_json(ws.key("preferences.stats.json")) or {}
        rounds.append({"round": ws.name, "pairs": stats.get("pairs", 0),
                       "decided_by_tests": stats.get("decided_by_tests", 0),
                       "test_decided_share": stats.get("test_decided_share", 0.0)})
    wall = time.perf_counter() - start
    text = markdown(rows, rounds, args, wall)
    print(text)
    if args.write_docs:
        replace_markdown_section(args.write_docs, SECTION, text)
    if args.json:
        print(json.dumps({"rows": rows, "rounds": rounds, "wall_s": round(wall, 1), "workdir": str(work)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
