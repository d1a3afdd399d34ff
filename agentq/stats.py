"""Estimators the evaluation reports: pass@k, bootstrap intervals resampled by group, exact McNemar.

A round's worth is a *difference* from the model it started from, measured on the same tasks, so the
report pairs every task's outcome under both models. DebugBench repeats one problem under many bug
types: tasks of one group are not independent, so intervals resample whole groups, not tasks.
Pure Python on purpose: these run in the report Job, which should not need numpy or scipy.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def bootstrap_mean(values: Sequence[float], groups: Sequence[str], *, reps: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and a percentile interval from resampling whole groups."""
    if len(values) != len(groups):
        raise ValueError("one group per value")
    if not values:
        return 0.0, 0.0, 0.0
    by_group: dict[str, list[float]] = defaultdict(list)
    for value, group in zip(values, groups, strict=True):
        by_group[group].append(value)
    sums = [(sum(v), len(v)) for v in by_group.values()]
    rng = random.Random(seed)
    means = []
    for _ in range(reps):
        draw = [sums[rng.randrange(len(sums))] for _ in sums]
        means.append(sum(s for s, _ in draw) / sum(n for _, n in draw))
    means.sort()
    tail = (1 - level) / 2
    low = means[min(len(means) - 1, int(math.floor(tail * reps)))]
    high = means[min(len(means) - 1, int(math.ceil((1 - tail) * reps)) - 1)]
    return sum(values) / len(values), low, high


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs (new right & old wrong = wins, the reverse =
    losses) under H0 are Binomial(wins + losses, 1/2)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar_power(n: int, delta: float, p_loss: float, alpha: float = 0.05) -> float:
    """Power of the two-sided exact McNemar test on n paired tasks when the new model wins a task the old one
    lost with probability p_loss + delta and loses one it won with probability p_loss (exact: every number of
    discordant tasks and of wins among them)."""
    p_win = p_loss + delta
    if n < 1 or p_loss < 0 or delta < 0 or p_win + p_loss > 1:
        raise ValueError(f"mcnemar_power needs n >= 1, delta >= 0, p_loss >= 0, 2 p_loss + delta <= 1; got "
                         f"n={n} delta={delta} p_loss={p_loss}")
    p_discordant = p_win + p_loss
    if p_discordant == 0:
        return 0.0
    share = p_win / p_discordant
    power = 0.0
    for d in range(1, n + 1):
        p_d = math.comb(n, d) * p_discordant ** d * (1 - p_discordant) ** (n - d)
        if p_d < 1e-15:
            continue
        power += p_d * sum(math.comb(d, w) * share ** w * (1 - share) ** (d - w)
                           for w in range(d + 1) if mcnemar_exact(w, d - w) < alpha)
    return min(1.0, power)


def tasks_for_power(delta: float, p_loss: float, target: float = 0.8, alpha: float = 0.05,
                    limit: int = 5000) -> int | None:
    """The fewest paired tasks at which the exact McNemar test reaches `target` power (None beyond `limit`).

    Power is not monotone in n for an exact test (the rejection region jumps), so this is the first n that
    reaches it, found by doubling and then a linear scan of the last interval."""
    low, high = 1, 2
    while mcnemar_power(high, delta, p_loss, alpha) < target:
        low, high = high, high * 2
        if high > limit:
            return None
    return next(n for n in range(low, high + 1) if mcnemar_power(n, delta, p_loss, alpha) >= target)
