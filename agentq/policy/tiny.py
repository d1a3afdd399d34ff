"""Random-weight Qwen2 models with a locally trained tokenizer, so tests and benchmarks never need a hub.

The tiny one is what tests and CPU runs use; the Qwen2.5-Coder-7B shape (published config numbers) is
what GPU benchmarks measure, since cost depends on shape, not on what the weights learned.

The architecture is Qwen2 (the production model family), so the same loading, chat-template, LoRA and
merge code paths run in tests as on a GPU node; only the sizes differ. The tokenizer is a byte-level BPE
trained on a fixed set of Python standard-library sources: always present, deterministic for one Python
version, and code-like enough that prompts tokenize to realistic lengths.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Any

from agentq.cache import cached_build

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 3072
# Bump when the recipe changes, so stale caches are rebuilt rather than reused.
RECIPE_VERSION = 1
CORPUS_MODULES = (
    "textwrap.py", "heapq.py", "bisect.py", "functools.py", "collections/__init__.py", "json/decoder.py",
    "string.py", "fractions.py", "statistics.py", "difflib.py", "dataclasses.py", "enum.py",
)
TINY_ARCH = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    max_position_embeddings=8192, rope_theta=10000.0, tie_word_embeddings=True,
)
QWEN25_CODER_7B_ARCH = dict(
    hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
    vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
)


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [(stdlib / name).read_text(encoding="utf-8") for name in CORPUS_MODULES]


def _train_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # The same normalizer and pre-tokenizer as Qwen2Tokenizer, which AutoTokenizer picks for a qwen2
    # config and which rebuilds the pipeline from vocab + merges: anything else would tokenize differently
    # after a save/load round trip.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.padding_side = "left"
    return hf_tok


def build_random_model(
    out_dir: str | Path, arch: dict[str, Any], seed: int = 0, device: str = "cpu", dtype: Any = None
) -> Path:
    """Write a random Qwen2 of shape `arch` (safetensors + tokenizer + ChatML template); same seed, same bytes.

    A vocab_size larger than the trained tokenizer's is filled with placeholder tokens, so every id the
    model can emit decodes (vLLM's detokenizer fails on ids the tokenizer does not know).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(_corpus())
    vocab_size = arch.get("vocab_size", len(tokenizer))
    if vocab_size > len(tokenizer):
        tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(vocab_size - len(tokenizer))])
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = Qwen2Config(
        **{**arch, "vocab_size": vocab_size}, bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id
    )
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)  # initialise in the target dtype: 7B in fp32 is 30 GB
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """The tiny test model: hidden 64, 2 layers, 4 heads / 2 KV heads, a 3k code vocabulary."""
    return build_random_model(out_dir, TINY_ARCH, seed=seed)


def _recipe_key(seed: int) -> str:
    digest = hashlib.sha256()
    for text in _corpus():
        digest.update(hashlib.sha256(text.encode()).digest())
    digest.update(repr((RECIPE_VERSION, VOCAB_SIZE, sorted(TINY_ARCH.items()), seed)).encode())
    return digest.hexdigest()[:12]


def tiny_model_dir(seed: int = 0) -> Path:
    """The cached tiny model for this seed, built on first use (about a second)."""
    return cached_build(f"tiny-qwen2-{_recipe_key(seed)}", lambda d: build_tiny_model(d, seed=seed))
