"""The dashboard's cluster reader (controller/dashboard.py): an AgentQRound's status and Jobs become the same
round view the store reader gives, and the same app serves it. The Kubernetes API is played by a fake with
the resource and Job shapes the operator writes (tests/test_operator_cluster.py covers the real server)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dashboard_store
import pytest
from fastapi.testclient import TestClient

from agentq.serve.app import create_app
from agentq.serve.reader import NotFound, StoreReader
from controller.dashboard import ClusterRounds, round_view
from controller.jobs import UNIT_LABEL

WS = "ws://localhost"  # TestClient's sockets say Host: testserver unless the URL names one


def job(unit: str, start: str | None, end: str | None, gpus: int = 0) -> dict:
    limits = {"nvidia.com/gpu": gpus} if gpus else {}
    return {"metadata": {"name": f"r2-{unit}-r0", "labels": {UNIT_LABEL: unit}},
            "spec": {"template": {"spec": {"containers": [{"resources": {"limits": {"cpu": "1", **limits}}}]}}},
            "status": {"startTime": start, "completionTime": end}}


def resource(name: str, phase: str, step: str, jobs: dict) -> dict:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"model": {"base": "tiny", "fromRound": "r1"}},
            "status": {"phase": phase, "step": step, "jobs": jobs, "startTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": "Progressing", "status": "True", "message": f"step {step}: r2-x"}],
                       "results": {"passRate": {"zero_shot": 0.1}}}}


TRAINING = resource("r2", "Training", "train", {
    "collect-0": {"name": "r2-collect-0-r0", "state": "Succeeded", "attempts": 1, "result": {"tasks": 2}},
    "collect-1": {"name": "r2-collect-1-r0", "state": "Succeeded", "attempts": 1, "result": {"tasks": 3}},
    "preferences": {"name": "r2-preferences-r0", "state": "Succeeded", "attempts": 1, "result": {"pairs": 4}},
    "train": {"name": "r2-train-r0", "state": "Running", "attempts": 1},
})
JOBS = [job("collect-0", "2026-01-01T00:00:10Z", "2026-01-01T00:01:00Z", gpus=1),
        job("collect-1", "2026-01-01T00:00:12Z", "2026-01-01T00:01:30Z", gpus=1),
        job("preferences", "2026-01-01T00:01:31Z", "2026-01-01T00:01:41Z"),
        job("train", "2026-01-01T00:01:42Z", None, gpus=2)]


CAMPAIGN = {"metadata": {"name": "learn", "namespace": "ns"},
            "spec": {"rounds": 3, "stop": {"patience": 2},
                     "template": {"model": {"base": "tiny", "backend": "scripted"},
                                  "dataset": {"train": "t.jsonl", "test": "t.jsonl"}, "store": {"pvc": "a"},
                                  "evaluate": {"modes": ["zero_shot"]}}},
            "status": {"phase": "Running", "currentRound": "r2", "learningCurve": [
                {"round": 1, "name": "r1", "mode": "zero_shot", "passRate": 0.3, "delta": 0.1,
                 "deltaCi95": [0.05, 0.2], "gain": True}]}}


class FakeKube:
    def __init__(self, bodies: list[dict], jobs: list[dict], campaigns: list[dict] = ()) -> None:
        self.bodies, self.jobs, self.campaigns = bodies, jobs, list(campaigns)

    def list_rounds(self, namespace, label_selector="", plural="agentqrounds"):
        items = self.campaigns if plural == "agentqcampaigns" else self.bodies
        return [b for b in items if namespace in (None, b["metadata"]["namespace"])]

    def get_round(self, namespace, name):
        return next((b for b in self.list_rounds(namespace) if b["metadata"]["name"] == name), None)

    def list_jobs(self, namespace, round_name):
        return self.jobs


def test_status_and_jobs_become_steps_with_timings():
    view = round_view(TRAINING, JOBS, None)
    steps = {s["name"]: s for s in view["steps"]}
    assert [s["state"] for s in view["steps"]] == ["Succeeded", "Succeeded", "Running", "Pending", "Pending"]
    assert steps["collect"]["seconds"] == 80.0  # first shard's start to the last shard's end
    assert steps["collect"]["result"] == {"tasks": 5} and steps["collect"]["shards"] == {"done": 2, "total": 2}
    assert steps["train"]["startTime"] is not None and steps["train"]["seconds"] is None
    assert view["phase"] == "Training" and view["source"] == "cluster" and view["message"] == "step train: r2-x"
    assert view["passRate"] == {"zero_shot": 0.1}  # the operator's results until a summary is in the store
    # a round deleted and applied again is a new resource: its uid names the run the event stream follows
    again = {**TRAINING, "metadata": {**TRAINING["metadata"], "uid": "u-2"}}
    assert round_view(again, JOBS, None)["run"] == "u-2" != round_view(TRAINING, JOBS, None)["run"]


def test_gpu_hours_are_what_the_jobs_held():
    now = datetime(2026, 1, 1, 0, 31, 42, tzinfo=UTC).timestamp()  # train has run for 30 minutes
    steps = {s["name"]: s for s in round_view(TRAINING, JOBS, None, now=now)["steps"]}
    assert steps["collect"]["gpuHours"] == round((50 + 78) / 3600, 4)  # one GPU per shard
    assert steps["preferences"]["gpuHours"] == 0.0 and steps["train"]["gpuHours"] == 1.0  # 2 GPUs x 0.5 h


def test_the_report_job_counts_as_evaluate_and_a_failed_round_shows_its_step_failed():
    body = resource("r2", "Failed", "evaluate", {
        **{k: {**v, "state": "Succeeded"} for k, v in TRAINING["status"]["jobs"].items()},
        "merge": {"state": "Succeeded"}, "evaluate-0": {"state": "Succeeded"},
        "report": {"state": "Failed", "reason": "OOMKilled"}})
    body["status"]["conditions"].append({"type": "Failed", "status": "True", "message": "report: OOMKilled"})
    view = round_view(body, [], None)
    assert [s["state"] for s in view["steps"]] == ["Succeeded"] * 4 + ["Failed"]
    assert view["message"] == "report: OOMKilled"


def test_the_app_serves_cluster_rounds_with_store_artifacts(tmp_path):
    reader = StoreReader(dashboard_store.build(tmp_path / "store"), ttl=0)
    client = TestClient(create_app(reader, ClusterRounds(FakeKube([TRAINING], JOBS), reader, "ns")), base_url="http://localhost")
    rounds = client.get("/api/rounds").json()["items"]
    assert [(r["name"], r["phase"], r["source"]) for r in rounds] == [("r2", "Training", "cluster")]
    assert rounds[0]["collected"] == 2 and rounds[0]["kind"] == "function"  # the trees already in the store
    assert rounds[0]["passRate"] == {"zero_shot": 0.5}  # the store's summary wins over the status
    assert client.get("/api/rounds/r2/eval/summary").json()["arms"][0]["arm"] == "baseline"
    assert client.get("/api/rounds/r2/trajectories").status_code == 200
    missing = client.get("/api/rounds/r9")
    assert missing.status_code == 404 and missing.json()["detail"] == "no AgentQRound 'r9' in namespace ns"
    with client.websocket_connect(WS + "/api/rounds/r2/events") as ws:
        snapshot = ws.receive_json()["data"]
        assert snapshot["steps"][2]["state"] == "Running" and snapshot["progress"]["collect"]["trees"] == 2
    assert 'agentq_step_gpu_hours{round="r2",step="collect"} 0.0356' in client.get("/metrics").text


def test_dashboard_entry_point_rejects_a_missing_store(tmp_path):
    out = subprocess.run([sys.executable, "-m", "controller.dashboard", "--store", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("controller.dashboard: --store")


def test_cluster_dashboard_imports_no_ml_stack():
    code = ("import sys, controller.dashboard; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl', 'peft')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"


@pytest.mark.parametrize("unit,step", [("collect-12", "collect"), ("report", "evaluate"), ("train", "train")])
def test_unit_keys_map_to_steps(unit, step):
    from controller.dashboard import step_of

    assert step_of(unit) == step


def test_cluster_campaigns_come_from_their_resources(tmp_path):
    reader = StoreReader(dashboard_store.build(tmp_path / "store"), ttl=0)
    kube = FakeKube([TRAINING], JOBS, [CAMPAIGN])
    client = TestClient(create_app(reader, ClusterRounds(kube, reader, "ns")), base_url="http://localhost")
    (campaign,) = client.get("/api/campaigns").json()["items"]
    assert (campaign["name"], campaign["phase"], campaign["currentRound"]) == ("learn", "Running", "r2")
    assert campaign["plannedRounds"] == 3 and campaign["bestPassRate"] == 0.3 and campaign["stopped"] is None
    assert campaign["roundsInStore"] == ["r1"] and campaign["mode"] == "zero_shot"
    assert client.get("/api/campaigns/c").status_code == 404  # the store's campaign is not the cluster's


def test_an_invalid_campaign_is_listed_with_why():
    from controller.dashboard import campaign_view

    bad = {**CAMPAIGN, "spec": {"rounds": 0}}
    view = campaign_view(bad, set())
    assert view["name"] == "learn" and "AgentQCampaign learn" in view["error"] and view["rounds"] == 1


def test_a_round_that_fetches_its_model_shows_the_model_step():
    body = resource("r2", "Initializing", "model", {"model": {"name": "r2-model-r0", "state": "Running"}})
    view = round_view(body, [job("model", "2026-01-01T00:00:01Z", None)], None, now=0)
    assert [(s["name"], s["state"]) for s in view["steps"][:2]] == [("model", "Running"), ("collect", "Pending")]
    assert view["phase"] == "Initializing"


# ---- against the real API server (tests/testenv.py) --------------------------------------------------------


@pytest.mark.cluster
def test_the_cluster_reader_against_a_real_api_server(tmp_path):
    """Rounds, their Jobs and a campaign created in a real kube-apiserver, read back through Kube and
    ClusterRounds as the chart's dashboard pod reads them (the operator is not running: the test writes the
    status it would write)."""

    import testenv
    from kubernetes import client

    from controller.kube import Kube

    testenv.require()
    root = Path(__file__).resolve().parents[1]
    cluster = testenv.LocalCluster(tmp_path / "cluster").start()
    try:
        for manifest in ("crd.yaml", "campaign-crd.yaml"):
            cluster.kubectl("apply", "-f", str(root / "manifests" / manifest))
        cluster.kubectl("wait", "--for=condition=Established", "crd/agentqrounds.agentq.dev",
                        "crd/agentqcampaigns.agentq.dev", "--timeout=30s")
        api = cluster.api()
        custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
        for ns in ("a", "b"):
            core.create_namespace({"metadata": {"name": ns}})
        for ns, name in (("a", "r2"), ("b", "other")):
            body = {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": name},
                    "spec": {"model": {"base": "tiny", "backend": "scripted"},
                             "dataset": {"train": "t.jsonl", "test": "t.jsonl"}, "store": {"pvc": "x"}}}
            created = custom.create_namespaced_custom_object("agentq.dev", "v1alpha1", ns, "agentqrounds", body)
            custom.replace_namespaced_custom_object_status(
                "agentq.dev", "v1alpha1", ns, "agentqrounds", name,
                {**created, "status": TRAINING["status"]})
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "r2-collect-0-r0", "labels": {"agentq.dev/round": "r2", UNIT_LABEL: "collect-0"}},
               "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                   {"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}
        batch.create_namespaced_job("a", job)
        testenv.finish_job(api, "a", "r2-collect-0-r0", succeeded=True)
        campaign = {**CAMPAIGN, "apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQCampaign",
                    "metadata": {"name": "learn"}}
        created = custom.create_namespaced_custom_object("agentq.dev", "v1alpha1", "a", "agentqcampaigns",
                                                         {k: v for k, v in campaign.items() if k != "status"})
        custom.replace_namespaced_custom_object_status("agentq.dev", "v1alpha1", "a", "agentqcampaigns", "learn",
                                                       {**created, "status": CAMPAIGN["status"]})

        reader = StoreReader(dashboard_store.build(tmp_path / "store"), ttl=0)
        everywhere = ClusterRounds(Kube(api), reader)
        assert [(r["name"], r["namespace"]) for r in everywhere.rounds()] == [("other", "b"), ("r2", "a")]
        one = ClusterRounds(Kube(api), reader, "a")
        r2 = one.round("r2")
        assert r2["phase"] == "Training" and [s["state"] for s in r2["steps"]][:3] == ["Succeeded"] * 2 + ["Running"]
        collect = r2["steps"][0]
        assert collect["startTime"] is not None and collect["seconds"] is not None  # from the real Job's status
        assert collect["gpuHours"] == 0.0  # one GPU, but the test's Job started and finished in the same second
        assert [r["name"] for r in one.rounds()] == ["r2"]
        with pytest.raises(NotFound, match="no AgentQRound 'other' in namespace a"):
            one.round("other")
        (learn,) = one.campaigns()
        assert learn["currentRound"] == "r2" and learn["learningCurve"][0]["passRate"] == 0.3
    finally:
        cluster.stop()
