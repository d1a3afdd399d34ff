"""A real OpenAI-compatible HTTP server that answers like the scripted policy, for the openai backend's tests.

It sees only what a real server sees (chat messages, n, temperature, seed), finds the task by the
problem text every prompt opens with, rebuilds the Prompt and lets ScriptedPolicy answer: the same
request gives the same answers as the in-process scripted backend. `--fail-first N` answers the first N
requests 503 (retry tests), `--delay-s` holds each request (concurrency tests), and GET /stats says how
many requests came and how many were in flight at most.

    python tests/openai_server.py --tasks tasks.jsonl --port 8011 --model mock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from testenv import free_port

from agentq.config import ScriptedSpec
from agentq.policy.base import Prompt, Request
from agentq.policy.prompts import _problem
from agentq.policy.scripted import ScriptedPolicy
from agentq.tasks.schema import Task, read_tasks

CANDIDATE = re.compile(r"^### Candidate \d+\n```python\n(.*?)\n```", re.MULTILINE | re.DOTALL)


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, str]]
    n: int = 1
    temperature: float = 1.0
    seed: int = 0
    max_tokens: int = 256
    logprobs: bool = False


def rebuild_prompt(messages: list[dict[str, str]], tasks: list[Task]) -> Prompt:
    """The Prompt the client built, from its messages alone (the task by its opening problem text)."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    task = next((t for t in tasks if user.startswith(_problem(t))), None)
    if task is None:
        raise HTTPException(400, "no known task's problem opens this prompt")
    if "## Candidate fixes" in user:
        return Prompt(messages=messages, task=task, purpose="critique",
                      candidates=[c + "\n" for c in CANDIDATE.findall(user)])
    return Prompt(messages=messages, task=task, purpose="zero_shot" if "THOUGHT:" in user else "rewrite")


def make_app(tasks: list[Task], models: list[str], fail_first: int = 0, delay_s: float = 0.0) -> FastAPI:
    app = FastAPI()
    policy = ScriptedPolicy(ScriptedSpec())
    lock = threading.Lock()
    state: dict = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "sequences": 0, "by_model": {}}

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/stats")
    def stats() -> dict:
        return state

    @app.post("/v1/chat/completions")
    async def complete(body: ChatRequest):
        with lock:
            state["requests"] += 1
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            number = state["requests"]
        try:
            if number <= fail_first:
                return JSONResponse({"error": "warming up"}, status_code=503)
            if body.model not in models:
                return JSONResponse({"error": f"model {body.model!r} is not served here"}, status_code=404)
            await asyncio.sleep(delay_s)
            prompt = rebuild_prompt(body.messages, tasks)
            samples = policy.generate_batch([Request(prompt, body.n, body.temperature, body.max_tokens,
                                                     body.seed)])[0]
            with lock:
                state["sequences"] += len(samples)
                state["by_model"][body.model] = state["by_model"].get(body.model, 0) + 1
            choices = [{"index": i, "message": {"role": "assistant", "content": s.text}, "finish_reason": "stop",
                        "logprobs": {"content": [{"token": "x", "logprob": -0.5}] * s.tokens}
                        if body.logprobs else None}
                       for i, s in enumerate(samples)]
            return {"id": f"cmpl-{number}", "object": "chat.completion", "model": body.model, "choices": choices}
        finally:
            with lock:
                state["in_flight"] -= 1

    return app


@contextlib.contextmanager
def running_server(tasks: list[Path], *args: str, models: tuple[str, ...] = ("mock",)) -> Iterator[str]:
    """This file's server in its own process; yields its base URL (…/v1) once it answers."""
    port = free_port()
    command = [sys.executable, __file__, "--port", str(port), *(a for t in tasks for a in ("--tasks", str(t))),
               *(a for m in models for a in ("--model", m)), *args]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the mock OpenAI server did not start (exit code {process.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", required=True, action="append", help="task JSONL (repeatable)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", default=[], help="served model name (repeatable)")
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args()
    tasks = [t for path in args.tasks for t in read_tasks(path)]
    app = make_app(tasks, args.model or ["mock"], args.fail_first, args.delay_s)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
