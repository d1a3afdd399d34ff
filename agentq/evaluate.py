"""`agentq evaluate`: pass rates of a round's merged model and of the model it started from, paired.

* zero_shot: a greedy answer in a structured THOUGHT/CODE format (plus `samples` sampled ones).
* full_rewrite: a greedy full rewrite (plus `samples` sampled ones at the collection temperature).
* mcts: the search itself with the evaluation budget (`collect.treesInFlight` searches together), or the
  reflection chain when the round's strategy is reflection (`evaluate.strategy`, else `collect.strategy`); each
  record says which, and how many answers the search drew (`attempts`), whose mean the summary reports.

A round is worth its *difference* from the model it started from, so with `evaluate.baseline` (the
default) that model (the base, or the `fromRound` merge) is evaluated through this same code, on the same
tasks with the same seeds, under the `baseline` arm; the report pairs the two per task (see
agentq/stats.py). Every test task is scored by default: scoring one task per problem left about 50
DebugBench tasks, too few to see a gain of under 12-18 points. Each sampled answer's verdict is stored,
so pass@1 and pass@k are the unbiased estimates of Chen et al.; the greedy answer is reported beside
them. A parse failure (no program in the answer) is counted apart from a wrong fix: the original
project's 0.4% zero-shot score was a format artefact, not a measure of skill. Searches see only the
visible tests; every final answer is then judged on visible + hidden tests, and both rates are
reported, so a gap between them shows answers that fit the examples but not the problem. Each record
carries the tokens its task spent (tokens_in: prompts, tokens_out: completions; the whole search in mcts
mode, critiques included), and the summary their means per task, priced when `model.pricing` is set.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import yaml
from tqdm import tqdm

from agentq import steplog
from agentq.config import OpenAISpec, PricingSpec, RoundFile, RoundSpec, parse_model
from agentq.io import append_jsonl, read_jsonl, repair_jsonl, write_jsonl
from agentq.policy.base import Policy, Request, Sample, load_policy, served_model, spent
from agentq.repair.localization import round_model
from agentq.report import write_report
from agentq.search.mcts import Executor, Search, SearchParams, evaluation_strategy
from agentq.search.problems import Problem, Reading, problem_for
from agentq.search.scheduler import Scheduler
from agentq.stats import bootstrap_mean, mcnemar_exact, pass_at_k
from agentq.tasks.schema import AnyTask
from agentq.workspace import RoundWorkspace, check_shard, digest

ARMS = ("baseline", "round")  # the starting model, then the round's merged model


def dedupe_by_group(tasks: list[AnyTask]) -> list[AnyTask]:
    seen: set[str] = set()
    unique = []
    for task in tasks:
        if task.group not in seen:
            seen.add(task.group)
            unique.append(task)
    return unique


def _judge(problem: Problem, reading: Reading, executor: Executor) -> dict[str, Any]:
    """Score one final answer: an answer judged while it was read (a parse failure, a patch that cannot run)
    as it was; otherwise by the problem's own final run (function tasks: visible + hidden tests, and visible
    alone; repo tasks: resolved or not)."""
    if reading.verdict is not None or reading.code is None:
        status = reading.verdict.status if reading.verdict is not None else "parse_error"
        return {"parse_failure": status == "parse_error", "solved": False, "visible_solved": False,
                "status": status}
    return problem.final(reading.code, executor)


def answer_requests(problem: Problem, mode: str, spec: RoundSpec) -> list[Request]:
    """The single-prompt modes' requests for one task: the greedy answer, and `samples` sampled ones at the
    collection temperature (seeded apart from the greedy draw) when samples > 1."""
    prompt = problem.first_prompt(mode)
    max_tokens, seed = spec.model.max_new_tokens, spec.collect.seed
    requests = [Request(prompt, 1, 0.0, max_tokens, seed)]
    if spec.evaluate.samples > 1:
        requests.append(Request(prompt, spec.evaluate.samples, spec.collect.temperature, max_tokens, seed + 1))
    return requests


def _readings(problem: Problem, groups: list[list[Sample]]) -> tuple[list[Reading], dict]:
    """[greedy, sampled...] answers read as candidates, with what generating them cost."""
    texts = [s.text for group in groups for s in group]
    tokens_in, tokens_out = spent(groups)
    return [problem.read(t) for t in texts], {"completion": texts[0][:2000], "tokens_in": tokens_in,
                                              "tokens_out": tokens_out}


def evaluation_search(task: AnyTask, policy: Policy, executor: Executor, spec: RoundSpec) -> Search:
    """The mcts mode's search: the evaluation budget or the reflection chain, rewarded by the visible tests only
    (function tasks)."""
    return Search(task, policy, executor, SearchParams.for_evaluate(spec), visible_only=True)


def search_record(search: Search, executor: Executor, strategy: str) -> dict[str, Any]:
    """The mcts mode's record of a finished search: its best candidate judged on all tests; `attempts` counts the
    answers it drew (a reflection chain: its attempts, up to the first pass)."""
    best = search.best()
    reading = Reading(best.code) if best else Reading(None)
    return _record(search.problem, "mcts", [reading], executor, search.stats.wall_s,
                   {**search.problem.notes,
                    "strategy": strategy, "attempts": search.stats.samples, "search_samples": search.stats.samples,
                    "executions": search.stats.executions, "tokens_in": search.stats.tokens_in,
                    "tokens_out": search.stats.tokens_out})


def evaluate_task(task: AnyTask, mode: str, policy: Policy, executor: Executor, spec: RoundSpec) -> dict[str, Any]:
    """One task in one mode: the greedy answer's verdict, and every sampled answer's (pass@k counts these)."""
    if mode == "mcts":
        return search_record(evaluation_search(task, policy, executor, spec).run(), executor,
                             evaluation_strategy(spec)[0])
    return next(answer_records([task], mode, policy, executor, spec))


def answer_records(tasks: list[AnyTask], mode: str, policy: Policy, executor: Executor, spec: RoundSpec,
                   batch: int = 1) -> Iterator[dict[str, Any]]:
    """The single-prompt modes, `batch` tasks per generate call (every task's greedy and sampled requests
    together, as collection batches its trees), each batch's answers judged on a worker thread while the
    next batch generates (function tasks; a batch holding repo tasks is judged before the next one generates).
    Records come in task order; a record's `seconds` is its share of its batch's time."""
    chunks = [tasks[i:i + batch] for i in range(0, len(tasks), batch)]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge") as pool:
        pending: Future | None = None
        for chunk in chunks:
            start = time.perf_counter()
            # a repo prompt never depends on the hidden tests
            problems = [problem_for(task, executor, visible_only=True) for task in chunk]
            requests = [answer_requests(problem, mode, spec) for problem in problems]
            answers = policy.generate_batch([r for rs in requests for r in rs])
            share = (time.perf_counter() - start) / len(chunk)
            jobs, at = [], 0
            for problem, rs in zip(problems, requests, strict=True):
                readings, extra = _readings(problem, answers[at:at + len(rs)])
                jobs.append((problem, readings, extra))
                at += len(rs)
            if pending is not None:
                yield from pending.result()
            judge = partial(_judge_all, jobs, mode, executor, share)
            if all(task.kind == "function" for task in chunk):
                pending = pool.submit(judge)
            else:  # a repo task's problem reads its tree while judging: judged here, not beside the next batch
                pending = None
                yield from judge()
        if pending is not None:
            yield from pending.result()


def _judge_all(jobs: list[tuple[Problem, list[Reading], dict]], mode: str, executor: Executor,
               seconds: float) -> list[dict[str, Any]]:
    return [_record(problem, mode, readings, executor, seconds, extra) for problem, readings, extra in jobs]


def _record(problem: Problem, mode: str, answers: list[Reading], executor: Executor, seconds: float,
            extra: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    task = problem.task
    judged = [_judge(problem, reading, executor) for reading in answers]
    greedy = judged[0]
    samples = judged[1:] or judged  # with samples == 1 the greedy answer is the one sample
    return {"task_id": task.id, "group": task.group, "kind": task.kind, "mode": mode, **greedy,
            "samples": [{**{k: j[k] for k in ("solved", "visible_solved", "parse_failure", "status")},
                         "reward": j.get("reward", 0.0)} for j in samples],
            "n": len(samples), "correct": sum(j["solved"] for j in samples), **extra,
            "seconds": round(seconds + time.perf_counter() - start, 3)}


def summarize(records: list[dict[str, Any]], k: int = 1, pricing: PricingSpec | None = None) -> dict[str, Any]:
    """Pass rates of one arm in one mode: unbiased pass@1 (with a group-bootstrap interval), pass@k, greedy;
    mean tokens per task (and their cost, priced) when every record counted them."""
    n = len(records)
    per_task = [pass_at_k(r.get("n", 1), r.get("correct", int(r["solved"])), 1) for r in records]
    mean, low, high = bootstrap_mean(per_task, [r.get("group", r["task_id"]) for r in records])
    solved = sum(r["solved"] for r in records)
    summary = {
        "tasks": n, "samples_per_task": min((r.get("n", 1) for r in records), default=0),
        "pass_at_1": mean, "pass_at_1_ci95": [low, high], "pass_rate": mean,
        "greedy_solved": solved, "greedy_pass_rate": solved / n if n else 0.0, "solved": solved,
        "visible_pass_rate": sum(r["visible_solved"] for r in records) / n if n else 0.0,
        "parse_failures": sum(r["parse_failure"] for r in records),
        "wrong_fixes": sum(not r["solved"] and not r["parse_failure"] for r in records),
    }
    if records and all(r.get("kind") == "repo" for r in records):  # the SWE-bench figure: greedy patches resolving
        summary["resolve_rate"] = summary["greedy_pass_rate"]
        feedback = sorted({r["feedback"] for r in records if r.get("feedback")})
        if feedback:  # what the search saw run: the report says it
            summary["feedback"] = "; ".join(feedback)
    strategies = {r["strategy"] for r in records if "strategy" in r}
    if strategies:  # the mcts mode: which search ran, and the answers it drew per task
        summary["strategy"] = "/".join(sorted(strategies))
        summary["mean_attempts"] = sum(r["attempts"] for r in records) / n
    if records and all("tokens_in" in r for r in records):  # records written before tokens were counted lack them
        summary["mean_tokens_in"] = sum(r["tokens_in"] for r in records) / n
        summary["mean_tokens_out"] = sum(r["tokens_out"] for r in records) / n
        if pricing is not None:
            summary["cost_per_task_usd"] = pricing.cost(summary["mean_tokens_in"], summary["mean_tokens_out"])
    if k > 1 and records and all(r.get("n", 1) >= k for r in records):
        summary[f"pass_at_{k}"] = sum(pass_at_k(r["n"], r["correct"], k) for r in records) / n
    if summary["samples_per_task"] > 1:  # test-time compute: best-of-k with the tests as verifier, k = 1..n
        summary["pass_at_k_curve"] = [sum(pass_at_k(r["n"], r["correct"], j) for r in records) / n
                                      for j in range(1, summary["samples_per_task"] + 1)]
    return summary


def compare(new: list[dict[str, Any]], old: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired comparison on the tasks both arms scored: pass@1 delta with a 95% interval resampled by group,
    and an exact McNemar test on the greedy outcomes."""
    before = {r["task_id"]: r for r in old}
    paired = [(r, before[r["task_id"]]) for r in new if r["task_id"] in before]
    new_rates = [pass_at_k(a.get("n", 1), a.get("correct", int(a["solved"])), 1) for a, _ in paired]
    old_rates = [pass_at_k(b.get("n", 1), b.get("correct", int(b["solved"])), 1) for _, b in paired]
    diffs = [x - y for x, y in zip(new_rates, old_rates, strict=True)]
    delta, low, high = bootstrap_mean(diffs, [a.get("group", a["task_id"]) for a, _ in paired])
    wins = sum(a["solved"] and not b["solved"] for a, b in paired)
    losses = sum(b["solved"] and not a["solved"] for a, b in paired)
    return {"tasks": len(paired), "groups": len({a.get("group", a["task_id"]) for a, _ in paired}),
            "new_pass_at_1": sum(new_rates) / len(paired) if paired else 0.0,
            "old_pass_at_1": sum(old_rates) / len(paired) if paired else 0.0,
            "delta_pass_at_1": delta, "delta_ci95": [low, high], "greedy_wins": wins, "greedy_losses": losses,
            "mcnemar_p": mcnemar_exact(wins, losses)}


def eval_tasks(ws: RoundWorkspace) -> tuple[list[AnyTask], str]:
    tasks, tasks_digest = ws.tasks("test")
    if ws.round.spec.evaluate.dedupe_by_group:
        tasks = dedupe_by_group(tasks)
    return tasks, tasks_digest


def arm_digest(ws: RoundWorkspace, arm: str, tasks_digest: str) -> str:
    """What one arm's results depend on: the evaluation settings, the tasks, and that arm's model. The
    baseline does not depend on this round's training, so retraining never re-evaluates it."""
    model = ws.step_digest("merge") if arm == "round" else ws.model_source()[1]
    return digest("evaluate", arm, ws.settings("evaluate"), model, tasks_digest)


def eval_digest(ws: RoundWorkspace, tasks_digest: str) -> str:
    return digest("evaluate-all", [arm_digest(ws, arm, tasks_digest) for arm in arms(ws)])


def arms(ws: RoundWorkspace) -> list[str]:
    return list(ARMS) if ws.round.spec.evaluate.baseline else ["round"]


def shard_file(mode: str, shard: int, num_shards: int, arm: str = "round") -> str:
    folder = "eval/" if arm == "round" else f"eval/{arm}/"
    return f"{folder}{mode}.shard-{shard}-of-{num_shards}.jsonl"


def _load_arm_policy(ws: RoundWorkspace, arm: str) -> Policy:
    model = served_model(ws.round.spec.model)
    if arm == "round" and model.openai is not None:
        return load_policy(model.model_copy(update={"openai": _round_server(model.openai)}))
    if arm == "round":
        return load_policy(model, path_override=ws.model_dir("merged"))
    source, _ = ws.model_source()
    return load_policy(model, path_override=source)  # the base, the store's copy, or fromRound's merge


def _round_server(server: OpenAISpec) -> OpenAISpec:
    """The server of the round's merged model; without roundUrl/roundModel, the base's, which is said aloud."""
    if server.round_url is None and server.round_model is None:
        print(f"evaluate: model.openai has no roundUrl or roundModel; the round arm asks {server.url} for "
              f"{server.model!r} too, which measures the served model, not this round's merge", flush=True)
    return server.model_copy(update={"url": server.round_url or server.url,
                                     "model": server.round_model or server.model})


def run_shard(ws: RoundWorkspace, shard: int, num_shards: int) -> None:
    run_shards(ws, [shard], num_shards)


def run_shards(ws: RoundWorkspace, shards: list[int], num_shards: int) -> None:
    """Arm by arm, so a process that runs several shards loads each arm's model once (`reusing_policies`)."""
    for shard in shards:
        check_shard(shard, num_shards)
    tasks, tasks_digest = eval_tasks(ws)
    for arm in arms(ws):
        for shard in shards:
            mine = [t for i, t in enumerate(tasks) if i % num_shards == shard]
            _run_arm(ws, arm, mine, arm_digest(ws, arm, tasks_digest), shard, num_shards)


def _run_arm(ws: RoundWorkspace, arm: str, mine: list[AnyTask], inputs_digest: str, shard: int,
             num_shards: int) -> None:
    spec = ws.round.spec
    step = f"evaluate-shard-{shard}-of-{num_shards}" if arm == "round" else \
        f"evaluate-{arm}-shard-{shard}-of-{num_shards}"
    if ws.finished(step, inputs_digest, f"evaluate: {arm} shard {shard}/{num_shards}") is not None:
        return
    policy = _load_arm_policy(ws, arm)
    with ws.runner() as executor:
        executor.localization = round_model(ws, executor)  # fitted on the training tasks, never the test ones
        weak = list(executor.isolation)
        for mode in spec.evaluate.modes:
            key = shard_file(mode, shard, num_shards, arm)
            partial = ws.partial(key, inputs_digest)  # the finished shard of other settings stays meanwhile
            local = ws.fetch(partial)
            repair_jsonl(local)
            done = {r["task_id"] for r in read_jsonl(local) if r.get("inputs_digest") == inputs_digest} \
                if local.exists() else set()
            if local.exists() and not done:
                local.unlink()
            todo = [t for t in mine if t.id not in done]
            bar = tqdm(desc=f"evaluate {arm} {mode}", unit="task", disable=None, total=len(todo))
            for record in mode_records(mode, todo, policy, executor, spec):
                append_jsonl(local, {**record, "inputs_digest": inputs_digest})
                ws.publish(partial)
                bar.update(1)
                if bar.disable:
                    task_id = record["task_id"]
                    steplog.log("task done", arm=arm, mode=mode, task=task_id, status=record["status"],
                                seconds=record["seconds"],
                                message=f"evaluate {arm} {mode}: {task_id}: {record['status']} "
                                        f"{record['seconds']:.1f}s")
    del policy
    gc.collect()  # the next arm loads its own model: do not hold two in memory
    outputs = [shard_file(mode, shard, num_shards, arm) for mode in spec.evaluate.modes]
    for relative in outputs:
        local = ws.work_path(ws.partial(relative, inputs_digest))
        local.touch()
        ws.complete(relative, local, inputs_digest)
    ws.finish(step, inputs_digest, {"weakIsolation": "; ".join(weak)} if weak else {}, outputs=outputs)


def mode_records(mode: str, tasks: list[AnyTask], policy: Policy, executor: Executor,
             spec: RoundSpec) -> Iterator[dict[str, Any]]:
    """Each task's record as it is ready: mcts searches run together through the scheduler (in the order
    they finish), the single-prompt modes `collect.treesInFlight` tasks per generate call (in task order)."""
    if mode != "mcts":
        yield from answer_records(tasks, mode, policy, executor, spec, spec.collect.trees_in_flight)
        return
    searches = (evaluation_search(task, policy, executor, spec) for task in tasks)
    for search in Scheduler(spec.collect.trees_in_flight).run(searches):
        yield search_record(search, executor, evaluation_strategy(spec)[0])


def _read_arm(ws: RoundWorkspace, arm: str, mode: str) -> list[dict[str, Any]]:
    n = ws.round.spec.evaluate.shards
    records: list[dict[str, Any]] = []
    for shard in range(n):
        relative = shard_file(mode, shard, n, arm)
        if not ws.store.exists(ws.key(relative)):
            raise FileNotFoundError(f"evaluate shard {shard} of {n} has no {arm} {mode} results at "
                                    f"{ws.describe(relative)}; run `agentq evaluate --shard {shard} --num-shards {n}`")
        records += list(read_jsonl(ws.fetch(relative)))
    records.sort(key=lambda r: r["task_id"])
    return records


def chain_start(ws: RoundWorkspace) -> RoundFile | None:
    """The first round of this round's fromRound chain (its baseline arm is the original base model)."""
    name, seen = ws.round.spec.model.from_round, {ws.name}
    found: RoundFile | None = None
    while name and name not in seen:
        seen.add(name)
        text = ws.store.get_text(f"rounds/{name}/spec.yaml") if ws.store.exists(f"rounds/{name}/spec.yaml") else None
        if text is None:
            return None
        found = parse_model(yaml.safe_load(text), RoundFile, f"{ws.store.url}/rounds/{name}/spec.yaml")
        name = found.spec.model.from_round
    return found


def compare_with_chain_base(ws: RoundWorkspace, round_records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """A chained round against the chain's original base, through the first round's baseline records; only
    when that round evaluated with the same settings (same tasks are then paired by id)."""
    first = chain_start(ws)
    out: dict[str, Any] = {"round": first.name if first else None, "comparison": {}}
    if first is None or not first.spec.evaluate.baseline:
        return out
    mine, theirs = ws.round.spec, first.spec
    same = (mine.evaluate.model_dump(exclude={"baseline", "shards"}) == theirs.evaluate.model_dump(
        exclude={"baseline", "shards"}) and (mine.collect.seed, mine.collect.temperature) == (
        theirs.collect.seed, theirs.collect.temperature))
    out["model"] = theirs.model.base
    if not same:
        out["skipped"] = "the first round of the chain evaluated with other settings"
        return out
    for mode, records in round_records.items():
        key = f"rounds/{first.name}/eval/baseline/{mode}.jsonl"
        if ws.store.exists(key):
            local = ws.work_path(f"chain-base/{first.name}/{mode}.jsonl")
            ws.store.get_file(key, local)
            out["comparison"][mode] = compare(records, list(read_jsonl(local)))
    return out


def combine(ws: RoundWorkspace) -> dict[str, Any]:
    """Merge the shards into eval/[baseline/]<mode>.jsonl, summary.json, report.md and pass_rate.png."""
    spec = ws.round.spec
    k = spec.evaluate.pass_k
    summary: dict[str, Any] = {"round": ws.name, "model": spec.model.base, "from_round": spec.model.from_round,
                               "modes": {}}
    if spec.evaluate.baseline:
        summary["baseline"] = {"model": spec.model.from_round or spec.model.base, "modes": {}}
        summary["comparison"] = {}
    round_records: dict[str, list[dict[str, Any]]] = {}
    for mode in spec.evaluate.modes:
        records = round_records[mode] = _read_arm(ws, "round", mode)
        write_jsonl(ws.work_path(f"eval/{mode}.jsonl"), records)
        ws.publish(f"eval/{mode}.jsonl")
        summary["modes"][mode] = summarize(records, k, spec.model.pricing)
        if spec.evaluate.baseline:
            base = _read_arm(ws, "baseline", mode)
            write_jsonl(ws.work_path(f"eval/baseline/{mode}.jsonl"), base)
            ws.publish(f"eval/baseline/{mode}.jsonl")
            summary["baseline"]["modes"][mode] = summarize(base, k, spec.model.pricing)
            summary["comparison"][mode] = compare(records, base)
    if spec.model.from_round:
        summary["chain_base"] = compare_with_chain_base(ws, round_records)
    flagged = ws.get_json(ws.key("preferences.stats.json")) or {}
    summary["flagged_candidates"] = flagged.get("flagged_candidates", 0)
    summary["weak_isolation"] = ws.weak_isolation()
    summary["test_decided_pairs"] = flagged.get("decided_by_tests")
    summary["pairs"] = flagged.get("pairs")
    write_report(ws, summary)
    return summary


def report(ws: RoundWorkspace) -> dict[str, Any]:
    """Combine finished shards (the operator's `report` Job; the embedded runner calls it directly)."""
    summary = combine(ws)
    result: dict[str, Any] = {"passRate": {m: round(s["pass_rate"], 4) for m, s in summary["modes"].items()}}
    lines = []
    for mode, s in summary["modes"].items():
        line = (f"evaluate: {mode}: pass@1 {s['pass_at_1']:.1%} over {s['tasks']} tasks x {s['samples_per_task']} "
                f"samples (greedy {s['greedy_solved']}/{s['tasks']}; visible-only {s['visible_pass_rate']:.1%}), "
                f"{s['parse_failures']} parse failures")
        c = summary.get("comparison", {}).get(mode)
        if c:
            base = summary["baseline"]["modes"][mode]
            line += (f"; base {base['pass_at_1']:.1%}, delta {c['delta_pass_at_1']:+.1%} "
                     f"[{c['delta_ci95'][0]:+.1%}, {c['delta_ci95'][1]:+.1%}], McNemar p={c['mcnemar_p']:.3g}")
        lines.append(line)
    if "comparison" in summary:
        result["deltaPassAt1"] = {m: round(c["delta_pass_at_1"], 4) for m, c in summary["comparison"].items()}
        # The interval too: a campaign counts a round as a gain only when it lies above stop.minDelta.
        result["deltaCi95"] = {m: [round(x, 4) for x in c["delta_ci95"]] for m, c in summary["comparison"].items()}
    return ws.finish("evaluate", eval_digest(ws, ws.tasks("test")[1]), result, "\n".join(lines))


def main(args: argparse.Namespace) -> int:
    ws = RoundWorkspace.from_args(args)
    if not args.report_only:
        run_shard(ws, args.shard, args.num_shards)
    if args.report_only or args.num_shards == 1:
        report(ws)
        steplog.log("report written", path=ws.describe("eval/report.md"),
                    message=f"evaluate: report at {ws.describe('eval/report.md')}")
    return 0

