"""The transformers backend: what collection and evaluation run on a GPU node, and on a laptop CPU."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from agentq.config import ModelSpec
from agentq.policy.base import BatchPolicy, Prompt, Request, Sample, request_samples
from agentq.policy.models import load_model, load_tokenizer, loadable_dir, nf4_config, resolve_model

# Answers whose program is one fenced block: a row ends when it closes it (the prompts ask for exactly one).
CODE_ANSWERS = ("rewrite", "zero_shot")
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


class _RowStop(StoppingCriteria):
    """Ends each row on its own: at its request's token limit, and (rewrite and zero-shot answers) once it has
    closed its code block, since the prompts ask for one block and what follows it is never read.

    A finished row stops costing nothing only when every row has finished (a padded batch advances together),
    but its length is recorded here, so it is cut there and not counted beyond it; the batch as a whole ends
    when its last row does instead of at the largest limit of any request.
    """

    def __init__(self, tokenizer: Any, prompt_length: int, limits: list[int], code_stops: list[bool]) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.limits, self.code_stops = limits, code_stops
        self.texts = [""] * len(limits)
        self.lengths: list[int | None] = [None] * len(limits)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        step = input_ids.shape[1] - self.prompt_length
        last = self.tokenizer.batch_decode(input_ids[:, -1:], skip_special_tokens=True)
        for row, piece in enumerate(last):
            if self.lengths[row] is not None:
                continue
            self.texts[row] += piece
            closed = self.code_stops[row] and "`" in piece and closes_code_block(self.texts[row])
            if step >= self.limits[row] or closed:
                self.lengths[row] = step
        return torch.tensor([n is not None for n in self.lengths], device=input_ids.device)


def closes_code_block(text: str) -> bool:
    """A fenced block was opened and closed (a second line starting with ```): the answer's program is complete."""
    return sum(line.lstrip().startswith("```") for line in text.split("\n")) >= 2


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

    def _prefill(self, batch: dict[str, torch.Tensor], copies: list[int]) -> DynamicCache:
        """Each prompt read once, all but its last token, and its cache repeated for its rows: n samples of one
        prompt share one prefill instead of computing it n times (generate reads the last token itself)."""
        ids, mask = batch["input_ids"][:, :-1], batch["attention_mask"][:, :-1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        rows = torch.repeat_interleave(torch.arange(len(copies), device=ids.device),
                                       torch.tensor(copies, device=ids.device))
        cache.batch_select_indices(rows)
        return cache

    @torch.inference_mode()
    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        """Every request in one padded `model.generate`: one row per sample (one per greedy request, whose
        samples are all the same answer), each row at its own temperature, cut at its own token limit or, for
        rewrite and zero-shot answers, where it closes its code block; each prompt prefilled once for its rows.

        transformers draws the whole batch from one random stream, seeded here by the first request's seed:
        the same batch gives the same samples, but a request's samples depend on its batch companions.
        """
        if not requests:
            return []
        torch.manual_seed(requests[0].seed)
        copies = [1 if r.temperature <= 0 else r.n for r in requests]
        rows = [r for r, c in zip(requests, copies, strict=True) for _ in range(c)]
        prompts = self._encode([r.prompt for r in requests])
        index = torch.repeat_interleave(torch.arange(len(requests)), torch.tensor(copies)).to(self.model.device)
        batch = {k: v[index] for k, v in prompts.items()}
        prompt_length = batch["input_ids"].shape[1]
        cache = self._prefill(prompts, copies) if prompt_length > 1 else None
        logprobs = _TokenLogprobs()
        stop = _RowStop(self.tokenizer, prompt_length, [r.max_new_tokens for r in rows],
                        [r.prompt.purpose in CODE_ANSWERS for r in rows])
        temperatures = torch.tensor([r.temperature for r in rows], device=self.model.device)
        out = self.model.generate(
            **batch,
            past_key_values=cache,
            do_sample=True,  # greedy rows are made greedy by _RowTemperature; the warpers below are no-ops
            temperature=1.0, top_p=1.0, top_k=0,
            num_return_sequences=1,
            max_new_tokens=max(r.max_new_tokens for r in rows),
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([logprobs, _RowTemperature(temperatures)]),
            stopping_criteria=StoppingCriteriaList([stop]),
        )
        generated = out[:, prompt_length:].cpu()
        token_logprobs = logprobs.finish(out[:, prompt_length:]).cpu()
        samples = [self._sample(row[:length or r.max_new_tokens], lp[:length or r.max_new_tokens])
                   for r, row, lp, length in zip(rows, generated, token_logprobs, stop.lengths, strict=True)]
        prompt_tokens = prompts["attention_mask"].sum(dim=1).tolist()  # each prompt, without its padding
        result, at = [], 0
        for i, (request, count) in enumerate(zip(requests, copies, strict=True)):
            result.append(request_samples(request, samples[at:at + count], int(prompt_tokens[i])))
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
