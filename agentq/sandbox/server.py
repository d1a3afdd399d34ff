"""`agentq sandbox serve`: a LocalExecutor behind HTTP, what sandbox pods run (stdlib only, no torch).

POST /run       {"code", "tests", "limits"?}            -> Verdict JSON
POST /run_many  {"items": [{"code", "tests"}], "limits"?} -> {"verdicts": [...]}
GET  /healthz                                            -> {"ok": true, "workers": n}
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from agentq.sandbox.executor import LocalExecutor
from agentq.sandbox.limits import Limits

MAX_BODY = 64 << 20


class BadRequest(ValueError):
    pass


def _source(item: Any, where: str) -> tuple[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("code"), str) or not isinstance(item.get("tests"), str):
        raise BadRequest(f"{where}: expected an object with string fields 'code' and 'tests'")
    return item["code"], item["tests"]


def _limits(body: dict[str, Any], default: Limits) -> Limits:
    if body.get("limits") is None:
        return default
    try:
        return Limits.model_validate(body["limits"])
    except ValidationError as err:
        raise BadRequest(f"limits: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}") from None


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], executor: LocalExecutor):
        super().__init__(address, _Handler)
        self.executor = executor


class _Handler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Requests are frequent and carry no news; errors are answered, not logged."""

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self._answer(HTTPStatus.OK, {"ok": True, "workers": self.server.executor.workers})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise BadRequest(f"body must be 1..{MAX_BODY} bytes of JSON")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise BadRequest("body must be a JSON object")
            executor = self.server.executor
            limits = _limits(body, executor.limits)
            if self.path == "/run":
                code, tests = _source(body, "body")
                self._answer(HTTPStatus.OK, executor.run(code, tests, limits).model_dump(mode="json"))
            elif self.path == "/run_many":
                items = body.get("items")
                if not isinstance(items, list):
                    raise BadRequest("body.items: expected a list")
                pairs = [_source(item, f"items[{i}]") for i, item in enumerate(items)]
                verdicts = executor.run_many(pairs, limits)
                self._answer(HTTPStatus.OK, {"verdicts": [v.model_dump(mode="json") for v in verdicts]})
            else:
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path}"})
        except (BadRequest, ValueError) as err:
            self._answer(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 - the client retries 5xx
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop)  # a pod being deleted: stop the workers cleanly
    with LocalExecutor(workers=args.workers) as executor:
        server = SandboxServer((args.host, args.port), executor)
        host, port = server.server_address[:2]
        print(f"agentq sandbox serving on http://{host}:{port} with {executor.workers} workers", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("agentq sandbox: stopping", file=sys.stderr)
        finally:
            server.server_close()
    return 0
