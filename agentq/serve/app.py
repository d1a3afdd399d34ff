"""The dashboard's HTTP app: REST over the rounds and their artifacts, a WebSocket event stream per round,
/metrics, and the static page, all in one process.

Read-only: every route is a GET (or the WebSocket), so the service can run with a read-only store
credential. With a token configured every /api route, the stream and /metrics want `Authorization: Bearer
<token>` (the WebSocket may pass `?token=`, since a browser cannot set headers on one); /healthz and the
static page stay open so probes and the login prompt work.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from pathlib import Path
from typing import Any, Protocol

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentq.serve.events import EventHub
from agentq.serve.metrics import ServiceMetrics
from agentq.serve.reader import NotFound, StoreReader
from agentq.serve.summary import normalise
from agentq.serve.trees import annotate, tree_row
from agentq.store import StoreError

STATIC = Path(__file__).parent / "static"
ROUND_IN_PATH = re.compile(r"^/api/rounds/([^/]+)")
log = structlog.get_logger("agentq.serve")


class RoundSource(Protocol):
    """Where rounds' live state comes from: the store (StoreReader) or the cluster (controller.dashboard)."""

    def rounds(self) -> list[dict[str, Any]]: ...

    def round(self, name: str) -> dict[str, Any]: ...

    def campaigns(self) -> list[dict[str, Any]]: ...

    def campaign(self, name: str) -> dict[str, Any]: ...


def create_app(reader: StoreReader, source: RoundSource | None = None, *, token: str | None = None,
               poll_interval: float = 1.0) -> FastAPI:
    source = source or reader
    app = FastAPI(title="AgentQ dashboard", docs_url="/api/docs", openapi_url="/api/openapi.json")
    metrics = ServiceMetrics(source.rounds, reader)
    hub = EventHub(source.round, interval=poll_interval)

    def authorised(header: str | None, query_token: str | None = None) -> bool:
        if not token:
            return True
        given = query_token or (header or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())

    def require_token(request: Request) -> None:
        if not authorised(request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        match = ROUND_IN_PATH.match(request.url.path)
        structlog.contextvars.clear_contextvars()
        if match:
            structlog.contextvars.bind_contextvars(round=match[1])
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        seconds = time.perf_counter() - start
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        log.info("request", method=request.method, path=request.url.path, status=response.status_code,
                 ms=round(seconds * 1000, 1))
        return response

    @app.exception_handler(NotFound)
    async def not_found(_: Request, err: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(StoreError)
    async def store_failed(_: Request, err: StoreError) -> JSONResponse:
        log.warning("store error", error=str(err))
        return JSONResponse({"detail": str(err).splitlines()[0]}, status_code=502)

    api = [Depends(require_token)]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=api)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/rounds", dependencies=api)
    def list_rounds() -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "spec"} for r in source.rounds()]

    @app.get("/api/rounds/{name}", dependencies=api)
    def one_round(name: str) -> dict[str, Any]:
        return source.round(name)

    @app.get("/api/rounds/{name}/steps", dependencies=api)
    def steps(name: str) -> list[dict[str, Any]]:
        return source.round(name)["steps"]

    @app.get("/api/rounds/{name}/eval/summary", dependencies=api)
    def summary(name: str) -> dict[str, Any]:
        found = reader.summary(name)
        if found is None:
            raise NotFound(f"round {name!r} has no evaluation summary yet (eval/summary.json)")
        return {**normalise(found), "raw": found}

    @app.get("/api/rounds/{name}/eval/results", dependencies=api)
    def results(name: str, arm: str | None = None, mode: str | None = None) -> dict[str, Any]:
        found = reader.eval_results(name)
        if arm is not None:
            found = {arm: found.get(arm, {})}
        if mode is not None:
            found = {a: {mode: modes.get(mode, [])} for a, modes in found.items()}
        return found

    @app.get("/api/rounds/{name}/trajectories", dependencies=api)
    def trajectories(name: str) -> list[dict[str, Any]]:
        return [tree_row(t) for t in reader.trees(name)]

    @app.get("/api/rounds/{name}/trajectories/{task_id:path}", dependencies=api)
    def trajectory(name: str, task_id: str) -> dict[str, Any]:
        return annotate(reader.tree(name, task_id), reader.pairs(name))

    @app.get("/api/rounds/{name}/preferences", dependencies=api)
    def preferences(name: str, task_id: str | None = None, offset: int = Query(0, ge=0),
                    limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        pairs = [{"index": i, **p} for i, p in enumerate(reader.pairs(name))]
        if task_id is not None:
            pairs = [p for p in pairs if p.get("task_id") == task_id]
        return {"total": len(pairs), "offset": offset, "pairs": pairs[offset: offset + limit],
                "stats": reader.pair_stats(name)}

    @app.get("/api/campaigns", dependencies=api)
    def campaigns() -> list[dict[str, Any]]:
        return source.campaigns()

    @app.get("/api/campaigns/{name}", dependencies=api)
    def campaign(name: str) -> dict[str, Any]:
        return source.campaign(name)

    @app.websocket("/api/rounds/{name}/events")
    async def events(ws: WebSocket, name: str, after_seq: int = 0, token_q: str | None = Query(None, alias="token")
                     ) -> None:
        if not authorised(ws.headers.get("authorization"), token_q):
            await ws.close(code=4401, reason="missing or wrong bearer token")
            return
        await ws.accept()
        stream_log = log.bind(round=name, after_seq=after_seq)
        stream_log.info("stream opened")
        try:
            log_ = await asyncio.to_thread(hub.poll, name)
        except NotFound as err:
            await ws.send_json({"seq": 0, "type": "error", "round": name, "detail": str(err)})
            await ws.close(code=4404)
            return
        cursor = after_seq
        metrics.streams.inc()
        try:
            while True:
                for event in log_.after(cursor):
                    await ws.send_json(event)
                    cursor = event["seq"]
                    if event["type"] == "final":
                        await ws.close(code=1000)
                        return
                if log_.final and cursor >= log_.seq:  # reconnected after the end: nothing more will come
                    await ws.close(code=1000)
                    return
                # Wait for the next poll by listening: a client that went away is noticed now, not never (a
                # stream of a round that does not end would otherwise poll for a closed socket forever).
                try:
                    message = await asyncio.wait_for(ws.receive(), timeout=poll_interval)
                    if message["type"] == "websocket.disconnect":
                        return
                except TimeoutError:
                    pass
                try:
                    await asyncio.to_thread(hub.poll, name)
                except StoreError as err:  # a store hiccup: keep the stream, try again next time
                    stream_log.warning("store error", error=str(err).splitlines()[0])
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            metrics.streams.dec()
            stream_log.info("stream closed", seq=cursor)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
