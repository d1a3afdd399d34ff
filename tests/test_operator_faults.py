"""The operator under faults, on a real kube-apiserver + etcd + kube-controller-manager (tests/testenv.py), run
as separate `kopf run` processes: each test puts the cluster in the state a fault leaves (a crash right after
a PATCH, a restarted API server, a quota, a deleted object, a dead replica) and checks the operator converges
from what it reads. Each one failed on the operator that trusted its own records (issue 24)."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_operator_cluster import (  # noqa: F401 - cluster and operator are the module fixtures used here too
    OPERATOR_CONFIG,
    REPO,
    Harness,
    cluster,
    operator,
    small_round,
    wait_for,
)
from testenv import LocalCluster, Operator, require, start_job

from controller.inference import build_server
from controller.jobs import SUSPENDED_ANNOTATION, suspend_patch
from controller.settings import OperatorSettings

pytestmark = pytest.mark.cluster
CONFIG = OPERATOR_CONFIG


@pytest.fixture
def h(cluster: LocalCluster, operator: Operator,  # noqa: F811 - the fixtures imported above
      request: pytest.FixtureRequest) -> Iterator[Harness]:
    ns = request.node.name.replace("_", "-")[:40].rstrip("-").lower()
    harness = Harness(cluster, operator, ns)
    yield harness
    if operator.proc is None or operator.proc.poll() is not None:
        operator.start()  # a test that failed while the operator was down leaves it running for the next


def annotations(h: Harness, job: str) -> dict:
    return h.batch.read_namespaced_job(job, h.ns).metadata.annotations or {}


def held(h: Harness, job: str) -> bool:
    """Whether the round holds the Job suspended, as the Job itself says (1.20 drops Job.spec.suspend, so the
    annotation written in the same PATCH is what the test server keeps)."""
    return annotations(h, job).get(SUSPENDED_ANNOTATION) == "true"


def metric(name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{CONFIG['metricsPort']}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def quota(h: Harness, name: str, hard: dict) -> None:
    """A ResourceQuota, waited for until the quota controller has counted its usage (admission needs that)."""
    h.core.create_namespaced_resource_quota(h.ns, {"metadata": {"name": name}, "spec": {"hard": hard}})
    wait_for(lambda: (h.core.read_namespaced_resource_quota(name, h.ns).status.hard or {}) and
             h.core.read_namespaced_resource_quota(name, h.ns).status.used is not None, f"quota {name} counted")


# --- 1. suspend ---------------------------------------------------------------------------------------------


def test_suspend_flapping_under_conflicting_status_writes_converges(h: Harness):
    h.apply(small_round("flap"))
    jobs = ["flap-collect-0", "flap-collect-1"]
    h.wait_jobs("flap", jobs)
    h.wait_phase("flap", "Collecting")
    stop = threading.Event()

    def conflicting_writes() -> None:  # another writer of the status: the operator's writes meet 409s
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(Exception):  # a racing write of ours may fail too; keep writing
                h.custom.patch_namespaced_custom_object_status("agentq.dev", "v1alpha1", h.ns, "agentqrounds", "flap",
                                                               {"status": {"noise": i}})
            time.sleep(0.01)

    writer = threading.Thread(target=conflicting_writes, daemon=True)
    writer.start()
    try:
        for final in (False, True):
            for value in (True, False, True, False, True, False)[: 5 if final else 6]:
                h.patch_spec("flap", {"suspend": value})
                time.sleep(0.05)
            h._wait(lambda f=final: all(held(h, j) == f for j in jobs), f"every Job held={final}", 30)
            time.sleep(1.0)  # and it stays so: no late flip from a stale record
            assert [held(h, j) for j in jobs] == [final, final]
    finally:
        stop.set()
        writer.join()
    status = h.wait_phase("flap", "Suspended")
    h._wait(lambda: h.status("flap").get("suspendedJobs") == jobs, "suspendedJobs to list both", 20)
    h.patch_spec("flap", {"suspend": False})
    h._wait(lambda: not any(held(h, j) for j in jobs), "both Jobs resumed", 20)
    assert h.wait_phase("flap", "Collecting")["suspendedJobs"] == [] and status["step"] == "collect"


def test_a_crash_right_after_a_suspend_patch_resumes_the_job(h: Harness):
    h.apply(small_round("lazarus"))
    h.wait_jobs("lazarus", ["lazarus-collect-0", "lazarus-collect-1"])
    h.wait_phase("lazarus", "Collecting")
    h.operator.kill()
    # What the dead operator had done: spec.suspend was true for a moment, it PATCHed the Job, and died before
    # its status write; meanwhile the user set suspend back to false.
    h.batch.patch_namespaced_job("lazarus-collect-0", h.ns, suspend_patch(True))
    assert held(h, "lazarus-collect-0") and not h.status("lazarus").get("suspendedJobs")
    h.operator.start()
    h._wait(lambda: not held(h, "lazarus-collect-0"), "the Job resumed by the restarted operator", 60)
    wait_for(lambda: ("Normal", "JobResumed") in h.events("lazarus"), "a JobResumed event")
    h.finish("lazarus-collect-0", {})
    h.finish("lazarus-collect-1", {})
    h.wait_jobs("lazarus", ["lazarus-preferences"])


# --- 2. a dropped connection ---------------------------------------------------------------------------------


def test_an_api_server_restart_costs_seconds_not_a_minute(h: Harness):
    h.apply(small_round("outage"))
    h.wait_jobs("outage", ["outage-collect-0", "outage-collect-1"])
    h.wait_phase("outage", "Collecting")
    # A round whose pods a quota refuses, in a namespace of its own: its resync passes read the Job controller's
    # events, so they meet the outage (a round whose Jobs run reads only caches until one of them ends).
    starved = Harness(h.cluster, h.operator, f"{h.ns}-starved")
    quota(starved, "no-pods", {"pods": "0"})
    starved.apply(small_round("starved"))
    starved.wait_condition("starved", "Blocked", "QuotaExceeded", timeout=CONFIG["resyncSeconds"] * 2 + 10)
    watch_errors, pass_errors = metric("agentq_operator_watch_errors_total"), metric(
        'agentq_operator_reconcile_errors_total{code="connection"}')
    h.cluster.restart_apiserver(down_s=CONFIG["resyncSeconds"] * 2)  # every resync pass meets it at least once
    back = time.monotonic()
    h.finish("outage-collect-0", {})
    h.finish("outage-collect-1", {})
    h.wait_jobs("outage", ["outage-preferences"], timeout=CONFIG["resyncSeconds"] + 10)
    took = time.monotonic() - back
    assert took < CONFIG["resyncSeconds"] + 5, f"the next Job came {took:.1f}s after the API server was back"
    assert metric("agentq_operator_watch_errors_total") > watch_errors
    assert metric('agentq_operator_reconcile_errors_total{code="connection"}') > pass_errors
    assert "will try again in 60 seconds" not in h.operator.output()


# --- 3. the inference server's Service -----------------------------------------------------------------------


def test_a_crash_between_the_servers_deployment_and_service(h: Harness):
    from kubernetes import client

    apps = client.AppsV1Api(h.api)
    name, server = "halfway", "halfway-infer-collect"
    round_doc = small_round(name, model={"backend": "scripted", "base": "tiny", "server": {"vllm": {}}})
    h.operator.kill()
    h.apply(round_doc)
    # What the dead operator had made: the Deployment (available), and not yet its Service. A quota on
    # Services keeps the restarted operator from making it at once, so the test sees what it does meanwhile.
    quota(h, "no-services", {"services": "0"})
    body = h.round(name)
    deployment = build_server(body, "collect", OperatorSettings.model_validate(CONFIG))[0]
    apps.create_namespaced_deployment(h.ns, deployment)
    apps.patch_namespaced_deployment_status(server, h.ns, {"status": {
        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}})
    h.operator.start()
    blocked = h.wait_condition(name, "Blocked", "InferenceServerCreateFailed", timeout=60)
    assert f"creating the inference server's Service {server} was refused" in blocked["message"]
    assert "exceeded quota: no-services" in blocked["message"]
    ready = h.condition(name, "InferenceServerReady")
    assert ready["status"] == "False", ready
    wait_for(lambda: ("Warning", "InferenceServerCreateFailed") in h.events(name), "a Warning event")
    time.sleep(1.0)
    assert h.jobs(name) == []  # no collect Job pointed at a server nobody can reach
    h.core.delete_namespaced_resource_quota("no-services", h.ns)
    h.wait_jobs(name, [f"{name}-collect-0", f"{name}-collect-1"], timeout=40)
    assert server in [s.metadata.name for s in h.core.list_namespaced_service(h.ns).items]
    assert h.condition(name, "InferenceServerReady")["status"] == "True"


def test_a_server_name_that_is_not_a_dns_label_is_blocked_not_raised(h: Harness):
    name = "7b-served"  # a valid round name; a Service name must start with a letter (DNS-1035)
    h.apply(small_round(name, model={"backend": "scripted", "base": "tiny", "server": {"vllm": {}}}))
    blocked = h.wait_condition(name, "Blocked", "InferenceServerCreateFailed")
    assert "Service 7b-served-infer-collect" in blocked["message"] and "DNS-1035" in blocked["message"]
    assert h.condition(name, "InferenceServerReady")["status"] == "False" and h.jobs(name) == []
    assert "Traceback" not in h.operator.output()


# --- 4. a quota that refuses the step's pods ----------------------------------------------------------------


def test_a_quota_that_refuses_pods_blocks_the_round_with_its_message(h: Harness):
    quota(h, "no-pods", {"pods": "0"})
    h.apply(small_round("starved"))
    h.wait_jobs("starved", ["starved-collect-0", "starved-collect-1"])
    blocked = h.wait_condition("starved", "Blocked", "QuotaExceeded", timeout=CONFIG["resyncSeconds"] * 2 + 10)
    assert "Job starved-collect-0 cannot create its pod" in blocked["message"]
    assert "exceeded quota: no-pods" in blocked["message"]
    wait_for(lambda: ("Warning", "QuotaExceeded") in h.events("starved"), "a QuotaExceeded warning")
    assert h.status("starved")["phase"] == "Collecting"


# --- 5. a deleted spec ConfigMap -----------------------------------------------------------------------------


def test_a_deleted_spec_configmap_is_made_again_before_the_next_job(h: Harness):
    h.apply(small_round("amnesia"))
    h.wait_jobs("amnesia", ["amnesia-collect-0", "amnesia-collect-1"])
    original = h.core.read_namespaced_config_map("amnesia-spec", h.ns)
    h.core.delete_namespaced_config_map("amnesia-spec", h.ns)

    def again() -> object:
        items = h.core.list_namespaced_config_map(h.ns, field_selector="metadata.name=amnesia-spec").items
        return items and items[0].metadata.uid != original.metadata.uid and items[0]

    made = h._wait(again, "the spec ConfigMap made again", 20)
    assert made.data == original.data and made.metadata.owner_references[0].kind == "AgentQRound"
    h.core.delete_namespaced_config_map("amnesia-spec", h.ns)  # gone again just as the stage ends
    h.finish("amnesia-collect-0", {})
    h.finish("amnesia-collect-1", {})
    h.wait_jobs("amnesia", ["amnesia-preferences"])
    cm = h.core.read_namespaced_config_map("amnesia-spec", h.ns)
    job = h.batch.read_namespaced_job("amnesia-preferences", h.ns)
    assert cm.metadata.creation_timestamp <= job.metadata.creation_timestamp and cm.data == original.data


# --- 6. campaigns and cleanup ------------------------------------------------------------------------------


def campaign(h: Harness, name: str) -> dict:
    return h.custom.get_namespaced_custom_object("agentq.dev", "v1alpha1", h.ns, "agentqcampaigns", name)


def test_campaign_faults_are_decisions_a_person_can_see(h: Harness):
    template = small_round("x")["spec"]
    template["evaluate"] = {"shards": 1, "modes": ["full_rewrite"], "baseline": False}
    h.apply({"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQCampaign", "metadata": {"name": "blind"},
             "spec": {"rounds": 3, "template": template}})
    status = wait_for(lambda: (campaign(h, "blind").get("status") or {}).get("phase") == "Failed"
                      and campaign(h, "blind")["status"], "the campaign without a baseline refused")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "evaluate.baseline must be true" in failed["message"]
    template["evaluate"]["baseline"] = True
    h.apply({"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQCampaign", "metadata": {"name": "pruned"},
             "spec": {"rounds": 3, "template": template}})
    h._wait(lambda: "pruned-r1" in h.jobs("pruned-r1")[0] if h.jobs("pruned-r1") else False, "round 1's Jobs", 30)
    h.cluster.kubectl("delete", "agentqround", "pruned-r1", "-n", h.ns, "--wait=true", "--timeout=30s")
    status = wait_for(lambda: (campaign(h, "pruned").get("status") or {}).get("phase") == "Failed"
                      and campaign(h, "pruned")["status"], "the campaign to stop on the deleted round")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RoundDeleted" and "pruned-r1 was deleted" in failed["message"]
    events = h.core.list_namespaced_event(h.ns, field_selector="involvedObject.name=pruned").items
    assert ("Warning", "RoundDeleted") in [(e.type, e.reason) for e in events]
    time.sleep(1.0)
    names = [r["metadata"]["name"] for r in h.custom.list_namespaced_custom_object(
        "agentq.dev", "v1alpha1", h.ns, "agentqrounds")["items"]]
    assert "pruned-r1" not in names  # not quietly made again


def test_a_failed_cleanup_is_reported_not_counted_as_done(h: Harness):
    h.apply(small_round("scrub", deleteArtifacts=True))
    h.wait_jobs("scrub", ["scrub-collect-0", "scrub-collect-1"])
    h.cluster.kubectl("delete", "agentqround", "scrub", "-n", h.ns, "--wait=true", "--timeout=30s")
    wait_for(lambda: h.jobs("scrub") == ["scrub-cleanup"], "only the cleanup Job to remain")
    h.finish("scrub-cleanup", ok=False, logs="AccessDenied: s3:DeleteObject")
    wait_for(lambda: ("Warning", "CleanupFailed") in h.events("scrub-cleanup"), "a Warning on the cleanup Job")
    h.apply(small_round("scrub"))
    blocked = h.wait_condition("scrub", "Blocked", "CleanupFailed")
    assert "scrub-cleanup failed to delete the artifacts" in blocked["message"]
    assert h.status("scrub")["phase"] == "Pending"
    time.sleep(1.0)
    assert h.jobs("scrub") == ["scrub-cleanup"]  # not started over possibly stale artifacts
    h.batch.delete_namespaced_job("scrub-cleanup", h.ns, propagation_policy="Background")
    h.wait_jobs("scrub", ["scrub-collect-0", "scrub-collect-1"], timeout=30)


# --- 7. failover ---------------------------------------------------------------------------------------------


def peered(local: LocalCluster, workdir: Path, name: str, priority: int) -> Operator:
    config = {k: v for k, v in CONFIG.items() if k != "metricsPort"}
    return Operator(local.kubeconfig, workdir, config=config, name=name,
                    args=("--peering", "agentq", "--priority", str(priority)))


def test_failover_under_15s_and_replicas_started_together_never_both_act(tmp_path: Path):
    require()
    local = LocalCluster(tmp_path / "peering-cluster", controllers=True).start()
    replicas: list[Operator] = []
    try:
        for manifest in ("crd.yaml", "campaign-crd.yaml", "peering.yaml"):
            local.kubectl("apply", "-f", str(REPO / "manifests" / manifest))
        local.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev",
                      "crd/agentqrounds.agentq.dev", "--timeout=30s")
        local.kubectl("apply", "-f", str(REPO / "manifests" / "peering-object.yaml"))
        first = peered(local, tmp_path, "first", 100)
        h = Harness(local, first, "peers")
        h.apply(small_round("relay"))  # there before either replica: both see it the moment they start
        replicas += [first.start(), peered(local, tmp_path, "second", 50).start()]
        first, second = replicas
        h.wait_jobs("relay", ["relay-collect-0", "relay-collect-1"], timeout=60)
        time.sleep(3.0)
        assert "acting on round" in first.output()
        assert "acting on round" not in second.output(), second.output()[-3000:]
        h.finish("relay-collect-0", {})
        h.finish("relay-collect-1", {})
        h.wait_jobs("relay", ["relay-preferences"])
        start_job(h.api, h.ns, "relay-preferences")
        time.sleep(2.0)
        first.kill()  # no goodbye: its peering record stays until its lifetime runs out
        killed = time.monotonic()
        h.finish("relay-preferences", {"pairs": 2})
        h.operator = second
        h.wait_jobs("relay", ["relay-train"], timeout=30)
        took = time.monotonic() - killed
        assert took < 15, f"the standby took over after {took:.1f}s"
        assert "acting on round" in second.output()
    finally:
        for replica in replicas:
            replica.stop()
        local.stop()
