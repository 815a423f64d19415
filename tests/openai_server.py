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
- ``GET /metrics``: Prometheus text. With the prefix cache on, two counters
  of every prompt token the cache served since the server started, named as
  vLLM names them (``vllm:prefix_cache_queries_total`` and
  ``vllm:prefix_cache_hits_total``) or, with ``metrics="sglang"``, as SGLang
  does (``sglang:prompt_tokens_total`` and ``sglang:cached_tokens_total``).
  Like the real servers' counters they only grow: a cache reset empties the
  cache, not the counters. Without the cache: an empty exposition (clients
  that scrape server metrics get a valid answer rather than a 404).
- ``POST /reset_prefix_cache`` (vLLM) and ``POST /flush_cache`` (SGLang):
  empty the prefix cache (:meth:`OpenAIServer.reset_cache`); any body or none.

Every response carries a fixed short completion (``COMPLETION``) and a
``usage`` block whose ``prompt_tokens`` is a whitespace word count of the
prompt text: plausible, deterministic, tokenizer-free.

Prefix caching (optional): constructed with a ``tokenizer`` (a
``tokenizers.Tokenizer``, or the path of a ``tokenizer.json`` file or of a
folder holding one), the server tokenizes every generation request and runs
it through a :class:`PrefixCache` that follows vLLM v1's automatic prefix
caching rules (full blocks of ``block_size`` tokens, chained block hashes, a
top-level ``cache_salt`` in the first block's hash, never the last token)::

    with OpenAIServer(tokenizer=folder, block_size=16) as server:
        run_client(url=server.url)
        server.cache_records()   # [CacheRecord(prompt_tokens, cached_tokens, ...)]
        server.hit_rate()        # sum cached / sum prompt tokens
        server.counters()        # (hits, queries) since start, as GET /metrics says

A chat request's prompt tokens are ``tokenizer.encode(text,
add_special_tokens=False).ids`` of each of its messages' text contents (every
role; for list content, each text part), in order, the ids one after another
with nothing in between: what a server sees with no chat template (a real
template separates messages, so no token spans two of them).
``usage`` then reports that length as ``prompt_tokens`` and the hits as
``prompt_tokens_details.cached_tokens``, as vLLM does (in the non-streaming
body and in the streamed usage-only chunk). This is an implementation of its
own, deliberately not ``promptkit.text.cachesim``: tests compare the two.

All request handling goes through :meth:`OpenAIServer.handle`, one method
that maps ``(method, path, body)`` to a response; subclass and override it
(or the ``_chat``/``_completion`` helpers) to simulate server behaviour such
as prefix caching.
"""

from __future__ import annotations

import hashlib
import json
import os
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
#: Prefix-cache reset endpoints: vLLM's (dev mode) and SGLang's.
RESET_PATHS = ("/reset_prefix_cache", "/flush_cache")
#: The Prometheus counters of the prefix cache, ``(hits, queries)``, as each engine
#: names them (without the ``_total`` every counter sample ends with).
METRIC_NAMES = {
    "vllm": ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
    "sglang": ("sglang:cached_tokens", "sglang:prompt_tokens"),
}


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


@dataclass(frozen=True)
class CacheRecord:
    """What the prefix cache saw of one generation request, in arrival order."""

    path: str
    prompt_tokens: int
    cached_tokens: int
    cache_salt: str | None = None


def count_words(text: str) -> int:
    """Whitespace token count: the server's stand-in for a tokenizer."""
    return len(text.split())


def _prompt_parts(body: dict[str, Any]) -> list[str]:
    """The text pieces of a chat or completions request body, in order."""
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
        return parts
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        return [p for p in prompt if isinstance(p, str)]
    return [str(prompt)]


def _prompt_text(body: dict[str, Any]) -> str:
    """The text of a chat or completions request body, for counting words."""
    return " ".join(_prompt_parts(body))


class PrefixCache:
    """vLLM v1 automatic prefix caching over token ids, unbounded capacity.

    A prompt of ``L`` tokens is cut into its full blocks of ``block_size``
    tokens (a partial tail block is never cached). Block ``i``'s hash covers
    its own tokens and the hash of block ``i - 1``, so it names the whole
    prefix up to its end; the first block's hash also covers the request's
    ``cache_salt`` (vLLM's per-request cache isolation). A request hits the
    longest run of its leading blocks already cached, looking only at the
    blocks within its first ``L - 1`` tokens: the last prompt token is always
    computed, so at most ``(L - 1) // block_size * block_size`` tokens hit.
    Afterwards every full block of the prompt is cached. Not thread-safe by
    itself: :class:`OpenAIServer` calls it under its lock.
    """

    def __init__(self, block_size: int = 16) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self._blocks: set[bytes] = set()

    def __len__(self) -> int:
        """Number of cached blocks."""
        return len(self._blocks)

    def block_hashes(self, tokens: list[int], cache_salt: str | None = None) -> list[bytes]:
        """The chained hash of every full block of ``tokens``."""
        hashes: list[bytes] = []
        parent = b"root"
        size = self.block_size
        for start in range(0, len(tokens) - size + 1, size):
            extra = [cache_salt] if start == 0 and cache_salt is not None else []
            payload = json.dumps([parent.hex(), tokens[start:start + size], extra])
            parent = hashlib.sha256(payload.encode()).digest()
            hashes.append(parent)
        return hashes

    def request(self, tokens: list[int], cache_salt: str | None = None) -> int:
        """Serve one prompt: return its cached (hit) tokens, then cache its blocks."""
        hashes = self.block_hashes(tokens, cache_salt)
        hit_blocks = 0
        for block_hash in hashes[: max(len(tokens) - 1, 0) // self.block_size]:
            if block_hash not in self._blocks:
                break
            hit_blocks += 1
        self._blocks.update(hashes)
        return hit_blocks * self.block_size

    def clear(self) -> None:
        self._blocks.clear()


def _load_tokenizer(tokenizer: Any) -> Any:
    """A ``tokenizers.Tokenizer`` from itself, a tokenizer.json path or its folder."""
    if tokenizer is None or not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    from tokenizers import Tokenizer

    path = os.fspath(tokenizer)
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    return Tokenizer.from_file(path)


class OpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1, run in a background thread.

    Use as a context manager (``with OpenAIServer() as server:``) or call
    :meth:`start` and :meth:`stop` yourself. ``requests`` holds every request
    received, in arrival order; read it through :meth:`recorded` or
    :meth:`chat_requests`, which take the lock.

    ``tokenizer`` (a ``tokenizers.Tokenizer``, or a tokenizer.json file or a
    folder holding one) turns on the prefix cache (:class:`PrefixCache`,
    ``block_size`` tokens a block); :meth:`cache_records` and
    :meth:`hit_rate` then tell what it measured, and ``GET /metrics`` serves
    its counters under the names of ``metrics`` (``"vllm"`` or ``"sglang"``).
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        completion: str = COMPLETION,
        tokenizer: Any = None,
        block_size: int = 16,
        metrics: str = "vllm",
    ) -> None:
        if metrics not in METRIC_NAMES:
            raise ValueError(f"metrics: one of {', '.join(METRIC_NAMES)}")
        self.model = model
        self.metrics = metrics
        self.completion = completion
        self.requests: list[RecordedRequest] = []
        self.tokenizer = _load_tokenizer(tokenizer)
        self.prefix_cache: PrefixCache | None = (
            PrefixCache(block_size) if self.tokenizer is not None else None
        )
        self._cache_records: list[CacheRecord] = []
        self._hits_total = 0  # every hit and prompt token since start: reset never clears
        self._queries_total = 0
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
        self._httpd = _HTTPServer((HOST, 0), handler)
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

    # -- prefix cache --------------------------------------------------------

    def prompt_token_ids(self, body: dict[str, Any]) -> list[int]:
        """The prompt tokens the cache sees: each text encoded on its own, the ids one
        after another.

        A completions ``prompt`` given as token ids is taken as it is.
        """
        if self.tokenizer is None:
            raise RuntimeError("the server has no tokenizer (prefix cache is off)")
        prompt = body.get("prompt")
        is_ids = isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
        if "messages" not in body and prompt and is_ids:
            return list(prompt)
        return [i for part in _prompt_parts(body)
                for i in self.tokenizer.encode(part, add_special_tokens=False).ids]

    def cache_records(self, path: str | None = None) -> list[CacheRecord]:
        """What the prefix cache saw, one record per generation request, in order."""
        with self._lock:
            return [r for r in self._cache_records if path is None or r.path == path]

    def hit_rate(self, skip: int = 0) -> float:
        """Measured hit rate: sum of cached / sum of prompt tokens.

        ``skip`` leaves out the first requests (e.g. a client's warmup). 0.0
        when no prompt token was seen.
        """
        records = self.cache_records()[skip:]
        prompt = sum(r.prompt_tokens for r in records)
        return sum(r.cached_tokens for r in records) / prompt if prompt else 0.0

    def counters(self) -> tuple[int, int]:
        """``(hit tokens, prompt tokens)`` the cache served since the server started."""
        with self._lock:
            return self._hits_total, self._queries_total

    def prometheus_text(self) -> str:
        """``GET /metrics``: the prefix-cache counters in Prometheus text format, with a
        ``model_name`` label as vLLM gives them (empty without the cache)."""
        if self.prefix_cache is None:
            return ""
        hits, queries = self.counters()
        lines = []
        for name, value, what in zip(METRIC_NAMES[self.metrics], (hits, queries),
                                     ("Prompt tokens served from the prefix cache.",
                                      "Prompt tokens looked up in the prefix cache."),
                                     strict=True):
            lines += [f"# HELP {name}_total {what}", f"# TYPE {name}_total counter",
                      f'{name}_total{{model_name="{self.model}"}} {float(value)}']
        return "\n".join(lines) + "\n"

    def reset_cache(self) -> None:
        """Empty the prefix cache and forget its records (recorded requests stay)."""
        with self._lock:
            if self.prefix_cache is not None:
                self.prefix_cache.clear()
            self._cache_records.clear()

    def _serve_prompt(self, path: str, body: dict[str, Any]) -> CacheRecord:
        """Run one request through the prefix cache and record it."""
        assert self.prefix_cache is not None
        tokens = self.prompt_token_ids(body)
        salt = body.get("cache_salt")
        salt = None if salt is None else str(salt)
        with self._lock:  # lookup and insertion as one step, in arrival order
            cached = self.prefix_cache.request(tokens, salt)
            record = CacheRecord(path, len(tokens), cached, salt)
            self._cache_records.append(record)
            self._hits_total += cached
            self._queries_total += len(tokens)
        return record

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
                return Response(body=self.prometheus_text(),
                                content_type="text/plain; version=0.0.4; charset=utf-8")
            return _error(HTTPStatus.NOT_FOUND, f"no route for GET {path}")
        if method == "POST":
            if path in RESET_PATHS:  # recorded first, like every request: tests see when
                self.reset_cache()
                return Response(body={"status": "ok"})
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

    def _usage(self, body: dict[str, Any], *, chat: bool = True) -> dict[str, Any]:
        """The ``usage`` block; with the prefix cache on, serves the prompt through it."""
        completion_tokens = count_words(self.completion)
        if self.prefix_cache is None:
            prompt_tokens = count_words(_prompt_text(body))
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        path = "/v1/chat/completions" if chat else "/v1/completions"
        record = self._serve_prompt(path, body)
        return {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": record.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": record.cached_tokens},
        }

    def _generate(self, body: dict[str, Any], *, chat: bool) -> Response:
        """Build a chat or text completion, streamed (SSE) or not."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion" if chat else "text_completion"
        common = {"id": rid, "created": int(time.time()), "model": body.get("model", self.model)}
        usage = self._usage(body, chat=chat)

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


class _HTTPServer(ThreadingHTTPServer):
    """Quiet about clients that hang up (AIPerf ends its /metrics scrapes so when it
    stops); any other error in a handler is still printed."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


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
        try:
            response = app.handle(method, path, body)
        except Exception as exc:  # a bug in the test server: say so, keep the connection
            response = _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"test server error: {exc!r}")
        self._send(response)

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
