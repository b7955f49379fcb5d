"""What a simulation measured, as JSON and as a self-contained HTML report.

SLO attainment is the fraction of requests (in the trace) that met the SLO:
TTFT attainment counts requests whose time to first token is at most
``ttft_slo_s``; ITL attainment counts requests whose mean inter-token latency is
at most ``itl_slo_s`` (requests with one output token meet it). A request that
never finished (aborted by a deletion, or cut off by ``until``) misses both.

The HTML report embeds its PNG plots (matplotlib, the ``sim`` extra) as data
URIs, so one file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvpilot.sim.fleet import SimResult

if TYPE_CHECKING:
    from kvpilot.sim.baselines import Comparison

DEFAULT_TTFT_SLO_S = 2.0
DEFAULT_ITL_SLO_S = 0.1
LATENCY_BUCKET_S = 60.0


def percentile(values: Sequence[float], q: float, weights: Sequence[int] | None = None) -> float:
    """The ``q``-th percentile (0..100, nearest rank) of the finite values; NaN if none."""
    pairs = sorted(
        (v, (weights[i] if weights is not None else 1))
        for i, v in enumerate(values)
        if math.isfinite(v)
    )
    if not pairs:
        return math.nan
    total = sum(w for _, w in pairs)
    rank = max(1, math.ceil(q / 100.0 * total))
    seen = 0
    for v, w in pairs:
        seen += w
        if seen >= rank:
            return v
    return pairs[-1][0]


def _r(x: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(x) else round(x, digits)


def summarize(
    result: SimResult,
    *,
    ttft_slo_s: float = DEFAULT_TTFT_SLO_S,
    itl_slo_s: float = DEFAULT_ITL_SLO_S,
) -> dict[str, Any]:
    """The figures of one run (JSON-able): attainment, percentiles, cost, scaling."""
    req = result.requests
    n = len(req.arrival)
    finished = [math.isfinite(e) for e in req.e2e]
    ttft_ok = sum(1 for i in range(n) if finished[i] and req.ttft[i] <= ttft_slo_s)
    itl_ok = sum(
        1
        for i in range(n)
        if finished[i] and (not math.isfinite(req.itl_mean[i]) or req.itl_mean[i] <= itl_slo_s)
    )
    both_ok = sum(
        1
        for i in range(n)
        if finished[i]
        and req.ttft[i] <= ttft_slo_s
        and (not math.isfinite(req.itl_mean[i]) or req.itl_mean[i] <= itl_slo_s)
    )
    gaps, counts = result.token_gaps, result.token_gap_counts

    def pct(values: Sequence[float], weights: Sequence[int] | None = None) -> dict[str, Any]:
        return {f"p{q}": _r(percentile(values, q, weights)) for q in (50, 95, 99)}

    s = result.series
    setup = result.setup
    return {
        "requests": n,
        "finished": sum(finished),
        "aborted": req.aborted,
        "clipped_to_max_model_len": req.clipped,
        "duration_s": round(result.duration_s, 3),
        "slo": {"ttft_s": ttft_slo_s, "itl_s": itl_slo_s},
        "attainment": {
            "ttft": _r(ttft_ok / n if n else math.nan, 5),
            "itl": _r(itl_ok / n if n else math.nan, 5),
            "both": _r(both_ok / n if n else math.nan, 5),
        },
        "ttft_s": pct(req.ttft),
        "itl_s": pct(gaps, counts),
        "e2e_s": pct(req.e2e),
        "gpu": {
            "type": setup.gpu_type,
            "tensor_parallel": setup.tensor_parallel,
            "gpus_per_replica": setup.gpus_per_replica,
            "profile": setup.profile,
        },
        "replica_hours": round(result.replica_seconds / 3600.0, 5),
        "gpu_hours": round(result.gpu_hours, 5),
        "wasted_gpu_hours": round(result.wasted_gpu_hours, 5),
        "peak_replicas": result.peak_replicas,
        "peak_queue": max(s.waiting, default=0),
        "scale_events": [
            {
                "t": round(e.time, 3),
                "from": e.from_replicas,
                "to": e.to_replicas,
                "reason": e.reason,
            }
            for e in result.scale_events
        ],
        "scale_event_count": len(result.scale_events),
    }


def latency_over_time(
    result: SimResult, bucket_s: float = LATENCY_BUCKET_S
) -> dict[str, list[float]]:
    """TTFT p50/p95/p99 of the requests arriving in each ``bucket_s`` (for the plot)."""
    req = result.requests
    buckets: dict[int, list[float]] = {}
    for a, t in zip(req.arrival, req.ttft, strict=True):
        buckets.setdefault(int(a // bucket_s), []).append(t)
    out: dict[str, list[float]] = {"t": [], "p50": [], "p95": [], "p99": []}
    for b in sorted(buckets):
        out["t"].append((b + 0.5) * bucket_s)
        for q in (50, 95, 99):
            out[f"p{q}"].append(percentile(buckets[b], q))
    return out


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(result: SimResult, ttft_slo_s: float) -> dict[str, str]:
    """Base64 PNGs by title: replicas vs demand, queue, KV usage, latency over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.series
    minutes = [t / 60.0 for t in s.t]
    out: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.step(minutes, s.desired, where="post", label="desired", color="tab:blue")
    ax.step(minutes, s.ready, where="post", label="ready", color="tab:green")
    ax.set_xlabel("minutes")
    ax.set_ylabel("replicas")
    ax2 = ax.twinx()
    rate = [a / s.interval for a in s.arrivals]
    ax2.plot(minutes, rate, color="tab:gray", alpha=0.6, linewidth=0.8, label="arrivals/s")
    ax2.set_ylabel("arrivals/s")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax.set_title("Replicas against demand")
    out["Replicas against demand"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.0))
    ax.fill_between(minutes, s.waiting, step="post", color="tab:red", alpha=0.5, label="waiting")
    ax.plot(minutes, s.running, color="tab:blue", linewidth=0.8, label="running")
    ax.set_xlabel("minutes")
    ax.set_ylabel("requests")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Queue depth (all replicas)")
    out["Queue depth"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.0))
    ax.plot(minutes, [100 * k for k in s.kv_usage], color="tab:purple")
    ax.set_ylim(0, 100)
    ax.set_xlabel("minutes")
    ax.set_ylabel("KV cache used (%)")
    ax.set_title("KV-cache usage (mean over Ready replicas)")
    out["KV-cache usage"] = _png(fig)
    plt.close(fig)

    lat = latency_over_time(result)
    fig, ax = plt.subplots(figsize=(9, 3.0))
    lm = [t / 60.0 for t in lat["t"]]
    for q, color in (("p50", "tab:green"), ("p95", "tab:orange"), ("p99", "tab:red")):
        ax.plot(lm, lat[q], marker=".", color=color, label=f"TTFT {q}")
    ax.axhline(ttft_slo_s, color="black", linestyle="--", linewidth=0.8, label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel("minutes (request arrival)")
    ax.set_ylabel("seconds")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"Time to first token per {LATENCY_BUCKET_S:g} s of arrivals")
    out["Latency percentiles"] = _png(fig)
    plt.close(fig)
    return out


def comparison_plots(comparison: Comparison) -> dict[str, str]:
    """Base64 PNGs of a policy comparison: replicas over time, GPU-hours against attainment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, res in comparison.results.items():
        s = res.series
        ours = name == "kvpilot"
        ax.step(
            [t / 60.0 for t in s.t],
            s.ready,
            where="post",
            label=name,
            linewidth=2.0 if ours else 0.9,
            alpha=1.0 if ours else 0.8,
        )
    plan = comparison.oracle
    ax.step(
        [i * plan.bin_s / 60.0 for i in range(len(plan.needed))],
        plan.needed,
        where="post",
        color="black",
        linestyle="--",
        linewidth=1.0,
        label="oracle: needed",
    )
    ax.set_xlabel("minutes")
    ax.set_ylabel("replicas ready")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_title("Replicas by policy")
    out["Replicas by policy"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for row in comparison.rows:
        marker = "*" if row.policy == "kvpilot" else "o"
        ax.scatter(row.gpu_hours, 100 * row.ttft_attainment, marker=marker, s=90)
        ax.annotate(row.policy, (row.gpu_hours, 100 * row.ttft_attainment), fontsize=8)
    ax.axhline(
        100 * comparison.slo.attainment, color="black", linestyle="--", linewidth=0.8,
        label=f"target {100 * comparison.slo.attainment:g} %",
    )  # fmt: skip
    ax.axvline(
        comparison.oracle_gpu_hours, color="tab:gray", linestyle=":", linewidth=1.0,
        label="oracle's GPU-hours (lower bound)",
    )  # fmt: skip
    ax.set_xlabel("GPU-hours")
    ax.set_ylabel(f"TTFT <= {comparison.slo.ttft_s:g} s (% of requests)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("GPU-hours against TTFT-SLO attainment (up and left is better)")
    out["GPU-hours against attainment"] = _png(fig)
    plt.close(fig)
    return out


def _comparison_html(comparison: Mapping[str, Any]) -> str:
    """The policies-compared table of a report (from `Comparison.as_dict`)."""
    ttft = comparison["slo"]["ttft_s"]
    head = (
        "<tr><th>policy</th><th>GPU-hours</th>"
        f"<th>TTFT &le; {html.escape(_fmt(ttft))} s</th><th>scale events</th>"
        "<th>peak replicas</th><th>p99 TTFT (s)</th><th>vs oracle</th></tr>"
    )
    body = "".join(
        f"<tr><td>{html.escape(r['policy'])}</td><td>{_fmt(r['gpu_hours'])}</td>"
        f"<td>{100 * r['ttft_attainment']:.2f} %</td><td>{r['scale_events']}</td>"
        f"<td>{r['peak_replicas']}</td><td>{_fmt(r['p99_ttft_s'])}</td>"
        f"<td>{r['vs_oracle']:.2f}&times;</td></tr>"
        for r in comparison["rows"]
    )
    o = comparison["oracle"]
    capped = ""
    if o.get("uncapped_peak_replicas", 0) > o["peak_replicas"]:
        capped = (
            f"<p><strong>The trace's peak needs {o['uncapped_peak_replicas']} replicas; "
            f"maxReplicas caps every policy, the oracle too, at {o['peak_replicas']}.</strong></p>"
        )
    body += (
        f"<tr><td>oracle (lower bound)</td><td>{_fmt(o['gpu_hours'])}</td><td>-</td>"
        f"<td>{o['cold_starts']} starts</td><td>{o['peak_replicas']}</td><td>-</td>"
        "<td>1.00&times;</td></tr>"
    )
    return (
        "<h2>Policies compared</h2><p>The same trace, warm fleet, cold start and scrape "
        "delays for every policy; the oracle knows the future and is sized for "
        f"{100 * comparison['slo']['attainment']:g} % of requests within the TTFT SLO.</p>"
        f"{capped}<table>{head}{body}</table>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;
text-align:left}th{background:#f3f3f3}img{display:block;margin:1em 0;max-width:100%}
code{background:#f3f3f3;padding:1px 4px}
"""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_html(summary: Mapping[str, Any], images: Mapping[str, str], title: str) -> str:
    """The report page: headline figures, the plots, the scale events."""
    att, slo = summary["attainment"], summary["slo"]
    rows = [
        ("Requests", f"{summary['requests']} ({summary['finished']} finished)"),
        ("TTFT SLO attainment", f"{100 * (att['ttft'] or 0):.2f} % (TTFT <= {slo['ttft_s']} s)"),
        ("ITL SLO attainment", f"{100 * (att['itl'] or 0):.2f} % (mean ITL <= {slo['itl_s']} s)"),
        *(
            (
                f"{name} p50 / p95 / p99 (s)",
                " / ".join(_fmt(summary[key][p]) for p in ("p50", "p95", "p99")),
            )
            for name, key in (("TTFT", "ttft_s"), ("ITL", "itl_s"), ("End-to-end", "e2e_s"))
        ),
        (
            "GPU",
            f"{summary['gpu']['type']} x{summary['gpu']['gpus_per_replica']} per replica "
            f"(TP{summary['gpu']['tensor_parallel']}, profile {summary['gpu']['profile']})",
        ),
        ("GPU-hours", _fmt(summary["gpu_hours"])),
        ("Wasted GPU-hours", _fmt(summary["wasted_gpu_hours"])),
        ("Peak replicas", _fmt(summary["peak_replicas"])),
        ("Peak queue", _fmt(summary["peak_queue"])),
        ("Scale events", _fmt(summary["scale_event_count"])),
    ]
    figs = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{data}">'
        for name, data in images.items()
    )
    compared = _comparison_html(summary["comparison"]) if "comparison" in summary else ""
    events = "".join(
        f"<tr><td>{e['t'] / 60:.1f}</td><td>{e['from']} &rarr; {e['to']}</td>"
        f"<td>{html.escape(e['reason'])}</td></tr>"
        for e in summary["scale_events"][:500]
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{_table(rows)}{compared}{figs}"
        "<h2>Scale events</h2><table><tr><th>minute</th><th>replicas</th><th>reason</th></tr>"
        f"{events}</table></body></html>"
    )


def write_report(
    result: SimResult,
    directory: str | Path,
    *,
    title: str = "kvpilot policy simulation",
    ttft_slo_s: float = DEFAULT_TTFT_SLO_S,
    itl_slo_s: float = DEFAULT_ITL_SLO_S,
    extra: Mapping[str, Any] | None = None,
    html_report: bool = True,
    comparison: Comparison | None = None,
) -> dict[str, Any]:
    """Writes result.json (and report.html) into ``directory``; returns the summary.

    With ``comparison`` (from `run_comparison`, whose kvpilot run is ``result``) the
    JSON holds its table under ``comparison`` and the page adds it with two plots.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(result, ttft_slo_s=ttft_slo_s, itl_slo_s=itl_slo_s)
    if extra:
        summary = {**dict(extra), **summary}
    if comparison is not None:
        summary["comparison"] = comparison.as_dict()
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    if html_report:
        images = plots(result, ttft_slo_s)
        if comparison is not None:
            images.update(comparison_plots(comparison))
        page = render_html(summary, images, title)
        (out / "report.html").write_text(page)
    return summary
