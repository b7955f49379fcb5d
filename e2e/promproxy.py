"""A proxy in front of the dev cluster's real Prometheus that spoils its answers on demand.

The operator's ``--prometheus-url`` points here. In mode ``pass`` every request goes
through untouched; the other modes rewrite the real answer of range and instant queries:

- ``nan``: every sample value is NaN;  ``negative``: every value is -3;
- ``stale``: every sample is ten minutes older than it is;
- ``missing``: no series at all;  ``slow``: the real answer, after ``delay`` seconds;
- ``down``: 503 with no data.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("pass", "nan", "negative", "stale", "missing", "slow", "down")


class PromProxy:
    def __init__(self, upstream: str, *, delay: float = 8.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"
        self.delay = delay
        self.counts: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                proxy._serve(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy._serve(self, self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> PromProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, h: BaseHTTPRequestHandler, body: bytes | None) -> None:
        mode = self.mode
        self.counts[mode] += 1
        if mode == "down":
            self._send(h, 503, b'{"status":"error","error":"unavailable"}')
            return
        if mode == "slow":
            time.sleep(self.delay)
        req = urllib.request.Request(self.upstream + h.path, data=body, method=h.command)
        for k in ("Content-Type", "Accept"):
            if h.headers.get(k):
                req.add_header(k, h.headers[k])
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, data = err.code, err.read()
        if status == 200 and "/api/v1/query" in h.path and mode not in ("pass", "slow"):
            query = urllib.parse.unquote_plus(h.path + "&" + (body or b"").decode())
            data = json.dumps(spoil(json.loads(data), mode, "timestamp(" in query)).encode()
        with contextlib.suppress(OSError):  # the client gave up (a slow answer past its timeout)
            self._send(h, status, data)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def spoil(answer: dict[str, Any], mode: str, times: bool = False) -> dict[str, Any]:
    """The Prometheus answer as ``mode`` makes it (see the module docstring). ``times``:
    the values are scrape times (``timestamp(...)``), which only ``stale`` moves."""
    data = answer.get("data") or {}
    result = data.get("result")
    if not isinstance(result, list):
        return answer
    if mode == "missing":
        data["result"] = []
        return answer

    def point(p: list[Any]) -> list[Any]:
        ts, value = p
        if mode == "stale":
            return [ts - 600, str(float(value) - 600) if times else value]
        if times:
            return p
        if mode == "nan":
            return [ts, "NaN"]
        if mode == "negative":
            return [ts, "-3"]
        return p

    for series in result:
        if "values" in series:
            series["values"] = [point(p) for p in series["values"]]
        if "value" in series:
            series["value"] = point(series["value"])
    return answer
