"""The one generation interface every backend implements, and the factory that picks a backend.

Search, evaluation and benchmarks only ever see `Policy.generate` and `Policy.generate_batch`; which
backend runs (transformers, vLLM, an OpenAI-compatible server, or the scripted mock) is a line in the
round spec. `generate_batch` is the call that keeps an accelerator busy: the search scheduler hands it
every pending expansion and critique of a shard at once, each request with its own n, temperature,
token limit and seed.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from agentq.config import ModelSpec
    from agentq.tasks.schema import Task

Purpose = Literal["rewrite", "critique", "zero_shot", "repair"]


@dataclass
class Prompt:
    """A chat prompt. Real backends read only `messages`; the scripted mock answers from the task fields."""

    messages: list[dict[str, str]]
    task: Task | None = None
    purpose: Purpose = "rewrite"
    candidates: list[str] = field(default_factory=list)
    # The start of the assistant's answer, already written; backends return only what follows it. Small
    # models keep to an answer format far more reliably when its label is already in place.
    answer_prefix: str = ""

    def text(self) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)


@dataclass
class Sample:
    """One completion; `logprob` is the sum of its token log-probs under the model (temperature 1).

    The token counts are what producing it cost, so that summing them over the samples a backend returned
    is what its calls spent (`spent`): `tokens` the completion tokens generated for this sample,
    `prompt_tokens` the tokens of its request's prompt, which the model reads once however many samples the
    request asks for, so only the request's first sample carries them (the others 0; see `request_samples`).
    """

    text: str
    logprob: float | None = None
    tokens: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class Request:
    """One prompt's share of a batched call: n samples at its own temperature (0: greedy), limit and seed."""

    prompt: Prompt
    n: int
    temperature: float
    max_new_tokens: int
    seed: int


def request_samples(request: Request, generated: list[Sample], prompt_tokens: int) -> list[Sample]:
    """A request's n samples from what a backend generated for it (one answer for a greedy request).

    A greedy request's one answer stands for all n, as greedy decoding gives the same answer every time;
    its copies were never generated, so they cost no tokens. The prompt is counted once, on the first sample.
    """
    first = replace(generated[0], prompt_tokens=prompt_tokens)
    if request.temperature <= 0:
        return [first, *(replace(first, tokens=0, prompt_tokens=0) for _ in range(request.n - 1))]
    return [first, *generated[1:]]


def spent(groups: Iterable[list[Sample]]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) that the calls which returned these sample groups cost."""
    samples = [s for group in groups for s in group]
    return sum(s.prompt_tokens for s in samples), sum(s.tokens for s in samples)


class Policy(Protocol):
    def generate(
        self, prompts: list[Prompt], *, n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[Sample]]:
        """n samples per prompt, in prompt order; temperature 0 means greedy."""
        ...

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        """Each request's samples, in request order, from one call to the backend."""
        ...


class BatchPolicy:
    """Backends implement `generate_batch`; `generate` (one setting for every prompt) is a batch of one kind."""

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        raise NotImplementedError

    def generate(
        self, prompts: list[Prompt], *, n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[Sample]]:
        return self.generate_batch([Request(p, n, temperature, max_new_tokens, seed) for p in prompts])


class PolicyError(RuntimeError):
    """A backend that cannot run here (missing package, no CUDA for 4-bit); says what to do instead."""


class _Reuse:
    """The policy last loaded inside `reusing_policies()`, kept for the next load of the same model."""

    active = False
    key: str | None = None
    policy: Policy | None = None
    loads = 0  # models loaded while active (the embedded runner's workers report it)


@contextlib.contextmanager
def reusing_policies() -> Iterator[None]:
    """Within the block, loading the model already loaded returns it instead of loading it again.

    Only the latest model is kept, and it is dropped before another loads and when the block ends, so
    two models never share a device's memory and training after collection finds the device free.
    """
    _Reuse.active, _Reuse.loads = True, 0
    try:
        yield
    finally:
        _Reuse.active, _Reuse.key, _Reuse.policy = False, None, None
        gc.collect()


def served_model(model: ModelSpec, environ: Mapping[str, str] = os.environ) -> ModelSpec:
    """The model as a served step must reach it: over the openai backend, at the server the operator named.

    With `model.server`, the operator starts (or names) the server and gives collect and evaluate its URL
    and served names in the environment; every other step, and any run without that environment, keeps the
    spec's own backend.
    """
    from agentq.config import (
        INFERENCE_MODEL_ENV,
        INFERENCE_ROUND_MODEL_ENV,
        INFERENCE_URL_ENV,
        OpenAISpec,
    )

    url = environ.get(INFERENCE_URL_ENV)
    if model.server is None or not url:
        return model
    server = OpenAISpec(url=url, model=environ.get(INFERENCE_MODEL_ENV) or model.base,
                        round_model=environ.get(INFERENCE_ROUND_MODEL_ENV) or None,
                        api_key_secret=model.openai.api_key_secret if model.openai else None)
    return model.model_copy(update={"backend": "openai", "openai": server})


def load_policy(model: ModelSpec, path_override: str | Path | None = None) -> Policy:
    """The backend `model.backend` names; `path_override` replaces `model.base` (an earlier round's merge)."""
    if path_override is not None:
        model = model.model_copy(update={"base": str(path_override)})
    if not _Reuse.active:
        return _load(model)
    key = model.model_dump_json()
    if _Reuse.key != key:
        _Reuse.key, _Reuse.policy = None, None
        gc.collect()  # the previous model leaves memory before the next one arrives
        _Reuse.policy, _Reuse.key = _load(model), key
        _Reuse.loads += 1
    assert _Reuse.policy is not None
    return _Reuse.policy


def _load(model: ModelSpec) -> Policy:
    if model.backend == "scripted":
        from agentq.policy.scripted import ScriptedPolicy

        return ScriptedPolicy(model.scripted)
    if model.backend == "vllm":
        from agentq.policy.vllm_backend import VllmPolicy

        return VllmPolicy(model)
    if model.backend == "openai":
        from agentq.policy.openai_backend import OpenAIPolicy

        return OpenAIPolicy(model)
    from agentq.policy.hf import HFPolicy

    return HFPolicy(model)
