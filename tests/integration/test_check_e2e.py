"""End to end: ``promptkit check`` predicts the hit rate a real run measures.

The real ``aiperf profile`` CLI (concurrency 1, no warmup, no readiness
probe: see ``tests/integration/test_aiperf_profile.py``) sends a promptkit file to the
local OpenAI-compatible server (``tests/openai_server.py``) with its prefix
cache on: an implementation of vLLM v1's block rules of its own, not
``promptkit.text.cachesim``. The server measures the hit rate (sum of cached over sum
of prompt tokens of the requests it received); ``promptkit check --json``
predicts it for the same file, tokenizer and run shape. The two must agree
token for token (prompt and hit tokens), for a file with shared prefixes, the same file
nonce'd, a nonce'd file sent three times over, a padded shared prompt, and a
nonce'd chat file (system and user messages) after warmup requests. AIPerf's
own report (it reads ``usage.prompt_tokens_details.cached_tokens``) must
count the same tokens as the server.

The first tests pin the server's cache itself over HTTP with prompts of known
token lengths, so a disagreement above points at ``check``, not the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_aiperf_profile
from openai_server import OpenAIServer
from test_aiperf_profile import (
    EXAMPLE,
    aiperf_command,
    aiperf_env,
    diagnostics,
    run_aiperf,
    run_in_group,
)
from tokenizer_dir import build_tokenizer_dir

# The AIPerf temp-folder fixture, shared (bound by assignment: an imported
# fixture name that tests take as an argument reads as a redefinition to ruff).
aiperf_tmpdir = test_aiperf_profile.aiperf_tmpdir

BLOCK = 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("check-e2e") / "tokenizer")


@pytest.fixture
def cache_server(tokenizer_dir: Path) -> Iterator[OpenAIServer]:
    with OpenAIServer(model="test-model", tokenizer=tokenizer_dir, block_size=BLOCK) as server:
        yield server


# -- the server's prefix cache, driven directly over HTTP ---------------------


def post(server: OpenAIServer, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    request = urllib.request.Request(
        server.url + path,
        data=json.dumps({"model": "test-model", **body}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read().decode()
    if body.get("stream"):
        events = [line[len("data: "):] for line in raw.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return [json.loads(event) for event in events[:-1]]
    return json.loads(raw)


def chat(server: OpenAIServer, content: str, **extra: Any) -> dict[str, Any]:
    """Send one user message; the response's ``usage``."""
    body = post(server, {"messages": [{"role": "user", "content": content}], **extra})
    return body["usage"]  # type: ignore[no-any-return]


def words(word: str, n: int) -> str:
    """``n`` tokens under the test tokenizer: `` the`` and friends are single tokens."""
    return f" {word}" * n


@pytest.mark.parametrize(("length", "hits"), [(15, 0), (16, 0), (17, 16), (31, 16), (32, 16),
                                              (33, 32), (48, 32), (49, 48)])
def test_server_cache_hits_full_blocks_never_the_last_token(
    cache_server: OpenAIServer, length: int, hits: int
) -> None:
    first = chat(cache_server, words("the", length))
    assert first["prompt_tokens"] == length
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    second = chat(cache_server, words("the", length))
    assert second["prompt_tokens"] == length
    assert second["prompt_tokens_details"] == {"cached_tokens": hits}
    assert [(r.prompt_tokens, r.cached_tokens) for r in cache_server.cache_records()] == [
        (length, 0), (length, hits)]
    assert cache_server.hit_rate() == pytest.approx(hits / (2 * length))
    assert cache_server.hit_rate(skip=1) == pytest.approx(hits / length)


def test_server_cache_salt_separates_namespaces(cache_server: OpenAIServer) -> None:
    text = words("and", 40)
    assert chat(cache_server, text, cache_salt="a")["prompt_tokens_details"]["cached_tokens"] == 0
    assert chat(cache_server, text, cache_salt="b")["prompt_tokens_details"]["cached_tokens"] == 0
    assert chat(cache_server, text)["prompt_tokens_details"]["cached_tokens"] == 0
    assert chat(cache_server, text, cache_salt="a")["prompt_tokens_details"]["cached_tokens"] == 32
    assert chat(cache_server, text)["prompt_tokens_details"]["cached_tokens"] == 32
    assert [r.cache_salt for r in cache_server.cache_records()] == ["a", "b", None, "a", None]


def test_server_cache_hits_only_the_leading_run_of_blocks(cache_server: OpenAIServer) -> None:
    chat(cache_server, words("the", 16) + words("and", 16) + words("of", 16) + words("to", 5))
    # Block 2 differs: block 3, though equal, follows a different prefix and misses.
    changed = words("the", 16) + words("a", 16) + words("of", 16) + words("to", 5)
    assert chat(cache_server, changed)["prompt_tokens_details"]["cached_tokens"] == 16
    # A longer prompt over the first one hits all its blocks.
    longer = words("the", 16) + words("and", 16) + words("of", 16) + words("to", 20)
    assert chat(cache_server, longer)["prompt_tokens_details"]["cached_tokens"] == 48


def test_server_cache_tokenizes_the_messages_one_after_another(
    cache_server: OpenAIServer,
) -> None:
    """System and user texts (and list content parts) one after another, nothing between."""
    system, user = words("the", 20), words("and", 20)
    usage = post(cache_server, {"messages": [{"role": "system", "content": system},
                                             {"role": "user", "content": user}]})["usage"]
    assert usage["prompt_tokens"] == 40
    assert chat(cache_server, system + user)["prompt_tokens_details"]["cached_tokens"] == 32
    parts = [{"type": "text", "text": system}, {"type": "text", "text": user}]
    usage = post(cache_server, {"messages": [{"role": "user", "content": parts}]})["usage"]
    assert usage == {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46,
                     "prompt_tokens_details": {"cached_tokens": 32}}


def test_server_cache_reports_usage_in_the_streamed_usage_chunk(
    cache_server: OpenAIServer,
) -> None:
    text = words("of", 33)
    chat(cache_server, text)
    events = post(cache_server, {"messages": [{"role": "user", "content": text}], "stream": True,
                                 "stream_options": {"include_usage": True}})
    assert [e for e in events if "usage" in e] == [events[-1]]
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["prompt_tokens"] == 33
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    # Without include_usage the stream carries no usage, but the cache still saw it.
    events = post(cache_server, {"messages": [{"role": "user", "content": text}], "stream": True})
    assert not any("usage" in e for e in events)
    assert [r.cached_tokens for r in cache_server.cache_records()] == [0, 32, 32]


def test_server_takes_a_tokenizer_file_path_or_object(tokenizer_dir: Path) -> None:
    from tokenizers import Tokenizer

    file = tokenizer_dir / "tokenizer.json"
    for tokenizer in (str(file), str(tokenizer_dir), Tokenizer.from_file(str(file))):
        with OpenAIServer(tokenizer=tokenizer) as server:
            assert chat(server, words("to", 20))["prompt_tokens"] == 20


def test_server_without_tokenizer_keeps_word_count_usage() -> None:
    with OpenAIServer() as server:
        usage = chat(server, "three short words")
        assert usage == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
        assert server.prefix_cache is None
        assert server.cache_records() == []


# -- promptkit check against the measured hit rate ----------------------------


def promptkit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)],
                          check=True, capture_output=True, text=True)


def check(path: Path, tokenizer: Path, requests: int, warmup: int = 0) -> dict[str, Any]:
    """``promptkit check --json`` for a vLLM server with no chat template."""
    result = promptkit("check", path, "--tokenizer", tokenizer, "--chat-template", "none",
                       "--engine", "vllm", "--block-size", str(BLOCK),
                       "--requests", str(requests), "--warmup", str(warmup), "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def count_records(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def prefix_test_file(tmp_path: Path, tokenizer: Path) -> Path:
    """Four groups of three requests sharing a 200-token system text, interleaved."""
    path = tmp_path / "prefix-test.jsonl"
    promptkit("synth", "prefix-test", path, "--groups", "4", "--group-size", "3",
              "--system-tokens", "200", "--tokenizer", tokenizer, "--to", "single_turn",
              "--seed", "1")
    return path


def nonced(path: Path) -> Path:
    out = path.with_name(f"nonce-{path.name}")
    promptkit("nonce", path, out, "--seed", "7")
    return out


def run_aiperf_with_warmup(tmp_path: Path, server: OpenAIServer, aiperf_tmpdir: Path,
                           input_file: Path, count: int, warmup: int, tokenizer: Path) -> None:
    """``run_aiperf`` plus ``--warmup-request-count``: the server sees the
    warmup requests first, then ``count`` profiled ones."""
    artifacts = tmp_path / "artifacts"
    command = [*aiperf_command(url=server.url, input_file=input_file, count=count,
                               tokenizer=tokenizer, artifacts=artifacts, streaming=False),
               "--warmup-request-count", str(warmup)]
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    returncode = run_in_group(command, logs, aiperf_env(aiperf_tmpdir), tmp_path)

    def explain() -> str:
        return diagnostics(command, returncode, logs, artifacts, aiperf_tmpdir, server)

    assert returncode == 0, explain()
    assert len(server.chat_requests()) == warmup + count, explain()
    assert server.completion_requests() == [], explain()
    print(f"aiperf profile (warmup {warmup}) took {time.monotonic() - started:.1f}s")


def measure_and_compare(tmp_path: Path, server: OpenAIServer, aiperf_tmpdir: Path,
                        path: Path, tokenizer: Path, count: int, warmup: int = 0,
                        streaming: bool = False) -> float:
    """Send ``warmup`` then ``count`` requests of ``path`` with AIPerf; assert that
    check predicts the hit rate the server measured over the ``count`` profiled
    ones, and that AIPerf reported the same tokens. Returns the measured rate."""
    if warmup:
        assert not streaming
        run_aiperf_with_warmup(tmp_path, server, aiperf_tmpdir, path, count, warmup, tokenizer)
    else:
        run_aiperf(tmp_path, server, aiperf_tmpdir, path, count, tokenizer, streaming)
    records = server.cache_records()
    assert len(records) == warmup + count  # the warmup and profiled requests, nothing else
    profiled = records[warmup:]
    cached = sum(r.cached_tokens for r in profiled)
    prompt = sum(r.prompt_tokens for r in profiled)
    measured = server.hit_rate(skip=warmup)
    assert measured == cached / prompt
    report = check(path, tokenizer, requests=count, warmup=warmup)
    detail = (f"measured {measured:.4f} = {cached}/{prompt} tokens over {count} requests "
              f"after {warmup} warmup; check: {json.dumps(report)}")
    print(detail)
    assert report["requests"] == count, detail
    assert (report["prompt_tokens"], report["hit_tokens"]) == (prompt, cached), detail
    assert report["hit_rate_range"] == [report["hit_rate"]] * 2, detail
    # AIPerf read the server's usage (profiled requests only): the same tokens.
    summary = json.loads((tmp_path / "artifacts" / "profile_export_aiperf.json")
                         .read_text(encoding="utf-8"))
    assert summary["request_count"]["avg"] == count, detail
    assert summary["total_usage_prompt_tokens"]["avg"] == prompt, detail
    assert summary["total_usage_prompt_cache_read_tokens"]["avg"] == cached, detail
    return measured


def test_check_predicts_shared_prefixes(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    path = prefix_test_file(tmp_path, tokenizer_dir)
    measured = measure_and_compare(tmp_path, cache_server, aiperf_tmpdir, path, tokenizer_dir,
                                   count_records(path))
    assert measured > 0.5  # 8 of 12 requests reuse their group's 200-token prefix


def test_check_predicts_a_nonced_file_misses(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    path = nonced(prefix_test_file(tmp_path, tokenizer_dir))
    measured = measure_and_compare(tmp_path, cache_server, aiperf_tmpdir, path, tokenizer_dir,
                                   count_records(path))
    assert measured < 0.02


def test_check_predicts_repeats_when_the_run_wraps_around(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """Three times as many requests as records: AIPerf wraps around, repeats hit.
    Streamed, so the cached tokens travel in the usage-only chunk."""
    path = nonced(prefix_test_file(tmp_path, tokenizer_dir))
    measured = measure_and_compare(tmp_path, cache_server, aiperf_tmpdir, path, tokenizer_dir,
                                   3 * count_records(path), streaming=True)
    assert measured > 0.5  # two passes of three hit nearly all their tokens


def test_check_predicts_a_padded_shared_prompt(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    path = tmp_path / "padded.jsonl"
    promptkit("pad", EXAMPLE, path, "--tokens", "256", "--tokenizer", tokenizer_dir,
              "--system-prompt", "You are a careful assistant.", "--into", "text",
              "--to", "single_turn", "--seed", "3")
    measured = measure_and_compare(tmp_path, cache_server, aiperf_tmpdir, path, tokenizer_dir,
                                   count_records(path))
    assert measured > 0.7  # 19 of 20 requests reuse the 256-token prompt


def test_check_predicts_warmup_then_profiled_requests_of_a_chat_file(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """synth prefix-test's own format (a system and a user message a line), nonce'd:
    the warmup takes the first records, the profiled requests continue from there
    and wrap around onto the warmed ones, which hit."""
    source = tmp_path / "prefix-test-chat.jsonl"
    promptkit("synth", "prefix-test", source, "--groups", "4", "--group-size", "3",
              "--system-tokens", "200", "--tokenizer", tokenizer_dir, "--seed", "1")
    path = nonced(source)
    rows = count_records(path)
    measured = measure_and_compare(tmp_path, cache_server, aiperf_tmpdir, path, tokenizer_dir,
                                   rows, warmup=4)
    assert [r.cached_tokens > 0 for r in cache_server.cache_records()] == (
        [False] * rows + [True] * 4)
    assert 0.2 < measured < 0.4  # 4 of 12 profiled requests repeat a warmup request
