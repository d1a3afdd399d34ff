"""Progress inside the two long steps, folded from what they write as they go (pure functions).

collect appends each finished tree to its shard's partial file (agentq/collect.py) and notes at its start how
many tasks the shard holds (`progress/collect-shard-<i>-of-<n>.json`): trees done of planned, and the samples,
sandbox runs and solved tasks of the trees done so far (a tree in flight counts once it is finished: nothing
of it is on disk before). train rewrites `progress/train.json` at every logged step
(agentq/train/progress.py): the step, the planned steps, and the loss and reward accuracy per step.
"""

from __future__ import annotations

from typing import Any


def collect_progress(trees: list[dict[str, Any]], planned: list[dict[str, Any] | None],
                     markers: list[dict[str, Any] | None]) -> dict[str, Any]:
    """{trees, tasks (None when no shard said), samples, executions, solved, shardsDone, shards}."""
    tasks: int | None = 0
    for plan, marker in zip(planned, markers, strict=True):
        count = ((marker or {}).get("result") or {}).get("tasks", (plan or {}).get("tasks"))
        tasks = None if tasks is None or not isinstance(count, int) else tasks + count
    stats = [t.get("stats") or {} for t in trees]
    return {"trees": len(trees), "tasks": tasks, "samples": sum(int(s.get("samples") or 0) for s in stats),
            "executions": sum(int(s.get("executions") or 0) for s in stats),
            "solved": sum(bool(t.get("solved")) for t in trees),
            "shardsDone": sum(m is not None for m in markers), "shards": len(markers)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def train_progress(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """{step, maxSteps, method, loss, rewardAccuracy, evalRewardAccuracy, history: [{step, loss, ...}]}; the
    latest value of each measure (training records and held-out records are logged apart)."""
    if not doc:
        return None
    history = [h for h in doc.get("history") or [] if isinstance(h, dict)]

    def latest(key: str) -> float | None:
        return next((_number(h[key]) for h in reversed(history) if _number(h.get(key)) is not None), None)

    return {"step": doc.get("step"), "maxSteps": doc.get("maxSteps"), "method": doc.get("method"),
            "updatedTime": doc.get("updatedTime"), "loss": latest("loss"), "rewardAccuracy": latest("rewardAccuracy"),
            "evalLoss": latest("evalLoss"), "evalRewardAccuracy": latest("evalRewardAccuracy"), "history": history}
