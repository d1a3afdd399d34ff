"""The operator's own configuration (the Helm values): node pools, images, the sandbox Service.

Cluster-wide facts live here, not in each round, so a round file stays portable between clusters; a round's
`spec.placement` and `spec.image` override them for that round only.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from agentq.config import ConfigError, Quantity, Resources, Spec, Toleration, load_yaml

CONFIG_ENV = "AGENTQ_OPERATOR_CONFIG"


class Pool(Spec):
    """A node pool's placement and the shape of its step pods; a round's spec.placement overrides each field."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    shm_size: Quantity | None = Field(None, description="A memory-backed /dev/shm of this size.")
    scratch_size: Quantity | None = Field(None, description="An emptyDir at /scratch of this size (cache, TMPDIR).")
    priority_class_name: str | None = None


class InferencePool(Pool):
    gpus_per_shard: int = Field(1, ge=0, description="nvidia.com/gpu per collect/evaluate shard and per merge Job.")


class TrainingPool(Pool):
    gpus: int = Field(1, ge=0, description="nvidia.com/gpu for the DPO Job.")


class Pools(Spec):
    inference: InferencePool = Field(default_factory=InferencePool)
    training: TrainingPool = Field(default_factory=TrainingPool)
    cpu: Pool = Field(default_factory=Pool, description="preferences and report (no GPU).")


class Images(Spec):
    infer: str = "ghcr.io/agentq/agentq-infer:0.1.0"
    train: str = "ghcr.io/agentq/agentq-train:0.1.0"
    inference_server: str = Field("vllm/vllm-openai:v0.8.5", description="The vLLM server a round with "
                                  "model.server.vllm gets (its OpenAI API on port 8000).")
    inference_server_command: list[str] = Field(default_factory=list, description="Command of the server "
                                                "container (none: the image's entrypoint, which takes vLLM's "
                                                "arguments); kind CI runs the mock model's server this way.")
    pull_policy: str = "IfNotPresent"
    pull_secrets: list[str] = Field(default_factory=list, description="imagePullSecrets of every step pod.")


class ModelCache(Spec):
    """A PersistentVolumeClaim holding a Hugging Face cache, mounted into every step pod as HF_HOME."""

    pvc: str = Field(..., min_length=1)
    mount_path: str = "/models"


class OperatorSettings(Spec):
    pools: Pools = Field(default_factory=Pools)
    images: Images = Field(default_factory=Images)
    sandbox_url: str | None = Field(None, description="The sandbox Service URL given to collect/evaluate Jobs.")
    model_cache: ModelCache | None = Field(None, description="A shared Hugging Face cache for every step pod.")
    sandbox_token_secret: str | None = Field(
        None, description="Secret (key `token`, in the Job's namespace) whose value collect/evaluate Jobs send to "
        "the sandbox as AGENTQ_SANDBOX_TOKEN.")
    job_service_account: str | None = Field(None, description="ServiceAccount of step pods (none: the default).")
    log_lines: int = Field(20, ge=1, description="Last log lines of a failed Job quoted in the condition.")
    resync_seconds: float = Field(30.0, gt=0, description="Re-check every round this often even without events.")
    retry_backoff_seconds: float = Field(10.0, ge=0, description="Wait before retrying a failed step Job, "
                                         "doubled per attempt (at most 10 minutes); 0 retries at once.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus /metrics on this port.")
    peering_lifetime_seconds: int = Field(
        10, ge=3, description="How long a replica's peering record counts as alive: a standby takes over at most "
        "this long after the active replica died (kopf refreshes the record every 1-5 s at 10).")
    startup_grace_seconds: float = Field(
        5.0, ge=0, description="With peering, a starting replica waits this long before it acts, so replicas "
        "started together (within this long of each other) see each other first and only one of them acts.")
    job_ttl_seconds: int | None = Field(
        None, ge=0, description="ttlSecondsAfterFinished of step Jobs: finished Jobs are removed this long after "
        "they end (their outcome stays in the round's status); none: kept until the round is deleted.")


def load_settings(path: str | Path | None = None) -> OperatorSettings:
    """Settings from `path`, else from $AGENTQ_OPERATOR_CONFIG, else the defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return OperatorSettings()
    if not Path(path).is_file():
        raise ConfigError(f"{path}: operator config not found (set by ${CONFIG_ENV})")
    return load_yaml(path, OperatorSettings)
