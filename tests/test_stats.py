"""The evaluation's estimators against values worked out by hand or by brute force."""

import itertools
import random

import pytest

from agentq.stats import bootstrap_mean, mcnemar_exact, pass_at_k


def test_pass_at_k_matches_brute_force_over_subsets():
    for n, c, k in [(5, 2, 1), (5, 2, 2), (6, 3, 4), (4, 0, 2), (4, 4, 3), (10, 1, 5)]:
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(outcomes, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(3, 7) == mcnemar_exact(7, 3)


def test_bootstrap_resamples_groups_not_tasks():
    # one big group where everything moved, many small groups where nothing did: resampling by group makes
    # the interval wide; resampling tasks as if independent would make it narrow
    values = [1.0] * 20 + [0.0] * 20
    by_group = ["big"] * 20 + [f"g{i}" for i in range(20)]
    mean, low, high = bootstrap_mean(values, by_group, seed=1)
    _, t_low, t_high = bootstrap_mean(values, [str(i) for i in range(40)], seed=1)
    assert mean == 0.5 and low <= mean <= high
    assert (high - low) > 2 * (t_high - t_low)
    assert bootstrap_mean(values, by_group, seed=1) == (mean, low, high)  # seeded


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = random.Random(0)
    covered = 0
    for trial in range(60):
        values = [float(rng.random() < 0.3) for _ in range(80)]
        _, low, high = bootstrap_mean(values, [str(i) for i in range(80)], reps=400, seed=trial)
        covered += low <= 0.3 <= high
    assert covered >= 50


def test_mcnemar_power_matches_a_simulation_and_keeps_its_size():
    import random

    from agentq.stats import mcnemar_exact, mcnemar_power, tasks_for_power

    rng = random.Random(0)
    n, delta, p_loss = 40, 0.15, 0.05
    hits = 0
    for _ in range(3000):
        draws = [rng.random() for _ in range(n)]
        wins = sum(d < p_loss + delta for d in draws)
        losses = sum(p_loss + delta <= d < 2 * p_loss + delta for d in draws)
        hits += mcnemar_exact(wins, losses) < 0.05
    assert abs(mcnemar_power(n, delta, p_loss) - hits / 3000) < 0.03
    assert mcnemar_power(33, 0.10, 0.02) < 0.15  # HumanEvalFix's 33 test tasks cannot see +10 points
    assert mcnemar_power(100, 0.0, 0.1) <= 0.05  # no effect: rejects at most alpha of the time
    needed = tasks_for_power(0.10, 0.02)
    assert needed is not None and mcnemar_power(needed, 0.10, 0.02) >= 0.8 > mcnemar_power(needed - 1, 0.10, 0.02)
