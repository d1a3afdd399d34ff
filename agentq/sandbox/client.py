"""RemoteExecutor: the LocalExecutor interface over HTTP to `agentq sandbox serve` (sandbox pods).

Connection errors and 5xx answers are retried with exponential backoff (a pod restarting, a rollout);
4xx answers are the caller's mistake and raise at once. Verdicts are the server's LocalExecutor verdicts,
decoded into the same Verdict model, so callers cannot tell the two apart.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from agentq.sandbox.limits import Job, Limits, item_limits
from agentq.sandbox.verdict import Verdict


class SandboxUnavailable(RuntimeError):
    """The remote sandbox could not be reached (or kept failing) after every retry."""


TOKEN_ENV = "AGENTQ_SANDBOX_TOKEN"
MAX_BODY = 8 << 20  # the largest request body a sandbox server reads (it answers 413 beyond)
MAX_ITEMS = 256  # the most items one /run_many request may carry


class RemoteExecutor:
    """`token` (default: $AGENTQ_SANDBOX_TOKEN) is sent as a bearer token; the server checks it."""

    def __init__(
        self, url: str, retries: int = 5, backoff_s: float = 0.5, limits: Limits | None = None, token: str | None = None
    ):
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._health: dict[str, Any] | None = None
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        self.limits = limits or Limits()

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> Any:
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.load(response)
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:500]
                if err.code == 401:
                    raise SandboxUnavailable(f"sandbox at {self.url} refused the token: set {TOKEN_ENV} to the "
                                             "server's token") from None
                if err.code < 500:
                    raise ValueError(f"sandbox at {self.url} rejected the request: HTTP {err.code}: {detail}") from None
                last = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, OSError, ValueError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        raise SandboxUnavailable(f"sandbox at {self.url} unreachable after {self.retries} tries: {last}")

    def health(self) -> dict[str, Any]:
        """The server's /healthz, read once; {} while it cannot be read (the next call tries again)."""
        if self._health is None:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=10) as response:
                    self._health = dict(json.load(response))
            except (urllib.error.URLError, OSError, ValueError, TypeError):
                return {}
        return self._health

    @property
    def isolation(self) -> list[str]:
        """What the server's sandbox could not enforce (its /healthz), as LocalExecutor.isolation."""
        return [str(n) for n in self.health().get("isolation", [])]

    def run(self, code: str, tests: str, limits: Limits | None = None) -> Verdict:
        limits = limits or self.limits
        body = {"code": code, "tests": tests, "limits": limits.model_dump()}
        return Verdict.model_validate(self._post("/run", body, limits.timeout_s + 60))

    def run_many(self, items: Iterable[Job], limits: Limits | None = None) -> list[Verdict]:
        limits = limits or self.limits
        batch: list[dict[str, Any]] = []
        for item in items:
            own = item_limits(item, None)
            batch.append({"code": item[0], "tests": item[1], **({"limits": own.model_dump()} if own else {})})
        verdicts: list[Verdict] = []
        for part in _parts(batch, MAX_BODY - (64 << 10)):  # each request within what the server reads
            body = {"items": part, "limits": limits.model_dump()}
            answer = self._post("/run_many", body, limits.timeout_s * len(part) + 60)
            verdicts += [Verdict.model_validate(v) for v in answer["verdicts"]]
        return verdicts

    def run_task(self, task: dict[str, Any], patches: list[str], timeout_s: float = 600.0) -> list[Verdict]:
        """Repository runs on the server (`--repo-data-dir`): each patch against the task's buggy tree. A server
        that says it serves none is one clear error, not an HTTP 400 per run."""
        from agentq.sandbox.repo import RepoVerdict

        if self.health().get("repos") is False:
            raise SandboxUnavailable(f"sandbox at {self.url} does not serve repository runs: start it with "
                                     "--repo-data-dir (Helm: sandbox.repoData)")
        answer = self._post("/run_repo", {"task": task, "patches": patches}, timeout_s * len(patches) + 60)
        return [RepoVerdict.model_validate(v) for v in answer["verdicts"]]

    def close(self) -> None:
        """Nothing to release; here so both executors can be used the same way."""


    def __enter__(self) -> RemoteExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parts(items: list[dict[str, Any]], budget: int) -> list[list[dict[str, Any]]]:
    """Consecutive groups of at most MAX_ITEMS items whose JSON fits `budget` bytes (an item over it goes alone:
    the server's 413 then says so)."""
    parts: list[list[dict[str, Any]]] = []
    size = 0
    for item in items:
        length = len(json.dumps(item)) + 1
        if not parts or size + length > budget or len(parts[-1]) >= MAX_ITEMS:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += length
    return parts
