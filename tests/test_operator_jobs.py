"""controller/jobs.py and controller/reconcile.py are pure: every manifest and decision is checked here
without a cluster."""

from __future__ import annotations

import copy
import subprocess
import sys

import yaml

from agentq.config import RoundFile
from controller.crd import render
from controller.jobs import Unit, build_job, cleanup_job, job_name, spec_configmap, units
from controller.reconcile import plan
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


def test_checked_in_crd_is_not_stale():
    with open("manifests/crd.yaml") as fh:
        assert fh.read() == render(), "manifests/crd.yaml is stale: python -m controller.crd > manifests/crd.yaml"


def test_crd_schema_keeps_validation():
    crd = yaml.safe_load(render())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["dataset", "store"]
    assert spec["properties"]["collect"]["properties"]["shards"]["minimum"] == 1
    assert spec["properties"]["model"]["properties"]["backend"]["enum"] == ["hf", "vllm", "scripted"]
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
    code = ("import sys, controller.handlers, controller.testenv; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'trl', 'peft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
