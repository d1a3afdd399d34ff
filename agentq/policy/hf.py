"""The transformers backend: what collection and evaluation run on a GPU node, and on a laptop CPU."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from agentq.config import ModelSpec
from agentq.policy.base import PolicyError, Prompt, Sample
from agentq.policy.models import load_model, load_tokenizer, loadable_dir, resolve_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class _TokenLogprobs(LogitsProcessor):
    """Records each generated token's log-prob under the raw model distribution, one step at a time.

    Custom processors run before the temperature/top-p warpers, so these are temperature-1 log-probs.
    Keeping only the previous step's log-softmax costs batch x vocab memory, where output_scores would
    keep every step's (gigabytes for a 152k vocab and 768 new tokens).
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def _take(self, chosen: torch.Tensor) -> None:
        assert self.previous is not None
        self.steps.append(self.previous.gather(1, chosen[:, None]).squeeze(1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """Per-position log-probs, shape (batch, new tokens)."""
        if self.previous is not None and len(self.steps) < generated.shape[1]:
            self._take(generated[:, len(self.steps)])
        return torch.stack(self.steps, dim=1) if self.steps else generated.new_zeros(generated.shape, dtype=torch.float)


def pick_device_and_dtype(spec: ModelSpec) -> tuple[str, torch.dtype]:
    """bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow or unsupported on many cores) unless set."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.dtype != "auto":
        return device, DTYPES[spec.dtype]
    return device, torch.bfloat16 if device == "cuda" else torch.float32


def _nf4_config(spec: ModelSpec, dtype: torch.dtype) -> Any:
    if not torch.cuda.is_available():
        raise PolicyError(
            f"model {spec.base!r}: quantization nf4 needs a CUDA GPU (bitsandbytes 4-bit has no CPU path); "
            "set model.quantization: none to run on CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise PolicyError(
            f"model {spec.base!r}: quantization nf4 needs bitsandbytes (pip install 'agentq[infer,cuda]')"
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


class HFPolicy:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device, self.dtype = pick_device_and_dtype(spec)
        # Straight onto the GPU: staging a 7B model in CPU memory first doubles load time.
        kwargs: dict[str, Any] = {"dtype": self.dtype, "device_map": {"": 0} if self.device == "cuda" else None}
        if spec.quantization == "nf4":
            kwargs["quantization_config"] = _nf4_config(spec, self.dtype)
        source = loadable_dir(resolve_model(spec))
        self.tokenizer = load_tokenizer(source)
        self.model = load_model(source, **kwargs).eval()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _encode(self, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
        texts = [
            self.tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) + p.answer_prefix
            for p in prompts
        ]
        # The chat template already holds any BOS token; adding special tokens again would double it.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in batch.items()}

    @torch.inference_mode()
    def generate(
        self, prompts: list[Prompt], *, n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[Sample]]:
        if not prompts:
            return []
        torch.manual_seed(seed)
        batch = self._encode(prompts)
        greedy = temperature <= 0
        # Greedy samples of one prompt are identical: generate each once and repeat it n times.
        copies = 1 if greedy else n
        logprobs = _TokenLogprobs()
        sampling = {} if greedy else {"temperature": temperature, "top_p": 1.0, "top_k": 0}
        out = self.model.generate(
            **batch,
            do_sample=not greedy,
            num_return_sequences=copies,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([logprobs]),
            **sampling,
        )
        generated = out[:, batch["input_ids"].shape[1]:]
        token_logprobs = logprobs.finish(generated).cpu()
        samples = [self._sample(row, lp) for row, lp in zip(generated.cpu(), token_logprobs, strict=True)]
        per_prompt = [samples[i * copies:(i + 1) * copies] for i in range(len(prompts))]
        return [[replace(group[0]) for _ in range(n)] if greedy else group for group in per_prompt]

    def _sample(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> Sample:
        """Cut at the first end-of-sequence token (kept in the count and log-prob, not in the text)."""
        length = len(tokens)
        for i, token in enumerate(tokens.tolist()):
            if token in self.eos_ids:
                length = i + 1
                break
        text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
        return Sample(text=text, logprob=float(logprobs[:length].sum()), tokens=length)
