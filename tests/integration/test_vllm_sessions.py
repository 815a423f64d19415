"""On the real vLLM engine: check predicts conversations and the system prompt AIPerf adds.

AIPerf 0.13 sends a ``multi_turn`` conversation one request a turn, each with
the whole history, the server's own replies included, and
``--system-prompt-file`` as a system message on every request. ``promptkit
check`` predicts both (``tests/cli/test_check_sessions.py`` pins the rules); here
the real ``aiperf profile`` sends the files to vLLM 0.32 (CPU build, tiny
random-weight Llama, block size 32; ``tests/vllm_engine.py``) and its
``/metrics`` counters are the truth.

What a reply re-tokenizes to is the one thing ``check`` cannot know. A trained
model's reply is ordinary text that comes back as the tokens it was generated
as; a random-weight model's is a string of arbitrary byte-level tokens that
re-tokenizes differently (usually into more tokens). So the runs are made
twice: with the model held to whole-word tokens (vLLM's ``allowed_token_ids``),
a stand-in for a trained model, where ``check``'s point prediction must be
exact; and with free random replies, where the server's hits must lie in the
range ``check`` gives.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiperf_tool
from vllm_engine import Counters, VllmServer, run_profile

from promptkit.core.tokenizers import load_tokenizer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "benchmark", "server",
         "prompt", "cache", "token", "block", "answer", "question"]
REPLY_TOKENS = 20


def promptkit(*args: str | Path) -> str:
    return subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                          capture_output=True, text=True).stdout


def check(path: Path, server: VllmServer, *args: str | Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(promptkit(
        "check", path, "--tokenizer", server.tokenizer, "--chat-template", "hf",
        "--block-size", str(server.block_size), "--json", *args))
    return report


def conversations(path: Path, n: int = 20, turns: int = 3, words: int = 60) -> Path:
    """``n`` conversations of ``turns`` user turns, each turn's reply REPLY_TOKENS long."""
    rng = random.Random(1)
    with path.open("w", encoding="utf-8") as f:
        for s in range(n):
            sent = [{"text": " ".join(rng.choice(WORDS) for _ in range(words)),
                     "output_length": REPLY_TOKENS} for _ in range(turns)]
            f.write(json.dumps({"session_id": f"s{s}", "turns": sent}) + "\n")
    return path


def whole_word_replies(server: VllmServer) -> list[str]:
    """AIPerf arguments that hold the model to tokens that are each a whole word with its
    space: any string of them re-tokenizes to the same ids."""
    tokenizer = load_tokenizer(str(server.tokenizer))
    vocab = json.loads((server.tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    ids = sorted(i for token, i in vocab.items()
                 if token.startswith("\u0120") and token[1:].isalpha()
                 and tokenizer.encode(" " + token[1:]) == [i])
    assert len(ids) > 20
    rng = random.Random(2)
    reply = [rng.choice(ids) for _ in range(50)]
    assert tokenizer.encode(tokenizer.decode(reply)) == reply
    return ["--extra-inputs", json.dumps({"allowed_token_ids": ids})]


def aiperf_args(path: Path) -> list[str]:
    return ["--input-file", str(path), "--custom-dataset-type", "multi_turn"]


def test_multi_turn_with_whole_word_replies_is_exact(vllm_server: VllmServer,
                                                     tmp_path: Path) -> None:
    path = conversations(tmp_path / "mt.jsonl")
    report = check(path, vllm_server)
    assert report["requests"] == 60  # one a turn, as AIPerf counts --request-count
    hits, queries, _ = run_profile(vllm_server, path, requests=60,
                                   output_tokens=REPLY_TOKENS,
                                   extra_args=[*aiperf_args(path),
                                               *whole_word_replies(vllm_server)])
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
    low, high = report["hit_rate_range"]
    assert high == report["hit_rate"] and high - low <= 0.05
    assert report["cross_conversation_hit_tokens"] == 0


def test_multi_turn_after_nonce_hits_only_its_own_history(vllm_server: VllmServer,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "nonced.jsonl"
    promptkit("nonce", conversations(tmp_path / "mt.jsonl"), path, "--seed", "1")
    report = check(path, vllm_server)
    hits, queries, _ = run_profile(vllm_server, path, requests=60,
                                   output_tokens=REPLY_TOKENS,
                                   extra_args=whole_word_replies(vllm_server))
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
    assert report["hit_rate"] > 0.4  # the history, sent again, hits
    assert report["cross_conversation_hit_rate"] == 0  # nothing from other conversations


def test_multi_turn_with_random_replies_hits_inside_the_range(vllm_server: VllmServer,
                                                              tmp_path: Path) -> None:
    """Free replies of a random-weight model (seeded: the same each run) re-tokenize into
    other tokens: their blocks may miss, the rest of the history hits."""
    path = conversations(tmp_path / "mt.jsonl")
    report = check(path, vllm_server)
    hits, queries, _ = run_profile(vllm_server, path, requests=60,
                                   output_tokens=REPLY_TOKENS,
                                   extra_args=[*aiperf_args(path), "--extra-inputs", "seed:0"])
    low, high = report["hit_tokens_range"]
    assert low <= hits <= high, (hits, queries, report)
    assert low < high
    # The replies came back longer than generated: more prompt tokens than predicted.
    assert queries >= report["prompt_tokens"]


def test_the_system_prompt_file_from_the_manifest_is_predicted(vllm_server: VllmServer,
                                                               tmp_path: Path) -> None:
    """pad --into file: AIPerf sends OUT.system.txt (named in the manifest) as a system
    message on every request; check applies the same manifest."""
    path = tmp_path / "padded.jsonl"
    promptkit("pad", Path(__file__).resolve().parents[2] / "prompts" / "trace.jsonl.example",
              path, "--tokens", "256", "--tokenizer", vllm_server.tokenizer, "--system-prompt",
              "You are a careful assistant.", "--into", "file", "--seed", "3")
    report = check(path, vllm_server)
    assert report["aiperf_args"]["source"] == "manifest"
    hits, queries, _ = run_profile(vllm_server, path, requests=20)
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
    assert report["hit_rate"] > 0.7
    bare = check(path, vllm_server, "--no-manifest")
    assert bare["hit_tokens"] < hits


def test_a_system_prompt_file_joins_a_files_own_system_message(vllm_server: VllmServer,
                                                               tmp_path: Path) -> None:
    """A chat file with system messages of its own: AIPerf puts the file's text first in
    that message (joined by a blank line), not in a second one."""
    path = tmp_path / "chat.jsonl"
    promptkit("synth", "prefix-test", path, "--groups", "4", "--group-size", "4",
              "--system-tokens", "100", "--tokenizer", vllm_server.tokenizer, "--seed", "5")
    nonced = tmp_path / "nonced.jsonl"
    promptkit("nonce", path, nonced, "--seed", "5")
    system = tmp_path / "system.txt"
    system.write_text("Answer in one word. " * 30, encoding="utf-8")
    report = check(nonced, vllm_server, "--system-prompt-file", system)
    assert report["aiperf_args"] == {"applied": ["--system-prompt-file", str(system)],
                                     "source": "option"}
    hits, queries, _ = run_profile(vllm_server, nonced, requests=16,
                                   extra_args=["--system-prompt-file", str(system)])
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
    assert hits > 0  # the nonce comes after the shared system text


def bench(server: VllmServer, settings: dict[str, Any], tmp_path: Path
          ) -> tuple[subprocess.CompletedProcess[str], Counters, Counters]:
    """``promptkit bench`` with ``settings`` as its .env file (none of them from the
    environment); its result and the server's counters before and after."""
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()), encoding="utf-8")
    before = server.counters()
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             env_file], capture_output=True, text=True, timeout=600,
                            env={k: v for k, v in os.environ.items() if k not in settings})
    return result, before, server.counters()


def test_bench_predicts_and_reads_back_what_vllm_measured(vllm_server: VllmServer,
                                                          tmp_path: Path) -> None:
    """promptkit bench, as a user runs it: check's prediction before the run, vLLM's own
    counters (as AIPerf exported them) after it, both in cache_condition.json."""
    path = tmp_path / "padded.jsonl"
    promptkit("pad", Path(__file__).resolve().parents[2] / "prompts" / "chat.jsonl.example",
              path, "--tokens", "256", "--tokenizer", vllm_server.tokenizer, "--groups", "2",
              "--seed", "5")
    artifacts = tmp_path / "artifacts"
    settings = {"MODEL": "tiny-llama", "URL": vllm_server.url, "TOKENIZER": vllm_server.tokenizer,
                "INPUT_FILE": path, "REQUEST_COUNT": 6, "RESET_CACHE": "vllm",
                "CHAT_TEMPLATE": "hf", "BLOCK_SIZE": vllm_server.block_size,
                "ARTIFACT_DIR": artifacts, "AIPERF": aiperf_tool.executable(),
                "AIPERF_ARGS": "--ui none --no-gpu-telemetry",
                "EXTRA_INPUTS": "ignore_eos:true,max_completion_tokens:2",
                "MAX_HIT_RATE": "0.2"}
    result, before, after = bench(vllm_server, settings, tmp_path)
    block = json.loads((artifacts / "cache_condition.json").read_text())["prefix_cache"]
    hits, queries = after.hits - before.hits, after.queries - before.queries
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries), block
    assert (block["predicted_hits"], block["predicted_queries"]) == (hits, queries), block
    assert block["measured_hit_rate"] > 0.2
    assert result.returncode == 3, result.stderr  # above MAX_HIT_RATE
    assert "as predicted" in result.stderr, result.stderr


def test_bench_puts_a_difference_in_later_turns_down_to_the_replies(vllm_server: VllmServer,
                                                                    tmp_path: Path) -> None:
    """Free random replies come back as other tokens than generated: vLLM counts more
    prompt tokens than check did, all of them in later turns. bench reads the server's
    count of each request from AIPerf's records and says so: the first requests of the
    conversations matched token for token, the replies made the difference."""
    path = conversations(tmp_path / "mt.jsonl", n=4)
    artifacts = tmp_path / "artifacts"
    settings = {"MODEL": "tiny-llama", "URL": vllm_server.url, "TOKENIZER": vllm_server.tokenizer,
                "INPUT_FILE": path, "RESET_CACHE": "vllm", "BLOCK_SIZE": vllm_server.block_size,
                "ARTIFACT_DIR": artifacts, "AIPERF": aiperf_tool.executable(),
                "AIPERF_ARGS": "--ui none --no-gpu-telemetry",
                "EXTRA_INPUTS": "ignore_eos:true,seed:0"}
    result, before, after = bench(vllm_server, settings, tmp_path)
    assert result.returncode == 0, result.stderr
    block = json.loads((artifacts / "cache_condition.json").read_text())["prefix_cache"]
    assert block["predicted_with"]["chat_template"] == "hf"  # the tokenizer's own
    measured, predicted = block["measured_turns"], block["predicted_turns"]
    # AIPerf's per-request records add up to vLLM's own counter of prompt tokens.
    assert (measured["first_requests"]["prompt_tokens"] + measured["later_turns"]["prompt_tokens"]
            == after.queries - before.queries == block["measured_queries"]), block
    assert measured["first_requests"] == predicted["first_requests"] == {
        "requests": 4, "prompt_tokens": measured["first_requests"]["prompt_tokens"]}
    assert measured["later_turns"]["requests"] == predicted["later_turns"]["requests"] == 8
    assert measured["later_turns"]["prompt_tokens"] != predicted["later_turns"]["prompt_tokens"]
    line = next(line for line in result.stderr.splitlines() if "prefix cache:" in line)
    assert (f"the first requests of conversations came to exactly the "
            f"{predicted['first_requests']['prompt_tokens']} prompt tokens check counted, their "
            f"later turns to {measured['later_turns']['prompt_tokens']} where it counted "
            f"{predicted['later_turns']['prompt_tokens']}: the server's replies, sent back in "
            "the history") in line, result.stderr
    assert "tokenizer" not in line and "chat template" not in line, line
