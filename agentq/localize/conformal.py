"""Split-conformal prediction sets over a ranking of files, after temperature scaling.

Scores become probabilities by a softmax at temperature T, fitted by minimising the gold files' negative
log-likelihood (Guo et al., 2017) on tasks other than those that set the threshold. The nonconformity of a task
is 1 - the smallest probability of its gold files (a task whose gold file is no candidate scores 1). With the
calibration scores' ceil((n+1)(1-alpha))/n quantile q, the set {files with p >= 1 - q} holds all gold files of a
new exchangeable task with probability >= 1 - alpha (Vovk et al. 2005; the "LAC" set of Sadinle et al., 2019):
the set is small where the ranking is confident and grows where it is not, and its size is how much code a
prompt gets. A set is never empty: the top file is always in it, which can only raise coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TEMPERATURES = np.logspace(-4, 3, 141)


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(scores, dtype=float) / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


def fit_temperature(groups: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The grid temperature with the least mean NLL of the gold files (tasks without one are left out)."""
    usable = [(np.asarray(s, dtype=float), g) for s, g in groups if g.any()]
    if not usable:
        return 1.0
    nll = np.zeros(len(TEMPERATURES))
    for scores, gold in usable:
        z = scores[None, :] / TEMPERATURES[:, None]
        top = z.max(axis=1, keepdims=True)
        log_total = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        gold_z = z[:, gold]
        gold_top = gold_z.max(axis=1, keepdims=True)
        log_gold = gold_top[:, 0] + np.log(np.exp(gold_z - gold_top).sum(axis=1))
        nll += log_total - log_gold
    return float(TEMPERATURES[int(np.argmin(nll))])


def nonconformity(scores: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    return 1.0 - float(softmax(scores, temperature)[gold].min()) if gold.any() else 1.0


@dataclass(frozen=True)
class Conformal:
    """A calibrated threshold: `predict` returns the indices in a task's prediction set, best first."""

    temperature: float
    qhat: float
    alpha: float

    @classmethod
    def calibrate(cls, groups: list[tuple[np.ndarray, np.ndarray]], alpha: float = 0.1,
                  temperature: float | None = None) -> Conformal:
        """Threshold from `groups` (scores, gold mask). The temperature must not be fitted on the tasks that
        set the threshold (their scores would no longer be exchangeable with a new task's): without one,
        every other task fits it and the rest calibrate."""
        if temperature is None:
            temperature, groups = fit_temperature(groups[0::2]), groups[1::2]
        if not groups:
            raise ValueError("conformal calibration needs at least one task")
        t = temperature
        s = np.sort([nonconformity(x, g, t) for x, g in groups])
        n = len(s)
        level = math.ceil((n + 1) * (1 - alpha))
        qhat = 1.0 if level > n else float(s[level - 1])
        return cls(temperature=t, qhat=qhat, alpha=alpha)

    def predict(self, scores: np.ndarray) -> list[int]:
        p = softmax(scores, self.temperature)
        order = np.argsort(-p, kind="stable")
        keep = [int(i) for i in order if p[i] >= 1.0 - self.qhat - 1e-12]
        return keep or [int(order[0])]
