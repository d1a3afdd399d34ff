"""Pure builders: an AgentQRound (a dict as the API server returns it) + a step -> the manifests that run it.

No API calls here, so every placement, GPU request, volume and name is checked by plain unit tests. Each
Job's container runs the same `agentq <step>` command the embedded runner runs; the round file reaches it
through the `<round>-spec` ConfigMap mounted at /etc/agentq/.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from agentq.config import API_VERSION, KIND, PoolSpec, RoundFile, RoundSpec, dump_round
from controller.settings import OperatorSettings

ROUND_LABEL = "agentq.dev/round"
UNIT_LABEL = "agentq.dev/unit"
STEP_LABEL = "agentq.dev/step"
ATTEMPT_LABEL = "agentq.dev/attempt"
SPEC_DIR = "/etc/agentq"
ROUND_PATH = f"{SPEC_DIR}/round.yaml"
PVC_MOUNT = "/artifacts"
RESULT_FILE = "/dev/termination-log"
MAX_NAME = 63  # Job names become the pods' `job-name` label value

# The round's steps in order and the phase each one shows. `report` combines the evaluate shards
# (`agentq evaluate --report-only`), so the round is still Evaluating while it runs.
STEPS = ("collect", "preferences", "train", "merge", "evaluate", "report")
PHASE_OF_STEP = {"collect": "Collecting", "preferences": "Preferences", "train": "Training",
                 "merge": "Merging", "evaluate": "Evaluating", "report": "Evaluating"}
INFERENCE_STEPS = {"collect", "evaluate", "merge"}
TRAINING_STEPS = {"train"}
SANDBOX_STEPS = {"collect", "evaluate"}


@dataclass(frozen=True)
class Unit:
    """One Job's worth of work: a step, or one shard of a sharded step."""

    step: str
    shard: int | None = None
    num_shards: int = 1

    @property
    def key(self) -> str:
        return self.step if self.shard is None else f"{self.step}-{self.shard}"

    def command(self) -> list[str]:
        if self.step == "report":
            return ["agentq", "evaluate", "--round", ROUND_PATH, "--report-only"]
        cmd = ["agentq", self.step, "--round", ROUND_PATH]
        if self.shard is not None:
            cmd += ["--shard", str(self.shard), "--num-shards", str(self.num_shards)]
        return cmd


def units(spec: RoundSpec) -> list[list[Unit]]:
    """The round as stages: every Unit of a stage may run at once; a stage starts when the previous is done."""
    stages: list[list[Unit]] = []
    for step in STEPS:
        shards = {"collect": spec.collect.shards, "evaluate": spec.evaluate.shards}.get(step)
        if shards is None:
            stages.append([Unit(step)])
        else:
            stages.append([Unit(step, i, shards) for i in range(shards)])
    return stages


def _fit(name: str) -> str:
    """Kubernetes names are capped; a long one keeps its head and gets a stable hash tail."""
    if len(name) <= MAX_NAME:
        return name
    tail = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{tail}"


def job_name(round_name: str, unit: Unit, attempt: int) -> str:
    """Deterministic, so a restarted operator finds the Job it created instead of making a twin."""
    suffix = f"-r{attempt}" if attempt else ""
    return _fit(f"{round_name}-{unit.key}{suffix}")


def spec_configmap_name(round_name: str) -> str:
    return _fit(f"{round_name}-spec")


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def round_file(body: dict[str, Any]) -> RoundFile:
    """The resource as the round file every step reads (metadata trimmed to the name)."""
    return RoundFile.model_validate({"apiVersion": API_VERSION, "kind": KIND,
                                     "metadata": {"name": body["metadata"]["name"]}, "spec": body["spec"]})


def spec_configmap(body: dict[str, Any], name: str | None = None, owner: dict | None = None) -> dict[str, Any]:
    """The round file as a ConfigMap; owned by the round unless another `owner` reference is given."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name or spec_configmap_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {ROUND_LABEL: meta["name"]}, "ownerReferences": [owner or owner_reference(body)]},
        "data": {"round.yaml": dump_round(round_file(body))},
    }


def _pool(unit: Unit, spec: RoundSpec, settings: OperatorSettings) -> tuple[dict, list[dict], int]:
    """nodeSelector, tolerations and GPUs for a unit: operator pools, overridden field by field by the round."""
    if unit.step in INFERENCE_STEPS:
        base, override = settings.pools.inference, spec.placement.inference
        gpus = base.gpus_per_shard
    elif unit.step in TRAINING_STEPS:
        base, override = settings.pools.training, spec.placement.training
        gpus = base.gpus
    else:  # preferences and report are CPU work: default nodes, no GPU
        return {}, [], 0
    override = override or PoolSpec()
    selector = override.node_selector if override.node_selector is not None else base.node_selector
    tolerations = override.tolerations if override.tolerations is not None else base.tolerations
    gpus = override.gpus if override.gpus is not None else gpus
    dumped = [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations]
    return dict(selector), dumped, gpus


def _store_wiring(spec: RoundSpec) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """env, envFrom, volumes, volumeMounts that give a pod the round's artifact store."""
    env: list[dict] = []
    env_from: list[dict] = []
    volumes: list[dict] = []
    mounts: list[dict] = []
    store = spec.store
    if store.pvc:
        volumes.append({"name": "artifacts", "persistentVolumeClaim": {"claimName": store.pvc}})
        mounts.append({"name": "artifacts", "mountPath": PVC_MOUNT})
        env.append({"name": "AGENTQ_STORE_PATH", "value": PVC_MOUNT})
    elif store.s3:
        env.append({"name": "AGENTQ_S3_BUCKET", "value": store.s3.bucket})
        if store.s3.endpoint:
            env.append({"name": "AGENTQ_S3_ENDPOINT", "value": store.s3.endpoint})
        if store.s3.secret_ref:
            env_from.append({"secretRef": {"name": store.s3.secret_ref}})
    return env, env_from, volumes, mounts


def _pod_spec(spec: RoundSpec, configmap: str, container: dict, settings: OperatorSettings,
              node_selector: dict | None = None, tolerations: list | None = None) -> dict[str, Any]:
    env, env_from, volumes, mounts = _store_wiring(spec)
    volumes.append({"name": "round-spec", "configMap": {"name": configmap}})
    mounts.append({"name": "round-spec", "mountPath": SPEC_DIR, "readOnly": True})
    container = {
        **container,
        "imagePullPolicy": settings.images.pull_policy,
        "env": env + container.get("env", []),
        "volumeMounts": mounts,
        # The step writes its JSON result here; on a crash the log tail lands here instead.
        "terminationMessagePath": RESULT_FILE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if settings.job_service_account:
        pod["serviceAccountName"] = settings.job_service_account
    return pod


def _job(body: dict[str, Any], name: str, labels: dict[str, str], pod: dict[str, Any],
         owned: bool = True) -> dict[str, Any]:
    meta = body["metadata"]
    metadata: dict[str, Any] = {"name": name, "namespace": meta["namespace"], "labels": labels}
    if owned:
        metadata["ownerReferences"] = [owner_reference(body)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        # Retries are the operator's (spec.backoffLimit, new Job name per attempt), so each attempt's
        # failure reason and logs stay inspectable.
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def image_for(unit_step: str, spec: RoundSpec, settings: OperatorSettings) -> str:
    if spec.image:
        return spec.image
    return settings.images.train if unit_step in TRAINING_STEPS else settings.images.infer


def build_job(body: dict[str, Any], unit: Unit, attempt: int, settings: OperatorSettings) -> dict[str, Any]:
    """The Job for one attempt at one unit of the round `body`."""
    spec = RoundSpec.model_validate(body["spec"])
    round_name = body["metadata"]["name"]
    node_selector, tolerations, gpus = _pool(unit, spec, settings)
    env = [{"name": "AGENTQ_RESULT_FILE", "value": RESULT_FILE}]
    sandbox_url = spec.sandbox.url or settings.sandbox_url
    if unit.step in SANDBOX_STEPS and sandbox_url:
        env.append({"name": "SANDBOX_URL", "value": sandbox_url})
        if settings.sandbox_token_secret:
            ref = {"name": settings.sandbox_token_secret, "key": "token"}
            env.append({"name": "AGENTQ_SANDBOX_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    container: dict[str, Any] = {"name": "step", "image": image_for(unit.step, spec, settings),
                                 "command": unit.command(), "env": env}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}}
    labels = {ROUND_LABEL: round_name, STEP_LABEL: unit.step, UNIT_LABEL: unit.key, ATTEMPT_LABEL: str(attempt)}
    pod = _pod_spec(spec, spec_configmap_name(round_name), container, settings, node_selector, tolerations)
    return _job(body, job_name(round_name, unit, attempt), labels, pod)


def cleanup_name(round_name: str) -> str:
    return _fit(f"{round_name}-cleanup")


def cleanup_job(body: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """Removes a deleted round's artifacts (spec.deleteArtifacts). It outlives the round, so it is not owned
    by it and reads the spec from its own ConfigMap `<round>-cleanup`, which the Job owns in turn."""
    spec = RoundSpec.model_validate(body["spec"])
    round_name = body["metadata"]["name"]
    container = {"name": "cleanup", "image": settings.images.infer,
                 "command": ["agentq", "round", "clean", ROUND_PATH]}
    labels = {ROUND_LABEL: round_name, STEP_LABEL: "cleanup", UNIT_LABEL: "cleanup", ATTEMPT_LABEL: "0"}
    pod = _pod_spec(spec, cleanup_name(round_name), container, settings)
    job = _job(body, cleanup_name(round_name), labels, pod, owned=False)
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    return job


def cleanup_configmap(body: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
             "uid": job["metadata"]["uid"]}
    return spec_configmap(body, cleanup_name(body["metadata"]["name"]), owner)
