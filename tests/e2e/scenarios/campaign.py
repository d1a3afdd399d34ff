"""A two-round campaign: round 2 starts from round 1's merged model, both as real pods."""

from __future__ import annotations

import time

from e2e.context import Context, ScenarioFailed
from e2e.scenarios import scenario

NAME = "e2e-campaign"


@scenario("campaign", order=50)
def campaign(ctx: Context) -> dict:
    """`kubectl apply` an AgentQCampaign of two rounds (patience 2: it cannot stop after one) to Succeeded."""
    start = time.monotonic()
    template = ctx.small_round("template")["spec"]
    ctx.apply({"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQCampaign", "metadata": {"name": NAME},
               "spec": {"rounds": 2, "template": template, "stop": {"patience": 2}}})
    body = ctx.wait_round(NAME, plural="agentqcampaigns")
    listed = ctx.custom.list_namespaced_custom_object("agentq.dev", "v1alpha1", ctx.namespace, "agentqrounds",
                                                      label_selector=f"agentq.dev/campaign={NAME}")["items"]
    rounds = sorted(listed, key=lambda r: int(r["metadata"]["labels"]["agentq.dev/campaign-round"]))
    phases = {r["metadata"]["name"]: r["status"]["phase"] for r in rounds}
    if len(rounds) != 2 or set(phases.values()) != {"Succeeded"}:
        raise ScenarioFailed(f"expected two Succeeded rounds, got {phases}")
    first, second = (r["metadata"]["name"] for r in rounds)
    if rounds[1]["spec"]["model"].get("fromRound") != first:
        raise ScenarioFailed(f"round {second} does not start from {first}: {rounds[1]['spec']['model']}")
    if not (ctx.store / "rounds" / first / "merged" / "config.json").exists():
        raise ScenarioFailed(f"round {first}'s merged model is not in the store")
    status = body["status"]
    return {"phase": status["phase"], "rounds": phases, "second_from": first,
            "pass_rates": {r["metadata"]["name"]: r["status"].get("passRate") for r in rounds},
            "wall_s": round(time.monotonic() - start, 1)}
