"""Collection throughput: the same shard searched one task at a time (the seed's path) and by the scheduler.

Both variants run in this process on the same tasks, search settings and sandbox, so each row pair is a
ratio measured in one run. Per variant: tasks/s, samples/s (rewrite samples; every task spends the same
budget, `stopOnPass` off), generate calls and mean sequences per call, i.e. how many sequences the
backend saw at once.

    python benchmarks/collection.py                   # CPU: tiny model through hf, mock server through openai
    python benchmarks/collection.py --gpu --write-docs  # GPU: random Qwen2.5-7B-shaped weights through hf:
                                                       # HF + NF4 one task at a time against bf16 batched

The openai rows ask tests/openai_server.py (a real HTTP server answering like the scripted mock, after
`--server-delay-s` per request, standing in for a server's latency); they measure the client and the
scheduler, not a model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the mock server (tests/openai_server.py) and its helpers

from agentq.config import ModelSpec  # noqa: E402
from agentq.io import replace_markdown_section  # noqa: E402
from agentq.policy.base import Policy, Request, Sample, load_policy  # noqa: E402
from agentq.sandbox import Limits, LocalExecutor  # noqa: E402
from agentq.search.mcts import Search, SearchParams  # noqa: E402
from agentq.search.scheduler import Scheduler  # noqa: E402
from agentq.tasks.humanevalfix import load_humanevalfix  # noqa: E402
from agentq.tasks.schema import Task, write_tasks  # noqa: E402

SECTION = "Collection"


class Counting:
    """A policy that counts its backend calls and the sequences they asked for."""

    def __init__(self, policy: Policy) -> None:
        self.policy, self.calls, self.sequences = policy, 0, 0

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        self.calls += 1
        self.sequences += sum(1 if r.temperature <= 0 else r.n for r in requests)
        return self.policy.generate_batch(requests)


def collect(policy: Policy, tasks: list[Task], params: SearchParams, executor: LocalExecutor,
            in_flight: int | None) -> dict[str, Any]:
    """One variant: None is the sequential path (Search.run per task), else the scheduler."""
    counting = Counting(policy)
    searches = (Search(t, counting, executor, params) for t in tasks)  # type: ignore[arg-type]
    start = time.perf_counter()
    done = [s.run() for s in searches] if in_flight is None else list(Scheduler(in_flight).run(searches))
    seconds = time.perf_counter() - start
    samples = sum(s.stats.samples for s in done)
    return {"variant": "sequential" if in_flight is None else f"scheduler ({in_flight} in flight)",
            "tasks": len(done), "samples": samples, "solved": sum(s.solved for s in done),
            "seconds": round(seconds, 2), "tasks_per_s": round(len(done) / seconds, 3),
            "samples_per_s": round(samples / seconds, 2), "generate_calls": counting.calls,
            "sequences_per_call": round(counting.sequences / max(counting.calls, 1), 2)}


@contextmanager
def backend(name: str, tasks: list[Task], args: argparse.Namespace) -> Iterator[tuple[str, Policy, Policy]]:
    """(label, policy for the sequential path, policy for the scheduler)."""
    if name == "hf-tiny":
        policy = load_policy(ModelSpec(base="tiny", backend="hf", dtype="float32"))
        yield "tiny, hf fp32", policy, policy
    elif name == "openai-mock":
        from openai_server import running_server

        with tempfile.TemporaryDirectory() as folder:
            write_tasks(Path(folder) / "tasks.jsonl", tasks)
            with running_server([Path(folder) / "tasks.jsonl"], "--delay-s", str(args.server_delay_s)) as url:
                policy = load_policy(ModelSpec(base="tiny", backend="openai",
                                               openai={"url": url, "model": "mock", "concurrency": 64}))
                yield f"mock server, openai ({args.server_delay_s * 1000:.0f} ms/request)", policy, policy
    else:  # gpu: the bf16 model is loaded by `measure` once the seed's NF4 one has left the GPU
        seed_path = load_policy(ModelSpec(base=str(_random_7b()), backend="hf", dtype="bfloat16", quantization="nf4"))
        yield "Qwen2.5-7B shape (random), hf: NF4 one at a time vs bf16 batched", seed_path, None  # type: ignore[misc]


def measure(name: str, tasks: list[Task], params: SearchParams, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with LocalExecutor(workers=args.workers, limits=Limits(timeout_s=args.timeout_s)) as executor, \
            backend(name, tasks, args) as (label, sequential, batched):
        warm = tasks[:1]
        collect(sequential, warm, params, executor, None)  # first calls pay for kernels and the fork server
        rows.append({"backend": label, **collect(sequential, tasks, params, executor, None)})
        if batched is None:  # gpu: the seed's NF4 model leaves the GPU, the bf16 one arrives
            import gc

            import torch

            del sequential
            gc.collect()
            torch.cuda.empty_cache()
            batched = load_policy(ModelSpec(base=str(_random_7b()), backend="hf", dtype="bfloat16"))
            collect(batched, warm, params, executor, args.in_flight)
        rows.append({"backend": label, **collect(batched, tasks, params, executor, args.in_flight)})
    rows[1]["ratio"] = round(rows[1]["tasks_per_s"] / rows[0]["tasks_per_s"], 2)
    rows[0]["ratio"] = 1.0
    return rows


def _random_7b() -> Path:
    from generation import random_7b_dir  # benchmarks/ is on the path when this file runs as a script

    return random_7b_dir()


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"torch threads, load average {os.getloadavg()[0]:.1f} at the end of the run)")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backend | variant | tasks | samples | seconds | tasks/s | samples/s | generate calls | "
             "sequences/call | ratio (tasks/s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['variant']} | {r['tasks']} | {r['samples']} | {r['seconds']:.2f} | "
                     f"{r['tasks_per_s']:.3f} | {r['samples_per_s']:.2f} | {r['generate_calls']} | "
                     f"{r['sequences_per_call']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--gpu", action="store_true", help="the 7B-shaped row (needs CUDA; not run on CPU)")
    parser.add_argument("--backends", default="hf-tiny,openai-mock", help="CPU rows: hf-tiny, openai-mock")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in the shard (default 8 CPU, 64 GPU)")
    parser.add_argument("--in-flight", type=int, default=None, help="trees in flight (default: all tasks)")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 32 CPU, 256 GPU")
    parser.add_argument("--server-delay-s", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="sandbox timeout per candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--write-docs", default=None, nargs="?", const="docs/benchmarks.md",
                        help=f"replace the '{SECTION}' section of this markdown file")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON object last")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA GPU")
    args.tasks = args.tasks or (64 if args.gpu else 8)
    args.in_flight = args.in_flight or args.tasks
    tokens = args.max_new_tokens or (256 if args.gpu else 32)
    params = SearchParams(k=args.k, rollouts=args.rollouts, depth=args.depth, stop_on_pass=False,
                          max_new_tokens=tokens, critique_max_new_tokens=min(tokens, 64), seed=0)
    tasks = load_humanevalfix(Path(args.data_dir))[:args.tasks]
    rows = []
    for name in ["gpu"] if args.gpu else [b.strip() for b in args.backends.split(",") if b.strip()]:
        rows += measure(name, tasks, params, args)
    device = device_name()
    settings = (f"{args.tasks} HumanEvalFix tasks, k={args.k}, rollouts={args.rollouts}, depth={args.depth}, "
                f"max_new_tokens={tokens}, critique on (self), {args.workers} sandbox workers")
    text = f"Device: {device}. {settings}.\n\n{table(rows)}"
    print(text)
    if args.write_docs:
        command = "python benchmarks/collection.py " + " ".join(argv if argv is not None else sys.argv[1:])
        replace_markdown_section(args.write_docs, SECTION, f"## {SECTION}\n\n`{command.strip()}`\n\n{text}\n")
    if args.json:
        print(json.dumps({"device": device, "settings": settings, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
