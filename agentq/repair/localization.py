"""The round's localisation model: the reranker and conformal threshold, fitted on the round's training repo tasks.

Fitted at the start of collect, not in train: collect is the first step that reads repo prompts, so the
round's own searches get it (a model fitted in train would only reach the next round), and it needs no GPU
image. It is kept in the round's store (`localize/model.json`) with the digest of what it was fitted on (the
training task file and this module's settings), so a resumed collect, the other shards and evaluate reuse it
instead of fitting again; shards that race fit the same model (the fit is deterministic) and either write wins.

Each training task's buggy tree is indexed exactly as its prompt's localisation will index it (`buggy_tree`),
with gold files from its `bug_patch`. Tasks alternate into a fit half (reranker weights and softmax
temperature) and a calibration half (the split-conformal threshold), as benchmarks/localization.py does across
libraries. A round's tasks may all come from one library, so the set's coverage holds for tasks like the
round's own, not for other libraries. Too few usable tasks (a gold file among the candidates in each half)
leave no model: the file then records why and prompts rank by BM25 alone. The localisation libraries are
imported only for a round with repo tasks.

`localize` in the round spec sets the set's target coverage, whether the dense stage (an ONNX sentence
encoder) joins BM25 and PageRank (the dense stage then also runs for every prompt, so the embedder travels
with the model: `RoundLocalization`), and the prompts' token budget. The test-import prior is not a stage of
the round's model: it reads the failing tests' ids, which an honest evaluation never has (a prompt may not
depend on the hidden tests, and a model fitted with it would lean on it), so fitting and prompts use the issue
text alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentq import steplog
from agentq.config import LocalizeSpec
from agentq.io import atomic_write_json
from agentq.tasks.schema import RepoTask
from agentq.workspace import RoundWorkspace, digest

if TYPE_CHECKING:
    from agentq.localize.dense import Embedder
    from agentq.localize.pipeline import Model

KEY = "localize/model.json"


@dataclass
class RoundLocalization:
    """What repo prompts rank their files by: the fitted model (None: BM25 alone), the embedder when its stages
    include dense, and the prompts' token budget."""

    model: Model | None
    embedder: Embedder | None = None
    prompt_tokens: int = LocalizeSpec().prompt_tokens


def stages(spec: LocalizeSpec) -> tuple[str, ...]:
    return ("bm25", "dense", "ppr") if spec.dense else ("bm25", "ppr")


def embedder(spec: LocalizeSpec) -> Embedder | None:
    """The dense stage's encoder (the packaged all-MiniLM-L6-v2, or `localize.embedder`), None without it."""
    if not spec.dense:
        return None
    from agentq.localize.dense import Embedder

    return Embedder.load(spec.embedder)


def fit_model(tasks: list[RepoTask], runner: Any, spec: LocalizeSpec,
              encoder: Embedder | None = None) -> tuple[Model | None, str]:
    """(model, why none) from repo tasks whose buggy trees the runner's repository store can make."""
    import numpy as np

    from agentq.localize.conformal import Conformal, fit_temperature
    from agentq.localize.corpus import patch_files
    from agentq.localize.fusion import Reranker, features
    from agentq.localize.pipeline import Model
    from agentq.repair.problem import buggy_tree, tree_localizer

    used = stages(spec)
    groups = []
    for task in tasks:
        localizer = tree_localizer(buggy_tree(task, runner), encoder)
        gold = set(patch_files(task.bug_patch))
        evidence = localizer.evidence(task.issue, [])
        names, x = features({s: evidence[s] for s in used}, localizer.paths)
        mask = [p in gold for p in localizer.paths]
        if any(mask) and len(mask) > 1:
            groups.append((names, x, mask))
    fit, calib = groups[0::2], groups[1::2]
    if not fit or not calib:
        return None, (f"{len(groups)} of {len(tasks)} training repo tasks have a gold file among two or more "
                      "candidates; fitting and calibrating need at least two")
    reranker = Reranker.fit(fit[0][0], [(x, np.array(m)) for _, x, m in fit])
    temperature = fit_temperature([(reranker.scores(x), np.array(m)) for _, x, m in fit])
    conformal = Conformal.calibrate([(reranker.scores(x), np.array(m)) for _, x, m in calib], 1 - spec.coverage,
                                    temperature)
    return Model(stages=used, reranker=reranker, conformal=conformal), ""


def round_model(ws: RoundWorkspace, runner: Any) -> RoundLocalization | None:
    """The round's model from its store, fitted and stored first when absent or fitted on other inputs (None for
    a round without repo tasks)."""
    tasks, tasks_digest = ws.tasks("train")
    repo_tasks = [t for t in tasks if isinstance(t, RepoTask)]
    if not repo_tasks:
        return None
    spec = ws.round.spec.localize
    encoder = embedder(spec)
    inputs = digest("localize-no-prior", tasks_digest, spec.model_dump(mode="json"))
    stored = ws.get_json(ws.key(KEY))
    if stored is None or stored.get("inputs_digest") != inputs:
        model, reason = fit_model(repo_tasks, runner, spec, encoder)
        stored = {"inputs_digest": inputs, "tasks": len(repo_tasks), "reason": reason,
                  "model": model.to_json() if model else None}
        atomic_write_json(ws.work_path(KEY), stored)
        ws.publish(KEY)
        steplog.log("localisation model", fitted=model is not None, tasks=len(repo_tasks),
                    message=f"localize: {'fitted' if model else 'no model'} on {len(repo_tasks)} training repo "
                            f"tasks -> {ws.describe(KEY)}" + (f" ({reason}; prompts rank by BM25)" if reason else ""))
    from agentq.localize.pipeline import Model

    model = Model.from_json(stored["model"]) if stored["model"] else None
    return RoundLocalization(model, encoder if model else None, spec.prompt_tokens)
