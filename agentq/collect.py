"""`agentq collect`: run MCTS on one shard of the training tasks and append each finished tree to the shard file.

A shard owns the tasks whose index mod num_shards equals its number, so shards never overlap and need
no coordination. `collect.treesInFlight` trees are searched together (agentq/search/scheduler.py) and
each finished task is appended as one line in one write, in the order they finish; a killed collector
loses at most the trees in flight, and a re-run skips the task ids already in the file. Records carry the digest
of the inputs that made them, so a re-run after a settings change starts the shard over instead of
mixing trees from two configurations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from agentq import steplog
from agentq.io import append_jsonl, read_jsonl, repair_jsonl, write_jsonl
from agentq.policy.base import load_policy, served_model
from agentq.repair.localization import round_model
from agentq.search.critique import CritiqueGate
from agentq.search.mcts import Search, SearchParams
from agentq.search.scheduler import Scheduler
from agentq.tasks.schema import AnyTask
from agentq.workspace import RoundWorkspace, check_shard, digest


def shard_tasks(tasks: list[AnyTask], shard: int, num_shards: int) -> list[AnyTask]:
    check_shard(shard, num_shards)
    return [t for i, t in enumerate(tasks) if i % num_shards == shard]


def finished_ids(path: Path, inputs_digest: str) -> set[str]:
    """Task ids already collected with these inputs; a file from other inputs is set aside, not mixed in."""
    if not path.exists():
        return set()
    repair_jsonl(path)
    records = list(read_jsonl(path))
    if any(r.get("inputs_digest") != inputs_digest for r in records):
        stale = path.with_suffix(f".stale-{int(time.time())}.jsonl")
        path.rename(stale)
        steplog.log("stale output set aside", output=path.name, moved_to=stale.name,
                    message=f"collect: {path.name} was made with other settings; moved to {stale.name} and "
                            "starting over")
        return set()
    return {r["task_id"] for r in records}


def collect_digest(ws: RoundWorkspace, tasks_digest: str, model_digest: str) -> str:
    return digest("collect", ws.settings("collect"), tasks_digest, model_digest)


def main(args: argparse.Namespace) -> int:
    run(RoundWorkspace.from_args(args), args.shard, args.num_shards)
    return 0


def run(ws: RoundWorkspace, shard: int, num_shards: int) -> dict:
    spec = ws.round.spec
    tasks, tasks_digest = ws.tasks("train")
    model_path, model_digest = ws.model_source()
    inputs_digest = collect_digest(ws, tasks_digest, model_digest)
    step = f"collect-shard-{shard}-of-{num_shards}"
    mine = shard_tasks(tasks, shard, num_shards)
    done_result = ws.finished(step, inputs_digest, f"collect: shard {shard}/{num_shards} ({len(mine)} tasks)")
    if done_result is not None:
        return done_result

    key = ws.shard_key(shard, num_shards)
    partial = ws.partial(key, inputs_digest)  # the finished shard of other settings stays as it is meanwhile
    local = ws.fetch(partial)
    done = finished_ids(local, inputs_digest)
    todo = [t for t in mine if t.id not in done]
    # What the shard holds, for the dashboard's "trees done of planned" while the partial file grows.
    ws.store.put_json(ws.key(f"progress/{step}.json"),
                      {"tasks": len(mine), "done": len(done), "startTime": time.time()})
    params = SearchParams.for_collect(spec)
    # The base, the store's copy, or fromRound's merge; or the server the operator named.
    policy = load_policy(served_model(spec.model), path_override=model_path)
    critic = load_policy(spec.model.model_copy(update={"backend": "scripted"})) if spec.collect.critic == "scripted" \
        else None
    start = time.perf_counter()
    with ws.runner() as executor:
        executor.localization = round_model(ws, executor)
        weak = list(executor.isolation)
        bar = tqdm(desc=f"collect shard {shard}/{num_shards}", unit="task", disable=None,
                   initial=len(done), total=len(mine))
        gate = CritiqueGate()
        searches = (Search(task, policy, executor, params, critic=critic, gate=gate) for task in todo)
        scheduler = Scheduler(spec.collect.trees_in_flight)
        loop_start, tokens_out = time.perf_counter(), 0
        for search in scheduler.run(searches):
            tokens_out += search.stats.tokens_out
            if gate.warning:
                steplog.log("critique off", level="warning", message=f"collect: {gate.warning}")
                gate.warning = None
            append_jsonl(local, {**search.record(), "inputs_digest": inputs_digest})
            ws.publish(partial)
            bar.update(1)
            if bar.disable:  # no terminal (a Job's log): one line per task instead of a bar
                steplog.log("task done", task=search.task.id, solved=search.solved, samples=search.stats.samples,
                            seconds=round(search.stats.wall_s, 1),
                            message=f"collect: {search.task.id}: solved={search.solved} "
                                    f"samples={search.stats.samples} {search.stats.wall_s:.1f}s")
        loop_s = time.perf_counter() - loop_start
    # Trees land as they finish; the finished shard lists them in task order, as a one-at-a-time run would.
    order = {t.id: i for i, t in enumerate(mine)}
    records = sorted(read_jsonl(local), key=lambda r: order.get(r["task_id"], len(order))) if local.exists() else []
    write_jsonl(local, records)
    result = {"tasks": len(records), "solved": sum(r["solved"] for r in records),
              "samples": sum(r["stats"]["samples"] for r in records)}
    if todo:  # this run's sampling speed: completion tokens over the search loop's wall time (model loaded)
        result["tokensPerSecond"] = round(tokens_out / loop_s, 1) if loop_s > 0 else 0.0
    if gate.judgements:  # how often the critic could rank at all (a model that cannot is switched off, see above)
        result["critiqueUsable"] = f"{gate.usable}/{gate.judgements}"
    if weak:  # the round's report repeats it: verdicts from a weakened sandbox are less trustworthy
        result["weakIsolation"] = "; ".join(weak)
    ws.complete(key, local, inputs_digest)
    speed = f", {result['tokensPerSecond']} tokens/s" if todo else ""
    return ws.finish(step, inputs_digest, result,
                     f"collect: shard {shard}/{num_shards}: {result['solved']}/{result['tasks']} tasks solved, "
                     f"{result['samples']} samples, {time.perf_counter() - start:.1f}s{speed} -> {ws.describe(key)}",
                     outputs=[key])
