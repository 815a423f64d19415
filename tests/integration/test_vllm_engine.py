"""``promptkit check`` against a real vLLM engine: predicted hits are the measured hits.

The real ``aiperf profile`` sends promptkit's files to vLLM 0.32 (CPU build, a
tiny random-weight Llama, prefix caching, block size 32; ``tests/vllm_engine.py``
starts it once a session). vLLM's own counters are the truth: the hit tokens
and prompt tokens of each run must equal what ``promptkit check --json`` predicts
for the file, to the token. Without the engine these tests are skipped (a
failure when ``CI`` is set).

Eviction runs on a second server with 64 KV blocks: ``check --num-gpu-blocks 64``
and the ``VllmCache(num_gpu_blocks=64)`` under it (``promptkit/cache.py``, rule
pinned in ``tests/unit/test_cache_eviction.py``) must give its hits exactly, whatever
the number of groups, their order and the number of tokens each request generates
(they fill blocks too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vllm_engine import VllmServer, run_profile

from promptkit.text.cachesim import VllmCache

ROOT = Path(__file__).resolve().parents[2]
CHAT_EXAMPLE = ROOT / "prompts" / "chat.jsonl.example"


def promptkit(*args: str | Path | int) -> None:
    subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                   capture_output=True)


def check(server: VllmServer, path: Path, *args: str, requests: int,
          warmup: int = 0) -> dict[str, Any]:
    """``promptkit check --json`` for ``server``'s setup (tokenizer, hf template, block)."""
    out = subprocess.run(
        [sys.executable, "-m", "promptkit", "check", str(path), "--json",
         "--tokenizer", str(server.tokenizer), "--chat-template", "hf",
         "--block-size", str(server.block_size),
         "--requests", str(requests), "--warmup", str(warmup), *args],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def prefix_test(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synth prefix-test``'s default workload (16 groups x 8, 320-token system
    prompts), exact under the server's tokenizer: 128 requests in the file."""
    path = tmp_path_factory.mktemp("files") / "prefix-test.jsonl"
    promptkit("synth", "prefix-test", path, "--tokenizer", vllm_server.tokenizer, "--seed", "11")
    assert len(records(path)) == 128
    return path


def derive(source: Path, name: str, *args: str) -> Path:
    out = source.with_name(name)
    if not out.exists():
        promptkit(*args[:1], source, out, *args[1:])
    return out


# (case id, how the file is made from prefix-test.jsonl, requests, warmup)
CASES = [
    ("prefix-test", None, 128, 0),
    ("nonce-at-user", ("nonce", "--at", "user", "--seed", "1"), 128, 0),
    ("nonce-start-mooncake", ("nonce", "--to", "mooncake_trace", "--seed", "2"), 128, 0),
    ("nonce-salt-mooncake", ("nonce", "--at", "salt", "--to", "mooncake_trace", "--seed", "3"),
     128, 0),
    ("nonce-wraparound-200-of-128", ("nonce", "--seed", "4"), 200, 0),
    ("prefix-test-warmup", None, 112, 16),
]


@pytest.mark.parametrize(("make", "requests", "warmup"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_check_predicts_vllm_hits_exactly(vllm_server: VllmServer, prefix_test: Path,
                                          make: tuple[str, ...] | None, requests: int,
                                          warmup: int) -> None:
    path = prefix_test
    if make is not None:
        path = derive(prefix_test, "-".join(make).replace("--", "") + ".jsonl", *make)
    predicted = check(vllm_server, path, requests=requests, warmup=warmup)
    expected_hits, expected_prompt = predicted["hit_tokens"], predicted["prompt_tokens"]
    if warmup:  # the server counts the warmup requests too: the first `warmup` of the file
        alone = check(vllm_server, path, requests=warmup)
        expected_hits += alone["hit_tokens"]
        expected_prompt += alone["prompt_tokens"]
    hits, queries, _ = run_profile(vllm_server, path, requests=requests, warmup=warmup)
    print(f"{path.name}: check {expected_hits}/{expected_prompt}, vLLM {hits}/{queries}")
    assert queries == expected_prompt
    assert hits == expected_hits


def test_check_predicts_vllm_hits_of_padded_groups(vllm_server: VllmServer,
                                                   tmp_path: Path) -> None:
    """``pad --groups 2`` on the shipped chat example: two shared system prompts."""
    path = tmp_path / "padded.jsonl"
    promptkit("pad", CHAT_EXAMPLE, path, "--tokens", "200", "--tokenizer", vllm_server.tokenizer,
              "--groups", "2", "--seed", "5")
    requests = len(records(path))
    predicted = check(vllm_server, path, requests=requests)
    hits, queries, _ = run_profile(vllm_server, path, requests=requests)
    print(f"padded: check {predicted['hit_tokens']}/{predicted['prompt_tokens']}, "
          f"vLLM {hits}/{queries}")
    assert queries == predicted["prompt_tokens"]
    assert hits == predicted["hit_tokens"]


def chat_tokens(tokenizer: Path, path: Path) -> list[list[int]]:
    """Each record's prompt as vLLM tokenizes a chat request (the tokenizer's template,
    generation prompt, no extra special tokens), as ``check --chat-template hf`` does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    out = []
    for record in records(path):
        ids = tok.apply_chat_template(record["messages"], tokenize=True,
                                      add_generation_prompt=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


# (groups, order, generated tokens a request): 63 usable blocks, 12 a group's prompt.
EVICTION = [
    (4, "interleaved", 2),
    (5, "interleaved", 2),
    (6, "interleaved", 2),
    (8, "interleaved", 2),
    (6, "grouped", 2),
    (5, "interleaved", 40),
    (6, "interleaved", 40),
]


@pytest.mark.parametrize(("groups", "order", "output_tokens"), EVICTION,
                         ids=[f"{g}groups-{o}-{n}out" for g, o, n in EVICTION])
def test_check_predicts_eviction_exactly(vllm_small_server: VllmServer, tmp_path: Path,
                                         groups: int, order: str, output_tokens: int) -> None:
    """``check --num-gpu-blocks`` (and ``VllmCache(num_gpu_blocks=...)`` under it, fed
    the prompts as vLLM tokenizes them) give the small server's hits exactly."""
    server = vllm_small_server
    assert server.num_gpu_blocks is not None
    path = tmp_path / "prefix-test.jsonl"
    promptkit("synth", "prefix-test", path, "--groups", groups, "--group-size", "8",
              "--order", order, "--output-tokens", output_tokens,
              "--tokenizer", server.tokenizer, "--seed", "3")
    prompts = chat_tokens(server.tokenizer, path)
    predicted = check(server, path, "--num-gpu-blocks", str(server.num_gpu_blocks),
                      requests=len(prompts))
    cache = VllmCache(server.block_size, num_gpu_blocks=server.num_gpu_blocks)
    replayed = sum(cache.request(ids, output_tokens=output_tokens) for ids in prompts)
    hits, queries, _ = run_profile(server, path, requests=len(prompts),
                                   output_tokens=output_tokens)
    print(f"{groups} groups {order}, {output_tokens} out: check "
          f"{predicted['hit_tokens']}/{predicted['prompt_tokens']}, VllmCache {replayed}, "
          f"vLLM {hits}/{queries}")
    assert queries == predicted["prompt_tokens"] == sum(map(len, prompts))
    assert hits == predicted["hit_tokens"]
    assert hits == replayed
