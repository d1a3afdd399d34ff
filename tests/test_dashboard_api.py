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


@pytest.fixture()
def store(tmp_path):
    return dashboard_store.build(tmp_path / "store")


@pytest.fixture()
def client(store):
    return TestClient(create_app(StoreReader(store, ttl=0.0), poll_interval=0.05))


def test_rounds_list_phases_and_step_timings(client):
    rounds = {r["name"]: r for r in client.get("/api/rounds").json()}
    assert sorted(rounds) == ["half", "r1", "r2"]
    assert rounds["r1"]["phase"] == "Succeeded" and "spec" not in rounds["r1"]
    steps = {s["name"]: s for s in rounds["r1"]["steps"]}
    assert [s["state"] for s in steps.values()] == ["Succeeded"] * 5
    assert steps["train"]["startTime"] == 20.0 and steps["train"]["seconds"] == 5.0
    assert steps["collect"]["seconds"] == 5.0  # a start time of 0 is a time, not a missing one
    assert rounds["r1"]["passRate"] == {"zero_shot": 0.3}
    assert rounds["r1"]["collected"] == 2 and rounds["half"]["collected"] == 0  # search trees so far
    assert rounds["r2"]["fromRound"] == "r1"


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
    results = client.get("/api/rounds/r2/eval/results").json()
    assert sorted(results) == ["baseline", "round"] and list(results["round"]) == ["zero_shot"]
    assert len(results["round"]["zero_shot"]) == 10 and "inputs_digest" not in results["round"]["zero_shot"][0]
    only = client.get("/api/rounds/r2/eval/results", params={"arm": "baseline", "mode": "zero_shot"}).json()
    assert list(only) == ["baseline"] and sum(r["solved"] for r in only["baseline"]["zero_shot"]) == 3


def test_trees_list_and_one_tree_with_diffs_verdicts_and_pairs(client):
    rows = client.get("/api/rounds/r1/trajectories").json()
    assert [r["task_id"] for r in rows] == ["task/a", "task/b"] and rows[0]["best_reward"] == 1.0
    tree = client.get("/api/rounds/r1/trajectories/task/a").json()
    root, good, bad = tree["nodes"]
    assert tree["buggy_code"] == dashboard_store.BUGGY and root["diff"] == "" and root["status"] == "buggy program"
    assert "-    return a - b\n+    return a + b\n" in good["diff"]
    assert good["status"] == "passed" and good["failing_tests"] == [] and good["q_ai"] == 0.8
    assert bad["failing_tests"] == [{"name": "test_1", "message": "assert add(1, 1) == 2"}]
    assert bad["passed_tests"] == 1 and bad["expected_tests"] == 2
    assert good["pairs"] == [{"pair": 0, "role": "chosen", "partner": 2, "delta": 0.5, "decided_by": "tests"}]
    assert bad["pairs"][0]["role"] == "rejected" and bad["pairs"][0]["partner"] == 1
    assert "prompt" not in good


def test_preferences_filter_and_page(client):
    page = client.get("/api/rounds/r1/preferences", params={"limit": 1}).json()
    assert page["total"] == 2 and len(page["pairs"]) == 1 and page["stats"] == {"pairs": 2}
    only_b = client.get("/api/rounds/r1/preferences", params={"task_id": "task/b"}).json()
    assert only_b["total"] == 1 and only_b["pairs"][0]["index"] == 1
    assert client.get("/api/rounds/r1/preferences", params={"limit": 0}).status_code == 422


def test_campaigns_show_their_learning_curve_and_which_rounds_are_in_the_store(client):
    (campaign,) = client.get("/api/campaigns").json()
    assert campaign["name"] == "c" and campaign["stopped"] == "NoGain" and campaign["roundsInStore"] == ["r1", "r2"]
    assert [p["passRate"] for p in client.get("/api/campaigns/c").json()["learningCurve"]] == [0.3, 0.5]
    assert client.get("/api/campaigns/nope").status_code == 404


def test_missing_things_are_one_line_404s(client):
    for path, words in (("/api/rounds/nope", "no round 'nope'"), ("/api/rounds/r1/trajectories/task/zz", "task/zz"),
                        ("/api/rounds/half/eval/summary", "no evaluation summary"),
                        ("/api/rounds/nope/eval/results", "no round")):
        response = client.get(path)
        assert response.status_code == 404, path
        assert words in response.json()["detail"] and "\n" not in response.json()["detail"]


def test_the_api_is_read_only(client):
    assert client.post("/api/rounds", json={}).status_code == 405
    assert client.delete("/api/rounds/r1").status_code == 405
    assert client.put("/api/rounds/r1").status_code == 405


def test_bearer_token_guards_api_metrics_and_stream(store):
    client = TestClient(create_app(StoreReader(store), token="s3cret"))
    assert client.get("/api/rounds").status_code == 401
    assert client.get("/api/rounds", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/api/rounds", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200  # probes, login page
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/api/rounds/r1/events") as ws:
        ws.receive_json()
    assert refused.value.code == 4401
    with client.websocket_connect("/api/rounds/r1/events?token=s3cret") as ws:
        assert ws.receive_json()["type"] == "snapshot"


def test_event_stream_numbers_changes_replays_and_ends(client, store):
    store.put_json("rounds/half/status.json", status("Preferences", "preferences", ["collect"], running="preferences"))
    with client.websocket_connect("/api/rounds/half/events") as ws:
        first = ws.receive_json()
        assert (first["seq"], first["type"], first["data"]["phase"]) == (1, "snapshot", "Preferences")
        store.put_json("rounds/half/status.json", status("Training", "train", ["collect", "preferences"],
                                                         running="train"))
        dashboard_store.marker(store, "half", "preferences", {"pairs": 1}, 3.0)
        # The poll may fall between the two writes: then the change arrives as two updates, numbered in turn.
        updates = [ws.receive_json()]
        def settled(update: dict) -> bool:
            steps = {st["name"]: st.get("state") for st in update["data"]["steps"]}
            return update["data"]["phase"] == "Training" and steps["preferences"] == "Succeeded"

        while not settled(updates[-1]) and len(updates) < 2:  # two writes: at most two updates
            updates.append(ws.receive_json())
        assert settled(updates[-1]), updates
        assert [(u["seq"], u["type"]) for u in updates] == [(2 + i, "update") for i in range(len(updates))]
        changes = [c for u in updates for c in u["changes"]]
        assert {"what": "phase", "from": "Preferences", "to": "Training"} in changes
        assert [c["to"] for c in changes if c.get("step") == "preferences"][-1] == "Succeeded"
    # a reconnect after seq 1 gets what it missed, not the snapshot again
    with client.websocket_connect("/api/rounds/half/events?after_seq=1") as ws:
        assert ws.receive_json()["seq"] == 2
        for step in ("train", "merge", "evaluate"):
            dashboard_store.marker(store, "half", step, {}, 9.0)
        store.put_json("rounds/half/status.json", {**status("Succeeded", "evaluate",
                       ["collect", "preferences", "train", "merge", "evaluate"])})
        events = [ws.receive_json()]  # the poll may see the writes above in one state or in several
        while events[-1]["type"] != "final":
            events.append(ws.receive_json())
        assert [e["seq"] for e in events] == list(range(3, 3 + len(events)))
        assert events[-1]["data"]["phase"] == events[-2]["data"]["phase"] == "Succeeded"
        last = events[-1]["seq"]
    # after the end: closed at once
    with client.websocket_connect(f"/api/rounds/half/events?after_seq={last}") as ws, \
            pytest.raises(WebSocketDisconnect):
        ws.receive_json()
    with client.websocket_connect("/api/rounds/half/events?after_seq=99") as ws:  # the service restarted: replay
        assert ws.receive_json()["seq"] == 1


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
    with client.websocket_connect("/api/rounds/nope/events") as ws:
        event = ws.receive_json()
    assert event["type"] == "error" and "no round 'nope'" in event["detail"]


def test_metrics_lines(client):
    client.get("/api/rounds")
    text = client.get("/metrics").text
    assert 'agentq_rounds{phase="Succeeded"} 2.0' in text and 'agentq_rounds{phase="Preferences"} 1.0' in text
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
