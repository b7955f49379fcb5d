"""vLLM's Prometheus metrics, as the simulator exposes them.

The families, types, label names, label values that vLLM pre-creates and the
histogram buckets mirror what vLLM 0.32 (V1 engine) serves on ``/metrics``
(recorded from real vLLM-CPU; the contract tests compare the two), so
dashboards, recording rules and the autoscaler's queries work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase


@dataclass(frozen=True)
class Family:
    """One vLLM metric family: its name, type, help text, extra labels and buckets."""

    name: str
    type: str
    doc: str
    labels: tuple[str, ...] = ()
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    engine: bool = True


def one_two_five_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 bucket series capped at ``max_value`` (token-count histograms)."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return tuple(float(x) for x in out)
            out.append(v)
        exponent += 1


# Token-count histograms whose buckets follow max_model_len.
REQUEST_TOKEN_HISTOGRAMS = frozenset(
    {
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_max_tokens",
        "vllm:request_prefill_kv_computed_tokens",
    }
)

FAMILIES: tuple[Family, ...] = (
    Family(
        "vllm:estimated_flops_per_gpu",
        "counter",
        (
            "Estimated number of floating point operations per GPU (for Model Flops Utilization "
            "calculations)."
        ),
        labels=(),
    ),
    Family(
        "vllm:estimated_read_bytes_per_gpu",
        "counter",
        (
            "Estimated number of bytes read from memory per GPU (for Model Flops Utilization "
            "calculations)."
        ),
        labels=(),
    ),
    Family(
        "vllm:estimated_write_bytes_per_gpu",
        "counter",
        (
            "Estimated number of bytes written to memory per GPU (for Model Flops Utilization "
            "calculations)."
        ),
        labels=(),
    ),
    Family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        labels=(),
    ),
    Family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        labels=(),
    ),
    Family(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        (
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
            "scheduling "
            "capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, "
            "blocked status). Sum of all reasons equals vllm:num_requests_waiting."
        ),
        labels=("reason",),
        values={"reason": ("capacity", "deferred")},
        buckets=(),
    ),
    Family(
        "vllm:engine_sleep_state",
        "gauge",
        (
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine"
            " is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2."
        ),
        labels=("sleep_state",),
        values={"sleep_state": ("awake", "weights_offloaded", "discard_all")},
        buckets=(),
    ),
    Family(
        "vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", labels=()
    ),
    Family(
        "vllm:prefix_cache_queries",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        labels=(),
    ),
    Family(
        "vllm:prefix_cache_hits",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        labels=(),
    ),
    Family(
        "vllm:external_prefix_cache_queries",
        "counter",
        (
            "External prefix cache queries from KV connector cross-instance cache sharing, "
            "in terms of"
            " number of queried tokens."
        ),
        labels=(),
    ),
    Family(
        "vllm:external_prefix_cache_hits",
        "counter",
        (
            "External prefix cache hits from KV connector cross-instance cache sharing, in "
            "terms of "
            "number of cached tokens."
        ),
        labels=(),
    ),
    Family(
        "vllm:mm_cache_queries",
        "counter",
        "Multi-modal cache queries, in terms of number of queried items.",
        labels=(),
    ),
    Family(
        "vllm:mm_cache_hits",
        "counter",
        "Multi-modal cache hits, in terms of number of cached items.",
        labels=(),
    ),
    Family(
        "vllm:num_preemptions",
        "counter",
        "Cumulative number of preemption from the engine.",
        labels=(),
    ),
    Family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.", labels=()),
    Family(
        "vllm:prompt_tokens_by_source",
        "counter",
        "Number of prompt tokens by source.",
        labels=("source",),
        values={"source": ("local_compute", "local_cache_hit", "external_kv_transfer")},
        buckets=(),
    ),
    Family(
        "vllm:prompt_tokens_cached",
        "counter",
        "Number of cached prompt tokens (local + external).",
        labels=(),
    ),
    Family(
        "vllm:prompt_tokens_cached_by_source",
        "counter",
        (
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local "
            "HBM), host "
            "(offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or "
            "external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + "
            "vllm:external_prefix_cache_hits."
        ),
        labels=("source",),
        values={"source": ("device", "host", "p2p", "disk", "external_unspecified")},
        buckets=(),
    ),
    Family(
        "vllm:generation_tokens", "counter", "Number of generation tokens processed.", labels=()
    ),
    Family(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        labels=("finished_reason",),
        values={"finished_reason": ("stop", "length", "abort", "error", "repetition")},
        buckets=(),
    ),
    Family(
        "vllm:admission_rejections",
        "counter",
        "Number of admission attempts rejected by a queue limit, by reason.",
        labels=("reason",),
        values={"reason": ("max_num_queued_reqs", "max_num_queued_tokens")},
        buckets=(),
        engine=False,
    ),
    Family(
        "vllm:request_prompt_tokens",
        "histogram",
        "Number of prefill tokens processed.",
        buckets=(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    ),
    Family(
        "vllm:request_generation_tokens",
        "histogram",
        "Number of generation tokens processed.",
        buckets=(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    ),
    Family(
        "vllm:iteration_tokens_total",
        "histogram",
        "Histogram of number of tokens per engine_step.",
        buckets=(
            1.0,
            8.0,
            16.0,
            32.0,
            64.0,
            128.0,
            256.0,
            512.0,
            1024.0,
            2048.0,
            4096.0,
            8192.0,
            16384.0,
        ),
    ),
    Family(
        "vllm:request_max_num_generation_tokens",
        "histogram",
        "Histogram of maximum number of requested generation tokens.",
        buckets=(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    ),
    Family(
        "vllm:request_params_n",
        "histogram",
        "Histogram of the n request parameter.",
        buckets=(1.0, 2.0, 5.0, 10.0, 20.0),
    ),
    Family(
        "vllm:request_params_max_tokens",
        "histogram",
        "Histogram of the max_tokens request parameter.",
        buckets=(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    ),
    Family(
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
        buckets=(
            0.001,
            0.005,
            0.01,
            0.02,
            0.04,
            0.06,
            0.08,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            20.0,
            40.0,
            80.0,
            160.0,
            640.0,
            2560.0,
        ),
    ),
    Family(
        "vllm:inter_token_latency_seconds",
        "histogram",
        "Histogram of inter-token latency in seconds.",
        buckets=(
            0.01,
            0.025,
            0.05,
            0.075,
            0.1,
            0.15,
            0.2,
            0.3,
            0.4,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            20.0,
            40.0,
            80.0,
        ),
    ),
    Family(
        "vllm:request_time_per_output_token_seconds",
        "histogram",
        "Histogram of time_per_output_token_seconds per request.",
        buckets=(
            0.01,
            0.025,
            0.05,
            0.075,
            0.1,
            0.15,
            0.2,
            0.3,
            0.4,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            20.0,
            40.0,
            80.0,
        ),
    ),
    Family(
        "vllm:e2e_request_latency_seconds",
        "histogram",
        "Histogram of e2e request latency in seconds.",
        buckets=(
            0.3,
            0.5,
            0.8,
            1.0,
            1.5,
            2.0,
            2.5,
            5.0,
            10.0,
            15.0,
            20.0,
            30.0,
            40.0,
            50.0,
            60.0,
            120.0,
            240.0,
            480.0,
            960.0,
            1920.0,
            7680.0,
        ),
    ),
    Family(
        "vllm:request_queue_time_seconds",
        "histogram",
        "Histogram of time spent in WAITING phase for request.",
        buckets=(
            0.3,
            0.5,
            0.8,
            1.0,
            1.5,
            2.0,
            2.5,
            5.0,
            10.0,
            15.0,
            20.0,
            30.0,
            40.0,
            50.0,
            60.0,
            120.0,
            240.0,
            480.0,
            960.0,
            1920.0,
            7680.0,
        ),
    ),
    Family(
        "vllm:request_inference_time_seconds",
        "histogram",
        "Histogram of time spent in RUNNING phase for request.",
        buckets=(
            0.3,
            0.5,
            0.8,
            1.0,
            1.5,
            2.0,
            2.5,
            5.0,
            10.0,
            15.0,
            20.0,
            30.0,
            40.0,
            50.0,
            60.0,
            120.0,
            240.0,
            480.0,
            960.0,
            1920.0,
            7680.0,
        ),
    ),
    Family(
        "vllm:request_prefill_time_seconds",
        "histogram",
        "Histogram of time spent in PREFILL phase for request.",
        buckets=(
            0.3,
            0.5,
            0.8,
            1.0,
            1.5,
            2.0,
            2.5,
            5.0,
            10.0,
            15.0,
            20.0,
            30.0,
            40.0,
            50.0,
            60.0,
            120.0,
            240.0,
            480.0,
            960.0,
            1920.0,
            7680.0,
        ),
    ),
    Family(
        "vllm:request_decode_time_seconds",
        "histogram",
        "Histogram of time spent in DECODE phase for request.",
        buckets=(
            0.3,
            0.5,
            0.8,
            1.0,
            1.5,
            2.0,
            2.5,
            5.0,
            10.0,
            15.0,
            20.0,
            30.0,
            40.0,
            50.0,
            60.0,
            120.0,
            240.0,
            480.0,
            960.0,
            1920.0,
            7680.0,
        ),
    ),
    Family(
        "vllm:request_num_preemptions",
        "histogram",
        "Histogram of the number of times a request was preempted.",
        buckets=(1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0),
    ),
    Family(
        "vllm:request_prefill_kv_computed_tokens",
        "histogram",
        "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
        buckets=(1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0),
    ),
)

QUERIED_FAMILIES = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:request_success",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:num_preemptions",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
)
"""Families the autoscaler's PromQL and kvpilot's dashboards read: real vLLM and the
simulator must both expose them (the contract tests check both)."""

HTTP_REQUESTS = "http_requests"
"""vLLM's front end (prometheus-fastapi-instrumentator) counts every answered request as
``http_requests_total{handler, method, status}`` with the status grouped (``2xx``, ``5xx``):
the only series that counts requests that failed before or outside the engine."""
HTTP_REQUESTS_LABELS = ("handler", "method", "status")
HTTP_EXCLUDED_HANDLERS = ("/metrics", "/health", "/load", "/ping", "/version", "/server_info")
"""Handlers vLLM leaves out of ``http_requests_total``."""

QUERIED_HTTP_FAMILIES = ("http_requests",)
"""Non-``vllm:`` families kvpilot's PromQL reads (canary analysis: failed requests)."""

CACHE_CONFIG_INFO = "vllm:cache_config_info"
CACHE_CONFIG_LABELS = (
    "_block_size_resolved",
    "block_size",
    "cache_dtype",
    "cache_hit_alignment_tokens",
    "effective_attention_block_size",
    "enable_mamba_shared_prefix_checkpoint",
    "enable_prefix_caching",
    "engine",
    "gpu_memory_utilization",
    "hash_block_size",
    "is_attention_free",
    "kv_cache_dtype_skip_layers",
    "kv_cache_layout",
    "kv_cache_max_concurrency",
    "kv_cache_memory_bytes",
    "kv_cache_size_tokens",
    "kv_offloading_backend",
    "kv_offloading_size",
    "kv_sharing_fast_prefill",
    "mamba_block_size",
    "mamba_cache_dtype",
    "mamba_cache_mode",
    "mamba_page_size_padded",
    "mamba_ssm_cache_dtype",
    "num_cpu_blocks",
    "num_gpu_blocks",
    "num_gpu_blocks_override",
    "prefix_cache_retention_interval",
    "prefix_caching_hash_algo",
    "prefix_match_unit",
    "replayssm_buffer_len",
    "skip_page_size_padded",
    "sliding_window",
    "swa_bounded_replay",
    "use_kda_recoverssm",
    "use_replayssm",
    "user_specified_block_size",
)


class VllmMetrics:
    """A registry holding vLLM's families for one served model and engine index 0."""

    def __init__(
        self,
        model_name: str,
        max_model_len: int,
        cache_config: Mapping[str, str] | None = None,
        engine: str = "0",
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        self.engine = engine
        self._metrics: dict[str, MetricWrapperBase] = {}
        for fam in FAMILIES:
            base = ["model_name", "engine"] if fam.engine else ["model_name"]
            labelnames = [*base, *fam.labels]
            metric: MetricWrapperBase
            if fam.type == "gauge":
                metric = Gauge(fam.name, fam.doc, labelnames, registry=self.registry)
            elif fam.type == "counter":
                metric = Counter(fam.name, fam.doc, labelnames, registry=self.registry)
            else:
                buckets = fam.buckets
                if fam.name in REQUEST_TOKEN_HISTOGRAMS:
                    buckets = one_two_five_buckets(max_model_len)
                metric = Histogram(
                    fam.name, fam.doc, labelnames, buckets=buckets, registry=self.registry
                )
            self._metrics[fam.name] = metric
            self._precreate(fam, metric)
        self.child("vllm:engine_sleep_state", sleep_state="awake").set(1)  # type: ignore[attr-defined]
        info = Gauge(
            CACHE_CONFIG_INFO,
            "Information of the LLMEngine CacheConfig",
            CACHE_CONFIG_LABELS,
            registry=self.registry,
        )
        values = {k: "None" for k in CACHE_CONFIG_LABELS}
        values.update(cache_config or {})
        values["engine"] = engine
        info.labels(**values).set(1)
        self.http_requests = Counter(
            HTTP_REQUESTS,
            "Total number of requests by method, status and handler.",
            HTTP_REQUESTS_LABELS,
            registry=self.registry,
        )

    def count_http(self, handler: str, method: str, status: int) -> None:
        """One answered HTTP request, as vLLM's front end counts it."""
        if handler in HTTP_EXCLUDED_HANDLERS:
            return
        self.http_requests.labels(handler=handler, method=method, status=f"{status // 100}xx").inc()

    def _precreate(self, fam: Family, metric: MetricWrapperBase) -> None:
        combos: list[dict[str, str]] = [{}]
        for label in fam.labels:
            combos = [{**c, label: v} for c in combos for v in fam.values.get(label, ())]
        for extra in combos:
            metric.labels(**self._base(fam), **extra)

    def _base(self, fam: Family) -> dict[str, str]:
        if fam.engine:
            return {"model_name": self.model_name, "engine": self.engine}
        return {"model_name": self.model_name}

    def child(self, name: str, **labels: str) -> MetricWrapperBase:
        """The labelled series of family ``name`` for this model and engine."""
        fam = _BY_NAME[name]
        return self._metrics[name].labels(**self._base(fam), **labels)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        self.child(name, **labels).set(value)  # type: ignore[attr-defined]

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        if amount:
            self.child(name, **labels).inc(amount)  # type: ignore[attr-defined]

    def observe(self, name: str, value: float, **labels: str) -> None:
        self.child(name, **labels).observe(value)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)


_BY_NAME = {f.name: f for f in FAMILIES}


@dataclass(frozen=True)
class Signature:
    """What a scraper depends on in one family: type, label names and values, buckets."""

    type: str
    labels: frozenset[str]
    label_values: frozenset[tuple[str, str]]
    buckets: tuple[float, ...]


# Label values that depend on the run, not on the exposition's shape.
_VOLATILE_LABELS = frozenset({"model_name", "engine", "le"})


def signatures(text: str, prefix: str = "vllm:") -> dict[str, Signature]:
    """The signature of every family named ``prefix...`` in a text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Signature] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith(prefix) or fam.name.endswith("_created"):
            continue
        labels: set[str] = set()
        values: set[tuple[str, str]] = set()
        buckets: list[float] = []
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            labels.update(k for k in s.labels if k != "le")
            if fam.name != CACHE_CONFIG_INFO:
                values.update((k, v) for k, v in s.labels.items() if k not in _VOLATILE_LABELS)
            if s.name.endswith("_bucket") and s.labels.get("le") not in (None, "+Inf"):
                le = float(s.labels["le"])
                if le not in buckets:
                    buckets.append(le)
        out[fam.name] = Signature(fam.type, frozenset(labels), frozenset(values), tuple(buckets))
    return out
