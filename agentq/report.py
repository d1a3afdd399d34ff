"""The evaluation report: summary.json, report.md and pass_rate.png.

The table and the plot cover every round in the store that has a summary, ordered by when each was
evaluated, so a round's report shows whether the loop is improving, not just one number.
"""

from __future__ import annotations

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


def table(summaries: list[dict[str, Any]]) -> str:
    rows = ["| run | mode | model | tasks | solved | pass rate | visible-only pass rate | parse failures |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for s in summaries:
        model = s["model"] if not s.get("from_round") else f"{s['model']} (from {s['from_round']})"
        for mode, m in s["modes"].items():
            rows.append(f"| {s['round']} | {mode} | {model} | {m['tasks']} | {m['solved']} | {m['pass_rate']:.1%} | "
                        f"{m['visible_pass_rate']:.1%} | {m['parse_failures']} |")
    return "\n".join(rows)


def plot(summaries: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [s["round"] for s in summaries]
    modes = sorted({mode for s in summaries for mode in s["modes"]})
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rounds) * len(modes)), 3.5))
    for i, mode in enumerate(modes):  # grouped bars: equal rates stay visible side by side
        xs = [r + (i - (len(modes) - 1) / 2) * width for r in range(len(rounds))]
        ys = [s["modes"][mode]["pass_rate"] * 100 if mode in s["modes"] else 0.0 for s in summaries]
        bars = ax.bar(xs, ys, width=width, label=mode)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(rounds)), rounds)
    ax.set_xlabel("round")
    ax.set_ylabel("pass rate (%)")
    ax.set_ylim(0, 110)  # room for a label over a 100% bar
    ax.set_title("Pass rate by round and mode")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(ws: RoundWorkspace, summary: dict[str, Any]) -> None:
    summary["finished_at"] = time.time()
    summaries = all_summaries(ws, summary)
    out = ws.work_path("eval/summary.json").parent
    atomic_write_json(out / "summary.json", summary)
    lines = [f"# AgentQ evaluation: {ws.name}", "", table(summaries), ""]
    lines.append("Pass rate counts an answer as solved only when it passes visible and hidden tests; the "
                 "visible-only column shows how many would pass on the examples shown in the prompt alone.")
    lines.append(f"Parse failures (no program in the answer) are counted apart from wrong fixes. "
                 f"Candidates flagged as reward hacks during collection: {summary.get('flagged_candidates', 0)}.")
    if summary.get("weak_isolation"):
        lines += ["", "**Weak sandbox isolation.** Candidates of this round ran in a sandbox that could not "
                  "enforce everything (`sandbox.allowWeakIsolation`); their verdicts are less trustworthy: "
                  + "; ".join(summary["weak_isolation"])]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    tmp_png = out / ".pass_rate.tmp.png"
    plot(summaries, str(tmp_png))
    tmp_png.replace(out / "pass_rate.png")
    for name in ("pass_rate.png", "report.md", "summary.json"):
        ws.publish(f"eval/{name}")
