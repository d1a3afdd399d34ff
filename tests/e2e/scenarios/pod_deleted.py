"""A step pod deleted while it runs: the step is run again and the round finishes. The train pod is the one
deleted: the longest step (15-25 s here), so the deletion lands while it runs even on a loaded machine."""

from __future__ import annotations

import time

from e2e.context import ROUND_LABEL, Context, ScenarioFailed
from e2e.scenarios import scenario

NAME = "e2e-pod-deleted"
STEP = "agentq.dev/step=train"


def started(pods: list[dict]) -> dict | None:
    """A pod made and not finished (Pending or Running). The step whose pod runs a second on a quiet node (the
    scripted collect) may go from Pending to Succeeded between two kubelet status updates, so "running" may never
    be seen; the pod's creation always is."""
    for pod in pods:
        if not pod["metadata"].get("deletionTimestamp") and pod["status"].get("phase") in ("Pending", "Running"):
            return pod
    return None


def running(pods: list[dict]) -> dict | None:
    for pod in pods:
        statuses = pod["status"].get("containerStatuses") or []
        if not pod["metadata"].get("deletionTimestamp") and statuses and "running" in statuses[0].get("state", {}):
            return pod
    return None


@scenario("pod-deleted", order=30)
def pod_deleted(ctx: Context) -> dict:
    """`kubectl delete pod` on the train pod mid-step; the step runs again and the round Succeeds."""
    start = time.monotonic()
    ctx.apply(ctx.small_round(NAME))
    pod = ctx.wait_pods(f"{ROUND_LABEL}={NAME},{STEP}", "a running train pod", running)
    victim = pod["metadata"]["name"]
    ctx.kubectl("delete", "pod", victim, "-n", ctx.namespace, "--wait=false")
    body = ctx.wait_round(NAME)
    jobs = ctx.jobs(f"{ROUND_LABEL}={NAME},{STEP}")
    pods = ctx.pods(f"{ROUND_LABEL}={NAME},{STEP}")
    if any(p["metadata"]["name"] == victim for p in pods):
        raise ScenarioFailed(f"the deleted pod {victim} is still there")
    finished = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Succeeded"]
    if not finished:
        raise ScenarioFailed(f"no train pod Succeeded after {victim} was deleted: {[p['status'] for p in pods]}")
    # Who ran it again: the Job controller (a new pod of the same Job) or the operator (a new attempt's Job).
    retried_by = "operator (a new attempt's Job)" if len(jobs) > 1 else "Job controller (a new pod of the Job)"
    return {"deleted_pod": victim, "train_jobs": sorted(j["metadata"]["name"] for j in jobs),
            "train_pods_succeeded": finished, "retried_by": retried_by, "phase": body["status"]["phase"],
            "wall_s": round(time.monotonic() - start, 1)}
