"""Reciprocal Rank Fusion of the stages, and a reranker learned on a corpus over the fused features.

RRF (Cormack et al., 2009) needs no training and no score calibration: each stage contributes 1/(k + rank).
The reranker is a linear scorer over per-file features (each stage's reciprocal rank and normalised score,
the RRF score), trained with a listwise softmax loss (the gold files against every other candidate of the
same task), i.e. a conditional logit model: its scores are logits, which is what `conformal` calibrates.
Fitted in numpy with Adam and L2: a few dozen features do not warrant a framework.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RRF_K = 60


def ranks(scores: dict[str, float]) -> dict[str, int]:
    """1-based ranks, best first; ties broken by path so runs are reproducible."""
    ordered = sorted(scores, key=lambda p: (-scores[p], p))
    return {p: i + 1 for i, p in enumerate(ordered)}


def rrf(stages: list[dict[str, float]], k: int = RRF_K) -> dict[str, float]:
    fused: dict[str, float] = {}
    for scores in stages:
        for path, rank in ranks(scores).items():
            fused[path] = fused.get(path, 0.0) + 1.0 / (k + rank)
    return fused


def features(stages: dict[str, dict[str, float]], paths: list[str]) -> tuple[list[str], np.ndarray]:
    """Per file, for each stage: reciprocal rank and the score min-max normalised over the task's files;
    then the RRF score of all stages (scaled by the number of stages) and a bias column."""
    names: list[str] = []
    columns: list[np.ndarray] = []
    for name in sorted(stages):
        scores = stages[name]
        rank = ranks(scores)
        values = np.array([scores[p] for p in paths], dtype=float)
        span = values.max() - values.min() if len(values) else 0.0
        columns.append(np.array([1.0 / rank[p] for p in paths]))
        columns.append((values - values.min()) / span if span > 0 else np.zeros(len(paths)))
        names += [f"{name}.rr", f"{name}.norm"]
    fused = rrf(list(stages.values()))
    columns.append(np.array([fused[p] for p in paths]) * RRF_K / max(len(stages), 1))
    columns.append(np.ones(len(paths)))
    names += ["rrf", "bias"]
    return names, np.stack(columns, axis=1)


@dataclass
class Reranker:
    """Linear logits over `features`; `fit` on groups of (features, gold mask) per task."""

    names: list[str]
    weights: np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights

    @classmethod
    def fit(cls, names: list[str], groups: list[tuple[np.ndarray, np.ndarray]], l2: float = 1e-2,
            steps: int = 400, lr: float = 0.05) -> Reranker:
        """Minimise the mean listwise NLL of the gold files, -log(sum_gold softmax(x w)), plus l2 |w|^2."""
        groups = [(x, gold) for x, gold in groups if gold.any() and len(x) > 1]
        if not groups:
            raise ValueError("no training task has a gold file among its candidates")
        w = np.zeros(len(names))
        m = np.zeros_like(w)
        v = np.zeros_like(w)
        for step in range(1, steps + 1):
            grad = 2 * l2 * w
            for x, gold in groups:
                z = x @ w
                p = np.exp(z - z.max())
                p /= p.sum()
                q = np.where(gold, p, 0.0)
                q /= q.sum()
                grad += x.T @ (p - q) / len(groups)
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            w -= lr * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
        return cls(names=names, weights=w)
