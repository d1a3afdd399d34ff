"""A round applied with `kubectl apply` runs every step as real pods to Succeeded."""

from __future__ import annotations

import json
import time

from e2e.cluster import NODE_NAME
from e2e.context import Context, ScenarioFailed
from e2e.scenarios import scenario

NAME = "e2e-round"
# collect is sharded (2 Jobs), evaluate runs as one shard plus the report that combines the shards.
UNITS = {"collect-0", "collect-1", "preferences", "train", "merge", "evaluate-0", "report"}


def check_real_pods(ctx: Context, name: str) -> dict[str, float]:
    """Every step pod ran on the node from an image containerd holds and exited 0; each unit's pod seconds."""
    seconds: dict[str, float] = {}
    for pod in ctx.step_pods(name):
        where = f"pod {pod['metadata']['name']}"
        status = pod["status"]
        if status.get("phase") != "Succeeded":
            continue  # an earlier attempt; the unit's Succeeded pod is checked below
        if pod["spec"].get("nodeName") != NODE_NAME:
            raise ScenarioFailed(f"{where} was not scheduled on {NODE_NAME}")
        (container,) = status["containerStatuses"]
        term = container["state"]["terminated"]
        if term["exitCode"] != 0 or not container.get("imageID") or not container.get("containerID"):
            raise ScenarioFailed(f"{where}: not a container that ran and exited 0: {container}")
        seconds[ctx.unit_of(pod)] = ctx.pod_seconds(pod) or 0.0
    return seconds


@scenario("round", order=10)
def round_in_pods(ctx: Context) -> dict:
    """collect (2 shards) -> preferences -> train -> merge -> evaluate -> report, each a Job whose pod Succeeded."""
    start = time.monotonic()
    ctx.apply(ctx.round_manifest(NAME))
    body = ctx.wait_round(NAME)
    wall = round(time.monotonic() - start, 1)
    seconds = check_real_pods(ctx, NAME)
    if set(seconds) != UNITS:
        raise ScenarioFailed(f"units with a Succeeded pod: {sorted(seconds)}, expected {sorted(UNITS)}")
    for job in ctx.round_jobs(NAME):
        complete = [c for c in job["status"].get("conditions") or [] if c["type"] == "Complete"]
        if not complete or complete[0]["status"] != "True":
            raise ScenarioFailed(f"Job {job['metadata']['name']} is not Complete: {job['status']}")
    table = ctx.kubectl("get", "aqr", NAME, "-n", ctx.namespace)
    header, row = table.strip().splitlines()[:2]
    columns = dict(zip(header.split(), row.split(), strict=False))
    if columns.get("PHASE") != "Succeeded" or not columns.get("PASS-RATE"):
        raise ScenarioFailed(f"`kubectl get aqr` shows no phase and pass rate:\n{table}")
    eval_dir = ctx.store / "rounds" / NAME / "eval"
    report = (eval_dir / "report.md").read_text()
    summary = json.loads((eval_dir / "summary.json").read_text())
    if "pass" not in report.lower():
        raise ScenarioFailed(f"{eval_dir / 'report.md'} does not read as a report:\n{report[:500]}")
    for artifact in ("preferences.jsonl", "merged/config.json", "adapter/adapter_config.json",
                     "trajectories/shard-0-of-2.jsonl", "trajectories/shard-1-of-2.jsonl"):
        if not (ctx.store / "rounds" / NAME / artifact).exists():
            raise ScenarioFailed(f"the store lacks rounds/{NAME}/{artifact}")
    ctx.shared["round"] = NAME
    return {"wall_s": wall, "step_pod_s": dict(sorted(seconds.items())), "kubectl_get_aqr": table.strip(),
            "phase": body["status"]["phase"], "pass_rate": body["status"].get("passRate"),
            "report_bytes": len(report.encode()), "summary_modes": sorted(summary.get("modes", summary))[:5]}
