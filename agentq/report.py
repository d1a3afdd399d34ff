"""The evaluation report: summary.json, report.md and pass_rate.png.

A report answers one question first: did this round's model fix more bugs than the model it started
from? So it leads with both arms on the same tasks and the paired difference, with its interval and
p-value; a difference whose interval spans zero is reported as such, not as a gain. Below that, every
round in the store with a summary, in the order they were evaluated, is a learning curve for a chain.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from agentq.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from agentq.workspace import RoundWorkspace


def all_summaries(ws: RoundWorkspace, current: dict[str, Any]) -> list[dict[str, Any]]:
    found = {current["round"]: current}
    for key in ws.store.list("rounds/"):
        if key.endswith("/eval/summary.json"):
            summary = ws.get_json(key)
            if summary and summary.get("round") not in found:
                found[summary["round"]] = summary
    return sorted(found.values(), key=lambda s: s.get("finished_at", 0))


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _interval(pair: list[float], signed: bool = False) -> str:
    fmt = "{:+.1%}" if signed else "{:.1%}"
    return f"[{fmt.format(pair[0])}, {fmt.format(pair[1])}]"


def _model(s: dict[str, Any]) -> str:
    return s["model"] if not s.get("from_round") else f"{s['model']} (from {s['from_round']})"


def arm_rows(summary: dict[str, Any]) -> str:
    """Base and round side by side, one row per arm and mode."""
    k_keys = sorted({key for arm in _arms(summary) for m in arm[2].values() for key in m
                     if re.fullmatch(r"pass_at_\d+", key) and key != "pass_at_1"})
    head = "| model | mode | tasks | samples/task | pass@1 | 95% CI | " + "".join(
        f"{k.replace('pass_at_', 'pass@')} | " for k in k_keys) + "greedy | visible-only (greedy) | parse failures |"
    rows = [head, "|---|---|---:|---:|---:|---|" + "---:|" * len(k_keys) + "---:|---:|---:|"]
    for label, _, modes in _arms(summary):
        for mode, m in modes.items():
            extra = "".join(f"{_pct(m[k])} | " if k in m else "- | " for k in k_keys)
            rows.append(f"| {label} | {mode} | {m['tasks']} | {m.get('samples_per_task', 1)} | "
                        f"{_pct(m['pass_at_1'])} | {_interval(m['pass_at_1_ci95'])} | "
                        f"{extra}{m['greedy_solved']}/{m['tasks']} | "
                        f"{_pct(m['visible_pass_rate'])} | {m['parse_failures']} |")
    return "\n".join(rows)


def _arms(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, key, modes) for the baseline (when evaluated) and the round."""
    arms = []
    if summary.get("baseline"):
        arms.append((f"base: {summary['baseline']['model']}", "baseline", summary["baseline"]["modes"]))
    trained = summary.get("pairs") != 0  # no pairs: train learned nothing and the round's model is its base
    arms.append((f"{summary['round']}: {_model(summary)}{' + adapter' if trained else ' (no pairs: unchanged)'}",
                 "round", summary["modes"]))
    return arms


def comparison_rows(summary: dict[str, Any]) -> str:
    rows = ["| mode | paired tasks (groups) | base pass@1 | round pass@1 | delta pass@1 | 95% CI (bootstrap by group) "
            "| greedy fixed / broken | McNemar p (exact) |",
            "|---|---:|---:|---:|---:|---|---:|---:|"]
    chain = summary.get("chain_base") or {}
    labelled = [(mode, c) for mode, c in summary.get("comparison", {}).items()] + [
        (f"{mode} vs {chain.get('model')} (base of the chain, from {chain.get('round')})", c)
        for mode, c in (chain.get("comparison") or {}).items()]
    for label, c in labelled:
        rows.append(f"| {label} | {c['tasks']} ({c['groups']}) | {_pct(c['old_pass_at_1'])} | "
                    f"{_pct(c['new_pass_at_1'])} | {c['delta_pass_at_1']:+.1%} | "
                    f"{_interval(c['delta_ci95'], signed=True)} | {c['greedy_wins']} / {c['greedy_losses']} | "
                    f"{c['mcnemar_p']:.3g} |")
    return "\n".join(rows)


def history_rows(summaries: list[dict[str, Any]]) -> str:
    """The learning curve of every evaluated round: its base (when evaluated) and its own pass@1."""
    rows = ["| run | mode | model | tasks | base pass@1 | pass@1 | delta [95% CI] | McNemar p |",
            "|---|---|---|---:|---:|---:|---|---:|"]
    for s in summaries:
        for mode, m in s["modes"].items():
            rate = m.get("pass_at_1", m.get("pass_rate", 0.0))
            c = (s.get("comparison") or {}).get(mode)
            base = _pct(s["baseline"]["modes"][mode]["pass_at_1"]) if c else "-"
            delta = f"{c['delta_pass_at_1']:+.1%} {_interval(c['delta_ci95'], signed=True)}" if c else "-"
            p = f"{c['mcnemar_p']:.3g}" if c else "-"
            rows.append(f"| {s['round']} | {mode} | {_model(s)} | {m['tasks']} | {base} | {_pct(rate)} | {delta} "
                        f"| {p} |")
    return "\n".join(rows)


def compute_rows(summary: dict[str, Any]) -> str:
    """pass@k for k = 1..n sampled answers per task: what more test-time samples buy, per arm and mode."""
    curves = [(label, mode, m["pass_at_k_curve"]) for label, _, modes in _arms(summary)
              for mode, m in modes.items() if m.get("pass_at_k_curve")]
    if not curves:
        return ""
    n = max(len(c) for _, _, c in curves)
    rows = ["| model | mode | " + " | ".join(f"k={k}" for k in range(1, n + 1)) + " |",
            "|---|---|" + "---:|" * n]
    for label, mode, curve in curves:
        rows.append(f"| {label} | {mode} | " + " | ".join(_pct(v) for v in curve) + " |")
    return "\n".join(rows)


def token_rows(summary: dict[str, Any]) -> str:
    """Mean prompt and completion tokens per task, and their cost where the round set prices, per arm and mode."""
    counted = [(label, mode, m) for label, _, modes in _arms(summary) for mode, m in modes.items()
               if "mean_tokens_in" in m]
    if not counted:
        return ""
    rows = ["| model | mode | tokens in / task | tokens out / task | cost / task (USD) |", "|---|---|---:|---:|---:|"]
    for label, mode, m in counted:
        cost = f"{m['cost_per_task_usd']:.6f}" if "cost_per_task_usd" in m else "n/a (no model.pricing)"
        rows.append(f"| {label} | {mode} | {m['mean_tokens_in']:.0f} | {m['mean_tokens_out']:.0f} | {cost} |")
    return "\n".join(rows)


def verdict_line(summary: dict[str, Any]) -> str:
    lines = []
    for mode, c in summary.get("comparison", {}).items():
        low, high = c["delta_ci95"]
        if low > 0:
            word = "a gain: the interval excludes zero"
        elif high < 0:
            word = "a loss: the interval excludes zero"
        else:
            word = "no detectable difference: the interval includes zero"
        lines.append(f"- {mode}: {c['delta_pass_at_1']:+.1%} pass@1 vs base, {word} (McNemar p={c['mcnemar_p']:.3g}).")
    return "\n".join(lines)


def search_line(summary: dict[str, Any]) -> str:
    """Which search the mcts mode ran per arm (mcts or reflection) and the answers it drew per task ("" if none)."""
    searched = [f"{label.split(':')[0]} {m['strategy']}, {m['mean_attempts']:.2f} attempts per task"
                for label, _, modes in _arms(summary) for m in modes.values() if "strategy" in m]
    return "Search at evaluation (mcts mode; attempts: answers drawn per task): " + "; ".join(searched) + "." \
        if searched else ""


def plot(summary: dict[str, Any], summaries: list[dict[str, Any]], path: str) -> None:
    """Left: base vs round per mode with 95% intervals. Right: pass@1 along the chain of rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    modes = list(summary["modes"])
    arms = _arms(summary)
    width = 0.8 / len(arms)
    for i, (label, _, arm_modes) in enumerate(arms):
        xs = [m + (i - (len(arms) - 1) / 2) * width for m in range(len(modes))]
        ys = [arm_modes[mode]["pass_at_1"] * 100 for mode in modes]
        lo = [y - arm_modes[mode]["pass_at_1_ci95"][0] * 100 for y, mode in zip(ys, modes, strict=True)]
        hi = [arm_modes[mode]["pass_at_1_ci95"][1] * 100 - y for y, mode in zip(ys, modes, strict=True)]
        bars = left.bar(xs, ys, width=width, label=label.split(":")[0], yerr=[lo, hi], capsize=4)
        left.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
    left.set_xticks(range(len(modes)), modes)
    left.set_ylabel("pass@1 (%)")
    left.set_ylim(0, 110)
    left.set_title(f"{summary['round']}: base vs round (95% CI)")
    left.legend()
    left.grid(alpha=0.3)
    for mode in sorted({m for s in summaries for m in s["modes"]}):
        labels, ys = [], []
        first = next((s for s in summaries if mode in s["modes"]), None)
        if first and first.get("baseline") and mode in first["baseline"]["modes"]:
            labels.append(f"{first['baseline']['model'][:14]}")
            ys.append(first["baseline"]["modes"][mode]["pass_at_1"] * 100)
        for s in summaries:
            if mode in s["modes"]:
                labels.append(s["round"])
                ys.append(s["modes"][mode].get("pass_at_1", s["modes"][mode].get("pass_rate", 0.0)) * 100)
        right.plot(range(len(ys)), ys, marker="o", label=mode)
        right.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    right.set_ylabel("pass@1 (%)")
    right.set_ylim(0, 105)
    right.set_title("learning curve (rounds in evaluation order)")
    right.legend()
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(ws: RoundWorkspace, summary: dict[str, Any]) -> None:
    summary["finished_at"] = time.time()
    summaries = all_summaries(ws, summary)
    out = ws.work_path("eval/summary.json").parent
    atomic_write_json(out / "summary.json", summary)
    lines = [f"# AgentQ evaluation: {ws.name}", "", arm_rows(summary), ""]
    if summary.get("comparison"):
        lines += ["## Paired comparison with the base", "", comparison_rows(summary), "", verdict_line(summary), ""]
    else:
        lines += ["No base row: `evaluate.baseline` is off, so there is nothing to compare this round with.", ""]
    curve = compute_rows(summary)
    if curve:
        lines += ["## Test-time compute: pass@k against samples per task", "", curve, ""]
    tokens = token_rows(summary)
    if tokens:
        lines += ["## Tokens and cost per task", "", tokens, "",
                  "Prompt and completion tokens of every generation a task's answer took (a search's expansions "
                  "and critiques); cost is tokens x model.pricing (USD per million).", ""]
    lines += ["## All rounds in this store", "", history_rows(summaries), ""]
    lines.append("pass@1 is the unbiased estimate of Chen et al. over each task's sampled answers (the greedy "
                 "answer when one sample per task); an answer counts only when it passes visible and hidden tests. "
                 "Intervals resample whole groups (problems), so tasks of one problem are not counted as "
                 "independent; the McNemar test pairs the greedy outcomes of each task under both models.")
    resolve = {mode: m["resolve_rate"] for mode, m in summary["modes"].items() if "resolve_rate" in m}
    if resolve:
        lines.append("Resolve rate (repo tasks: the greedy final patch makes the failing tests pass and keeps the "
                     "passing ones passing): " + ", ".join(f"{mode} {_pct(r)}" for mode, r in resolve.items()) + ".")
        feedback = {mode: m["feedback"] for mode, m in summary["modes"].items() if m.get("feedback")}
        if feedback:
            lines.append("What a search saw run while it searched: " + "; ".join(
                f"{mode}: {f}" for mode, f in feedback.items()) + ". The task's tests judge only the final answer "
                "in evaluation; collection's searches are rewarded by them.")
    if search := search_line(summary):
        lines.append(search)
    pairs = summary.get("pairs")
    if pairs is not None:
        lines.append(f"Training pairs: {pairs}, of which decided by tests: {summary.get('test_decided_pairs')}.")
    lines.append(f"Parse failures (no program in the answer) are counted apart from wrong fixes. "
                 f"Candidates flagged as reward hacks during collection: {summary.get('flagged_candidates', 0)}.")
    if summary.get("weak_isolation"):
        lines += ["", "**Weak sandbox isolation.** Candidates of this round ran in a sandbox that could not "
                  "enforce everything (`sandbox.allowWeakIsolation`); their verdicts are less trustworthy: "
                  + "; ".join(summary["weak_isolation"])]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    tmp_png = out / ".pass_rate.tmp.png"
    plot(summary, summaries, str(tmp_png))
    tmp_png.replace(out / "pass_rate.png")
    for name in ("pass_rate.png", "report.md", "summary.json"):
        ws.publish(f"eval/{name}")
