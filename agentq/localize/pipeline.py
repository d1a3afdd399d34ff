"""The localisation pipeline over one repository: the stages' evidence, their fusion, and the calibrated set.

`Localizer.evidence` runs every retriever once for a report (BM25, dense when an embedder is given, the
cross-encoder over the best text hits when one is given, the test-import prior, and PPR seeded by the fused
text retrievers); `fuse` combines any subset of them, so a benchmark measures each stage from one run.
`Localizer.locate` applies a trained `Model` (reranker and conformal threshold) and returns the ranked files
and the prediction set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agentq.localize.conformal import Conformal, softmax
from agentq.localize.cross import CrossEncoder, cross_scores
from agentq.localize.dense import DenseIndex, Embedder
from agentq.localize.fusion import Reranker, features, rrf
from agentq.localize.graph import files_of_tests, import_prior, personalized_pagerank, top_seeds
from agentq.localize.lexical import BM25Index
from agentq.localize.repo import Repository

STAGES = ("bm25", "dense", "cross", "ppr", "prior")


def query_text(issue: str, test_ids: list[str]) -> str:
    return "\n".join([issue, *test_ids])


class Localizer:
    """Indexes of one repository, built once and queried per report."""

    def __init__(self, repo: Repository, embedder: Embedder | None = None, cache_dir: Path | None = None,
                 cross_encoder: CrossEncoder | None = None):
        self.repo = repo
        self.paths = repo.candidates
        self._candidates = {p: repo.files[p] for p in self.paths}
        self._bm25 = BM25Index(self._candidates)
        self._dense = DenseIndex(self._candidates, embedder, cache_dir) if embedder is not None else None
        self._cross = cross_encoder

    def evidence(self, issue: str, test_ids: list[str], query_tests: bool = True) -> dict[str, dict[str, float]]:
        """Each stage's score for every candidate file; with `query_tests` False the test ids feed the test
        prior only, not the text query (a report that is prose, such as a SWE-bench problem statement)."""
        query = query_text(issue, test_ids if query_tests else [])
        out = {"bm25": self._bm25.scores(query)}
        if self._dense is not None:
            out["dense"] = self._dense.scores(query)
        if self._cross is not None:
            out["cross"] = cross_scores(self._cross, query, self._candidates, rrf(list(out.values())))
        out["ppr"] = personalized_pagerank(self.repo.graph, top_seeds(rrf(list(out.values()))), self.paths)
        out["prior"] = import_prior(self.repo.graph, files_of_tests(test_ids, self.repo.files), self.paths)
        return out

    def locate(self, issue: str, test_ids: list[str], model: Model) -> Localization:
        stages = self.evidence(issue, test_ids)
        missing = [s for s in model.stages if s not in stages]
        if missing:
            raise ValueError(f"the localisation model uses stage(s) {missing} that this Localizer does not run "
                             "(the dense stage needs an Embedder)")
        logits = model.reranker.scores(features({s: stages[s] for s in model.stages}, self.paths)[1])
        chosen = model.conformal.predict(logits)
        p = softmax(logits, model.conformal.temperature)
        order = np.argsort(-p, kind="stable")
        return Localization(ranked=[self.paths[i] for i in order], probabilities=[float(p[i]) for i in order],
                            prediction_set=[self.paths[i] for i in chosen])

    def context(self, result: Localization) -> dict[str, str]:
        """The prompt's code: the prediction set's files, most probable first (the set's size is the budget)."""
        return {path: self.repo.files[path] for path in result.prediction_set}


def fuse(stages: dict[str, dict[str, float]], use: tuple[str, ...], paths: list[str]) -> np.ndarray:
    """RRF over the stages in `use` (one stage: its own scores), as an array over `paths`."""
    if len(use) == 1:
        return np.array([stages[use[0]][p] for p in paths], dtype=float)
    fused = rrf([stages[s] for s in use])
    return np.array([fused[p] for p in paths], dtype=float)


@dataclass
class Localization:
    ranked: list[str]
    probabilities: list[float]
    prediction_set: list[str]


@dataclass
class Model:
    """What training on a corpus yields: which stages feed the reranker, its weights, the conformal threshold."""

    stages: tuple[str, ...]
    reranker: Reranker
    conformal: Conformal

    def to_json(self) -> dict:
        return {"stages": list(self.stages), "names": self.reranker.names, "weights": self.reranker.weights.tolist(),
                "conformal": asdict(self.conformal)}

    @classmethod
    def from_json(cls, data: dict) -> Model:
        return cls(stages=tuple(data["stages"]),
                   reranker=Reranker(names=data["names"], weights=np.array(data["weights"], dtype=float)),
                   conformal=Conformal(**data["conformal"]))

    def save(self, path: str | Path) -> None:
        from agentq.io import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Model:
        return cls.from_json(json.loads(Path(path).read_text()))
