"""A fault-injecting HTTPS proxy in front of kube-apiserver, for the operator to talk to.

It serves TLS with the dev cluster's API server certificate (so a kubeconfig that points
at it verifies as usual), forwards every request to the real API server with the admin
client certificate, and on a seeded fraction of requests answers itself instead:

- 409 Conflict (writes only), 429 Too Many Requests with ``Retry-After``, or 500/503/504;
- for watches: a stream cut after a random few seconds (the connection is dropped
  mid-stream, as a load balancer or an API server restart does).

Counts of what it forwarded and injected are kept in `FaultProxy.counts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Faults:
    """What to inject, as fractions of requests (each drawn from one seeded generator)."""

    conflict: float = 0.0  # of writes
    throttle: float = 0.0
    server_error: float = 0.0
    cut_watch: float = 0.0  # of watch streams
    retry_after: int = 1
    cut_after: tuple[float, float] = (0.5, 5.0)


@dataclass
class FaultProxy:
    """Runs in a thread of the test process; ``url`` is what the operator's kubeconfig names."""

    upstream: str
    pki: Path
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    port: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    _rng: random.Random = field(init=False)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stopping: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _server_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.pki / "apiserver.crt"), str(self.pki / "apiserver.key"))
        return ctx

    def _client_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _draw(self, request: web.Request) -> str | None:
        """The fault for this request (None: forward it)."""
        f = self.faults
        watch = request.query.get("watch") in ("true", "1")
        roll = self._rng.random()
        if request.method in WRITES:
            if roll < f.conflict:
                return "409"
            roll -= f.conflict
        if roll < f.throttle:
            return "429"
        roll -= f.throttle
        if roll < f.server_error:
            return self._rng.choice(("500", "503", "504"))
        if watch and self._rng.random() < f.cut_watch:
            return "cut"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._draw(request)
        watch = request.query.get("watch") in ("true", "1")
        kind = "watch" if watch else request.method
        if fault is not None and fault != "cut":
            self.counts[f"injected_{fault}"] += 1
            code = int(fault)
            headers = {"Retry-After": str(self.faults.retry_after)} if code == 429 else {}
            reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError",
                      503: "ServiceUnavailable", 504: "Timeout"}[code]  # fmt: skip
            body = {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                "reason": reason, "message": f"injected by the fault proxy ({reason})",
            }  # fmt: skip
            return web.json_response(body, status=code, headers=headers)
        self.counts[f"forwarded_{kind}"] += 1
        assert self._session is not None
        data = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP | {"host"}}
        async with self._session.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            data=data or None,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers[k] = v
            await resp.prepare(request)
            deadline = None
            loop = asyncio.get_running_loop()
            if fault == "cut":
                deadline = loop.time() + self._rng.uniform(*self.faults.cut_after)
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    chunk = await asyncio.wait_for(up.content.readany(), timeout)
                except TimeoutError:
                    self.counts["injected_cut_watch"] += 1
                    assert request.transport is not None
                    request.transport.close()  # mid-stream, no clean end of the chunked body
                    return resp
                if not chunk:
                    break
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._client_ssl(), limit=0)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self._server_ssl())
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stopping.wait()
        await runner.cleanup()
        await self._session.close()

    _session: aiohttp.ClientSession | None = None

    def start(self) -> FaultProxy:
        def go() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._main())

        self._thread = threading.Thread(target=go, daemon=True, name="fault-proxy")
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(15)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def kubeconfig(self, original: Path, out: Path) -> Path:
        """A copy of ``original`` whose server is this proxy."""
        cfg: dict[str, Any] = yaml.safe_load(original.read_text())
        for c in cfg["clusters"]:
            c["cluster"]["server"] = self.url
        out.write_text(yaml.safe_dump(cfg, sort_keys=False))
        out.chmod(0o600)
        return out

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
