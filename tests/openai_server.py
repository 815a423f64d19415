"""A small, real OpenAI-compatible HTTP server for end-to-end tests.

Standard library only (``http.server.ThreadingHTTPServer``). It binds to
127.0.0.1 on a free port chosen by the OS, answers the endpoints a benchmark
client such as AIPerf talks to, and records the parsed JSON body of every
POST request so a test can assert exactly what the client sent::

    with OpenAIServer() as server:
        run_client(url=server.url)
        prompts = [r["messages"][0]["content"] for r in server.chat_requests()]

Endpoints:

- ``POST /v1/chat/completions``: non-streaming, or Server-Sent Events when the
  body has ``"stream": true`` (role chunk, one chunk per completion word, a
  finish chunk, then a usage-only chunk when ``stream_options.include_usage``
  is true, then ``data: [DONE]``).
- ``POST /v1/completions``: the same for the legacy text completions API.
- ``GET /v1/models``: lists the served model name.
- ``GET /health``: ``{"status": "ok"}``.
- ``GET /metrics``: an empty Prometheus exposition (clients that scrape
  server metrics get a valid, empty answer rather than a 404).

Every response carries a fixed short completion (``COMPLETION``) and a
``usage`` block whose ``prompt_tokens`` is a whitespace word count of the
prompt text: plausible, deterministic, tokenizer-free.

All request handling goes through :meth:`OpenAIServer.handle`, one method
that maps ``(method, path, body)`` to a response; subclass and override it
(or the ``_chat``/``_completion`` helpers) to simulate server behaviour such
as prefix caching.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
COMPLETION = "This is a short test reply."
DEFAULT_MODEL = "test-model"


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    body: Any  # parsed JSON (dict) for POST requests, None otherwise
    headers: dict[str, str]
    received_at: float = field(default_factory=time.time)


@dataclass
class Response:
    """What :meth:`OpenAIServer.handle` returns.

    Either ``body`` (sent as JSON) or ``events`` (each item sent as one SSE
    ``data:`` line, dicts as JSON, strings verbatim) is set.
    """

    status: int = HTTPStatus.OK
    body: Any = None
    events: list[Any] | None = None
    content_type: str = "application/json"


def count_words(text: str) -> int:
    """Whitespace token count: the server's stand-in for a tokenizer."""
    return len(text.split())


def _prompt_text(body: dict[str, Any]) -> str:
    """The text of a chat or completions request body, for counting tokens."""
    if "messages" in body:
        parts: list[str] = []
        for message in body.get("messages") or []:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # multimodal content parts
                parts.extend(
                    part.get("text", "")
                    for part in content
                    if isinstance(part, dict) and part.get("type") == "text"
                )
        return " ".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return " ".join(p for p in prompt if isinstance(p, str))
    return str(prompt)


class OpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1, run in a background thread.

    Use as a context manager (``with OpenAIServer() as server:``) or call
    :meth:`start` and :meth:`stop` yourself. ``requests`` holds every request
    received, in arrival order; read it through :meth:`recorded` or
    :meth:`chat_requests`, which take the lock.
    """

    def __init__(self, *, model: str = DEFAULT_MODEL, completion: str = COMPLETION) -> None:
        self.model = model
        self.completion = completion
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> OpenAIServer:
        handler = type("_BoundHandler", (_Handler,), {"server_app": self})
        self._httpd = ThreadingHTTPServer((HOST, 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"openai-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- recorded requests -------------------------------------------------

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def recorded(self, path: str | None = None) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, optionally only those to ``path``."""
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def chat_requests(self) -> list[dict[str, Any]]:
        """Parsed bodies of every ``POST /v1/chat/completions``, in arrival order."""
        return [r.body for r in self.recorded("/v1/chat/completions") if r.method == "POST"]

    def completion_requests(self) -> list[dict[str, Any]]:
        """Parsed bodies of every ``POST /v1/completions``, in arrival order."""
        return [r.body for r in self.recorded("/v1/completions") if r.method == "POST"]

    # -- request handling --------------------------------------------------

    def handle(self, method: str, path: str, body: Any) -> Response:
        """Map one request to its response. The single place to change behaviour.

        ``path`` has any query string removed; ``body`` is the parsed JSON of
        a POST (``None`` for GET). Called after the request was recorded.
        """
        if method == "GET":
            if path == "/health":
                return Response(body={"status": "ok"})
            if path == "/v1/models":
                return Response(body=self._models())
            if path == "/metrics":
                return Response(body="", content_type="text/plain; version=0.0.4")
            return _error(HTTPStatus.NOT_FOUND, f"no route for GET {path}")
        if method == "POST":
            if not isinstance(body, dict):
                return _error(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
            if path == "/v1/chat/completions":
                return self._generate(body, chat=True)
            if path == "/v1/completions":
                return self._generate(body, chat=False)
            return _error(HTTPStatus.NOT_FOUND, f"no route for POST {path}")
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, f"method {method} not allowed")

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "promptkit-tests"}
            ],
        }

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        prompt_tokens = count_words(_prompt_text(body))
        completion_tokens = count_words(self.completion)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _generate(self, body: dict[str, Any], *, chat: bool) -> Response:
        """Build a chat or text completion, streamed (SSE) or not."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        common = {"id": rid, "created": int(time.time()), "model": body.get("model", self.model)}
        usage = self._usage(body)

        if not body.get("stream"):
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.completion},
                    "finish_reason": "stop",
                }
            else:
                choice = {"index": 0, "text": self.completion, "finish_reason": "stop"}
            return Response(body={**common, "object": obj, "choices": [choice], "usage": usage})

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {**common, "object": chunk_obj, "choices": choices, **extra}

        events: list[Any] = []
        pieces = _split_keep_spaces(self.completion)
        if chat:
            events.append(
                chunk([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
            )
            for piece in pieces:
                events.append(
                    chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                )
            events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        else:
            for piece in pieces:
                events.append(chunk([{"index": 0, "text": piece, "finish_reason": None}]))
            events.append(chunk([{"index": 0, "text": "", "finish_reason": "stop"}]))
        stream_options = body.get("stream_options") or {}
        if stream_options.get("include_usage"):
            events.append(chunk([], usage=usage))
        events.append("[DONE]")
        return Response(events=events, content_type="text/event-stream")


def _split_keep_spaces(text: str) -> Iterator[str]:
    """Split ``text`` into words, each but the first keeping its leading space."""
    for i, word in enumerate(text.split(" ")):
        yield word if i == 0 else " " + word


def _error(status: int, message: str) -> Response:
    return Response(
        status=status,
        body={"error": {"message": message, "type": "invalid_request_error", "code": status}},
    )


class _Handler(BaseHTTPRequestHandler):
    """Glue between ``http.server`` and :meth:`OpenAIServer.handle`."""

    server_app: OpenAIServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers and aiohttp expect

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        body: Any = None
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._send(_error(HTTPStatus.BAD_REQUEST, "body is not valid JSON"))
                return
        app = self.server_app
        app.record(RecordedRequest(method, path, body, dict(self.headers.items())))
        self._send(app.handle(method, path, body))

    def _send(self, response: Response) -> None:
        if response.events is not None:
            self._send_events(response)
            return
        if isinstance(response.body, str):
            payload = response.body.encode("utf-8")
        else:
            payload = json.dumps(response.body).encode("utf-8")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_events(self, response: Response) -> None:
        # Chunked transfer encoding, one chunk per event, as vLLM/SGLang do;
        # the connection stays open for the next request (keep-alive).
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in response.events or []:
            data = event if isinstance(event, str) else json.dumps(event)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Stay quiet: tests assert on recorded requests, not on access logs."""
