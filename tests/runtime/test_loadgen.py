"""The load generator: arrival processes, trace replay, discovery, balancing, and runs
against kvpilot-sim replicas on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import pytest

from kvpilot_runtime.loadgen import (
    Arrival,
    Balancer,
    LoadConfig,
    NoReadyReplicaError,
    RecordWriter,
    RequestRecord,
    Segment,
    Target,
    discover_targets,
    fixed_lengths,
    is_loopback_url,
    main,
    parse_schedule,
    percentile,
    poisson_arrivals,
    read_records,
    read_trace,
    run_load,
    schedule_arrivals,
    summarize,
    trace_arrivals,
    trace_lengths,
)

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "bench" / "traces"

# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10:2", (Segment(10, 2, 2),)),
        ("30:2, 30:8,60:8..1", (Segment(30, 2, 2), Segment(30, 8, 8), Segment(60, 8, 1))),
        ("5:0..4,", (Segment(5, 0, 4),)),
        ("0.5:1.5", (Segment(0.5, 1.5, 1.5),)),
    ],
)
def test_parse_schedule(text: str, expected: tuple[Segment, ...]) -> None:
    assert parse_schedule(text) == expected


@pytest.mark.parametrize("text", ["", "10", "x:1", "10:a", "0:1", "10:-1", "10:1..-2", "inf:1"])
def test_parse_schedule_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


def test_poisson_arrivals_are_sorted_bounded_and_near_the_rate() -> None:
    arrivals = poisson_arrivals(20.0, 50.0, fixed_lengths(100, 10), seed=3)
    times = [a.time for a in arrivals]
    assert times == sorted(times)
    assert times[0] >= 0 and times[-1] < 50.0
    # 1000 expected; 4 standard deviations of a Poisson count is about 126.
    assert abs(len(arrivals) - 1000) < 126
    assert {(a.prompt_tokens, a.output_tokens) for a in arrivals} == {(100, 10)}
    assert arrivals == poisson_arrivals(20.0, 50.0, fixed_lengths(100, 10), seed=3)
    assert arrivals != poisson_arrivals(20.0, 50.0, fixed_lengths(100, 10), seed=4)


def test_schedule_steps_and_ramps_follow_the_rates() -> None:
    segments = parse_schedule("100:2,100:0,100:0..10")
    arrivals = schedule_arrivals(segments, fixed_lengths(1, 1), seed=0)

    def count(lo: float, hi: float) -> int:
        return sum(lo <= a.time < hi for a in arrivals)

    # Expected: 200 in the step, none in the pause, 125 and 375 in the ramp's halves.
    observed = (count(0, 100), count(100, 200), count(200, 250), count(250, 300))
    expected = (200, 0, 125, 375)
    assert observed[1] == 0
    for got, want in zip(observed, expected, strict=True):
        assert abs(got - want) <= 4 * want**0.5, (observed, expected)


TRACE_CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.0000000,374,44
2023-11-16 18:15:47.5000000,9000,10
2023-11-16 18:15:50.0000000,20,400
2023-11-16 18:15:44.0000000,5,1
"""


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(TRACE_CSV)
    return path


def test_read_trace_sorts_and_offsets(small_trace: Path) -> None:
    rows = read_trace(small_trace)
    assert [(r.offset, r.context_tokens, r.generated_tokens) for r in rows] == [
        (0.0, 5, 1),
        (2.0, 374, 44),
        (3.5, 9000, 10),
        (6.0, 20, 400),
    ]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {},
            [
                Arrival(0.0, 5, 1),
                Arrival(2.0, 374, 44),
                Arrival(3.5, 9000, 10),
                Arrival(6.0, 20, 400),
            ],
        ),
        (
            {"time_scale": 2.0, "max_prompt_tokens": 1000, "max_output_tokens": 100},
            [
                Arrival(0.0, 5, 1),
                Arrival(1.0, 374, 44),
                Arrival(1.75, 1000, 10),
                Arrival(3.0, 20, 100),
            ],
        ),
        ({"start": 2.0, "duration": 1.5}, [Arrival(0.0, 374, 44)]),
        ({"start": 2.0, "duration": 1.51}, [Arrival(0.0, 374, 44), Arrival(1.5, 9000, 10)]),
        (
            {"start": 1.0, "time_scale": 4.0, "duration": 1.0},
            [Arrival(0.25, 374, 44), Arrival(0.625, 9000, 10)],
        ),
    ],
)
def test_trace_arrivals(
    small_trace: Path, kwargs: dict[str, float], expected: list[Arrival]
) -> None:
    assert trace_arrivals(read_trace(small_trace), **kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"time_scale": 0.0}, {"rate_scale": 0.0}, {"rate_scale": 2.0}])
def test_trace_arrivals_rejects(small_trace: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        trace_arrivals(read_trace(small_trace), **kwargs)  # type: ignore[arg-type]


def test_bundled_traces_and_thinning() -> None:
    conv = read_trace(TRACES / "azure-llm-2023-conv.csv")
    code = read_trace(TRACES / "azure-llm-2023-code.csv")
    assert (len(conv), len(code)) == (19366, 8819)
    assert conv[0].offset == 0.0 and conv[-1].offset < 3600
    full = trace_arrivals(conv, time_scale=10.0)
    thinned = trace_arrivals(conv, time_scale=10.0, rate_scale=0.1, seed=1)
    assert len(full) == len(conv) and full[-1].time < 360
    assert set(thinned) <= set(full)
    assert abs(len(thinned) - 1936.6) < 4 * (1936.6 * 0.9) ** 0.5
    assert thinned == trace_arrivals(conv, time_scale=10.0, rate_scale=0.1, seed=1)


def test_trace_lengths_draws_clipped_rows(small_trace: Path) -> None:
    pick = trace_lengths(read_trace(small_trace), max_prompt_tokens=1000, max_output_tokens=100)
    arrivals = poisson_arrivals(50.0, 10.0, pick, seed=0)
    sizes = {(a.prompt_tokens, a.output_tokens) for a in arrivals}
    assert sizes == {(5, 1), (374, 44), (1000, 10), (20, 100)}


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.8.9.10:1", True),
        ("http://localhost:9/x", True),
        ("http://[::1]:8000", True),
        ("https://127.0.0.1", True),
        ("http://10.244.0.2:8000", False),
        ("http://0.0.0.0:8000", False),
        ("http://example.com", False),
        ("http://localhost.example.com", False),
        ("ftp://127.0.0.1", False),
        ("127.0.0.1:8000", False),
        ("", False),
    ],
)
def test_is_loopback_url(url: str, ok: bool) -> None:
    assert is_loopback_url(url) is ok


def test_discover_targets_filters_by_service_and_loopback(tmp_path: Path) -> None:
    def group(ns: str, svc: str, pod: str, addr: str) -> dict[str, object]:
        labels = {"namespace": ns, "inference_service": svc, "pod": pod, "revision": "r1"}
        return {"targets": [addr], "labels": labels}

    files = {
        "a_p2.json": [group("a", "svc", "p2", "127.0.0.1:1002")],
        "a_p1.json": [group("a", "svc", "p1", "127.0.0.1:1001")],
        "a_other.json": [group("a", "other", "o1", "127.0.0.1:1003")],
        "b_p1.json": [group("b", "svc", "p1", "127.0.0.1:1004")],
        "a_remote.json": [group("a", "svc", "r1", "10.0.0.1:8000")],
        # A pod that is not Ready (e.g. held by a readinessGate) is not an endpoint.
        "a_held.json": [
            {**group("a", "svc", "h1", "127.0.0.1:1006"),
             "labels": {"namespace": "a", "inference_service": "svc", "pod": "h1",
                        "__meta_kubernetes_pod_ready": "false"}},
        ],
        "a_p0.json": [
            {**group("a", "svc", "p0", "127.0.0.1:1000"),
             "labels": {"namespace": "a", "inference_service": "svc", "pod": "p0",
                        "__meta_kubernetes_pod_ready": "true"}},
        ],
    }  # fmt: skip
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    (tmp_path / "broken.json").write_text("[{")
    (tmp_path / ".a_p3.json.123.tmp").write_text(
        json.dumps([group("a", "svc", "p3", "127.0.0.1:1005")])
    )
    assert discover_targets(tmp_path, "a", "svc") == [
        Target("p0", "http://127.0.0.1:1000"),
        Target("p1", "http://127.0.0.1:1001"),
        Target("p2", "http://127.0.0.1:1002"),
    ]
    assert discover_targets(tmp_path, "c", "svc") == []


A, B, C = (
    Target("a", "http://127.0.0.1:1"),
    Target("b", "http://127.0.0.1:2"),
    Target("c", "http://127.0.0.1:3"),
)


@pytest.mark.parametrize(
    ("policy", "outstanding", "expected"),
    [
        ("round-robin", {}, ["a", "b", "c", "a", "b", "c"]),
        ("round-robin", {"a": 9}, ["a", "b", "c", "a", "b", "c"]),
        ("least-outstanding", {}, ["a", "b", "c", "a", "b", "c"]),
        ("least-outstanding", {"a": 2, "b": 1}, ["c", "c", "c", "c", "c", "c"]),
        ("least-outstanding", {"a": 1, "b": 0, "c": 0}, ["b", "b", "c", "b", "b", "c"]),
    ],
)
def test_balancer(policy: str, outstanding: dict[str, int], expected: list[str]) -> None:
    b = Balancer(policy)
    picks = [b.choose([A, B, C], outstanding) for _ in expected]
    assert [t.name for t in picks if t is not None] == expected
    assert Balancer(policy).choose([], outstanding) is None


def rec(i: int, **kw: object) -> RequestRecord:
    base: dict[str, object] = {
        "index": i,
        "scheduled": i * 0.5,
        "start": 1.7e9 + i,
        "replica": "p1",
        "prompt_tokens": 10,
        "max_tokens": 4,
        "output_tokens": 4,
        "ttft": 0.1 * (i + 1),
        "itl_mean": 0.01,
        "e2e": 0.2 * (i + 1),
        "status": 200,
        "error": None,
    }
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_records_round_trip(tmp_path: Path, suffix: str) -> None:
    records = [
        rec(0),
        rec(1, replica="p2", ttft=None, itl_mean=None, e2e=None, output_tokens=0, status=500,
            error="http 500: boom, with a comma"),
    ]  # fmt: skip
    path = tmp_path / f"out{suffix}"
    writer = RecordWriter(path)
    for r in records:
        writer.write(r)
    writer.close()
    assert read_records(path) == records


def test_summarize() -> None:
    records = [
        rec(0),
        rec(1),
        rec(2, replica="p2"),
        rec(3, replica="", output_tokens=0, ttft=None, itl_mean=None, e2e=None, status=0,
            error="no replica: none Ready"),
        rec(4, replica="p2", output_tokens=0, ttft=None, itl_mean=None, e2e=None, status=500,
            error="http 500: Injected failure"),
    ]  # fmt: skip
    s = summarize(records, 2.0)
    assert (s.requests, s.ok, s.errors, s.output_tokens, s.duration_s) == (5, 3, 2, 12, 2.0)
    assert (s.ttft_p50_s, s.e2e_p50_s, s.itl_p50_s) == (0.2, 0.4, 0.01)
    assert s.per_replica == {"p1": 2, "p2": 2}
    assert s.error_kinds == {"http 500": 1, "no replica": 1}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([3.0], 99, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 2.0], 100, 4.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


# ----------------------------------------------------------------------------- against the sim


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def sims(tmp_path: Path, *extra: Sequence[str]) -> Iterator[list[str]]:
    """One kvpilot-sim per argument list, on loopback; yields their URLs once listening."""
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i, args in enumerate(extra):
            port = _free_port()
            log = (tmp_path / f"sim{i}.log").open("wb")
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvpilot_runtime.server", "--port", str(port),
                 "--served-model-name", "m", "--max-num-seqs", "4", "--time-scale", "4",
                 *args],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            procs.append((proc, f"http://127.0.0.1:{port}"))
        deadline = time.monotonic() + 30
        for proc, url in procs:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/v1/models", timeout=1):
                        break
                except urllib.error.HTTPError:
                    break  # listening (maybe still "loading")
                except (urllib.error.URLError, OSError):
                    pass
                assert proc.poll() is None, (tmp_path / "sim0.log").read_text()
                assert time.monotonic() < deadline, "simulator did not start"
                time.sleep(0.1)
        yield [url for _, url in procs]
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def test_run_load_round_robin_over_two_replicas(tmp_path: Path) -> None:
    with sims(tmp_path, [], []) as urls:
        targets = [Target(f"r{i}", u) for i, u in enumerate(urls)]
        arrivals = poisson_arrivals(10.0, 2.0, fixed_lengths(64, 8), seed=0)
        out = tmp_path / "records.jsonl"
        lines: list[str] = []
        records, summary = asyncio.run(
            run_load(
                arrivals, lambda: targets, LoadConfig(progress_interval=0.5), out=out,
                progress=lines.append,
            )
        )  # fmt: skip
    assert len(records) == len(arrivals) > 5
    assert [r.error for r in records] == [None] * len(records)
    assert [r.index for r in records] == list(range(len(records)))
    assert [r.replica for r in records] == [f"r{i % 2}" for i in range(len(records))]
    assert all(r.output_tokens == r.max_tokens == 8 and r.prompt_tokens == 64 for r in records)
    assert all(r.ttft is not None and r.e2e is not None and 0 < r.ttft < r.e2e for r in records)
    assert all(r.itl_mean is not None and r.itl_mean > 0 for r in records)
    starts = [r.start for r in records]
    assert starts == sorted(starts)
    assert summary.ok == len(records) and summary.errors == 0
    assert summary.output_tokens == 8 * len(records)
    assert sorted(read_records(out), key=lambda r: r.index) == records
    assert lines and "replicas=2/2" in lines[-1]


def test_run_load_skips_unready_and_records_failures(tmp_path: Path) -> None:
    with sims(tmp_path, [], ["--load-delay", "600"], ["--fail-fraction", "1"]) as urls:
        ok, loading, failing = (
            Target(n, u) for n, u in zip(["ok", "loading", "failing"], urls, strict=True)
        )
        arrivals = [Arrival(0.05 * i, 16, 4) for i in range(6)]
        records, summary = asyncio.run(
            run_load(arrivals, lambda: [ok, loading, failing], LoadConfig(model="m"))
        )
    assert [r.replica for r in records] == ["ok", "failing"] * 3
    assert [r.status for r in records] == [200, 500] * 3
    assert [r.error is None for r in records] == [True, False] * 3
    assert summary.error_kinds == {"http 500": 3}
    assert summary.per_replica == {"failing": 3, "ok": 3}


def test_run_load_waits_for_a_ready_replica_then_gives_up(tmp_path: Path) -> None:
    with sims(tmp_path, ["--load-delay", "600"]) as urls, pytest.raises(NoReadyReplicaError):
        asyncio.run(
            run_load(
                [Arrival(0.0, 4, 4)],
                lambda: [Target("loading", urls[0])],
                LoadConfig(model="m", wait_ready_timeout=1.0),
            )
        )


def test_run_load_stops_when_told_and_drains_what_is_in_flight(tmp_path: Path) -> None:
    with sims(tmp_path, []) as urls:
        arrivals = [Arrival(0.0, 16, 32), Arrival(0.1, 16, 32), Arrival(3600.0, 16, 4)]
        told = time.monotonic() + 1.0
        records, summary = asyncio.run(
            run_load(
                arrivals,
                lambda: [Target("r", urls[0])],
                LoadConfig(model="m"),
                stop=lambda: time.monotonic() >= told,
            )
        )
    assert [(r.index, r.error, r.output_tokens) for r in records] == [(0, None, 32), (1, None, 32)]
    assert summary.ok == 2


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.csv"
    with sims(tmp_path, []) as urls:
        code = main(
            ["--target", urls[0], "--rate", "10", "--max-requests", "5", "--prompt-tokens", "8",
             "--output-tokens", "3", "--out", str(out), "--progress-interval", "60"]
        )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["requests"], summary["ok"], summary["output_tokens"]) == (5, 5, 15)
    assert [asdict(r)["output_tokens"] for r in read_records(out)] == [3] * 5


@pytest.mark.parametrize(
    "argv",
    [
        ["--target", "http://10.0.0.1:8000", "--rate", "1", "--duration", "1"],
        ["--rate", "1", "--duration", "1"],
        ["--target", "http://127.0.0.1:1", "--rate", "1"],
        ["--target", "http://127.0.0.1:1", "--schedule", "10:x"],
    ],
)
def test_command_line_rejects(argv: list[str]) -> None:
    assert main(argv) == 2


def test_errors_inside_a_stream_are_recorded(tmp_path: Path) -> None:
    """vLLM reports a rejected prompt inside a 200 stream; that is a failed request."""
    from aiohttp import web

    async def scenario() -> tuple[list[RequestRecord], object]:
        async def health(_: web.Request) -> web.Response:
            return web.Response()

        async def completions(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            error = {"error": {"message": "Token id 998 is out of vocabulary", "code": 400}}
            await resp.write(b"data: " + json.dumps(error).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            target = Target("fake", f"http://127.0.0.1:{port}")
            return await run_load([Arrival(0.0, 4, 4)], lambda: [target], LoadConfig(model="m"))
        finally:
            await runner.cleanup()

    records, _ = asyncio.run(scenario())
    assert [(r.status, r.error, r.output_tokens) for r in records] == [
        (200, "stream error: Token id 998 is out of vocabulary", 0)
    ]
