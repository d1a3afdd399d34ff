"""The operator against a real kube-apiserver + etcd + kube-controller-manager (Job, TTL-after-finished and
garbage-collector controllers; scripts/testenv.sh builds them), run as a separate `kopf run` process. The
tests play the kubelet (tests/testenv.py pod_ran); most also write the Job status the Job controller would
(finish_job) so they need not wait for it, the tests at the end leave that to the real Job controller."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testenv import LocalCluster, Operator, finish_job, free_port, job_pod, pod_ran, require, start_job

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "manifests" / "examples" / "round-scripted.yaml"
OPERATOR_CONFIG = {"pools": {"inference": {"nodeSelector": {"agentq.dev/pool": "inference"}},
                             "training": {"nodeSelector": {"agentq.dev/pool": "training"}}},
                   "sandboxUrl": "http://agentq-sandbox.agentq-system:8080", "resyncSeconds": 5,
                   "retryBackoffSeconds": 1,
                   "metricsPort": free_port()}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Harness:
    """What a test needs: the cluster, the operator process, and a namespace of its own."""

    def __init__(self, cluster: LocalCluster, operator: Operator, namespace: str) -> None:
        from kubernetes import client

        self.cluster, self.operator, self.ns = cluster, operator, namespace
        self.api = cluster.api()
        self.batch, self.core = client.BatchV1Api(self.api), client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.core.create_namespace({"metadata": {"name": namespace}})

    def apply(self, doc: dict | Path) -> None:
        if isinstance(doc, Path):
            self.cluster.kubectl("apply", "-n", self.ns, "-f", str(doc))
        else:
            self.cluster.kubectl("apply", "-n", self.ns, "-f", "-", stdin=yaml.safe_dump(doc))

    def round(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("agentq.dev", "v1alpha1", self.ns, "agentqrounds", name)

    def status(self, name: str) -> dict:
        return self.round(name).get("status") or {}

    def jobs(self, name: str) -> list[str]:
        items = self.batch.list_namespaced_job(self.ns, label_selector=f"agentq.dev/round={name}").items
        return sorted(j.metadata.name for j in items)

    def _wait(self, check: Callable[[], Any], what: str, timeout: float) -> Any:
        try:
            return wait_for(check, what, timeout)
        except AssertionError as err:  # the operator's log is what explains a timeout
            raise AssertionError(f"{err}\n--- operator log tail ---\n{self.operator.output()[-4000:]}") from None

    def wait_jobs(self, name: str, expected: list[str], timeout: float = 20.0) -> None:
        self._wait(lambda: set(expected) <= set(self.jobs(name)), f"Jobs {expected} of {name}", timeout)

    def wait_phase(self, name: str, phase: str, timeout: float = 20.0) -> dict:
        def reached() -> dict | None:
            status = self.status(name)  # one read: a second could already show a later phase
            return status if status.get("phase") == phase else None

        return self._wait(reached, f"{name} phase {phase}", timeout)

    def finish(self, job: str, result: dict | None = None, *, ok: bool = True, logs: str = "") -> None:
        start_job(self.api, self.ns, job)
        finish_job(self.api, self.ns, job, succeeded=ok, message=json.dumps(result or {}) if ok else logs,
                   controller_pod=self.cluster.controllers)

    def run_pod(self, job: str, result: dict | None = None, *, ok: bool = True, logs: str = "") -> None:
        """Only the kubelet's part: a pod of `job` that ran to its end; the Job controller decides the rest."""
        pod_ran(self.api, self.ns, job, succeeded=ok, message=json.dumps(result or {}) if ok else logs,
                controller_pod=True)

    def pods(self, name: str) -> list[str]:
        return sorted(p.metadata.name for p in
                      self.core.list_namespaced_pod(self.ns, label_selector=f"agentq.dev/round={name}").items)

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason) for e in items]

    def messages(self, name: str, kind: str) -> list[str]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [e.message or "" for e in items if e.type == kind]

    def condition(self, name: str, ctype: str) -> dict:
        return next((c for c in self.status(name).get("conditions") or [] if c["type"] == ctype), {})

    def wait_condition(self, name: str, ctype: str, reason: str, timeout: float = 20.0) -> dict:
        return self._wait(lambda: self.condition(name, ctype) if self.condition(name, ctype).get("status") == "True"
                          and reason in self.condition(name, ctype).get("reason", "") else None,
                          f"{name} condition {ctype}={reason}", timeout)

    def patch_spec(self, name: str, spec: dict) -> None:
        self.custom.patch_namespaced_custom_object("agentq.dev", "v1alpha1", self.ns, "agentqrounds", name,
                                                   {"spec": spec})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    require()
    c = LocalCluster(tmp_path_factory.mktemp("cluster"), controllers=True).start()
    try:
        for manifest in ("crd.yaml", "campaign-crd.yaml"):
            c.kubectl("apply", "-f", str(REPO / "manifests" / manifest))
        c.kubectl("wait", "--for=condition=Established", "crd/agentqrounds.agentq.dev",
                  "crd/agentqcampaigns.agentq.dev", "--timeout=30s")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(cluster.kubeconfig, tmp_path_factory.mktemp("operator"), config=OPERATOR_CONFIG).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def h(cluster: LocalCluster, operator: Operator, request: pytest.FixtureRequest) -> Harness:
    ns = request.node.name.replace("_", "-")[:40].rstrip("-").lower()
    return Harness(cluster, operator, ns)


def small_round(name: str, **spec: Any) -> dict:
    body = {"dataset": {"train": "/artifacts/data/train.jsonl", "test": "/artifacts/data/test.jsonl"},
            "model": {"backend": "scripted", "base": "tiny"}, "collect": {"shards": 2},
            "evaluate": {"shards": 1}, "store": {"pvc": "agentq-artifacts"}}
    body.update(spec)
    return {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound", "metadata": {"name": name}, "spec": body}


def drive_to(h: Harness, name: str, step: str, shards: int = 2) -> None:
    """Finish every Job before `step`, checking the operator creates each next one."""
    order = [[f"{name}-collect-{i}" for i in range(shards)], [f"{name}-preferences"], [f"{name}-train"],
             [f"{name}-merge"], [f"{name}-evaluate-0"], [f"{name}-report"]]
    for stage in order:
        h.wait_jobs(name, stage)
        if stage[0].startswith(f"{name}-{step}"):
            return
        for job in stage:
            h.finish(job, {"pairs": 12} if "preferences" in job else {})


def test_happy_path_through_every_phase(h: Harness):
    h.apply(EXAMPLE)  # exactly as a user would: kubectl apply -f
    name = "scripted-demo"
    seen = [h.wait_phase(name, "Collecting")["phase"]]
    h.wait_jobs(name, [f"{name}-collect-0", f"{name}-collect-1"])
    cm = h.core.read_namespaced_config_map(f"{name}-spec", h.ns)
    assert "name: scripted-demo" in cm.data["round.yaml"]
    job = h.batch.read_namespaced_job(f"{name}-collect-0", h.ns)
    assert job.spec.template.spec.node_selector == {"agentq.dev/pool": "inference"}
    assert job.spec.template.spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert job.metadata.owner_references[0].kind == "AgentQRound"

    steps = [(["collect-0", "collect-1"], {"trajectories": 5}, "Preferences"),
             (["preferences"], {"pairs": 12}, "Training"),
             (["train"], {"rewardAccuracy": 0.75}, "Merging"),
             (["merge"], {}, "Evaluating"),
             (["evaluate-0", "evaluate-1"], {}, "Evaluating"),
             (["report"], {"passRate": {"zero_shot": 0.2, "full_rewrite": 0.4}}, "Succeeded")]
    for units, result, next_phase in steps:
        h.wait_jobs(name, [f"{name}-{u}" for u in units])
        for unit in units:
            h.finish(f"{name}-{unit}", result)
        seen.append(h.wait_phase(name, next_phase)["phase"])
    status = h.wait_phase(name, "Succeeded")
    assert seen == ["Collecting", "Preferences", "Training", "Merging", "Evaluating", "Evaluating", "Succeeded"]
    assert status["results"]["pairs"] == 12 and status["results"]["rewardAccuracy"] == 0.75
    assert status["results"]["passRate"] == {"zero_shot": 0.2, "full_rewrite": 0.4}
    assert status["artifacts"]["merged"] == "pvc://agentq-artifacts/rounds/scripted-demo/merged"
    assert status["completionTime"] and status["startTime"] and status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    expected = [f"{name}-{u}" for u in ("collect-0", "collect-1", "preferences", "train", "merge",
                                        "evaluate-0", "evaluate-1", "report")]
    assert h.jobs(name) == sorted(expected)  # one Job per unit, no duplicates
    wait_for(lambda: {r for _, r in h.events(name)} >= {"Collecting", "Training", "Succeeded"}, "transition events")
    # Every Job is announced by a Normal event that names it: the transition that started its step, or JobCreated
    # for a Job made without one (the report, in the same phase as evaluate).
    named = wait_for(lambda: (words := {w for m in h.messages(name, "Normal") for w in re.split(r"[\s,:]+", m)})
                     >= set(expected) and words, "events naming every Job")
    assert set(expected) <= named
    table = h.cluster.kubectl("get", "agentqrounds", "-n", h.ns).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STEP", "PASS-RATE", "AGE"], table
    assert "Succeeded" in table and "zero_shot=0.20" in table
    short = h.cluster.kubectl("get", "aqr", "-n", h.ns).stdout  # the short name
    assert [line.split()[:4] for line in short.splitlines()] == [line.split()[:4] for line in table.splitlines()]


def test_collect_shard_failing_twice_then_succeeding(h: Harness):
    h.apply(small_round("flaky", backoffLimit=2))
    h.wait_jobs("flaky", ["flaky-collect-0", "flaky-collect-1"])
    h.finish("flaky-collect-1", {})
    h.finish("flaky-collect-0", ok=False, logs="sandbox unreachable")
    h.wait_jobs("flaky", ["flaky-collect-0-r1"])
    h.finish("flaky-collect-0-r1", ok=False, logs="sandbox unreachable")
    h.wait_jobs("flaky", ["flaky-collect-0-r2"])
    assert h.status("flaky")["phase"] == "Collecting"
    h.finish("flaky-collect-0-r2", {})
    h.wait_jobs("flaky", ["flaky-preferences"])
    assert h.jobs("flaky") == ["flaky-collect-0", "flaky-collect-0-r1", "flaky-collect-0-r2", "flaky-collect-1",
                               "flaky-preferences"]
    assert h.wait_phase("flaky", "Preferences")["jobs"]["collect-0"]["attempts"] == 3
    wait_for(lambda: [e for e in h.events("flaky") if e == ("Warning", "JobFailed")], "JobFailed events")


def test_job_failing_past_backoff_limit_fails_the_round(h: Harness):
    h.apply(small_round("doomed", backoffLimit=1))
    h.wait_jobs("doomed", ["doomed-collect-0", "doomed-collect-1"])
    logs = "\n".join(f"line {i}" for i in range(40)) + "\nValueError: task 3 has no tests"
    h.finish("doomed-collect-0", ok=False, logs=logs)
    h.wait_jobs("doomed", ["doomed-collect-0-r1"])
    h.finish("doomed-collect-0-r1", ok=False, logs=logs)
    status = h.wait_phase("doomed", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "JobFailed"
    assert "Job doomed-collect-0-r1 failed after 2 attempt(s)" in failed["message"]
    assert "BackoffLimitExceeded" in failed["message"] and "exit code 1" in failed["message"]
    assert "ValueError: task 3 has no tests" in failed["message"] and "line 5\n" not in failed["message"]
    time.sleep(1.0)
    assert "doomed-collect-0-r2" not in h.jobs("doomed") and "doomed-preferences" not in h.jobs("doomed")
    assert ("Warning", "Failed") in wait_for(lambda: h.events("doomed"), "events")


def test_operator_killed_and_restarted_during_training(h: Harness):
    h.apply(small_round("phoenix"))
    drive_to(h, "phoenix", "train")
    h.wait_phase("phoenix", "Training")
    h.operator.kill()
    # The train Job finishes while no operator is watching: its event is missed for good.
    h.finish("phoenix-train", {"rewardAccuracy": 0.6})
    h.operator.start()
    h.wait_jobs("phoenix", ["phoenix-merge"], timeout=60)
    assert h.wait_phase("phoenix", "Merging")["results"]["rewardAccuracy"] == 0.6
    assert h.jobs("phoenix") == ["phoenix-collect-0", "phoenix-collect-1", "phoenix-merge", "phoenix-preferences",
                                 "phoenix-train"]


def test_invalid_round_rejected_by_the_api_server(h: Harness):
    bad = small_round("bad-shards", collect={"shards": 0})
    bad["spec"]["model"]["backend"] = "gpt"
    out = h.cluster.kubectl("apply", "-n", h.ns, "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert out.returncode != 0
    assert "spec.collect.shards" in out.stderr and "should be greater than or equal to 1" in out.stderr
    assert 'Unsupported value: "gpt"' in out.stderr
    no_store = small_round("no-store")
    del no_store["spec"]["store"]
    out = h.cluster.kubectl("apply", "-n", h.ns, "-f", "-", stdin=yaml.safe_dump(no_store), check=False)
    assert out.returncode != 0 and 'missing required field "store"' in out.stderr  # kubectl, from the schema
    out = h.cluster.kubectl("apply", "--validate=false", "-n", h.ns, "-f", "-", stdin=yaml.safe_dump(no_store),
                            check=False)
    assert out.returncode != 0 and "spec.store: Required value" in out.stderr  # and the API server itself
    both = small_round("two-stores", store={"pvc": "a", "path": "/b"})
    out = h.cluster.kubectl("apply", "-n", h.ns, "-f", "-", stdin=yaml.safe_dump(both), check=False)
    assert out.returncode != 0 and "spec.store" in out.stderr and "oneOf" in out.stderr, out.stderr
    # What a schema cannot say about metadata.name, the operator says in a condition.
    h.apply(small_round("dotted.name"))
    status = h.wait_phase("dotted.name", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "metadata.name" in failed["message"]
    assert h.jobs("dotted.name") == []


def test_suspend_and_resume(h: Harness):
    h.apply(small_round("napper", suspend=True))
    h.wait_phase("napper", "Suspended")
    time.sleep(1.0)
    assert h.jobs("napper") == []
    h.custom.patch_namespaced_custom_object("agentq.dev", "v1alpha1", h.ns, "agentqrounds", "napper",
                                            {"spec": {"suspend": False}})
    h.wait_jobs("napper", ["napper-collect-0", "napper-collect-1"])
    h.wait_phase("napper", "Collecting")
    # suspended mid-step: the running Jobs are suspended too (Job.spec.suspend; the 1.20 test server drops
    # the field, so the events are what shows it), and no next step starts
    h.custom.patch_namespaced_custom_object("agentq.dev", "v1alpha1", h.ns, "agentqrounds", "napper",
                                            {"spec": {"suspend": True}})
    h.wait_phase("napper", "Suspended")
    wait_for(lambda: [e for e in h.events("napper") if e == ("Normal", "JobSuspended")][1:], "two JobSuspended")
    h.finish("napper-collect-0", {})
    h.finish("napper-collect-1", {})
    time.sleep(1.5)
    assert "napper-preferences" not in h.jobs("napper")
    h.custom.patch_namespaced_custom_object("agentq.dev", "v1alpha1", h.ns, "agentqrounds", "napper",
                                            {"spec": {"suspend": False}})
    h.wait_jobs("napper", ["napper-preferences"])
    assert h.wait_phase("napper", "Preferences")["observedGeneration"] == 4


def test_delete_removes_the_jobs(h: Harness):
    h.apply(small_round("goner"))
    h.wait_jobs("goner", ["goner-collect-0", "goner-collect-1"])
    h.finish("goner-collect-0", {})
    h.cluster.kubectl("delete", "agentqround", "goner", "-n", h.ns, "--wait=true", "--timeout=30s")
    wait_for(lambda: h.jobs("goner") == [], "the round's Jobs to be gone")
    names = [c.metadata.name for c in h.core.list_namespaced_config_map(h.ns).items]
    assert "goner-spec" not in names
    # Artifacts stay unless the round asks otherwise; then a cleanup Job outlives the round.
    h.apply(small_round("wiper", deleteArtifacts=True))
    h.wait_jobs("wiper", ["wiper-collect-0", "wiper-collect-1"])
    h.cluster.kubectl("delete", "agentqround", "wiper", "-n", h.ns, "--wait=true", "--timeout=30s")
    wait_for(lambda: h.jobs("wiper") == ["wiper-cleanup"], "only the cleanup Job to remain")
    cleanup = h.batch.read_namespaced_job("wiper-cleanup", h.ns)
    assert cleanup.spec.template.spec.containers[0].command[:3] == ["agentq", "round", "clean"]
    cm = h.core.read_namespaced_config_map("wiper-cleanup", h.ns)
    assert cm.metadata.owner_references[0].uid == cleanup.metadata.uid and "name: wiper" in cm.data["round.yaml"]


def test_chained_round_waits_for_its_predecessor(h: Harness):
    h.apply(small_round("second", model={"backend": "scripted", "base": "tiny", "fromRound": "first"}))
    status = h.wait_phase("second", "Pending")
    assert "waiting for round first to succeed (it does not exist)" in status["conditions"][0]["message"]
    h.apply(small_round("first"))
    drive_to(h, "first", "report")
    wait_for(lambda: "first to succeed (it is" in h.status("second")["conditions"][0]["message"],
             "second to see first running")
    assert h.jobs("second") == []
    h.finish("first-report", {"passRate": {"full_rewrite": 0.5}})
    h.wait_phase("first", "Succeeded")
    h.wait_jobs("second", ["second-collect-0", "second-collect-1"])
    h.wait_phase("second", "Collecting")


def test_operator_under_its_own_rbac_role(tmp_path: Path):
    require()
    cluster = LocalCluster(tmp_path / "rbac-cluster", rbac=True).start()
    op = standby = None
    try:
        for manifest in ("crd.yaml", "campaign-crd.yaml", "peering.yaml", "rbac.yaml"):
            cluster.kubectl("apply", "-f", str(REPO / "manifests" / manifest))
        cluster.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=30s")
        cluster.kubectl("apply", "-f", str(REPO / "manifests" / "peering-object.yaml"))
        sa = "system:serviceaccount:agentq-system:agentq-operator"
        assert cluster.kubectl("auth", "can-i", "create", "jobs", f"--as={sa}", "-A", check=False).stdout.strip() \
            == "yes"
        for verb, what in (("get", "secrets"), ("create", "pods"), ("delete", "agentqrounds")):
            assert cluster.kubectl("auth", "can-i", verb, what, f"--as={sa}", "-A", check=False).stdout.strip() \
                == "no"
        # Two replicas on one machine: only one of them can have the metrics port.
        config = {k: v for k, v in OPERATOR_CONFIG.items() if k != "metricsPort"}
        op = Operator(cluster.operator_kubeconfig, tmp_path, config=config,
                      args=("--peering", "agentq", "--priority", "100")).start()
        wait_for(lambda: "Resuming operations" in op.output(), "the operator to join the peering", 30)
        # A second replica (a rolling update's new pod) with a lower priority must stand by, not act, until
        # the first one goes away. Started together, kopf lets each act until it has seen the other.
        standby = Operator(cluster.operator_kubeconfig, tmp_path, config=config, name="standby",
                           args=("--peering", "agentq", "--priority", "50")).start()
        h = Harness(cluster, op, "rbac")
        wait_for(lambda: len(h.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                                 "agentq").get("status") or {}) == 2,
                 "both replicas in the peering object", 30)
        h.apply(small_round("guarded"))
        h.wait_jobs("guarded", ["guarded-collect-0", "guarded-collect-1"], timeout=60)
        h.finish("guarded-collect-0", {})
        h.finish("guarded-collect-1", {"trajectories": 2})
        h.wait_jobs("guarded", ["guarded-preferences"])
        assert h.wait_phase("guarded", "Preferences")["jobs"]["collect-1"]["result"] == {"trajectories": 2}
        wait_for(lambda: ("Normal", "Collecting") in h.events("guarded"), "events posted under RBAC")
        assert "acting on round" in op.output() and "acting on round" not in standby.output()
        # A rolling update stops the active replica: the standby takes over and carries the round on.
        op.stop()
        wait_for(lambda: "Resuming operations" in standby.output(), "the standby to take over", 30)
        h.operator = standby
        h.finish("guarded-preferences", {"pairs": 4})
        h.wait_jobs("guarded", ["guarded-train"], timeout=30)
        cluster.kubectl("delete", "agentqround", "guarded", "-n", "rbac", "--timeout=30s")
        wait_for(lambda: h.jobs("guarded") == [], "Jobs deleted under RBAC")
        for replica in (op, standby):
            assert "Forbidden" not in replica.output() and " 403" not in replica.output(), replica.output()[-3000:]
    finally:
        for replica in (op, standby):
            if replica:
                replica.stop()
        cluster.stop()


# --- durable outcomes, frozen specs, problems a person must fix -------------------------------------------


def test_deleting_a_finished_job_neither_reruns_its_step_nor_moves_the_phase_back(h: Harness):
    h.apply(small_round("keeper"))
    drive_to(h, "keeper", "train")
    h.wait_phase("keeper", "Training")
    # A TTL controller (or a person) removes the finished collect Job while the round trains.
    h.batch.delete_namespaced_job("keeper-collect-0", h.ns, propagation_policy="Background")
    wait_for(lambda: ("Warning", "JobDeleted") in h.events("keeper"), "a JobDeleted warning")
    time.sleep(1.0)
    status = h.status("keeper")
    assert status["phase"] == "Training" and status["jobs"]["collect-0"]["state"] == "Succeeded"
    assert "keeper-collect-0" not in h.jobs("keeper")
    h.finish("keeper-train", {"rewardAccuracy": 0.7})
    h.wait_jobs("keeper", ["keeper-merge"])
    assert h.wait_phase("keeper", "Merging")["results"]["rewardAccuracy"] == 0.7


def test_a_mid_round_edit_is_reported_and_not_mixed_into_the_round(h: Harness):
    h.apply(small_round("steady"))
    drive_to(h, "steady", "preferences")
    h.wait_phase("steady", "Preferences")
    h.patch_spec("steady", {"collect": {"shards": 3}})
    changed = h.wait_condition("steady", "SpecChanged", "SpecChanged")
    assert "spec.collect changed after the round started" in changed["message"] and changed["observedGeneration"] == 2
    assert h.status("steady")["phase"] == "Preferences" and "steady-collect-2" not in h.jobs("steady")
    wait_for(lambda: ("Warning", "SpecChanged") in h.events("steady"), "a SpecChanged warning")
    h.finish("steady-preferences", {"pairs": 3})
    h.wait_jobs("steady", ["steady-train"])
    train = h.batch.read_namespaced_job("steady-train", h.ns)
    first = h.batch.read_namespaced_job("steady-collect-0", h.ns)
    assert train.metadata.annotations["agentq.dev/spec-hash"] == first.metadata.annotations["agentq.dev/spec-hash"]
    cm = h.core.read_namespaced_config_map("steady-spec", h.ns)
    assert "shards: 2" in cm.data["round.yaml"] and "shards: 3" not in cm.data["round.yaml"]


def test_a_refused_job_create_shows_the_api_servers_reason(h: Harness):
    h.apply(small_round("refused", placement={"inference": {"nodeSelector": {"pool": "gpu nodes"}}}))
    blocked = h.wait_condition("refused", "Blocked", "JobCreateFailed")
    assert "creating Job refused-collect-0 was refused" in blocked["message"]
    assert "Invalid value" in blocked["message"] and "gpu nodes" in blocked["message"]
    wait_for(lambda: ("Warning", "JobCreateFailed") in h.events("refused"), "a JobCreateFailed warning")
    assert h.jobs("refused") == []


def test_an_unschedulable_pod_is_reported_within_one_resync(h: Harness):
    h.apply(small_round("unplaced"))
    h.wait_jobs("unplaced", ["unplaced-collect-0", "unplaced-collect-1"])
    start_job(h.api, h.ns, "unplaced-collect-0")
    job_pod(h.api, h.ns, "unplaced-collect-0", {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}, controller_pod=True)
    blocked = h.wait_condition("unplaced", "Blocked", "Unschedulable", timeout=OPERATOR_CONFIG["resyncSeconds"] + 10)
    assert "Insufficient nvidia.com/gpu" in blocked["message"]
    assert h.status("unplaced")["phase"] == "Collecting"


def test_a_look_alike_job_is_never_adopted(h: Harness):
    impostor = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "mimic-collect-0", "labels": {
                    "agentq.dev/round": "mimic", "agentq.dev/unit": "collect-0", "agentq.dev/attempt": "0"}},
                "spec": {"template": {"spec": {"restartPolicy": "Never",
                                               "containers": [{"name": "x", "image": "busybox:1"}]}}}}
    h.batch.create_namespaced_job(h.ns, impostor)
    h.finish("mimic-collect-0", {"trajectories": 999})
    h.apply(small_round("mimic"))
    blocked = h.wait_condition("mimic", "Blocked", "ForeignJob")
    assert "mimic-collect-0 exists but is not owned by this round" in blocked["message"]
    status = h.status("mimic")
    assert status["phase"] == "Collecting" and "collect-0" not in status["jobs"]
    assert "trajectories" not in status.get("results", {})


def test_a_round_recreated_during_its_cleanup_waits_for_it(h: Harness):
    h.apply(small_round("again", deleteArtifacts=True))
    h.wait_jobs("again", ["again-collect-0", "again-collect-1"])
    h.cluster.kubectl("delete", "agentqround", "again", "-n", h.ns, "--wait=true", "--timeout=30s")
    wait_for(lambda: h.jobs("again") == ["again-cleanup"], "only the cleanup Job to remain")
    h.apply(small_round("again"))
    pending = h.wait_phase("again", "Pending")
    assert "again-cleanup is still deleting the artifacts" in pending["conditions"][0]["message"]
    time.sleep(1.0)
    assert h.jobs("again") == ["again-cleanup"]
    h.finish("again-cleanup", {})
    h.wait_jobs("again", ["again-collect-0", "again-collect-1"])


def test_operator_metrics_count_rounds_jobs_and_passes(h: Harness):
    import urllib.request

    def scrape() -> dict[str, float]:
        url = f"http://127.0.0.1:{OPERATOR_CONFIG['metricsPort']}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line and not line.startswith("#")}

    before = scrape().get('agentq_operator_jobs_created_total{step="collect"}', 0.0)
    h.apply(small_round("counted"))
    drive_to(h, "counted", "preferences")
    h.wait_phase("counted", "Preferences")
    after = wait_for(lambda: (m := scrape()).get('agentq_operator_rounds{phase="Preferences"}', 0) >= 1 and m,
                     "the round counted in its phase")
    assert after['agentq_operator_jobs_created_total{step="collect"}'] - before == 2
    assert after["agentq_operator_reconcile_seconds_count"] > 0 and "agentq_operator_rounds_blocked" in after


def test_a_two_round_campaign_on_the_cluster(h: Harness):
    template = small_round("x")["spec"]
    template["evaluate"]["modes"] = ["full_rewrite"]
    h.apply({"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQCampaign", "metadata": {"name": "climb"},
             "spec": {"rounds": 2, "stop": {"patience": 2}, "template": template}})
    campaign = lambda: h.custom.get_namespaced_custom_object(  # noqa: E731
        "agentq.dev", "v1alpha1", h.ns, "agentqcampaigns", "climb").get("status") or {}
    for index, rate in ((1, 0.3), (2, 0.4)):
        name = f"climb-r{index}"
        wait_for(lambda n=name: n in [r["metadata"]["name"] for r in h.custom.list_namespaced_custom_object(
            "agentq.dev", "v1alpha1", h.ns, "agentqrounds")["items"]], f"the campaign to create {name}")
        if index == 2:
            assert h.round(name)["spec"]["model"]["fromRound"] == "climb-r1"
        drive_to(h, name, "report")
        h.finish(f"{name}-report", {"passRate": {"full_rewrite": rate}, "deltaPassAt1": {"full_rewrite": 0.1}})
        h.wait_phase(name, "Succeeded")
    status = wait_for(lambda: campaign() if campaign().get("phase") == "Succeeded" else None, "the campaign to end")
    assert [p["passRate"] for p in status["learningCurve"]] == [0.3, 0.4]
    assert status["bestPassRate"] == "full_rewrite=0.40"
    table = h.cluster.kubectl("get", "aqc", "-n", h.ns).stdout
    assert table.splitlines()[0].split() == ["NAME", "PHASE", "ROUND", "BEST", "AGE"], table
    assert "climb-r2" in table and "Succeeded" in table


def test_a_served_round_starts_awaits_uses_and_removes_its_inference_server(h: Harness):
    """model.server.vllm: the stage's server (Deployment + Service) comes first, its Jobs wait until it is
    available, run without a GPU pointed at its Service, and the server goes when the stage ends. No kubelet
    here: the test marks the Deployment available as the Deployment controller would."""
    from kubernetes import client

    apps = client.AppsV1Api(h.api)
    name = "served"
    server = {"vllm": {"gpus": 2, "readyTimeoutSeconds": 600}}
    h.apply(small_round(name, model={"backend": "scripted", "base": "tiny", "server": server}))

    def deployments() -> list[str]:
        return sorted(d.metadata.name for d in apps.list_namespaced_deployment(h.ns).items)

    def services() -> list[str]:
        return sorted(s.metadata.name for s in h.core.list_namespaced_service(h.ns).items)

    def available(deployment: str) -> None:
        apps.patch_namespaced_deployment_status(deployment, h.ns, {"status": {
            "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}})

    def condition(status: str, reason: str) -> dict:
        return h._wait(lambda: (c := h.condition(name, "InferenceServerReady")).get("status") == status
                       and c.get("reason") == reason and c, f"InferenceServerReady {status}/{reason}", 20)

    for stage, units in (("collect", ["collect-0", "collect-1"]), ("evaluate", ["evaluate-0"])):
        server_name = f"{name}-infer-{stage}"
        h._wait(lambda s=server_name: s in deployments() and s in services(), f"server {server_name}", 20)
        dep = apps.read_namespaced_deployment(server_name, h.ns)
        args = dep.spec.template.spec.containers[0].args
        assert "--enable-prefix-caching" in args and args[args.index("--tensor-parallel-size") + 1] == "2"
        assert dep.spec.template.spec.containers[0].resources.limits == {"nvidia.com/gpu": "2"}
        assert dep.spec.template.spec.node_selector == {"agentq.dev/pool": "inference"}
        waiting = condition("False", "Starting")
        assert server_name in waiting["message"]
        time.sleep(1.0)  # a pass or two: the stage's Jobs must still wait for the server
        assert not any(j.startswith(f"{name}-{stage}") for j in h.jobs(name)), h.jobs(name)
        available(server_name)
        h.wait_jobs(name, [f"{name}-{u}" for u in units])
        assert server_name in condition("True", "Ready")["message"]
        for unit in units:
            c = h.batch.read_namespaced_job(f"{name}-{unit}", h.ns).spec.template.spec.containers[0]
            env = {e.name: e.value for e in c.env}
            assert env["AGENTQ_INFERENCE_URL"] == f"http://{server_name}.{h.ns}.svc:8000/v1"
            assert env["AGENTQ_INFERENCE_MODEL"] == "start"
            assert not (c.resources and c.resources.limits), c.resources  # CPU-only: the server has the GPUs
        if stage == "evaluate":
            assert env["AGENTQ_INFERENCE_ROUND_MODEL"] == "round"
            assert "round=/artifacts/rounds/served/adapter" in args
        for unit in units:
            h.finish(f"{name}-{unit}", {"pairs": 12} if stage == "collect" else {})
        # The stage ended: its server goes, Deployment and Service alike.
        h._wait(lambda s=server_name: s not in deployments() and s not in services(), f"{server_name} removed", 20)
        condition("False", "NotNeeded")
        if stage == "collect":
            for step in ("preferences", "train", "merge"):
                h.wait_jobs(name, [f"{name}-{step}"])
                assert deployments() == []  # no server while the model is not generating
                h.finish(f"{name}-{step}", {"pairs": 12} if step == "preferences" else {})
    h.wait_jobs(name, [f"{name}-report"])
    h.finish(f"{name}-report", {"passRate": {"full_rewrite": 0.5}})
    h.wait_phase(name, "Succeeded")
    assert deployments() == [] and services() == []
    reasons = {r for _, r in h.events(name)}
    assert {"InferenceServerCreated", "InferenceServerRemoved"} <= reasons, reasons


# --- with the cluster's own controllers: Jobs, TTLs and ownerReferences as a cluster treats them --------------


def test_the_job_controller_completes_jobs_from_their_pods(h: Harness):
    h.apply(small_round("natural"))
    h.wait_jobs("natural", ["natural-collect-0", "natural-collect-1"])
    # The Job controller started a pod per Job (none runs: no kubelet), and sets Complete from the pod that ran.
    wait_for(lambda: len(h.pods("natural")) >= 2, "the Job controller's pods")
    for job in ("natural-collect-0", "natural-collect-1"):
        h.run_pod(job, {"trajectories": 4})
    status = h.wait_phase("natural", "Preferences")
    assert status["jobs"]["collect-0"]["state"] == "Succeeded" and status["results"]["trajectories"] == 8
    job = h.batch.read_namespaced_job("natural-collect-0", h.ns)
    assert job.status.succeeded == 1 and [c.type for c in job.status.conditions] == ["Complete"]


def test_a_failed_pod_counts_an_attempt(h: Harness):
    h.apply(small_round("stumble", backoffLimit=1))
    h.wait_jobs("stumble", ["stumble-collect-0", "stumble-collect-1"])
    h.run_pod("stumble-collect-0", ok=False, logs="CUDA error: out of memory")
    # backoffLimit 0 on every step Job: the Job controller fails the Job, the operator makes attempt 2.
    h.wait_jobs("stumble", ["stumble-collect-0-r1"])
    failed = h.batch.read_namespaced_job("stumble-collect-0", h.ns)
    assert [(c.type, c.reason) for c in failed.status.conditions] == [("Failed", "BackoffLimitExceeded")]
    h.run_pod("stumble-collect-0-r1", {})
    h.run_pod("stumble-collect-1", {})
    assert h.wait_phase("stumble", "Preferences")["jobs"]["collect-0"]["attempts"] == 2


def test_finished_jobs_removed_by_the_ttl_controller_stay_done(h: Harness):
    h.apply(small_round("brief"))
    h.wait_jobs("brief", ["brief-collect-0", "brief-collect-1"])
    for job in ("brief-collect-0", "brief-collect-1"):
        # A cluster's TTL policy (a mutating webhook, Kueue, the operator's jobTtlSeconds) on the Jobs.
        h.batch.patch_namespaced_job(job, h.ns, {"spec": {"ttlSecondsAfterFinished": 2}})
        h.run_pod(job, {"trajectories": 3})
    h.wait_jobs("brief", ["brief-preferences"])
    # The TTL controller deletes the finished Jobs, the garbage collector their pods, mid-round.
    wait_for(lambda: h.jobs("brief") == ["brief-preferences"], "the TTL controller to remove the collect Jobs")
    wait_for(lambda: [p for p in h.pods("brief") if "collect" in p] == [], "their pods to be collected")
    wait_for(lambda: ("Warning", "JobDeleted") in h.events("brief"), "a JobDeleted warning")
    time.sleep(OPERATOR_CONFIG["resyncSeconds"] + 1)  # a resync sees the Jobs gone
    status = h.status("brief")
    assert status["phase"] == "Preferences" and status["results"]["trajectories"] == 6
    assert {status["jobs"][u]["state"] for u in ("collect-0", "collect-1")} == {"Succeeded"}
    assert h.jobs("brief") == ["brief-preferences"]  # nothing re-created
    h.run_pod("brief-preferences", {"pairs": 2})
    h.wait_jobs("brief", ["brief-train"])


def test_without_the_operator_ownerreferences_alone_remove_a_deleted_rounds_objects(h: Harness):
    h.apply(small_round("orphan"))
    h.wait_jobs("orphan", ["orphan-collect-0", "orphan-collect-1"])
    wait_for(lambda: len(h.pods("orphan")) >= 2, "the Job controller's pods")
    h.operator.kill()  # an uninstalled or crashed operator: its finalizer would hold the round forever
    try:
        h.custom.patch_namespaced_custom_object("agentq.dev", "v1alpha1", h.ns, "agentqrounds", "orphan",
                                                {"metadata": {"finalizers": None}})
        h.cluster.kubectl("delete", "agentqround", "orphan", "-n", h.ns, "--wait=true", "--timeout=30s")
        # The garbage collector follows the ownerReferences: round -> Jobs and spec ConfigMap -> pods.
        wait_for(lambda: h.jobs("orphan") == [], "the garbage collector to delete the Jobs", timeout=60)
        wait_for(lambda: h.pods("orphan") == [], "the garbage collector to delete the pods", timeout=60)
        wait_for(lambda: "orphan-spec" not in [c.metadata.name for c in h.core.list_namespaced_config_map(h.ns).items],
                 "the garbage collector to delete the spec ConfigMap", timeout=60)
    finally:
        h.operator.start()


def test_the_operators_client_reuses_its_connections(cluster: LocalCluster):
    """Every call reads its response, so its connection goes back to the pool: one left unread made the next
    call open a new TLS connection, which cost most of the operator's CPU (benchmarks/operator_scale.py)."""
    from controller.kube import Kube

    kube = Kube(cluster.api())
    cluster.kubectl("create", "namespace", "reuse")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "reuse"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "b"}]}}}}
    kube.create_job(job)
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "reuse"}, "data": {}}
    for i in range(10):
        kube.apply_configmap({**cm, "data": {"i": str(i)}})
        kube.patch_job("reuse", "j", {"metadata": {"annotations": {"i": str(i)}}})
        kube.service_account_exists("reuse", "nobody")
        kube.get_round("reuse", "nothing")
    manager = kube.api.rest_client.pool_manager
    # urllib3 refuses to iterate its pool container itself (not thread-safe); keys() gives a copy
    pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118
    assert sum(p.num_connections for p in pools) == 1
