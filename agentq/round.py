"""`agentq round run|status`: the embedded default, every step of a round in one process on one machine.

The runner only sequences the same step functions the Kubernetes Jobs run; each step decides for
itself whether its completion marker already matches its inputs, so a re-run resumes where an
interrupted one stopped and re-does only what a changed setting invalidated.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import yaml

from agentq import steplog
from agentq.config import ConfigError, RoundFile, load_round, parse_model
from agentq.workspace import STEPS, RoundWorkspace


def apply_preset(round_file: RoundFile, preset: str | None) -> RoundFile:
    """`tiny`: scripted generation and critique, the tiny random model for training, minimal budgets.

    It exercises every step, DPO included, in well under a minute; it measures nothing about skill.
    """
    if preset is None:
        return round_file
    if preset != "tiny":
        raise ValueError(f"unknown preset {preset!r}")
    spec = round_file.spec.model_copy(deep=True)
    spec.model.base, spec.model.backend = "tiny", "scripted"
    spec.model.max_new_tokens = 64
    spec.collect.shards, spec.collect.k, spec.collect.rollouts, spec.collect.depth = 1, 2, 3, 2
    spec.collect.stop_on_pass, spec.collect.critic = False, "scripted"
    spec.dataset.limit = min(spec.dataset.limit or 6, 6)
    spec.train.max_steps, spec.train.effective_batch_size, spec.train.eval_steps = 2, 2, 1
    spec.train.max_length, spec.train.lora.r, spec.train.lora.alpha = 512, 4, 8
    spec.evaluate.shards, spec.evaluate.rollouts, spec.evaluate.k = 1, 2, 2
    spec.evaluate.modes = ["zero_shot", "full_rewrite", "mcts"]
    return round_file.model_copy(update={"spec": spec})


def check_task_tests(ws: RoundWorkspace) -> None:
    """Stop before any work on tasks whose tests cannot run (they would train on noise, silently)."""
    from agentq.sandbox.executor import find_tests

    for split in ("train", "test"):
        tasks, _ = ws.tasks(split)
        bad = [(t.id, why) for t in tasks if isinstance(why := find_tests(t.tests), str)]
        if bad:
            listed = "; ".join(f"{task_id}: {why}" for task_id, why in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            path = getattr(ws.round.spec.dataset, split)
            raise ConfigError(f"{ws.source}: spec.dataset.{split}: {len(bad)} task(s) in {path} have tests that "
                              f"cannot run: {listed}{more}; fix or drop them (`agentq tasks validate {path}`)")


PHASE_OF_STEP = {"model": "Initializing", "collect": "Collecting", "preferences": "Preferences",
                 "train": "Training", "merge": "Merging", "evaluate": "Evaluating"}


class Progress:
    """`rounds/<name>/status.json`: what the embedded runner is doing, as the operator's resource status says it
    on Kubernetes (phase, step, each step's start and end). The dashboard reads it to show a round live; the
    completion markers alone cannot tell a running step from an abandoned one."""

    def __init__(self, ws: RoundWorkspace) -> None:
        self.ws = ws
        steps = ("model", *STEPS) if ws.round.spec.model.fetch_from else STEPS
        self.status: dict[str, Any] = {"phase": "Pending", "step": None, "startTime": time.time(),
                                       "steps": {step: {"state": "Pending"} for step in steps}}

    def _save(self) -> None:
        self.status["updatedTime"] = time.time()
        self.ws.store.put_json(self.ws.key("status.json"), self.status)

    def start(self, step: str) -> None:
        self.status.update(phase=PHASE_OF_STEP[step], step=step)
        self.status["steps"][step] = {"state": "Running", "startTime": time.time()}
        self._save()

    def done(self, step: str) -> None:
        self.status["steps"][step].update(state="Succeeded", completionTime=time.time())
        self._save()

    def end(self, phase: str, message: str = "") -> None:
        self.status.update(phase=phase, message=message, completionTime=time.time())
        step = self.status.get("step")
        if phase != "Succeeded" and step and self.status["steps"][step]["state"] == "Running":
            self.status["steps"][step].update(state=phase, completionTime=time.time())
        self._save()


def run_round(ws: RoundWorkspace) -> dict[str, Any]:
    progress = Progress(ws)
    try:
        timings = _run_steps(ws, progress)
    except BaseException as err:
        phase = "Interrupted" if isinstance(err, KeyboardInterrupt) else "Failed"
        progress.end(phase, f"{type(err).__name__}: {err}"[:500])
        raise
    progress.end("Succeeded")
    return timings


def _run_steps(ws: RoundWorkspace, progress: Progress) -> dict[str, float]:
    from agentq import collect, evaluate, preferences
    from agentq.train import dpo, merge

    spec = ws.round.spec
    check_task_tests(ws)
    timings: dict[str, float] = {}
    if spec.model.fetch_from:
        from agentq import fetch

        start = time.perf_counter()
        progress.start("model")
        steplog.bind(step="model")
        steplog.log("step started", message=f"== {ws.name}: model")
        fetch.run(ws)
        progress.done("model")
        timings["model"] = round(time.perf_counter() - start, 1)
    for step in STEPS:
        start = time.perf_counter()
        progress.start(step)
        steplog.bind(step=step)
        steplog.log("step started", message=f"== {ws.name}: {step}")
        if step == "collect":
            for shard in range(spec.collect.shards):
                with steplog.scoped(shard=shard):
                    collect.run(ws, shard, spec.collect.shards)
        elif step == "preferences":
            preferences.run(ws)
        elif step == "train":
            dpo.run(ws)
        elif step == "merge":
            merge.run(ws)
        else:
            for shard in range(spec.evaluate.shards):
                with steplog.scoped(shard=shard):
                    evaluate.run_shard(ws, shard, spec.evaluate.shards)
            evaluate.report(ws)
        progress.done(step)
        timings[step] = round(time.perf_counter() - start, 1)
    return timings


def run_main(args: argparse.Namespace) -> int:
    round_file = apply_preset(load_round(args.file), args.preset)
    ws = RoundWorkspace(round_file, str(args.file))
    start = time.perf_counter()
    timings = run_round(ws)
    print(f"round {ws.name} finished in {time.perf_counter() - start:.0f}s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())})")
    print(f"report: {ws.describe('eval/report.md')}")
    return 0


def step_states(ws: RoundWorkspace) -> list[tuple[str, str, dict[str, Any]]]:
    """(step, state, headline numbers) for each step; state is done, pending, or done-but-stale."""
    spec = ws.round.spec
    names = {"collect": [f"collect-shard-{i}-of-{spec.collect.shards}" for i in range(spec.collect.shards)]}
    rows = []
    for step in STEPS:
        markers = [ws.marker(name) for name in names.get(step, [step])]
        if all(m is None for m in markers):
            rows.append((step, "pending", {}))
            continue
        state = "done" if all(m is not None for m in markers) else "partial"
        result: dict[str, Any] = {}
        for m in markers:
            for key, value in ((m or {}).get("result") or {}).items():
                result[key] = result.get(key, 0) + value if isinstance(value, int | float) else value
        rows.append((step, state, result))
    return rows


def status_main(args: argparse.Namespace) -> int:
    round_file = load_round(args.file)
    ws = RoundWorkspace(round_file, str(args.file), save_spec=False)
    stored = ws.store.get_text(ws.key("spec.yaml")) if ws.store.exists(ws.key("spec.yaml")) else None
    if stored is not None:  # the spec the steps actually ran with (a preset may have changed it)
        ws.round = parse_model(yaml.safe_load(stored), RoundFile, ws.describe("spec.yaml"))
    print(f"round {ws.name} (store {ws.store.url})")
    for step, state, result in step_states(ws):
        numbers = ", ".join(f"{k}={v}" for k, v in result.items())
        print(f"  {step:<12} {state:<8} {numbers}")
    return 0


def clean_main(args: argparse.Namespace) -> int:
    """Remove a round's artifacts (the operator's cleanup Job for `deleteArtifacts: true` runs this)."""
    ws = RoundWorkspace(load_round(args.file), str(args.file), save_spec=False)
    removed = ws.store.delete_prefix(ws.prefix)
    print(f"removed {removed} objects of round {ws.name} from {ws.store.url}")
    return 0
