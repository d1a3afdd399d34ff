"""`agentq model serve-scripted`: the scripted policy behind an OpenAI-compatible chat-completions API.

The mock-model image runs it in place of vLLM (kind CI, laptops): the operator starts it exactly as it starts a
vLLM server (the same arguments; the ones that only matter to vLLM are accepted and ignored), so the served-
inference path runs end to end with no GPU and no weights. It answers as the in-process scripted backend does
for the same messages and seed: the task is recognised from what its prompt must quote (`ScriptedChat.task_for`:
a function task's buggy program, a repo task's failure report; the task files are given), the kind of prompt
from its sections, and ScriptedPolicy draws the answers (repo tasks: the reference diff, a wrong edit or
garbage, as SEARCH/REPLACE edits). `usage` reports the prompt and completion tokens of the in-process backend's
estimate.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions ({model, messages, n, temperature, seed,
max_tokens}; a trailing assistant message is the start of the answer, as vLLM's continue_final_message).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentq.config import ConfigError, ScriptedSpec, load_round
from agentq.policy.base import Prompt, Purpose, spent
from agentq.policy.prompts import _fenced
from agentq.policy.scripted import ScriptedPolicy
from agentq.repair.patch import diff_hunks
from agentq.repair.reflection import failure_report
from agentq.sandbox.server import JsonHandler
from agentq.tasks.schema import AnyTask, RepoTask, TaskFileError, read_tasks

MAX_BODY = 8 << 20
CANDIDATE = re.compile(r"^### Candidate \d+\n```python\n(.*?)\n```", re.MULTILINE | re.DOTALL)
# A repo critique's sibling (agentq/repair/reflection.py critique_messages): its diff, or the answer that held none.
REPO_CANDIDATE = re.compile(r"^### Candidate \d+\n(?:```diff\n(?P<diff>.*?)\n```|No runnable patch; the answer was:\n"
                            r"(?P<answer>.*?))\nResult: ", re.MULTILINE | re.DOTALL)


def _logprobs(tokens: int) -> dict[str, Any]:
    """A stand-in log-prob per generated token (the mock has no distribution), in the chat API's shape."""
    return {"content": [{"token": "x", "logprob": -0.5}] * tokens}


class BadRequest(ValueError):
    pass


def _quoted(task: AnyTask) -> str:
    """What every prompt about `task` quotes: a repo task's failure report, a function task's buggy program."""
    return failure_report(task.problem_text()) if isinstance(task, RepoTask) else _fenced(task.buggy_code)


class ScriptedChat:
    """Turns chat requests into scripted-policy prompts and its samples into chat-completion answers."""

    def __init__(self, tasks: list[AnyTask], spec: ScriptedSpec, names: list[str]) -> None:
        self.policy = ScriptedPolicy(spec)
        self.names = names
        # Longest quoted text first: a prompt that holds one task's text and a shorter one inside it is about the
        # longer one.
        self.tasks = sorted(tasks, key=lambda t: -len(_quoted(t)))

    def task_for(self, user: str) -> AnyTask:
        """The task a prompt's user text is about: the one whose buggy program (function tasks) or failure report
        (repo tasks) it quotes. Repo tasks can share a report (bugs that break the same tests): of those, the one
        whose buggy lines the prompt's files show, else the first as the task files list them."""
        matches = [t for t in self.tasks if _quoted(t) in user]
        if not matches:
            raise BadRequest("no known task's buggy code or failure report is quoted in the prompt (the server "
                             "answers only for the tasks it was started with: --tasks)")
        same = [t for t in matches if _quoted(t) == _quoted(matches[0])]
        shown = [t for t in same if isinstance(t, RepoTask)
                 and all(buggy in user for _, _, buggy in diff_hunks(t.bug_patch))]
        return (shown or same)[0]

    def prompt(self, messages: list[dict[str, str]]) -> Prompt:
        prefix = ""
        if messages and messages[-1].get("role") == "assistant":
            prefix, messages = messages[-1].get("content", ""), messages[:-1]
        user = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
        task = self.task_for(user)
        purpose: Purpose = "rewrite"
        candidates: list[str] = []
        if isinstance(task, RepoTask) and "## Candidate patches" in user:
            purpose = "critique"
            candidates = [m["diff"] + "\n" if m["diff"] is not None else m["answer"]
                          for m in REPO_CANDIDATE.finditer(user)]
        elif isinstance(task, RepoTask):
            purpose = "repair"
        elif "## Candidate fixes" in user:
            purpose, candidates = "critique", [c + "\n" for c in CANDIDATE.findall(user)]
        elif "THOUGHT:" in user:
            purpose = "zero_shot"
        return Prompt(messages=messages, task=task, purpose=purpose, candidates=candidates, answer_prefix=prefix)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if model not in self.names:
            raise BadRequest(f"model {model!r} is not served here; served: {', '.join(self.names)}")
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("messages: expected a list of {role, content} objects")
        n, seed = int(body.get("n") or 1), int(body.get("seed") or 0)
        samples = self.policy.generate([self.prompt(messages)], n=n, temperature=float(body.get("temperature", 1.0)),
                                       max_new_tokens=int(body.get("max_tokens") or 0), seed=seed)[0]
        choices = [{"index": i, "message": {"role": "assistant", "content": s.text}, "finish_reason": "stop",
                    "logprobs": _logprobs(s.tokens) if body.get("logprobs") else None}
                   for i, s in enumerate(samples)]
        prompt_tokens, tokens = spent([samples])
        return {"id": f"chatcmpl-scripted-{seed}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}}


class _Handler(JsonHandler):
    server: ScriptedServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/health":
            self._answer(HTTPStatus.OK, {})
        elif self.path == "/v1/models":
            self._answer(HTTPStatus.OK, {"object": "list", "data": [
                {"id": name, "object": "model", "owned_by": "agentq-scripted"} for name in self.server.chat.names]})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": {"message": f"no such path {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/chat/completions":
            self._answer(HTTPStatus.NOT_FOUND, {"error": {"message": f"no such path {self.path}"}})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise BadRequest(f"body must be 1..{MAX_BODY} bytes of JSON with a Content-Length")
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError as err:
                raise BadRequest(f"body is not JSON: {err}") from None
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            self._answer(HTTPStatus.OK, self.server.chat.complete(body))
        except (BadRequest, TypeError, ValueError) as err:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": {"message": str(err), "type": "BadRequestError"}})


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat: ScriptedChat) -> None:
        super().__init__(address, _Handler)
        self.chat = chat


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", action="append", required=True, help="task JSONL the prompts come from, function or "
                                                                      "repo tasks (repeatable)")
    p.add_argument("--round", default=None, help="round file whose model.scripted mixture to use (default: the "
                                                  "scripted defaults)")
    p.add_argument("--host", default="0.0.0.0")
    # vLLM's own names, so the operator starts this server with the arguments it gives vLLM.
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="start")
    p.add_argument("--lora-modules", nargs="*", default=[], help="NAME=PATH: served as NAME too")
    for flag in ("--model", "--tensor-parallel-size", "--data-parallel-size", "--max-lora-rank"):
        p.add_argument(flag, help=argparse.SUPPRESS)  # what vLLM needs to load weights: nothing to load here
    for flag in ("--enable-prefix-caching", "--enable-lora"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    try:
        tasks = [t for path in args.tasks for t in read_tasks(path, kinds=("function", "repo"))]
        spec = load_round(args.round).spec.model.scripted if args.round else ScriptedSpec()
    except (TaskFileError, OSError, ConfigError) as err:
        print(f"agentq model serve-scripted: {err}", file=sys.stderr)
        return 2
    names = [args.served_model_name, *(m.partition("=")[0] for m in args.lora_modules)]
    server = ScriptedServer((args.host, args.port), ScriptedChat(tasks, spec, names))
    print(f"agentq scripted model serving {', '.join(names)} on http://{args.host}:{server.server_address[1]}/v1 "
          f"({len(tasks)} tasks from {', '.join(map(str, map(Path, args.tasks)))})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
