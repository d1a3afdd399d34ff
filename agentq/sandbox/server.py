"""`agentq sandbox serve`: a LocalExecutor behind HTTP, what sandbox pods run (stdlib only, no torch).

POST /run       {"code", "tests", "limits"?}            -> Verdict JSON
POST /run_many  {"items": [{"code", "tests", "limits"?}], "limits"?} -> {"verdicts": [...]} (an item's limits win)
POST /run_repo  {"task": <repo task>, "patches": [...]}   -> {"verdicts": [...]}  (with --repo-data-dir)
GET  /healthz                        -> {"ok": true, "workers": n, "isolation": [...], "repos": <serves /run_repo>}

Whoever reaches the port can make it run code, so: POSTs need `Authorization: Bearer <token>` (the token comes
from AGENTQ_SANDBOX_TOKEN, which the chart fills from a Secret; without one the server only binds loopback),
bodies are JSON only and size-capped, caller limits are clamped to the server's maxima, at most a fixed number
of requests run at once (the rest get 503, which the client retries) and a fixed number of connections are
open at once.

A request is read whole, within one deadline, before it takes a run slot: a client trickling its headers or
body a byte at a time holds a connection until the deadline, never a slot. Answers the client must not retry
are 4xx: 413 for a body over the cap (answered at once, then the rest of the body is read and dropped, so the
client gets the answer instead of a broken pipe), 411/400 for a missing or bad length, 400 for tests that do
not compile (whatever exhausts the compiler included). Candidate code is never refused here: code that is not
valid text or too large is a verdict, as it is from a LocalExecutor.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from agentq.sandbox.client import MAX_BODY, MAX_ITEMS, TOKEN_ENV
from agentq.sandbox.executor import LocalExecutor, find_tests
from agentq.sandbox.limits import Limits

MAX_DRAIN = 64 << 20  # a body over MAX_BODY is read and dropped up to this size, so its sender sees the 413
READ_TIMEOUT_S = 15.0
REQUEST_DEADLINE_S = 30.0
MAX_CONNECTIONS = 64
CLAMPED = ("timeout_s", "cpu_s", "memory_mb", "file_mb", "max_procs", "output_bytes")


class BadRequest(ValueError):
    pass


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(f"{where}: not encodable as UTF-8 ({err.reason} at position {err.start})") from None
    return value


def _source(item: Any, where: str) -> tuple[str, str]:
    """(code, tests) of one item: tests that are text and compile (the caller's to fix: 400); code that is a
    string (anything else about it is the candidate's verdict)."""
    if not isinstance(item, dict):
        raise BadRequest(f"{where}: expected an object with string fields 'code' and 'tests'")
    code = item.get("code")
    if not isinstance(code, str):
        raise BadRequest(f"{where}.code: expected a string")
    tests = _text(item.get("tests"), f"{where}.tests")
    compiled = find_tests(tests)
    if isinstance(compiled, str):
        raise BadRequest(f"{where}.tests: {compiled}")
    return code, tests


def clamp(requested: Limits, maximum: Limits) -> Limits:
    """The caller's limits, none above the server's."""
    values = requested.model_dump()
    for name in CLAMPED:
        values[name] = min(values[name], getattr(maximum, name))
    return Limits.model_validate(values)


def _limits(body: dict[str, Any], maximum: Limits) -> Limits:
    if body.get("limits") is None:
        return clamp(Limits(), maximum)
    try:
        return clamp(Limits.model_validate(body["limits"]), maximum)
    except ValidationError as err:
        raise BadRequest(f"limits: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        executor: LocalExecutor,
        token: str | None = None,
        max_limits: Limits | None = None,
        max_concurrent: int | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
        repos: Any = None,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        max_connections: int = MAX_CONNECTIONS,
    ):
        super().__init__(address, _Handler)
        self.read_timeout_s = read_timeout_s
        self.request_deadline_s = request_deadline_s
        self.connections = threading.BoundedSemaphore(max_connections)
        self.executor = executor
        self.repos = repos  # a SdistStore (agentq.sandbox.repo) when this server serves repository runs
        self.token = token
        self.max_limits = max_limits or executor.limits
        self.slots = threading.BoundedSemaphore(max_concurrent or 2 * executor.workers)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to `max_connections`; beyond that, 503 and close at once."""
        if not self.connections.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()


class JsonHandler(BaseHTTPRequestHandler):
    """A JSON-over-HTTP/1.1 handler that keeps quiet: the sandbox server and the mock model server share it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Requests are frequent and carry no news; errors are answered, not logged."""

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


class _Handler(JsonHandler):
    server: SandboxServer

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # every read: half-open connections do not pile up
        super().setup()

    def handle_one_request(self) -> None:
        """One request, read whole before its deadline: past it, the connection is shut (a trickling client)."""
        self.reading = True
        timer = threading.Timer(self.server.request_deadline_s, self._deadline_passed)
        timer.daemon = True
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()

    def _deadline_passed(self) -> None:
        if self.reading:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _get(self) -> None:
        if self.path == "/healthz":
            executor = self.server.executor
            self._answer(HTTPStatus.OK, {"ok": True, "workers": executor.workers, "isolation": executor.isolation,
                                         "repos": self.server.repos is not None})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})

    def _authorised(self) -> bool:
        if self.server.token is None:
            return True
        sent = self.headers.get("Authorization", "")
        return hmac.compare_digest(sent.encode(), f"Bearer {self.server.token}".encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.reading = False
        self._get()

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorised():
            wanted = f"missing or wrong token (Authorization: Bearer ${TOKEN_ENV})"
            self._answer(HTTPStatus.UNAUTHORIZED, {"error": wanted})
            return
        if self.headers.get_content_type() != "application/json":
            self._answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "Content-Type must be application/json"})
            return
        if self.path not in ("/run", "/run_many", "/run_repo"):
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
            return
        try:
            raw = self._body()
        except (TimeoutError, OSError):
            self.close_connection = True  # the client stopped sending: drop it, nobody is listening for an answer
            return
        if raw is None:
            return
        self.reading = False
        try:
            work = self._parse(raw)
        except BadRequest as err:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        if not self.server.slots.acquire(blocking=False):
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many requests at once; retry"})
            return
        try:
            self._answer(HTTPStatus.OK, work())
        except BadRequest as err:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 - the client retries 5xx
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})
        finally:
            self.server.slots.release()

    def _body(self) -> bytes | None:
        """The whole body, or None once a 4xx about its length has been answered."""
        header = self.headers.get("Content-Length")
        if header is None:
            self._answer(HTTPStatus.LENGTH_REQUIRED, {"error": f"a Content-Length of 1..{MAX_BODY} bytes is needed"})
            return None
        try:
            length = int(header)
        except ValueError:
            length = -1
        if length > MAX_BODY:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         {"error": f"body of {length} bytes; this server reads at most {MAX_BODY} (send fewer items)"})
            self._drop(min(length, MAX_DRAIN))
            return None
        if length <= 0:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": f"body must be 1..{MAX_BODY} bytes of JSON"})
            return None
        return self.rfile.read(length)

    def _drop(self, length: int) -> None:
        """Read and discard what the client is still sending (within the request's deadline), so it can finish
        sending and read the answer instead of failing on a broken pipe."""
        with contextlib.suppress(OSError, TimeoutError):
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)

    def _parse(self, raw: bytes) -> Callable[[], Any]:
        """Check the whole request before it takes a slot; what runs it, once it has one."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise BadRequest(f"body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        executor = self.server.executor
        limits = _limits(body, self.server.max_limits)
        if self.path == "/run":
            code, tests = _source(body, "body")
            return lambda: executor.run(code, tests, limits).model_dump(mode="json")
        if self.path == "/run_many":
            items = body.get("items")
            if not isinstance(items, list) or len(items) > MAX_ITEMS:
                raise BadRequest(f"body.items: expected a list of at most {MAX_ITEMS}")
            jobs = [(*_source(item, f"items[{i}]"), _limits(item, self.server.max_limits) if
                     isinstance(item, dict) and item.get("limits") is not None else limits)
                    for i, item in enumerate(items)]
            return lambda: {"verdicts": [v.model_dump(mode="json") for v in executor.run_many(jobs)]}
        return lambda: {"verdicts": self._run_repo(body)}


    def _run_repo(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        from agentq.tasks.schema import RepoTask

        if self.server.repos is None:
            raise BadRequest("this server does not serve repository runs (start it with --repo-data-dir)")
        try:
            task = RepoTask.model_validate(body.get("task"))
        except ValidationError as err:
            first = err.errors()[0]
            raise BadRequest(f"body.task: not a repo task ({first['loc']}: {first['msg']})") from None
        patches = body.get("patches")
        if not isinstance(patches, list) or not 0 < len(patches) <= MAX_ITEMS:
            raise BadRequest(f"body.patches: expected a list of 1..{MAX_ITEMS} patches")
        texts = [_text(p, f"patches[{i}]") for i, p in enumerate(patches)]
        try:
            verdicts = self.server.repos.run_task(task.model_dump(exclude_none=True), texts)
        except ValueError as err:
            raise BadRequest(str(err)) from None
        return [v.model_dump(mode="json") for v in verdicts]


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not _loopback(args.host):
        print(f"agentq sandbox: refusing to serve {args.host} without a token: set {TOKEN_ENV} "
              "(clients send the same value), or bind 127.0.0.1", file=sys.stderr)
        return 2
    limits = Limits(timeout_s=args.max_timeout, memory_mb=args.max_memory_mb, max_procs=args.max_procs)
    signal.signal(signal.SIGTERM, _stop)  # a pod being deleted: stop the workers cleanly
    with LocalExecutor(workers=args.workers, limits=limits, allow_weak_isolation=args.allow_weak_isolation) as executor:
        repos = None
        if getattr(args, "repo_data_dir", None):
            from pathlib import Path

            from agentq.sandbox.repo import RepoExecutor, SdistStore

            cache = Path(args.repo_cache or Path(args.repo_data_dir) / ".trees")
            repos = SdistStore(Path(args.repo_data_dir),
                               RepoExecutor(cache, allow_weak_isolation=args.allow_weak_isolation))
        server = SandboxServer((args.host, args.port), executor, token=token, max_limits=limits, repos=repos)
        host, port = server.server_address[:2]
        auth = "token required" if token else "no token (loopback only)"
        print(f"agentq sandbox serving on http://{host}:{port} with {executor.workers} workers; {auth}", flush=True)
        for note in executor.isolation:
            print(f"agentq sandbox: WEAK ISOLATION: {note}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("agentq sandbox: stopping", file=sys.stderr)
        finally:
            server.server_close()
    return 0
