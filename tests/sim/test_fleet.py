"""The fleet simulator's pure parts: engine stepping in runs, routing, cold start, costs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from kvpilot.api.parse import InferenceService, parse_inference_service
from kvpilot.reconcile import policy_config
from kvpilot.sim.fleet import FleetSetup, fleet_setup, simulate
from kvpilot.sim.scaler import FixedScaler, FleetView, KvpilotScaler, load_site_policy
from kvpilot.sim.trace import Request
from kvpilot_runtime.engine import Engine, EngineConfig, RequestSpec
from kvpilot_runtime.latency import Batch, PrefillChunk, load_profile, step_time
from kvpilot_runtime.models import CATALOG

SHAPE = CATALOG["meta-llama/llama-3.1-8b-instruct"]


def _service(scaling: dict[str, object] | None = None) -> InferenceService:
    return parse_inference_service(
        {
            "metadata": {"name": "llama", "namespace": "default", "uid": "u"},
            "spec": {
                "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 4096},
                "placement": {"gpuTypes": ["H100-80GB"]},
                "scaling": scaling or {"minReplicas": 1, "maxReplicas": 4},
            },
        }
    )


# --------------------------------------------------------------------------- engine runs


def _engine(caching: bool) -> Engine:
    cfg = EngineConfig(num_blocks=400, max_model_len=2048, enable_prefix_caching=caching)
    return Engine(cfg, load_profile("h100-80gb"), SHAPE)


@pytest.mark.parametrize("caching", [False, True])
@pytest.mark.parametrize("until", [0.05, 0.3, math.inf])
def test_decode_run_equals_single_steps(caching: bool, until: float) -> None:
    a, b = _engine(caching), _engine(caching)
    for e in (a, b):
        for i, (p, o) in enumerate([(100, 40), (37, 25), (250, 60)]):
            e.add_request(RequestSpec(str(i), tuple(range(i * 1000, i * 1000 + p)), o))
    now_a = now_b = 0.0
    # Prefill first (not a plain decode phase), then compare runs against steps.
    for e in (a, b):
        r = e.step(0.0)
        assert e.decode_run(r.end, until) is not None or not e.has_unfinished()
    now_a = now_b = r.end
    while a.has_unfinished():
        run = a.decode_run(now_a, now_a + until)
        assert run is not None
        finished: list[str] = []
        for d in run.durations:
            res = b.step(now_b)
            assert res.duration == pytest.approx(d, rel=1e-9)
            assert sorted(rid for rid, _ in res.scheduled) == sorted(run.request_ids)
            finished += [ev.request_id for ev in res.events if ev.finish_reason]
            now_b = res.end
        now_a = run.end
        assert now_a == pytest.approx(now_b, rel=1e-9)
        assert sorted(finished) == sorted(run.finished)
        sa, sb = a.stats(), b.stats()
        assert (sa.num_running, sa.kv_cache_usage, sa.generation_tokens_total) == (
            sb.num_running,
            sb.kv_cache_usage,
            sb.generation_tokens_total,
        )
    assert not b.has_unfinished()


def test_decode_run_declines_with_a_queue_or_a_prefill() -> None:
    e = _engine(False)
    e.add_request(RequestSpec("0", tuple(range(50)), 5))
    assert e.decode_run(0.0, 1.0) is None  # the prompt is not computed yet
    e.step(0.0)
    e.add_request(RequestSpec("1", tuple(range(60)), 5))
    assert e.decode_run(0.0, 1.0) is None  # a request waits


# --------------------------------------------------------------------------- setup


def test_setup_is_the_planners_choice_and_the_rendered_vllm_arguments() -> None:
    setup = fleet_setup(_service())
    assert (setup.gpu_type, setup.tensor_parallel, setup.gpus_per_replica) == ("H100-80GB", 1, 1)
    assert setup.profile == "h100-80gb"
    assert setup.engine.config.max_model_len == 4096
    assert "--max-model-len" in setup.argv


def test_kvpilot_scaler_merges_like_the_operator(tmp_path: object) -> None:
    svc = _service({"minReplicas": 1, "maxReplicas": 4, "stableWindowSeconds": 40})
    base = load_site_policy(None)
    scaler = KvpilotScaler(svc, base)
    assert scaler.config == policy_config(svc, base)
    assert scaler.config.panic_window_seconds == 40  # the operator's own shortening rule
    assert scaler.window_s == 40


# --------------------------------------------------------------------------- scenarios


def test_one_request_hand_checked() -> None:
    svc = _service()
    setup = fleet_setup(svc)
    prof, shape = setup.engine.profile, setup.engine.shape
    res = simulate([Request(0.0, 100, 3)], service=svc, scaler=FixedScaler(1), setup=setup)
    prefill = step_time(prof, shape, 1, Batch(prefill_chunks=(PrefillChunk(100, 0),)))
    d1 = step_time(prof, shape, 1, Batch(decode_contexts=(101,)))
    d2 = step_time(prof, shape, 1, Batch(decode_contexts=(102,)))
    fe = setup.frontend_latency_s
    r = res.requests
    assert r.ttft[0] == pytest.approx(fe + prefill)
    assert r.e2e[0] == pytest.approx(fe + prefill + d1 + d2)
    assert r.itl_mean[0] == pytest.approx((d1 + d2) / 2)
    assert sorted(res.token_gaps) == pytest.approx(sorted([d1, d2]))


def test_least_outstanding_routing() -> None:
    svc = _service()
    # Three long requests at once on two replicas, then one more: it goes to the
    # replica holding one request, not the one holding two.
    reqs = [Request(0.0, 500, 400), Request(0.001, 500, 400), Request(0.002, 500, 400)]
    reqs.append(Request(0.5, 100, 5))
    res = simulate(reqs, service=svc, scaler=FixedScaler(2), initial_replicas=2)
    assert res.requests.replica == (0, 1, 0, 1)


@dataclass
class _Schedule:
    """Desired replicas by time (a scripted scaler)."""

    steps: list[tuple[float, int]]
    interval_s: float = 10.0
    window_s: float = 60.0
    reason: str = "scripted"

    def decide(self, now: float, view: FleetView) -> int:
        return [n for t, n in self.steps if t <= now][-1]


def test_cold_start_and_replica_seconds() -> None:
    svc = _service()
    reqs = [Request(float(t), 200, 20) for t in range(0, 200, 5)]
    scaler = _Schedule([(0.0, 1), (20.0, 3), (100.0, 1)])
    res = simulate(reqs, service=svc, scaler=scaler, cold_start_s=30.0, initial_replicas=1)
    s = res.series
    at = {t: (d, r) for t, d, r in zip(s.t, s.desired, s.ready, strict=True)}
    assert at[30.0] == (3, 1)  # created at 20 s, still loading
    assert at[50.0] == (3, 3)  # Ready 30 s after creation
    assert at[110.0] == (1, 1)
    assert [(e.time, e.from_replicas, e.to_replicas) for e in res.scale_events] == [
        (20.0, 1, 3),
        (100.0, 3, 1),
    ]
    # Two extra replicas from 20 s to 100 s (deleted idle or drained almost at once).
    extra = res.replica_seconds - res.duration_s
    assert extra == pytest.approx(2 * 80.0, abs=2.0)
    assert res.gpu_hours == pytest.approx(res.replica_seconds / 3600.0)
    # They loaded for 30 s each and then mostly idled: waste is at least the loading.
    assert res.wasted_replica_seconds >= 2 * 30.0


def test_measured_cold_starts_and_decision_phase() -> None:
    """A replay of a live run: its cold starts in turn, its operator's decision phase."""
    svc = _service()
    reqs = [Request(float(t), 200, 20) for t in range(0, 100, 5)]
    scaler = _Schedule([(0.0, 1), (20.0, 2), (40.0, 3)])
    res = simulate(
        reqs,
        service=svc,
        scaler=scaler,
        cold_start_s=30.0,
        cold_starts_s=(8.0,),
        decision_phase_s=3.0,
        initial_replicas=1,
        sample_interval_s=1.0,
        until=100.0,
    )
    # Decisions at 3, 13, 23, 33, 43 s: the schedule's steps land on the next one.
    assert [(e.time, e.to_replicas) for e in res.scale_events] == [(23.0, 2), (43.0, 3)]
    s = res.series
    ready = {round(t): r for t, r in zip(s.t, s.ready, strict=True)}
    assert ready[30] == 1  # created at 23 s, Ready 8 s later (the measured cold start)
    assert ready[32] == 2
    assert ready[72] == 2  # the next replica takes cold_start_s: Ready at 73 s
    assert ready[74] == 3


def test_kvpilot_policy_scales_up_under_load() -> None:
    svc = _service({"minReplicas": 1, "maxReplicas": 4})
    # More than one replica can serve, for two minutes.
    reqs = [Request(i * 0.1, 3000, 200) for i in range(1200)]
    res = simulate(reqs, service=svc, scaler=KvpilotScaler(svc), cold_start_s=20.0, until=150.0)
    assert res.scale_events and res.scale_events[0].to_replicas > 1
    assert "scaling up" in res.scale_events[0].reason
    assert max(res.series.ready) > 1


def test_setup_is_reused(tmp_path: object) -> None:
    svc = _service()
    setup: FleetSetup = fleet_setup(svc)
    a = simulate([Request(0.0, 10, 2)], service=svc, scaler=FixedScaler(1), setup=setup)
    assert a.setup is setup


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scrape_interval_s": 0.0}, "scrape interval must be positive, got 0 s"),
        ({"metrics_step_s": -1.0}, "metrics step must be positive"),
        ({"sample_interval_s": 0.0}, "sample interval must be positive"),
        ({"cold_start_s": -1.0}, "cold start must not be negative"),
        ({"query_delay_s": -0.5}, "query delay must not be negative"),
        ({"drain_timeout_s": -1.0}, "drain timeout must not be negative"),
        ({"initial_replicas": 0}, "initial replicas must be at least 1"),
    ],
)
def test_timings_the_event_loop_cannot_run_are_refused(
    kwargs: dict[str, float], message: str
) -> None:
    reqs = [Request(0.0, 100, 10)]
    with pytest.raises(ValueError, match=message):
        simulate(reqs, service=_service(), scaler=FixedScaler(1), **kwargs)  # type: ignore[arg-type]


def test_a_zero_decision_interval_is_refused() -> None:
    svc = _service()
    scaler = KvpilotScaler(svc, load_site_policy(None), interval_s=0.0)
    with pytest.raises(ValueError, match="autoscale interval must be positive"):
        simulate([Request(0.0, 100, 10)], service=svc, scaler=scaler)
