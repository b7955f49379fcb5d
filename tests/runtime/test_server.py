"""kvpilot-sim's HTTP surface, run in-process (fast time scale) and as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kvpilot_runtime.metrics import signatures
from kvpilot_runtime.probe import parse_gauges
from kvpilot_runtime.server import SimServer, parse_args, setup_from_args
from kvpilot_runtime.vllm_cpu import free_port

Scenario = Callable[[TestClient[Any, Any], SimServer], Awaitable[None]]


def run(argv: list[str], scenario: Scenario) -> None:
    async def main() -> None:
        args = parse_args(argv)
        sim = SimServer(setup_from_args(args), args)
        async with TestClient(TestServer(sim.app())) as client:
            await scenario(client, sim)

    asyncio.run(main())


FAST = [
    "--model",
    "meta-llama/Llama-3.1-8B-Instruct",
    "--served-model-name",
    "llama",
    "--time-scale",
    "50",
]


def completion(**kw: Any) -> dict[str, Any]:
    return {"model": "llama", "prompt": "hello there, general", "max_tokens": 5, **kw}


async def sse(resp: Any) -> list[Any]:
    events: list[Any] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_completion() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        resp = await client.post("/v1/completions", json=completion())
        assert resp.status == 200
        body = await resp.json()
        assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
        assert body["choices"][0]["finish_reason"] == "length"
        assert len(body["choices"][0]["text"].split()) == 5

    run(FAST, scenario)


def test_token_id_prompt_counts_exactly() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        resp = await client.post("/v1/completions", json=completion(prompt=list(range(2, 102))))
        assert (await resp.json())["usage"]["prompt_tokens"] == 100

    run(FAST, scenario)


def test_streaming_completion() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        resp = await client.post(
            "/v1/completions",
            json=completion(stream=True, stream_options={"include_usage": True}),
        )
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = await sse(resp)
        assert events[-1] == "[DONE]"
        tokens = [e for e in events[:-1] if e["choices"]]
        assert len(tokens) == 5
        assert [t["choices"][0]["finish_reason"] for t in tokens] == [None] * 4 + ["length"]
        assert events[-2]["usage"]["completion_tokens"] == 5

    run(FAST, scenario)


def test_chat_completion_streaming_and_not() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        msgs = [{"role": "user", "content": "Say hi"}]
        resp = await client.post(
            "/v1/chat/completions", json={"model": "llama", "messages": msgs, "max_tokens": 3}
        )
        body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] == 3
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "llama", "messages": msgs, "max_tokens": 3, "stream": True},
        )
        events = await sse(resp)
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert [e["choices"][0]["finish_reason"] for e in events[1:-1]] == [None, None, "length"]
        assert events[-1] == "[DONE]"

    run(FAST, scenario)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (completion(model="other"), 404, "does not exist"),
        (completion(max_tokens=9000), 400, "maximum context length"),
        (completion(prompt={"x": 1}), 400, "prompt"),
        ({"model": "llama", "messages": []}, 400, "messages"),
    ],
)
def test_errors(body: dict[str, Any], status: int, message: str) -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        resp = await client.post(path, json=body)
        assert resp.status == status
        assert message in (await resp.json())["error"]["message"]

    run([*FAST, "--max-model-len", "8192"], scenario)


def test_models_endpoint() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        body = await (await client.get("/v1/models")).json()
        assert [(m["id"], m["owned_by"]) for m in body["data"]] == [("llama", "vllm")]

    run(FAST, scenario)


def test_health_follows_load_delay() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        assert (await client.get("/health")).status == 503
        assert (await client.post("/v1/completions", json=completion())).status == 503
        deadline = time.monotonic() + 10
        while (await client.get("/health")).status != 200:
            assert time.monotonic() < deadline, "never became healthy"
            await asyncio.sleep(0.05)

    run([*FAST, "--load-delay", "0.3"], scenario)


def test_fail_fraction_and_control_endpoint() -> None:
    async def scenario(client: TestClient[Any, Any], sim: SimServer) -> None:
        resp = await client.post("/v1/completions", json=completion())
        assert resp.status == 500
        ctl = await client.post("/kvpilot/control", json={"fail_fraction": 0.0, "slowdown": 3})
        assert await ctl.json() == {
            "fail_fraction": 0.0,
            "slowdown": 3.0,
            "frontend_latency_s": 0.0,
        }
        assert (await client.post("/v1/completions", json=completion())).status == 200
        assert sim.engine.slowdown == 3.0
        bad = await client.post("/kvpilot/control", json={"fail_fraction": 2})
        assert bad.status == 400
        text = await (await client.get("/metrics")).text()
        assert 'finished_reason="error",model_name="llama"} 1.0' in text
        # Counted like vLLM's front end: grouped status, route as handler, and
        # neither /metrics, /health nor the control endpoint.
        http = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("http_requests_total")
        }
        assert http == {
            'http_requests_total{handler="/v1/completions",method="POST",status="5xx"}': 1.0,
            'http_requests_total{handler="/v1/completions",method="POST",status="2xx"}': 1.0,
        }

    run([*FAST, "--fail-fraction", "1"], scenario)


def test_env_sets_sim_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPILOT_SIM_SLOWDOWN", "2.5")
    monkeypatch.setenv("KVPILOT_SIM_PROFILE", "l4-24gb")
    args = parse_args(["--model", "m"])
    assert (args.slowdown, args.profile) == (2.5, "l4-24gb")


def test_metrics_follow_the_engine() -> None:
    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        names = ("vllm:num_requests_waiting", "vllm:num_requests_running")
        seen_waiting = 0.0
        reqs = [
            asyncio.create_task(client.post("/v1/completions", json=completion(max_tokens=40)))
            for _ in range(4)
        ]
        while not all(r.done() for r in reqs):
            g = parse_gauges(await (await client.get("/metrics")).text(), names)
            seen_waiting = max(seen_waiting, g[names[0]])
            assert g[names[1]] <= 1
            await asyncio.sleep(0.005)
        assert seen_waiting >= 1
        text = await (await client.get("/metrics")).text()
        assert 'vllm:time_to_first_token_seconds_count{engine="0",model_name="llama"} 4.0' in text
        assert 'vllm:generation_tokens_total{engine="0",model_name="llama"} 160.0' in text
        assert set(signatures(text)) >= {"vllm:kv_cache_usage_perc", "vllm:num_preemptions"}

    run([*FAST, "--max-num-seqs", "1", "--time-scale", "5"], scenario)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        # H100: vLLM's large-GPU defaults (8192 batched tokens, 1024 sequences).
        (["--model", "meta-llama/Llama-3.1-8B-Instruct"], {}, (28276, 16, 8192, 1024, 8192)),
        # L4 with AWQ weights: (0.9 x 22.49 - 1.5) GiB - 4.0 GB = 16.1 GB of 2 MiB blocks.
        (
            [
                "--model",
                "hf://meta-llama/Llama-3.1-8B-Instruct",
                "--profile",
                "l4-24gb",
                "--quantization",
                "awq",
                "--max-model-len",
                "4k",
            ],
            {},
            (7680, 16, 2048, 256, 4000),
        ),
        # CPU: 2 GiB of 128-token blocks at 32 KiB per token, CPU defaults.
        (
            [
                "--model",
                "x",
                "--model-shape",
                "meta-llama/llama-3.2-1b-instruct",
                "--profile",
                "cpu",
                "--max-model-len",
                "2K",
            ],
            {"VLLM_CPU_KVCACHE_SPACE": "2"},
            (512, 128, 2048, 128, 2048),
        ),
        (
            [
                "--model",
                "m",
                "--num-gpu-blocks-override",
                "100",
                "--block-size",
                "32",
                "--max-num-seqs",
                "8",
                "--max-num-batched-tokens",
                "512",
                "--max-model-len",
                "1024",
                "--unknown-vllm-flag",
                "1",
            ],
            {},
            (100, 32, 512, 8, 1024),
        ),
    ],
)
def test_setup_from_vllm_args(
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    expected: tuple[int, int, int, int, int],
) -> None:
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = setup_from_args(parse_args(argv)).config
    assert (
        cfg.num_blocks,
        cfg.block_size,
        cfg.max_num_batched_tokens,
        cfg.max_num_seqs,
        cfg.max_model_len,
    ) == expected


def test_subprocess_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvpilot_runtime.server",
            "--model",
            "m",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "kvpilot-sim did not come up"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _virtual_e2e(starve_s: float) -> float:
    """The server's own e2e latency of one request, with its loop blocked ``starve_s`` mid-way."""
    out: list[float] = []

    async def scenario(client: TestClient[Any, Any], _: SimServer) -> None:
        req = asyncio.create_task(client.post("/v1/completions", json=completion(max_tokens=60)))
        await asyncio.sleep(0.05)
        time.sleep(starve_s)  # the process gets no CPU for a while (a busy machine)
        await (await req).json()
        text = await (await client.get("/metrics")).text()
        sums = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vllm:e2e_request_latency_seconds_")
        }
        out.append(sums["vllm:e2e_request_latency_seconds_sum"])

    run([*FAST[:4], "--time-scale", "1"], scenario)
    return out[0]


def test_a_starved_loop_catches_up_on_the_virtual_timeline() -> None:
    """Late wake-ups do not stretch the modelled latency: the next steps start where the
    last one ended, so a replica on a busy machine still serves at the model's pace."""
    assert _virtual_e2e(1.0) == pytest.approx(_virtual_e2e(0.0), abs=0.25)
