"""controller/jobs.py and controller/reconcile.py are pure: every manifest and decision is checked here
without a cluster."""

from __future__ import annotations

import copy
import subprocess
import sys

import yaml

from agentq.config import RoundFile
from controller.crd import render
from controller.jobs import Unit, build_job, cleanup_job, job_name, spec_configmap, suspend_patch, units
from controller.reconcile import long_unfinished, plan, pod_problems, refused_pods, with_unrecorded_finished
from controller.settings import OperatorSettings

SETTINGS = OperatorSettings.model_validate({
    "pools": {
        "inference": {"nodeSelector": {"pool": "inference"}, "gpusPerShard": 1,
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "training": {"nodeSelector": {"pool": "training"}, "gpus": 1},
    },
    "images": {"infer": "infer:1", "train": "train:1"},
    "sandboxUrl": "http://sandbox.agentq:8080",
    "sandboxTokenSecret": "agentq-sandbox-token",
})


def body(**spec_overrides) -> dict:
    spec = {"dataset": {"train": "t.jsonl", "test": "e.jsonl"}, "store": {"pvc": "artifacts"},
            "collect": {"shards": 2}, "evaluate": {"shards": 2}}
    spec.update(spec_overrides)
    return {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound",
            "metadata": {"name": "r1", "namespace": "ns", "uid": "u-1", "generation": 1}, "spec": spec}


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_collect_shard_goes_to_inference_pool_with_one_gpu_and_sandbox():
    job = build_job(body(), Unit("collect", 1, 2), 0, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert job["metadata"]["name"] == "r1-collect-1"
    assert c["command"] == ["agentq", "collect", "--round", "/etc/agentq/round.yaml", "--shard", "1",
                            "--num-shards", "2"]
    assert pod["nodeSelector"] == {"pool": "inference"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 1}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["SANDBOX_URL"] == "http://sandbox.agentq:8080"
    assert env["AGENTQ_SANDBOX_TOKEN"] == {"secretKeyRef": {"name": "agentq-sandbox-token", "key": "token"}}
    assert env["AGENTQ_STORE_PATH"] == "/artifacts"
    assert env["AGENTQ_RESULT_FILE"] == "/dev/termination-log"
    assert c["image"] == "infer:1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"


def test_train_goes_to_training_pool_preferences_and_report_are_cpu_only():
    train = build_job(body(), Unit("train"), 0, SETTINGS)
    assert train["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "training"}
    assert container(train)["image"] == "train:1"
    assert container(train)["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert "SANDBOX_URL" not in {e["name"] for e in container(train)["env"]}
    grpo = build_job(body(train={"method": "grpo"}), Unit("train"), 0, SETTINGS)  # its reward runs candidates
    assert {e["name"]: e.get("value") for e in container(grpo)["env"]}["SANDBOX_URL"] == "http://sandbox.agentq:8080"
    for step in ("preferences", "report"):
        job = build_job(body(), Unit(step), 0, SETTINGS)
        assert "resources" not in container(job)
        assert "nodeSelector" not in job["spec"]["template"]["spec"]
    report = build_job(body(), Unit("report"), 0, SETTINGS)
    assert container(report)["command"][-1] == "--report-only"


def test_round_placement_and_image_override_the_operator_pools():
    b = body(placement={"inference": {"nodeSelector": {"gpu": "h100"}, "gpus": 2}}, image="custom:2")
    job = build_job(b, Unit("evaluate", 0, 2), 0, SETTINGS)
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h100"}
    # tolerations were not overridden, so the pool's stay
    assert job["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container(job)["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert container(job)["image"] == "custom:2"


FULL = OperatorSettings.model_validate({
    "pools": {
        "inference": {"nodeSelector": {"pool": "inference"}, "gpusPerShard": 1, "shmSize": "16Gi",
                      "resources": {"requests": {"cpu": 8, "memory": "64Gi"}, "limits": {"memory": "96Gi"}},
                      "priorityClassName": "agentq-batch"},
        "training": {"nodeSelector": {"pool": "training"}, "gpus": 1, "scratchSize": "200Gi"},
        "cpu": {"nodeSelector": {"pool": "cpu"}, "tolerations": [{"key": "cpu-only", "operator": "Exists"}],
                "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}},
    },
    "images": {"infer": "infer:1", "train": "train:1", "pullSecrets": ["registry-creds"]},
    "jobServiceAccount": "agentq-steps",
})


def test_cpu_steps_go_to_the_cpu_pool_with_its_resources():
    for step in ("preferences", "report"):
        pod = build_job(body(), Unit(step), 0, FULL)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"][0]["key"] == "cpu-only"
        assert pod["containers"][0]["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}
    b = body(placement={"cpu": {"nodeSelector": {"pool": "spot"}, "resources": {"requests": {"cpu": 1}}}})
    pod = build_job(b, Unit("preferences"), 0, FULL)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "spot"} and pod["containers"][0]["resources"] == {"requests": {"cpu": "1"}}


def test_pool_resources_shared_memory_scratch_and_priority():
    collect = build_job(body(), Unit("collect", 0, 2), 0, FULL)
    pod = collect["spec"]["template"]["spec"]
    assert container(collect)["resources"] == {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1},
                                               "limits": {"memory": "96Gi", "nvidia.com/gpu": 1}}
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container(collect)["volumeMounts"]
    assert pod["priorityClassName"] == "agentq-batch"
    train = build_job(body(), Unit("train"), 0, FULL)
    env = {e["name"]: e["value"] for e in container(train)["env"]}
    assert env["AGENTQ_CACHE"] == "/scratch/cache" and env["TMPDIR"] == "/scratch"
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}} in train["spec"]["template"]["spec"]["volumes"]
    override = body(placement={"training": {"scratchSize": "50Gi", "resources": {"limits": {"memory": "32Gi"}}}})
    train = build_job(override, Unit("train"), 0, FULL)
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in train["spec"]["template"]["spec"]["volumes"]
    assert container(train)["resources"] == {"limits": {"memory": "32Gi", "nvidia.com/gpu": 1},
                                             "requests": {"nvidia.com/gpu": 1}}


def test_every_step_pod_meets_the_restricted_pod_security_level():
    for stage in units(RoundFile.model_validate({"metadata": {"name": "r"}, "spec": body()["spec"]}).spec):
        for unit in stage:
            pod = build_job(body(), unit, 0, FULL)["spec"]["template"]["spec"]
            assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
            sc = pod["containers"][0]["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert pod["serviceAccountName"] == "agentq-steps"
            assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    cleanup = cleanup_job(body(deleteArtifacts=True), FULL)["spec"]["template"]["spec"]
    assert cleanup["securityContext"]["runAsNonRoot"] and cleanup["imagePullSecrets"]


def test_pass_through_labels_annotations_deadlines_and_disruption_policy():
    b = body(jobTemplate={"labels": {"kueue.x-k8s.io/queue-name": "gpu-queue", "agentq.dev/step": "spoof"},
                          "annotations": {"team": "repair"}},
             activeDeadlineSeconds={"train": 7200})
    train = build_job(b, Unit("train"), 0, FULL)
    for meta in (train["metadata"], train["spec"]["template"]["metadata"]):
        assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert meta["labels"]["agentq.dev/step"] == "train"  # agentq's own labels are never replaced
        assert meta["annotations"]["team"] == "repair"
    assert train["spec"]["activeDeadlineSeconds"] == 7200
    assert "activeDeadlineSeconds" not in build_job(b, Unit("merge"), 0, FULL)["spec"]
    assert train["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]


def test_step_jobs_get_the_operators_ttl_only_when_one_is_set():
    assert "ttlSecondsAfterFinished" not in build_job(body(), Unit("train"), 0, FULL)["spec"]
    ttl = FULL.model_copy(update={"job_ttl_seconds": 600})
    assert build_job(body(), Unit("collect", 0, 2), 0, ttl)["spec"]["ttlSecondsAfterFinished"] == 600


def test_a_fully_configured_job_is_valid_for_current_kubernetes():
    """The 1.20 test server drops what it does not know (podFailurePolicy): check against 1.33's schema."""
    import kubernetes_validate

    b = body(jobTemplate={"labels": {"kueue.x-k8s.io/queue-name": "q"}}, activeDeadlineSeconds={"collect": 60})
    for unit in (Unit("collect", 0, 2), Unit("train"), Unit("preferences")):
        kubernetes_validate.validate(build_job(b, unit, 0, FULL), "1.33", strict=True)
    kubernetes_validate.validate(cleanup_job(b, FULL), "1.33", strict=True)


def test_s3_store_gives_env_and_secret_not_a_volume():
    b = body(store={"s3": {"bucket": "b", "endpoint": "http://minio:9000", "secretRef": "s3-creds"}})
    job = build_job(b, Unit("merge"), 0, SETTINGS)
    c = container(job)
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["AGENTQ_S3_BUCKET"] == "b" and env["AGENTQ_S3_ENDPOINT"] == "http://minio:9000"
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["round-spec"]


def test_names_are_deterministic_and_capped():
    assert job_name("r1", Unit("collect", 0, 2), 2) == "r1-collect-0-r2"
    long = "a" * 52
    name = job_name(long, Unit("preferences"), 10)
    assert len(name) <= 63 and name == job_name(long, Unit("preferences"), 10)
    assert name != job_name(long, Unit("preferences"), 11)


def test_spec_configmap_holds_a_loadable_round_file():
    cm = spec_configmap(body())
    parsed = RoundFile.model_validate(yaml.safe_load(cm["data"]["round.yaml"]))
    assert parsed.name == "r1" and parsed.spec.store.pvc == "artifacts"


def test_cleanup_job_is_not_owned_by_the_round():
    job = cleanup_job(body(deleteArtifacts=True), SETTINGS)
    assert "ownerReferences" not in job["metadata"]
    assert job["spec"]["template"]["spec"]["volumes"][-1]["configMap"]["name"] == "r1-cleanup"


def test_units_in_order_with_shards():
    stages = units(RoundFile.model_validate({"metadata": {"name": "r"}, "spec": body()["spec"]}).spec)
    assert [[u.key for u in s] for s in stages] == [["collect-0", "collect-1"], ["preferences"], ["train"],
                                                    ["merge"], ["evaluate-0", "evaluate-1"], ["report"]]


def test_checked_in_crds_are_not_stale():
    with open("manifests/crd.yaml") as fh:
        assert fh.read() == render(), "manifests/crd.yaml is stale: python -m controller.crd > manifests/crd.yaml"
    with open("manifests/campaign-crd.yaml") as fh:
        assert fh.read() == render("campaign"), \
            "manifests/campaign-crd.yaml is stale: python -m controller.crd campaign > manifests/campaign-crd.yaml"


def test_crd_schema_keeps_validation():
    crd = yaml.safe_load(render())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["dataset", "store"]
    assert spec["properties"]["collect"]["properties"]["shards"]["minimum"] == 1
    assert spec["properties"]["model"]["properties"]["backend"]["enum"] == ["hf", "vllm", "scripted", "openai"]
    assert spec["properties"]["model"]["properties"]["fromRound"]["nullable"] is True
    assert spec["properties"]["train"]["properties"]["lora"]["properties"]["dropout"]["exclusiveMaximum"] is True
    assert spec["properties"]["store"]["oneOf"] == [{"required": ["path"]}, {"required": ["pvc"]},
                                                    {"required": ["s3"]}]
    assert "$ref" not in render() and "title:" not in render()


# --- reconcile.plan -------------------------------------------------------------------------------------


def job(b: dict, unit: Unit, attempt: int, state: str | None = None) -> dict:
    j = build_job(b, unit, attempt, SETTINGS)
    if state == "Succeeded":
        j["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    elif state == "Failed":
        j["status"] = {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                    "reason": "BackoffLimitExceeded"}]}
    elif state == "Running":
        j["status"] = {"active": 1}
    return j


def no_inspect(j):
    raise AssertionError(f"inspect called for {j['metadata']['name']}")


def test_plan_starts_with_all_collect_shards():
    p = plan(body(), [], no_inspect, "T0")
    assert [(u.key, a) for u, a in p.create] == [("collect-0", 0), ("collect-1", 0)]
    assert p.status["phase"] == "Collecting" and p.status["startTime"] == "T0"


def test_plan_moves_on_only_when_every_shard_succeeded_and_records_results():
    b = body()
    jobs = [job(b, Unit("collect", 0, 2), 0, "Succeeded"), job(b, Unit("collect", 1, 2), 0, "Running")]
    p = plan(b, jobs, lambda j: {"result": {"trajectories": 3}}, "T1")
    assert p.create == [] and p.status["phase"] == "Collecting"
    jobs[1] = job(b, Unit("collect", 1, 2), 0, "Succeeded")
    p = plan(b, jobs, lambda j: {"result": {"trajectories": 3}}, "T2")
    assert [(u.key, a) for u, a in p.create] == [("preferences", 0)]
    assert p.status["phase"] == "Preferences" and p.status["jobs"]["collect-1"]["result"] == {"trajectories": 3}
    assert p.status["results"] == {"trajectories": 6}  # shards' counts add up
    # the next pass reads recorded results from status instead of asking the pods again
    b2 = {**b, "status": p.status}
    jobs.append(job(b, Unit("preferences"), 0, "Running"))
    assert plan(b2, jobs, no_inspect, "T3").create == []


def test_plan_retries_then_fails_with_job_name_reason_and_logs():
    b = body(backoffLimit=1)
    failing = {"reason": "BackoffLimitExceeded; container: Error (exit code 3)", "logs": "boom\nTraceback"}
    jobs = [job(b, Unit("collect", 0, 2), 0, "Failed"), job(b, Unit("collect", 1, 2), 0, "Succeeded")]
    p = plan(b, jobs, lambda j: failing if "collect-0" in j["metadata"]["name"] else {"result": {}}, "T")
    assert [(u.key, a) for u, a in p.create] == [("collect-0", 1)]
    assert any(e[1] == "JobFailed" for e in p.events)
    jobs.append(job(b, Unit("collect", 0, 2), 1, "Failed"))
    p = plan(b, jobs, lambda j: failing if "collect-0" in j["metadata"]["name"] else {"result": {}}, "T")
    assert p.status["phase"] == "Failed" and p.create == []
    failed = next(c for c in p.status["conditions"] if c["type"] == "Failed")
    assert "r1-collect-0-r1" in failed["message"] and "exit code 3" in failed["message"]
    assert "Traceback" in failed["message"]


def test_plan_suspend_waits_and_chained_round_waits():
    p = plan(body(suspend=True), [], no_inspect, "T")
    assert p.create == [] and p.status["phase"] == "Suspended"
    chained = body(model={"fromRound": "r0"})
    p = plan(chained, [], no_inspect, "T", predecessor_phase="Training")
    assert p.create == [] and p.status["phase"] == "Pending"
    assert "r0" in p.status["conditions"][0]["message"]
    assert plan(chained, [], no_inspect, "T", predecessor_phase="Succeeded").create


def test_plan_is_stable_when_nothing_changed():
    b = body()
    jobs = [job(b, Unit("collect", 0, 2), 0, "Running"), job(b, Unit("collect", 1, 2), 0, "Running")]
    first = plan(b, jobs, no_inspect, "T1")
    second = plan({**b, "status": copy.deepcopy(first.status)}, jobs, no_inspect, "T2")
    assert second.status == first.status and second.events == []


def test_plan_rejects_an_invalid_name_with_a_clear_condition():
    b = body()
    b["metadata"]["name"] = "Bad_Name"
    p = plan(b, [], no_inspect, "T")
    assert p.status["phase"] == "Failed"
    assert "metadata.name" in p.status["conditions"][2]["message"]


def test_controller_never_imports_the_ml_stack():
    code = ("import sys, controller.handlers; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl', 'peft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- durable outcomes, frozen specs, problems a person must fix -------------------------------------------


def advance(b: dict, jobs: list[dict], inspect=lambda j: {"result": {}}, **kw):
    """One pass whose status becomes the round's status, as the operator writes it."""
    p = plan(b, jobs, inspect, "T", **kw)
    b["status"] = copy.deepcopy(p.status)
    return p


def condition(p, ctype: str) -> dict:
    return next(c for c in p.status["conditions"] if c["type"] == ctype)


def test_a_deleted_finished_job_keeps_its_outcome_and_the_round_never_goes_back():
    b = body()
    jobs = [job(b, Unit("collect", i, 2), 0, "Succeeded") for i in range(2)]
    p = advance(b, jobs, lambda j: {"result": {"trajectories": 3}})
    assert p.status["phase"] == "Preferences"
    jobs = [jobs[1], job(b, Unit("preferences"), 0, "Running")]  # collect-0 deleted (by hand or a TTL)
    p = advance(b, jobs, no_inspect)
    assert p.status["phase"] == "Preferences" and p.create == []
    assert p.status["jobs"]["collect-0"]["state"] == "Succeeded" and p.status["results"]["trajectories"] == 6
    assert [e[1] for e in p.events] == ["JobDeleted"]
    assert advance(b, jobs, no_inspect).events == []  # said once


def test_retry_count_survives_deleted_attempts():
    b = body(backoffLimit=2)
    failing = {"reason": "BackoffLimitExceeded", "logs": "boom"}
    advance(b, [job(b, Unit("collect", 0, 2), 0, "Failed"), job(b, Unit("collect", 1, 2), 0, "Running")],
            lambda j: failing)
    p = advance(b, [job(b, Unit("collect", 0, 2), 1, "Failed"), job(b, Unit("collect", 1, 2), 0, "Running")],
                lambda j: failing)
    assert p.status["jobs"]["collect-0"]["attempts"] == 2
    p = advance(b, [job(b, Unit("collect", 1, 2), 0, "Running")], no_inspect)  # both attempts deleted
    assert [(u.key, a) for u, a in p.create] == [("collect-0", 2)]


def test_a_mid_round_spec_edit_is_reported_and_not_acted_on():
    b = body()
    advance(b, [job(b, Unit("collect", i, 2), 0, "Succeeded") for i in range(2)])
    assert b["status"]["acceptedSpec"]["collect"] == {"shards": 2}
    b["spec"] = {**b["spec"], "collect": {"shards": 3}, "backoffLimit": 5}
    b["metadata"]["generation"] = 2
    p = advance(b, [job(b, Unit("collect", i, 2), 0, "Succeeded") for i in range(2)], no_inspect)
    assert p.status["phase"] == "Preferences" and [(u.key, a) for u, a in p.create] == [("preferences", 0)]
    changed = condition(p, "SpecChanged")
    assert changed["status"] == "True" and "spec.collect changed" in changed["message"]
    assert changed["observedGeneration"] == 2 and ("Warning", "SpecChanged", changed["message"]) in p.events
    assert p.spec["collect"] == {"shards": 2} and p.spec["backoffLimit"] == 5  # the allowed field does change
    built = build_job({**b, "spec": p.spec}, Unit("preferences"), 0, SETTINGS)
    original = build_job(body(), Unit("preferences"), 0, SETTINGS)
    assert built["metadata"]["annotations"] == original["metadata"]["annotations"]  # same spec hash
    assert advance(b, [job(b, Unit("collect", i, 2), 0, "Succeeded") for i in range(2)], no_inspect).events == []


def test_jobs_carry_the_hash_of_the_spec_they_were_made_from():
    a = build_job(body(), Unit("train"), 0, SETTINGS)["metadata"]["annotations"]["agentq.dev/spec-hash"]
    assert a == build_job(body(suspend=True), Unit("train"), 0, SETTINGS)["metadata"]["annotations"][
        "agentq.dev/spec-hash"]
    assert a != build_job(body(collect={"shards": 3}), Unit("train"), 0, SETTINGS)["metadata"]["annotations"][
        "agentq.dev/spec-hash"]


def test_a_look_alike_job_of_another_owner_is_not_counted():
    b = body()
    foreign = job(b, Unit("collect", 0, 2), 0, "Succeeded")
    foreign["metadata"]["ownerReferences"] = [{**foreign["metadata"]["ownerReferences"][0], "uid": "someone-else"}]
    p = advance(b, [foreign, job(b, Unit("collect", 1, 2), 0, "Succeeded")], lambda j: {"result": {}})
    assert p.status["phase"] == "Collecting" and "collect-0" not in p.status["jobs"]
    assert p.create == [] and condition(p, "Blocked")["reason"] == "ForeignJob"
    assert "r1-collect-0 exists but is not owned by this round" in condition(p, "Blocked")["message"]


def test_a_cleanup_job_of_an_earlier_round_of_that_name_holds_the_new_one():
    b = body()
    cleanup = cleanup_job(b, SETTINGS)
    cleanup["status"] = {"active": 1}
    p = advance(b, [cleanup], no_inspect)
    assert p.status["phase"] == "Pending" and p.create == []
    assert "r1-cleanup is still deleting the artifacts" in condition(p, "Progressing")["message"]
    cleanup["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    assert advance(b, [cleanup], no_inspect).create


def test_a_failed_cleanup_is_reported_and_not_counted_as_done():
    b = body()
    cleanup = cleanup_job(b, SETTINGS)
    cleanup["status"] = {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                                                      "reason": "BackoffLimitExceeded"}]}
    p = advance(b, [cleanup], no_inspect)
    assert p.status["phase"] == "Pending" and p.create == []
    blocked = condition(p, "Blocked")
    assert blocked["status"] == "True" and blocked["reason"] == "CleanupFailed"
    assert "r1-cleanup failed to delete the artifacts" in blocked["message"] and "BackoffLimitExceeded" in \
        blocked["message"]
    assert ("Warning", "CleanupFailed") in [e[:2] for e in p.events]
    assert advance(b, [], no_inspect).create  # the Job deleted by the person who cleaned up: the round starts


def pod(name: str, *, unschedulable: str = "", waiting: str = "") -> dict:
    status: dict = {"phase": "Pending", "conditions": [], "containerStatuses": []}
    if unschedulable:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": unschedulable})
    if waiting:
        status["containerStatuses"].append({"name": "step", "state": {"waiting": {"reason": waiting,
                                                                                  "message": "not found"}}})
    return {"metadata": {"name": name}, "status": status}


def test_stuck_pods_block_the_round_with_a_reason_and_one_event():
    b = body()
    running = [job(b, Unit("collect", i, 2), 0, "Running") for i in range(2)]
    stuck = [pod("r1-collect-0-x", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
             pod("r1-collect-1-y", waiting="ImagePullBackOff")]
    p = advance(b, running, no_inspect, stuck=pod_problems(stuck))
    blocked = condition(p, "Blocked")
    assert blocked["status"] == "True" and blocked["reason"] == "ImagePullBackOff,Unschedulable"
    assert "Insufficient nvidia.com/gpu" in blocked["message"] and "r1-collect-1-y: ImagePullBackOff" in \
        blocked["message"]
    assert sorted(e[1] for e in p.events if e[0] == "Warning") == ["ImagePullBackOff", "Unschedulable"]
    assert advance(b, running, no_inspect, stuck=pod_problems(stuck)).events == []
    p = advance(b, running, no_inspect, stuck=[])
    assert condition(p, "Blocked")["status"] == "False" and p.problems == []


def test_a_refused_create_found_after_planning_blocks_the_round():
    b = body()
    p = plan(b, [], no_inspect, "T")
    p.block([("JobCreateFailed", "creating Job r1-collect-0 was refused: nodeSelector: Invalid value")], "T")
    assert condition(p, "Blocked")["reason"] == "JobCreateFailed" and p.events[-1][1] == "JobCreateFailed"
    b["status"] = p.status
    again = plan(b, [], no_inspect, "T2")
    again.block([("JobCreateFailed", "creating Job r1-collect-0 was refused: nodeSelector: Invalid value")], "T2")
    assert condition(again, "Blocked")["lastTransitionTime"] == "T" and again.events == []


def test_every_condition_names_the_generation_it_describes():
    b = body()
    b["metadata"]["generation"] = 7
    assert {c["observedGeneration"] for c in plan(b, [], no_inspect, "T").status["conditions"]} == {7}


def patched(j: dict, suspend: bool) -> dict:
    """The Job as the API server returns it after jobs.suspend_patch (a strategic merge: None removes)."""
    patch = suspend_patch(suspend)
    annotations = {**(j["metadata"].get("annotations") or {}), **patch["metadata"]["annotations"]}
    meta = {**j["metadata"], "annotations": {k: v for k, v in annotations.items() if v is not None}}
    return {**j, "metadata": meta, "spec": {**j["spec"], **patch["spec"]}}


def test_suspend_follows_the_jobs_own_state_not_a_record_in_the_status():
    b = body()
    running = [job(b, Unit("collect", 0, 2), 0, "Running"), job(b, Unit("collect", 1, 2), 0, "Succeeded")]
    assert advance(b, running).suspend == {}
    b["spec"]["suspend"] = True
    p = advance(b, running, no_inspect)
    assert p.status["phase"] == "Suspended" and p.suspend == {"r1-collect-0": True}
    # The status write that followed the PATCH was lost (a 409, a crash): the Job itself says it is suspended.
    b["status"].pop("suspendedJobs", None)
    held = [patched(running[0], True), running[1]]
    assert advance(b, held, no_inspect).suspend == {}
    assert b["status"]["suspendedJobs"] == ["r1-collect-0"]
    b["spec"]["suspend"] = False
    p = advance(b, held, no_inspect)
    assert p.suspend == {"r1-collect-0": False} and p.status["phase"] == "Collecting"
    # The PATCH was lost instead (the operator died before it): the Job still says suspended, so it is resumed.
    assert advance(b, held, no_inspect).suspend == {"r1-collect-0": False}
    assert advance(b, [patched(held[0], False), running[1]], no_inspect).suspend == {}


def test_on_servers_with_job_suspend_the_jobs_own_field_decides():
    b = body(suspend=True)
    running = job(b, Unit("collect", 0, 2), 0, "Running")
    ours = patched(running, True)
    assert advance(b, [ours], no_inspect).suspend == {}
    ours["spec"]["suspend"] = False  # someone resumed it by hand while the round is suspended: suspend it again
    assert advance(b, [ours], no_inspect).suspend == {"r1-collect-0": True}
    del ours["spec"]["suspend"]  # a 1.20 server drops the field: the annotation is what it keeps
    assert advance(b, [ours], no_inspect).suspend == {} and b["status"]["suspendedJobs"] == ["r1-collect-0"]


def test_a_job_held_suspended_by_someone_else_is_left_alone():
    b = body()
    queued = job(b, Unit("collect", 0, 2), 0)
    queued["spec"]["suspend"] = True  # Kueue holds it until admission
    assert advance(b, [queued], no_inspect).suspend == {}
    b["spec"]["suspend"] = True
    assert advance(b, [queued], no_inspect).suspend == {}  # already suspended, and not ours to resume later
    b["spec"]["suspend"] = False
    assert advance(b, [queued], no_inspect).suspend == {}


def test_a_failed_step_is_retried_after_a_growing_delay():
    b = body(backoffLimit=3)
    failing = {"reason": "BackoffLimitExceeded", "logs": "boom"}
    failed = job(b, Unit("collect", 0, 2), 1, "Failed")
    failed["status"]["conditions"][0]["lastTransitionTime"] = "2026-12-02T10:00:00Z"
    jobs = [failed, job(b, Unit("collect", 1, 2), 0, "Running")]
    p = plan(b, jobs, lambda j: failing, "2026-12-02T10:00:05Z", retry_backoff=10)
    assert p.create == [] and p.wake_after == 15  # attempt 1 failed: 10 s doubled, 5 s of it gone
    assert "r1-collect-0-r2 in 15s" in condition(p, "Progressing")["message"]
    assert [e[1] for e in p.events if e[0] == "Warning"] == ["JobFailed"]
    p = plan(b, jobs, lambda j: failing, "2026-12-02T10:00:20Z", retry_backoff=10)
    assert [(u.key, a) for u, a in p.create] == [("collect-0", 2)] and p.wake_after is None
    assert plan(b, jobs, lambda j: failing, "2026-12-02T10:00:01Z").create  # backoff off: at once


def test_pods_are_read_only_for_jobs_unfinished_past_a_resync():
    fresh = job(body(), Unit("collect", 0, 2), 0, "Running")
    fresh["metadata"]["creationTimestamp"] = "2026-12-02T10:00:00Z"
    assert not long_unfinished([fresh], "2026-12-02T10:00:20Z", 30)
    assert long_unfinished([fresh], "2026-12-02T10:00:31Z", 30)
    done = job(body(), Unit("collect", 1, 2), 0, "Succeeded")
    done["metadata"]["creationTimestamp"] = "2026-12-02T09:00:00Z"
    assert not long_unfinished([done], "2026-12-02T10:00:31Z", 30)


def test_a_missing_step_service_account_is_named():
    from controller.handlers import stuck_problems

    class Cluster:  # the observations stuck_problems makes beside the cached pods
        def failed_creates(self, namespace):
            raise AssertionError("every Job has a pod: no events to read")

        def service_account_exists(self, namespace, name):
            return name == "present"

    running = [job(body(), Unit("collect", 0, 2), 0, "Running")]
    settings = OperatorSettings.model_validate({"jobServiceAccount": "agentq-steps"})
    pods = [pod("r1-collect-0-x", waiting="ErrImagePull")]
    problems = stuck_problems(Cluster(), "ns", settings, running, pods)
    assert [r for r, _ in problems] == ["ErrImagePull", "ServiceAccountMissing"]
    assert "ServiceAccount agentq-steps (operator.jobServiceAccount) does not exist in namespace ns" in problems[1][1]
    ok = OperatorSettings.model_validate({"jobServiceAccount": "present"})
    assert [r for r, _ in stuck_problems(Cluster(), "ns", ok, running, pods)] == ["ErrImagePull"]


def test_pods_refused_by_a_quota_are_named_from_the_jobs_failedcreate_events():
    podless = {"u-0": "r1-collect-0", "u-1": "r1-collect-1"}
    quota = ('Error creating: pods "r1-collect-0-abc" is forbidden: exceeded quota: steps, requested: pods=1, '
             'used: pods=0, limited: pods=0')
    events = [{"involvedObject": {"uid": "u-0"}, "lastTimestamp": "2026-01-01T00:00:01Z", "message": "older"},
              {"involvedObject": {"uid": "u-0"}, "lastTimestamp": "2026-01-01T00:00:09Z", "message": quota},
              {"involvedObject": {"uid": "u-1"}, "lastTimestamp": "2026-01-01T00:00:05Z",
               "message": 'Error creating: admission webhook "policy" denied the request'},
              {"involvedObject": {"uid": "other"}, "lastTimestamp": "2026-01-01T00:00:09Z", "message": "x"}]
    problems = refused_pods(events, podless)
    assert [r for r, _ in problems] == ["QuotaExceeded", "PodCreateRefused"]
    assert problems[0][1] == f"Job r1-collect-0 cannot create its pod: {quota}"
    assert "admission webhook" in problems[1][1]


def test_a_round_that_fetches_its_model_starts_with_the_model_step():
    b = body(model={"base": "store:models/qwen7b", "fetchFrom": "Qwen/Qwen2.5-Coder-7B-Instruct",
                    "tokenSecret": "hf-token"})
    stages = units(RoundFile.model_validate({"metadata": {"name": "r1"}, "spec": b["spec"]}).spec)
    assert [u.key for u in stages[0]] == ["model"] and stages[1][0].step == "collect"
    fetch = build_job(b, stages[0][0], 0, FULL)
    c = container(fetch)
    assert c["command"] == ["agentq", "model", "fetch", "--round", "/etc/agentq/round.yaml"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "0"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}
    assert fetch["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}  # no GPU to copy files
    assert "HF_TOKEN" not in {e["name"] for e in container(build_job(b, stages[1][0], 0, FULL))["env"]}
    p = plan(b, [], no_inspect, "T")
    assert p.status["phase"] == "Initializing" and [(u.key, a) for u, a in p.create] == [("model", 0)]
    assert [u.key for u in units(RoundFile.model_validate({"metadata": {"name": "r"}, "spec": body()["spec"]}).spec)[0]
            ] == ["collect-0", "collect-1"]


def test_a_shared_model_cache_is_mounted_as_hf_home():
    settings = OperatorSettings.model_validate({"modelCache": {"pvc": "hf-cache"}})
    job_ = build_job(body(), Unit("train"), 0, settings)
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in \
        job_["spec"]["template"]["spec"]["volumes"]
    assert {"name": "HF_HOME", "value": "/models"} in container(job_)["env"]


def test_collect_and_evaluate_jobs_of_a_served_round_get_the_api_key_from_its_secret():
    b = body(model={"base": "tiny", "backend": "openai",
                    "openai": {"url": "http://vllm:8000/v1", "model": "qwen", "apiKeySecret": "llm-key"}})
    spec = RoundFile.model_validate({"metadata": {"name": "r1"}, "spec": b["spec"]}).spec
    by_step = {u.step: u for stage in units(spec) for u in stage}
    key = {"secretKeyRef": {"name": "llm-key", "key": "token"}}
    for step in ("collect", "evaluate"):
        env = {e["name"]: e for e in container(build_job(b, by_step[step], 0, FULL))["env"]}
        assert env["OPENAI_API_KEY"]["valueFrom"] == key
    assert "OPENAI_API_KEY" not in {e["name"] for e in container(build_job(b, by_step["train"], 0, FULL))["env"]}


def test_a_job_seen_finished_then_gone_counts_until_the_status_records_it():
    done = {"metadata": {"name": "r-collect-0"}, "status": {"succeeded": 1, "conditions": [
        {"type": "Complete", "status": "True"}]}}
    running = {"metadata": {"name": "r-collect-1"}, "status": {"active": 1}}
    seen = {"r-collect-0": done}
    # Deleted by a TTL of 0 before any pass saw it: without it the plan would create r-collect-0 again.
    assert with_unrecorded_finished([running], seen, {}) == [running, done]
    assert with_unrecorded_finished([running, done], seen, {}) == [running, done]  # still listed: once
    recorded = {"jobs": {"collect-0": {"name": "r-collect-0", "state": "Succeeded", "attempts": 1}}}
    assert with_unrecorded_finished([running], seen, recorded) == [running]  # recorded: the durable path


def test_a_finished_job_being_deleted_still_decides_its_unit():
    """The TTL controller deletes in the foreground: the finished Job lingers with a deletionTimestamp while
    its pods go. Its outcome stands; an unfinished Job being deleted is gone and made again."""
    b = body()
    jobs = [job(b, Unit("collect", 0, 2), 0, "Succeeded"), job(b, Unit("collect", 1, 2), 0, "Running")]
    for j in jobs:
        j["metadata"]["deletionTimestamp"] = "T0"
    p = plan(b, jobs, lambda j: {"result": {"trajectories": 3}}, "T1")
    assert p.status["jobs"]["collect-0"]["state"] == "Succeeded"
    assert [(u.key, a) for u, a in p.create] == [("collect-1", 0)]


def _apply_merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386, as the API server applies a merge patch."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = _apply_merge_patch(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


def test_a_status_write_sends_only_what_changed_and_the_server_ends_at_the_new_status():
    from controller.kube import merge_patch

    old = {"phase": "Collecting", "jobs": {"collect-0": {"name": "r-collect-0", "state": "Pending"},
                                           "collect-1": {"name": "r-collect-1", "state": "Pending"}},
           "conditions": [{"type": "Progressing", "status": "True"}], "noise": 3, "acceptedSpec": {"a": 1}}
    new = copy.deepcopy(old)
    new["jobs"]["collect-0"].update(state="Succeeded", result={"pairs": 2})
    new["conditions"][0]["message"] = "step collect: r-collect-1"
    del new["noise"]
    new["results"] = {"pairs": 2, "unset": None}
    patch = merge_patch(old, new)
    assert patch == {"jobs": {"collect-0": {"state": "Succeeded", "result": {"pairs": 2}}},
                     "conditions": new["conditions"], "noise": None, "results": {"pairs": 2, "unset": None}}
    assert _apply_merge_patch(old, patch) == {**new, "results": {"pairs": 2}}  # a null is not stored
    assert merge_patch(new, new) == {} and merge_patch(old, {**old, "extra": None}) == {}


def test_a_shard_that_finished_while_its_step_runs_waits_for_the_steps_write_unless_its_job_may_vanish():
    from controller.handlers import worth_writing

    b = body()
    running = [job(b, Unit("collect", 0, 2), 0, "Running"), job(b, Unit("collect", 1, 2), 0, "Running")]
    shown = plan(b, running, no_inspect, "T0").status
    assert not worth_writing(plan({**b, "status": shown}, running, no_inspect, "T1").status, shown, running)
    one = [job(b, Unit("collect", 0, 2), 0, "Succeeded"), running[1]]
    found = {"result": {"trajectories": 3}}
    news = plan({**b, "status": shown}, one, lambda j: found, "T1").status
    assert news["jobs"]["collect-0"]["state"] == "Succeeded"  # the truth, written with the step's next write
    assert not worth_writing(news, shown, one)
    ttl = [{**one[0], "spec": {**one[0]["spec"], "ttlSecondsAfterFinished": 0}}, running[1]]
    assert worth_writing(news, shown, ttl)  # the TTL controller may delete it before the step ends
    both = [one[0], job(b, Unit("collect", 1, 2), 0, "Succeeded")]
    done = plan({**b, "status": shown}, both, lambda j: found, "T2").status
    assert done["phase"] == "Preferences" and worth_writing(done, shown, both)
    failed = [one[0], job(b, Unit("collect", 1, 2), 0, "Failed")]
    retry = plan({**b, "status": shown}, failed, lambda j: {"reason": "OOMKilled", "logs": ""}, "T2").status
    assert worth_writing(retry, shown, failed)  # a failure is news at once
