"""Resolving model names, the tiny model build and cache, SmolLM2 from its PyPI package, materialisation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentq.config import ModelSpec
from agentq.policy.base import load_policy
from agentq.policy.models import (
    ModelLoadError,
    load_model,
    load_tokenizer,
    materialize_model,
    resolve_model,
)
from agentq.policy.prompts import rewrite_prompt
from agentq.policy.tiny import build_tiny_model, tiny_model_dir
from agentq.tasks.schema import Task

TASK = Task(
    id="inc/0", source="demo", group="inc", description="Return x plus one.",
    buggy_code="def inc(x):\n    return x - 1\n", reference_code="def inc(x):\n    return x + 1\n",
    entry_point="inc", tests="def test_a():\n    assert inc(1) == 2\n",
)


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_resolve_names(tmp_path):
    assert resolve_model("tiny").kind == "tiny"
    hub = resolve_model("Qwen/Qwen2.5-Coder-7B-Instruct")
    assert (hub.kind, hub.location) == ("hub", "Qwen/Qwen2.5-Coder-7B-Instruct")
    local = resolve_model(ModelSpec(base=str(tmp_path)))
    assert (local.kind, local.location) == ("local", str(tmp_path))
    smol = resolve_model("smollm2-135m")
    assert smol.kind == "package" and (Path(smol.location) / smol.gguf_file).is_file()


@pytest.mark.parametrize("base", ["./no-such-model", "/no/such/dir", "no such name"])
def test_unknown_model_names_what_was_tried(base):
    with pytest.raises(ModelLoadError) as err:
        resolve_model(base)
    message = str(err.value)
    assert base in message and "not a local directory" in message and "hub name" in message


def test_missing_gguf_file_in_local_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="gguf_file 'x.gguf' not found"):
        resolve_model(ModelSpec(base=str(tmp_path), gguf_file="x.gguf"))


def test_unreachable_hub_model_error_names_it(monkeypatch):
    import huggingface_hub.constants

    # The hub reads HF_HUB_OFFLINE at import; patch the constant so no network retries are attempted.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="agentq-test/definitely-not-cached"):
        load_tokenizer(resolve_model("agentq-test/definitely-not-cached"))


def test_tiny_model_loads_offline_with_chat_template():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 64
    assert 2000 <= len(tokenizer) <= 4096 and model.config.vocab_size == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    code = Path(__file__).read_text()
    assert tokenizer.decode(tokenizer(code)["input_ids"]) == code
    assert len(tokenizer(code)["input_ids"]) < len(code) / 2  # a code-trained BPE, not bytes


def test_tiny_build_is_deterministic_per_seed(tmp_path):
    a = digests(build_tiny_model(tmp_path / "a", seed=0))
    b = digests(build_tiny_model(tmp_path / "b", seed=0))
    c = digests(build_tiny_model(tmp_path / "c", seed=1))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"] and a["tokenizer.json"] == c["tokenizer.json"]


@pytest.mark.slow
def test_parallel_first_use_of_the_cache_is_safe(tmp_path):
    env = {**os.environ, "AGENTQ_CACHE": str(tmp_path)}
    code = "from agentq.policy.tiny import tiny_model_dir; print(tiny_model_dir())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert sorted(os.listdir(tmp_path)) == [Path(outs[0]).name]  # no temporary leftovers
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= set(os.listdir(outs[0]))


def logits(model, tokenizer, text: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_materialize_tiny_round_trips(tmp_path):
    out = materialize_model("tiny", tmp_path / "copy")
    source = resolve_model("tiny")
    original, copy = load_model(source), load_model(resolve_model(str(out)))
    tok = load_tokenizer(resolve_model(str(out)))
    assert torch.equal(logits(original, tok, "def f(x):\n    return x"), logits(copy, tok, "def f(x):\n    return x"))
    assert tok.chat_template == load_tokenizer(source).chat_template
    with pytest.raises(FileExistsError):
        materialize_model("tiny", out)


@pytest.mark.slow
def test_smollm2_materialises_to_safetensors_with_same_logits(tmp_path):
    source = resolve_model("smollm2-135m")
    out = materialize_model("smollm2-135m", tmp_path / "smol")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    copy_tok = load_tokenizer(resolve_model(str(out)))
    gguf_tok = load_tokenizer(source)
    prompt = rewrite_prompt(TASK).messages
    assert copy_tok.apply_chat_template(prompt, tokenize=False) == gguf_tok.apply_chat_template(prompt, tokenize=False)
    text = "def add(a, b):\n    return a + b"
    expected = logits(load_model(source), gguf_tok, text)
    assert torch.allclose(logits(load_model(resolve_model(str(out))), copy_tok, text), expected, atol=1e-4)
    assert "quantization_config" not in (out / "config.json").read_text()


@pytest.mark.slow
def test_smollm2_generates_from_the_package():
    policy = load_policy(ModelSpec(base="smollm2-135m"))
    out = policy.generate([rewrite_prompt(TASK)], n=2, temperature=0.7, max_new_tokens=8, seed=0)
    assert len(out[0]) == 2 and all(0 < s.tokens <= 8 and s.text for s in out[0])
    greedy = policy.generate([rewrite_prompt(TASK)], n=1, temperature=0, max_new_tokens=8, seed=0)[0][0]
    assert greedy.text.strip()
