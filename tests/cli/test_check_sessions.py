"""promptkit check predicts what AIPerf sends: conversations, replies, system prompts.

AIPerf 0.13 sends a ``multi_turn`` conversation one request a turn, each with
the whole history (earlier user turns and the server's replies); lines sharing
a ``session_id`` are sent in a row; ``--system-prompt-file`` puts a system
message on every request. These tests pin how ``check`` counts each of those,
on figures the tests work out from the tokenizer, not from ``check`` itself.
The real engine proves the same end to end (``tests/integration/test_vllm_engine.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima"]


def conversation(seed: int, turns: int = 3, words: int = 40,
                 output_length: int | None = 20) -> list[dict]:
    out = []
    for t in range(turns):
        text = " ".join(WORDS[(seed * 7 + t * 3 + i * i) % len(WORDS)] for i in range(words))
        turn = {"text": f"{seed}-{t} {text}"}
        if output_length is not None:
            turn["output_length"] = output_length
        out.append(turn)
    return out


def multi_turn(path: Path, n: int, **kwargs) -> Path:
    return write_jsonl(path, [{"session_id": f"s{i}", "turns": conversation(i, **kwargs)}
                              for i in range(n)])


def check_json(run, *args) -> dict:
    result = run("check", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_multi_turn_conversation_is_one_request_a_turn_with_its_history(tmp_path, run,
                                                                          cl100k):
    source = multi_turn(tmp_path / "mt.jsonl", 4)
    report = check_json(run, source, "--tokenizer", "cl100k_base", "--chat-template", "chatml")
    assert (report["records"], report["conversations"], report["requests"]) == (4, 4, 12)
    # Within each conversation, later turns send the earlier ones again: they hit.
    assert report["within_conversation_hit_tokens"] > 0
    assert report["cross_conversation_hit_tokens"] == 0
    assert report["hit_tokens"] == report["within_conversation_hit_tokens"]
    # Each request's prompt holds every earlier turn: at least the turns' own tokens.
    turn_tokens = [[len(cl100k.encode(t["text"])) for t in conversation(i)] for i in range(4)]
    least = sum(sum(tokens[:k + 1]) for tokens in turn_tokens for k in range(3))
    assert report["prompt_tokens"] >= least + 4 * (20 + 2 * 20)  # plus the replies


def test_each_reply_sent_back_has_the_turns_output_length(tmp_path, run):
    """A reply of N tokens adds N tokens to every later request of its conversation: turn
    2 carries one reply and turn 3 two, so 3 a conversation."""
    totals = {}
    for n in (10, 30):
        source = multi_turn(tmp_path / f"mt{n}.jsonl", 5, output_length=n)
        totals[n] = check_json(run, source, "--tokenizer", "cl100k_base")["prompt_tokens"]
    assert totals[30] - totals[10] == 5 * 3 * (30 - 10)


def test_the_reply_length_comes_from_the_option_when_turns_have_none(tmp_path, run):
    source = multi_turn(tmp_path / "mt.jsonl", 2, output_length=None)
    result = run("check", source, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: "
                             f"{source}:1: turn 1 has no output_length: the server's reply, "
                             "which AIPerf sends in the next turn's history, has unknown "
                             "length; give --reply-tokens N (the replies' length)\n")
    given = check_json(run, source, "--tokenizer", "cl100k_base", "--reply-tokens", "20")
    counted = check_json(run, multi_turn(tmp_path / "mt20.jsonl", 2), "--tokenizer",
                         "cl100k_base")
    assert given["prompt_tokens"] == counted["prompt_tokens"]


def test_the_same_conversations_twice_hit_across_conversations(tmp_path, run):
    rows = [{"session_id": f"s{i}", "turns": conversation(i % 3)} for i in range(6)]
    report = check_json(run, write_jsonl(tmp_path / "mt.jsonl", rows), "--tokenizer",
                        "cl100k_base")
    assert report["cross_conversation_hit_tokens"] > 0
    assert report["within_conversation_hit_tokens"] > 0
    assert (report["cross_conversation_hit_tokens"] + report["within_conversation_hit_tokens"]
            == report["hit_tokens"])
    # The nonce removes exactly the hits across conversations.
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", tmp_path / "mt.jsonl", nonced, "--seed", "1").exit_code == 0
    after = check_json(run, nonced, "--tokenizer", "cl100k_base")
    assert after["cross_conversation_hit_tokens"] == 0
    assert after["within_conversation_hit_tokens"] > 0


def test_the_range_is_as_wide_as_the_replies_blocks(tmp_path, run):
    """The point prediction takes each reply to come back as the server generated it
    (its blocks hit); the low end takes none of the reply's tokens to match."""
    source = multi_turn(tmp_path / "mt.jsonl", 3, output_length=40)
    report = check_json(run, source, "--tokenizer", "cl100k_base", "--block-size", "16")
    low, high = report["hit_tokens_range"]
    assert high == report["hit_tokens"]
    assert low < high
    # At most the blocks a reply reaches into, for each request that sends one back.
    assert high - low <= 6 * ((40 + 16 - 1) // 16 + 1) * 16
    assert report["hit_rate_range"] == [round(low / report["prompt_tokens"], 6),
                                        round(high / report["prompt_tokens"], 6)]


def test_requests_and_warmup_count_turns_in_the_order_aiperf_sends_them(tmp_path, run):
    """The warmup (2 turns of conversation 1) draws conversation 2 as it starts
    conversation 1 and leaves conversation 1 unfinished: the profiled requests begin
    with the next conversation it did not draw, 1 again (the real AIPerf's order is held
    to this in tests/integration/test_cache_bust.py)."""
    source = multi_turn(tmp_path / "mt.jsonl", 2)
    lines = tmp_path / "per.jsonl"
    result = run("check", source, "--tokenizer", "cl100k_base", "--requests", "5",
                 "--warmup", "2", "--per-request", lines)
    assert result.exit_code == 0, result.stderr
    sent = [(row["record"], row["turn"]) for row in read_jsonl(lines)]
    assert sent == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]


def test_lines_sharing_a_session_are_sent_in_a_row(tmp_path, run):
    source = write_jsonl(tmp_path / "st.jsonl", [
        {"text": "first question about the weather", "session_id": "a"},
        {"text": "a question of its own"},
        {"text": "second question about the weather", "session_id": "a"},
        {"text": "another", "session_id": "b"},
    ])
    lines = tmp_path / "per.jsonl"
    result = run("check", source, "--tokenizer", "cl100k_base", "--per-request", lines)
    assert result.exit_code == 0, result.stderr
    assert [row["record"] for row in read_jsonl(lines)] == [1, 3, 2, 4]


def test_a_system_prompt_aiperf_adds_is_checked(tmp_path, run, cl100k):
    prompt = tmp_path / "system.txt"
    prompt.write_text("You are a careful assistant. " * 20, encoding="utf-8")
    source = write_jsonl(tmp_path / "st.jsonl",
                         [{"text": f"{i} question number {i}"} for i in range(8)])
    bare = check_json(run, source, "--tokenizer", "cl100k_base", "--chat-template", "chatml")
    added = check_json(run, source, "--tokenizer", "cl100k_base", "--chat-template", "chatml",
                       "--system-prompt-file", prompt)
    assert bare["hit_tokens"] == 0 and bare["aiperf_args"]["applied"] == []
    assert added["aiperf_args"] == {"applied": ["--system-prompt-file", str(prompt)],
                                    "source": "option"}
    # Every request after the first hits the system prompt's full blocks.
    assert added["requests_with_hits"] == 7
    assert added["hit_tokens_per_request"]["min"] == 0
    full_blocks = len(cl100k.encode(prompt.read_text())) // 16 * 16
    assert added["hit_tokens_per_request"]["max"] >= full_blocks


def test_the_files_manifest_supplies_the_system_prompt_file(tmp_path, run):
    padded = tmp_path / "padded.jsonl"
    result = run("pad", write_jsonl(tmp_path / "in.jsonl",
                                    [{"text": f"{i} question number {i}"} for i in range(8)]),
                 padded, "--tokens", "256", "--tokenizer", "cl100k_base", "--system-prompt",
                 "You are a helpful assistant.", "--into", "file", "--seed", "7")
    assert result.exit_code == 0, result.stderr
    system_file = tmp_path / "padded.jsonl.system.txt"
    by_manifest = check_json(run, padded, "--tokenizer", "cl100k_base")
    by_option = check_json(run, padded, "--tokenizer", "cl100k_base", "--system-prompt-file",
                           system_file)
    assert by_manifest["aiperf_args"]["source"] == "manifest"
    assert by_manifest["aiperf_args"]["applied"][0] == "--system-prompt-file"
    for key in ("prompt_tokens", "hit_tokens"):
        assert by_manifest[key] == by_option[key]
    assert by_manifest["hit_rate"] > 0.5
    without = check_json(run, padded, "--tokenizer", "cl100k_base", "--no-manifest")
    assert without["hit_tokens"] < by_manifest["hit_tokens"]
    text = run("check", padded, "--tokenizer", "cl100k_base")
    assert "AIPerf arguments       --system-prompt-file" in text.stdout
    # A manifest that no longer matches its file is not applied, and the report says so.
    with padded.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    changed = run("check", padded, "--tokenizer", "cl100k_base")
    assert changed.exit_code == 0
    assert "does not match the file" in changed.stderr and "not applied" in changed.stderr


def test_guards_on_the_rate_across_conversations_and_the_total(tmp_path, run):
    source = tmp_path / "nonced.jsonl"
    assert run("nonce", multi_turn(tmp_path / "mt.jsonl", 4), source,
               "--seed", "1").exit_code == 0
    fine = run("check", source, "--tokenizer", "cl100k_base", "--max-hit-rate", "0")
    assert fine.exit_code == 0, fine.stderr
    total = run("check", source, "--tokenizer", "cl100k_base", "--max-total-hit-rate", "0.1")
    assert total.exit_code == 1
    assert total.stderr.startswith(f"promptkit: {source}: predicted total hit rate ")
    assert total.stderr.endswith(" is above --max-total-hit-rate 10.00%\n")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_engines_count_hit_tokens_on_hash_id_traces(tmp_path, run, engine):
    """One id a block of 512 tokens, for both engines (SGLang once counted ids)."""
    source = write_jsonl(tmp_path / "t.jsonl", [
        {"input_length": 1100, "hash_ids": [1, 2, 3]},
        {"input_length": 1100, "hash_ids": [1, 2, 4]},
    ])
    report = check_json(run, source, "--engine", engine)
    assert report["hit_tokens"] == 1024


@pytest.mark.parametrize(("engine", "hit"), [("vllm", 1024), ("sglang", 1099)])
def test_a_salted_hash_id_trace_with_a_capacity(tmp_path, run, engine, hit):
    """vLLM hits the full blocks of a repeated prompt; SGLang all but its last token."""
    source = write_jsonl(tmp_path / "t.jsonl", [
        {"input_length": 1100, "hash_ids": [1, 2, 3], "extra": {"cache_salt": "a"}},
        {"input_length": 1100, "hash_ids": [1, 2, 3], "extra": {"cache_salt": "b"}},
        {"input_length": 1100, "hash_ids": [1, 2, 3], "extra": {"cache_salt": "a"}},
    ])
    report = check_json(run, source, "--engine", engine, "--capacity-tokens", "100000")
    assert report["hit_tokens"] == hit  # only the third request, the first one's salt
    tight = check_json(run, source, "--engine", engine, "--capacity-tokens", "1024")
    assert tight["hit_tokens"] == 0  # two ids of room: "b" pushed "a" out


def test_a_salt_aiperf_does_not_send_is_not_counted(tmp_path, run):
    """AIPerf loads OpenAI chat lines as mooncake_trace and sends only their messages: a
    cache_salt on such a line never reaches the server."""
    rows = [{"messages": [{"role": "user", "content": "the same question " * 20}],
             "cache_salt": f"s{i}"} for i in range(3)]
    openai = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = run("check", openai, "--tokenizer", "cl100k_base", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input"]["format"] == "openai"
    assert report["salts_not_sent"] == 3
    assert report["requests_with_hits"] == 2  # as if unsalted: the repeats hit
    assert "AIPerf does not send from this format" in report["warning_salts"]
    text = run("check", openai, "--tokenizer", "cl100k_base")
    assert ("promptkit: warning: 3 records have a cache_salt that AIPerf does not send from "
            "this format") in text.stderr
    trace = tmp_path / "trace.jsonl"
    assert run("pipe", "read", openai, "write", "--to", "mooncake_trace",
               trace).exit_code == 0
    sent = check_json(run, trace, "--tokenizer", "cl100k_base")
    assert sent["hit_tokens"] == 0 and "salts_not_sent" not in sent


@pytest.mark.parametrize("fmt", ["multi_turn", "single_turn"])
def test_a_pipe_check_stage_predicts_what_check_predicts_of_the_written_file(fmt, tmp_path,
                                                                              run):
    """The stage sees the records as the file holds them: conversations a request a turn,
    each turn's reply length, lines of a session in a row."""
    source = multi_turn(tmp_path / "mt.jsonl", 6)
    if fmt == "single_turn":  # the same turns as lines sharing a session_id
        source = write_jsonl(tmp_path / "st.jsonl", [
            {**turn, "session_id": f"s{i}"} for i in range(6) for turn in conversation(i)])
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "check", "--tokenizer", "cl100k_base", "write", out)
    assert result.exit_code == 0, result.stderr
    staged = json.loads(Path(f"{out}.manifest.json").read_text())["steps"][0]["info"]["summary"]
    report = check_json(run, out, "--tokenizer", "cl100k_base")
    assert staged["requests"] == report["requests"] == 18
    for key in ("hit_tokens", "prompt_tokens", "within_conversation_hit_tokens",
                "conversations", "hit_rate_range"):
        assert staged[key] == report[key], key
