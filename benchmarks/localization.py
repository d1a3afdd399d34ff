"""File localisation: Recall@1/5, conformal coverage and mean set size per stage, against BM25 alone.

Stages are cumulative: BM25 only; + dense (all-MiniLM-L6-v2 int8); + a cross-encoder over the best text hits
(only with --cross-encoder DIR, a local model); + PPR over the import graph; + the test-import prior (each
fused by Reciprocal Rank Fusion); + the reranker learned over all of them. The dense retriever, the
cross-encoder and the test prior are also measured alone. Held out by library: the libraries are split into
folds; for each fold the reranker and the softmax temperature are fitted on half of the other libraries,
the conformal threshold is calibrated on the other half (for every stage alike), and the fold's libraries
are the test set. Figures are over the test tasks of every fold.

Corpus: `--tasks` reads a repo-task JSONL (gold = the files its bug_patch touches); without it, synthetic
tasks are built from the sdists in `--repos` (agentq.localize.corpus.synthetic_tasks: no test is run, and the
report names the function, so it is easier than a real report). The learned parts are fitted on real tasks only:
a synthetic task's test ids are taken from tests that import its gold module, so its test prior is an oracle,
and a reranker fitted on it leans on that stage and collapses on real tasks. On synthetic tasks there is no test
prior and no reranker row. On real tasks the test prior is measured (it reads the failing tests' ids, which an
honest evaluation never has: marked so) and the reranker is fitted without it, as the round's model is.

Calibration uses only tasks with two or more candidate files (a library of one module gives every set size 1,
q-hat 0, and says nothing about coverage). The JSON has coverage per library and per fold for every row.
`--lite` measures SWE-bench Lite instead, each
instance on the release sdist of its version, which approximates its base commit (agentq.localize.swebench).

    python benchmarks/localization.py --per-library 12 --write-docs docs/benchmarks.md --json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentq.io import replace_markdown_section
from agentq.localize.conformal import Conformal, fit_temperature
from agentq.localize.corpus import LocTask, read_repo_tasks, synthetic_tasks, unpack_sdist
from agentq.localize.cross import CrossEncoder, CrossEncoderError
from agentq.localize.dense import Embedder
from agentq.localize.fusion import Reranker, features
from agentq.localize.pipeline import Localizer, fuse
from agentq.localize.repo import Repository
from agentq.localize.swebench import Instance, LiteError, SdistCache, lite_tasks, read_lite

SECTION = "Localization"
LITE_SECTION = "Localization on SWE-bench Lite"
ROOT = Path(__file__).resolve().parents[1]
STAGE_ROWS = (("BM25 only", ("bm25",)), ("+ dense", ("bm25", "dense")),
              ("+ cross-encoder", ("bm25", "dense", "cross")), ("+ PPR", ("bm25", "dense", "cross", "ppr")),
              ("+ test prior", ("bm25", "dense", "cross", "ppr", "prior")))
# Stages measured on their own (PPR is left out: it is seeded by the text retrievers, so never alone).
ALONE_ROWS = (("dense alone", ("dense",)), ("cross-encoder alone", ("cross",)), ("test prior alone", ("prior",)))
RERANKER = "+ reranker (no test prior)"


@dataclass
class Scored:
    """One task's evidence: every stage's scores over the candidates, and which candidates are gold."""

    task: LocTask
    paths: list[str]
    stages: dict[str, dict[str, float]]
    gold: np.ndarray
    seconds: float


def score_corpus(tasks: list[LocTask], repos: Path, cache: Path, embedder: Embedder | None,
                 query_tests: bool = True, cross_encoder: CrossEncoder | None = None,
                 prior: bool = True) -> list[Scored]:
    out: list[Scored] = []
    by_repo: dict[str, list[LocTask]] = {}
    for task in tasks:
        by_repo.setdefault(task.repo, []).append(task)
    for source, group in sorted(by_repo.items()):
        if not (repos / source).is_file():
            raise ValueError(f"task {group[0].task_id}: sdist {source} is not in {repos}")
        t0 = time.perf_counter()
        repo = Repository.scan(unpack_sdist(repos / source, cache / "src"))
        localizer = Localizer(repo, embedder, cache / "embeddings", cross_encoder)
        print(f"localization: {source}: {len(repo.candidates)} files indexed in {time.perf_counter() - t0:.1f}s, "
              f"{len(group)} tasks", file=sys.stderr, flush=True)
        for task in group:
            t1 = time.perf_counter()
            stages = localizer.evidence(task.issue, list(task.test_ids), query_tests)
            if not prior:  # synthetic tasks: their test ids point at the gold module by construction
                stages.pop("prior")
            gold = np.array([p in task.gold for p in localizer.paths])
            out.append(Scored(task, localizer.paths, stages, gold, time.perf_counter() - t1))
    return out


def build_tasks(args: argparse.Namespace, repos: Path, cache: Path) -> tuple[list[LocTask], str]:
    if args.tasks:
        return read_repo_tasks(args.tasks), (f"repo tasks from `{args.tasks}` (gold = the files the bug_patch "
                                             "touches; the pristine sdist tree is indexed, not the buggy one, "
                                             "which differs from it in the mutated lines)")
    tasks: list[LocTask] = []
    for sdist in sorted(repos.glob("*.tar.gz")):
        group = sdist.name.removesuffix(".tar.gz").rsplit("-", 1)[0]
        if args.libraries and group not in args.libraries.split(","):
            continue
        repo = Repository.scan(unpack_sdist(sdist, cache / "src"))
        tasks += synthetic_tasks(repo, group, sdist.name, args.per_library, seed=args.seed)
    shown = os.path.relpath(repos, ROOT)
    return tasks, (f"synthetic tasks from the sdists in `{shown}` ({args.per_library} per library, seed "
                   f"{args.seed}; report = failing test ids of tests importing the module + an error line "
                   "naming the function; no test was run)")


def folds(groups: list[str], k: int) -> list[tuple[list[str], list[str], list[str]]]:
    """(reranker-train, calibration, test) libraries per fold; the non-test libraries alternate."""
    out = []
    for f in range(k):
        test = groups[f::k]
        rest = [g for g in groups if g not in test]
        out.append((rest[0::2], rest[1::2], test))
    return out


def stage_scores(scored: list[Scored], use: tuple[str, ...]) -> list[np.ndarray]:
    return [fuse(s.stages, use, s.paths) for s in scored]


def reranked_scores(train: list[Scored], apply: list[Scored], use: tuple[str, ...]) -> list[np.ndarray]:
    names = features({u: train[0].stages[u] for u in use}, train[0].paths)[0]
    model = Reranker.fit(names, [(features({u: s.stages[u] for u in use}, s.paths)[1], s.gold) for s in train])
    return [model.scores(features({u: s.stages[u] for u in use}, s.paths)[1]) for s in apply]


def metrics(scores: list[np.ndarray], scored: list[Scored], conformal: Conformal) -> dict[str, float]:
    r1 = r5 = covered = size = 0.0
    for x, s in zip(scores, scored, strict=True):
        order = np.argsort(-x, kind="stable")
        n_gold = max(int(s.gold.sum()), len(s.task.gold))
        r1 += s.gold[order[:1]].sum() / n_gold
        r5 += s.gold[order[:5]].sum() / n_gold
        chosen = conformal.predict(x)
        covered += float(s.gold.sum() == len(s.task.gold) and s.gold[chosen].sum() == s.gold.sum())
        size += len(chosen)
    n = len(scored)
    return {"recall@1": r1 / n, "recall@5": r5 / n, "coverage": covered / n, "set_size": size / n}


def evaluate(scored: list[Scored], k: int, alpha: float, rerank: bool = True) -> tuple[list[dict], dict]:
    """Rows of the table (over every fold's test tasks) and, per row, coverage by fold and by library."""
    groups = sorted({s.task.group for s in scored})
    # A stage that did not run (--no-dense, no --cross-encoder, no prior) loses its row, and later rows run without it.
    cumulative = [(label, tuple(u for u in use if u in scored[0].stages)) for label, use in STAGE_ROWS
                  if use[-1] in scored[0].stages]
    honest = tuple(u for u in cumulative[-1][1] if u != "prior")
    alone = [(label, use) for label, use in ALONE_ROWS if use[0] in scored[0].stages]
    rows: dict[str, dict] = {}  # in table order: the cumulative stages, the reranker, the stages alone
    detail: dict[str, dict] = {}
    for fold, (train_g, calib_g, test_g) in enumerate(folds(groups, k)):
        train = [s for s in scored if s.task.group in train_g]
        calib = [s for s in scored if s.task.group in calib_g and len(s.paths) > 1]
        test = [s for s in scored if s.task.group in test_g]
        if not (train and calib and test):
            continue
        variants = {label: [stage_scores(part, use) for part in (train, calib, test)] for label, use in cumulative}
        if rerank:
            variants[RERANKER] = [reranked_scores(train, part, honest) for part in (train, calib, test)]
        variants |= {label: [stage_scores(part, use) for part in (train, calib, test)] for label, use in alone}
        for label, (train_x, calib_x, test_x) in variants.items():
            temperature = fit_temperature(list(zip(train_x, (s.gold for s in train), strict=True)))
            conformal = Conformal.calibrate(list(zip(calib_x, (s.gold for s in calib), strict=True)), alpha,
                                            temperature)
            m = metrics(test_x, test, conformal)
            row = rows.setdefault(label, {"stage": label, "tasks": 0, **dict.fromkeys(m, 0.0)})
            for key, value in m.items():
                row[key] += value * len(test)
            row["tasks"] += len(test)
            info = detail.setdefault(label, {"by_fold": [], "by_library": {}})
            info["by_fold"].append({"fold": fold, "test": test_g, "calibration": calib_g, "tasks": len(test),
                                    "calibration_tasks": len(calib), "qhat": round(conformal.qhat, 4),
                                    **{key: round(v, 4) for key, v in m.items()}})
            for lib in test_g:
                mine = [(x, s) for x, s in zip(test_x, test, strict=True) if s.task.group == lib]
                if mine:
                    lm = metrics([x for x, _ in mine], [s for _, s in mine], conformal)
                    info["by_library"][lib] = {"tasks": len(mine), "candidates": len(mine[0][1].paths),
                                               **{key: round(v, 4) for key, v in lm.items()}}
    out = []
    for row in rows.values():
        for key in ("recall@1", "recall@5", "coverage", "set_size"):
            row[key] /= row["tasks"]
        out.append(row)
    base = out[0]
    for row in out:
        row["recall@1_vs_bm25"] = row["recall@1"] / base["recall@1"] if base["recall@1"] else None
        row["set_size_vs_bm25"] = row["set_size"] / base["set_size"]
    return out, detail


def table(rows: list[dict], alpha: float) -> str:
    lines = [f"| stage | tasks | Recall@1 | Recall@5 | coverage (target {1 - alpha:.0%}) | mean set size | "
             "R@1 vs BM25 | set size vs BM25 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['tasks']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
                     f"{r['coverage']:.3f} | {r['set_size']:.2f} | {r['recall@1_vs_bm25'] or 0:.2f}x | "
                     f"{r['set_size_vs_bm25']:.2f}x |")
    return "\n".join(lines)


def load_cross_encoder(args: argparse.Namespace) -> CrossEncoder | None:
    return CrossEncoder(args.cross_encoder) if args.cross_encoder else None


def lite_instances(args: argparse.Namespace) -> list[Instance]:
    """The --lite instances of the chosen repositories, at most --lite-limit per repository in file order."""
    chosen: list[Instance] = []
    per_repo: dict[str, int] = {}
    wanted = set(args.lite_repos.split(",")) if args.lite_repos else None
    for inst in read_lite(args.lite):
        if wanted is not None and inst.repo not in wanted and inst.project not in wanted:
            continue
        if args.lite_limit and per_repo.get(inst.repo, 0) >= args.lite_limit:
            continue
        per_repo[inst.repo] = per_repo.get(inst.repo, 0) + 1
        chosen.append(inst)
    return chosen


def lite_main(args: argparse.Namespace, argv: list[str]) -> int:
    """SWE-bench Lite: each instance's release sdist stands in for its base commit (agentq.localize.swebench)."""
    try:
        instances = lite_instances(args)
        cache = SdistCache(Path(args.lite_cache), offline=args.offline)
        tasks, skipped, _ = lite_tasks(instances, cache)
    except (OSError, LiteError) as err:
        print(f"localization: --lite {args.lite}: {err}", file=sys.stderr)
        return 2
    groups = sorted({t.group for t in tasks})
    if len(groups) < 3:
        print(f"localization: --lite: {len(tasks)} measurable instances in fewer than 3 repositories: need "
              "train, calibration and test repositories", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        scored = score_corpus(tasks, cache.root, cache.root, None if args.no_dense else Embedder.load(),
                              query_tests=False, cross_encoder=load_cross_encoder(args))
    except CrossEncoderError as err:
        print(f"localization: --cross-encoder: {err}", file=sys.stderr)
        return 2
    rows, detail = evaluate(scored, args.folds, args.alpha)
    seconds = time.perf_counter() - t0
    releases = sorted({t.repo for t in tasks})
    per_repo = {g: sum(t.group == g for t in tasks) for g in groups}
    counts = (f"{len(instances)} instances selected, {len(tasks)} measured, skipped: "
              + (", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"))
    section = (f"## {LITE_SECTION}\n\n**A release sdist approximates the base commit**: each instance's repository "
               "is the PyPI source distribution of the earliest final release of its `version` (X.Y), not the "
               "checkout at `base_commit` (no git here), so files may differ from the ones the issue was filed "
               "against; an instance whose gold file (a file its `patch` touches) is not in that release is "
               f"skipped. {counts}. Measured per repository: "
               + ", ".join(f"{g} {n}" for g, n in per_repo.items())
               + f"; {len(releases)} releases indexed. The query is the problem statement only; the FAIL_TO_PASS "
               "ids feed the test-import prior alone (pytest ids and Django's `test (module.Class)` ids name a "
               "test file when the release has it). "
               + ("Dense retrieval was not run (--no-dense). " if args.no_dense else "")
               + f"{args.folds} folds held out by repository: the reranker and the softmax temperature are "
               "fitted on half of the other repositories' instances, the conformal threshold is calibrated on "
               "the other half (a Lite split, not the model of the held-out-libraries corpus), and the fold's "
               f"repositories are the test set. Scoring took {seconds:.0f} s on this machine's CPU (indexing "
               f"included).\n\n{table(rows, args.alpha)}\n\nCommand: `python benchmarks/localization.py "
               + shlex.join(argv) + "`\n")
    print(section)
    if args.write_docs:
        replace_markdown_section(args.write_docs, LITE_SECTION, section)
        print(f"wrote the {LITE_SECTION} section of {args.write_docs}")
    if args.json:
        print(json.dumps({"corpus": "swe-bench-lite", "approximation": "release sdist for base commit",
                          "instances": len(instances), "measured": len(tasks), "skipped": dict(skipped),
                          "per_repository": per_repo, "releases": releases, "alpha": args.alpha,
                          "seconds": round(seconds, 1), "rows": rows, "coverage_detail": detail}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", help="a repo-task JSONL (default: synthetic tasks from --repos)")
    parser.add_argument("--repos", default=str(ROOT.parent / "shared" / "data" / "repos"))
    parser.add_argument("--libraries", default="", help="comma-separated library names (default: all)")
    parser.add_argument("--per-library", type=int, default=12)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dense", action="store_true", help="leave the embedding stage out")
    parser.add_argument("--cross-encoder", help="a local sequence-classification model directory: adds the "
                        "cross-encoder stage (agentq/localize/cross.py)")
    parser.add_argument("--cache", default=str(ROOT / "artifacts" / "localization-cache"))
    parser.add_argument("--write-docs", nargs="?", const=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--note", default="", help="provenance of --tasks, added to the docs section")
    parser.add_argument("--lite", help="SWE-bench Lite JSON: localise its instances on release sdists instead")
    parser.add_argument("--lite-cache", default=str(ROOT / "artifacts" / "lite-cache"),
                        help="where --lite keeps the fetched sdists and their unpacked trees")
    parser.add_argument("--lite-limit", type=int, default=0, help="at most this many instances per repository")
    parser.add_argument("--lite-repos", default="", help="comma-separated repositories or PyPI projects")
    parser.add_argument("--offline", action="store_true", help="--lite: use only the sdists already cached")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.lite:
        return lite_main(args, argv if argv is not None else sys.argv[1:])
    repos, cache = Path(args.repos), Path(args.cache)
    if not repos.is_dir():
        print(f"localization: --repos {repos}: not a directory of sdists", file=sys.stderr)
        return 2
    try:
        tasks, corpus = build_tasks(args, repos, cache)
    except (OSError, ValueError) as err:
        print(f"localization: --tasks {args.tasks}: {err}", file=sys.stderr)
        return 2
    corpus += f"; {args.note}" if args.note else ""
    title = f"{SECTION} on repo tasks" if args.tasks else SECTION
    if len({t.group for t in tasks}) < 3:
        print(f"localization: {len(tasks)} tasks in fewer than 3 libraries: need train, calibration and test "
              "libraries", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        scored = score_corpus(tasks, repos, cache, None if args.no_dense else Embedder.load(),
                              cross_encoder=load_cross_encoder(args), prior=bool(args.tasks))
    except (ValueError, CrossEncoderError) as err:
        print(f"localization: {err}", file=sys.stderr)
        return 2
    rows, detail = evaluate(scored, args.folds, args.alpha, rerank=bool(args.tasks))
    seconds = time.perf_counter() - t0
    groups = sorted({t.group for t in tasks})
    section = (f"## {title}\n\nCorpus: {corpus}. {len(tasks)} tasks in {len(groups)} libraries "
               f"({', '.join(groups)}); {args.folds} folds held out by library (reranker and temperature fitted on "
               f"half of the other libraries, conformal threshold calibrated on the other half). Coverage: "
               f"share of test tasks whose gold files are all in the split-conformal set (alpha {args.alpha}). "
               f"Scoring took {seconds:.0f} s on this machine's CPU (indexing included; embeddings cached in "
               f"--cache). "
               + ("The test prior rows read the failing tests' ids (an oracle an honest evaluation lacks); the "
                  "reranker is fitted without it. " if args.tasks else "Synthetic tasks: no test prior (their "
                  "test ids name the gold module's importers) and no reranker (learned parts are fitted on real "
                  "tasks only). ")
               + "Calibration skips tasks with a single candidate file."
               + f"\n\n{table(rows, args.alpha)}\n\nCoverage per library and per fold, for every row, is in the "
               "--json output (`coverage_detail`).\n\nReading: RRF weighs every stage alike, so a stage that is "
               "weaker alone than BM25 can pull the fused Recall@1 down (compare its 'alone' row); the reranker "
               "learns how much each stage counts. Coverage is over held-out libraries, so it can miss the "
               "target where libraries differ (conformal coverage assumes exchangeable tasks); set size is the "
               "number of files a prompt would get.\n\nCommand: `python benchmarks/localization.py "
               + shlex.join(argv if argv is not None else sys.argv[1:]) + "`\n")
    print(section)
    if args.write_docs:
        replace_markdown_section(args.write_docs, title, section)
        print(f"wrote the {title} section of {args.write_docs}")
    if args.json:
        print(json.dumps({"corpus": corpus, "tasks": len(tasks), "libraries": groups, "alpha": args.alpha,
                          "seconds": round(seconds, 1), "rows": rows, "coverage_detail": detail}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
