"""`agentq evaluate`: pass rates of a round's merged model on the test split, in three modes.

* zero_shot: one greedy answer in a structured THOUGHT/CODE format.
* full_rewrite: one greedy full rewrite (pass@k with k samples at the collection temperature when asked).
* mcts: the search itself with the evaluation budget.

Tasks are deduplicated by group, so a problem that appears under several bug types counts once.
A parse failure (no program in the answer) is counted apart from a wrong fix: the original project's
0.4% zero-shot score was a format artefact, not a measure of skill. Searches see only the visible
tests; every final answer is then judged on visible + hidden tests, and both rates are reported, so a
gap between them shows answers that fit the examples but not the problem.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tqdm import tqdm

from agentq.config import RoundSpec
from agentq.io import append_jsonl, read_jsonl, repair_jsonl, write_jsonl
from agentq.policy.base import Policy, load_policy
from agentq.policy.prompts import extract_code, rewrite_prompt, zero_shot_prompt
from agentq.report import write_report
from agentq.sandbox.executor import find_tests
from agentq.sandbox.verdict import Verdict
from agentq.search.mcts import Executor, Search, SearchParams
from agentq.tasks.schema import Task
from agentq.workspace import RoundWorkspace, check_shard, digest


def dedupe_by_group(tasks: list[Task]) -> list[Task]:
    seen: set[str] = set()
    unique = []
    for task in tasks:
        if task.group not in seen:
            seen.add(task.group)
            unique.append(task)
    return unique


def _judge(task: Task, code: str | None, executor: Executor) -> dict[str, Any]:
    """Score one final answer on visible + hidden tests, and on the visible ones alone.

    One run serves both: the visible tests come first in `all_tests()`, so their results are in it.
    """
    if code is None:
        return {"parse_failure": True, "solved": False, "visible_solved": False, "status": "parse_error"}
    full: Verdict = executor.run_many([(code, task.all_tests())])[0]
    visible = find_tests(task.tests)
    passed = {t.name for t in full.tests if t.passed}
    visible_solved = full.passed or (not isinstance(visible, str) and set(visible.names) <= passed)
    return {"parse_failure": False, "solved": full.passed, "visible_solved": visible_solved,
            "status": full.status, "reward": full.reward, "message": full.message[:500]}


def evaluate_task(task: Task, mode: str, policy: Policy, executor: Executor, spec: RoundSpec) -> dict[str, Any]:
    ev, max_tokens = spec.evaluate, spec.model.max_new_tokens
    start = time.perf_counter()
    if mode == "mcts":
        params = SearchParams.for_evaluate(spec)
        search = Search(task, policy, executor, params, reward_tests=task.tests).run()
        best = search.best()
        answers = [best.code if best else None]
        extra = {"samples": search.stats.samples, "executions": search.stats.executions}
    else:
        prompt = zero_shot_prompt(task) if mode == "zero_shot" else rewrite_prompt(task)
        n = ev.pass_k if mode == "full_rewrite" else 1
        temperature = 0.0 if n == 1 else spec.collect.temperature
        samples = policy.generate([prompt], n=n, temperature=temperature, max_new_tokens=max_tokens,
                                  seed=spec.collect.seed)[0]
        answers = [extract_code(s.text, task.entry_point) for s in samples]
        extra = {"samples": len(samples), "completion": samples[0].text[:2000]}
    judged = [_judge(task, code, executor) for code in answers]
    solved = next((j for j in judged if j["solved"]), judged[0])
    return {"task_id": task.id, "group": task.group, "mode": mode, **solved,
            "visible_solved": any(j["visible_solved"] for j in judged),
            "parse_failure": all(j["parse_failure"] for j in judged), **extra,
            "seconds": round(time.perf_counter() - start, 3)}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    solved = sum(r["solved"] for r in records)
    return {
        "tasks": n, "solved": solved, "pass_rate": solved / n if n else 0.0,
        "visible_pass_rate": sum(r["visible_solved"] for r in records) / n if n else 0.0,
        "parse_failures": sum(r["parse_failure"] for r in records),
        "wrong_fixes": sum(not r["solved"] and not r["parse_failure"] for r in records),
    }


def eval_digest(ws: RoundWorkspace, tasks_digest: str) -> str:
    return digest("evaluate", ws.settings("evaluate"), ws.step_digest("merge"), tasks_digest)


def shard_file(mode: str, shard: int, num_shards: int) -> str:
    return f"eval/{mode}.shard-{shard}-of-{num_shards}.jsonl"


def run_shard(ws: RoundWorkspace, shard: int, num_shards: int) -> None:
    check_shard(shard, num_shards)
    spec = ws.round.spec
    tasks, tasks_digest = ws.tasks("test")
    mine = [t for i, t in enumerate(dedupe_by_group(tasks)) if i % num_shards == shard]
    inputs_digest = eval_digest(ws, tasks_digest)
    step = f"evaluate-shard-{shard}-of-{num_shards}"
    if ws.finished(step, inputs_digest, f"evaluate: shard {shard}/{num_shards}") is not None:
        return
    policy = load_policy(spec.model, path_override=ws.model_dir("merged"))
    with ws.executor() as executor:
        weak = list(executor.isolation)
        for mode in spec.evaluate.modes:
            key = shard_file(mode, shard, num_shards)
            partial = ws.partial(key, inputs_digest)  # the finished shard of other settings stays meanwhile
            local = ws.fetch(partial)
            repair_jsonl(local)
            done = {r["task_id"] for r in read_jsonl(local) if r.get("inputs_digest") == inputs_digest} \
                if local.exists() else set()
            if local.exists() and not done:
                local.unlink()
            bar = tqdm([t for t in mine if t.id not in done], desc=f"evaluate {mode}", unit="task", disable=None)
            for task in bar:
                record = evaluate_task(task, mode, policy, executor, spec)
                append_jsonl(local, {**record, "inputs_digest": inputs_digest})
                ws.publish(partial)
                if bar.disable:
                    print(f"evaluate {mode}: {task.id}: {record['status']} {record['seconds']:.1f}s", flush=True)
    outputs = [shard_file(mode, shard, num_shards) for mode in spec.evaluate.modes]
    for relative in outputs:
        local = ws.work_path(ws.partial(relative, inputs_digest))
        local.touch()
        ws.complete(relative, local)
    ws.finish(step, inputs_digest, {"weakIsolation": "; ".join(weak)} if weak else {}, outputs=outputs)


def combine(ws: RoundWorkspace) -> dict[str, Any]:
    """Merge the shards into eval/<mode>.jsonl, summary.json, report.md and pass_rate.png."""
    spec = ws.round.spec
    n = spec.evaluate.shards
    summary: dict[str, Any] = {"round": ws.name, "model": spec.model.base, "from_round": spec.model.from_round,
                               "modes": {}}
    for mode in spec.evaluate.modes:
        records: list[dict[str, Any]] = []
        for shard in range(n):
            key = ws.key(shard_file(mode, shard, n))
            if not ws.store.exists(key):
                raise FileNotFoundError(f"evaluate shard {shard} of {n} has no {mode} results at "
                                        f"{ws.describe(shard_file(mode, shard, n))}; run "
                                        f"`agentq evaluate --shard {shard} --num-shards {n}`")
            records += list(read_jsonl(ws.fetch(shard_file(mode, shard, n))))
        records.sort(key=lambda r: r["task_id"])
        write_jsonl(ws.work_path(f"eval/{mode}.jsonl"), records)
        ws.publish(f"eval/{mode}.jsonl")
        summary["modes"][mode] = summarize(records)
    flagged = ws.get_json(ws.key("preferences.stats.json")) or {}
    summary["flagged_candidates"] = flagged.get("flagged_candidates", 0)
    summary["weak_isolation"] = ws.weak_isolation()
    write_report(ws, summary)
    return summary


def report(ws: RoundWorkspace) -> dict[str, Any]:
    """Combine finished shards (the operator's `report` Job; the embedded runner calls it directly)."""
    summary = combine(ws)
    result = {"passRate": {m: round(s["pass_rate"], 4) for m, s in summary["modes"].items()}}
    lines = [f"evaluate: {mode}: {s['solved']}/{s['tasks']} solved ({s['pass_rate']:.1%}; visible-only "
             f"{s['visible_pass_rate']:.1%}), {s['parse_failures']} parse failures"
             for mode, s in summary["modes"].items()]
    return ws.finish("evaluate", eval_digest(ws, ws.tasks("test")[1]), result, "\n".join(lines))


def main(args: argparse.Namespace) -> int:
    ws = RoundWorkspace.from_args(args)
    if not args.report_only:
        run_shard(ws, args.shard, args.num_shards)
    if args.report_only or args.num_shards == 1:
        report(ws)
        print(f"evaluate: report at {ws.describe('eval/report.md')}")
    return 0

