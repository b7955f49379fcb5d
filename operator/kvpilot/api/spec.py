"""InferenceService spec: what model to serve, how to run vLLM, where, and how to scale.

Field descriptions here are what `kubectl explain inferenceservice.spec...` prints.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from kvpilot.api import security
from kvpilot.api.base import (
    DNS_SUBDOMAIN_PATTERN,
    CelRule,
    CPUQuantity,
    KvModel,
    Quantity,
    cel_rules,
    check,
    sub_object,
)
from kvpilot.api.names import (
    DType,
    GPUTypeName,
    KVCacheDType,
    Quantization,
    TensorParallel,
)

DEFAULT_IMAGE: Final = "vllm/vllm-openai:v0.11.0"
DEFAULT_PORT: Final = 8000
DEFAULT_MAX_MODEL_LEN: Final = 8192
DEFAULT_STARTUP_TIMEOUT_SECONDS: Final = 1800

# hf://ORG/NAME, pvc://CLAIM[/PATH], s3://BUCKET[/PATH]. RE2-compatible (used in CEL too).
# Path segments start with a letter, digit or underscore, so "." and ".." never match.
_SOURCE_PATH = "(/[A-Za-z0-9_][A-Za-z0-9._+=,-]*)*/?"
SOURCE_PATTERN: Final = (
    "^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    f"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?{_SOURCE_PATH}"
    f"|s3://[a-z0-9][a-z0-9.-]{{1,61}}[a-z0-9]{_SOURCE_PATH})$"
)
# Image references: registry/name[:tag][@digest]; no whitespace or control characters.
IMAGE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"
# Environment variable names: C identifier-like, as most tools expect.
ENV_NAME_PATTERN: Final = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SECRET_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"
SERVED_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
REVISION_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"


# --- spec.model ---------------------------------------------------------------------

SHAPE_KV_HEADS = CelRule(
    rule="!has(self.attentionHeads) || !has(self.kvHeads) || self.kvHeads < 1 || "
    "self.attentionHeads % self.kvHeads == 0",
    message="kvHeads must divide attentionHeads (grouped-query attention shares each KV head "
    "among an equal number of query heads)",
    field_path=".kvHeads",
)
SHAPE_ACTIVE_PARAMETERS = CelRule(
    rule="!has(self.activeParametersBillions) || !has(self.parametersBillions) || "
    "self.activeParametersBillions <= self.parametersBillions",
    message="activeParametersBillions must not exceed parametersBillions",
    field_path=".activeParametersBillions",
)


class ModelShape(KvModel):
    """Transformer dimensions that decide GPU memory (weights and KV cache per token)."""

    model_config = ConfigDict(json_schema_extra=cel_rules(SHAPE_KV_HEADS, SHAPE_ACTIVE_PARAMETERS))

    parameters_billions: float | None = Field(
        None, gt=0, le=100_000, description="Total parameters, in billions (all experts of a MoE)."
    )
    active_parameters_billions: float | None = Field(
        None, gt=0, le=100_000, description="Parameters active per token, in billions (MoE only)."
    )
    layers: int | None = Field(None, ge=1, le=1024, description="Transformer layers.")
    hidden_size: int | None = Field(None, ge=1, le=1_048_576, description="Hidden size.")
    attention_heads: int | None = Field(
        None,
        ge=1,
        le=16_384,
        description="Query attention heads; the tensor-parallel size must divide it.",
    )
    kv_heads: int | None = Field(
        None,
        ge=1,
        le=16_384,
        description="Key/value heads (grouped-query attention); divides attentionHeads.",
    )
    head_dim: int | None = Field(
        None, ge=1, le=4096, description="Dimension of one attention head."
    )
    intermediate_size: int | None = Field(
        None, ge=1, le=4_194_304, description="MLP intermediate size."
    )
    vocab_size: int | None = Field(None, ge=1, le=16_777_216, description="Vocabulary size.")
    tied_embeddings: bool | None = Field(
        None, description="Whether the LM head shares the input embedding's weights."
    )
    context_length: int | None = Field(
        None,
        ge=1,
        le=10_485_760,
        description="Longest sequence the model supports (its max_position_embeddings); "
        "the planner refuses a maxModelLen above it, as vLLM would.",
    )

    @model_validator(mode="after")
    def _rules(self) -> ModelShape:
        if self.attention_heads is not None and self.kv_heads is not None:
            check(self.attention_heads % self.kv_heads == 0, SHAPE_KV_HEADS)
        if self.active_parameters_billions is not None and self.parameters_billions is not None:
            check(
                self.active_parameters_billions <= self.parameters_billions, SHAPE_ACTIVE_PARAMETERS
            )
        return self


MODEL_SOURCE = CelRule(
    rule=f"self.matches('{SOURCE_PATTERN}')",
    message="source must be hf://ORG/NAME, pvc://CLAIM[/PATH] or s3://BUCKET[/PATH]",
)
MODEL_REVISION_HF_ONLY = CelRule(
    rule="!has(self.revision) || self.source.startsWith('hf://')",
    message="revision applies to hf:// sources only",
    field_path=".revision",
)
MODEL_QUANT_DTYPE = CelRule(
    rule="!has(self.quantization) || !has(self.dtype) || "
    "!(self.quantization in ['awq', 'gptq']) || self.dtype in ['auto', 'float16']",
    message="dtype must be auto or float16 with awq or gptq quantization "
    "(vLLM's awq and gptq kernels refuse bfloat16)",
    field_path=".dtype",
)


class ModelSpec(KvModel):
    """The model to serve and the numeric formats to serve it in."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(MODEL_REVISION_HF_ONLY, MODEL_QUANT_DTYPE)
    )

    source: str = Field(
        min_length=1,
        max_length=512,
        description="Where the weights come from: hf://ORG/NAME (Hugging Face Hub), "
        "pvc://CLAIM[/PATH] (a PersistentVolumeClaim in the same namespace) or "
        "s3://BUCKET[/PATH] (streamed by vLLM's Run:ai model streamer).",
        json_schema_extra=cel_rules(
            security.SOURCE_INVISIBLE,
            security.SOURCE_TRAVERSAL,
            security.SOURCE_CREDENTIALS,
            MODEL_SOURCE,
        ),
    )
    served_name: str | None = Field(
        None,
        max_length=256,
        pattern=SERVED_NAME_PATTERN,
        description="Model name clients send in OpenAI requests; defaults to metadata.name.",
    )
    revision: str | None = Field(
        None,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Hugging Face revision (branch, tag or commit) of an hf:// source.",
    )
    quantization: Quantization = Field(
        "none",
        description="Weight format of the checkpoint: none (dtype), awq or gptq (4-bit), "
        "fp8, int8 (W8A8, detected from the checkpoint). Decides memory planning and "
        "vLLM's --quantization.",
    )
    dtype: DType = Field(
        "auto", description="Activation and unquantized weight dtype (vLLM --dtype)."
    )
    kv_cache_dtype: KVCacheDType = Field(
        "auto", description="KV cache element type; fp8 halves KV memory (vLLM --kv-cache-dtype)."
    )
    max_model_len: int = Field(
        DEFAULT_MAX_MODEL_LEN,
        ge=128,
        le=10_485_760,
        description="Longest sequence (prompt + output tokens) a request may use; "
        "sizes the KV cache.",
    )
    shape: ModelShape | None = Field(
        None,
        description="Model dimensions for memory planning. Overrides the built-in catalog field "
        "by field; a model not in the catalog needs at least parametersBillions, layers, "
        "attentionHeads and kvHeads.",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        problem = security.source_problem(value)
        if problem is not None:
            check(False, problem)
        check(re.fullmatch(SOURCE_PATTERN, value) is not None, MODEL_SOURCE)
        return value

    @model_validator(mode="after")
    def _rules(self) -> ModelSpec:
        check(self.revision is None or self.source.startswith("hf://"), MODEL_REVISION_HF_ONLY)
        check(
            self.quantization not in ("awq", "gptq") or self.dtype in ("auto", "float16"),
            MODEL_QUANT_DTYPE,
        )
        return self


# --- spec.runtime ---------------------------------------------------------------------


class SecretKeyRef(KvModel):
    """A key of a Secret in the InferenceService's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Secret name."
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key within the Secret.",
    )


class EnvVarSource(KvModel):
    """Where a variable's value comes from instead of a literal."""

    secret_key_ref: SecretKeyRef = Field(
        description="A key of a Secret in the InferenceService's namespace."
    )


class EnvVar(KvModel):
    """An environment variable of the vLLM container (policy: docs/security.md)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            security.ENV_ONE_SOURCE,
            security.ENV_FROM_FIELD,
            security.ENV_CODE_LOADING,
            security.ENV_SECRET_NAME,
            security.ENV_SECRET_VALUE,
        )
    )

    name: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Variable name."
    )
    value: str | None = Field(
        None,
        max_length=8192,
        description="Literal value; credentials must use valueFrom.secretKeyRef instead.",
    )
    value_from: EnvVarSource | None = Field(
        None, description="Take the value from a Secret key (by reference, never copied)."
    )

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        problem = security.env_problem(self.name, self.value, self.value_from is not None)
        if problem is not None:
            check(False, problem)
        return self


MODEL_CACHE_SIZE = CelRule(
    rule="!(has(self.claimName) && has(self.sizeLimit))",
    message="sizeLimit applies to the emptyDir cache only; "
    "a PersistentVolumeClaim has its own size",
    field_path=".sizeLimit",
)


class ModelCache(KvModel):
    """Where downloaded weights and the Hugging Face cache live."""

    model_config = ConfigDict(json_schema_extra=cel_rules(MODEL_CACHE_SIZE))

    claim_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="PersistentVolumeClaim to keep the cache across restarts; "
        "without it the cache is an emptyDir that lives as long as the pod.",
    )
    size_limit: Quantity | None = Field(None, description="Size limit of the emptyDir cache.")

    @model_validator(mode="after")
    def _rules(self) -> ModelCache:
        check(self.claim_name is None or self.size_limit is None, MODEL_CACHE_SIZE)
        return self


RUNTIME_BATCHED_TOKENS = CelRule(
    rule="!has(self.maxNumSeqs) || !has(self.maxNumBatchedTokens) || "
    "self.maxNumBatchedTokens >= self.maxNumSeqs",
    message="maxNumBatchedTokens must be at least maxNumSeqs (vLLM refuses smaller)",
    field_path=".maxNumBatchedTokens",
)


class RuntimeSpec(KvModel):
    """How the vLLM container runs."""

    model_config = ConfigDict(json_schema_extra=cel_rules(RUNTIME_BATCHED_TOKENS))

    image: str = Field(
        DEFAULT_IMAGE,
        min_length=1,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="vLLM OpenAI server image.",
    )
    port: int = Field(
        DEFAULT_PORT, ge=1, le=65535, description="Port of the OpenAI API and /metrics."
    )
    extra_args: tuple[Annotated[str, Field(max_length=1024)], ...] = Field(
        (),
        max_length=64,
        description="Further vLLM arguments, appended after the ones kvpilot renders. Flags "
        "kvpilot derives, flags that load code or files, and secrets are refused in any "
        "spelling (docs/security.md).",
        json_schema_extra=cel_rules(
            security.EXTRA_ARGS_CHARACTERS,
            security.EXTRA_ARGS_ONE_FLAG,
            security.EXTRA_ARGS_DERIVED,
            security.EXTRA_ARGS_OPT_IN,
            security.EXTRA_ARGS_UNSAFE,
            security.EXTRA_ARGS_SECRET,
        ),
    )
    env: tuple[EnvVar, ...] = Field(
        (),
        max_length=64,
        description="Extra environment variables; one with a name kvpilot sets replaces it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    hf_token_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret key holding a Hugging Face token; passed as HF_TOKEN by reference.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        None,
        description="Secret key holding the API key clients must send (Authorization: Bearer); "
        "passed as VLLM_API_KEY by reference. /health and /metrics stay open.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model repository (vLLM "
        "--trust-remote-code); only for repositories you trust.",
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Fraction of each GPU's memory vLLM may use (--gpu-memory-utilization).",
    )
    max_num_seqs: int | None = Field(
        None, ge=1, le=65_536, description="Most sequences batched at once (--max-num-seqs)."
    )
    max_num_batched_tokens: int | None = Field(
        None,
        ge=1,
        le=16_777_216,
        description="Most tokens processed in one engine step (--max-num-batched-tokens).",
    )
    enable_prefix_caching: bool | None = Field(
        None, description="Turn automatic prefix caching on or off; unset keeps vLLM's default."
    )
    shm_size: Quantity = Field(
        "8Gi",
        description="Size of the memory-backed /dev/shm "
        "(NCCL uses it between tensor-parallel ranks).",
    )
    model_cache: ModelCache = sub_object(ModelCache, "Volume for downloaded weights.")
    cpu: CPUQuantity | None = Field(None, description="CPU request of the vLLM container.")
    memory: Quantity | None = Field(None, description="Memory request of the vLLM container.")
    startup_timeout_seconds: int = Field(
        DEFAULT_STARTUP_TIMEOUT_SECONDS,
        ge=60,
        le=86_400,
        description="How long a replica may take to load the model and become healthy "
        "before it is restarted (startup probe budget).",
    )

    @model_validator(mode="after")
    def _rules(self) -> RuntimeSpec:
        if self.max_num_seqs is not None and self.max_num_batched_tokens is not None:
            check(self.max_num_batched_tokens >= self.max_num_seqs, RUNTIME_BATCHED_TOKENS)
        return self

    @field_validator("extra_args")
    @classmethod
    def _safe_flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problem = security.extra_args_problem(value)
        if problem is not None:
            rule, arg = problem
            # Name the item, unless it carries the credential the message is about.
            shown = "" if rule is security.EXTRA_ARGS_SECRET else f" (item {arg!r})"
            raise ValueError(f"{rule.message}{shown}")
        return value

    @field_validator("env")
    @classmethod
    def _unique_env(cls, value: tuple[EnvVar, ...]) -> tuple[EnvVar, ...]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise ValueError("env must not repeat a name")
        return value


# --- spec.parallelism, spec.placement -----------------------------------------------

TENSOR_VALUES = CelRule(
    rule="type(self) == string ? self == 'auto' : self in [1, 2, 4, 8]",
    message='tensor must be "auto" or one of 1, 2, 4, 8',
)

IntOrString = WithJsonSchema(
    {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
)


class ParallelismSpec(KvModel):
    """How one replica is split across GPUs."""

    tensor: Annotated[TensorParallel, IntOrString] = Field(
        "auto",
        description='Tensor-parallel size: "auto" lets the planner choose, or 1, 2, 4 or 8 GPUs.',
        json_schema_extra=cel_rules(TENSOR_VALUES),
    )


class PlacementSpec(KvModel):
    """Which GPUs the replicas may use and how they compete for them."""

    gpu_types: tuple[GPUTypeName, ...] = Field(
        (),
        max_length=12,
        description="Acceptable GPU types, most preferred first (H100-80GB, H200-141GB, "
        "A100-80GB, A100-40GB, L40S-48GB, L4-24GB, A10G-24GB, or a family name that has "
        "one size: H100, H200, L40S, L4, A10G). Empty: any type the model fits, cheapest first.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    priority: int = Field(
        0,
        ge=-1_000_000,
        le=1_000_000_000,
        description="Placement priority; when GPUs are short, higher priority services win.",
    )
    preemptible: bool = Field(
        False, description="Whether higher-priority services may take this service's GPUs."
    )
    target_concurrency: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="Sequences of maxModelLen tokens each replica's KV cache must hold; "
        "derived from maxModelLen when unset.",
    )

    @field_validator("gpu_types")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("gpuTypes must not repeat a type")
        return value


# --- spec.scaling -------------------------------------------------------------------


class ScalingTargets(KvModel):
    """Per-replica load the autoscaler aims for. Unset knobs take the operator-wide policy."""

    queue_depth_per_replica: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="Waiting requests per replica (vllm:num_requests_waiting) to aim for. "
        "Default (operator-wide policy): 4.",
    )
    kv_cache_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="KV cache usage (vllm:kv_cache_usage_perc, 0..1) to aim for. "
        "Default (operator-wide policy): 0.8.",
    )
    time_to_first_token_seconds: float | None = Field(
        None,
        gt=0,
        le=600,
        description="Optional p90 time-to-first-token (seconds) to aim for; adds replicas "
        "when exceeded. Default: none.",
    )
    concurrency_per_replica: float | None = Field(
        None,
        gt=0,
        le=65_536,
        description="Requests in flight (running + waiting) per replica to size for. "
        "Default: none (the target is then batchUtilization x runtime.maxNumSeqs where "
        "runtime.maxNumSeqs is set).",
    )
    batch_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Fraction of runtime.maxNumSeqs in flight per replica to size for when "
        "concurrencyPerReplica is unset. Default (operator-wide policy): 0.65.",
    )


class ScaleUpRules(KvModel):
    """How fast replicas are added. Unset knobs take the operator-wide policy."""

    stabilization_window_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="Use the lowest recommendation of this window before scaling up. "
        "Default (operator-wide policy): 0.",
    )
    max_replicas_per_step: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Most replicas added per period. Default (operator-wide policy): 4.",
    )
    period_seconds: int | None = Field(
        None,
        ge=1,
        le=1800,
        description="Period of maxReplicasPerStep. Default (operator-wide policy): 60.",
    )


class ScaleDownRules(KvModel):
    """How fast replicas are removed. Unset knobs take the operator-wide policy."""

    stabilization_window_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="Use the highest recommendation of this window before scaling down. "
        "Default (operator-wide policy): 300.",
    )
    max_replicas_per_step: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Most replicas removed per period. Default (operator-wide policy): 1.",
    )
    period_seconds: int | None = Field(
        None,
        ge=1,
        le=1800,
        description="Period of maxReplicasPerStep. Default (operator-wide policy): 60.",
    )
    burst_hold_seconds: int | None = Field(
        None,
        ge=0,
        le=86400,
        description="After a burst (panic mode, or a queue over its target in the panic "
        "window), do not scale down for this long. Default (operator-wide policy): none "
        "(six scale-down stabilization windows: 1800 with the default window).",
    )


class ScaleToZero(KvModel):
    """Scale to zero when idle. Waking from zero needs a request router that holds
    requests and scales up; without one, a service at zero stays there until scaled."""

    enabled: bool | None = Field(
        None,
        description="Allow zero replicas after idleSeconds. Default (operator-wide policy): false.",
    )
    idle_seconds: int | None = Field(
        None,
        ge=0,
        le=86_400,
        description="No request running or waiting for this long. Default (operator-wide "
        "policy): 600.",
    )


SCALING_BOUNDS = CelRule(
    rule="!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
    message="minReplicas must not exceed maxReplicas",
    field_path=".minReplicas",
)
SCALING_WINDOWS = CelRule(
    rule="!has(self.panicWindowSeconds) || !has(self.stableWindowSeconds) || "
    "self.panicWindowSeconds <= self.stableWindowSeconds",
    message="panicWindowSeconds must not exceed stableWindowSeconds",
    field_path=".panicWindowSeconds",
)


class ScalingSpec(KvModel):
    """Autoscaling bounds, targets and damping; active when maxReplicas > minReplicas.

    Knobs left unset take the operator-wide policy (``kvpilot run --scaling-defaults``),
    whose built-in values each description names.
    """

    model_config = ConfigDict(json_schema_extra=cel_rules(SCALING_BOUNDS, SCALING_WINDOWS))

    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(1, ge=1, le=1000, description="Most replicas.")
    targets: ScalingTargets = sub_object(ScalingTargets, "Per-replica load to aim for.")
    stable_window_seconds: int | None = Field(
        None,
        ge=10,
        le=3600,
        description="Window over which load is averaged for normal decisions. "
        "Default (operator-wide policy): 180.",
    )
    panic_window_seconds: int | None = Field(
        None,
        ge=5,
        le=3600,
        description="Short window that reacts to bursts. Default (operator-wide policy): 60, "
        "or stableWindowSeconds when that is shorter.",
    )
    panic_threshold: float | None = Field(
        None,
        gt=1,
        le=100,
        description="Scale on the panic window once its desired replicas exceed this multiple "
        "of the current replicas. Default (operator-wide policy): 2.",
    )
    tolerance: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Relative deviation from target ignored as noise. Default (operator-wide "
        "policy): 0.1.",
    )
    forecast_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="How far ahead a rising number of requests in flight is projected when "
        "sizing for concurrency (about one replica's cold start). Default (operator-wide "
        "policy): 120.",
    )
    scale_up: ScaleUpRules = sub_object(ScaleUpRules, "Rate limits for adding replicas.")
    scale_down: ScaleDownRules = sub_object(ScaleDownRules, "Rate limits for removing replicas.")
    scale_to_zero: ScaleToZero = sub_object(
        ScaleToZero, "Whether an idle service may go to zero replicas (off by default)."
    )
    cold_start_grace_seconds: int | None = Field(
        None,
        ge=0,
        le=7200,
        description="How long replicas that are still loading the model count as capacity "
        "after the scale-up that asked for them (so the autoscaler does not pile on). "
        "Default (operator-wide policy): 600.",
    )
    manual_override_seconds: int | None = Field(
        None,
        ge=0,
        le=86_400,
        description="How long a replica count set by hand (`kubectl scale`) is held before "
        "autoscaling resumes from it. Default (operator-wide policy): 300.",
    )
    max_metric_age_seconds: int | None = Field(
        None,
        ge=5,
        le=3600,
        description="Metrics older than this count as missing: the autoscaler then holds "
        "replicas (fail-static) instead of acting on stale data. Default (operator-wide "
        "policy): 60.",
    )

    @model_validator(mode="after")
    def _rules(self) -> ScalingSpec:
        check(self.min_replicas <= self.max_replicas, SCALING_BOUNDS)
        if self.panic_window_seconds is not None and self.stable_window_seconds is not None:
            check(self.panic_window_seconds <= self.stable_window_seconds, SCALING_WINDOWS)
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas > self.min_replicas


# --- spec.rollout ------------------------------------------------------------------

ROLLOUT_STEPS_ORDER = CelRule(
    rule="!has(self.steps) || self.steps.size() < 2 || "
    "[0, 1, 2, 3, 4, 5, 6, 7, 8].all(i, i + 1 >= self.steps.size() || "
    "self.steps[i] < self.steps[i + 1])",
    message="steps must be strictly increasing (each a canary share of serving capacity "
    "in percent, below 100; promotion is the last step)",
    field_path=".steps",
)


class AnalysisSpec(KvModel):
    """Canary analysis from Prometheus, per revision: the canary's error rate, p95 time to
    first token and inter-token latency against stable's, over one window every interval."""

    enabled: bool = Field(
        False,
        description="Gate steps and promotion on the analysis. Default false: an idle "
        "service has no traffic to judge, so the gate is opted into where traffic flows.",
    )
    interval_seconds: int = Field(30, ge=5, le=3600, description="How often to evaluate.")
    window_seconds: int = Field(60, ge=10, le=3600, description="Window of each evaluation.")
    min_requests: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Fewer finished requests per revision in a window is inconclusive, not a pass.",
    )
    max_error_rate_ratio: float = Field(
        2.0, ge=1.0, le=100.0, description="Canary error rate / stable error rate allowed."
    )
    error_rate_floor: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Error rates below this count as equal (no ratio over near-zero rates).",
    )
    max_ttft_p95_ratio: float = Field(
        1.5, ge=1.0, le=100.0, description="Canary p95 TTFT / stable p95 TTFT allowed."
    )
    max_itl_ratio: float = Field(
        1.5, ge=1.0, le=100.0, description="Canary inter-token latency / stable's allowed."
    )
    failure_limit: int = Field(
        2, ge=1, le=100, description="Failed evaluations that roll the canary back."
    )
    inconclusive_policy: Literal["Hold", "Rollback"] = Field(
        "Hold",
        description="After inconclusiveTimeoutSeconds without a conclusive evaluation: hold "
        "the rollout where it is, or roll back.",
    )
    inconclusive_timeout_seconds: int = Field(
        600, ge=30, le=86_400, description="How long evaluations may stay inconclusive."
    )
    ready_timeout_seconds: int = Field(
        600,
        ge=30,
        le=86_400,
        description="A canary replica not Ready this long after it was created fails the gate.",
    )


class QualityGateSpec(KvModel):
    """Before the canary takes traffic, compare greedy completions of a fixed prompt set
    from stable and canary (for quantized variants)."""

    enabled: bool = Field(False, description="Run the quality gate. Default false.")
    prompts: tuple[Annotated[str, Field(min_length=1, max_length=4096)], ...] = Field(
        (), max_length=64, description="Prompts to compare; empty: a built-in set."
    )
    max_tokens: int = Field(16, ge=1, le=512, description="Tokens generated per prompt.")
    min_token_agreement: float = Field(
        0.9, ge=0.0, le=1.0, description="Share of generated tokens that must agree."
    )
    max_logprob_divergence: float | None = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="Largest mean absolute log-probability difference allowed, where the "
        "engine returns log-probabilities; unset: not checked.",
    )


class RolloutSpec(KvModel):
    """How a change of the pod-relevant spec (a new revision) reaches the replicas.

    Steps move serving capacity, not replica counts: each revision's capacity per replica
    is estimated from the engine model (tokens/s at the concurrency its KV cache holds),
    and ready capacity stays at or above (1 - maxUnavailable) of what the stable revision
    served. Editing these settings never changes the revision.
    """

    model_config = ConfigDict(json_schema_extra=cel_rules(ROLLOUT_STEPS_ORDER))

    max_unavailable: int = Field(
        25,
        ge=0,
        le=100,
        description="Percent of the stable revision's serving capacity that may be missing "
        "while replicas are replaced (no free GPU for a surge). Default 25.",
    )
    max_surge_gpus: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="Most GPUs the service may hold beyond what either revision needs alone "
        "while both run; unset: as many as are free.",
    )
    steps: tuple[Annotated[int, Field(ge=1, le=99)], ...] = Field(
        (50,),
        max_length=10,
        description="Canary shares of the final serving capacity, in percent, strictly "
        "increasing; promotion to 100 follows the last. Default [50].",
    )
    paused: bool = Field(False, description="Hold the rollout where it is (resume: false).")
    abort: bool = Field(
        False,
        description="Roll the canary back and keep the stable revision until abort is cleared.",
    )
    analysis: AnalysisSpec = sub_object(AnalysisSpec, "Canary analysis from Prometheus.")
    quality_gate: QualityGateSpec = sub_object(
        QualityGateSpec, "Greedy-completion comparison before the canary takes traffic."
    )

    @model_validator(mode="after")
    def _rules(self) -> RolloutSpec:
        check(all(a < b for a, b in zip(self.steps, self.steps[1:], strict=False)),
              ROLLOUT_STEPS_ORDER)  # fmt: skip
        return self


# --- spec ---------------------------------------------------------------------------

_TENSOR_IS_INT = (
    "has(self.model.shape) && has(self.parallelism) && has(self.parallelism.tensor) && "
    "type(self.parallelism.tensor) == int && self.parallelism.tensor > 0"
)
SPEC_REPLICAS_IN_BOUNDS = CelRule(
    rule="!has(self.replicas) || !has(self.scaling) || !has(self.scaling.minReplicas) || "
    "!has(self.scaling.maxReplicas) || self.scaling.minReplicas >= self.scaling.maxReplicas || "
    "(self.replicas >= self.scaling.minReplicas && self.replicas <= self.scaling.maxReplicas)",
    message="replicas must lie within scaling.minReplicas..scaling.maxReplicas while autoscaling",
    field_path=".replicas",
)
SPEC_REPLICAS_AT_MOST_MAX = CelRule(
    rule="!has(self.replicas) || !has(self.scaling) || !has(self.scaling.maxReplicas) || "
    "self.replicas <= self.scaling.maxReplicas",
    message="replicas cannot exceed scaling.maxReplicas (kubectl scale included); raise "
    "scaling.maxReplicas to allow more",
    field_path=".replicas",
)
SPEC_TP_HEADS = CelRule(
    rule=f"!({_TENSOR_IS_INT} && has(self.model.shape.attentionHeads)) || "
    "self.model.shape.attentionHeads % self.parallelism.tensor == 0",
    message="parallelism.tensor must divide model.shape.attentionHeads",
    field_path=".parallelism.tensor",
)
SPEC_TP_KV_HEADS = CelRule(
    rule=f"!({_TENSOR_IS_INT} && has(self.model.shape.kvHeads) && self.model.shape.kvHeads > 0) || "
    "self.model.shape.kvHeads % self.parallelism.tensor == 0 || "
    "self.parallelism.tensor % self.model.shape.kvHeads == 0",
    message="parallelism.tensor must divide model.shape.kvHeads or be a multiple of it",
    field_path=".parallelism.tensor",
)


class InferenceServiceSpec(KvModel):
    """Desired state of an InferenceService."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            SPEC_REPLICAS_IN_BOUNDS, SPEC_REPLICAS_AT_MOST_MAX, SPEC_TP_HEADS, SPEC_TP_KV_HEADS
        )
    )

    replicas: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Desired replicas, written by the autoscaler or `kubectl scale` "
        "(the scale subresource); unset means scaling.minReplicas.",
    )
    model: ModelSpec = Field(description="The model to serve.")
    runtime: RuntimeSpec = sub_object(RuntimeSpec, "The vLLM container.")
    parallelism: ParallelismSpec = sub_object(ParallelismSpec, "GPUs per replica.")
    placement: PlacementSpec = sub_object(PlacementSpec, "GPU types, priority and preemption.")
    scaling: ScalingSpec = sub_object(ScalingSpec, "Autoscaling bounds, targets and damping.")
    rollout: RolloutSpec = sub_object(
        RolloutSpec, "How a new revision replaces the running one: steps, gates, control."
    )

    @model_validator(mode="after")
    def _rules(self) -> InferenceServiceSpec:
        s = self.scaling
        if self.replicas is not None and s.autoscaling:
            check(s.min_replicas <= self.replicas <= s.max_replicas, SPEC_REPLICAS_IN_BOUNDS)
        if self.replicas is not None:
            check(self.replicas <= s.max_replicas, SPEC_REPLICAS_AT_MOST_MAX)
        shape, tp = self.model.shape, self.parallelism.tensor
        if shape is not None and isinstance(tp, int):
            if shape.attention_heads is not None:
                check(shape.attention_heads % tp == 0, SPEC_TP_HEADS)
            if shape.kv_heads is not None:
                kv = shape.kv_heads
                check(kv % tp == 0 or tp % kv == 0, SPEC_TP_KV_HEADS)
        return self

    @property
    def desired_replicas(self) -> int:
        """spec.replicas, or scaling.minReplicas when nobody has scaled yet."""
        return self.replicas if self.replicas is not None else self.scaling.min_replicas
