"""An in-process OpenAI-compatible chat endpoint for unit tests (httpx.MockTransport).

Responses follow the documented Chat Completions shape: ``choices[0].message.content``,
``finish_reason`` and ``logprobs.content[i] = {token, bytes, logprob, top_logprobs}``.
The words it answers with are tokenised by the given tokenizer, so the pieces are
real tokens of the student's vocabulary (unless ``foreign`` asks for others).
``serve()`` puts the same fake on a real HTTP port of 127.0.0.1 (for the fault
proxy, and for tests of several endpoints).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx  # the openai client (3.x) is built on httpx2

WORDS = ["Bonjour", " le", " monde", ",", " je", " suis", " un", " petit", " robot", "."]


class FakeChatAPI:
    """Counts requests, records bodies and headers, and can fail on purpose."""

    def __init__(self, tokenizer: Any, *, failures: list[int] | None = None, logprobs: bool = True,
                 foreign: bool = False, with_bytes: bool = True, fail_after: int | None = None,
                 finish_reason: str = "stop", models: tuple[str, ...] = ("fake-model",), delay: float = 0.0):
        self.tokenizer = tokenizer
        self.failures = list(failures or [])  # status codes returned before succeeding
        self.logprobs = logprobs
        self.foreign = foreign
        self.with_bytes = with_bytes
        self.fail_after = fail_after  # after this many successes, answer 500 for good
        self.finish_reason = finish_reason
        self.models = models  # what GET /models lists
        self.delay = delay  # seconds each answer takes
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.successes = 0
        self.lock = threading.Lock()

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        status, headers, payload = self.respond(request.method, request.url.path, request.content, request.headers)
        return httpx.Response(status, headers=headers, json=payload)

    def respond(self, method: str, path: str, content: bytes, headers: Any) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON) for one request; shared by the mock transport and ``serve``."""
        if method == "GET" and path.endswith("/models"):
            return 200, {}, {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                                                        for m in self.models]}
        with self.lock:
            body = json.loads(content)
            self.bodies.append(body)
            self.headers.append(headers)
            if self.failures:
                code = self.failures.pop(0)
                return code, {"retry-after-ms": "1"}, {"error": {"message": f"fake failure {code}",
                                                                 "type": "server_error"}}
            if self.fail_after is not None and self.successes >= self.fail_after:
                return 500, {"retry-after-ms": "1"}, {"error": {"message": "fake outage", "type": "server_error"}}
            self.successes += 1
        if self.delay:
            time.sleep(self.delay)
        return 200, {}, self.completion(body)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """This fake on a real HTTP port of 127.0.0.1; yields its base URL."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

            def _answer(self, content: bytes) -> None:
                status, headers, payload = api.respond(self.command, self.path, content, dict(self.headers))
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/v1"
        finally:
            server.shutdown()
            server.server_close()

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        n_words = 3 + body["seed"] % 5
        words = WORDS[: n_words]
        if self.foreign:  # tokens of some other vocabulary
            words = [f" ξ{w.strip()}ζ" for w in words]
        pieces: list[str] = []
        for w in words:
            ids = self.tokenizer(w, add_special_tokens=False)["input_ids"]
            pieces.extend([w] if self.foreign else [self.tokenizer.decode([i]) for i in ids])
        pieces = pieces[: body.get("max_tokens", 64)]
        k = body.get("top_logprobs", 0)
        content = []
        for i, p in enumerate(pieces):
            # Alternatives are single tokens of the vocabulary (each word's first token).
            firsts = [self.tokenizer.decode(self.tokenizer(w, add_special_tokens=False)["input_ids"][:1]) for w in WORDS]
            alternatives = [p] + [w for w in dict.fromkeys(firsts) if w != p]
            if self.foreign:
                alternatives = [p] + [f"ξ{j}ζ" for j in range(k)]
            top = [{"token": t, "bytes": list(t.encode()) if self.with_bytes else None,
                    "logprob": math.log(0.6) if j == 0 else math.log(0.3 / (2 ** j))}
                   for j, t in enumerate(alternatives[:k])]
            content.append({"token": p, "bytes": list(p.encode()) if self.with_bytes else None,
                            "logprob": top[0]["logprob"] if top else -0.5, "top_logprobs": top})
        choice: dict[str, Any] = {
            "index": 0, "finish_reason": self.finish_reason,
            "message": {"role": "assistant", "content": "".join(pieces)},
            "logprobs": {"content": content} if (self.logprobs and body.get("logprobs")) else None,
        }
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": len(pieces), "total_tokens": 1}}
