"""`agentq` command line: every step a Kubernetes Job runs is a subcommand here.

Heavy modules (torch, transformers, boto3) are imported only by the subcommand that needs them, so
`agentq --help` and the sandbox/controller images stay fast and small.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Callable

from agentq import steplog
from agentq.config import ConfigError

Handler = Callable[[argparse.Namespace], int | None]


def _lazy(target: str) -> Handler:
    module_name, func_name = target.split(":")

    def call(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module_name), func_name)(args)

    return call


def _round_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--round", required=True, metavar="ROUND_YAML", help="AgentQRound file (same as kubectl apply)")


def _preset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["tiny"], default=None, help="tiny: tiny random model + scripted critique")


def _weak_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-weak-isolation", action="store_true",
                   help="run candidates even where full sandbox isolation is missing (each verdict says what is)")


def _shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", type=int, default=0, help="this shard's index (0-based)")
    p.add_argument("--num-shards", type=int, default=1, help="how many shards split the tasks")


def serve_args(p: argparse.ArgumentParser) -> None:
    """`agentq serve`'s options; controller.dashboard (the cluster-side service) takes the same ones."""
    p.add_argument("--store", required=True, help="the rounds' store: a directory or s3://bucket[/prefix]")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8265)
    p.add_argument("--token-file", default=None, help="bearer token file (else env AGENTQ_SERVE_TOKEN; none: open)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the page may be opened by (repeat; beyond IP literals and localhost; '*': any). "
                   "Checked always without a token, with one only when given: see docs/dashboard.md")
    p.add_argument("--poll-interval", type=float, default=0.25,
                   help="seconds between reads for the event stream (a new tree reaches the page within it)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tasks = sub.add_parser("tasks", help="build and validate task corpora")
    tasks = tasks.add_subparsers(dest="tasks_cmd", required=True)
    p = tasks.add_parser("build", help="convert a raw data set into validated task JSONL + a train/test split")
    p.add_argument("--source", required=True, choices=["debugbench", "humanevalfix", "repos"])
    p.add_argument("--data-dir", default="../shared/data", help="folder holding debugbench/, humanevalfix/, repos/")
    p.add_argument("--out", required=True, help="output JSONL; the split goes beside it as *.train.jsonl/*.test.jsonl")
    p.add_argument("--test-share", type=float, default=0.2, help="share of groups in the test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=0, help="hidden differential test cases to add per task")
    g = p.add_argument_group("repos", "repository tasks (--source repos)")
    g.add_argument("--libraries", help="comma-separated library names to build (default: every sdist)")
    g.add_argument("--per-library", type=int, default=400, help="mutants tried per library at most")
    g.add_argument("--per-operator", type=int, default=100, help="mutants tried per operator and library at most")
    g.add_argument("--max-failing", type=int, default=20, help="a mutant failing more tests than this is dropped")
    g.add_argument("--max-p2p", type=int, default=200, help="pass-to-pass tests kept per task at most")
    g.add_argument("--combine", type=int, default=10,
                   help="tasks combining 2-3 kept mutants of one function or call chain, per library")
    g.add_argument("--wrong-variable-share", type=float, default=0.2,
                   help="wrong-variable mutants at most this share of a library's sites (they outnumber the rest)")
    g.add_argument("--jobs", type=int, default=1, help="mutants run at once (each worker its own scratch tree)")
    g.add_argument("--shard", type=int, default=None,
                   help="build only every --num-shards-th library from this one (an Indexed Job's pod); without "
                        "it, the progress of every shard over --out is merged into the corpus")
    g.add_argument("--num-shards", type=int, default=1)
    g.add_argument("--issue-model", metavar="MODEL_YAML",
                   help="a model (a round file's `model:` block) writes each issue; leaking answers fall back")
    g.add_argument("--rewrite-model", metavar="MODEL_YAML",
                   help="a model rewrites functions with a bug (SWE-smith's LM mode), checked as every mutant is")
    g.add_argument("--rewrites", type=int, default=20, help="model-written bugs per library (with --rewrite-model)")
    g.add_argument("--holdout", help="comma-separated libraries for the test split (default: by hash, --test-share)")
    g.add_argument("--cache", help="where pristine trees and baselines live (default: beside --out)")
    g.add_argument("--run-timeout", type=float, default=300.0, help="wall-clock seconds per pytest run")
    g.add_argument("--baseline-timeout", type=float, default=1800.0,
                   help="wall-clock seconds for each of a library's two whole-suite baseline runs")
    g.add_argument("--test-timeout", type=int, default=5,
                   help="seconds per test in a mutant's run (the first test past it ends the run)")
    p.add_argument("--json", action="store_true", help="print a JSON summary last")
    _weak_arg(p)
    p.set_defaults(func=_lazy("agentq.tasks.build:main"))
    p = tasks.add_parser("validate", help="check every reference passes and every buggy program fails")
    p.add_argument("file")
    p.add_argument("--data-dir", default="../shared/data", help="repo tasks: folder holding repos/<sdist>")
    p.add_argument("--cache", help="repo tasks: where pristine trees are unpacked (default: a temp folder)")
    p.add_argument("--swebench-url", help="SWE-bench tasks: the `python -m controller.swebench serve` service that "
                   "runs their patches in the instance images (without it they are listed as not checked)")
    p.add_argument("--json", action="store_true", help="print a JSON summary last")
    _weak_arg(p)
    p.set_defaults(func=_lazy("agentq.tasks.validate:main"))
    p = tasks.add_parser("split", help="train/test split by group, refused if train and test share a problem")
    p.add_argument("file")
    p.add_argument("--out-prefix", required=True, help="writes PREFIX.train.jsonl and PREFIX.test.jsonl")
    p.add_argument("--test-share", type=float, default=0.2, help="share of groups in the test split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-merge", action="store_true", help="split by the groups as given (near-duplicates not merged)")
    p.set_defaults(func=_lazy("agentq.tasks.split:main"))

    sandbox = sub.add_parser("sandbox", help="run candidates safely").add_subparsers(dest="sandbox_cmd", required=True)
    p = sandbox.add_parser("serve", help="HTTP sandbox server (what sandbox pods run)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (another than loopback needs "
                   "AGENTQ_SANDBOX_TOKEN)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--max-timeout", type=float, default=60.0, help="largest wall-clock limit a caller may ask for")
    p.add_argument("--max-memory-mb", type=int, default=2048, help="largest memory limit a caller may ask for")
    p.add_argument("--max-procs", type=int, default=64, help="largest process limit a caller may ask for")
    p.add_argument("--repo-data-dir", help="serve repository runs (POST /run_repo) from the sdists in this folder")
    p.add_argument("--repo-cache", help="where pristine repository trees are unpacked (default: <data-dir>/.trees)")
    _weak_arg(p)
    p.set_defaults(func=_lazy("agentq.sandbox.server:main"))
    p = sandbox.add_parser("bench", help="warm executor vs one fresh pytest per candidate, on HumanEvalFix")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--workers", type=int, default=None, help="workers on each path (default: two per usable core)")
    p.add_argument("--json", action="store_true", help="print a JSON summary last")
    p.add_argument("--budget-floor", type=float, default=None, metavar="SECONDS",
                   help="the time budgets' floor (default: the sandbox's, limits.BUDGET_FLOOR_S)")
    _weak_arg(p)
    p.set_defaults(func=_lazy("agentq.sandbox.bench:main"))

    p = sub.add_parser("collect", help="MCTS over full rewrites; writes trajectories/shard-i-of-n.jsonl")
    _round_arg(p)
    _shard_args(p)
    p.set_defaults(func=_lazy("agentq.collect:main"))
    p = sub.add_parser("preferences", help="turn trajectories into DPO preference pairs")
    _round_arg(p)
    p.set_defaults(func=_lazy("agentq.preferences:main"))
    p = sub.add_parser("train", help="DPO + LoRA on the round's preference pairs")
    _round_arg(p)
    p.set_defaults(func=_lazy("agentq.train.dpo:main"))
    p = sub.add_parser("merge", help="merge the adapter into the base model")
    _round_arg(p)
    p.set_defaults(func=_lazy("agentq.train.merge:main"))
    p = sub.add_parser("evaluate", help="zero_shot / full_rewrite / mcts pass rates")
    _round_arg(p)
    _shard_args(p)
    p.add_argument("--report-only", action="store_true", help="only combine finished shards into the report")
    p.set_defaults(func=_lazy("agentq.evaluate:main"))

    model = sub.add_parser("model", help="the round's base model")
    model = model.add_subparsers(dest="model_cmd", required=True)
    p = model.add_parser("fetch", help="copy spec.model.fetchFrom into the store at spec.model.base (store:<key>)")
    _round_arg(p)
    p.set_defaults(func=_lazy("agentq.fetch:main"))
    p = model.add_parser("serve-scripted", help="the scripted model behind an OpenAI chat-completions API (the "
                                               "mock-model image's stand-in for vLLM)")
    from agentq.policy.scripted_server import add_arguments

    add_arguments(p)
    p.set_defaults(func=_lazy("agentq.policy.scripted_server:main"))

    rnd = sub.add_parser("round", help="run a whole round on this machine")
    rnd = rnd.add_subparsers(dest="round_cmd", required=True)
    p = rnd.add_parser("run", help="collect -> preferences -> train -> merge -> evaluate, resuming finished steps")
    p.add_argument("file", metavar="ROUND_YAML")
    _preset_arg(p)
    p.set_defaults(func=_lazy("agentq.round:run_main"))
    p = rnd.add_parser("status", help="each step's state and the headline numbers")
    p.add_argument("file", metavar="ROUND_YAML")
    p.set_defaults(func=_lazy("agentq.round:status_main"))
    p = rnd.add_parser("clean", help="delete the round's artifacts from its store")
    p.add_argument("file", metavar="ROUND_YAML")
    p.set_defaults(func=_lazy("agentq.round:clean_main"))

    campaign = sub.add_parser("campaign", help="rounds 1..N, each from the previous round's merged model")
    campaign = campaign.add_subparsers(dest="campaign_cmd", required=True)
    p = campaign.add_parser("run", help="run the rounds until the last one or until no gain for stop.patience")
    p.add_argument("file", metavar="CAMPAIGN_YAML")
    _preset_arg(p)
    p.set_defaults(func=_lazy("agentq.campaign:run_main"))

    p = sub.add_parser("serve", help="the dashboard: REST API, live event stream, /metrics and a page over a store")
    serve_args(p)
    p.set_defaults(func=_lazy("agentq.serve.main:main"))
    return parser


def quiet_library_output() -> None:
    """Keep what a step prints for a person: agentq's own bar per step (each passes `disable` itself) and the
    step summaries. The model libraries would bury them under a bar per load or save (transformers' "Loading
    weights" and "Writing model shards", the GGUF de-quantisation bar, datasets' map bars) and FutureWarnings
    meant for library developers. Set before those libraries are imported; a user's own settings win."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm's default for bars whose caller does not choose
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' and datasets' own bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.simplefilter("ignore", FutureWarning)


# Errors that are the user's to fix (a bad file, an unreachable store or sandbox): one line, never a traceback.
# Named rather than imported, so `agentq --help` stays free of the modules that define them.
USER_ERRORS = frozenset({
    "agentq.tasks.schema.TaskFileError",
    "agentq.store.StoreError",
    "agentq.sandbox.client.SandboxUnavailable",
    "agentq.sandbox.executor.WorkerDied",
    "agentq.policy.base.PolicyError",
    "agentq.policy.models.ModelLoadError",
    "agentq.localize.dense.EmbedderError",
})


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, ConfigError) or any(f"{c.__module__}.{c.__qualname__}" in USER_ERRORS
                                                for c in type(err).__mro__)


STEPS = ("collect", "preferences", "train", "merge", "evaluate", "model")


class Terminated(BaseException):
    """SIGTERM: a pod deleted, a node drained. Unwound like Ctrl-C, so the step's locks and partial outputs are
    released before it exits. Needed in a container above all: there the step is PID 1, which the kernel spares
    from every signal it has no handler for, so without one it would run on until SIGKILL, holding its lock
    while the Job's next pod starts and is refused."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_output()
    signal.signal(signal.SIGTERM, _terminated)  # servers started below install their own
    if args.command in STEPS:  # every line the step logs says which step and shard it came from
        steplog.bind(step=args.command, shard=getattr(args, "shard", None))
    try:
        rc = args.func(args)
    except Exception as err:  # noqa: BLE001 - user errors become one line; anything else is a bug, re-raised
        if not is_user_error(err):
            raise
        print(f"agentq: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentq: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Terminated:
        print("agentq: terminated; re-run the same command to resume", file=sys.stderr)
        return 143
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
