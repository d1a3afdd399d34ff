"""`agentq round run|status`: the embedded default, every step of a round in one process on one machine.

The runner only sequences the same step functions the Kubernetes Jobs run; each step decides for
itself whether its completion marker already matches its inputs, so a re-run resumes where an
interrupted one stopped and re-does only what a changed setting invalidated. On a machine with several
GPUs the collect and evaluate shards run in parallel processes, one per GPU (`run_sharded`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import yaml

from agentq import steplog
from agentq.config import ConfigError, RoundFile, RoundSpec, load_round, parse_model
from agentq.workspace import STEPS, RoundWorkspace


def apply_preset(round_file: RoundFile, preset: str | None) -> RoundFile:
    """`tiny`: scripted generation and critique, the tiny random model for training, minimal budgets.

    A round on `backend: openai` keeps its server for generation and critique (a mock server answers like
    the scripted backend); the tiny model is then only what train and merge work on.

    It exercises every step, DPO included, in well under a minute; it measures nothing about skill.
    """
    if preset is None:
        return round_file
    if preset != "tiny":
        raise ValueError(f"unknown preset {preset!r}")
    spec = round_file.spec.model_copy(deep=True)
    served = spec.model.backend == "openai"  # the server stands in for the model: it generates and critiques
    spec.model.base, spec.model.backend = "tiny", "openai" if served else "scripted"
    spec.model.max_new_tokens = 64
    spec.collect.shards, spec.collect.k, spec.collect.rollouts, spec.collect.depth = 1, 2, 3, 2
    spec.collect.stop_on_pass, spec.collect.critic = False, "self" if served else "scripted"
    spec.dataset.limit = min(spec.dataset.limit or 6, 6)
    spec.train.max_steps, spec.train.effective_batch_size, spec.train.eval_steps = 2, 2, 1
    spec.train.max_length, spec.train.lora.r, spec.train.lora.alpha = 512, 4, 8
    spec.evaluate.shards, spec.evaluate.rollouts, spec.evaluate.k = 1, 2, 2
    spec.evaluate.modes = ["zero_shot", "full_rewrite", "mcts"]
    return round_file.model_copy(update={"spec": spec})


def check_task_tests(ws: RoundWorkspace) -> None:
    """Stop before any work on function tasks whose tests cannot run (they would train on noise, silently).
    A repo task's tests are the library's own suite, checked against its sdist by `agentq tasks validate`."""
    from agentq.sandbox.executor import find_tests

    for split in ("train", "test"):
        tasks, _ = ws.tasks(split)
        bad = [(t.id, why) for t in tasks if t.kind == "function" and isinstance(why := find_tests(t.tests), str)]
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
    from agentq import evaluate, preferences
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
            run_sharded(ws, "collect")
        elif step == "preferences":
            preferences.run(ws)
        elif step == "train":
            dpo.run(ws)
        elif step == "merge":
            merge.run(ws)
        else:
            run_sharded(ws, "evaluate")
            evaluate.report(ws)
        progress.done(step)
        timings[step] = round(time.perf_counter() - start, 1)
    return timings


LOCAL_MODEL_BACKENDS = ("hf", "vllm")  # the backends that load the model into this machine's GPUs


def local_devices(spec: RoundSpec, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The CUDA devices the embedded runner may spread shards over; none when the backend loads no model here
    (scripted, openai) or no GPU is visible. CUDA_VISIBLE_DEVICES, when set, is the list."""
    if spec.model.backend not in LOCAL_MODEL_BACKENDS:
        return []
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def plan_shards(num_shards: int, devices: list[str]) -> list[tuple[str | None, list[int]]]:
    """(device, shards) per worker process: shard i on devices[i mod len(devices)], and no more workers than
    shards. Without devices, one group on no particular device: every shard in this process, as on a CPU."""
    if not devices:
        return [(None, list(range(num_shards)))]
    groups = [(device, list(range(i, num_shards, len(devices)))) for i, device in enumerate(devices)]
    return [(device, shards) for device, shards in groups if shards]


def run_sharded(ws: RoundWorkspace, step: str, devices: list[str] | None = None) -> list[dict[str, Any]]:
    """Every shard of collect or evaluate: in parallel processes, one per local GPU, each loading the model once
    for all its shards; with one GPU or none, in this process one shard after another (the model still loaded
    once). Returns what each worker did (device, pid, shards, models loaded)."""
    num_shards = ws.round.spec.collect.shards if step == "collect" else ws.round.spec.evaluate.shards
    plan = plan_shards(num_shards, local_devices(ws.round.spec) if devices is None else devices)
    if len(plan) == 1:
        return [_run_group(ws, step, plan[0][0], plan[0][1], num_shards)]
    round_json = ws.round.model_dump(mode="json", by_alias=True)
    context = multiprocessing.get_context("spawn")  # a forked CUDA context is unusable; spawn starts clean
    with ProcessPoolExecutor(max_workers=len(plan), mp_context=context) as pool:
        futures = [pool.submit(_device_worker, round_json, ws.source, step, device, shards, num_shards)
                   for device, shards in plan]
        return [f.result() for f in futures]


def _device_worker(round_json: dict[str, Any], source: str, step: str, device: str, shards: list[int],
                   num_shards: int) -> dict[str, Any]:
    """One worker process: only `device` visible (set before anything touches CUDA), its shards in turn."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    ws = RoundWorkspace(RoundFile.model_validate(round_json), source, save_spec=False)
    steplog.bind(step=step)  # a spawned process starts without the parent's log context (the workspace binds the round)
    return _run_group(ws, step, device, shards, num_shards)


def _run_group(ws: RoundWorkspace, step: str, device: str | None, shards: list[int],
               num_shards: int) -> dict[str, Any]:
    from agentq import collect, evaluate
    from agentq.policy import base

    with base.reusing_policies():
        if step == "collect":
            for shard in shards:
                with steplog.scoped(shard=shard):
                    collect.run(ws, shard, num_shards)
        else:
            evaluate.run_shards(ws, shards, num_shards)
        return {"device": device, "pid": os.getpid(), "shards": shards, "loads": base._Reuse.loads}


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
