"""Every line promptkit writes as an AIPerf type is one AIPerf 0.13 takes, and never an
empty request: a record that would make another is a bad record (one line and exit 1,
or skipped and counted with --skip-invalid), whichever writer would write it.

The rules are held to AIPerf's own pydantic models (``tests/aiperf_tool.py``): for a
few hundred lines of every shape the rules look at, each line promptkit would write
is one the model validates.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
from helpers import read_jsonl, write_jsonl

from promptkit.formats.accept import problem

MODELS = {"single_turn": "SingleTurn", "multi_turn": "MultiTurn",
          "random_pool": "RandomPool", "mooncake_trace": "MooncakeTrace"}

# The values each field takes in the generated lines, the right ones first, then the
# wrong ones a record can come with (empty texts, zero lengths, the wrong type, a
# Bailian 'type'); a field is absent (None) or right four times in five.
TURN_FIELDS = [
    ("text", ["Hi", None], ["", 7]),
    ("texts", [None, None, ["a", "b"], [{"name": "f", "contents": ["a"]}]],
     [[], [""], ["a", ""], [{"name": "f", "contents": []}],
      ["a", {"name": "f", "contents": ["b"]}]]),
    ("image", [None, None, "/tmp/cat.png"], []),
    ("output_length", [None, 1, 12], [0, -3, 2.5]),
    ("type", [None, "single_turn"], ["text", "mooncake_trace"]),
    ("timestamp", [None, 0, 5], []),
    ("delay", [None, 0, 3], []),
    ("session_id", [None, "s"], [4]),
    ("role", [None, "user"], [1]),
]
MESSAGES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}],
    [{"role": "user", "content": "Q"},
     {"role": "assistant", "content": None,
      "tool_calls": [{"id": "c", "type": "function",
                      "function": {"name": "f", "arguments": "{}"}}]}],
]
BAD_MESSAGES = [
    [{"role": "user", "content": ""}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": None}],
    [{"role": "user", "content": [{"type": "text", "text": ""}]}],
    [],
    [{"content": "no role"}],
]
#: A mooncake_trace line's input modes: one mostly, at times none, or two.
MOONCAKE_MODES = [
    ("input_length", [12], [0]),
    ("text_input", ["Hi"], [""]),
    ("messages", MESSAGES, BAD_MESSAGES),
    ("payload", [{"prompt": "P"}], [{}, {"messages": [{"role": "user", "content": ""}]}]),
]
MOONCAKE_FIELDS = [
    ("hash_ids", [None, None, [1, 2]], [[]]),
    ("tools", [None, None, [{"type": "function"}]], [[]]),
    ("output_length", [None, 1, 12], [0, -3, 2.5]),
    ("type", [None, "mooncake_trace"], ["text", "single_turn"]),
    ("session_id", [None, "s"], [4]),
]


def generated(rng: random.Random, fields: list[Any]) -> dict[str, Any]:
    """A line of ``fields``: each absent or right four times in five."""
    line = {}
    for key, right, wrong in fields:
        value = rng.choice(right if not wrong or rng.random() < 0.8 else wrong)
        if value is not None:
            line[key] = value
    return line


def lines_of(kind: str, rng: random.Random) -> list[dict[str, Any]]:
    if kind == "mooncake_trace":
        return [{**generated(rng, rng.sample(MOONCAKE_MODES, rng.choice([1] * 6 + [0, 2]))),
                 **generated(rng, MOONCAKE_FIELDS)} for _ in range(800)]
    turns = [generated(rng, TURN_FIELDS) for _ in range(800)]
    if kind == "multi_turn":
        return [{"turns": turns[i:i + rng.choice([0, 1, 1, 2])]} for i in range(0, 800, 2)]
    if kind == "random_pool":
        return [{k: v for k, v in line.items() if k in ("text", "texts", "image", "type")}
                for line in turns]
    return turns


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_line_the_rules_take_aiperf_takes(kind):
    """No line passes promptkit's rules that AIPerf's model refuses; the lines AIPerf
    takes and promptkit does not are empty requests (promptkit's stricter rule)."""
    lines = lines_of(kind, random.Random(23))
    answer = aiperf_tool.call("validate", model=MODELS[kind], rows=lines)["rows"]
    taken = [problem(kind, line) is None for line in lines]
    wrongly = [line for line, ok, got in zip(lines, taken, answer, strict=True)
               if ok and "error" in got]
    assert not wrongly, f"AIPerf's {MODELS[kind]} refuses lines promptkit writes: {wrongly[:3]}"
    # The sample holds both kinds, or it proves nothing.
    assert 20 < sum(taken) < len(lines) - 20
    stricter = {problem(kind, line) for line, ok, got in zip(lines, taken, answer, strict=True)
                if not ok and "error" not in got}
    assert stricter and all("empty" in reason or "no turns" in reason or "whole number" in reason
                            for reason in stricter), stricter


# ---------------------------------------------------------------- the writers refuse them

EMPTY_TEXT = [
    {"text": "What is a prefix cache?", "session_id": "s1"},
    {"text": "", "session_id": "s1"},  # continues s1: no nonce goes into it
    {"text": "Name a prime."},
]


def test_an_empty_prompt_stops_the_run_naming_its_line(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", EMPTY_TEXT)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "write", "--to", "single_turn", out)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {source}:2: cannot write as single_turn: 'text' is empty\n"
    assert sorted(tmp_path.iterdir()) == [source]


@pytest.mark.parametrize("chunks", ["one", "many"])
def test_the_splice_writer_refuses_an_empty_prompt_it_does_not_fill(tmp_path, run, chunks,
                                                                    request):
    """A nonce fills an empty text (the line is spliced); an empty text that gains no
    nonce (a conversation's later line) goes the usual way, which refuses it."""
    if chunks == "many":
        request.getfixturevalue("small_chunks")
    rows = [{"text": f"Question {i} about caches?", "session_id": f"s{i}"} for i in range(60)]
    rows[7] = {"text": "", "session_id": "new"}  # its first line: the nonce fills it
    rows[30] = {"text": "", "session_id": "s29"}  # a later line of s29: left empty
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "3")
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {source}:31: cannot write as single_turn: "
                             "'text' is empty\n")
    assert not out.exists()

    result = run("nonce", source, out, "--seed", "3", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    written = read_jsonl(out)
    assert len(written) == 59
    assert written[7]["text"].endswith("\n") and len(written[7]["text"]) == 37
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["output"]["writer"] == "splice/1"
    assert manifest["skipped"]["by_reason"] == {"cannot write as single_turn: 'text' is empty": 1}
    assert manifest["skipped"]["lines"] == ["31: cannot write as single_turn: 'text' is empty"]
    aiperf_tool.strict("SingleTurn", written)


def test_a_bailian_type_field_is_refused_in_a_mooncake_trace(tmp_path, run):
    """Bailian traces carry 'type' (text, search, ...): AIPerf reads a mooncake_trace
    line's 'type' as its dataset type and refuses the whole file for it. (Read as a
    bailian_trace, the line keeps it as its request type: tests/cli/test_bailian.py.)"""
    rows = [{"chat_id": 1, "parent_chat_id": -1, "timestamp": 0.5, "input_length": 40,
             "output_length": 8, "type": "text", "turn": 1, "hash_ids": [1, 2, 3]},
            {"input_length": 20, "output_length": 4, "hash_ids": [4, 5]}]
    source = write_jsonl(tmp_path / "trace.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--from", "mooncake_trace", "--seed", "1",
                 "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(out)) == 1
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    [reason] = manifest["skipped"]["by_reason"]
    assert reason.startswith("cannot write as mooncake_trace: 'type' is 'text'")
    answer = aiperf_tool.call("validate", model="MooncakeTrace", rows=rows[:1])["rows"]
    assert "error" in answer[0]


SENDABLE = [
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is vLLM?"}], "max_tokens": 9},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Look"}]}],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"messages": [{"role": "user", "content": "Hello"}]},
]
UNSENDABLE = [  # each line: what is wrong with it
    ({"messages": [{"role": "user", "content": ""}]}, "the last message (user) is empty"),
    ({"messages": [{"role": "user", "content": "Q"}], "tools": []},
     "'tools' is not a non-empty list"),
    ({"messages": [{"role": "system", "content": "S"},
                   {"role": "user", "content": [{"type": "text", "text": ""}]}]},
     "the last message (user) is empty"),
]


@pytest.mark.parametrize("fmt", ["single_turn", "multi_turn", "random_pool",
                                 "mooncake_trace", "openai"])
def test_every_output_format_holds_only_lines_aiperf_takes(tmp_path, run, fmt):
    rows = SENDABLE + [row for row, _ in UNSENDABLE]
    if fmt in ("single_turn", "random_pool"):  # one message a line
        rows = [{"messages": [m for m in row["messages"] if m["role"] == "user"]}
                for row in rows if "tools" not in row]
    if fmt == "random_pool":
        rows = [row for row in rows if "max_tokens" not in row]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--skip-invalid", source, "write", "--to", fmt, out)
    assert result.exit_code == 0, result.stderr
    written = read_jsonl(out)
    skipped = json.loads(Path(f"{out}.manifest.json").read_text())["skipped"]
    assert skipped["count"] == len(rows) - len(written) > 0
    assert all("empty" in reason or "tools" in reason for reason in skipped["by_reason"])
    model = MODELS.get(fmt, "MooncakeTrace")
    aiperf_tool.validate(model, written)
    # The lines left out are each one AIPerf refuses, or an empty request.
    for reason in skipped["by_reason"]:
        assert reason.startswith(f"cannot write as {fmt}: ")


@pytest.mark.parametrize(("row", "reason"), UNSENDABLE)
def test_an_openai_line_with_nothing_to_send_is_refused(tmp_path, run, row, reason):
    source = write_jsonl(tmp_path / "in.jsonl", [SENDABLE[0], row])
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "2", "--at", "salt")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:2: cannot write as openai: {reason}")
    assert not out.exists()


def test_the_shapes_generated_cover_every_rule():
    """Each rule of promptkit.formats.accept is met by some generated line (else the
    comparison with AIPerf above leaves it untested)."""
    rng = random.Random(23)
    reasons = {problem(kind, line) for kind in MODELS for line in lines_of(kind, rng)}
    words = ["'text' is empty", "'texts' is empty", "'texts' holds an empty text",
             "mixes strings and objects", "'contents'", "no text (nor", "'output_length'",
             "'type' is", "both set", "no turns", "not exactly one of", "'hash_ids' with",
             "'tools' with", "'tools' is not", "'input_length' is", "'text_input' is empty",
             "the last message", "'payload'", "is not an object with a 'role'",
             "'session_id' is int", "'role' is int"]
    missing = [w for w in words if not any(r and w in r for r in reasons)]
    assert not missing, missing


# ---------------------------------------------------------------- turns on real ShareGPT

#: ShareGPT as the public dumps have it (a JSON array): a conversation that starts with
#: the model's turn, empty human and gpt values, "conversations": [], a system turn
#: (one of them empty), an unanswered last question, LLaMA-Factory's tool calls.
WARTS = [
    {"id": "QWJhYvA_0", "conversations": [
        {"from": "gpt", "value": "Hello! How can I help you today?"},
        {"from": "human", "value": "How does a prefix cache decide what to evict?"},
        {"from": "gpt", "value": "Least recently used blocks go first."},
        {"from": "human", "value": ""},
        {"from": "gpt", "value": "Is there anything else?"},
        {"from": "human", "value": "Thanks, that is all."},
        {"from": "gpt", "value": "Glad to help."}]},
    {"id": "wVf3yfE_0", "conversations": []},
    {"id": "i6IyJda_0", "conversations": [
        {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": ""},
        {"from": "human", "value": "And 3+3?"},
        {"from": "gpt", "value": "6"}]},
    {"id": "bqZdfqw_0", "conversations": [
        {"from": "system", "value": ""},
        {"from": "human", "value": "Name a color."},
        {"from": "gpt", "value": "Blue."}]},
    {"id": "A5AbcES_0", "conversations": [
        {"from": "system", "value": "Answer in one word."},
        {"from": "human", "value": "Capital of France?"},
        {"from": "gpt", "value": "Paris."},
        {"from": "human", "value": "Of Italy?"}]},
    {"id": "x0cmfWd_0", "conversations": [
        {"from": "human", "value": ""},
        {"from": "gpt", "value": ""}]},
    {"conversations": [
        {"from": "human", "value": "Hi, I need a new password. Can you generate one for me?"},
        {"from": "gpt", "value": "Of course. How long would you like your password to be?"},
        {"from": "human", "value": "I would like it to be 12 characters long."},
        {"from": "function_call",
         "value": "{\"name\": \"generate_password\", \"arguments\": {\"length\": 12}}"},
        {"from": "observation", "value": "{\"password\": \"aBcD1234EfGh\"}"},
        {"from": "gpt", "value": "Here is your new password: aBcD1234EfGh."}],
     "system": "You are a helpful assistant with access to functions.",
     "tools": json.dumps([{"name": "generate_password", "description": "Make a password",
                           "parameters": {"type": "object", "properties": {
                               "length": {"type": "integer"}}, "required": ["length"]}}])},
    {"id": "Hy1GTzt_0", "conversations": [{"from": "gpt", "value": "I am here."}]},
]
WARTS_DROPPED = {
    "cut: a user message with no reply": 1,
    "dropped: empty system messages": 1,
    "dropped: exchanges whose reply is empty": 1,
    "dropped: exchanges whose user message is empty": 2,
    "dropped: replies before the first user message": 1,
    "skipped: every exchange empty": 1,
    "skipped: no user message": 1,
}
EMPTY_CONVERSATION = "sharegpt: an empty conversation ('conversations' is [])"


@pytest.mark.parametrize(("mode", "requests"), [("first", 5), ("each", 7), ("history", 5)])
def test_turns_of_real_sharegpt_sends_only_what_aiperf_takes(tmp_path, run, mode, requests):
    source = tmp_path / "sharegpt.json"
    source.write_text(json.dumps(WARTS, indent=1), encoding="utf-8")
    out = tmp_path / f"{mode}.jsonl"
    result = run("turns", source, out, "--mode", mode, "--tokenizer", "cl100k_base")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    info = manifest["steps"][0]["info"]
    assert info == {"conversations_read": 7, "requests": requests, "dropped": WARTS_DROPPED}
    assert manifest["skipped"]["by_reason"] == {EMPTY_CONVERSATION: 1}
    assert manifest["skipped"]["lines"] == [f"2: {EMPTY_CONVERSATION}"]
    rows = read_jsonl(out)
    assert len(rows) == 5
    if mode == "each":
        aiperf_tool.strict("MultiTurn", rows, kept={"id"})
        # AIPerf's loader: a request a user turn, a leading system turn the system prompt
        # (one with an 'extra', the tools, would be a request of its own).
        sent = aiperf_tool.conversations("multi_turn", out)
        assert [t["role"] for c in sent for t in c["turns"]] == ["user"] * requests
        assert [c["system_message"] for c in sent].count(None) == 3
        assert all(t["max_tokens"] >= 1 for c in sent for t in c["turns"])
    else:
        validated = aiperf_tool.strict("MooncakeTrace", rows, kept={"id"})
        assert all(v.values["output_length"] >= 1 for v in validated)
        assert all(row["messages"][-1]["role"] == "user" and row["messages"][-1]["content"]
                   for row in rows)
    assert not any(json.dumps(row).count('""') for row in rows)  # no empty text anywhere
    checked = run("check", out, "--tokenizer", "cl100k_base")
    assert checked.exit_code == 0, checked.stderr


def test_a_sharegpt_file_of_empty_conversations_writes_nothing(tmp_path, run):
    rows = [WARTS[1], WARTS[5], {"id": "e", "conversations": []}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = run("turns", source, out, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr == (
        "promptkit: turns: no requests from 1 record (1 dropped: exchanges whose user "
        "message is empty, 1 skipped: every exchange empty); nothing written\n")
    assert sorted(tmp_path.iterdir()) == [source]
    only_empty = write_jsonl(tmp_path / "empty.jsonl", [rows[0], rows[2]])
    result = run("turns", only_empty, out, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr == (
        f"promptkit: {only_empty}: no records to write (0 records read, 2 skipped; "
        f"commonest reason (2): {EMPTY_CONVERSATION}); nothing written\n")
    assert not out.exists()


def test_every_command_leaves_out_an_empty_conversation_and_counts_it(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", WARTS[:3])
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "4", "--to", "sharegpt")
    assert result.exit_code == 0, result.stderr
    assert [row["id"] for row in read_jsonl(out)] == ["QWJhYvA_0", "i6IyJda_0"]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["skipped"]["lines"] == [f"2: {EMPTY_CONVERSATION}"]
    assert f"commonest reason (1): {EMPTY_CONVERSATION}" in result.stderr
    stats = run("stats", source, "--json")
    assert stats.exit_code == 0, stats.stderr
    assert json.loads(stats.stdout)["skipped"]["count"] == 1


# ---------------------------------------------------------------- a step that cannot run


def test_pad_with_no_system_prompt_anywhere_stops_the_run(tmp_path, run):
    """--skip-invalid skips bad records; a pad that has no system prompt to pad in any
    record is no bad record but a step that cannot run: one line, exit 1, nothing
    written."""
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "QWJhYvA_0", "conversations": [
            {"from": "human", "value": "How does a prefix cache decide what to evict?"},
            {"from": "gpt", "value": "Least recently used blocks go first."}]},
        {"id": "i6IyJda_0", "conversations": [
            {"from": "gpt", "value": "Hello! How can I help you today?"},
            {"from": "human", "value": "What is 3+3?"}, {"from": "gpt", "value": "6"}]}])
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--skip-invalid", source, "turns", "--tokenizer",
                 "cl100k_base", "pad", "--tokens", "256", "--tokenizer", "cl100k_base",
                 "write", out)
    assert result.exit_code == 1
    assert result.stderr == (
        f"promptkit: {source}: no records to write (2 records read, 2 skipped; commonest "
        "reason (2): pad: no system message to pad; give --system-prompt or "
        "--system-prompt-file); nothing written\n")
    assert sorted(tmp_path.iterdir()) == [source]


@pytest.mark.parametrize("step", [["nonce", "--at", "user", "--seed", "1"],
                                  ["fit", "--tokens", "64", "--tokenizer", "cl100k_base"],
                                  ["hash-trace", "--tokenizer", "cl100k_base"]])
def test_a_step_that_takes_no_record_stops_the_run(tmp_path, run, step):
    """The same for every step: a trace of lengths has no user message for a nonce, no
    text to fit or hash."""
    source = write_jsonl(tmp_path / "trace.jsonl", [
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"timestamp": 9, "input_length": 90, "output_length": 7, "hash_ids": [2]}])
    out = tmp_path / "out.jsonl"
    if step[0] == "hash-trace":
        result = run("hash-trace", source, out, *step[1:], "--skip-invalid")
    else:
        result = run("pipe", "read", "--skip-invalid", source, *step, "write", out)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"promptkit: {source}: no records to write (2 records read, 2 skipped; commonest "
        f"reason (2): {step[0].replace('-', '_')}: ")
    assert len(result.stderr.splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == [source]


def test_a_leading_system_turn_stays_the_system_prompt_in_multi_turn(tmp_path, run):
    """A line's request fields and timing go on the turns AIPerf sends: on a leading
    system turn, AIPerf would send that turn as a request of its own."""
    source = write_jsonl(tmp_path / "trace.jsonl", [
        {"timestamp": 100, "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Why cache?"}],
         "extra": {"temperature": 0}, "session_id": "a"}])
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "write", "--to", "multi_turn", out)
    assert result.exit_code == 0, result.stderr
    [row] = read_jsonl(out)
    assert row["turns"] == [{"role": "system", "text": "Be brief."},
                            {"role": "user", "text": "Why cache?", "timestamp": 100,
                             "extra": {"temperature": 0}}]
    [sent] = aiperf_tool.conversations("multi_turn", out)
    assert sent["system_message"] == "Be brief."
    assert [(t["role"], t["timestamp"]) for t in sent["turns"]] == [("user", 100)]


# ---------------------------------------------------------------- no recorded answers unless asked

#: LLaMA-Factory's alpaca_en_demo.json shape: a JSON array, each row's output the reply.
ALPACA = [{"instruction": "Give three tips for staying healthy.", "input": "",
           "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep well."},
          {"instruction": "Translate to French.", "input": "Good morning",
           "output": "Bonjour"}]
#: An OpenAI fine-tuning file: every line ends with the answer.
FINE_TUNING = [{"messages": [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Capital of Japan?"},
                             {"role": "assistant", "content": "Tokyo."}]},
               {"messages": [{"role": "user", "content": "2+2?"},
                             {"role": "assistant", "content": "4"}]}]
REPLY = ("the conversation ends with a recorded reply (assistant), which AIPerf would send as "
         "the prompt's end; it holds recorded replies: 'promptkit turns IN OUT --mode "
         "first|each|history --tokenizer T' makes requests of it; or --keep-replies writes it "
         "as it is, --to sharegpt as a dataset")


def json_array(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


@pytest.mark.parametrize(("rows", "fmt"), [(ALPACA, "mooncake_trace"), (ALPACA, "openai"),
                                           (WARTS[6:7], "mooncake_trace"),
                                           (FINE_TUNING, "openai"),
                                           (FINE_TUNING, "mooncake_trace")])
def test_a_recorded_answer_is_not_written_as_a_request(tmp_path, run, rows, fmt):
    source = json_array(tmp_path / "in.json", rows)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "5", "--to", fmt)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {source}:1: cannot write as {fmt}: {REPLY}\n"
    assert sorted(tmp_path.iterdir()) == [source]


def test_keep_replies_writes_them_says_so_and_rebuilds(tmp_path, run):
    source = json_array(tmp_path / "alpaca.json", ALPACA)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "nonce", "--seed", "5", "write", "--keep-replies", out)
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert [row["messages"][-1] for row in rows] == [
        {"role": "assistant", "content": row["output"]} for row in ALPACA]
    aiperf_tool.strict("MooncakeTrace", rows)
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["output"]["format"] == "mooncake_trace"
    assert manifest["output"]["keep_replies"] is True
    [warning] = manifest["warnings"]
    assert warning.startswith("--keep-replies: a conversation that ends with a recorded reply")
    assert f"promptkit: warning: {warning}\n" in result.stderr
    again = tmp_path / "again.jsonl"
    rebuilt = run("rebuild", f"{out}.manifest.json", again)
    assert rebuilt.exit_code == 0, rebuilt.stderr
    assert again.read_bytes() == out.read_bytes()
    # The manifest is what decides: one that says false refuses them (a manifest that says
    # nothing was made before they were refused: tests/cli/test_arrow_batches.py rebuilds one).
    manifest["output"]["keep_replies"] = False
    Path(f"{out}.manifest.json").write_text(json.dumps(manifest))
    refused = run("rebuild", f"{out}.manifest.json", tmp_path / "third.jsonl")
    assert refused.exit_code == 1 and REPLY in refused.stderr


def test_skip_invalid_leaves_out_the_conversations_that_end_with_a_reply(tmp_path, run):
    rows = [*FINE_TUNING, {"messages": [{"role": "user", "content": "Name a prime."}]}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "5", "--skip-invalid", "--workers", "1")
    assert result.exit_code == 0, result.stderr
    assert [row["messages"][-1]["content"].split("\n")[-1] for row in read_jsonl(out)] == [
        "Name a prime."]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["skipped"]["by_reason"] == {f"cannot write as openai: {REPLY}": 2}
    assert manifest["output"]["keep_replies"] is False


# ---------------------------------------------------------------- the default output


def test_a_dataset_is_written_as_a_format_aiperf_loads_by_default(tmp_path, run):
    """LLaMA-Factory's glaive tool calls (a ShareGPT JSON array) were written as ShareGPT,
    which AIPerf does not load, and only the manifest said so."""
    source = json_array(tmp_path / "glaive_toolcall_en_demo.json", WARTS[6:7])
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "5")
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {source}:1: cannot write as mooncake_trace: {REPLY}\n"
    result = run("nonce", source, out, "--seed", "5", "--to", "sharegpt")
    assert result.exit_code == 0, result.stderr
    warning = ("AIPerf does not load sharegpt files: 'promptkit turns IN OUT --tokenizer T' "
               "makes requests of its conversations")
    assert f"promptkit: warning: {warning}\n" in result.stderr
    assert json.loads(Path(f"{out}.manifest.json").read_text())["warnings"] == [warning]


def test_prompt_lines_are_written_as_single_turn_by_default(tmp_path, run):
    source = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Why is the sky blue?",
                                                       "id": 1}, {"prompt": "Name a prime."}])
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "5")
    assert result.exit_code == 0, result.stderr
    assert "single_turn" in result.stderr and "warning" not in result.stderr
    rows = read_jsonl(out)
    aiperf_tool.strict("SingleTurn", rows, kept={"id"})
    assert [row["text"].split("\n")[1] for row in rows] == ["Why is the sky blue?",
                                                            "Name a prime."]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["output"]["format"] == manifest["aiperf"]["custom_dataset_type"] == (
        "single_turn")
