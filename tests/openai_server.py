"""A real OpenAI-compatible HTTP server that answers like the scripted policy, for the openai backend's tests.

It sees only what a real server sees (chat messages, n, temperature, seed) and answers through the
mock-model image's ScriptedChat (agentq model serve-scripted): the same request gives the same answers as
the in-process scripted backend. This wrapper adds what only tests need: `--fail-first N` answers the first N
requests 503 (retry tests), `--delay-s` holds each request (concurrency tests), and GET /stats says how
many requests came and how many were in flight at most.

    python tests/openai_server.py --tasks tasks.jsonl --port 8011 --model mock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
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
from agentq.policy.scripted_server import BadRequest, ScriptedChat
from agentq.tasks.schema import Task, read_tasks


class ChatRequest(BaseModel):
    model: str
    messages: list[dict[str, str]]
    n: int = 1
    temperature: float = 1.0
    seed: int = 0
    max_tokens: int = 256
    logprobs: bool = False


def make_app(tasks: list[Task], models: list[str], fail_first: int = 0, delay_s: float = 0.0) -> FastAPI:
    app = FastAPI()
    chat = ScriptedChat(tasks, ScriptedSpec(), models)
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
            try:
                answer = chat.complete(body.model_dump())
            except BadRequest as e:
                raise HTTPException(400, str(e)) from e
            with lock:
                state["sequences"] += len(answer["choices"])
                state["by_model"][body.model] = state["by_model"].get(body.model, 0) + 1
            return answer
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
    with _serving(command, port) as url:
        yield url


@contextlib.contextmanager
def running_scripted_server(tasks: list[Path], *args: str) -> Iterator[str]:
    """`agentq model serve-scripted` itself (what the mock-model image runs, function or repo tasks) in its own
    process; yields its base URL (…/v1) once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "agentq.cli", "model", "serve-scripted", "--host", "127.0.0.1", "--port",
               str(port), *(a for t in tasks for a in ("--tasks", str(t))), *args]
    with _serving(command, port) as url:
        yield url


@contextlib.contextmanager
def _serving(command: list[str], port: int) -> Iterator[str]:
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
