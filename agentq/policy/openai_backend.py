"""The OpenAI-compatible backend: generation by a server (vLLM, SGLang, TGI, a hosted endpoint) over HTTP.

Many collect and evaluate Jobs can then share one served model, and a step needs no GPU of its own. A
batch becomes one chat-completions request per prompt (n samples each, with its own temperature, seed
and token limit), `concurrency` of them in flight at once, so the server's continuous batching sees the
whole batch. A request answered 429 or 5xx, or not answered, is retried with exponential backoff (a
Retry-After header wins); when the server stays unreachable the step fails with one line naming the URL.
Token counts are the server's own: the answer's `usage` (prompt and completion tokens, what a hosted endpoint
bills), each choice's share of the completion tokens read from its log-probs when the server sends them.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx

from agentq.config import ModelSpec, OpenAISpec
from agentq.policy.base import BatchPolicy, PolicyError, Request, Sample, request_samples

API_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class ServerUnavailable(PolicyError):
    """The inference server did not answer usefully after every retry; the message names its URL."""


class OpenAIPolicy(BatchPolicy):
    def __init__(self, spec: ModelSpec, *, served: OpenAISpec | None = None, backoff_s: float = 0.5) -> None:
        """`served` replaces `spec.openai` (evaluate's round arm asks the merged model's server)."""
        server = served or spec.openai
        if server is None:
            raise PolicyError("model.backend openai needs model.openai (url and served model name)")
        self.server, self.backoff_s = server, backoff_s
        self.url = server.url.rstrip("/") + "/chat/completions"
        key = os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=server.concurrency, max_keepalive_connections=server.concurrency)
        self.client = httpx.Client(headers=headers, timeout=server.timeout_seconds, limits=limits)
        self.pool = ThreadPoolExecutor(max_workers=server.concurrency, thread_name_prefix="openai")

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        return list(self.pool.map(self._complete, requests))

    def submit(self, request: Request) -> Future[list[Sample]]:
        """One request sent now, answered on its own: the search scheduler hands each tree's requests over as
        soon as the tree needs them, so the server's continuous batching always holds every pending one."""
        return self.pool.submit(self._complete, request)

    def _complete(self, request: Request) -> list[Sample]:
        greedy = request.temperature <= 0
        messages: list[dict[str, Any]] = list(request.prompt.messages)
        body: dict[str, Any] = {
            "model": self.server.model, "messages": messages, "n": 1 if greedy else request.n,
            "temperature": max(request.temperature, 0.0), "seed": request.seed,
            "max_tokens": request.max_new_tokens, "logprobs": True,
        }
        if request.prompt.answer_prefix:
            # vLLM and SGLang continue a final assistant message instead of starting a new one.
            messages.append({"role": "assistant", "content": request.prompt.answer_prefix})
            body.update(continue_final_message=True, add_generation_prompt=False)
        answer = self._post(body)
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        samples = [_sample(c) for c in choices]
        if not samples:
            raise ServerUnavailable(f"model.openai.url {self.url}: the answer held no choices")
        usage = answer.get("usage") or {}
        _share_completion_tokens(samples, int(usage.get("completion_tokens") or 0))
        return request_samples(request, samples, int(usage.get("prompt_tokens") or 0))

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        problem, retry_after = "", None
        for attempt in range(self.server.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as err:
                problem, retry_after = f"unreachable ({type(err).__name__}: {err})", None
                continue
            if response.status_code in RETRY_STATUS:
                problem = f"answered {response.status_code}: {response.text[:200]}"
                retry_after = response.headers.get("retry-after")
                continue
            if response.status_code != 200:
                raise ServerUnavailable(f"model.openai.url {self.url} (model {self.server.model!r}) answered "
                                        f"{response.status_code}: {response.text[:300]}")
            return response.json()
        raise ServerUnavailable(f"model.openai.url {self.url}: {problem} after {self.server.max_retries + 1} "
                                "attempts; is the inference server running and reachable from here?")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff from `backoff_s`, or the server's Retry-After seconds; capped either way."""
        try:
            return min(float(retry_after), MAX_BACKOFF_S) if retry_after else self._backoff(attempt)
        except ValueError:  # an HTTP date: back off as usual
            return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)


def _sample(choice: dict[str, Any]) -> Sample:
    """A choice's text, the sum of its tokens' log-probs (when the server sent them) and its length."""
    content = (choice.get("logprobs") or {}).get("content") or []
    text = (choice.get("message") or {}).get("content") or ""
    logprob = sum(t["logprob"] for t in content) if content else None
    return Sample(text=text, logprob=logprob, tokens=len(content))


def _share_completion_tokens(samples: list[Sample], reported: int) -> None:
    """The answer's completion tokens over its choices when the choices' log-probs did not count them (a
    server that sends no log-probs): evenly, the remainder on the first, so that they add up to `usage`."""
    if reported and not any(s.tokens for s in samples):
        share, extra = divmod(reported, len(samples))
        for i, sample in enumerate(samples):
            sample.tokens = share + (extra if i == 0 else 0)
