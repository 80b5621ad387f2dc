"""A test-only HTTP proxy on 127.0.0.1 that injects faults in front of an OpenAI-compatible server.

Each request draws one outcome from a seeded generator: HTTP 429 (with a short
``retry-after-ms``), HTTP 500, a connection reset (RST, no response), a slow but
good answer, a stall past the client's timeout (then a reset), or a plain
forward. It counts attempts and delivered answers per request body, so a test
can check that every request was answered exactly once and that retries stayed
bounded, and the most requests it had in flight at once. ``kill_after=N`` makes
it a dead endpoint: from the N+1-th POST on, every connection (GETs too) is reset
before anything reaches the server.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

FAULTS = ("429", "500", "reset", "slow", "stall")


class FaultProxy:
    """``with FaultProxy(upstream, rates) as proxy: proxy.base_url`` ..."""

    def __init__(self, upstream: str, rates: dict[str, float] | None = None, seed: int = 0, slow_s: float = 0.5,
                 stall_s: float = 6.0, kill_after: int | None = None):
        rates = dict(rates or {})
        unknown = set(rates) - set(FAULTS)
        if unknown or sum(rates.values()) >= 1:
            raise ValueError(f"bad fault rates {rates}")
        self.upstream = upstream.rstrip("/")
        self.rates = rates
        self.slow_s, self.stall_s = slow_s, stall_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()  # per request body
        self.delivered: Counter[str] = Counter()  # 200 answers sent back, per request body
        self.faults: Counter[str] = Counter()
        self.kill_after = kill_after  # POSTs let through before it dies
        self.posts = 0
        self.dead = False
        self.in_flight = 0
        self.max_in_flight = 0  # the most POSTs handled at once
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> str:
        with self.lock:
            x = self.rng.random()
        for fault in FAULTS:
            x -= self.rates.get(fault, 0.0)
            if x < 0:
                return fault
        return "ok"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a reset hits only its own

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if proxy.dead:
                    self._reset()
                    return
                self._forward(b"", "GET")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = hashlib.sha256(body).hexdigest()
                with proxy.lock:
                    proxy.posts += 1
                    if proxy.kill_after is not None and proxy.posts > proxy.kill_after:
                        proxy.dead = True
                    dead = proxy.dead
                    if not dead:
                        proxy.in_flight += 1
                        proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                if dead:
                    self._reset()
                    return
                try:
                    self._post(body, key)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def _post(self, body: bytes, key: str) -> None:
                fault = proxy._draw()
                with proxy.lock:
                    proxy.attempts[key] += 1
                    if fault != "ok":
                        proxy.faults[fault] += 1
                if fault == "429":
                    self._reply(429, b'{"error": {"message": "rate limited"}}', {"retry-after-ms": "100"})
                elif fault == "500":
                    self._reply(500, b'{"error": {"message": "injected failure"}}')
                elif fault in ("reset", "stall"):
                    if fault == "stall":
                        time.sleep(proxy.stall_s)
                    self._reset()
                else:
                    if fault == "slow":
                        time.sleep(proxy.slow_s)
                    if self._forward(body, "POST") == 200:
                        with proxy.lock:
                            proxy.delivered[key] += 1

            def _forward(self, body: bytes, method: str) -> int:
                request = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=body or None,
                                                 method=method, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                self._reply(status, data)
                return status

            def _reply(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST instead of FIN, as a dropped connection does.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass  # the connection was reset on purpose

        return Handler

    def report(self) -> dict[str, Any]:
        return {"requests": len(self.attempts), "attempts": sum(self.attempts.values()),
                "max_attempts": max(self.attempts.values(), default=0), "faults": dict(self.faults),
                "delivered": sum(self.delivered.values()), "max_in_flight": self.max_in_flight,
                "refused_dead": self.posts - sum(self.attempts.values())}

