"""promptkit hash-trace: text records into a trace of chained, remapped block ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import test_aiperf_profile
from helpers import read_jsonl, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_server import OpenAIServer
from test_aiperf_profile import run_aiperf
from tokenizer_dir import build_tokenizer_dir

from promptkit.core.records import Message, Record
from promptkit.ops.check import CheckOptions, check_records
from promptkit.ops.hashtrace import hash_trace_records

aiperf_tmpdir = test_aiperf_profile.aiperf_tmpdir  # the shared AIPerf temp-folder fixture

WORDS = ["alpha", "beta", "gamma", "delta", " ", "\n", "東京", "🙂", "x1", "the", "cat"]
prompts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=120).map(" ".join)


def records_of(texts: list[str], salts: list[str | None] | None = None) -> list[Record]:
    out = []
    for i, text in enumerate(texts):
        salt = salts[i] if salts else None
        out.append(Record(messages=[Message("user", text)], index=i, lineno=i + 1,
                          extra={"cache_salt": salt} if salt else None))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stems=st.lists(prompts, min_size=1, max_size=4),
       picks=st.lists(st.tuples(st.integers(0, 3), prompts), min_size=1, max_size=12),
       block=st.integers(1, 24), which=st.sampled_from(["cl100k_base", "local_bpe"]),
       salted=st.booleans())
def test_check_gives_text_and_its_hash_trace_the_same_hit_rate(stems, picks, block, which,
                                                                salted, tokenizers):
    # records that share stems, so prefixes are shared at many lengths
    texts = [stems[i % len(stems)] + tail for i, tail in picks]
    salts = [("s" + str(i % 2)) if salted else None for i, _ in picks]
    tok = tokenizers[which]
    spec = "cl100k_base" if which == "cl100k_base" else tok.name
    options = CheckOptions(block_size=block)
    from_text = check_records(records_of(texts, salts), options=options, tokenizer=tok,
                              tokenizer_spec=spec)
    traced = list(hash_trace_records(records_of(texts, salts), tokenizer=spec,
                                     block_size=block))
    from_ids = check_records(traced, options=CheckOptions(block_size=block,
                                                          hash_block_size=block))
    assert from_ids.summary()["hit_tokens"] == from_text.summary()["hit_tokens"]
    assert from_ids.summary()["prompt_tokens"] == from_text.summary()["prompt_tokens"]
    for record, text in zip(traced, texts, strict=True):
        assert record.input_length == len(tok.encode(text))
        assert len(record.hash_ids) == -(-record.input_length // block)


def test_ids_are_shared_exactly_with_the_leading_blocks(tokenizers):
    tok = tokenizers["cl100k_base"]
    base = "one two three four five six seven eight nine ten eleven twelve"
    texts = [base, base + " more words here", "zero " + base]
    traced = list(hash_trace_records(records_of(texts), tokenizer="cl100k_base", block_size=4))
    first, second, third = (r.hash_ids for r in traced)
    full = len(tok.encode(base)) // 4
    assert second[:full] == first[:full]
    assert not set(third) & set(first)  # differs at the first token: no id in common
    assert first[0] == 0 and sorted(set(first + second + third)) == list(
        range(len(set(first + second + third))))  # small integers, in order of appearance


def test_the_cli_keeps_no_text_and_times_the_records(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"text": "Secret customer prompt number one.", "output_length": 30},
        {"text": "Secret customer prompt number two.", "timestamp": 9000},
    ])
    out = tmp_path / "trace.jsonl"
    result = run("hash-trace", source, out, "--tokenizer", "cl100k_base", "--block-size", "4",
                 "--rate", "4")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [r["timestamp"] for r in rows] == [0, 9000]
    assert rows[0]["output_length"] == 30
    everything = out.read_text() + Path(f"{out}.manifest.json").read_text()
    assert "Secret" not in everything and "customer" not in everything
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["output"]["format"] == "mooncake_trace"
    assert manifest["steps"][0]["params"]["block_size"] == 4


def test_bad_hash_trace_input(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"input_length": 5, "hash_ids": [1]}])
    result = run("hash-trace", source, tmp_path / "o.jsonl", "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(":1: a record with no text (already a hash-id "
                                          "record?)")
    usage = run("hash-trace", source, tmp_path / "o.jsonl", "--tokenizer", "cl100k_base",
                "--block-size", "0")
    assert usage.exit_code == 2 and "--block-size" in usage.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.fixture
def openai_server():
    with OpenAIServer(model="test-model") as server:
        yield server


def test_aiperf_profile_loads_the_hash_trace(tmp_path, openai_server, aiperf_tmpdir):
    """The real AIPerf loads the trace as mooncake_trace and sends a request a line."""
    tokenizer = build_tokenizer_dir(tmp_path / "tok")
    example = Path(__file__).resolve().parents[2] / "prompts" / "chat.jsonl.example"
    trace = tmp_path / "trace.jsonl"
    subprocess.run([sys.executable, "-m", "promptkit", "hash-trace", str(example), str(trace),
                    "--tokenizer", str(tokenizer), "--block-size", "16"],
                   check=True, capture_output=True)
    bodies = run_aiperf(tmp_path, openai_server, aiperf_tmpdir, trace, 6, tokenizer)
    assert len(bodies) == 6
