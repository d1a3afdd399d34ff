"""The operator pod deleted mid-round: its replacement resumes the round, and no step runs twice."""

from __future__ import annotations

import time

from e2e.context import ROUND_LABEL, Context, ScenarioFailed, parse_time
from e2e.scenarios import scenario
from e2e.scenarios.pod_deleted import started

NAME = "e2e-operator-deleted"


@scenario("operator-deleted", order=40)
def operator_deleted(ctx: Context) -> dict:
    """Delete the operator pod once a collect pod is made; the Deployment's new pod finishes the round."""
    start = time.monotonic()
    ctx.apply(ctx.small_round(NAME))
    ctx.wait_pods(f"{ROUND_LABEL}={NAME},agentq.dev/step=collect", "a collect pod made", started)
    old = ctx.component_pod("operator")["metadata"]["name"]
    ctx.kubectl("delete", "pod", old, "-n", ctx.namespace, "--wait=false")

    def replacement(pods: list[dict]) -> dict | None:
        for pod in pods:
            ready = [c for c in pod["status"].get("conditions") or [] if c["type"] == "Ready"]
            if pod["metadata"]["name"] != old and ready and ready[0]["status"] == "True":
                return pod
        return None

    new = ctx.wait_pods("app.kubernetes.io/component=operator", "a new operator pod Ready", replacement)
    body = ctx.wait_round(NAME)
    ctx.no_twins(NAME)
    jobs = ctx.round_jobs(NAME)
    took_over = parse_time(new["metadata"]["creationTimestamp"])
    resumed = sorted(ctx.unit_of(j) for j in jobs if parse_time(j["metadata"]["creationTimestamp"]) >= took_over)
    if not resumed:
        raise ScenarioFailed("the new operator created no Job: the round was over before the old one went")
    return {"deleted_operator": old, "new_operator": new["metadata"]["name"], "jobs": len(jobs),
            "units_started_by_the_new_operator": resumed, "phase": body["status"]["phase"],
            "wall_s": round(time.monotonic() - start, 1)}
