"""`agentq merge`: fold the LoRA adapter into the base weights, so the next round loads one plain model.

A merge that silently changes the model (a wrong adapter, a dtype slip, a module PEFT skipped, a bad
save) would poison every later round, so the merged model is read back from disk and its logits on a
probe batch are compared with base+adapter before the directory is published. A tolerance scaled by the
largest logit can exceed a whole adapter's effect, so the check also measures the adapter's own change
from the base and fails a merged model that does not reproduce most of it (a lost adapter). That check is
relative to the adapter's own effect: it judges any adapter whose change stands above the rounding of the
dtype the model is saved in (measured on the base itself: its logits after a round trip through that dtype),
however weak. With a fixed "measurable" bar of 10 x atol, a merge that had lost a weak adapter (the same
adapter scaled by 0.9 or 0.5) was published.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agentq.config import ConfigError
from agentq.io import atomic_write_json
from agentq.train.dpo import base_model_dir, default_device

PROBE_PROMPTS = (
    "Fix the bug:\ndef add(a, b):\n    return a - b",
    "def is_even(n):\n    return n % 2 == 1\n# The function above is wrong. Rewrite it.",
    "Explain what this does: sorted(xs, key=lambda x: -x)[:3]",
)
# Merging happens in float32; the error budget is the rounding of the dtype the model is saved in.
TOLERANCES = {"float32": (1e-5, 1e-4), "bfloat16": (1e-2, 2e-2), "float16": (1e-3, 5e-3)}
# The merged model must reproduce the adapter's change from the base to within this share of it ...
MAX_LOST_SHARE = 0.5
# ... whenever that change is measurable: above this many times the rounding noise of the saved dtype (the
# larger of atol and the base's own logit change when its weights are rounded to that dtype).
MEASURABLE = 2.0
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class MergeCheckError(RuntimeError):
    """The merged model does not reproduce base+adapter within tolerance; it is not published."""


class AdapterMissing(ConfigError):
    """The adapter directory lacks a file PEFT needs (PEFT would take the path for a hub repo id instead)."""


def check_adapter_dir(adapter_dir: str | Path) -> None:
    missing = [name for name in ADAPTER_FILES if not (Path(adapter_dir) / name).is_file()]
    if missing:
        raise AdapterMissing(f"adapter {adapter_dir}: missing {', '.join(missing)}; the train step writes them "
                             "(re-run `agentq train`, or point merge at a finished adapter directory)")


def probe_logits(model: Any, tokenizer: Any) -> Any:
    """Logits of the fixed probe prompts at real (unpadded) positions, in float32."""
    import torch

    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROBE_PROMPTS
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        logits = model(**batch).logits.float()
    return logits[batch["attention_mask"].bool()].cpu()


def compare(
    reference: Any, merged: Any, dtype: str, *, base: Any = None, atol: float | None = None,
    rtol: float | None = None, rounding: float = 0.0,
) -> dict[str, Any]:
    """max |merged - reference| against atol + rtol * max |reference|, and, given the base's logits, against
    half the adapter's own change max |reference - base| whenever that change stands above the noise
    (MEASURABLE x the larger of atol and `rounding`, the saved dtype's own effect on the base); raises past
    either."""
    default_atol, default_rtol = TOLERANCES.get(dtype, TOLERANCES["bfloat16"])
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    scale = float(reference.abs().max())
    max_diff = float((merged - reference).abs().max())
    tolerance = atol + rtol * scale
    if not max_diff <= tolerance:  # also catches NaN
        raise MergeCheckError(
            f"merged model disagrees with base+adapter on the probe batch: max abs logit diff {max_diff:.3g} "
            f"> tolerance {tolerance:.3g} (atol {atol:g} + rtol {rtol:g} x max |logit| {scale:.3g})"
        )
    summary: dict[str, Any] = {
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "atol": atol,
        "rtol": rtol,
        "max_abs_logit": scale,
        "probe_tokens": int(reference.shape[0]),
    }
    if base is not None:
        change = float((reference - base).abs().max())
        noise = max(atol, rounding)
        summary.update(adapter_change=change, rounding_noise=noise)
        summary["adapter_change_measurable"] = change > MEASURABLE * noise
        if summary["adapter_change_measurable"]:
            summary["adapter_change_kept"] = 1.0 - max_diff / change
            if max_diff > MAX_LOST_SHARE * change:
                raise MergeCheckError(
                    f"merged model lost the adapter: it differs from base+adapter by {max_diff:.3g}, "
                    f"{max_diff / change:.0%} of the adapter's own change from the base ({change:.3g}); "
                    f"at most {MAX_LOST_SHARE:.0%} may be lost"
                )
    return summary


def _load(model_dir: str | Path, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


def _tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def rounding_noise(model: Any, tokenizer: Any, logits: Any, dtype: str) -> float:
    """max |logit change| of `model` (float32) when its weights are rounded to `dtype` and back: how far saving
    alone moves the probe logits, below which an adapter's effect cannot be told from rounding. Restores it."""
    import torch

    if dtype == "float32":
        return 0.0
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.to(getattr(torch, dtype)).float())
        noise = float((probe_logits(model, tokenizer) - logits).abs().max())
        model.load_state_dict(saved)
    return noise


def _saved_dtype(base_dir: str | Path) -> str:
    config = json.loads((Path(base_dir) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def check_merge(
    merged_dir: str | Path,
    base_dir: str | Path,
    adapter_dir: str | Path,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Compare an existing merged directory with base+adapter (what merge_adapter runs before publishing)."""
    from peft import PeftModel

    check_adapter_dir(adapter_dir)
    device = device or default_device()
    tokenizer = _tokenizer(base_dir)
    base_model = _load(base_dir, device)
    base = probe_logits(base_model, tokenizer)
    dtype = _saved_dtype(merged_dir)
    rounding = rounding_noise(base_model, tokenizer, base, dtype)
    reference = probe_logits(PeftModel.from_pretrained(base_model, adapter_dir).eval(), tokenizer)
    return compare(reference, probe_logits(_load(merged_dir, device), tokenizer), dtype,
                   base=base, atol=atol, rtol=rtol, rounding=rounding)


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Merge, save (safetensors + tokenizer + chat template), check the saved copy, then rename into place.

    out_dir appears whole or not at all; a failed check leaves any previous out_dir untouched.
    """
    import torch
    from peft import PeftModel

    check_adapter_dir(adapter_dir)
    device = device or default_device()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    dtype = _saved_dtype(base_dir)
    tokenizer = _tokenizer(base_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.merging-"))
    try:
        base_model = _load(base_dir, device)
        base = probe_logits(base_model, tokenizer)
        rounding = rounding_noise(base_model, tokenizer, base, dtype)
        model = PeftModel.from_pretrained(base_model, adapter_dir).eval()
        reference = probe_logits(model, tokenizer)
        merged = model.merge_and_unload()
        merged.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
        tokenizer.padding_side = "right"  # what generation-time loaders expect back
        tokenizer.save_pretrained(tmp)
        del model, merged
        summary = compare(reference, probe_logits(_load(tmp, device), _tokenizer(tmp)), dtype, base=base,
                          atol=atol, rtol=rtol, rounding=rounding)
        summary.update({"base": str(base_dir), "adapter": str(adapter_dir), "dtype": dtype, "device": device})
        atomic_write_json(tmp / "merge_summary.json", summary)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def run(ws: Any) -> dict[str, Any]:
    """The round step: rounds/<r>/adapter + the round's base model -> rounds/<r>/merged."""
    from agentq.workspace import digest

    _, model_digest = ws.model_source()
    inputs_digest = digest("merge", ws.settings("merge"), model_digest, ws.step_digest("train"))
    done_result = ws.finished("merge", inputs_digest, "merge")
    if done_result is not None:
        return done_result
    if not (ws.marker("train") or {}).get("result", {}).get("steps"):
        # Train had no pairs and wrote no adapter: the round's model is its base, published as merged so
        # evaluation and the next round read it where they always do.
        with ws.store.writing_dir(ws.key("merged")) as out_dir:
            shutil.copytree(base_model_dir(ws), out_dir)
        return ws.finish("merge", inputs_digest, {"maxAbsLogitDiff": 0.0},
                         f"merge: no adapter (train had no pairs): the base model -> {ws.describe('merged')}")
    adapter_dir = ws.model_dir("adapter")
    with ws.store.writing_dir(ws.key("merged")) as out_dir:
        summary = merge_adapter(base_model_dir(ws), adapter_dir, out_dir)
    result = {"maxAbsLogitDiff": summary["max_abs_diff"]}
    return ws.finish(
        "merge", inputs_digest, result,
        f"merge: max abs logit diff {summary['max_abs_diff']:.3g} (tolerance {summary['tolerance']:.3g}) "
        f"-> {ws.describe('merged')}",
    )


def main(args: argparse.Namespace) -> int:
    from agentq.workspace import RoundWorkspace

    run(RoundWorkspace.from_args(args))
    return 0
