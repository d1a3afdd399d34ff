"""The dashboard's HTTP app: REST over the rounds and their artifacts, a WebSocket event stream per round,
/metrics, and the static page, all in one process.

Read-only: every route is a GET (or the WebSocket), so the service can run with a read-only store
credential. With a token configured every /api route, the stream and /metrics want `Authorization: Bearer
<token>` (the WebSocket takes it as its first message, since a browser cannot set headers on one); /healthz
and the static page stay open so probes and the login prompt work. Every list is a table route
(agentq/serve/tables.py): paged, searchable, filterable, exportable as CSV or JSON. What the page and its
headers must never let a hostile task id or a hostile site do is in agentq/serve/security.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any, Protocol

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentq.serve.compare import OUTCOMES, compare_rows
from agentq.serve.events import EventHub
from agentq.serve.metrics import ServiceMetrics
from agentq.serve.reader import BadRequest, NotFound, StoreReader
from agentq.serve.security import Guard, HostPolicy, bearer, token_matches
from agentq.serve.summary import normalise
from agentq.serve.tables import Page, table
from agentq.serve.trees import annotate, tree_row
from agentq.store import StoreError

STATIC = Path(__file__).parent / "static"
ROUND_IN_PATH = re.compile(r"^/api/rounds/([^/]+)")
AUTH_WAIT_S = 10.0  # how long an opened stream waits for its token message
log = structlog.get_logger("agentq.serve")

ROUND_COLUMNS = ["name", "phase", "step", "kind", "model", "fromRound", "passRate", "collected", "startTime",
                 "completionTime", "updatedTime", "source"]
TREE_COLUMNS = ["task_id", "group", "kind", "solved", "nodes", "samples", "executions", "best_reward", "seconds"]
RESULT_COLUMNS = ["task_id", "group", "kind", "mode", "solved", "visible_solved", "status", "reward",
                  "parse_failure", "n", "correct", "seconds", "tokens_in", "tokens_out", "message"]
PAIR_COLUMNS = ["index", "task_id", "group", "decided_by", "delta_reward", "chosen_reward", "rejected_reward",
                "chosen_passed", "chosen", "rejected"]
COMPARE_COLUMNS = ["task_id", "group", "kind", "outcome", "a_solved", "b_solved", "a_status", "b_status"]
CURVE_COLUMNS = ["round", "name", "mode", "passRate", "delta", "deltaCi95", "gain"]
CAMPAIGN_COLUMNS = ["name", "rounds", "plannedRounds", "stopped", "mode", "bestPassRate", "phase", "currentRound"]


class RoundSource(Protocol):
    """Where rounds' live state comes from: the store (StoreReader) or the cluster (controller.dashboard)."""

    def rounds(self) -> list[dict[str, Any]]: ...

    def round(self, name: str) -> dict[str, Any]: ...

    def campaigns(self) -> list[dict[str, Any]]: ...

    def campaign(self, name: str) -> dict[str, Any]: ...


def _content(turns: Any) -> Any:
    """A pair side as the text the model wrote (the last turn)."""
    if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
        return turns[-1].get("content")
    return turns


def pair_row(index: int, pair: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, **{k: v for k, v in pair.items() if k not in ("prompt", "chosen", "rejected")},
            "chosen": _content(pair.get("chosen")), "rejected": _content(pair.get("rejected"))}


def create_app(reader: StoreReader, source: RoundSource | None = None, *, token: str | None = None,
               poll_interval: float = 0.25, allowed_hosts: list[str] | tuple[str, ...] = ()) -> FastAPI:
    source = source or reader
    app = FastAPI(title="AgentQ dashboard", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    metrics = ServiceMetrics(source.rounds, reader)

    def tree_rows(name: str) -> list[dict[str, Any]]:
        return [tree_row(t) for t in reader.trees(name)] if reader.exists(name) else []

    hub = EventHub(source.round, tree_rows, interval=poll_interval)
    app.state.hub = hub
    app.add_middleware(Guard, policy=HostPolicy(allowed_hosts, check_host=not token or bool(allowed_hosts)))

    def require_token(request: Request) -> None:
        if token and not token_matches(bearer(request.headers.get("authorization")), token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        match = ROUND_IN_PATH.match(request.url.path)
        structlog.contextvars.clear_contextvars()
        if match:
            structlog.contextvars.bind_contextvars(round=match[1])
        start = time.perf_counter()
        response = await call_next(request)
        if request.url.path.startswith(("/api/", "/metrics")):
            response.headers.setdefault("cache-control", "no-store")
        route = getattr(request.scope.get("route"), "path", "unmatched")
        seconds = time.perf_counter() - start
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        # the path only: a query string is the client's to write, and need not reach a log
        log.info("request", method=request.method, path=request.url.path, status=response.status_code,
                 ms=round(seconds * 1000, 1))
        return response

    @app.exception_handler(NotFound)
    async def not_found(_: Request, err: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(StoreError)
    async def store_failed(_: Request, err: StoreError) -> JSONResponse:
        log.warning("store error", error=str(err).splitlines()[0])  # the operator's log may say where
        return JSONResponse({"detail": "the round store could not be read; the service's log says why"},
                            status_code=502)

    api = [Depends(require_token)]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", dependencies=api)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/rounds", dependencies=api)
    def list_rounds(page: Page, phase: str | None = None, kind: str | None = None) -> Any:
        rows = [{k: v for k, v in r.items() if k not in ("spec", "progress")} for r in source.rounds()]
        return table(rows, page, ROUND_COLUMNS, "rounds", search=("name", "model", "fromRound"),
                     keep=lambda r: phase in (None, r.get("phase")) and kind in (None, r.get("kind")),
                     extra={"phases": sorted({str(r.get("phase")) for r in rows}),
                            "kinds": sorted({str(r["kind"]) for r in rows if r.get("kind")})})

    @app.get("/api/rounds/{name}", dependencies=api)
    def one_round(name: str) -> dict[str, Any]:
        return source.round(name)

    @app.get("/api/rounds/{name}/steps", dependencies=api)
    def steps(name: str) -> list[dict[str, Any]]:
        return source.round(name)["steps"]

    @app.get("/api/rounds/{name}/progress", dependencies=api)
    def progress(name: str) -> dict[str, Any]:
        reader.require(name)
        return reader.progress(name)

    @app.get("/api/rounds/{name}/eval/summary", dependencies=api)
    def summary(name: str) -> dict[str, Any]:
        found = reader.summary(name)
        if found is None:
            raise NotFound(f"round {name!r} has no evaluation summary yet (eval/summary.json)")
        return {**normalise(found), "raw": found}

    @app.get("/api/rounds/{name}/eval/results", dependencies=api)
    def results(name: str, page: Page, arm: str | None = None, mode: str | None = None,
                status: str | None = None, kind: str | None = None) -> Any:
        arm, mode, rows = reader.arm_mode(name, arm, mode)
        arms = {a: sorted(modes) for a, modes in reader.eval_results(name).items()}
        return table(rows, page, RESULT_COLUMNS, f"{name}-{arm}-{mode}", search=("task_id", "group"),
                     keep=lambda r: status in (None, r.get("status"), "solved" if r.get("solved") else "unsolved")
                     and kind in (None, r.get("kind")),
                     extra={"arm": arm, "mode": mode, "arms": arms,
                            "statuses": sorted({str(r.get("status")) for r in rows})})

    @app.get("/api/rounds/{name}/learning-curve", dependencies=api)
    def learning_curve(name: str) -> dict[str, Any]:
        """Pass@1 of every evaluated round on this round's test set (same task kind, same tasks), in the order
        they were evaluated: rounds on other sets are counted, never joined into the line."""
        mine = reader.test_set(name)
        if mine is None:
            raise NotFound(f"round {name!r} has no per-task evaluation results yet (eval/<mode>.jsonl)")
        points, other = [], 0
        for other_name in reader.round_names():
            found = reader.summary(other_name)
            if found is None:
                continue
            if reader.test_set(other_name) != mine:
                other += 1
                continue
            arm = normalise(found)["arms"][-1]
            points.append({"round": other_name, "finished_at": found.get("finished_at"),
                           "modes": {m: {"pass_rate": r["pass_rate"], "ci95": r["ci95"]}
                                     for m, r in arm["modes"].items()}})
        points.sort(key=lambda p: (p["finished_at"] or 0, p["round"]))
        return {"testSet": mine, "points": points, "otherTestSets": other}

    @app.get("/api/rounds/{name}/trajectories", dependencies=api)
    def trajectories(name: str, page: Page, status: str | None = None,
                     kind: str | None = None) -> Any:
        rows = [tree_row(t) for t in reader.trees(name)]
        return table(rows, page, TREE_COLUMNS, f"{name}-trees", search=("task_id", "group"),
                     keep=lambda r: status in (None, "solved" if r["solved"] else "unsolved")
                     and kind in (None, r["kind"]))

    @app.get("/api/rounds/{name}/trajectories/{task_id:path}", dependencies=api)
    def trajectory(name: str, task_id: str) -> dict[str, Any]:
        return annotate(reader.tree(name, task_id), reader.pairs(name))

    @app.get("/api/rounds/{name}/preferences", dependencies=api)
    def preferences(name: str, page: Page, task_id: str | None = None,
                    decided_by: str | None = None) -> Any:
        pairs = [pair_row(i, p) for i, p in enumerate(reader.pairs(name))]
        return table(pairs, page, PAIR_COLUMNS, f"{name}-pairs", search=("task_id", "group"),
                     keep=lambda p: task_id in (None, p.get("task_id")) and decided_by in (None, p.get("decided_by")),
                     extra={"stats": reader.pair_stats(name),
                            "decided_by": sorted({str(p.get("decided_by")) for p in pairs})})

    @app.get("/api/compare", dependencies=api)
    def compare(a: str, b: str, page: Page, mode: str | None = None, arm: str = "round",
                outcome: str | None = Query(None, pattern=f"^({'|'.join(OUTCOMES)})$")) -> Any:
        """Round b against round a, task by task, in one mode: fixed (b solved what a did not), broken, both,
        neither."""
        modes_a = reader.eval_results(a).get(arm) or {}
        modes_b = reader.eval_results(b).get(arm) or {}
        common = sorted(modes_a.keys() & modes_b.keys())
        if not common:
            have = "; ".join(f"{n}: {', '.join(sorted(m)) or 'none'}" for n, m in ((a, modes_a), (b, modes_b)))
            raise BadRequest(f"rounds {a!r} and {b!r} share no evaluated mode in arm {arm!r} ({have})")
        mode = mode or common[0]
        if mode not in common:
            raise BadRequest(f"mode {mode!r} was not evaluated in both rounds: they share {', '.join(common)}")
        set_a, set_b = reader.test_set(a), reader.test_set(b)
        if set_a and set_b and set_a["kind"] != set_b["kind"]:
            raise BadRequest(f"round {a!r} was evaluated on {set_a['kind']} tasks and {b!r} on {set_b['kind']} "
                             "tasks: there is nothing to pair")
        rows, counts = compare_rows(modes_a[mode], modes_b[mode])
        return table(rows, page, COMPARE_COLUMNS, f"{a}-vs-{b}-{mode}", search=("task_id", "group"),
                     keep=lambda r: outcome in (None, r["outcome"]),
                     extra={"a": a, "b": b, "arm": arm, "mode": mode, "modes": common, "counts": counts})

    @app.get("/api/campaigns", dependencies=api)
    def campaigns(page: Page) -> Any:
        return table(source.campaigns(), page, CAMPAIGN_COLUMNS, "campaigns", search=("name",))

    @app.get("/api/campaigns/{name}", dependencies=api)
    def campaign(name: str) -> dict[str, Any]:
        return source.campaign(name)

    @app.get("/api/campaigns/{name}/curve", dependencies=api)
    def campaign_curve(name: str, page: Page) -> Any:
        found = source.campaign(name)
        return table(found.get("learningCurve") or [], page, CURVE_COLUMNS, f"{name}-curve", search=("name",))

    @app.websocket("/api/rounds/{name}/events")
    async def events(ws: WebSocket, name: str, after_seq: int = 0) -> None:
        await ws.accept()
        if token and not token_matches(bearer(ws.headers.get("authorization")), token):
            try:  # a browser's first message: {"type": "auth", "token": ...}
                first = await asyncio.wait_for(ws.receive_json(), timeout=AUTH_WAIT_S)
            except (TimeoutError, ValueError, WebSocketDisconnect):
                first = None
            if not isinstance(first, dict) or first.get("type") != "auth" or \
                    not token_matches(str(first.get("token")), token):
                await ws.close(code=4401, reason="missing or wrong bearer token")
                return
        stream_log = log.bind(round=name, after_seq=after_seq)
        try:
            round_log = await asyncio.to_thread(hub.open, name)
        except NotFound as err:
            await ws.send_json({"seq": 0, "type": "error", "round": name, "detail": str(err)})
            await ws.close(code=4404)
            return
        stream_log.info("stream opened")
        cursor = after_seq
        metrics.streams.inc()
        try:
            while True:
                for event in round_log.after(cursor):
                    await ws.send_json(event)
                    cursor = event["seq"]
                # Wait for the next poll by listening: a client that went away is noticed now, not never (a
                # stream of a round that does not end would otherwise poll for a closed socket forever).
                try:
                    message = await asyncio.wait_for(ws.receive(), timeout=poll_interval)
                    if message["type"] == "websocket.disconnect":
                        return
                except TimeoutError:
                    pass
                try:
                    await asyncio.to_thread(hub.refresh, round_log)
                except StoreError as err:  # a store hiccup: keep the stream, try again next time
                    stream_log.warning("store error", error=str(err).splitlines()[0])
                except NotFound as err:  # the round was deleted while watched
                    await ws.send_json({"seq": cursor, "type": "error", "round": name, "detail": str(err)})
                    await ws.close(code=4404)
                    return
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
