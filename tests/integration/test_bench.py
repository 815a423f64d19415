"""``promptkit bench``: the real ``aiperf profile``, configured by a ``.env`` file, with
the predicted and the measured prefix-cache hit rate side by side.

The command runs as a user runs it (``python -m promptkit bench --env-file ...``,
a subprocess) and starts the real AIPerf (0.13, the ``aiperf`` of its own
virtualenv, ``tests/aiperf_tool.py``, given as ``AIPERF``), which sends
its requests to the local OpenAI-compatible server (``tests/openai_server.py``,
with its vLLM-rule prefix cache, the ``/reset_prefix_cache`` and ``/flush_cache``
endpoints, and ``GET /metrics`` counters of the tokens its cache served). The
server records every request in arrival order, so the tests see what AIPerf sent,
whether the cache reset came first, and what its cache hit request by request:
the truth the ``prefix_cache`` block of ``cache_condition.json`` is held to.
Offline and hermetic as in ``tests/integration/test_aiperf_profile.py``: a local tokenizer
folder, AIPerf's temp files in a folder the test deletes, ``--ui none
--no-gpu-telemetry`` through ``AIPERF_ARGS`` (server metrics stay on where the
measured rate is asserted), and none of the runner's settings inherited from the
developer's environment.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
import test_aiperf_profile
from openai_server import CacheRecord, OpenAIServer
from test_aiperf_profile import (
    AIPERF_TIMEOUT_S,
    EXAMPLE,
    aiperf_env,
    error_lines,
    read_texts,
    run_in_group,
    tail,
)
from tokenizer_dir import build_tokenizer_dir

from promptkit.commands import bench
from promptkit.commands.check import check_file
from promptkit.ops.check import TEMPLATES

aiperf_tmpdir = test_aiperf_profile.aiperf_tmpdir  # the shared AIPerf temp-folder fixture

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "scripts" / "run_aiperf.py"
CHAT_EXAMPLE = ROOT / "prompts" / "chat.jsonl.example"
QUIET_AIPERF = "--ui none --no-gpu-telemetry"  # server metrics on: the measured rate
GENERATE = ("/v1/chat/completions", "/reset_prefix_cache", "/flush_cache")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("bench") / "tokenizer")


@pytest.fixture
def cache_server(tokenizer_dir: Path) -> Any:
    with OpenAIServer(model="test-model", tokenizer=tokenizer_dir) as server:
        yield server


def promptkit(*args: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                   capture_output=True, cwd=cwd)


def nonced(tmp_path: Path) -> Path:
    """The shipped example (20 records), nonce'd: 20 distinct prompts, with a manifest."""
    path = tmp_path / "bench.jsonl"
    promptkit("nonce", EXAMPLE, path, "--seed", "7")
    return path


def shared_prefixes(tmp_path: Path, tokenizer: Path) -> Path:
    """synth prefix-test, nonce'd in the user turn: 2 groups x 4 distinct requests (a
    system and a user message each, sent as they are), each group's sharing one
    64-token system prompt, in turn (a hit from the third request on)."""
    made = tmp_path / "prefix-test-made.jsonl"
    promptkit("synth", "prefix-test", made, "--groups", "2", "--group-size", "4",
              "--system-tokens", "64", "--tokenizer", tokenizer, "--seed", "7")
    path = tmp_path / "prefix-test.jsonl"
    promptkit("nonce", made, path, "--at", "user", "--seed", "7")
    return path


def write_env(path: Path, **settings: Any) -> Path:
    """A .env file: one KEY=VALUE line a setting, single-quoted."""
    lines = ["# written by tests/integration/test_bench.py"]
    lines += [f"{key}='{value}'" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def base_settings(server: OpenAIServer, tokenizer: Path, artifacts: Path) -> dict[str, Any]:
    return {
        "MODEL": "test-model",
        "URL": server.url,
        "ENDPOINT_TYPE": "chat",
        "CONCURRENCY": 1,
        "TOKENIZER": tokenizer,
        "ARTIFACT_DIR": artifacts,
        "AIPERF": shlex.quote(str(aiperf_tool.executable())),
        "AIPERF_ARGS": QUIET_AIPERF,
        # The test server tokenizes the messages' texts with no chat template.
        "CHAT_TEMPLATE": "none",
    }


def runner_env(tmpdir: Path, **overrides: str) -> dict[str, str]:
    """AIPerf's test environment with none of the runner's settings, plus ``overrides``."""
    env = {k: v for k, v in aiperf_env(tmpdir).items() if k not in bench.SETTINGS}
    # AIPerf waits 5 s before it stops its server-metrics service, and keeps scraping
    # 2 s after profiling: a local server needs less (1 s is its least delay).
    env.update({"AIPERF_SERVER_METRICS_SHUTDOWN_DELAY": "1",
                "AIPERF_SERVER_METRICS_COLLECTION_FLUSH_PERIOD": "0.5"})
    env.update(overrides)
    return env


def run_bench(tmp_path: Path, tmpdir: Path, env_file: Path, *args: str,
              env: dict[str, str] | None = None,
              program: tuple[str, ...] = ("-m", "promptkit", "bench"),
              ) -> subprocess.CompletedProcess[str]:
    """``python -m promptkit bench --env-file ENV ARGS`` in ``tmp_path``; AIPerf and
    every process it starts are ended if it overruns."""
    logs = tmp_path / f"bench-logs-{time.monotonic_ns()}"
    logs.mkdir()
    command = [sys.executable, *program, "--env-file", str(env_file), *args]
    started = time.monotonic()
    returncode = run_in_group(command, logs, env if env is not None else runner_env(tmpdir),
                              tmp_path)
    assert returncode is not None, (f"bench timed out after {AIPERF_TIMEOUT_S}s\n"
                                    f"{tail(logs / 'stderr.txt')}")
    print(f"promptkit bench {' '.join(args)} took {time.monotonic() - started:.1f}s")
    return subprocess.CompletedProcess(
        command, returncode,
        (logs / "stdout.txt").read_text(encoding="utf-8", errors="replace"),
        (logs / "stderr.txt").read_text(encoding="utf-8", errors="replace"))


def explain(result: subprocess.CompletedProcess[str], server: OpenAIServer,
            artifacts: Path) -> str:
    received = [f"  {r.method} {r.path}" for r in server.recorded() if r.path in GENERATE]
    return "\n".join([
        f"exit code {result.returncode}",
        f"server received {len(received)} request(s) (GET /metrics left out):",
        *received[:40],
        "--- stderr (tail)", "\n".join(result.stderr.splitlines()[-40:]),
        "--- error lines", error_lines(artifacts / "logs" / "aiperf.log"),
    ])


def paths(server: OpenAIServer) -> list[str]:
    """What the server was asked, AIPerf's scrapes of GET /metrics left out."""
    return [r.path for r in server.recorded() if r.path != "/metrics"]


def condition(artifacts: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((artifacts / "cache_condition.json").read_text())
    return data


def profiled_count(artifacts: Path) -> float:
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    return summary["request_count"]["avg"]  # type: ignore[no-any-return]


def post_chat(server: OpenAIServer, text: str) -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(server.url + "/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def served(records: list[CacheRecord]) -> tuple[int, int]:
    """``(hit tokens, prompt tokens)`` the test server's cache served for ``records``."""
    return sum(r.cached_tokens for r in records), sum(r.prompt_tokens for r in records)


def boundary_variants(records: list[CacheRecord], warmup: int) -> dict[tuple[int, int], int]:
    """The profiled ``(hits, queries)`` AIPerf's export may report after a warmup, with
    how many of the first profiled requests it left out: the exact ones (0), or less
    the first k requests, which AIPerf 0.13 can count in the warmup phase or in
    neither (its two windows overlap: measured, 1 request in 3 of 5 runs here, up to
    9 on vLLM); -j: with the last j warmup requests counted in the profiling phase (all
    of a 2-request warmup, seen once in a clean-clone run)."""
    hits, queries = served(records[warmup:])
    variants: dict[tuple[int, int], int] = {}
    for k, record in enumerate([None, *records[warmup:]]):
        if record is not None:
            hits, queries = hits - record.cached_tokens, queries - record.prompt_tokens
        variants.setdefault((hits, queries), k)
    for j in range(1, warmup + 1):
        variants.setdefault(served(records[warmup - j:]), -j)
    return variants


def boundary_line(measured: tuple[int, int], lost: list[CacheRecord], predicted: str) -> str:
    """The comparison when the measurement is the prediction less the first profiled
    requests (AIPerf counted them outside the profiling phase)."""
    what = "the first" if len(lost) == 1 else f"the first {len(lost)}"
    return (f"promptkit: prefix cache: the server hit {pct(*measured)} ({measured[0]} of "
            f"{measured[1]} prompt tokens), as predicted for every profiled request but "
            f"{what} ({sum(r.prompt_tokens for r in lost)} prompt tokens, "
            f"{sum(r.cached_tokens for r in lost)} hit), which AIPerf's export counted "
            "outside the profiling phase (its warmup and profiling windows overlap); "
            f"predicted with them: {predicted}")


def rate(hits: int, queries: int) -> float:
    return round(hits / queries, 6)


def pct(hits: int, queries: int) -> str:
    return f"{100 * hits / queries:.2f}%"


def comparison(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("promptkit: prefix cache:")]
    assert len(lines) == 1, stderr
    return lines[0]


# -- with the real aiperf -------------------------------------------------------


def test_a_nonced_file_is_sent_exactly_after_the_cache_is_cleared(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """2 warmup requests, REQUEST_COUNT unset (the 18 records left): the server gets
    the file's 20 prompts once each, in order, after the vLLM reset that empties
    the cache a request filled before the run. check predicted no hit, the server
    measured none, on the same prompt tokens; MAX_HIT_RATE=0 is not exceeded."""
    path = nonced(tmp_path)
    texts = read_texts(path)
    post_chat(cache_server, texts[2])  # the first profiled prompt, cached before the run
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         STREAMING="true", WARMUP_REQUEST_COUNT=2, INPUT_FILE="bench.jsonl",
                         RESET_CACHE="vllm", MAX_HIT_RATE=0)
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    assert "promptkit:" not in result.stdout  # AIPerf's own output, and only that
    assert "promptkit: REQUEST_COUNT unset: 18" in result.stderr, why

    assert paths(cache_server) == ["/v1/chat/completions", "/reset_prefix_cache",
                                   *["/v1/chat/completions"] * 20], why
    assert cache_server.recorded("/metrics"), "AIPerf never scraped the server's /metrics"
    bodies = cache_server.chat_requests()[1:]
    assert [b["messages"] for b in bodies] == [[{"role": "user", "content": t}] for t in texts]
    assert all(b["stream"] is True for b in bodies)
    # The reset emptied the cache: no request hit, the pre-cached prompt included.
    records = cache_server.cache_records()
    assert len(records) == 20 and all(r.cached_tokens == 0 for r in records), records
    assert profiled_count(artifacts) == 18

    cond = condition(artifacts)
    assert cond["reset_cache"] == "vllm"
    assert cond["action"] == f"POST {cache_server.url}/reset_prefix_cache"
    assert cond["status"] == 200 and cond["aiperf_exit_code"] == 0
    assert cond["dataset"] == {"input_file": str(path), "custom_dataset_type": "single_turn",
                               "from": "manifest", "distinct_records": 20, "repeats": False}
    assert (cond["warmup_request_count"], cond["request_count"]) == (2, 18)
    assert cond["aiperf_command"] == [
        str(aiperf_tool.executable()),
        "profile", "--model", "test-model", "--url", cache_server.url,
        "--endpoint-type", "chat", "--streaming",
        "--input-file", str(path), "--custom-dataset-type", "single_turn",
        "--no-fixed-schedule",
        "--concurrency", "1", "--request-count", "18", "--warmup-request-count", "2",
        "--tokenizer", str(tokenizer_dir), "--artifact-dir", str(artifacts),
        *shlex.split(QUIET_AIPERF)]

    # The profiled requests (the warmup's 2 left out), as the server's cache saw them.
    hits, queries = served(records[2:])
    assert (hits, queries) == (0, queries) and queries > 0
    block = cond["prefix_cache"]
    assert block["source"] == (f"{artifacts / 'server_metrics_export.json'}: "
                               "vllm:prefix_cache_hits / vllm:prefix_cache_queries, "
                               "profiling phase")
    assert (block["predicted_hits"], block["predicted_queries"]) == (hits, queries)
    assert block["predicted_hit_rate"] == rate(hits, queries) == 0
    measured = (block["measured_hits"], block["measured_queries"])
    assert measured in boundary_variants(records, 2), (measured, (hits, queries))
    print("AIPerf's export left out", boundary_variants(records, 2)[measured], "request(s)")
    assert block["measured_hit_rate"] == 0
    assert block["predicted_range"] in (None, [0.0, 0.0])
    assert block["max_hit_rate"] == 0 and block["above_max_hit_rate"] is False
    # AIPerf's own export, read here with no promptkit code: the same counts.
    export = json.loads((artifacts / "server_metrics_export.json").read_text())
    assert [s["stats"]["total"] for s in
            export["metrics"]["vllm:prefix_cache_queries"]["series"]] == [measured[1]]
    assert block["predicted_first_requests"] == [[r.prompt_tokens, r.cached_tokens]
                                                 for r in records[2:]]
    missed = boundary_variants(records, 2)[measured]
    line = (f"promptkit: prefix cache: the server hit 0.00% (0 of {measured[1]} prompt "
            "tokens), as predicted (0.00%)")
    if missed > 0:
        line = boundary_line(measured, records[2:2 + missed], "0.00%")
    elif missed < 0 and block["measured_turns"] == block["predicted_turns"]:
        # Warmup requests counted as profiled by the counters, not in AIPerf's records.
        line += (f"; but the server counted {measured[1]} prompt tokens where check counted "
                 f"{queries}: AIPerf's records of the profiled requests hold the prompt tokens "
                 "check counted, so the server's counters took in other requests: AIPerf's "
                 "export counting requests at the warmup/profiling boundary in the other "
                 "phase (WARMUP_REQUEST_COUNT=2); or another client sending to the same server")
    elif missed < 0:  # ... and in AIPerf's records too
        line += "; but " + bench.turns_diagnosis(block, "none")
    assert comparison(result.stderr) == line
    assert (f"promptkit: predicted prefix-cache hit rate 0.00%: 0 of {queries} prompt "
            f"tokens (check: tokenizer {tokenizer_dir}, chat template none, block size 16)"
            ) in result.stderr.splitlines()


def test_a_file_too_small_stops_unless_repeats_are_allowed(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """25 requests from 20 records: stopped (exit 1); allowed, the last 5 resend the
    warmup's prompts and hit, exactly as check predicted them to."""
    path = nonced(tmp_path)
    texts = read_texts(path)
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         REQUEST_COUNT=20, WARMUP_REQUEST_COUNT=5, INPUT_FILE=path,
                         RESET_CACHE="aiperf")

    stopped = run_bench(tmp_path, aiperf_tmpdir, env_file)
    assert stopped.returncode == 1
    assert stopped.stdout == ""
    assert stopped.stderr == (
        f"promptkit: WARMUP_REQUEST_COUNT + REQUEST_COUNT = 5 + 20 = 25 requests, but {path} "
        "has only 20 distinct records: AIPerf would wrap around and resend prompts that hit "
        "the prefix cache. Lower the counts, make more records (promptkit nonce --copies N), "
        "or pass --allow-repeats (ALLOW_REPEATS=true)\n")
    assert cache_server.recorded() == []  # no reset, no aiperf
    assert not artifacts.exists()

    allowed = run_bench(tmp_path, aiperf_tmpdir, env_file, "--allow-repeats")
    why = explain(allowed, cache_server, artifacts)
    assert allowed.returncode == 0, why
    assert ("promptkit: warning: 25 requests from 20 distinct records: 5 resend a prompt "
            "and may hit the prefix cache (--allow-repeats)") in allowed.stderr
    # AIPerf's own reset (--reset-kv-cache) came before every request.
    assert paths(cache_server) == ["/reset_prefix_cache", *["/v1/chat/completions"] * 25], why
    sent = [b["messages"][0]["content"] for b in cache_server.chat_requests()]
    assert sent == texts + texts[:5]  # AIPerf wrapped around the file
    records = cache_server.cache_records()
    hits = [r.cached_tokens > 0 for r in records]
    assert hits == [False] * 20 + [True] * 5  # and the repeats hit the cache
    cond = condition(artifacts)
    assert cond["reset_cache"] == "aiperf" and "--reset-kv-cache" in cond["aiperf_command"]
    assert cond["dataset"]["repeats"] is True and cond["aiperf_exit_code"] == 0

    hit_tokens, queries = served(records[5:])
    assert hit_tokens > 0
    block = cond["prefix_cache"]
    assert (block["predicted_hits"], block["predicted_queries"]) == (hit_tokens, queries)
    assert block["predicted_hit_rate"] == rate(hit_tokens, queries)
    measured = (block["measured_hits"], block["measured_queries"])
    assert measured in boundary_variants(records, 5), (measured, (hit_tokens, queries))
    print("AIPerf's export left out", boundary_variants(records, 5)[measured], "request(s)")
    assert block["measured_hit_rate"] == rate(*measured)
    assert block["max_hit_rate"] is None and block["above_max_hit_rate"] is None
    assert block["predicted_first_requests"] == [[r.prompt_tokens, r.cached_tokens]
                                                 for r in records[5:]]
    missed = boundary_variants(records, 5)[measured]
    line = comparison(allowed.stderr)
    if missed == 0:
        assert line == (
            f"promptkit: prefix cache: the server hit {pct(hit_tokens, queries)} ({hit_tokens} "
            f"of {queries} prompt tokens), as predicted ({pct(hit_tokens, queries)})")
    elif missed > 0:
        assert line == boundary_line(measured, records[5:5 + missed], pct(hit_tokens, queries))
    else:  # the difference is put down to the boundary first among the causes
        assert ("possible causes: AIPerf's export counting requests at the warmup/profiling "
                "boundary in the other phase (WARMUP_REQUEST_COUNT=5)") in line


def test_shared_prefixes_above_max_hit_rate_exit_3(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """A file whose groups share a 64-token prefix: the run succeeds, the server hits
    what check predicted, and that is above MAX_HIT_RATE=0.05: exit 3, said on stderr
    and in cache_condition.json."""
    path = shared_prefixes(tmp_path, tokenizer_dir)
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE=path, RESET_CACHE="vllm", MAX_HIT_RATE="0.05")
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 3, why
    assert "promptkit:" not in result.stdout
    records = cache_server.cache_records()
    assert len(records) == 8, why
    hits, queries = served(records)
    assert hits / queries > 0.05
    cond = condition(artifacts)
    assert cond["aiperf_exit_code"] == 0
    block = cond["prefix_cache"]
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries)
    assert (block["predicted_hits"], block["predicted_queries"]) == (hits, queries)
    assert block["measured_hit_rate"] == block["predicted_hit_rate"] == rate(hits, queries)
    assert block["max_hit_rate"] == 0.05 and block["above_max_hit_rate"] is True
    assert result.stderr.splitlines()[-1] == (
        f"promptkit: the measured hit rate {pct(hits, queries)} is above MAX_HIT_RATE=0.05 "
        "(5.00%): exit 3")
    assert ("promptkit: warning: the predicted hit rate is already above MAX_HIT_RATE=0.05"
            in result.stderr.splitlines())


def test_a_cache_not_cleared_flatters_the_run_and_says_so(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """RESET_CACHE=none, and the server already holds 3 of the file's prompts (an
    earlier run): it hits more than check predicted, and the runner says so, naming
    the uncleared cache first. Every request's prompt tokens were as predicted
    (AIPerf's records of them say so): the chat template is no possible cause."""
    path = nonced(tmp_path)
    texts = read_texts(path)
    for text in texts[:3]:
        post_chat(cache_server, text)
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE=path, REQUEST_COUNT=6)
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    records = cache_server.cache_records()[3:]  # the run's 6 requests
    assert [r.cached_tokens > 0 for r in records] == [True] * 3 + [False] * 3, why
    hits, queries = served(records)
    block = condition(artifacts)["prefix_cache"]
    assert (block["predicted_hits"], block["predicted_queries"]) == (0, queries)
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries)
    assert comparison(result.stderr) == (
        f"promptkit: prefix cache: the server hit {pct(hits, queries)} ({hits} of {queries} "
        "prompt tokens), more than the 0.00% predicted: a flattered run; possible causes: "
        "the cache was not cleared before the run (RESET_CACHE=none) and held earlier "
        "prompts; warmup requests counted in the profiling window; another client sending "
        "to the same server")


def test_sglang_counters_are_read_too(
    tmp_path: Path, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """A server exporting SGLang's counters (sglang:cached_tokens_total,
    sglang:prompt_tokens_total): AIPerf records them, the runner reads them."""
    path = shared_prefixes(tmp_path, tokenizer_dir)
    artifacts = tmp_path / "artifacts"
    with OpenAIServer(model="test-model", tokenizer=tokenizer_dir, metrics="sglang") as server:
        env_file = write_env(tmp_path / ".env", **base_settings(server, tokenizer_dir, artifacts),
                             INPUT_FILE=path, RESET_CACHE="sglang")
        result = run_bench(tmp_path, aiperf_tmpdir, env_file)
        why = explain(result, server, artifacts)
        records = server.cache_records()
    assert result.returncode == 0, why
    hits, queries = served(records)
    assert hits > 0
    block = condition(artifacts)["prefix_cache"]
    assert block["source"].endswith(": sglang:cached_tokens / sglang:prompt_tokens, "
                                    "profiling phase")
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries)
    assert block["measured_hit_rate"] == block["predicted_hit_rate"] == rate(hits, queries)


def conversations(path: Path, tokenizer: Path) -> Path:
    """4 multi_turn conversations of 3 turns, each turn's output_length the test
    server's reply in tokens (AIPerf sends the reply back in the next turn)."""
    from openai_server import COMPLETION
    from tokenizers import Tokenizer

    reply = len(Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
                .encode(COMPLETION, add_special_tokens=False).ids)
    with path.open("w", encoding="utf-8") as f:
        for s in range(4):
            turns = [{"text": f"session {s} turn {t}: the quick brown fox jumps over the "
                              "lazy dog. ", "output_length": reply} for t in range(3)]
            f.write(json.dumps({"session_id": f"s{s}", "turns": turns}) + "\n")
    return path


def test_multi_turn_requests_are_turns_and_the_range_is_compared(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """AIPerf sends a conversation one request a turn and counts turns: 4 conversations
    of 3 turns are 12 requests, none repeated. check predicts a range (the replies'
    re-tokenization is unknown); the server's hits lie in it, on the same prompt
    tokens, and the line says so."""
    path = conversations(tmp_path / "mt.jsonl", tokenizer_dir)
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE=path, RESET_CACHE="vllm")
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    assert ("promptkit: REQUEST_COUNT unset: 12 (the file's 12 distinct requests (the turns "
            "of 4 distinct conversations) less 0 warmup)") in result.stderr.splitlines()
    assert "warning" not in result.stderr, why
    sent = [(len(b["messages"]), b["messages"][-1]["content"][:16])
            for b in cache_server.chat_requests()]
    assert sent == [(2 * t + 1, f"session {s} turn {t}") for s in range(4) for t in range(3)]
    cond = condition(artifacts)
    assert (cond["dataset"]["distinct_records"], cond["dataset"]["distinct_turns"]) == (4, 12)
    hits, queries = served(cache_server.cache_records())
    block = cond["prefix_cache"]
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries)
    assert block["predicted_queries"] == queries
    low, high = block["predicted_range"]
    assert low < high and low <= rate(hits, queries) <= high, (block, hits, queries)
    assert comparison(result.stderr) == (
        f"promptkit: prefix cache: the server hit {pct(hits, queries)} ({hits} of {queries} "
        f"prompt tokens), as predicted ({100 * low:.2f}% to {100 * high:.2f}%)")

    # 2 warmup + 11 > 12 turns: stopped; 2 + 10 runs, with a word on AIPerf's warmup.
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE=path, WARMUP_REQUEST_COUNT=2, REQUEST_COUNT=11)
    stopped = run_bench(tmp_path, aiperf_tmpdir, env_file, "--dry-run")
    assert stopped.returncode == 1 and "has only 12 distinct requests" in stopped.stderr
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE=path, WARMUP_REQUEST_COUNT=2, REQUEST_COUNT=10)
    dry = run_bench(tmp_path, aiperf_tmpdir, env_file, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert ("promptkit: warning: multi_turn with a warmup: AIPerf 0.13 was seen to skip a "
            "conversation after a warmup of 2 or more requests (and so to wrap around "
            "sooner); the prediction assumes the conversations follow in file order"
            ) in dry.stderr.splitlines()


def turn_tokens(records: list[CacheRecord], bodies: list[dict[str, Any]]
                ) -> dict[str, dict[str, int]]:
    """The prompt tokens the server counted for the first requests of conversations
    (one message) and for later turns (their history too), from its own records."""
    out = {"first_requests": {"requests": 0, "prompt_tokens": 0},
           "later_turns": {"requests": 0, "prompt_tokens": 0}}
    for record, body in zip(records, bodies, strict=True):
        group = out["first_requests" if len(body["messages"]) == 1 else "later_turns"]
        group["requests"] += 1
        group["prompt_tokens"] += record.prompt_tokens
    return out


def test_replies_sent_back_are_told_from_the_first_requests(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """Turns whose output_length (3) is not the server's reply (7 tokens): every later
    turn sends back more tokens than check counted. The first requests of the
    conversations were exactly as predicted, and the line says so, putting the
    difference down to the replies, not the tokenizer or template."""
    path = conversations(tmp_path / "mt.jsonl", tokenizer_dir)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        for turn in row["turns"]:
            turn["output_length"] = 3
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE=path, RESET_CACHE="vllm")
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    truth = turn_tokens(cache_server.cache_records(), cache_server.chat_requests())
    block = condition(artifacts)["prefix_cache"]
    assert block["measured_turns"] == truth, why
    predicted = block["predicted_turns"]
    assert predicted["first_requests"] == truth["first_requests"]
    assert (predicted["later_turns"]["requests"], truth["later_turns"]["requests"]) == (8, 8)
    assert predicted["later_turns"]["prompt_tokens"] < truth["later_turns"]["prompt_tokens"]
    assert (f"the first requests of conversations came to exactly the "
            f"{truth['first_requests']['prompt_tokens']} prompt tokens check counted, their "
            f"later turns to {truth['later_turns']['prompt_tokens']} where it counted "
            f"{predicted['later_turns']['prompt_tokens']}: the server's replies, sent back in "
            "the history, are not the output_length tokens check counted (re-tokenized, or "
            "shorter)") in comparison(result.stderr), why
    assert "chat template" not in comparison(result.stderr)


def test_a_template_the_server_does_not_apply_is_found_in_the_first_requests(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """check told to render chatml, for a server that renders none: every request
    differs from its first token, and the line names the tokenizer or template."""
    path = nonced(tmp_path)
    artifacts = tmp_path / "artifacts"
    settings = {**base_settings(cache_server, tokenizer_dir, artifacts), "CHAT_TEMPLATE": "chatml"}
    env_file = write_env(tmp_path / ".env", **settings, INPUT_FILE=path, REQUEST_COUNT=6)
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    truth = turn_tokens(cache_server.cache_records(), cache_server.chat_requests())
    block = condition(artifacts)["prefix_cache"]
    assert block["measured_turns"] == truth, why
    assert truth["later_turns"]["requests"] == 0
    counted = block["predicted_turns"]["first_requests"]["prompt_tokens"]
    assert counted > truth["first_requests"]["prompt_tokens"]  # chatml's markers
    assert (f"the requests came to {truth['first_requests']['prompt_tokens']} prompt tokens "
            f"where check counted {counted}: the server's tokenizer, chat template or tools "
            "differ from what check rendered (chat template chatml; set TOKENIZER, "
            "CHAT_TEMPLATE)") in comparison(result.stderr), why


@pytest.mark.parametrize(("mode", "requests"), [("system-prefix", 20),
                                                ("first-turn-prefix", 16)])
def test_cache_bust_is_passed_to_aiperf_and_predicted(
    mode: str, requests: int, tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path,
    tokenizer_dir: Path
) -> None:
    """CACHE_BUST: AIPerf gets --cache-bust, and check predicts its markers. 4 groups
    of 4 requests sharing a system prompt: system-prefix busts everything, even the 4
    requests beyond the file's 16 (a new marker a pass: no --allow-repeats needed);
    first-turn-prefix leaves the shared system prompts to hit. The hits are the
    server's exactly; its prompt tokens, with markers of the run's own digest, inside
    the range check predicted."""
    promptkit("synth", "prefix-test", tmp_path / "groups.jsonl", "--groups", "4",
              "--group-size", "4", "--tokenizer", tokenizer_dir, "--seed", "5",
              "--system-tokens", "48")
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         INPUT_FILE="groups.jsonl", REQUEST_COUNT=requests, RESET_CACHE="vllm",
                         CACHE_BUST=mode,
                         # (a group's records are alike on purpose: resent, they hit)
                         ALLOW_REPEATS=str(mode != "system-prefix").lower())
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    cond = condition(artifacts)
    assert cond["cache_bust"] == mode
    command = cond["aiperf_command"]
    assert command[command.index("--cache-bust") + 1] == mode.replace("-", "_")
    assert cond["dataset"]["repeats"] is True  # (4 distinct records: see synth)
    hits, queries = served(cache_server.cache_records())
    assert (hits == 0) is (mode == "system-prefix"), (hits, queries)
    block = cond["prefix_cache"]
    assert block["predicted_hits"] == block["measured_hits"] == hits, (block, why)
    low, high = block["predicted_queries_range"]
    assert low <= block["measured_queries"] == queries <= high, (block, queries)
    expected = f"{pct(hits, high)} to {pct(hits, low)}" if hits else "0.00%"
    assert comparison(result.stderr) == (
        f"promptkit: prefix cache: the server hit {pct(hits, queries)} ({hits} of {queries} "
        f"prompt tokens), as predicted ({expected}); its prompt "
        f"tokens inside the {low} to {high} check predicted with AIPerf's --cache-bust "
        "markers")


def test_reply_tokens_give_turns_without_output_length_a_prediction(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    path = conversations(tmp_path / "mt.jsonl", tokenizer_dir)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        for turn in row["turns"]:
            del turn["output_length"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    artifacts = tmp_path / "artifacts"
    settings = {**base_settings(cache_server, tokenizer_dir, artifacts), "INPUT_FILE": path}
    without = run_bench(tmp_path, aiperf_tmpdir, write_env(tmp_path / ".env", **settings),
                        "--dry-run")
    assert without.returncode == 0, without.stderr
    assert "no prediction of the prefix-cache hit rate" in without.stderr
    assert "give --reply-tokens N" in without.stderr
    given = run_bench(tmp_path, aiperf_tmpdir,
                      write_env(tmp_path / ".env", **settings, REPLY_TOKENS=6), "--dry-run")
    assert given.returncode == 0, given.stderr
    assert "promptkit: predicted prefix-cache hit rate " in given.stderr
    assert " (range " in given.stderr  # the replies' blocks may or may not hit


def test_synthetic_mode_warns_and_runs_with_no_prediction(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """INPUT_FILE unset: AIPerf's synthetic prompts, two warnings (the second: no
    prediction); RESET_CACHE=sglang posts /flush_cache first. The prediction
    is recorded as null with its reason; the measurement is still made."""
    artifacts = tmp_path / "artifacts"
    settings = base_settings(cache_server, tokenizer_dir, artifacts)
    settings["AIPERF_ARGS"] += " --synthetic-input-tokens-mean 64 --output-tokens-mean 8"
    env_file = write_env(tmp_path / ".env", **settings, REQUEST_COUNT=3,
                         RESET_CACHE="sglang")
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    reason = "synthetic prompts: AIPerf makes them at run time, so check has no file to read"
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith("promptkit: warning:")]
    assert warnings == [
        "promptkit: warning: synthetic mode: AIPerf's synthetic prompts are much alike, so "
        "the server's prefix cache may serve parts of them and flatter the results; use a "
        "nonce'd file (promptkit nonce) for a cold-cache run",
        f"promptkit: warning: no prediction of the prefix-cache hit rate: {reason}",
    ]
    assert paths(cache_server) == ["/flush_cache", *["/v1/chat/completions"] * 3], why
    assert profiled_count(artifacts) == 3
    cond = condition(artifacts)
    assert cond["dataset"] == {"synthetic": True}
    assert cond["action"] == f"POST {cache_server.url}/flush_cache" and cond["status"] == 200
    assert "--input-file" not in cond["aiperf_command"]
    block = cond["prefix_cache"]
    assert block["predicted_hit_rate"] is None and block["predicted_range"] is None
    assert block["prediction_unavailable"] == reason
    hits, queries = served(cache_server.cache_records())
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries)
    assert comparison(result.stderr) == (
        f"promptkit: prefix cache: the server hit {pct(hits, queries)} ({hits} of {queries} "
        f"prompt tokens); no prediction to compare ({reason})")


def test_a_prediction_that_fails_does_not_stop_the_run(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """CHAT_TEMPLATE=hf with a tokenizer that has no chat template: check cannot
    predict; the run goes on, the reason is recorded, the measurement made."""
    plain = tmp_path / "plain-tokenizer"
    shutil.copytree(tokenizer_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    path = nonced(tmp_path)
    artifacts = tmp_path / "artifacts"
    settings = base_settings(cache_server, plain, artifacts)
    env_file = write_env(tmp_path / ".env", **{**settings, "CHAT_TEMPLATE": "hf"},
                         INPUT_FILE=path, REQUEST_COUNT=4)
    result = run_bench(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    assert len(cache_server.cache_records()) == 4, why
    block = condition(artifacts)["prefix_cache"]
    assert block["predicted_hit_rate"] is None
    assert block["prediction_unavailable"].startswith(f"check failed: {plain}: the tokenizer "
                                                      "has no chat template")
    assert (f"promptkit: warning: no prediction of the prefix-cache hit rate: "
            f"{block['prediction_unavailable']}") in result.stderr.splitlines()
    assert (block["measured_hits"], block["measured_queries"]) == served(
        cache_server.cache_records())


def test_extra_inputs_arrive_in_request_bodies_with_json_types(
    tmp_path: Path, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """A chat file without a manifest (its type detected: openai lines load as
    mooncake_trace); EXTRA_INPUTS values of every JSON type reach the server. A server
    with no prefix-cache counters on /metrics: nothing is measured, the record says
    why, and MAX_HIT_RATE, which cannot be checked, only warns (AIPerf's exit code)."""
    path = tmp_path / "chat.jsonl"
    shutil.copy(CHAT_EXAMPLE, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    extra = ('ignore_eos:true,skip_special_tokens:false,top_k:5,'
             'temperature:0.5,min_p:1e-3,priority:-2,user:"bench, run",tag:plain,'
             'stop:["END","1"],logit_bias:{"42":-1},seed:null')
    expected = {"ignore_eos": True, "skip_special_tokens": False, "top_k": 5,
                "temperature": 0.5, "min_p": 0.001, "priority": -2, "user": "bench, run",
                "tag": "plain", "stop": ["END", "1"], "logit_bias": {"42": -1}, "seed": None}
    artifacts = tmp_path / "artifacts"
    with OpenAIServer(model="test-model") as server:
        env_file = write_env(tmp_path / ".env", **base_settings(server, tokenizer_dir, artifacts),
                             REQUEST_COUNT=len(rows), INPUT_FILE=path, EXTRA_INPUTS=extra,
                             MAX_HIT_RATE="0.5")
        result = run_bench(tmp_path, aiperf_tmpdir, env_file)
        why = explain(result, server, artifacts)
        assert result.returncode == 0, why
        bodies = server.chat_requests()
        assert server.recorded("/metrics"), why  # scraped: an empty exposition
    assert [b["messages"] for b in bodies] == [row["messages"] for row in rows], why
    for body in bodies:
        got = {key: body.get(key, "<missing>") for key in expected}
        assert got == expected
        for key, value in expected.items():  # True == 1 in Python: compare the types too
            assert type(got[key]) is type(value), (key, got[key])
    cond = condition(artifacts)
    assert cond["reset_cache"] == "none"
    assert cond["dataset"]["from"] == "detected"
    assert cond["dataset"]["custom_dataset_type"] == "mooncake_trace"
    assert cond["dataset"]["distinct_records"] == len(rows)
    block = cond["prefix_cache"]
    assert block["measured_hit_rate"] is None and block["measured_queries"] is None
    export = artifacts / "server_metrics_export.json"
    assert block["source"] in (
        f"{export}: missing (AIPerf writes it when it scraped the server's /metrics: server "
        "metrics on, no --no-server-metrics)",
        f"{export}: no prefix-cache counters (vllm:prefix_cache_hits / "
        "vllm:prefix_cache_queries or sglang:cached_tokens / sglang:prompt_tokens); the server "
        "does not export them, or its prefix caching is off")
    assert block["source"].startswith(f"{export}: missing") == (not export.exists())
    assert block["predicted_hit_rate"] is not None  # predicted all the same
    assert block["max_hit_rate"] == 0.5 and block["above_max_hit_rate"] is None
    assert comparison(result.stderr) == (
        f"promptkit: prefix cache: predicted {100 * block['predicted_hit_rate']:.2f}%; not "
        f"measured: {block['source']}")
    assert result.stderr.splitlines()[-1] == (
        f"promptkit: warning: MAX_HIT_RATE=0.5 not checked: nothing measured "
        f"({block['source']})")


# -- fast: no aiperf run ----------------------------------------------------------


def test_dry_run_prints_the_exact_command_and_touches_nothing(
    tmp_path: Path, tokenizer_dir: Path, aiperf_tmpdir: Path
) -> None:
    """The environment overrides the file (CONCURRENCY); a relative tokenizer folder
    becomes absolute; a promptkit pad --into file manifest brings its system prompt
    file, found next to the input though the manifest names it relative to
    another folder; the prediction is check's for the same file, counts, system
    prompt and the tokenizer's own chat template (CHAT_TEMPLATE unset)."""
    made = tmp_path / "made"
    made.mkdir()
    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    promptkit("pad", EXAMPLE, "padded.jsonl", "--tokens", "48", "--tokenizer", tokenizer_dir,
              "--system-prompt", "You are helpful.", "--into", "file", "--seed", "7", cwd=made)
    path = made / "padded.jsonl"
    artifacts = tmp_path / "artifacts"
    env_file = write_env(
        tmp_path / "bench.env", MODEL="org/model", URL="http://127.0.0.1:9",
        STREAMING="yes", CONCURRENCY=1, REQUEST_COUNT=12, WARMUP_REQUEST_COUNT=4,
        TOKENIZER="tok", ARTIFACT_DIR=artifacts, INPUT_FILE=path, RESET_CACHE="vllm",
        EXTRA_INPUTS="ignore_eos:true,min_tokens:8,stop:[\"x\"]", AIPERF="aiperf")
    result = run_bench(tmp_path, aiperf_tmpdir, env_file, "--dry-run",
                       env=runner_env(aiperf_tmpdir, CONCURRENCY="3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == shlex.join([
        "aiperf", "profile", "--model", "org/model", "--url", "http://127.0.0.1:9",
        "--endpoint-type", "chat", "--streaming",
        "--input-file", str(path), "--custom-dataset-type", "single_turn",
        "--system-prompt-file", f"{path}.system.txt", "--no-fixed-schedule",
        "--concurrency", "3", "--request-count", "12", "--warmup-request-count", "4",
        "--tokenizer", str(tmp_path / "tok"), "--artifact-dir", str(artifacts),
        "--extra-inputs", "ignore_eos:true", "--extra-inputs", "min_tokens:8",
        "--extra-inputs", '{"stop": ["x"]}',
    ]) + "\n"
    summary = check_file(str(path), tokenizer=str(tmp_path / "tok"),
                         chat_template="hf", block_size=None, requests=12, warmup=4,
                         system_prompt_file=f"{path}.system.txt")
    assert summary["hit_tokens"] > 0  # the system prompt is shared: a prediction with hits
    assert result.stderr.splitlines() == [
        f"promptkit: CONCURRENCY from the environment ('3') overrides {env_file}",
        "promptkit: schedule: 12 requests in file order (--no-fixed-schedule)",
        f"promptkit: predicted prefix-cache hit rate {100 * summary['hit_rate']:.2f}%: "
        f"{summary['hit_tokens']} of {summary['prompt_tokens']} prompt tokens (check: "
        f"tokenizer {tmp_path / 'tok'}, chat template hf, block size 16)",
        "promptkit: dry run: would clear the prefix cache first: "
        "POST http://127.0.0.1:9/reset_prefix_cache",
    ]
    assert not artifacts.exists()


def test_the_old_script_is_the_same_command(tmp_path: Path, aiperf_tmpdir: Path) -> None:
    """``python scripts/run_aiperf.py`` is ``promptkit bench``: same output, same codes."""
    # A fixed ARTIFACT_DIR: the default one is named by the second it is made in.
    env_file = write_env(tmp_path / ".env", MODEL="m", URL="http://127.0.0.1:9",
                         REQUEST_COUNT=2, ARTIFACT_DIR=tmp_path / "artifacts")
    new = run_bench(tmp_path, aiperf_tmpdir, env_file, "--dry-run")
    old = run_bench(tmp_path, aiperf_tmpdir, env_file, "--dry-run", program=(str(WRAPPER),))
    assert (old.returncode, old.stdout, old.stderr) == (new.returncode, new.stdout, new.stderr)
    assert new.returncode == 0 and " profile --model m " in new.stdout
    bad = write_env(tmp_path / "bad.env", MODEL="m", CONCURRENCY="many")
    old = run_bench(tmp_path, aiperf_tmpdir, bad, "--dry-run", program=(str(WRAPPER),))
    assert (old.returncode, old.stdout, old.stderr) == (
        2, "", "promptkit: CONCURRENCY='many': not a whole number >= 1\n")


def test_a_stale_manifest_is_ignored_and_the_file_read(tmp_path: Path) -> None:
    path = nonced(tmp_path)
    with path.open("a", encoding="utf-8") as f:
        f.write(path.read_text(encoding="utf-8").splitlines()[0] + "\n")  # a repeat
    dataset = bench.load_dataset(str(path))
    assert (dataset.source, dataset.custom_dataset_type, dataset.distinct_records) == (
        "detected", "single_turn", 20)
    assert "does not match" in dataset.warnings[0]


def test_a_file_without_a_manifest_is_read_as_promptkit_reads_it(tmp_path: Path) -> None:
    """Format detection and bad records as in every promptkit command: FILE:LINE."""
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "a"}\n', encoding="utf-8")
    dataset = bench.load_dataset(str(path))
    assert (dataset.custom_dataset_type, dataset.distinct_records) == ("single_turn", 2)
    path.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(bench.PromptkitError, match=rf"^{path}:2: "):
        bench.load_dataset(str(path))
    path.write_text('{"prompt": "a"}\n', encoding="utf-8")
    with pytest.raises(bench.PromptkitError, match="AIPerf does not load prompt files"):
        bench.load_dataset(str(path))


def test_env_example_documents_every_setting_and_dry_runs(
    tmp_path: Path, aiperf_tmpdir: Path
) -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    for key in bench.SETTINGS:
        assert f"\n{key}=" in text or f"\n#{key}=" in text, key
    assert "promptkit bench --dry-run" in text and "python scripts/run_aiperf.py --" not in text
    result = run_bench(tmp_path, aiperf_tmpdir, ROOT / ".env.example", "--dry-run")
    assert (result.returncode, result.stdout) == (1, "")  # INPUT_FILE=bench.jsonl is missing
    assert result.stderr.splitlines()[-1] == (
        "promptkit: INPUT_FILE=bench.jsonl: no such file or directory; unset INPUT_FILE for "
        "AIPerf's synthetic prompts")
    promptkit("nonce", EXAMPLE, "bench.jsonl", "--copies", "8", "--seed", "7", cwd=tmp_path)
    result = run_bench(tmp_path, aiperf_tmpdir, ROOT / ".env.example", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert " profile --model meta-llama/Llama-3.1-8B-Instruct " in result.stdout
    assert f"--input-file {tmp_path / 'bench.jsonl'} " in result.stdout
    assert "--extra-inputs ignore_eos:true" in result.stdout
    assert "synthetic mode" not in result.stderr


@pytest.mark.parametrize(("settings", "message"), [
    ({"CHAT_TEMPLATE": "jinja"}, f"CHAT_TEMPLATE='jinja': one of {', '.join(TEMPLATES)}"),
    ({"BLOCK_SIZE": "0"}, "BLOCK_SIZE='0': not a whole number >= 1"),
    ({"NUM_GPU_BLOCKS": "1"}, "NUM_GPU_BLOCKS='1': not a whole number >= 2"),
    ({"REPLY_TOKENS": "many"}, "REPLY_TOKENS='many': not a whole number >= 1"),
    ({"MAX_HIT_RATE": "5%"}, "MAX_HIT_RATE='5%': not a fraction from 0 to 1 (0.05 is 5%)"),
    ({"MAX_HIT_RATE": "1.5"}, "MAX_HIT_RATE='1.5': not a fraction from 0 to 1 (0.05 is 5%)"),
    ({"CACHE_BUST": "prefix"}, "CACHE_BUST='prefix': one of none, system-prefix, "
     "system-suffix, first-turn-prefix, first-turn-suffix, warmup-isolation-system, "
     "warmup-isolation-first-turn"),
    ({"CACHE_BUST": "system-prefix", "AIPERF_ARGS": "--cache-bust first_turn_prefix"},
     "CACHE_BUST=system-prefix and AIPERF_ARGS's --cache-bust first_turn_prefix disagree"),
    ({"MAX_HIT_RATE": "0.1", "AIPERF_ARGS": "--no-server-metrics"},
     "MAX_HIT_RATE needs the server's counters, which AIPerf does not collect with "
     "--no-server-metrics (in AIPERF_ARGS)"),
])
def test_bad_new_settings_exit_2(settings: dict[str, str], message: str, tmp_path: Path,
                                 aiperf_tmpdir: Path) -> None:
    env_file = write_env(tmp_path / ".env", MODEL="m", **settings)
    result = run_bench(tmp_path, aiperf_tmpdir, env_file, "--dry-run")
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"promptkit: {message}\n")


def test_measure_reads_aiperf_export_and_says_what_is_missing(tmp_path: Path) -> None:
    """Every series is counted (one per endpoint and label set); a missing file or
    missing counters leave the rate null with the reason."""
    missing = bench.measure(tmp_path)
    assert missing["measured_hit_rate"] is None and ": missing" in missing["source"]

    def counter(*totals: float) -> dict[str, Any]:
        return {"type": "counter", "series": [{"labels": {"engine": str(i)},
                                               "stats": {"total": t}}
                                              for i, t in enumerate(totals)]}

    export = tmp_path / "server_metrics_export.json"
    export.write_text(json.dumps({"metrics": {
        "vllm:prefix_cache_hits": counter(30.0, 10.0),
        "vllm:prefix_cache_queries": counter(100.0, 60.0)}}))
    got = bench.measure(tmp_path)
    assert (got["measured_hits"], got["measured_queries"], got["measured_hit_rate"]) == (
        40, 160, 0.25)
    export.write_text(json.dumps({"metrics": {"vllm:num_requests_running": {"series": []}}}))
    got = bench.measure(tmp_path)
    assert got["measured_hit_rate"] is None and "no prefix-cache counters" in got["source"]


@pytest.mark.parametrize(("line", "value"), [
    ("A=plain", "plain"),
    ("export A = spaced out  ", "spaced out"),
    ("A=x # a comment", "x"),
    ("A=x#not-a-comment", "x#not-a-comment"),
    ("A='single # kept' # comment", "single # kept"),
    ('A="tab\\there \\"q\\""', 'tab\there "q"'),
    ("A=", ""),
    ('A=stop:"x",n:1', 'stop:"x",n:1'),
])
def test_env_file_values(line: str, value: str) -> None:
    assert bench.parse_env(f"# comment\n\n{line}\n") == {"A": value}


@pytest.mark.parametrize("text", ["no equals sign", "A='unterminated", 'A="x" trailing'])
def test_env_file_errors_name_the_line(text: str) -> None:
    with pytest.raises(bench.SettingError, match=r"^\.env:2: "):
        bench.parse_env(f"OK=1\n{text}\n")


def test_extra_inputs_become_typed_arguments() -> None:
    # Commas inside quotes and brackets do not split; spaces around items are dropped.
    assert bench.parse_extra_inputs(' k:"a,b", l:[1,2], m:{"n":[3,4]},') == [
        ("k", "a,b"), ("l", [1, 2]), ("m", {"n": [3, 4]})]
    assert bench.parse_extra_inputs('{"a": true, "b": "x"}') == [("a", True), ("b", "x")]
    typed = bench.parse_extra_inputs('a:true,b:1,c:0.5,d:x,e:"quoted",f:[1,"2"],j:null')
    assert typed == [("a", True), ("b", 1), ("c", 0.5), ("d", "x"), ("e", "quoted"),
                     ("f", [1, "2"]), ("j", None)]
    assert bench.extra_input_args(typed) == [
        "--extra-inputs", "a:true", "--extra-inputs", "b:1", "--extra-inputs", "c:0.5",
        "--extra-inputs", "d:x", "--extra-inputs", "e:quoted",
        "--extra-inputs", '{"f": [1, "2"]}', "--extra-inputs", '{"j": null}']
    with pytest.raises(bench.SettingError, match=r"^EXTRA_INPUTS: item 2 is not key:value "
                       r"\(not shown: it may hold a secret\)$"):
        bench.parse_extra_inputs("a:1,b")
    with pytest.raises(bench.SettingError, match="'a' given twice"):
        bench.parse_extra_inputs("a:1,a:2")


@pytest.mark.parametrize("value", ['"1"', '"true"', '"NULL"', '"-2.5"'])
def test_strings_aiperf_would_retype_are_refused(value: str, tmp_path: Path) -> None:
    """AIPerf 0.13 coerces every string value of --extra-inputs ("1" -> 1), in
    key:value and JSON form: the runner says so instead of sending another type."""
    env_file = write_env(tmp_path / ".env", MODEL="m", EXTRA_INPUTS=f"s:{value}")
    env = {k: v for k, v in os.environ.items() if k not in bench.SETTINGS}
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             str(env_file), "--dry-run"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"promptkit: EXTRA_INPUTS: s: the string {value} would not reach the server as a "
        "string")


def test_the_record_on_disk_hides_an_api_key() -> None:
    assert bench.redacted(["aiperf", "profile", "--api-key", "sk-1", "--api-key=sk-2",
                           "--model", "m"]) == [
        "aiperf", "profile", "--api-key", "***", "--api-key=***", "--model", "m"]


def test_an_env_file_that_is_a_device_is_one_line(tmp_path: Path, aiperf_tmpdir: Path) -> None:
    """--env-file /dev/zero is refused as a device (exit 2), not read until memory runs
    out nor called missing."""
    result = run_bench(tmp_path, aiperf_tmpdir, Path("/dev/zero"), "--dry-run")
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", "promptkit: /dev/zero: is a character device, not a .env file\n")
