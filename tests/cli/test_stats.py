"""promptkit stats: counts, exact token statistics, shared system prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import mooncake_trace, read_jsonl, write_jsonl


def test_stats_of_the_example_match_tiktoken_counts(run, cl100k):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "prompts" / "trace.jsonl.example"
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
    assert summary["turns"] == summary["requests"] == 6  # the user messages, not the system
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

    from promptkit.core.tokenizers import load_tokenizer

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


EXAMPLES = Path(__file__).resolve().parents[2] / "prompts"


def _json(run, *args) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("template", ["none", "llama3.1", "chatml"])
@pytest.mark.parametrize("name", ["trace.jsonl.example", "chat.jsonl.example",
                                  "sharegpt-sample.json", "toolcall-sample.json"])
def test_stats_counts_the_prompt_tokens_check_sends(tmp_path, run, name, template):
    """A record that is one request (single_turn; openai with a system message; sharegpt
    and tool calls, sent verbatim): stats' figures are check's, request by request."""
    path = EXAMPLES / name
    common = ("--tokenizer", "cl100k_base", "--chat-template", template)
    stats = _json(run, "stats", path, *common)
    rows_path = tmp_path / "rows.jsonl"
    check = _json(run, "check", path, *common, "--no-manifest", "--per-request", rows_path)
    lengths = [row["prompt_tokens"] for row in read_jsonl(rows_path)]
    assert stats["requests"] == check["requests"] == stats["records"] == len(lengths)
    assert stats["conversations"] == check["conversations"]
    figures = stats["prompt_tokens"]
    assert figures["total"] == check["prompt_tokens"] == sum(lengths)
    assert (figures["min"], figures["max"]) == (min(lengths), max(lengths))
    assert stats["chat_template"] == template


def hoisted_system_conversations(tmp_path: Path) -> Path:
    """multi_turn conversations with a system turn AIPerf sends on every turn, and turns
    with no output_length."""
    return write_jsonl(tmp_path / "mt.jsonl", [
        {"session_id": f"s{i}", "turns": [
            {"role": "system", "text": "You answer in one line."},
            {"text": f"Question {i}: what is a prefix cache?", "output_length": 12},
            {"text": "And why does the last token never hit?"}]} for i in range(4)])


@pytest.mark.parametrize("name", ["conversations.jsonl.example", "hoisted"])
def test_a_conversations_prompt_tokens_are_its_turns_without_the_replies(tmp_path, run, name):
    """multi_turn: a request a turn, each with the history. Under no template the last
    turn's prompt is the conversation's turns plus the replies before it (each exactly its
    length), so stats' total is check's last turns less those replies."""
    path = (hoisted_system_conversations(tmp_path) if name == "hoisted"
            else EXAMPLES / name)
    reply = 20  # for turns without output_length
    stats = _json(run, "stats", path, "--tokenizer", "cl100k_base")
    rows_path = tmp_path / "rows.jsonl"
    check = _json(run, "check", path, "--tokenizer", "cl100k_base", "--reply-tokens", reply,
                  "--per-request", rows_path)
    conversations = read_jsonl(path)
    for c in conversations:  # the system turn AIPerf hoists is not a request
        c["turns"] = [t for t in c["turns"] if t.get("role") != "system"]
    turns = sum(len(c["turns"]) for c in conversations)
    assert stats["requests"] == check["requests"] == stats["turns"] == turns
    assert stats["records"] == stats["conversations"] == check["conversations"]
    last = {}
    for row in read_jsonl(rows_path):
        last[row["record"]] = row["prompt_tokens"]
    replies = sum(t.get("output_length", reply) for c in conversations for t in c["turns"][:-1])
    assert stats["prompt_tokens"]["total"] == sum(last.values()) - replies


def test_turns_are_user_messages_and_requests_what_aiperf_sends(run):
    path = EXAMPLES / "sharegpt-sample.json"
    stats = _json(run, "stats", path)
    conversations = json.loads(path.read_text())
    assert stats["requests"] == len(conversations)
    assert stats["turns"] == sum(m["from"] == "human" for c in conversations
                                 for m in c["conversations"])


def test_records_without_text_are_named_not_counted_as_zero(tmp_path, run):
    images = write_jsonl(tmp_path / "images.jsonl", [
        {"image": f"http://127.0.0.1/{i}.png"} for i in range(3)])
    result = run("stats", images, "--from", "single_turn", "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"promptkit: {images}: no prompt text found in 3 records (lines 1, 2, 3), read as "
        "single_turn: "
        "their messages hold no text (empty, media only, or the text under a key "
        "single_turn does not read: give --from FORMAT or --text-column KEY)"]
    # without a tokenizer nothing is counted: a warning, and the other figures
    result = run("stats", images, "--from", "single_turn")
    assert result.exit_code == 0
    assert "records                3" in result.stdout
    assert result.stderr.startswith("promptkit: warning: no prompt text found in 3 records")
    # some records with text: counted, the others named and left out
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [
        {"text": "hello there"}, {"text": ""}, {"text": "general kenobi"}])
    result = run("stats", mixed, "--tokenizer", "cl100k_base", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["no_prompt_text"] == {"records": 1, "lines": [2]}
    assert summary["prompt_tokens"]["min"] > 0
    assert summary["prompt_tokens"]["total"] == _json(
        run, "stats", write_jsonl(tmp_path / "kept.jsonl", [{"text": "hello there"},
                                                           {"text": "general kenobi"}]),
        "--tokenizer", "cl100k_base")["prompt_tokens"]["total"]
    assert result.stderr.splitlines() == [
        "promptkit: warning: no prompt text found in 1 of 3 records (line 2), read as "
        "single_turn: their messages hold no text (empty, media only, or the text under a "
        "key single_turn does not read: give --from FORMAT or --text-column KEY); left out "
        "of the token figures"]


def test_a_hash_id_trace_names_where_its_figures_come_from(run):
    trace = mooncake_trace("conversation")
    result = run("stats", trace)
    assert result.exit_code == 0, result.stderr
    assert "None" not in result.stdout
    [line] = [x for x in result.stdout.splitlines() if "prompt tokens" in x]
    assert line.endswith("(input_length)")
    assert "distinct first tokens" not in result.stdout  # no token is known
    result = run("stats", trace, "--tokenizer", "cl100k_base")
    assert result.exit_code == 0, result.stderr
    assert "(input_length)" in result.stdout and "None" not in result.stdout
    assert result.stderr == ("promptkit: warning: --tokenizer cl100k_base was not used: the "
                             "trace states each record's prompt tokens (input_length)\n")


def test_a_chat_template_needs_a_tokenizer(run):
    result = run("stats", EXAMPLES / "chat.jsonl.example", "--chat-template", "chatml")
    assert result.exit_code == 2
    assert "--chat-template needs --tokenizer" in result.stderr
