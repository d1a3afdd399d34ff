"""The operator's own configuration (the Helm values): node pools, images, the sandbox Service.

Cluster-wide facts live here, not in each round, so a round file stays portable between clusters; a round's
`spec.placement` and `spec.image` override them for that round only.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from agentq.config import ConfigError, Spec, Toleration, load_yaml

CONFIG_ENV = "AGENTQ_OPERATOR_CONFIG"


class InferencePool(Spec):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpus_per_shard: int = Field(1, ge=0, description="nvidia.com/gpu per collect/evaluate shard and per merge Job.")


class TrainingPool(Spec):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpus: int = Field(1, ge=0, description="nvidia.com/gpu for the DPO Job.")


class Pools(Spec):
    inference: InferencePool = Field(default_factory=InferencePool)
    training: TrainingPool = Field(default_factory=TrainingPool)


class Images(Spec):
    infer: str = "ghcr.io/agentq/agentq-infer:0.1.0"
    train: str = "ghcr.io/agentq/agentq-train:0.1.0"
    pull_policy: str = "IfNotPresent"


class OperatorSettings(Spec):
    pools: Pools = Field(default_factory=Pools)
    images: Images = Field(default_factory=Images)
    sandbox_url: str | None = Field(None, description="The sandbox Service URL given to collect/evaluate Jobs.")
    sandbox_token_secret: str | None = Field(
        None, description="Secret (key `token`, in the Job's namespace) whose value collect/evaluate Jobs send to "
        "the sandbox as AGENTQ_SANDBOX_TOKEN.")
    job_service_account: str | None = Field(None, description="ServiceAccount of step pods (none: the default).")
    log_lines: int = Field(20, ge=1, description="Last log lines of a failed Job quoted in the condition.")
    resync_seconds: float = Field(30.0, gt=0, description="Re-check every round this often even without events.")


def load_settings(path: str | Path | None = None) -> OperatorSettings:
    """Settings from `path`, else from $AGENTQ_OPERATOR_CONFIG, else the defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return OperatorSettings()
    if not Path(path).is_file():
        raise ConfigError(f"{path}: operator config not found (set by ${CONFIG_ENV})")
    return load_yaml(path, OperatorSettings)
