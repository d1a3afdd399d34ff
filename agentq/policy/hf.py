"""The transformers backend: what collection and evaluation run on a GPU node, and on a laptop CPU."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from agentq.config import ModelSpec
from agentq.policy.base import BatchPolicy, Prompt, Request, Sample, request_samples
from agentq.policy.models import load_model, load_tokenizer, loadable_dir, nf4_config, resolve_model

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


class _RowTemperature(LogitsProcessor):
    """A temperature per batch row, so requests of different temperatures share one generate call.

    A row at temperature 0 keeps only its most likely token, which sampling then picks: greedy decoding.
    """

    def __init__(self, temperatures: torch.Tensor) -> None:
        self.greedy = (temperatures <= 0)[:, None]
        self.divisor = torch.where(temperatures <= 0, 1.0, temperatures)[:, None]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scaled = scores / self.divisor.to(scores.dtype)
        if not self.greedy.any():
            return scaled
        only_top = torch.full_like(scores, -math.inf).scatter_(1, scores.argmax(-1, keepdim=True), 0.0)
        return torch.where(self.greedy, only_top, scaled)


def pick_device_and_dtype(spec: ModelSpec) -> tuple[str, torch.dtype]:
    """bf16 on CUDA, fp32 on CPU (CPU bf16 matmuls are slow or unsupported on many cores) unless set."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.dtype != "auto":
        return device, DTYPES[spec.dtype]
    return device, torch.bfloat16 if device == "cuda" else torch.float32


class HFPolicy(BatchPolicy):
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device, self.dtype = pick_device_and_dtype(spec)
        # Straight onto the GPU: staging a 7B model in CPU memory first doubles load time.
        kwargs: dict[str, Any] = {"dtype": self.dtype, "device_map": {"": 0} if self.device == "cuda" else None}
        if spec.quantization == "nf4":
            kwargs["quantization_config"] = nf4_config(f"model {spec.base!r}", self.dtype, "model.quantization")
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
    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        """Every request in one padded `model.generate`: one row per sample (one per greedy request, whose
        samples are all the same answer), each row at its own temperature, cut at its own token limit.

        transformers draws the whole batch from one random stream, seeded here by the first request's seed:
        the same batch gives the same samples, but a request's samples depend on its batch companions.
        """
        if not requests:
            return []
        torch.manual_seed(requests[0].seed)
        copies = [1 if r.temperature <= 0 else r.n for r in requests]
        rows = [r for r, c in zip(requests, copies, strict=True) for _ in range(c)]
        batch = self._encode([r.prompt for r in rows])
        logprobs = _TokenLogprobs()
        temperatures = torch.tensor([r.temperature for r in rows], device=self.model.device)
        out = self.model.generate(
            **batch,
            do_sample=True,  # greedy rows are made greedy by _RowTemperature; the warpers below are no-ops
            temperature=1.0, top_p=1.0, top_k=0,
            num_return_sequences=1,
            max_new_tokens=max(r.max_new_tokens for r in rows),
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([logprobs, _RowTemperature(temperatures)]),
        )
        generated = out[:, batch["input_ids"].shape[1]:].cpu()
        token_logprobs = logprobs.finish(out[:, batch["input_ids"].shape[1]:]).cpu()
        samples = [self._sample(row[:r.max_new_tokens], lp[:r.max_new_tokens])
                   for r, row, lp in zip(rows, generated, token_logprobs, strict=True)]
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()  # each row's prompt, without its padding
        result, at = [], 0
        for request, count in zip(requests, copies, strict=True):
            result.append(request_samples(request, samples[at:at + count], int(prompt_tokens[at])))
            at += count
        return result

    def _sample(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> Sample:
        """Cut at the first end-of-sequence token (kept in the count and log-prob, not in the text)."""
        length = len(tokens)
        for i, token in enumerate(tokens.tolist()):
            if token in self.eos_ids:
                length = i + 1
                break
        text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
        return Sample(text=text, logprob=float(logprobs[:length].sum()), tokens=length)
