"""The repository repair agent end to end: resolve rate and attempts per strategy, on a slice of a repo corpus.

Each task is searched as a round's collect step searches it (agentq/search/mcts.py over agentq/repair/problem.py:
localised context, patches parsed from the answers, repository runs in the sandbox), once per strategy:

* single: one attempt (the baseline: no reflection),
* reflection: up to `--attempts` attempts, each prompted with the earlier ones' category and failing output,
* mcts: K=2 patches per expansion, `--attempts` expansions (so up to 2x the samples of reflection).

`--localize model` ranks each prompt's files as a round does with its fitted localisation model
(agentq/repair/localization.py): fitted on the corpus's tasks from *other* libraries than the slice's, the
prompt gets its conformal set; `bm25` (default) gives BM25's top 3, as a round without a model. Context recall
is the share of searches whose prompt shows every gold file (the files the bug patch touches): what any model
needs, whatever it answers.

Resolve rate is the share of tasks with a resolving patch; attempts is the mean number of model answers per
task (spent until the first resolving one, or all of them); `categories` counts the reflection taxonomy over
every attempt. Tokens in/out per task are what the task's search spent (every request's prompt once, every
answer's completion; agentq/policy/base.py), and cost per task prices them at `--price-in`/`--price-out` USD per
million tokens (n/a without both). The scripted backend measures the machinery (its answers are a fixed
mixture, so reflection helps only by drawing again); `--model smollm2-135m --backend hf` a real small model
(slow on CPU: few tasks).

Prompt size: every prompt of every search is measured against the budget (`--prompt-tokens`, the round's
`localize.promptTokens`): estimated tokens (agentq/repair/context.py) and, with `--tokenizer NAME` (a model
whose tokenizer loads locally, e.g. smollm2-135m), the tokenizer's own count; `within_budget` is the share of
prompts at or under the budget by each count. `unbounded_tokens` is what the same issue with the prompt's files
in full would have cost (the old context: whole files). `--honest` searches as evaluation does (only the agent's
own reproduction tests run; the final answer is judged once), else as collection does.

    PYTHONPATH=. python benchmarks/repo_agent.py --tasks corpus.jsonl --data-dir ../shared/data --limit 6 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from agentq.config import LocalizeSpec, ModelSpec, PricingSpec
from agentq.localize.corpus import patch_files
from agentq.policy.base import load_policy
from agentq.repair.context import estimate_tokens
from agentq.repair.localization import RoundLocalization, fit_model
from agentq.repair.reflection import prompt_tokens
from agentq.sandbox.repo import RepoExecutor, SdistStore
from agentq.sandbox.runner import Runner
from agentq.search.mcts import Search, SearchParams
from agentq.tasks.schema import read_tasks


def strategies(attempts: int) -> dict[str, SearchParams]:
    base = SearchParams(critique=False, stop_on_pass=True, temperature=0.8)
    return {"single": base.reflection(1), "reflection": base.reflection(attempts),
            "mcts": base.replace(k=2, root_k=2, depth=2, rollouts=attempts)}


def pick(tasks: list, limit: int) -> list:
    """Round-robin over libraries, so a slice covers as many as it can."""
    by_lib: dict[str, list] = {}
    for task in tasks:
        by_lib.setdefault(task.group, []).append(task)
    picked: list = []
    while len(picked) < min(limit, len(tasks)):
        for lib in sorted(by_lib):
            if by_lib[lib] and len(picked) < limit:
                picked.append(by_lib[lib].pop(0))
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", required=True, help="a repo-task JSONL (agentq tasks build --source repos)")
    parser.add_argument("--data-dir", default="../shared/data", help="the folder whose repos/ holds the sdists")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--model", default="tiny", help="model.base (with --backend hf: e.g. smollm2-135m)")
    parser.add_argument("--backend", default="scripted", choices=("scripted", "hf", "openai", "vllm"))
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=3, help="scripted: repeats with other seeds (its draws vary)")
    parser.add_argument("--strategies", default="single,reflection,mcts")
    parser.add_argument("--price-in", type=float, help="USD per million prompt tokens (with --price-out: cost/task)")
    parser.add_argument("--price-out", type=float, help="USD per million completion tokens")
    parser.add_argument("--localize", default="bm25", choices=("bm25", "model"),
                        help="prompt files: BM25's top 3, or the conformal set of a model fitted on other libraries")
    parser.add_argument("--coverage", type=float, default=0.9, help="--localize model: the set's target coverage")
    parser.add_argument("--prompt-tokens", type=int, default=LocalizeSpec().prompt_tokens,
                        help="every prompt's budget (estimated tokens), as localize.promptTokens")
    parser.add_argument("--tokenizer", help="also count prompt tokens with this model's tokenizer (e.g. smollm2-135m)")
    parser.add_argument("--honest", action="store_true", help="search as evaluation does (no hidden test runs)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        corpus = read_tasks(args.tasks, kinds=("repo",))
        tasks = pick(list(corpus), args.limit)
    except ValueError as err:
        print(f"repo_agent: {err}", file=sys.stderr)
        return 2
    if (args.price_in is None) != (args.price_out is None):
        print("repo_agent: --price-in and --price-out go together (USD per million prompt / completion tokens)",
              file=sys.stderr)
        return 2
    pricing = None if args.price_in is None else PricingSpec(input_per_million=args.price_in,
                                                             output_per_million=args.price_out)
    policy = load_policy(ModelSpec(base=args.model, backend=args.backend, max_new_tokens=args.max_new_tokens))
    seeds = range(args.seeds if args.backend == "scripted" else 1)
    wanted = args.strategies.split(",")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="agentq-bench-") as cache:
        runner = Runner(None, SdistStore(Path(args.data_dir) / "repos", RepoExecutor(Path(cache))))
        fitted_on = 0
        runner.localization = RoundLocalization(None, None, args.prompt_tokens)
        if args.localize == "model":
            others = [t for t in corpus if t.group not in {s.group for s in tasks}]
            model, why = fit_model(others, runner, LocalizeSpec(coverage=args.coverage))
            if model is None:
                print(f"repo_agent: no localisation model from the other libraries' tasks: {why}", file=sys.stderr)
                return 2
            runner.localization, fitted_on = RoundLocalization(model, None, args.prompt_tokens), len(others)
        count = _tokenizer(args.tokenizer)
        for name, params in strategies(args.attempts).items():
            if name not in wanted:
                continue
            started = time.monotonic()
            resolved, samples, runs, tokens_in, tokens_out, categories = 0, 0, 0, 0, 0, Counter()
            shown, context_files, sizes, real, unbounded = 0, 0, [], [], []
            for seed in seeds:
                for task in tasks:
                    search = Search(task, policy, runner, params.replace(seed=seed), visible_only=args.honest).run()
                    best = search.best()
                    resolved += (search.problem.final(best.code, runner)["solved"] if best else False) \
                        if args.honest else search.solved
                    for node in search.nodes[1:]:
                        if node.prompt:
                            sizes.append(prompt_tokens(node.prompt))
                            if count is not None:
                                real.append(sum(count(m["content"]) + 4 for m in node.prompt))
                    problem = search.problem
                    unbounded.append(estimate_tokens(task.problem_text()) + sum(
                        estimate_tokens(problem.tree.joinpath(f).read_text(errors="replace")) for f in problem.context))
                    samples += search.stats.samples
                    runs += search.stats.executions
                    tokens_in += search.stats.tokens_in
                    tokens_out += search.stats.tokens_out
                    categories.update(n.category for n in search.nodes[1:])
                    files = search.problem.notes["localization"]["files"]
                    shown += set(patch_files(task.bug_patch)) <= set(files)
                    context_files += len(files)
            n = len(tasks) * len(seeds)
            cost = pricing.cost(tokens_in / n, tokens_out / n) if pricing else None
            rows[name] = {"tasks": len(tasks), "searches": n, "resolve_rate": round(resolved / n, 4),
                          "mean_attempts": round(samples / n, 3), "sandbox_runs": runs,
                          "context_recall": round(shown / n, 4), "context_files": round(context_files / n, 2),
                          "tokens_in_per_task": round(tokens_in / n, 1),
                          "tokens_out_per_task": round(tokens_out / n, 1),
                          "cost_per_task_usd": None if cost is None else round(cost, 6),
                          "seconds": round(time.monotonic() - started, 1), "categories": dict(categories),
                          "prompts": len(sizes), "prompt_tokens_budget": args.prompt_tokens,
                          "prompt_tokens_mean": round(sum(sizes) / max(len(sizes), 1), 1),
                          "prompt_tokens_max": max(sizes, default=0),
                          "within_budget": round(sum(x <= args.prompt_tokens for x in sizes) / max(len(sizes), 1), 4),
                          "unbounded_tokens_mean": round(sum(unbounded) / max(len(unbounded), 1), 1),
                          "unbounded_tokens_max": max(unbounded, default=0)}
            if count is not None:
                rows[name] |= {"tokenizer": args.tokenizer, "tokenizer_tokens_max": max(real, default=0),
                               "tokenizer_tokens_mean": round(sum(real) / max(len(real), 1), 1),
                               "within_budget_by_tokenizer": round(sum(x <= args.prompt_tokens for x in real)
                                                                   / max(len(real), 1), 4)}
            print(f"{name:>10}: resolve {resolved}/{n} ({resolved / n:.0%}), {samples / n:.2f} attempts/task, "
                  f"gold files in the prompt {shown}/{n} ({context_files / n:.2f} files), "
                  f"{runs} sandbox runs, tokens/task {tokens_in / n:.0f} in {tokens_out / n:.0f} out, cost/task "
                  f"{'n/a' if cost is None else f'${cost:.6f}'}, {rows[name]['seconds']}s; prompts "
                  f"{len(sizes)}: max {rows[name]['prompt_tokens_max']} of {args.prompt_tokens} est. tokens "
                  f"(within {rows[name]['within_budget']:.0%}; whole files would be "
                  f"{rows[name]['unbounded_tokens_mean']:.0f} on average, {rows[name]['unbounded_tokens_max']} max)",
                  flush=True)
    base = rows.get("single", {}).get("resolve_rate")
    result = {"benchmark": "repo_agent", "model": args.model, "backend": args.backend, "attempts": args.attempts,
              "honest": args.honest, "prompt_tokens_budget": args.prompt_tokens,
              "localize": args.localize, "localization_fitted_on": fitted_on,
              "coverage": args.coverage if args.localize == "model" else None,
              "price_in_per_million": args.price_in, "price_out_per_million": args.price_out,
              "tasks": [t.task_id for t in tasks], "libraries": sorted({t.group for t in tasks}), "strategies": rows}
    if base:
        result["resolve_ratio_vs_single"] = {k: round(r["resolve_rate"] / base, 3) for k, r in rows.items()}
    if args.json:
        print(json.dumps(result))
    return 0


def _tokenizer(name: str | None):  # noqa: ANN202 - a text -> token count function, or None
    """A model's own tokenizer as a counter (loaded locally: agentq/policy/models.py), or None without --tokenizer."""
    if not name:
        return None
    from agentq.policy.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(name))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


if __name__ == "__main__":
    raise SystemExit(main())
