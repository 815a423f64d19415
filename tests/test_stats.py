"""promptkit stats: counts, exact token statistics, shared system prompts."""

from __future__ import annotations

import json

import numpy as np
from helpers import mooncake_trace, read_jsonl, write_jsonl


def test_stats_of_the_example_match_tiktoken_counts(run, cl100k):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "prompts" / "trace.jsonl.example"
    result = run("stats", example, "--tokenizer", "cl100k_base", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    counts = [len(cl100k.encode_ordinary(r["text"])) for r in read_jsonl(example)]
    assert summary["records"] == summary["conversations"] == summary["turns"] == 20
    assert summary["prompt_tokens"] == {
        "total": sum(counts), "min": min(counts), "mean": round(float(np.mean(counts)), 2),
        "p50": int(np.percentile(counts, 50, method="nearest")),
        "p90": int(np.percentile(counts, 90, method="nearest")),
        "p99": int(np.percentile(counts, 99, method="nearest")),
        "max": max(counts),
    }
    first = {cl100k.encode_ordinary(r["text"])[0] for r in read_jsonl(example)}
    assert summary["distinct_first_tokens"] == len(first)


def test_stats_counts_sessions_and_shared_system_prompts(tmp_path, run, cl100k):
    system = "You are a helpful assistant."
    rows = [{"messages": [{"role": "system", "content": system},
                          {"role": "user", "content": f"question {i}"}]} for i in range(5)]
    rows.append({"messages": [{"role": "system", "content": "Other."},
                              {"role": "user", "content": "q"}]})
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    summary = json.loads(run("stats", source, "--tokenizer", "cl100k_base", "--json").stdout)
    assert summary["turns"] == 12
    assert summary["system_prompts"]["distinct"] == 2
    top = summary["system_prompts"]["most_shared"][0]
    assert top["records"] == 5 and top["tokens"] == len(cl100k.encode_ordinary(system))
    text = run("stats", source, "--tokenizer", "cl100k_base")
    assert "2 distinct, in 6 records" in text.stdout


def test_sessions_make_conversations(tmp_path, run):
    source = write_jsonl(tmp_path / "s.jsonl", [
        {"text": "a", "session_id": "x"}, {"text": "b", "session_id": "x"}, {"text": "c"}])
    summary = json.loads(run("stats", source, "--json").stdout)
    assert (summary["records"], summary["conversations"]) == (3, 2)
    assert "prompt_tokens" not in summary  # no tokenizer, no token figures


def test_a_hash_id_trace_states_its_own_lengths(run):
    trace = mooncake_trace("conversation")
    summary = json.loads(run("stats", trace, "--json").stdout)
    lengths = [r["input_length"] for r in read_jsonl(trace)]
    assert summary["prompt_tokens"]["total"] == sum(lengths)
    assert summary["prompt_tokens"]["max"] == max(lengths)


def test_stats_with_a_local_tokenizer_folder(tmp_path, run):
    from tokenizer_dir import build_tokenizer_dir

    from promptkit.tokenizers import load_tokenizer

    folder = build_tokenizer_dir(tmp_path / "tok")
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "the quick brown fox"}] * 3)
    summary = json.loads(run("stats", source, "--tokenizer", folder, "--json").stdout)
    n = len(load_tokenizer(str(folder)).encode("the quick brown fox"))
    assert summary["prompt_tokens"]["total"] == 3 * n


def test_unknown_tokenizer_is_one_line_exit_1(single_turn, run):
    result = run("stats", single_turn, "--tokenizer", "nope")
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("promptkit: unknown tokenizer 'nope'")
