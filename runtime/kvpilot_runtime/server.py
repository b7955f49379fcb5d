"""kvpilot-sim: a vLLM-compatible OpenAI server driven in real time by the engine model.

It accepts vLLM's command line (unknown arguments are logged and ignored), serves
``/v1/completions``, ``/v1/chat/completions`` (streaming and not), ``/v1/models``,
``/health`` and ``/metrics`` with vLLM's metric families, and schedules requests
with :class:`kvpilot_runtime.engine.Engine`, sleeping each step's modelled time
(divided by ``--time-scale``). For rollout tests it can fail a fraction of
requests and run slower; both (and the front end's fixed latency) can be
changed at run time through ``POST /kvpilot/control`` (JSON
``{"fail_fraction": f, "slowdown": s, "frontend_latency_s": t}``).

Unlike vLLM, the default host is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import re
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from kvpilot_runtime.engine import (
    Engine,
    RequestSpec,
    TokenEvent,
)
from kvpilot_runtime.latency import GIB
from kvpilot_runtime.metrics import VllmMetrics
from kvpilot_runtime.serveargs import (
    SimSetup,
    parse_args,
    setup_from_args,
)

log = logging.getLogger("kvpilot.sim")

_WORDS_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no will can more other its into out time only could new them some these two may"
)
WORDS = tuple(_WORDS_TEXT.split())
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# How far behind its virtual timeline a busy engine loop may fall and still catch
# up (seconds of real time); beyond it, the lag is dropped.
MAX_CATCH_UP_S = 5.0


def tokenize(text: str) -> tuple[int, ...]:
    """A stable stand-in tokenizer: one token per word or punctuation mark."""
    return tuple(zlib.crc32(w.encode()) % 32000 + 2 for w in _TOKEN_RE.findall(text)) or (1,)


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


@dataclass
class _Tracked:
    arrival: float
    queue: asyncio.Queue[TokenEvent]
    queued: float | None = None
    scheduled: float | None = None
    last_token: float | None = None
    first_token: float | None = None


class SimServer:
    """The HTTP front end and the real-time engine loop of one simulated replica."""

    def __init__(self, setup: SimSetup, args: argparse.Namespace) -> None:
        self.setup = setup
        self.time_scale = max(1e-6, float(args.time_scale))
        self.fail_fraction = float(args.fail_fraction)
        self.load_delay = float(args.load_delay)
        self.engine = Engine(setup.config, setup.profile, setup.shape)
        self.engine.slowdown = float(args.slowdown)
        self.frontend_latency_s = float(setup.profile.extra.get("frontend_latency_s", 0.0))
        self._rng = random.Random(setup.config.seed)
        cfg = setup.config
        self.metrics = VllmMetrics(
            setup.served_names[0],
            cfg.max_model_len,
            cache_config={
                "block_size": str(cfg.block_size),
                "cache_dtype": args.kv_cache_dtype,
                "enable_prefix_caching": str(cfg.enable_prefix_caching),
                "gpu_memory_utilization": str(args.gpu_memory_utilization),
                "num_gpu_blocks": str(cfg.num_blocks),
                "num_gpu_blocks_override": str(args.num_gpu_blocks_override),
                "num_cpu_blocks": "0",
                "kv_cache_size_tokens": str(cfg.num_blocks * cfg.block_size),
                "kv_cache_memory_bytes": str(int(setup.kv_cache_bytes)),
            },
        )
        self._tracked: dict[str, _Tracked] = {}
        self._wakeup = asyncio.Event()
        self._started = time.monotonic()
        self._loop_task: asyncio.Task[None] | None = None
        self._reported = self.engine.stats()

    # -- clock --------------------------------------------------------------

    def now(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self._started) * self.time_scale

    def ready(self) -> bool:
        return time.monotonic() - self._started >= self.load_delay

    # -- engine loop ----------------------------------------------------------

    async def engine_loop(self) -> None:
        # Steps run back to back on a virtual timeline: the time the loop itself
        # takes (publishing tokens, serving HTTP) is absorbed into the next step
        # instead of adding to it, so step times stay those of the model. That
        # holds however late the loop wakes (a busy machine starves the process):
        # while work is left the next step starts where the last one ended, and
        # the lag is caught up, unless it exceeds MAX_CATCH_UP_S.
        prev_deadline = 0.0
        chained = False
        while True:
            if not self.engine.has_unfinished():
                chained = False
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            now_real = time.monotonic()
            busy = chained and now_real - prev_deadline < MAX_CATCH_UP_S
            start_real = prev_deadline if busy else now_real
            step_start = (start_real - self._started) * self.time_scale
            # vLLM's engine core takes new requests into its queue between steps.
            for pending in self._tracked.values():
                if pending.queued is None:
                    pending.queued = max(step_start, pending.arrival)
            result = self.engine.step(step_start)
            if not result.scheduled:
                chained = False
                self._publish_stats(0)
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=0.05)
                continue
            for rid, _ in result.scheduled:
                tr = self._tracked.get(rid)
                if tr is not None and tr.scheduled is None:
                    tr.scheduled = result.start
            deadline = start_real + result.duration / self.time_scale
            prev_deadline = deadline
            chained = True
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
            end = (deadline - self._started) * self.time_scale
            for ev in result.events:
                tr = self._tracked.get(ev.request_id)
                if tr is not None:
                    self._observe_token(tr, ev, end)
                    tr.queue.put_nowait(ev)
            self._publish_stats(result.batch.num_tokens)

    def _observe_token(self, tr: _Tracked, ev: TokenEvent, now: float) -> None:
        m = self.metrics
        if tr.first_token is None:
            tr.first_token = now
            m.observe("vllm:time_to_first_token_seconds", now - tr.arrival)
        elif tr.last_token is not None:
            m.observe("vllm:inter_token_latency_seconds", now - tr.last_token)
        tr.last_token = now
        if ev.finish_reason is not None:
            scheduled = tr.scheduled if tr.scheduled is not None else tr.arrival
            queued = tr.queued if tr.queued is not None else tr.arrival
            m.observe("vllm:e2e_request_latency_seconds", now - tr.arrival)
            m.observe("vllm:request_queue_time_seconds", max(0.0, scheduled - queued))
            m.observe("vllm:request_inference_time_seconds", now - scheduled)
            m.observe("vllm:request_prefill_time_seconds", tr.first_token - scheduled)
            m.observe("vllm:request_decode_time_seconds", now - tr.first_token)
            m.observe("vllm:request_generation_tokens", ev.num_output_tokens)
            if ev.num_output_tokens > 1:
                m.observe(
                    "vllm:request_time_per_output_token_seconds",
                    (now - tr.first_token) / (ev.num_output_tokens - 1),
                )
            m.inc("vllm:request_success", finished_reason=ev.finish_reason)

    def _publish_stats(self, iteration_tokens: int) -> None:
        s = self.engine.stats()
        prev, self._reported = self._reported, s
        m = self.metrics
        m.set_gauge("vllm:num_requests_running", s.num_running)
        m.set_gauge("vllm:num_requests_waiting", s.num_waiting)
        m.set_gauge("vllm:num_requests_waiting_by_reason", s.num_waiting, reason="capacity")
        m.set_gauge("vllm:kv_cache_usage_perc", s.kv_cache_usage)
        m.inc("vllm:num_preemptions", s.num_preemptions_total - prev.num_preemptions_total)
        queries = s.prefix_cache_queries_total - prev.prefix_cache_queries_total
        hits = s.prefix_cache_hits_total - prev.prefix_cache_hits_total
        m.inc("vllm:prefix_cache_queries", queries)
        m.inc("vllm:prefix_cache_hits", hits)
        m.inc("vllm:prompt_tokens", s.prompt_tokens_total - prev.prompt_tokens_total)
        m.inc("vllm:prompt_tokens_cached", hits)
        m.inc("vllm:prompt_tokens_by_source", hits, source="local_cache_hit")
        m.inc("vllm:prompt_tokens_cached_by_source", hits, source="device")
        m.inc(
            "vllm:prompt_tokens_by_source",
            (s.prompt_tokens_total - prev.prompt_tokens_total) - hits,
            source="local_compute",
        )
        m.inc("vllm:generation_tokens", s.generation_tokens_total - prev.generation_tokens_total)
        if iteration_tokens:
            m.observe("vllm:iteration_tokens_total", iteration_tokens)

    # -- requests -------------------------------------------------------------

    async def _generate(
        self, prompt: tuple[int, ...], max_tokens: int
    ) -> AsyncIterator[TokenEvent]:
        rid = uuid.uuid4().hex
        arrival = self.now()
        if self.frontend_latency_s > 0:
            # The front end's own latency (tokenization, IPC) before the engine sees it.
            await asyncio.sleep(self.frontend_latency_s / self.time_scale)
        spec = RequestSpec(rid, prompt, max_tokens, arrival)
        self.engine.add_request(spec)
        tracked = _Tracked(arrival=spec.arrival_time, queue=asyncio.Queue())
        self._tracked[rid] = tracked
        m = self.metrics
        m.observe("vllm:request_prompt_tokens", len(prompt))
        m.observe("vllm:request_max_num_generation_tokens", max_tokens)
        m.observe("vllm:request_params_max_tokens", max_tokens)
        m.observe("vllm:request_params_n", 1)
        # Like vLLM, the gauges change when the engine steps, not on arrival.
        self._wakeup.set()
        finished = False
        try:
            while not finished:
                ev = await tracked.queue.get()
                finished = ev.finish_reason is not None
                yield ev
        finally:
            self._tracked.pop(rid, None)
            if not finished:
                self.engine.abort_request(rid)
                m.inc("vllm:request_success", finished_reason="abort")
                self._publish_stats(0)

    def _check(self, body: dict[str, Any]) -> web.Response | None:
        if not self.ready():
            return _error(503, "The model is still loading.", "ServiceUnavailableError")
        model = body.get("model")
        if model is not None and model not in self.setup.served_names:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if body.get("n", 1) != 1:
            return _error(400, "kvpilot-sim supports n=1 only.")
        if self.fail_fraction > 0 and self._rng.random() < self.fail_fraction:
            self.metrics.inc("vllm:request_success", finished_reason="error")
            return _error(
                500, "Injected failure (kvpilot-sim --fail-fraction).", "InternalServerError"
            )
        return None

    def _max_tokens(self, body: dict[str, Any], prompt_len: int, default: int | None) -> int:
        value = body.get("max_completion_tokens", body.get("max_tokens"))
        if value is None:
            return default if default is not None else self.setup.config.max_model_len - prompt_len
        return int(value)

    @staticmethod
    def _text(ev: TokenEvent) -> str:
        return " " + WORDS[ev.token_id % len(WORDS)]

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        bad = self._check(body)
        if bad is not None:
            return bad
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str | list):
            raw = raw[0]
        if isinstance(raw, str):
            prompt = tokenize(raw)
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            prompt = tuple(int(t) for t in raw)
        else:
            return _error(400, "prompt must be a string or a list of token ids (one prompt).")
        max_tokens = self._max_tokens(body, len(prompt), 16)
        reason = self.engine.validate(RequestSpec("check", prompt, max_tokens))
        if reason is not None:
            return _error(400, reason)
        rid = f"cmpl-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        name = body.get("model") or self.setup.served_names[0]
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))

        def usage(n_out: int) -> dict[str, int]:
            return {
                "prompt_tokens": len(prompt),
                "total_tokens": len(prompt) + n_out,
                "completion_tokens": n_out,
            }

        if body.get("stream"):
            resp = await _sse_start(request)
            n_out = 0
            async for ev in self._generate(prompt, max_tokens):
                n_out = ev.num_output_tokens
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {
                            "index": 0,
                            "text": self._text(ev),
                            "logprobs": None,
                            "finish_reason": ev.finish_reason,
                            "stop_reason": None,
                        }
                    ],
                }
                await _sse_send(resp, chunk)
            if usage_wanted:
                final: dict[str, Any] = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [],
                    "usage": usage(n_out),
                }
                await _sse_send(resp, final)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        texts: list[str] = []
        last: TokenEvent | None = None
        async for ev in self._generate(prompt, max_tokens):
            texts.append(self._text(ev))
            last = ev
        assert last is not None
        return web.json_response(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "text": "".join(texts),
                        "logprobs": None,
                        "finish_reason": last.finish_reason,
                        "stop_reason": None,
                    }
                ],
                "usage": usage(last.num_output_tokens),
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        bad = self._check(body)
        if bad is not None:
            return bad
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list.")
        prompt: tuple[int, ...] = ()
        for msg in messages:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            prompt += tokenize(
                f"{msg.get('role', 'user') if isinstance(msg, dict) else 'user'}: {content or ''}"
            )
        prompt += tokenize("assistant:")
        max_tokens = self._max_tokens(body, len(prompt), None)
        reason = self.engine.validate(RequestSpec("check", prompt, max_tokens))
        if reason is not None:
            return _error(400, reason)
        rid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        name = body.get("model") or self.setup.served_names[0]
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))

        def base(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": choices,
            }

        if body.get("stream"):
            resp = await _sse_start(request)
            first = base(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
            await _sse_send(resp, first)
            n_out = 0
            async for ev in self._generate(prompt, max_tokens):
                n_out = ev.num_output_tokens
                delta = {
                    "index": 0,
                    "delta": {"content": self._text(ev)},
                    "finish_reason": ev.finish_reason,
                }
                await _sse_send(resp, base([delta]))
            if usage_wanted:
                final_chat = base([])
                final_chat["usage"] = {
                    "prompt_tokens": len(prompt),
                    "total_tokens": len(prompt) + n_out,
                    "completion_tokens": n_out,
                }
                await _sse_send(resp, final_chat)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        texts: list[str] = []
        last: TokenEvent | None = None
        async for ev in self._generate(prompt, max_tokens):
            texts.append(self._text(ev))
            last = ev
        assert last is not None
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(texts).strip()},
                        "logprobs": None,
                        "finish_reason": last.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "total_tokens": len(prompt) + last.num_output_tokens,
                    "completion_tokens": last.num_output_tokens,
                },
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "vllm",
                "root": self.setup.model,
                "parent": None,
                "max_model_len": self.setup.config.max_model_len,
            }
            for name in self.setup.served_names
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready() else 503)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def control(self, request: web.Request) -> web.Response:
        """Reads or changes fail_fraction and slowdown while serving."""
        if request.method == "POST":
            body = await _json_body(request)
            if isinstance(body, web.Response):
                return body
            try:
                if "fail_fraction" in body:
                    ff = float(body["fail_fraction"])
                    if not 0.0 <= ff <= 1.0:
                        raise ValueError("fail_fraction must be within [0, 1]")
                    self.fail_fraction = ff
                if "frontend_latency_s" in body:
                    fl = float(body["frontend_latency_s"])
                    if not (fl >= 0 and math.isfinite(fl)):
                        raise ValueError("frontend_latency_s must not be negative")
                    self.frontend_latency_s = fl
                if "slowdown" in body:
                    sd = float(body["slowdown"])
                    if not (sd > 0 and math.isfinite(sd)):
                        raise ValueError("slowdown must be positive")
                    self.engine.slowdown = sd
            except (TypeError, ValueError) as exc:
                return _error(400, str(exc))
            log.info(
                "Changed settings fail_fraction=%s slowdown=%s frontend_latency_s=%s",
                self.fail_fraction,
                self.engine.slowdown,
                self.frontend_latency_s,
            )
        return web.json_response(
            {
                "fail_fraction": self.fail_fraction,
                "slowdown": self.engine.slowdown,
                "frontend_latency_s": self.frontend_latency_s,
            }
        )

    @web.middleware
    async def count_requests(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Counts every answered request like vLLM's front end (after a stream ends)."""
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "none"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if path != "/kvpilot/control":
                self.metrics.count_http(path, request.method, status)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.count_requests])
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_get("/kvpilot/control", self.control)
        app.router.add_post("/kvpilot/control", self.control)

        async def start_loop(_: web.Application) -> None:
            self._started = time.monotonic()
            self._loop_task = asyncio.create_task(self.engine_loop())

        async def stop_loop(_: web.Application) -> None:
            if self._loop_task is not None:
                self._loop_task.cancel()

        app.on_startup.append(start_loop)
        app.on_cleanup.append(stop_loop)
        return app


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    return body


async def _sse_start(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    return resp


async def _sse_send(resp: web.StreamResponse, obj: dict[str, Any]) -> None:
    await resp.write(b"data: " + json.dumps(obj).encode() + b"\n\n")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parse_args(argv)
    try:
        setup = setup_from_args(args)
    except ValueError as exc:
        log.error("Invalid configuration: %s", exc)
        return 2
    host = args.host or "127.0.0.1"
    cfg = setup.config
    log.info(
        "Starting kvpilot-sim model=%s served=%s profile=%s shape=%s tp=%d blocks=%d block_size=%d "
        "kv_tokens=%d kv_gib=%.2f max_model_len=%d max_num_seqs=%d max_num_batched_tokens=%d "
        "prefix_caching=%s time_scale=%s host=%s port=%d",
        setup.model,
        ",".join(setup.served_names),
        setup.profile.name,
        setup.shape_source,
        cfg.tensor_parallel_size,
        cfg.num_blocks,
        cfg.block_size,
        cfg.num_blocks * cfg.block_size,
        setup.kv_cache_bytes / GIB,
        cfg.max_model_len,
        cfg.max_num_seqs,
        cfg.max_num_batched_tokens,
        cfg.enable_prefix_caching,
        args.time_scale,
        host,
        args.port,
    )
    server = SimServer(setup, args)
    web.run_app(
        server.app(), host=host, port=args.port, print=None, shutdown_timeout=30.0, access_log=None
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
