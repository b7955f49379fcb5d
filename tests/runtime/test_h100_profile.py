"""The H100 profile reproduces the step times measured on a real H100.

The CSV holds what bench/gpu_calibration/measure.py timed on one H100 80GB HBM3:
decode steps of Llama-3.1-8B and of one tensor-parallel rank of Llama-3.1-70B at
TP 4 (batch 1-512, context 128-32k) and prefill steps (64-16k tokens), each in a
CUDA graph. The rank ran alone, so its points are compared with the step time
less the all-reduce term. bench/gpu_calibration/README.md has the figures.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass

import pytest

from kvpilot_runtime.latency import (
    PROFILE_DIR,
    Batch,
    ModelShape,
    PrefillChunk,
    Profile,
    load_profile,
    step_terms,
)
from kvpilot_runtime.models import CATALOG

CSV_PATH = PROFILE_DIR / "data" / "h100-80gb-measured.csv"
MODELS = {
    "llama-3.1-8b": ("meta-llama/llama-3.1-8b-instruct", 1),
    "llama-3.1-70b-tp4-shard": ("meta-llama/llama-3.1-70b-instruct", 4),
}


@dataclass(frozen=True)
class Measured:
    label: str
    model: str
    phase: str
    batch: int
    context: int
    prompt_len: int
    seconds: float
    shape: ModelShape
    tp: int
    work: Batch


def _load() -> list[Measured]:
    out = []
    with CSV_PATH.open() as fh:
        for row in csv.DictReader(fh):
            if row["phase"] not in ("decode", "prefill") or row["mode"] != "graph":
                continue
            name, tp = MODELS[row["model"]]
            if row["phase"] == "decode":
                batch, ctx, prompt = int(row["batch"]), int(row["context"]), 0
                work = Batch(decode_contexts=(ctx,) * batch)
                label = f"{row['model']}-decode-b{batch}-ctx{ctx}"
            else:
                batch, ctx, prompt = 1, 0, int(row["prompt_len"])
                work = Batch(prefill_chunks=(PrefillChunk(prompt),))
                label = f"{row['model']}-prefill-{prompt}"
            out.append(
                Measured(
                    label=label,
                    model=row["model"],
                    phase=row["phase"],
                    batch=batch,
                    context=ctx,
                    prompt_len=prompt,
                    seconds=float(row["median_s"]),
                    shape=CATALOG[name],
                    tp=tp,
                    work=work,
                )
            )
    return out


POINTS = _load()
PROFILE = load_profile("h100-80gb")


def predicted(profile: Profile, m: Measured) -> float:
    """The engine's step time without the all-reduce the single-GPU run did not do."""
    terms = step_terms(profile, m.shape, m.tp, m.work)
    return terms.total - terms.allreduce


def rel_err(m: Measured) -> float:
    return predicted(PROFILE, m) / m.seconds - 1.0


def test_profile_records_where_it_was_measured() -> None:
    cal = PROFILE.calibration
    assert cal is not None
    assert (cal.device, cal.csv) == ("NVIDIA H100 80GB HBM3", "data/h100-80gb-measured.csv")
    assert cal.date and cal.driver and cal.torch and cal.method
    assert (PROFILE_DIR / cal.csv).is_file()
    assert cal.extra["points"] == len(POINTS)


def test_measurements_cover_batch_context_and_prompt_ranges() -> None:
    for model in MODELS:
        decode = [m for m in POINTS if m.model == model and m.phase == "decode"]
        prefill = [m for m in POINTS if m.model == model and m.phase == "prefill"]
        assert {1, 2, 4, 8, 16, 32, 64, 128, 256} <= {m.batch for m in decode}
        assert {512, 1024, 2048, 4096, 8192, 16384, 32768} <= {m.context for m in decode}
        assert {128, 256, 512, 1024, 2048, 4096, 8192, 16384} <= {m.prompt_len for m in prefill}


def test_calibration_summary_matches_the_committed_data() -> None:
    """The profile's recorded fit quality is what its numbers give on the committed CSV."""
    errs = [abs(rel_err(m)) for m in POINTS]
    cal = PROFILE.calibration
    assert cal is not None
    assert (
        round(statistics.median(errs), 4),
        round(max(errs), 4),
        sum(e <= 0.10 for e in errs),
    ) == (
        cal.extra["fit_median_rel_err"],
        cal.extra["fit_max_rel_err"],
        cal.extra["fit_within_10pct"],
    )


def test_fit_quality_over_all_points() -> None:
    errs = [abs(rel_err(m)) for m in POINTS]
    assert statistics.median(errs) <= 0.03


def _ceilings() -> dict[str, float]:
    """The copy bandwidth and the 8192^3 matmul rate measured in the same run."""
    out = {}
    with CSV_PATH.open() as fh:
        for row in csv.DictReader(fh):
            if row["phase"] == "copy":
                out["bandwidth"] = float(row["weight_bytes_read"]) / float(row["median_s"])
            elif row["phase"] == "matmul":
                out["flops"] = float(row["attention_flops"]) / float(row["median_s"])
    return out


CEILINGS = _ceilings()


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("weight_bandwidth_bytes_per_s", 0.5 * CEILINGS["bandwidth"], CEILINGS["bandwidth"]),
        ("kv_bandwidth_bytes_per_s", 0.5 * CEILINGS["bandwidth"], CEILINGS["bandwidth"]),
        ("matmul_flops_per_s", 0.5 * CEILINGS["flops"], CEILINGS["flops"]),
        ("attention_flops_per_s", 0.2 * CEILINGS["flops"], CEILINGS["flops"]),
        # between fully serialized (1) and nearly a plain maximum
        ("overlap_exponent", 1.0, 8.0),
        # a layer's dozen kernels: microseconds each, not milliseconds
        ("layer_overhead_s", 5e-6, 2e-4),
        ("sequence_overhead_s", 0.0, 2e-5),
        ("step_overhead_s", 0.0, 1e-3),
    ],
)
def test_fitted_coefficients_are_physical(key: str, low: float, high: float) -> None:
    """The fit cannot buy error with rates the same GPU did not reach in the same run."""
    value = getattr(PROFILE.effective, key)
    assert value is not None and low <= value <= high, f"{key}={value}"


# Every measured step within 10%: the smooth maximum of weight streaming and
# matrix compute takes the ridge (decode batch 128-512, prefill 128-512 tokens),
# the per-layer cost the small batches, the per-sequence cost the difference
# between a decode batch and a prefill of as many tokens.
def test_every_point_within_ten_percent() -> None:
    beyond = {m.label: f"{rel_err(m):+.1%}" for m in POINTS if abs(rel_err(m)) > 0.10}
    assert beyond == {}
