"""Evaluation summaries in one shape for the page, whichever evaluate.py wrote them.

Two formats exist: the first (per mode: tasks, solved, pass_rate) and the paired one (a `baseline` arm,
pass@1 with a group-bootstrap interval, pass@k, and a `comparison` per mode with the paired delta and
McNemar p). A pass rate without an interval invites reading noise as progress, so a summary that has none
gets a Wilson score interval computed from its counts, and says which interval it is.
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054


def wilson(solved: int, tasks: int) -> list[float]:
    """95% Wilson score interval for solved/tasks (sensible at 0 and at n; [0, 1] when there are no tasks)."""
    if tasks <= 0:
        return [0.0, 1.0]
    p = solved / tasks
    denom = 1 + Z95 * Z95 / tasks
    centre = (p + Z95 * Z95 / (2 * tasks)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / tasks + Z95 * Z95 / (4 * tasks * tasks)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mode_row(m: dict[str, Any]) -> dict[str, Any]:
    """One arm in one mode: pass rate with a 95% interval and the counts behind it."""
    tasks = int(m.get("tasks", 0))
    rate = float(m.get("pass_at_1", m.get("pass_rate", 0.0)))
    solved = m.get("greedy_solved", m.get("solved"))
    if "pass_at_1_ci95" in m:
        ci, method = [float(x) for x in m["pass_at_1_ci95"]], "bootstrap by group"
    else:
        ci, method = wilson(int(solved if solved is not None else round(rate * tasks)), tasks), "Wilson score"
    pass_at = {k.removeprefix("pass_at_"): v for k, v in m.items()
               if k.startswith("pass_at_") and not k.endswith("ci95") and isinstance(v, int | float)}
    return {"tasks": tasks, "pass_rate": rate, "ci95": ci, "interval": method, "solved": solved,
            "samples_per_task": m.get("samples_per_task", 1), "pass_at": pass_at,
            "visible_pass_rate": m.get("visible_pass_rate"), "parse_failures": m.get("parse_failures")}


def normalise(summary: dict[str, Any]) -> dict[str, Any]:
    """{round, model, arms: [{arm, label, modes: {mode: mode_row}}], comparison, ...}; arms base first."""
    arms = []
    base = summary.get("baseline")
    if base:
        arms.append({"arm": "baseline", "label": f"base: {base.get('model', '?')}",
                     "modes": {mode: mode_row(m) for mode, m in (base.get("modes") or {}).items()}})
    model = summary.get("model", "?")
    if summary.get("from_round"):
        model = f"{model} (from {summary['from_round']})"
    arms.append({"arm": "round", "label": f"{summary.get('round', '?')}: {model}",
                 "modes": {mode: mode_row(m) for mode, m in (summary.get("modes") or {}).items()}})
    return {"round": summary.get("round"), "model": summary.get("model"), "from_round": summary.get("from_round"),
            "finished_at": summary.get("finished_at"), "arms": arms, "comparison": summary.get("comparison") or {},
            "flagged_candidates": summary.get("flagged_candidates"), "pairs": summary.get("pairs")}


def headline(summary: dict[str, Any] | None) -> dict[str, float]:
    """{mode: the round's pass rate (pass@1 where the summary has it)}, for lists and status lines."""
    return {mode: m.get("pass_at_1", m.get("pass_rate")) for mode, m in ((summary or {}).get("modes") or {}).items()}
