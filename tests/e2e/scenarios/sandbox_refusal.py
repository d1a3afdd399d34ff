"""A sandbox pod refuses to start, with one line naming the missing piece, where the cluster does not give it
what bubblewrap needs (the seccomp profile that permits user namespaces, an unmasked /proc)."""

from __future__ import annotations

import json

from e2e.context import Context, ScenarioFailed
from e2e.scenarios import scenario

CASES = {
    # the runtime's default profile, as a pod gets without the chart's Localhost profile
    "without-profile": ({"seccompProfile": {"type": "RuntimeDefault"}}, None, "seccomp profile"),
    # the runtime's masked /proc
    "masked-proc": ({}, "Default", "procMount: Unmasked"),
}


def _variant(template: dict, name: str, pod_security: dict, proc_mount: str | None) -> dict:
    """The chart's sandbox pod with one of its requirements taken away (its labels dropped: no Service or
    Deployment adopts it)."""
    spec = json.loads(json.dumps(template["spec"]))
    spec["securityContext"].update(pod_security)
    if proc_mount:
        for container in spec["containers"] + spec["initContainers"]:
            container["securityContext"]["procMount"] = proc_mount
    spec["restartPolicy"] = "Never"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"agentq.dev/e2e": "refusal"}},
            "spec": spec}


@scenario("sandbox-refuses", order=25)
def sandbox_refuses(ctx: Context) -> dict:
    """Each missing piece stops the pod in its init container, whose message names it."""
    deployment = json.loads(ctx.kubectl("get", "deployment", f"{ctx.release}-sandbox", "-n", ctx.namespace,
                                        "-o", "json"))
    template = deployment["spec"]["template"]
    seen = {}
    try:
        for case, (pod_security, proc_mount, _) in CASES.items():
            ctx.apply(_variant(template, f"e2e-sandbox-{case}", pod_security, proc_mount))

        def finished(pods: list[dict]) -> list[dict] | None:
            done = [p for p in pods if (p["status"].get("initContainerStatuses") or [{}])[0].get(
                "state", {}).get("terminated")]
            return done if len(done) == len(CASES) else None

        for pod in ctx.wait_pods("agentq.dev/e2e=refusal", "the sandbox variants' checks to end", finished, 300):
            case = pod["metadata"]["name"].removeprefix("e2e-sandbox-")
            term = pod["status"]["initContainerStatuses"][0]["state"]["terminated"]
            message = term.get("message", "").strip()
            names = CASES[case][2]
            if term["exitCode"] == 0 or names not in message or pod["status"].get("phase") == "Running":
                raise ScenarioFailed(f"{case}: the pod did not refuse naming {names!r}: exit {term['exitCode']}, "
                                     f"{message!r}")
            seen[case] = message.splitlines()[-1]
    finally:
        ctx.kubectl("delete", "pod", "-n", ctx.namespace, "-l", "agentq.dev/e2e=refusal", "--wait=false",
                    check=False)
    return {"refusals": seen}
