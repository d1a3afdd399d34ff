"""The dashboard service's API over a store written as the steps write it: REST, the WebSocket event stream
with replay, /metrics, the bearer token, read-only routes, JSON logs and the import boundary."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import dashboard_store
import pytest
import structlog
from dashboard_store import status
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from agentq.cli import main as cli_main
from agentq.serve.app import create_app
from agentq.serve.main import configure_logging
from agentq.serve.reader import StoreReader
from agentq.serve.summary import wilson

WS = "ws://localhost"  # TestClient's sockets say Host: testserver unless the URL names one


@pytest.fixture()
def store(tmp_path):
    return dashboard_store.build(tmp_path / "store")


@pytest.fixture()
def client(store):
    return TestClient(create_app(StoreReader(store, ttl=0.0), poll_interval=0.05), base_url="http://localhost")


def rounds_of(client, **params) -> dict[str, dict]:
    return {r["name"]: r for r in client.get("/api/rounds", params=params).json()["items"]}


def test_rounds_list_phases_and_step_timings(client):
    rounds = rounds_of(client)
    assert sorted(rounds) == ["half", "r1", "r2", "repo"]
    assert rounds["r1"]["phase"] == "Succeeded" and "spec" not in rounds["r1"]
    steps = {s["name"]: s for s in rounds["r1"]["steps"]}
    assert [s["state"] for s in steps.values()] == ["Succeeded"] * 5
    assert steps["train"]["startTime"] == 20.0 and steps["train"]["seconds"] == 5.0
    assert steps["collect"]["seconds"] == 5.0  # a start time of 0 is a time, not a missing one
    assert rounds["r1"]["passRate"] == {"zero_shot": 0.3}
    assert rounds["r1"]["collected"] == 2 and rounds["half"]["collected"] == 0  # search trees so far
    assert rounds["r2"]["fromRound"] == "r1"
    assert (rounds["r1"]["kind"], rounds["repo"]["kind"], rounds["half"]["kind"]) == ("function", "repo", None)


def test_the_rounds_list_is_a_paged_searchable_table(client):
    page = client.get("/api/rounds", params={"limit": 2, "offset": 1}).json()
    assert (page["total"], page["offset"], page["limit"]) == (4, 1, 2)
    assert [r["name"] for r in page["items"]] == ["r1", "r2"]
    assert list(rounds_of(client, q="R2")) == ["r2"]  # case-insensitive, on name and model
    assert list(rounds_of(client, kind="repo")) == ["repo"]
    assert list(rounds_of(client, phase="Preferences")) == ["half"]
    assert page["phases"] == ["Preferences", "Succeeded"] and page["kinds"] == ["function", "repo"]
    assert client.get("/api/rounds", params={"limit": 0}).status_code == 422
    assert client.get("/api/rounds", params={"limit": 1001}).status_code == 422


def test_a_round_with_markers_only_gets_the_phase_of_its_first_unfinished_step(client):
    half = client.get("/api/rounds/half").json()
    assert half["phase"] == "Preferences" and half["step"] == "preferences"
    collect = client.get("/api/rounds/half/steps").json()[0]
    assert collect["state"] == "Succeeded" and collect["shards"] == {"done": 2, "total": 2}
    assert collect["result"] == {"tasks": 3, "samples": 7}  # shard results summed
    assert collect["seconds"] is None  # no status.json: no start time, so no made-up duration


def test_running_step_comes_from_status_json(client, store):
    store.put_json("rounds/half/status.json", status("Preferences", "preferences", ["collect"], running="preferences"))
    steps = {s["name"]: s["state"] for s in client.get("/api/rounds/half/steps").json()}
    assert steps == {"collect": "Succeeded", "preferences": "Running", "train": "Pending", "merge": "Pending",
                     "evaluate": "Pending"}


def test_a_round_that_fetched_its_model_shows_the_model_step_first(client, store):
    dashboard_store.marker(store, "half", "model", {"model": "models/x"}, 0.5)
    steps = client.get("/api/rounds/half/steps").json()
    assert [s["name"] for s in steps][:2] == ["model", "collect"] and steps[0]["state"] == "Succeeded"
    assert [s["name"] for s in client.get("/api/rounds/r1/steps").json()][0] == "collect"


def test_the_runner_records_an_interrupted_round(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from agentq import round as runner
    from agentq.store import FileStore

    store = FileStore(tmp_path / "store")
    ws = SimpleNamespace(store=store, key=lambda rel: f"rounds/x/{rel}",
                         round=SimpleNamespace(spec=SimpleNamespace(model=SimpleNamespace(fetch_from=None))))

    def interrupted(ws, progress):
        progress.start("collect")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_run_steps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_round(ws)
    status = store.get_json("rounds/x/status.json")
    assert status["phase"] == "Interrupted" and status["steps"]["collect"]["state"] == "Interrupted"
    assert status["steps"]["train"] == {"state": "Pending"} and "model" not in status["steps"]


def test_old_summary_gets_a_wilson_interval_and_says_so(client):
    summary = client.get("/api/rounds/r1/eval/summary").json()
    assert [a["arm"] for a in summary["arms"]] == ["round"]
    row = summary["arms"][0]["modes"]["zero_shot"]
    assert row["interval"] == "Wilson score" and row["pass_rate"] == 0.3
    assert row["ci95"] == pytest.approx(wilson(3, 10)) and row["ci95"][0] < 0.3 < row["ci95"][1]
    assert summary["raw"]["modes"]["zero_shot"]["solved"] == 3


def test_paired_summary_keeps_its_bootstrap_interval_base_first(client):
    summary = client.get("/api/rounds/r2/eval/summary").json()
    base, rnd = summary["arms"]
    assert base["arm"] == "baseline" and base["label"] == "base: r1" and rnd["label"] == "r2: tiny (from r1)"
    assert rnd["modes"]["zero_shot"]["ci95"] == [0.2, 0.8] and rnd["modes"]["zero_shot"]["interval"] == \
        "bootstrap by group"
    assert rnd["modes"]["zero_shot"]["pass_at"] == {"1": 0.5, "4": 0.7}
    assert summary["comparison"]["zero_shot"]["mcnemar_p"] == 0.625


def test_wilson_interval_values():
    assert wilson(0, 0) == [0.0, 1.0]
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def test_eval_results_per_arm_and_mode_without_shards_or_digests(client):
    page = client.get("/api/rounds/r2/eval/results").json()
    assert page["arms"] == {"baseline": ["zero_shot"], "round": ["zero_shot"]}  # the shard files are not modes
    assert (page["arm"], page["mode"], page["total"]) == ("round", "zero_shot", 10)
    assert "inputs_digest" not in page["items"][0]
    base = client.get("/api/rounds/r2/eval/results", params={"arm": "baseline", "mode": "zero_shot"}).json()
    assert base["arm"] == "baseline" and sum(r["solved"] for r in base["items"]) == 3
    solved = client.get("/api/rounds/r2/eval/results", params={"status": "solved"}).json()
    assert [r["task_id"] for r in solved["items"]] == ["t0", "t1", "t2"]
    repo = client.get("/api/rounds/repo/eval/results", params={"kind": "repo", "status": "failed"}).json()
    assert [r["task_id"] for r in repo["items"]] == [dashboard_store.REPO_TASKS[1]]


def test_an_unknown_arm_or_mode_is_a_400_naming_what_the_round_has(client):
    arm = client.get("/api/rounds/r2/eval/results", params={"arm": "nope"})
    assert arm.status_code == 400 and arm.json()["detail"] == "round 'r2' has no arm 'nope': it has baseline, round"
    mode = client.get("/api/rounds/r2/eval/results", params={"mode": "mcts"})
    assert mode.status_code == 400 and "no mode 'mcts': it has zero_shot" in mode.json()["detail"]
    assert client.get("/api/rounds/half/eval/results").status_code == 404  # not evaluated yet


def test_trees_list_and_one_tree_with_diffs_verdicts_and_pairs(client):
    rows = client.get("/api/rounds/r1/trajectories").json()["items"]
    assert [r["task_id"] for r in rows] == ["task/a", "task/b"] and rows[0]["best_reward"] == 1.0
    tree = client.get("/api/rounds/r1/trajectories/task/a").json()
    root, good, bad = tree["nodes"]
    assert tree["buggy_code"] == dashboard_store.BUGGY and root["diff"] == "" and root["status"] == "buggy program"
    assert "-    return a - b\n+    return a + b\n" in good["diff"] and good["change"] == "diff"
    assert good["status"] == "passed" and good["failing_tests"] == [] and good["q_ai"] == 0.8
    assert bad["failing_tests"] == [{"name": "test_1", "message": "assert add(1, 1) == 2"}]
    assert bad["passed_tests"] == 1 and bad["expected_tests"] == 2
    assert good["pairs"] == [{"pair": 0, "role": "chosen", "partner": 2, "delta": 0.5, "decided_by": "tests"}]
    assert bad["pairs"][0]["role"] == "rejected" and bad["pairs"][0]["partner"] == 1
    assert "prompt" not in good


def test_a_repository_tree_shows_its_patches_and_a_node_without_one_says_so(client):
    tree = client.get(f"/api/rounds/repo/trajectories/{dashboard_store.REPO_TASKS[0]}").json()
    assert tree["kind"] == "repo" and tree["localization"]["files"] == ["src/lib/core.py"]
    root, fixed, wrong, unread = tree["nodes"]
    assert root["status"] == "buggy repository" and root["change"] == "root"
    assert root["failing_tests"][0]["name"] == "tests/test_core.py::test_size"  # what the buggy tree fails
    # the patch as written: a diff of a diff against an empty file would mark every line '+'
    assert fixed["diff"] == dashboard_store.REPO_PATCH and fixed["change"] == "patch"
    assert fixed["category"] == "resolved" and wrong["feedback"].startswith("Still failing")
    assert (unread["change"], unread["diff"], unread["status"]) == ("none", "", "parse_error")
    assert client.get("/api/rounds/repo/trajectories").json()["items"][0]["kind"] == "repo"


def test_a_node_with_no_program_is_not_the_buggy_program(store, client):
    record = dashboard_store.tree("task/c")
    record["nodes"][2].update(code=None, verdict={"status": "parse_error", "tests": [], "message": "no program"})
    record["nodes"].append({**record["nodes"][1], "id": 3, "code": dashboard_store.BUGGY})  # unchanged program
    store.put_text("rounds/r1/trajectories/shard-0-of-1.jsonl", json.dumps(record) + "\n")
    nodes = client.get("/api/rounds/r1/trajectories/task/c").json()["nodes"]
    assert [(n["change"], n["diff"]) for n in nodes[2:]] == [("none", ""), ("same", "")]


def test_tables_search_filter_page_and_export(client, store):
    trees = "/api/rounds/r1/trajectories"
    assert [r["task_id"] for r in client.get(trees, params={"q": "/B"}).json()["items"]] == ["task/b"]
    assert client.get(trees, params={"status": "unsolved"}).json()["total"] == 0
    assert client.get(trees, params={"offset": 1, "limit": 1}).json()["items"][0]["task_id"] == "task/b"
    csv_export = client.get(trees, params={"format": "csv", "limit": 1})  # an export is every matching row
    assert csv_export.headers["content-type"].startswith("text/csv")
    assert csv_export.headers["content-disposition"] == 'attachment; filename="r1-trees.csv"'
    lines = csv_export.text.splitlines()
    assert lines[0] == "task_id,group,kind,solved,nodes,samples,executions,best_reward,seconds"
    assert lines[1:] == ["task/a,task/a,function,true,3,2,2,1.0,0.5", "task/b,task/b,function,true,3,2,2,1.0,0.5"]
    as_json = client.get(trees, params={"format": "json"}).json()
    assert [r["task_id"] for r in as_json] == ["task/a", "task/b"] and set(as_json[0]) == set(lines[0].split(","))
    assert client.get(trees, params={"format": "xml"}).status_code == 422
    # a task id a spreadsheet would run as a formula is exported as text
    formula = json.dumps(dashboard_store.tree("=HYPERLINK(1)"))
    store.put_text("rounds/r1/trajectories/shard-0-of-1.jsonl", formula + "\n")
    assert client.get(trees, params={"format": "csv"}).text.splitlines()[1].startswith("'=HYPERLINK(1),'=HYPERLINK(1),")


def test_preferences_are_a_browsable_list(client):
    page = client.get("/api/rounds/r1/preferences", params={"limit": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["stats"] == {"pairs": 2}
    first = page["items"][0]
    assert first["chosen"].startswith("```python") and first["rejected"].startswith("```python")  # the answers
    assert "prompt" not in first and first["decided_by"] == "tests" and page["decided_by"] == ["tests"]
    only_b = client.get("/api/rounds/r1/preferences", params={"task_id": "task/b"}).json()
    assert only_b["total"] == 1 and only_b["items"][0]["index"] == 1
    assert client.get("/api/rounds/r1/preferences", params={"q": "TASK/A"}).json()["total"] == 1
    assert client.get("/api/rounds/r1/preferences", params={"decided_by": "critic"}).json()["total"] == 0
    assert client.get("/api/rounds/r1/preferences", params={"limit": 0}).status_code == 422
    exported = client.get("/api/rounds/r1/preferences", params={"format": "csv"}).text
    assert exported.startswith("index,task_id,group,decided_by,delta_reward")


def test_compare_two_rounds_task_by_task(client, store):
    rows = [{"task_id": f"t{i}", "mode": "zero_shot", "kind": "function", "solved": i in (1, 2, 3)}
            for i in range(1, 11)]  # r1 solved t0-t2; r2 now solves t1-t3, and t0 was not evaluated
    store.put_text("rounds/r2/eval/zero_shot.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    page = client.get("/api/compare", params={"a": "r1", "b": "r2"}).json()
    assert page["mode"] == "zero_shot" and page["modes"] == ["zero_shot"]
    assert page["counts"] == {"fixed": 1, "broken": 0, "both": 2, "neither": 6, "onlyA": 1, "onlyB": 1}
    fixed = client.get("/api/compare", params={"a": "r1", "b": "r2", "outcome": "fixed"}).json()
    assert [(r["task_id"], r["a_solved"], r["b_solved"]) for r in fixed["items"]] == [("t3", False, True)]
    assert client.get("/api/compare", params={"a": "r2", "b": "r1", "outcome": "broken"}).json()["total"] == 1
    assert client.get("/api/compare", params={"a": "r1", "b": "r2", "format": "csv"}).text.count("\n") == 10
    mixed = client.get("/api/compare", params={"a": "r1", "b": "repo"})
    assert mixed.status_code == 400 and "function tasks" in mixed.json()["detail"]
    assert client.get("/api/compare", params={"a": "r1", "b": "r2", "mode": "mcts"}).status_code == 400
    assert client.get("/api/compare", params={"a": "r1", "b": "nope"}).status_code == 404
    assert client.get("/api/compare", params={"a": "r1", "b": "r2", "outcome": "x"}).status_code == 422


def test_the_learning_curve_never_joins_rounds_of_another_test_set(client, store):
    curve = client.get("/api/rounds/r2/learning-curve").json()
    assert [p["round"] for p in curve["points"]] == ["r1", "r2"]  # in the order they were evaluated
    assert curve["testSet"]["kind"] == "function" and curve["otherTestSets"] == 1  # repo: other kind, other tasks
    assert curve["points"][0]["modes"]["zero_shot"]["pass_rate"] == 0.3
    repo = client.get("/api/rounds/repo/learning-curve").json()
    assert [p["round"] for p in repo["points"]] == ["repo"] and repo["otherTestSets"] == 2
    rows = [{"task_id": f"other{i}", "mode": "zero_shot", "solved": True} for i in range(10)]  # same kind, new tasks
    store.put_text("rounds/r1/eval/zero_shot.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert [p["round"] for p in client.get("/api/rounds/r2/learning-curve").json()["points"]] == ["r2"]


def test_campaigns_show_their_learning_curve_and_which_rounds_are_in_the_store(client):
    (campaign,) = client.get("/api/campaigns").json()["items"]
    assert campaign["name"] == "c" and campaign["stopped"] == "NoGain" and campaign["roundsInStore"] == ["r1", "r2"]
    assert [p["passRate"] for p in client.get("/api/campaigns/c").json()["learningCurve"]] == [0.3, 0.5]
    assert [p["name"] for p in client.get("/api/campaigns/c/curve").json()["items"]] == ["r1", "r2"]
    assert client.get("/api/campaigns/c/curve", params={"format": "csv"}).text.startswith("round,name,mode,passRate")
    assert client.get("/api/campaigns/nope").status_code == 404


def test_missing_things_are_one_line_404s_that_never_say_where_the_store_is(client, store):
    for path, words in (("/api/rounds/nope", "no round 'nope' in this store"),
                        ("/api/rounds/r1/trajectories/task/zz", "task/zz"),
                        ("/api/rounds/half/eval/summary", "no evaluation summary"),
                        ("/api/rounds/nope/eval/results", "no round"), ("/api/rounds/nope/progress", "no round"),
                        ("/api/campaigns/nope", "no campaign 'nope'"), ("/api/rounds/nope/learning-curve", "no round")):
        response = client.get(path)
        assert response.status_code == 404, path
        detail = response.json()["detail"]
        assert words in detail and "\n" not in detail, path
        assert str(store.root) not in detail and "file:" not in detail, path


def test_a_store_failure_is_a_502_that_does_not_quote_the_error(client, store, monkeypatch):
    from agentq.store import StoreError

    def broken(prefix=""):
        raise StoreError(f"{store.url}: permission denied")

    monkeypatch.setattr(store, "list", broken)
    response = client.get("/api/rounds")
    assert response.status_code == 502 and str(store.root) not in response.text


def test_the_api_is_read_only(client):
    assert client.post("/api/rounds", json={}).status_code == 405
    assert client.delete("/api/rounds/r1").status_code == 405
    assert client.put("/api/rounds/r1").status_code == 405


def test_security_headers_on_every_response(client):
    for path in ("/", "/static/app.js", "/api/rounds", "/api/rounds/nope", "/healthz"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, path
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
    assert client.get("/api/rounds").headers["cache-control"] == "no-store"


def test_host_and_origin_checks_against_dns_rebinding(store):
    def get(app, host, origin=None):
        headers = {"origin": origin} if origin else {}
        return TestClient(app, base_url=f"http://{host}").get("/api/rounds", headers=headers)

    open_app = create_app(StoreReader(store))
    for host in ("localhost:8265", "127.0.0.1:8265", "[::1]:8265", "10.1.2.3"):
        assert get(open_app, host).status_code == 200, host
    refused = get(open_app, "rebound.attacker.example:8265")  # a hostile name resolved to this machine
    assert refused.status_code == 403 and "--allowed-host" in refused.json()["detail"]
    assert get(open_app, "localhost:8265", origin="http://attacker.example").status_code == 403
    assert get(open_app, "localhost:8265", origin="http://localhost:8265").status_code == 200
    named = create_app(StoreReader(store), allowed_hosts=["dash.example.org"])
    assert get(named, "dash.example.org").status_code == 200 and get(named, "other.example").status_code == 403
    # with a token the token refuses a rebound page; Host is checked only against names given
    with_token = create_app(StoreReader(store), token="s3cret")
    assert get(with_token, "agentq-dashboard.agentq-system.svc:8265").status_code == 401
    with TestClient(open_app, base_url="http://localhost") as client, pytest.raises(WebSocketDisconnect) as closed, \
            client.websocket_connect(WS + "/api/rounds/r1/events", headers={"origin": "http://attacker.example"}) as ws:
        ws.receive_json()
    assert closed.value.code == 4403


def test_bearer_token_guards_api_metrics_and_stream_and_never_rides_in_a_url(store):
    client = TestClient(create_app(StoreReader(store), token="s3cret"), base_url="http://localhost")
    assert client.get("/api/rounds").status_code == 401
    assert client.get("/api/rounds", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/rounds", params={"token": "s3cret"}).status_code == 401  # a URL never carries it
    assert client.get("/metrics").status_code == 401
    assert client.get("/api/rounds", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # probes, login page
    with pytest.raises(WebSocketDisconnect) as refused, \
            client.websocket_connect(WS + "/api/rounds/r1/events?token=s3cret") as ws:
        ws.send_json({"type": "hello"})  # the query is not a token, and this first message is not one either
        ws.receive_json()
    assert refused.value.code == 4401
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(WS + "/api/rounds/r1/events") as ws:
        ws.send_json({"type": "auth", "token": "wrong"})
        ws.receive_json()
    assert refused.value.code == 4401
    with client.websocket_connect(WS + "/api/rounds/r1/events") as ws:  # a browser: the token in the first message
        ws.send_json({"type": "auth", "token": "s3cret"})
        assert ws.receive_json()["type"] == "snapshot"
    with client.websocket_connect(WS + "/api/rounds/r1/events", headers={"Authorization": "Bearer s3cret"}) as ws:
        assert ws.receive_json()["type"] == "snapshot"  # any other client: the header
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(WS + "/api/rounds/nope/events") as ws:
        ws.send_json({"type": "hello"})  # nothing about a round, not even whether it exists, before the token
        ws.receive_json()
    assert refused.value.code == 4401


def receive_until(ws, done, limit: int = 50) -> list[dict]:
    events = [ws.receive_json()]
    while not done(events[-1]):
        assert len(events) < limit, events
        events.append(ws.receive_json())
    return events


def test_event_stream_numbers_changes_replays_and_ends(client, store):
    store.put_json("rounds/half/status.json", status("Preferences", "preferences", ["collect"], running="preferences"))
    with client.websocket_connect(WS + "/api/rounds/half/events") as ws:
        first = ws.receive_json()
        assert (first["seq"], first["type"], first["data"]["phase"]) == (1, "snapshot", "Preferences")
        store.put_json("rounds/half/status.json", status("Training", "train", ["collect", "preferences"],
                                                         running="train"))
        dashboard_store.marker(store, "half", "preferences", {"pairs": 1}, 3.0)
        # The poll may fall between the two writes: then the change arrives as two updates, numbered in turn.
        def settled(update: dict) -> bool:
            steps = {st["name"]: st.get("state") for st in update["data"]["steps"]}
            return update["data"]["phase"] == "Training" and steps["preferences"] == "Succeeded"

        updates = receive_until(ws, settled, limit=2)  # two writes: at most two updates
        assert [(u["seq"], u["type"]) for u in updates] == [(2 + i, "update") for i in range(len(updates))]
        changes = [c for u in updates for c in u["changes"]]
        assert {"what": "phase", "from": "Preferences", "to": "Training"} in changes
        assert [c["to"] for c in changes if c.get("step") == "preferences"][-1] == "Succeeded"
    # a reconnect after seq 1 gets what it missed, not the snapshot again
    with client.websocket_connect(WS + "/api/rounds/half/events?after_seq=1") as ws:
        assert ws.receive_json()["seq"] == 2
        for step in ("train", "merge", "evaluate"):
            dashboard_store.marker(store, "half", step, {}, 9.0)
        store.put_json("rounds/half/status.json", {**status("Succeeded", "evaluate",
                       ["collect", "preferences", "train", "merge", "evaluate"])})
        events = receive_until(ws, lambda e: e["type"] == "final")  # the poll may see the writes in several states
        assert events[-1]["seq"] > 2 and [e["seq"] for e in events] == sorted({e["seq"] for e in events})
        assert events[-1]["data"]["phase"] == events[-2]["data"]["phase"] == "Succeeded"
    with client.websocket_connect(WS + "/api/rounds/half/events?after_seq=99") as ws:  # the service restarted: replay
        assert ws.receive_json()["seq"] == 1


def test_a_round_interrupted_then_run_again_opens_a_new_run(client, store):
    """The runner's own status writer: Interrupted ends a run, `agentq round run` again starts the next, and the
    stream (still open after the first `final`) follows it instead of replaying the old end."""
    first = dashboard_store.runner(store, "half")
    first.start("collect")
    first.end("Interrupted", "KeyboardInterrupt: ")
    with client.websocket_connect(WS + "/api/rounds/half/events") as ws:
        opened = receive_until(ws, lambda e: e["type"] == "final")
        assert [e["type"] for e in opened] == ["snapshot", "final"] and opened[-1]["data"]["phase"] == "Interrupted"
        old_run = opened[0]["data"]["run"]
        time.sleep(0.01)
        second = dashboard_store.runner(store, "half")
        second.start("collect")
        resumed = receive_until(ws, lambda e: e["type"] == "snapshot")
        assert resumed[-1]["changes"] == [{"what": "run", "from": old_run, "to": resumed[-1]["data"]["run"]}]
        assert resumed[-1]["data"]["phase"] == "Collecting" and resumed[-1]["data"]["message"] == ""
        for step in ("collect", "preferences", "train", "merge", "evaluate"):
            if step != "collect":
                second.start(step)
            marker = step if step != "collect" else "collect-shard-0-of-2"
            dashboard_store.marker(store, "half", marker, {}, time.time())
            dashboard_store.marker(store, "half", "collect-shard-1-of-2", {}, time.time())
            second.done(step)
        second.end("Succeeded")
        ended = receive_until(ws, lambda e: e["type"] == "final")
        assert ended[-1]["data"]["phase"] == "Succeeded" and ended[-1]["data"]["run"] == resumed[-1]["data"]["run"]
    fresh = client.get("/api/rounds/half").json()  # a fresh page load: the new state, not the old error
    assert fresh["phase"] == "Succeeded" and fresh["message"] == ""


def test_a_failed_status_overtaken_by_later_steps_is_history(client, store):
    """Steps run by hand after the runner failed: the markers written since say what the round is now."""
    runner = dashboard_store.runner(store, "half")
    runner.start("preferences")
    runner.end("Failed", "RuntimeError: boom")
    assert client.get("/api/rounds/half").json()["phase"] == "Failed"
    time.sleep(0.01)
    dashboard_store.marker(store, "half", "preferences", {"pairs": 1}, time.time())  # `agentq preferences` by hand
    now = client.get("/api/rounds/half").json()
    assert (now["phase"], now["step"], now["message"]) == ("Training", "train", "")
    assert now["run"].startswith("steps@")


def test_tree_events_arrive_as_the_partial_file_grows(client, store, tmp_path):
    store.put_text("rounds/live/spec.yaml", dashboard_store.spec("live", shards=2))
    runner = dashboard_store.runner(store, "live")
    runner.start("collect")
    collector = dashboard_store.Collector(store, "live", tmp_path / "local.jsonl", tasks=3, shards=2)
    with client.websocket_connect(WS + "/api/rounds/live/events") as ws:
        assert ws.receive_json()["data"]["collected"] == 0
        for i, task in enumerate(("task/p", "task/q")):
            collector.add(dashboard_store.tree(task))
            event = receive_until(ws, lambda e: e["type"] == "trees")[-1]
            assert [r["task_id"] for r in event["data"]["added"]] == [task] and event["data"]["collected"] == i + 1
    progress = client.get("/api/rounds/live/progress").json()["collect"]
    assert {k: progress[k] for k in ("trees", "tasks", "samples", "executions", "solved")} == \
        {"trees": 2, "tasks": None, "samples": 4, "executions": 4, "solved": 2}  # shard 1 has not said
    store.put_json("rounds/live/progress/collect-shard-1-of-2.json", {"tasks": 2})
    assert client.get("/api/rounds/live/progress").json()["collect"]["tasks"] == 5
    trees = client.get("/api/rounds/live/trajectories").json()["items"]
    assert [t["task_id"] for t in trees] == ["task/p", "task/q"]  # read from the partial


def test_a_finished_shard_replaces_its_partial_and_other_shard_counts_are_ignored(client, store, tmp_path):
    collector = dashboard_store.Collector(store, "r1", tmp_path / "local.jsonl", tasks=1)
    collector.add(dashboard_store.tree("task/new"))  # r1 collected again with other settings: the run in progress
    assert [t["task_id"] for t in client.get("/api/rounds/r1/trajectories").json()["items"]] == ["task/new"]
    store.put_text("rounds/r1/trajectories/shard-0-of-4.jsonl", json.dumps(dashboard_store.tree("task/old")) + "\n")
    assert client.get("/api/rounds/r1").json()["collected"] == 1  # an earlier layout's shard is not this round's
    store.delete_prefix(collector.key)  # the shard finished: its partials go
    assert client.get("/api/rounds/r1").json()["collected"] == 2


def test_train_progress_is_read_from_its_record(client, store):
    store.put_json("rounds/half/progress/train.json", {"method": "dpo", "step": 2, "maxSteps": 4, "history": [
        {"step": 1, "loss": 0.69, "rewardAccuracy": 0.5}, {"step": 1, "evalLoss": 0.7, "evalRewardAccuracy": 0.25},
        {"step": 2, "loss": 0.6, "rewardAccuracy": 0.75}]})
    train = client.get("/api/rounds/half").json()["progress"]["train"]
    assert (train["step"], train["maxSteps"], train["loss"], train["rewardAccuracy"]) == (2, 4, 0.6, 0.75)
    assert train["evalRewardAccuracy"] == 0.25 and len(train["history"]) == 3


def test_event_logs_exist_only_for_rounds_that_exist_and_are_bounded(store):
    app = create_app(StoreReader(store, ttl=0.0), poll_interval=0.05)
    client = TestClient(app, base_url="http://localhost")
    for i in range(20):
        with client.websocket_connect(f"{WS}/api/rounds/nope-{i}/events") as ws:
            assert ws.receive_json()["type"] == "error"
    assert len(app.state.hub) == 0
    app.state.hub.max_logs = 2
    for name in ("r1", "r2", "half"):
        with client.websocket_connect(f"{WS}/api/rounds/{name}/events") as ws:
            assert ws.receive_json()["type"] == "snapshot"
    assert len(app.state.hub) == 2


def test_a_stream_whose_client_left_ends_even_if_the_round_never_does(store, tmp_path):
    """Against a real uvicorn (TestClient cancels the handler itself when the client leaves, hiding a leak)."""
    import socket
    import urllib.request

    from websockets.sync.client import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "agentq.cli", "serve", "--store", str(store.root), "--port",
                               str(port), "--poll-interval", "0.2"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def open_streams() -> str:
        text = urllib.request.urlopen(f"http://{base}/metrics", timeout=5).read().decode()
        return next(line for line in text.splitlines() if line.startswith("agentq_event_streams "))

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                open_streams()
                break
            except OSError:
                assert time.monotonic() < deadline, "agentq serve did not start"
                time.sleep(0.2)
        with connect(f"ws://{base}/api/rounds/half/events") as ws:  # half never finishes
            assert json.loads(ws.recv())["type"] == "snapshot"
            assert open_streams() == "agentq_event_streams 1.0"
        deadline = time.monotonic() + 5
        while open_streams() != "agentq_event_streams 0.0":
            assert time.monotonic() < deadline, "the server still streams to a client that left"
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_event_stream_for_an_unknown_round_says_so(client):
    with client.websocket_connect(WS + "/api/rounds/nope/events") as ws:
        event = ws.receive_json()
    assert event["type"] == "error" and "no round 'nope'" in event["detail"]


def test_metrics_lines(client):
    client.get("/api/rounds")
    text = client.get("/metrics").text
    assert 'agentq_rounds{phase="Succeeded"} 3.0' in text and 'agentq_rounds{phase="Preferences"} 1.0' in text
    assert 'agentq_rounds{phase="Failed"} 0.0' in text
    assert 'agentq_step_duration_seconds{round="r1",step="train"} 5.0' in text
    assert 'agentq_pass_rate{arm="baseline",mode="zero_shot",round="r2"} 0.3' in text
    assert 'agentq_pass_rate{arm="round",mode="zero_shot",round="r2"} 0.5' in text
    assert 'agentq_collect_samples_total{round="r1"} 4.0' in text
    assert 'agentq_sandbox_runs_total{round="r1"} 4.0' in text
    assert 'agentq_http_requests_total{method="GET",route="/api/rounds",status="200"} 1.0' in text


def test_logs_are_json_lines_with_the_round_bound(client, capsys):
    before = structlog.get_config()
    configure_logging("info")
    try:
        client.get("/api/rounds/r1/steps")
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    finally:
        structlog.configure(**before)  # later tests must not print to this test's (closed) capture
    request = next(line for line in lines if line.get("event") == "request")
    assert request["round"] == "r1" and request["status"] == 200 and request["level"] == "info"
    assert request["path"] == "/api/rounds/r1/steps" and "timestamp" in request


def test_serve_command_rejects_a_missing_store_in_one_line(tmp_path, capsys):
    assert cli_main(["serve", "--store", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("agentq: --store") and "no such directory" in err and "\n" not in err
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert cli_main(["serve", "--store", str(tmp_path), "--token-file", str(empty)]) == 2
    assert "the file is empty" in capsys.readouterr().err


def test_the_service_imports_neither_torch_nor_kubernetes():
    code = ("import sys, agentq.serve.main, agentq.serve.app; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'peft', "
            "'kubernetes', 'kopf'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_page_ships_in_the_wheel(tmp_path):
    """The controller image installs agentq from a wheel, not editable: the static page must be in it."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # what the Dockerfile copies: no egg-info or build/ left by an editable install
    for name in ("agentq", "controller"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("agentq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"agentq/serve/static/{n}" for n in ("index.html", "app.js", "style.css")} <= names


def test_the_page_builds_no_markup_from_strings():
    """The browser tests show a hostile id stays text; this keeps the page's source from regressing to the
    ways that broke it (HTML strings, inline handlers, inline script or style, which the CSP would refuse)."""
    from pathlib import Path

    static = Path(__file__).resolve().parents[1] / "agentq" / "serve" / "static"
    script = (static / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 'setAttribute("on', "onclick", ".style.cssText"):
        assert sink not in script, sink
    page = (static / "index.html").read_text()
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert not [word for word in page.split() if word.startswith("on") and "=" in word]
