"""controller/inference.py is pure: the served-inference manifests and the operator's decisions about them,
checked without a cluster (tests/test_operator_cluster.py runs them against a real API server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentq.config import RoundFile
from agentq.policy.base import served_model
from controller.inference import (
    MODEL_ENV,
    ROUND_MODEL_ENV,
    URL_ENV,
    build_server,
    plan_servers,
    readiness,
    server_name,
)
from controller.jobs import Unit, build_job
from controller.settings import OperatorSettings

SETTINGS = OperatorSettings.model_validate({
    "pools": {
        "inference": {"nodeSelector": {"pool": "inference"}, "gpusPerShard": 4, "shmSize": "8Gi",
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "cpu": {"nodeSelector": {"pool": "cpu"}},
    },
    "images": {"infer": "infer:1", "inferenceServer": "vllm:1"},
})
NOW = "2026-01-01T00:10:00Z"


def body(server: dict, **model) -> dict:
    spec = {"dataset": {"train": "t.jsonl", "test": "e.jsonl"}, "store": {"pvc": "artifacts"},
            "collect": {"shards": 2}, "evaluate": {"shards": 1}, "train": {"lora": {"r": 12}},
            "model": {"base": "Qwen/Qwen2.5-7B-Instruct", "server": server, **model}}
    return {"apiVersion": "agentq.dev/v1alpha1", "kind": "AgentQRound",
            "metadata": {"name": "r1", "namespace": "ns", "uid": "u-1"}, "spec": spec}


def env_of(job: dict) -> dict:
    return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_server_is_a_prefix_cached_tensor_parallel_vllm_on_the_inference_pool():
    deployment, service = build_server(body({"vllm": {}}, fromRound="r0"), "collect", SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "r1-infer-collect"
    assert c["image"] == "vllm:1" and "command" not in c  # the image's entrypoint takes vLLM's arguments
    assert c["args"][:2] == ["--model", "/artifacts/rounds/r0/merged"]  # fromRound's merge, from the PVC
    assert "--enable-prefix-caching" in c["args"]
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "4"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert pod["nodeSelector"] == {"pool": "inference"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 8000
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_the_server_meets_restricted_pod_security_and_carries_the_rounds_job_template():
    """As the step pods: non-root (vLLM's image would run as root), RuntimeDefault seccomp, no privilege
    escalation, no capabilities; and the round's pass-through labels (a Kueue queue) and annotations."""
    import kubernetes_validate

    b = body({"vllm": {}})
    b["spec"]["jobTemplate"] = {"labels": {"kueue.x-k8s.io/queue-name": "gpu", "agentq.dev/round": "spoof"},
                                "annotations": {"team": "repair"}}
    deployment, service = build_server(b, "collect", SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] > 0 and sec["seccompProfile"] == {"type": "RuntimeDefault"}
    csec = pod["containers"][0]["securityContext"]
    assert csec["allowPrivilegeEscalation"] is False and csec["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "HOME", "value": "/tmp"} in pod["containers"][0]["env"]
    for meta in (deployment["metadata"], deployment["spec"]["template"]["metadata"]):
        assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu" and meta["annotations"] == {"team": "repair"}
        assert meta["labels"]["agentq.dev/round"] == "r1"  # agentq's own labels are never replaced
    assert service["spec"]["ports"][0]["protocol"] == "TCP"
    kubernetes_validate.validate(deployment, "1.33", strict=True)


def test_data_parallel_a_hub_base_and_the_round_adapter_in_evaluate():
    (deployment, _) = build_server(body({"vllm": {"parallel": "data", "gpus": 2, "extraArgs": ["--x"]}}),
                                   "evaluate", SETTINGS)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--model", "Qwen/Qwen2.5-7B-Instruct"]
    assert args[args.index("--data-parallel-size") + 1] == "2" and "--tensor-parallel-size" not in args
    assert args[args.index("--lora-modules") + 1] == "round=/artifacts/rounds/r1/adapter"
    assert args[args.index("--max-lora-rank") + 1] == "16"  # r=12 rounded up to a rank vLLM accepts
    assert args[-1] == "--x"


def test_served_steps_run_on_the_cpu_pool_and_get_the_servers_url():
    b = body({"vllm": {}})
    collect = build_job(b, Unit("collect", 0, 2), 0, SETTINGS)
    pod = collect["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0] and pod["nodeSelector"] == {"pool": "cpu"}
    assert env_of(collect)[URL_ENV] == "http://r1-infer-collect.ns.svc:8000/v1"
    evaluate = env_of(build_job(b, Unit("evaluate", 0, 1), 0, SETTINGS))
    assert evaluate[URL_ENV] == "http://r1-infer-evaluate.ns.svc:8000/v1" and evaluate[ROUND_MODEL_ENV] == "round"
    merge = build_job(b, Unit("merge"), 0, SETTINGS)  # merging still loads the model itself
    assert merge["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert URL_ENV not in env_of(merge)
    existing = env_of(build_job(body({"url": "http://llm.example:8000/v1"}), Unit("collect", 0, 2), 0, SETTINGS))
    assert existing[URL_ENV] == "http://llm.example:8000/v1"
    assert existing[MODEL_ENV] == "Qwen/Qwen2.5-7B-Instruct"  # an existing server serves the base by its name


def test_a_served_step_reads_the_jobs_environment_into_the_openai_backend():
    b = body({"vllm": {}})
    spec = RoundFile.model_validate(b).spec
    env = env_of(build_job(b, Unit("evaluate", 0, 1), 0, SETTINGS))
    model = served_model(spec.model, env)
    assert model.backend == "openai" and model.openai is not None
    assert (model.openai.url, model.openai.model, model.openai.round_model) == (
        "http://r1-infer-evaluate.ns.svc:8000/v1", "start", "round")
    assert served_model(spec.model, {}) == spec.model  # no server named: the spec's own backend
    unserved = RoundFile.model_validate({**b, "spec": {**b["spec"], "model": {"base": "tiny"}}}).spec.model
    assert served_model(unserved, env) == unserved


def test_readiness_says_why_and_times_out():
    dep = {"metadata": {"name": "s", "creationTimestamp": "2026-01-01T00:09:00Z"},
           "status": {"conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                                      "message": "Deployment does not have minimum availability."}]}}
    ready, reason, message = readiness(dep, True, NOW, 900)
    assert (ready, reason) == (False, "Starting") and "MinimumReplicasUnavailable" in message
    assert readiness(dep, True, NOW, 30)[1] == "Timeout"
    available = {**dep, "status": {"availableReplicas": 1}}
    assert readiness(available, True, NOW, 30)[:2] == (True, "Ready")
    # Without its Service no step Job can reach the server: not ready, whatever the Deployment says.
    assert readiness(available, False, NOW, 30)[:2] == (False, "ServiceMissing")
    assert readiness(None, True, NOW, 30)[:2] == (False, "Creating")


def test_plan_creates_holds_then_releases_and_removes_the_server_after_its_stage():
    b = body({"vllm": {"readyTimeoutSeconds": 30}})
    first = plan_servers(b, "collect", False, [], [], NOW, SETTINGS)
    assert [m["kind"] for m in first.create] == ["Deployment", "Service"] and first.hold == "collect"
    assert first.condition[:2] == (False, "Creating") and first.delete == []
    live = {"metadata": {"name": "r1-infer-collect", "creationTimestamp": NOW}, "status": {"availableReplicas": 1}}
    service = {"metadata": {"name": "r1-infer-collect"}}
    ready = plan_servers(b, "collect", False, [live], [service], NOW, SETTINGS)
    assert ready.create == [] and ready.hold is None and ready.condition[0] is True
    later = plan_servers(b, "train", False, [live], [service], NOW, SETTINGS)
    assert later.delete == ["r1-infer-collect"] and later.create == [] and later.condition is None
    done = plan_servers(b, "evaluate", True, [live], [service], NOW, SETTINGS)
    assert done.delete == ["r1-infer-collect"] and done.create == []
    orphan = plan_servers(b, "train", False, [], [service], NOW, SETTINGS)  # a Service left without its server
    assert orphan.delete == ["r1-infer-collect"]
    stuck = {"metadata": {"name": "r1-infer-collect", "creationTimestamp": "2026-01-01T00:00:00Z"}}
    late = plan_servers(b, "collect", False, [stuck], [service], NOW, SETTINGS)
    assert late.hold == "collect" and late.problem[0] == "InferenceServerNotReady"
    assert plan_servers(body({"url": "http://x/v1"}), "collect", False, [], [], NOW, SETTINGS).create == []


def test_an_operator_that_died_between_deployment_and_service_creates_the_service_and_holds_the_jobs():
    b = body({"vllm": {}})
    live = {"metadata": {"name": "r1-infer-collect", "creationTimestamp": NOW}, "status": {"availableReplicas": 1}}
    half = plan_servers(b, "collect", False, [live], [], NOW, SETTINGS)
    assert [m["kind"] for m in half.create] == ["Service"] and half.hold == "collect"
    assert half.condition[:2] == (False, "ServiceMissing")


def test_a_model_in_an_s3_store_cannot_be_served_and_says_so():
    b = body({"vllm": {}}, base="store:models/qwen")
    b["spec"]["store"] = {"s3": {"bucket": "b"}}
    out = plan_servers(b, "collect", False, [], [], NOW, SETTINGS)
    assert out.hold == "collect" and out.condition[1] == "UnsupportedStore" and "store.pvc" in out.condition[2]
    assert server_name("r1", "collect") == "r1-infer-collect"


def test_the_server_spec_takes_exactly_one_of_url_and_vllm():
    for server in ({}, {"url": "http://x/v1", "vllm": {}}):
        with pytest.raises(ValidationError, match="exactly one of url, vllm"):
            RoundFile.model_validate({"metadata": {"name": "r"}, "spec": body(server)["spec"]})
