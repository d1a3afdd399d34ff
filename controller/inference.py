"""Served inference for a round's collect and evaluate stages: pure builders and the pure decision of what the
operator does about the server (handlers.py makes the API calls).

With `spec.model.server.vllm`, the operator starts a vLLM server (a Deployment + Service on the inference pool)
when a stage that generates begins, holds that stage's Jobs back until the server is ready, and removes it when
the stage ends: many CPU-only step Jobs then share one batched, prefix-cached model instead of loading one copy
each. With `spec.model.server.url` an existing server is used and nothing is started. Either way the step Jobs
get the server's OpenAI base URL and model names in their environment (STEP_ENV below).

The server serves the model the round starts from (the fromRound merge or the base) as `start`; in evaluate,
the round's own LoRA adapter is served as `round` on top of it, so one server answers both evaluation arms.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from agentq.config import (
    INFERENCE_MODEL_ENV,
    INFERENCE_ROUND_MODEL_ENV,
    INFERENCE_URL_ENV,
    STORE_MODEL,
    RoundSpec,
)
from controller.jobs import (
    CONTAINER_SECURITY,
    POD_SECURITY,
    PVC_MOUNT,
    ROUND_LABEL,
    SERVED_STEPS,
    _fit,
    _store_wiring,
    owner_reference,
    pool_placement,
    served,
)
from controller.settings import OperatorSettings

SERVER_LABEL = "agentq.dev/inference-server"
STAGE_LABEL = "agentq.dev/inference-stage"
PORT = 8000
CONDITION = "InferenceServerReady"
START_MODEL, ROUND_MODEL = "start", "round"
URL_ENV, MODEL_ENV, ROUND_MODEL_ENV = INFERENCE_URL_ENV, INFERENCE_MODEL_ENV, INFERENCE_ROUND_MODEL_ENV
LORA_RANKS = (8, 16, 32, 64, 128, 256)  # the --max-lora-rank values vLLM accepts
SERVER_UID = 10001  # the uid the agentq images use; any non-root uid meets the restricted level


class UnsupportedServer(ValueError):
    """The round's model cannot be served from where it is kept (a model in an S3 store)."""


def server_name(round_name: str, step: str) -> str:
    return _fit(f"{round_name}-infer-{step}")


def _model_path(spec: RoundSpec, round_name: str) -> str:
    """Where the server loads the model the round starts from: the store's copy (PVC) or the hub name."""
    model = spec.model
    if model.from_round:
        key = f"rounds/{model.from_round}/merged"
    elif model.base.startswith(STORE_MODEL):
        key = model.base[len(STORE_MODEL):].strip("/")
    else:
        return model.base  # a hub name: the operator's model cache (HF_HOME) serves it
    if not spec.store.pvc:
        raise UnsupportedServer(f"round {round_name}: the model is kept in the artifact store ({key}); a served "
                                "model needs store.pvc, which the server mounts (S3 is not supported)")
    return f"{PVC_MOUNT}/{key}"


def base_url(round_name: str, namespace: str, step: str, spec: RoundSpec) -> str:
    assert spec.model.server is not None
    if spec.model.server.url:
        return spec.model.server.url
    return f"http://{server_name(round_name, step)}.{namespace}.svc:{PORT}/v1"


def step_env(spec: RoundSpec, round_name: str, namespace: str, step: str) -> list[dict[str, str]]:
    """Environment of a served step's container: where the model is and what it is called there."""
    if not served(spec, step):
        return []
    assert spec.model.server is not None
    existing = spec.model.server.url is not None  # serves its model under the name it was started with: the base
    env = [{"name": URL_ENV, "value": base_url(round_name, namespace, step, spec)},
           {"name": MODEL_ENV, "value": spec.model.base if existing else START_MODEL}]
    if step == "evaluate" and not existing:
        env.append({"name": ROUND_MODEL_ENV, "value": ROUND_MODEL})
    return env


def _args(spec: RoundSpec, round_name: str, step: str, gpus: int) -> list[str]:
    vllm = spec.model.server.vllm  # type: ignore[union-attr]
    args = ["--model", _model_path(spec, round_name), "--served-model-name", START_MODEL, "--port", str(PORT),
            "--enable-prefix-caching"]  # siblings and whole trees share their prompt's prefix
    if gpus > 1:
        args += ["--tensor-parallel-size" if vllm.parallel == "tensor" else "--data-parallel-size", str(gpus)]
    if step == "evaluate":
        adapter = f"{PVC_MOUNT}/rounds/{round_name}/adapter"
        rank = next((r for r in LORA_RANKS if r >= spec.train.lora.r), LORA_RANKS[-1])
        args += ["--enable-lora", "--lora-modules", f"{ROUND_MODEL}={adapter}", "--max-lora-rank", str(rank)]
    return args + list(vllm.extra_args)


def build_server(body: dict[str, Any], step: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The Deployment and Service of the vLLM server for one stage of the round `body` (owned by the round, so
    deleting the round removes them too). Raises UnsupportedServer when the model cannot be served."""
    spec = RoundSpec.model_validate(body["spec"])
    meta = body["metadata"]
    round_name, namespace = meta["name"], meta["namespace"]
    vllm = spec.model.server.vllm if spec.model.server else None
    if vllm is None:
        raise ValueError(f"round {round_name}: spec.model.server.vllm is not set")
    name = server_name(round_name, step)
    where = pool_placement("inference", spec, settings)
    gpus = vllm.gpus if vllm.gpus is not None else where.gpus
    env, env_from, volumes, mounts = _store_wiring(spec)
    if settings.model_cache:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": settings.model_cache.pvc}})
        mounts.append({"name": "model-cache", "mountPath": settings.model_cache.mount_path})
        env.append({"name": "HF_HOME", "value": settings.model_cache.mount_path})
    if where.shm_size:  # tensor parallel workers talk through /dev/shm
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": where.shm_size}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    resources = {kind: dict(values) for kind, values in where.resources.items()}
    if gpus:
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {})["nvidia.com/gpu"] = gpus
    container: dict[str, Any] = {
        "name": "server", "image": vllm.image or settings.images.inference_server,
        "imagePullPolicy": settings.images.pull_policy,
        # A writable home for the server's caches: the pod runs as SERVER_UID, which the image need not know.
        "args": _args(spec, round_name, step, gpus), "env": [*env, {"name": "HOME", "value": "/tmp"}],
        "volumeMounts": mounts, "securityContext": CONTAINER_SECURITY,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": PORT}, "periodSeconds": 5, "failureThreshold": 3},
    }
    if settings.images.inference_server_command:
        container["command"] = list(settings.images.inference_server_command)
    if env_from:
        container["envFrom"] = env_from
    if resources:
        container["resources"] = resources
    # The restricted Pod Security level, as the step pods: vLLM's image runs as root unless told otherwise.
    pod: dict[str, Any] = {"containers": [container], "volumes": volumes, "automountServiceAccountToken": False,
                           "securityContext": {**POD_SECURITY, "runAsUser": SERVER_UID, "runAsGroup": SERVER_UID}}
    if where.node_selector:
        pod["nodeSelector"] = where.node_selector
    if where.tolerations:
        pod["tolerations"] = where.tolerations
    if where.priority_class_name:
        pod["priorityClassName"] = where.priority_class_name
    if settings.images.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in settings.images.pull_secrets]
    # The round's pass-through labels and annotations (a Kueue queue, a cost centre), as on its Jobs; agentq's
    # own labels win.
    labels = {**spec.job_template.labels, ROUND_LABEL: round_name, STAGE_LABEL: step, SERVER_LABEL: name}
    annotations = dict(spec.job_template.annotations)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels,
                                "ownerReferences": [owner_reference(body)]}
    template_meta: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = template_meta["annotations"] = annotations
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": 1, "selector": {"matchLabels": {SERVER_LABEL: name}},
                 "template": {"metadata": template_meta, "spec": pod}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": dict(metadata),
        "spec": {"selector": {SERVER_LABEL: name},
                 "ports": [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]},
    }
    return [deployment, service]


def readiness(deployment: dict[str, Any] | None, service: bool, now: str, timeout_s: int) -> tuple[bool, str, str]:
    """(ready, reason, message) of a server as the API server reports it: ready only when its Deployment has an
    available replica AND its Service exists (the step Jobs reach the server through the Service's name)."""
    if deployment is None:
        return False, "Creating", "the inference server is being created"
    name = deployment["metadata"]["name"]
    status = deployment.get("status") or {}
    if (status.get("availableReplicas") or 0) >= 1:
        if not service:
            return False, "ServiceMissing", f"Deployment {name} is available but its Service {name} does not exist"
        return True, "Ready", f"Deployment {name} is available behind Service {name}"
    why = "; ".join(f"{c.get('reason')}: {c.get('message')}" for c in status.get("conditions") or []
                    if c.get("status") != "True") or "no replica available yet"
    created = deployment["metadata"].get("creationTimestamp")
    waited = (_time(now) - _time(created)).total_seconds() if created else 0.0
    if waited > timeout_s:
        return False, "Timeout", f"Deployment {name} not ready after {timeout_s}s ({why})"
    return False, "Starting", f"Deployment {name} not ready yet after {waited:.0f}s ({why})"


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@dataclass
class ServerPlan:
    """What the operator does about inference servers in one pass."""

    create: list[dict[str, Any]] = field(default_factory=list)  # manifests of the missing objects
    delete: list[str] = field(default_factory=list)  # server names (Deployment and Service alike)
    hold: str | None = None  # a step whose new Jobs must wait for its server
    condition: tuple[bool, str, str] | None = None  # (ready, reason, message) of InferenceServerReady
    problem: tuple[str, str] | None = None  # shown in the Blocked condition


def plan_servers(body: dict[str, Any], step: str | None, done: bool, deployments: list[dict[str, Any]],
                 services: list[dict[str, Any]], now: str, settings: OperatorSettings) -> ServerPlan:
    """The server the round's current `step` needs (none once the round is `done`), the ones to remove (a
    stage that ended), and whether the step's Jobs must wait. `deployments`, `services`: the round's server
    objects as observed; whichever of the two is missing is created (an operator that died between them)."""
    spec = RoundSpec.model_validate(body["spec"])
    name = body["metadata"]["name"]
    vllm = spec.model.server.vllm if spec.model.server else None
    wanted = server_name(name, step) if vllm and step in SERVED_STEPS and not done else None
    live = {d["metadata"]["name"]: d for d in deployments if not d["metadata"].get("deletionTimestamp")}
    fronted = {s["metadata"]["name"] for s in services if not s["metadata"].get("deletionTimestamp")}
    out = ServerPlan(delete=sorted(n for n in set(live) | fronted if n != wanted))
    if wanted is None or vllm is None or step is None:
        return out
    try:
        manifests = build_server(body, step, settings)
    except UnsupportedServer as err:
        out.hold, out.condition = step, (False, "UnsupportedStore", str(err))
        out.problem = ("InferenceServer", str(err))
        return out
    out.create = [m for m in manifests if m["metadata"]["name"] not in (live if m["kind"] == "Deployment" else fronted)]
    ready, reason, message = readiness(live.get(wanted), wanted in fronted, now, vllm.ready_timeout_seconds)
    out.condition = (ready, reason, message)
    if not ready:
        out.hold = step
        if reason == "Timeout":
            out.problem = ("InferenceServerNotReady", message)
    return out
