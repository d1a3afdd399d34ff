"""Pure builders: an AgentQRound (a dict as the API server returns it) + a step -> the manifests that run it.

No API calls here, so every placement, GPU request, volume and name is checked by plain unit tests. Each
Job's container runs the same `agentq <step>` command the embedded runner runs; the round file reaches it
through the `<round>-spec` ConfigMap mounted at /etc/agentq/.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agentq.config import API_VERSION, KIND, RoundFile, RoundSpec, dump_round
from controller.settings import OperatorSettings, Pool

ROUND_LABEL = "agentq.dev/round"
UNIT_LABEL = "agentq.dev/unit"
STEP_LABEL = "agentq.dev/step"
ATTEMPT_LABEL = "agentq.dev/attempt"
SPEC_HASH_ANNOTATION = "agentq.dev/spec-hash"
# Set on a Job in the same PATCH that suspends it (spec.suspend) because its round is suspended: the record of
# what the operator suspended lives on the Job, so no lost status write or crash can part it from the act, and
# a Job someone else holds suspended (Kueue, before admission) is never resumed by the operator.
SUSPENDED_ANNOTATION = "agentq.dev/suspended-by-round"
CLEANUP_UNIT = "cleanup"
# What may change once a round has started: everything else would mix two settings in one round's artifacts.
MUTABLE_FIELDS = ("suspend", "backoffLimit")
SPEC_DIR = "/etc/agentq"
ROUND_PATH = f"{SPEC_DIR}/round.yaml"
PVC_MOUNT = "/artifacts"
SCRATCH_MOUNT = "/scratch"
RESULT_FILE = "/dev/termination-log"
MAX_NAME = 63  # Job names become the pods' `job-name` label value

# The round's steps in order and the phase each one shows. `report` combines the evaluate shards
# (`agentq evaluate --report-only`), so the round is still Evaluating while it runs.
# `model` (`agentq model fetch`) runs first only when the round copies its base model into the store.
STEPS = ("model", "collect", "preferences", "train", "merge", "evaluate", "report")
PHASE_OF_STEP = {"model": "Initializing", "collect": "Collecting", "preferences": "Preferences",
                 "train": "Training", "merge": "Merging", "evaluate": "Evaluating", "report": "Evaluating"}
INFERENCE_STEPS = {"collect", "evaluate", "merge"}
TRAINING_STEPS = {"train"}
SANDBOX_STEPS = {"collect", "evaluate"}
# Steps whose pods the sandbox's NetworkPolicy admits: also train, whose GRPO reward runs every completion.
SANDBOX_CLIENTS = SANDBOX_STEPS | {"train"}
SERVED_STEPS = ("collect", "evaluate")  # the steps that may use a served model (spec.model.server)


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
        if self.step == "model":
            return ["agentq", "model", "fetch", "--round", ROUND_PATH]
        cmd = ["agentq", self.step, "--round", ROUND_PATH]
        if self.shard is not None:
            cmd += ["--shard", str(self.shard), "--num-shards", str(self.num_shards)]
        return cmd


def units(spec: RoundSpec) -> list[list[Unit]]:
    """The round as stages: every Unit of a stage may run at once; a stage starts when the previous is done."""
    stages: list[list[Unit]] = []
    for step in STEPS:
        if step == "model" and not spec.model.fetch_from:
            continue
        shards = {"collect": spec.collect.shards, "evaluate": spec.evaluate.shards}.get(step)
        if shards is None:
            stages.append([Unit(step)])
        else:
            stages.append([Unit(step, i, shards) for i in range(shards)])
    return stages


def spec_hash(spec: dict[str, Any]) -> str:
    """What a Job was made from, stamped on it: the spec without the fields that may change mid-round."""
    fixed = {k: v for k, v in spec.items() if k not in MUTABLE_FIELDS}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


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


@dataclass(frozen=True)
class Placement:
    """Where one unit's pod runs and what it gets: the operator's pool, overridden field by field by the round."""

    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    gpus: int
    resources: dict[str, dict[str, str]]
    shm_size: str | None
    scratch_size: str | None
    priority_class_name: str | None


def served(spec: RoundSpec, step: str) -> bool:
    """Whether `step` reaches its model over HTTP (spec.model.server): its Jobs then run on the CPU pool."""
    return spec.model.server is not None and step in SERVED_STEPS


def placement(unit: Unit, spec: RoundSpec, settings: OperatorSettings) -> Placement:
    if unit.step in INFERENCE_STEPS and not served(spec, unit.step):
        return pool_placement("inference", spec, settings)
    if unit.step in TRAINING_STEPS:
        return pool_placement("training", spec, settings)
    return pool_placement("cpu", spec, settings)  # preferences, report and served steps: CPU work, never a GPU


def pool_placement(pool: str, spec: RoundSpec, settings: OperatorSettings) -> Placement:
    """A pod on `pool` (inference, training or cpu): the operator's pool, overridden field by field by the round."""
    base: Pool
    if pool == "inference":
        base, override = settings.pools.inference, spec.placement.inference
        gpus = override.gpus if override.gpus is not None else settings.pools.inference.gpus_per_shard
    elif pool == "training":
        base, override = settings.pools.training, spec.placement.training
        gpus = override.gpus if override.gpus is not None else settings.pools.training.gpus
    else:
        base, override, gpus = settings.pools.cpu, spec.placement.cpu, 0

    def pick(name: str) -> Any:
        value = getattr(override, name)
        return value if value is not None else getattr(base, name)

    return Placement(
        node_selector=dict(pick("node_selector")),
        tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in pick("tolerations")],
        gpus=gpus,
        resources={k: dict(v) for k, v in pick("resources").model_dump().items() if v},
        shm_size=pick("shm_size"), scratch_size=pick("scratch_size"), priority_class_name=pick("priority_class_name"))


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


# The "restricted" Pod Security level: every step image runs as a numeric non-root uid (10001).
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def _pod_spec(spec: RoundSpec, configmap: str, container: dict, settings: OperatorSettings,
              where: Placement | None = None) -> dict[str, Any]:
    env, env_from, volumes, mounts = _store_wiring(spec)
    volumes.append({"name": "round-spec", "configMap": {"name": configmap}})
    mounts.append({"name": "round-spec", "mountPath": SPEC_DIR, "readOnly": True})
    if where and where.shm_size:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": where.shm_size}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if settings.model_cache:
        # A shared Hugging Face cache (a ReadWriteMany PVC): hub models load from it with the hub offline.
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": settings.model_cache.pvc}})
        mounts.append({"name": "model-cache", "mountPath": settings.model_cache.mount_path})
        env.append({"name": "HF_HOME", "value": settings.model_cache.mount_path})
    if where and where.scratch_size:
        volumes.append({"name": "scratch", "emptyDir": {"sizeLimit": where.scratch_size}})
        mounts.append({"name": "scratch", "mountPath": SCRATCH_MOUNT})
        # agentq's local cache (models copied from the store, built models) and temporary files go there.
        env += [{"name": "AGENTQ_CACHE", "value": f"{SCRATCH_MOUNT}/cache"}, {"name": "TMPDIR", "value": SCRATCH_MOUNT}]
    container = {
        **container,
        "imagePullPolicy": settings.images.pull_policy,
        "env": env + container.get("env", []),
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY,
        # The step writes its JSON result here; on a crash the log tail lands here instead.
        "terminationMessagePath": RESULT_FILE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    # Steps never call the Kubernetes API: no token in the pod.
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes,
                           "securityContext": POD_SECURITY, "automountServiceAccountToken": False}
    if where and where.node_selector:
        pod["nodeSelector"] = where.node_selector
    if where and where.tolerations:
        pod["tolerations"] = where.tolerations
    if where and where.priority_class_name:
        pod["priorityClassName"] = where.priority_class_name
    if settings.job_service_account:
        pod["serviceAccountName"] = settings.job_service_account
    if settings.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in settings.images.pull_secrets]
    return pod


def _job(body: dict[str, Any], name: str, labels: dict[str, str], pod: dict[str, Any],
         owned: bool = True) -> dict[str, Any]:
    meta = body["metadata"]
    spec = RoundSpec.model_validate(body["spec"])
    # The round's pass-through labels (a Kueue queue, a cost centre) never replace agentq's own.
    labels = {**spec.job_template.labels, **labels}
    annotations = dict(spec.job_template.annotations)
    metadata: dict[str, Any] = {"name": name, "namespace": meta["namespace"], "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    if owned:
        metadata["ownerReferences"] = [owner_reference(body)]
    template_meta: dict[str, Any] = {"labels": labels, **({"annotations": annotations} if annotations else {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            # Retries are the operator's (spec.backoffLimit, new Job name per attempt), so each attempt's
            # failure reason and logs stay inspectable.
            "backoffLimit": 0,
            # A pod evicted by a node drain or preempted is not the step's failure: the Job controller starts
            # another pod instead of failing the attempt (Kubernetes 1.26+; older servers drop the field).
            "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [
                {"type": "DisruptionTarget", "status": "True"}]}]},
            "template": {"metadata": template_meta, "spec": pod},
        },
    }


def image_for(unit_step: str, spec: RoundSpec, settings: OperatorSettings) -> str:
    if spec.image:
        return spec.image
    return settings.images.train if unit_step in TRAINING_STEPS else settings.images.infer


def build_job(body: dict[str, Any], unit: Unit, attempt: int, settings: OperatorSettings) -> dict[str, Any]:
    """The Job for one attempt at one unit of the round `body`."""
    spec = RoundSpec.model_validate(body["spec"])
    round_name = body["metadata"]["name"]
    where = placement(unit, spec, settings)
    env = [{"name": "AGENTQ_RESULT_FILE", "value": RESULT_FILE}]
    sandbox_url = spec.sandbox.url or settings.sandbox_url
    # GRPO's reward is the sandbox's verdict on each completion, so its train Job reaches the sandbox too.
    runs_candidates = unit.step in SANDBOX_STEPS or (unit.step == "train" and spec.train.method == "grpo")
    if runs_candidates and sandbox_url:
        env.append({"name": "SANDBOX_URL", "value": sandbox_url})
        if settings.sandbox_token_secret:
            ref = {"name": settings.sandbox_token_secret, "key": "token"}
            env.append({"name": "AGENTQ_SANDBOX_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    openai = spec.model.openai
    if unit.step in SANDBOX_STEPS and openai is not None and openai.api_key_secret:  # collect, evaluate
        ref = {"name": openai.api_key_secret, "key": "token"}
        env.append({"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": ref}})
    if unit.step == "model":  # the one step that may reach the hub: the images are offline otherwise
        env.append({"name": "HF_HUB_OFFLINE", "value": "0"})
        if spec.model.token_secret:
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": spec.model.token_secret,
                                                                           "key": "token"}}})
    if served(spec, unit.step):
        from controller.inference import step_env  # inference.py builds on this module's builders

        env += step_env(spec, round_name, body["metadata"]["namespace"], unit.step)
    container: dict[str, Any] = {"name": "step", "image": image_for(unit.step, spec, settings),
                                 "command": unit.command(), "env": env}
    resources = {kind: dict(values) for kind, values in where.resources.items()}
    if where.gpus:
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})["nvidia.com/gpu"] = where.gpus
    if resources:
        container["resources"] = resources
    labels = {ROUND_LABEL: round_name, STEP_LABEL: unit.step, UNIT_LABEL: unit.key, ATTEMPT_LABEL: str(attempt)}
    pod = _pod_spec(spec, spec_configmap_name(round_name), container, settings, where)
    job = _job(body, job_name(round_name, unit, attempt), labels, pod)
    job["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(body["spec"])
    deadline = getattr(spec.active_deadline_seconds, unit.step)
    if deadline:
        job["spec"]["activeDeadlineSeconds"] = deadline
    if settings.job_ttl_seconds is not None:
        job["spec"]["ttlSecondsAfterFinished"] = settings.job_ttl_seconds
    return job


def suspended_by_round(job: dict[str, Any]) -> bool:
    return (job["metadata"].get("annotations") or {}).get(SUSPENDED_ANNOTATION) == "true"


def job_suspended(job: dict[str, Any]) -> bool:
    """Whether the Job is held suspended: its spec.suspend, or on servers that drop that field (1.20) what the
    round's PATCH recorded beside it."""
    spec = job.get("spec") or {}
    return bool(spec["suspend"]) if "suspend" in spec else suspended_by_round(job)


def suspend_patch(suspend: bool) -> dict[str, Any]:
    """The one PATCH that suspends (or resumes) a round's Job and records (or clears) that the round did it."""
    return {"metadata": {"annotations": {SUSPENDED_ANNOTATION: "true" if suspend else None}},
            "spec": {"suspend": suspend}}


def cleanup_name(round_name: str) -> str:
    return _fit(f"{round_name}-cleanup")


def cleanup_job(body: dict[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """Removes a deleted round's artifacts (spec.deleteArtifacts). It outlives the round, so it is not owned
    by it and reads the spec from its own ConfigMap `<round>-cleanup`, which the Job owns in turn."""
    spec = RoundSpec.model_validate(body["spec"])
    round_name = body["metadata"]["name"]
    container = {"name": "cleanup", "image": settings.images.infer,
                 "command": ["agentq", "round", "clean", ROUND_PATH]}
    labels = {ROUND_LABEL: round_name, STEP_LABEL: CLEANUP_UNIT, UNIT_LABEL: CLEANUP_UNIT, ATTEMPT_LABEL: "0"}
    pod = _pod_spec(spec, cleanup_name(round_name), container, settings)
    job = _job(body, cleanup_name(round_name), labels, pod, owned=False)
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    return job


def cleanup_configmap(body: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
             "uid": job["metadata"]["uid"]}
    return spec_configmap(body, cleanup_name(body["metadata"]["name"]), owner)
