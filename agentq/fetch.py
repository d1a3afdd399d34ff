"""`agentq model fetch`: copy a round's base model into its artifact store once, before collect.

In a cluster, step pods usually have no route to a model hub and each would download 15 GB; with
`model.base: store:<key>` and `model.fetchFrom: <hub name>`, one Job (the operator's `model` step, with
HF_TOKEN from `model.tokenSecret`) writes the model into the store and every later step reads it from
there (a PVC mount, or S3 mirrored into the step's scratch cache). The copy is published atomically, so a
killed fetch leaves nothing half-written, and a model already in the store is not fetched again.
"""

from __future__ import annotations

import argparse
from typing import Any

from agentq.config import STORE_MODEL, ConfigError
from agentq.workspace import RoundWorkspace, digest

ORIGIN = "agentq-fetched-from.txt"  # beside the weights: what the copy was made from


def run(ws: RoundWorkspace) -> dict[str, Any]:
    model = ws.round.spec.model
    if not (model.fetch_from and model.base.startswith(STORE_MODEL)):
        raise ConfigError(f"{ws.source}: spec.model: nothing to fetch (set base: {STORE_MODEL}<key> and fetchFrom)")
    key = model.base.removeprefix(STORE_MODEL)
    inputs = digest(model.fetch_from, key)
    if ws.store.exists(f"{key}/config.json"):
        origin = ws.store.get_text(f"{key}/{ORIGIN}").strip() if ws.store.exists(f"{key}/{ORIGIN}") else None
        if origin != model.fetch_from:
            raise ConfigError(f"{ws.source}: spec.model.base: {ws.store.url}/{key} already holds a model "
                              f"({'copied from ' + origin if origin else 'not fetched by agentq'}), not "
                              f"{model.fetch_from}: name another key")
        return ws.finish("model", inputs, {"model": key}, f"model: {model.fetch_from} already at {ws.store.url}/{key}")
    from agentq.policy.models import materialize_model

    with ws.store.writing_dir(key) as out_dir:
        materialize_model(model.fetch_from, out_dir)
        (out_dir / ORIGIN).write_text(model.fetch_from + "\n")
    return ws.finish("model", inputs, {"model": key}, f"model: {model.fetch_from} -> {ws.store.url}/{key}")


def main(args: argparse.Namespace) -> int:
    run(RoundWorkspace.from_args(args))
    return 0
