"""`promptkit turns`: recorded conversations (ShareGPT, tool calls, alpaca) become the
requests a benchmark sends, with each request's output_length the recorded reply's
tokens; the outputs validate strictly with AIPerf's own models.

The fixtures have the shapes the public files have: ShareGPT_V3 lines (``id``,
``conversations`` of human/gpt turns, some starting with a gpt turn, some with no
human turn, some ending on an unanswered human turn), LLaMA-Factory's tool-call
ShareGPT (``function_call``/``observation`` turns, ``tools`` as a JSON string of bare
function schemas, a ``system`` key) and alpaca rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiperf_tool import strict
from helpers import read_jsonl, write_jsonl

SHAREGPT = [
    {"id": "QWJhYvA_0", "conversations": [
        {"from": "human", "value": "Summarize the main ideas of Jeff Walker's Product Launch "
                                   "Formula into bullet points as it pertains to a growth "
                                   "marketing agency implementing these strategies."},
        {"from": "gpt", "value": "Here are the main ideas of Jeff Walker's Product Launch "
                                 "Formula:\n\n1. Pre-launch: build anticipation.\n2. Launch: "
                                 "open the cart for a limited time."},
        {"from": "human", "value": "Summarize the main ideas of Brendon Burchard's "
                                   "Experts Academy into bullet points."},
        {"from": "gpt", "value": "1. Identify your expertise.\n2. Package it."},
        {"from": "human", "value": "What are the mental triggers?"},
        {"from": "gpt", "value": "Scarcity, authority, social proof."},
    ]},
    {"id": "i6IyJda_0", "conversations": [  # starts with the model's turn (a third do)
        {"from": "gpt", "value": "Hello! How can I help you today?"},
        {"from": "human", "value": "How does a prefix cache decide what to evict?"},
        {"from": "gpt", "value": "Least recently used blocks go first."},
    ]},
    {"id": "A5AbcES_0", "conversations": [  # no human turn at all
        {"from": "gpt", "value": "Sure, here is the code you asked for."},
    ]},
    {"id": "bqZdfqw_0", "conversations": [  # ends on a human turn nobody answered
        {"from": "human", "value": "Write a haiku about GPUs."},
        {"from": "gpt", "value": "Silicon rivers\nthousands of cores hum in time\nheat "
                                 "rising like dawn"},
        {"from": "human", "value": "Another one?"},
    ]},
]

TOOLS = [{"name": "generate_password", "description": "Generate a random password",
          "parameters": {"type": "object", "properties": {
              "length": {"type": "integer", "description": "The length of the password"}},
              "required": ["length"]}}]

TOOL_CALLS = [  # LLaMA-Factory's glaive_toolcall_en_demo shape
    {"conversations": [
        {"from": "human", "value": "Hi, I need a new password. Can you generate one for me?"},
        {"from": "gpt", "value": "Of course. How long would you like your password to be?"},
        {"from": "human", "value": "I would like it to be 12 characters long."},
        {"from": "function_call",
         "value": "{\"name\": \"generate_password\", \"arguments\": {\"length\": 12}}"},
        {"from": "observation", "value": "{\"password\": \"aBcD1234EfGh\"}"},
        {"from": "gpt", "value": "Here is your new password: aBcD1234EfGh."},
     ],
     "system": "You are a helpful assistant with access to functions.",
     "tools": json.dumps(TOOLS)},
]


def tokens(cl100k: Any, text: str) -> int:
    return len(cl100k.encode(text))


def run_turns(run, tmp_path, rows, *args: str, name: str = "out.jsonl") -> tuple[list, dict]:
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / name
    result = run("turns", source, out, "--tokenizer", "cl100k_base", *args)
    assert result.exit_code == 0, result.stderr
    return read_jsonl(out), json.loads(Path(f"{out}.manifest.json").read_text())


def test_first_mode_is_the_first_prompt_with_its_reply_length(run, tmp_path, cl100k):
    rows, manifest = run_turns(run, tmp_path, SHAREGPT)
    assert manifest["output"]["format"] == "mooncake_trace"
    conversations = [c["conversations"] for c in SHAREGPT]
    # The leading gpt turn is dropped; the conversation without a human turn is skipped.
    expected = [(c[0]["value"], c[1]["value"]) for c in (conversations[0], conversations[3])]
    expected.insert(1, (conversations[1][1]["value"], conversations[1][2]["value"]))
    assert [(r["messages"], r["output_length"]) for r in rows] == [
        ([{"role": "user", "content": prompt}], tokens(cl100k, reply))
        for prompt, reply in expected]
    assert [r["id"] for r in rows] == ["QWJhYvA_0", "i6IyJda_0", "bqZdfqw_0"]
    strict("MooncakeTrace", rows, kept={"id"})
    info = manifest["steps"][0]["info"]
    assert info["conversations_read"] == 4 and info["requests"] == 3
    assert info["dropped"] == {"dropped: replies before the first user message": 1,
                               "skipped: no user message": 1,
                               "cut: a user message with no reply": 1}


def test_each_mode_is_a_multi_turn_session_per_conversation(run, tmp_path, cl100k):
    rows, manifest = run_turns(run, tmp_path, SHAREGPT, "--mode", "each")
    assert manifest["output"]["format"] == "multi_turn"
    assert manifest["aiperf"]["custom_dataset_type"] == "multi_turn"
    first = SHAREGPT[0]["conversations"]
    assert rows[0]["turns"] == [
        {"role": "user", "text": first[i]["value"],
         "output_length": tokens(cl100k, first[i + 1]["value"])} for i in (0, 2, 4)]
    # The unanswered last question is not a turn: nobody knows its reply's length.
    assert [len(r["turns"]) for r in rows] == [3, 1, 1]
    strict("MultiTurn", rows, kept={"id"})
    assert manifest["steps"][0]["info"]["requests"] == 5


def test_history_mode_keeps_the_recorded_replies_as_context(run, tmp_path, cl100k):
    rows, _ = run_turns(run, tmp_path, SHAREGPT, "--mode", "history")
    first = SHAREGPT[0]["conversations"]
    roles = {"human": "user", "gpt": "assistant"}
    assert rows[0]["messages"] == [{"role": roles[t["from"]], "content": t["value"]}
                                   for t in first[:5]]
    assert rows[0]["output_length"] == tokens(cl100k, first[5]["value"])
    strict("MooncakeTrace", rows, kept={"id"})


def test_bounds_and_max_turns_cut_or_skip_and_are_counted(run, tmp_path, cl100k):
    first = SHAREGPT[0]["conversations"]
    turn_tokens = [tokens(cl100k, t["value"]) for t in first]
    # Requests of the first conversation, as AIPerf sends them: history + the user turn.
    sent = [turn_tokens[0], sum(turn_tokens[:3]), sum(turn_tokens[:5])]
    limit = sent[1]  # the third request is above it
    rows, manifest = run_turns(run, tmp_path, SHAREGPT, "--mode", "each",
                               "--max-prompt-tokens", str(limit))
    assert [len(t["turns"]) for t in rows][0] == 2
    assert manifest["steps"][0]["info"]["dropped"][
        "cut: prompt tokens above --max-prompt-tokens"] == 1
    assert manifest["steps"][0]["params"]["max_prompt_tokens"] == limit

    rows, manifest = run_turns(run, tmp_path, SHAREGPT, "--mode", "each", "--max-turns", "2")
    assert [len(r["turns"]) for r in rows] == [2, 1, 1]
    assert manifest["steps"][0]["info"]["dropped"]["dropped: turns beyond --max-turns"] == 1

    shortest = min(tokens(cl100k, c["conversations"][1]["value"])
                   for c in SHAREGPT if c["id"] != "A5AbcES_0")
    rows, manifest = run_turns(run, tmp_path, SHAREGPT, "--min-output-tokens",
                               str(shortest + 1))
    assert all(r["output_length"] > shortest for r in rows)
    assert manifest["steps"][0]["info"]["dropped"][
        "skipped: output tokens below --min-output-tokens"] >= 1


def test_bounds_the_wrong_way_round_are_a_usage_error(run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", SHAREGPT)
    result = run("turns", source, tmp_path / "out.jsonl", "--tokenizer", "cl100k_base",
                 "--min-prompt-tokens", "10", "--max-prompt-tokens", "5")
    assert result.exit_code == 2
    assert not (tmp_path / "out.jsonl").exists()


def test_tool_calls_become_openai_messages_and_tools_a_list(run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TOOL_CALLS)
    out = tmp_path / "trace.jsonl"
    result = run("nonce", source, out, "--seed", "1", "--to", "mooncake_trace",
                 "--keep-replies")
    assert result.exit_code == 0, result.stderr
    [row] = read_jsonl(out)
    strict("MooncakeTrace", [row])
    assert row["tools"] == [{"type": "function", "function": tool} for tool in TOOLS]
    messages = row["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user",
                                             "assistant", "tool", "assistant"]
    call = messages[4]
    assert call["content"] is None
    [tool_call] = call["tool_calls"]
    assert tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "generate_password"
    assert json.loads(tool_call["function"]["arguments"]) == {"length": 12}
    assert messages[5] == {"role": "tool", "content": "{\"password\": \"aBcD1234EfGh\"}",
                           "tool_call_id": tool_call["id"]}


SAMPLE = Path(__file__).resolve().parents[2] / "prompts" / "toolcall-sample.json"


def test_tool_call_sharegpt_reads_back_as_it_was(run, tmp_path):
    rows = TOOL_CALLS + json.loads(SAMPLE.read_text(encoding="utf-8"))
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "same.jsonl"
    result = run("pipe", "read", source, "write", "--to", "sharegpt", out)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == rows
    trace = tmp_path / "trace.jsonl"
    assert run("pipe", "read", source, "write", "--to", "mooncake_trace", "--keep-replies",
               trace).exit_code == 0
    written = read_jsonl(trace)
    strict("MooncakeTrace", written)
    assert "tools" not in written[-1]  # "tools": "[]" sends none (AIPerf refuses [])


def test_turns_of_tool_calls(run, tmp_path, cl100k):
    rows, _ = run_turns(run, tmp_path, TOOL_CALLS, "--mode", "history")
    [row] = rows
    strict("MooncakeTrace", [row])
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]
    # The reply to the last user message is the model's tool call.
    call = {"name": "generate_password", "arguments": {"length": 12}}
    assert row["output_length"] == tokens(cl100k, json.dumps(call, separators=(",", ":")))
    assert row["tools"] == [{"type": "function", "function": tool} for tool in TOOLS]

    rows, _ = run_turns(run, tmp_path, TOOL_CALLS, "--mode", "each", name="each.jsonl")
    strict("MultiTurn", rows[:1])
    assert [t.get("role") for t in rows[0]["turns"]] == ["system", "user", "user"]
    # Every request carries the tools; the system turn is the system prompt (AIPerf sends
    # a leading system turn with an 'extra' as a request of its own).
    assert [t.get("extra", {}).get("tools") for t in rows[0]["turns"]] == [None] + [
        row["tools"]] * 2


def test_alpaca_rows_are_prompts_with_their_output_length(run, tmp_path, cl100k):
    alpaca = [{"instruction": "Give three tips for staying healthy.", "input": "",
               "output": "1. Eat a balanced diet.\n2. Exercise.\n3. Sleep."},
              {"instruction": "Translate to French.", "input": "The server is ready.",
               "output": "Le serveur est prêt."}]
    rows, _ = run_turns(run, tmp_path, alpaca, "--to", "single_turn")
    assert rows == [
        {"role": "user", "text": "Give three tips for staying healthy.",
         "output_length": tokens(cl100k, alpaca[0]["output"])},
        {"role": "user", "text": "Translate to French.\n\nThe server is ready.",
         "output_length": tokens(cl100k, alpaca[1]["output"])}]
    strict("SingleTurn", rows)


@pytest.mark.parametrize("fmt", ["single_turn", "multi_turn"])
def test_recorded_replies_written_to_aiperf_formats_point_at_turns(run, tmp_path, fmt):
    source = write_jsonl(tmp_path / "in.jsonl", SHAREGPT)
    result = run("pipe", "read", source, "write", "--to", fmt, tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert "promptkit turns" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_the_sharegpt_manifest_note_points_at_turns(run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", SHAREGPT)
    result = run("nonce", source, tmp_path / "out.jsonl", "--seed", "1", "--to", "sharegpt")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert "promptkit turns" in manifest["aiperf"]["note"]


def test_pipe_stage_and_rebuild(run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", SHAREGPT)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "turns", "--mode", "each", "--tokenizer",
                 "cl100k_base", "nonce", "--at", "user", "--seed", "3", "write", out)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["output"]["format"] == "multi_turn"  # the turns stage's, not sharegpt
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_a_file_of_plain_prompts_makes_no_requests_and_says_why(run, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "just a prompt"}, {"text": "two"}])
    out = tmp_path / "out.jsonl"
    result = run("turns", source, out, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert "no requests from 2 records" in result.stderr
    assert "the first user message has no reply" in result.stderr
    assert not out.exists()


def test_openai_request_fields_land_where_aiperf_sends_them(run, tmp_path):
    """An OpenAI chat log line written as mooncake_trace: tools in AIPerf's own field,
    the other request fields in extra, which AIPerf merges into the body."""
    line = {"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [{"type": "function", "function": TOOLS[0]}], "max_tokens": 64,
            "temperature": 0}
    source = write_jsonl(tmp_path / "in.jsonl", [line])
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", source, "write", "--to", "mooncake_trace", out).exit_code == 0
    [row] = read_jsonl(out)
    strict("MooncakeTrace", [row])
    assert row["tools"] == line["tools"]
    assert row["extra"] == {"max_tokens": 64, "temperature": 0}


@pytest.mark.parametrize("mode", ["first", "each"])
def test_workers_give_the_same_requests_and_counts(mode, small_chunks, tmp_path, run):
    rows = [{**row, "id": f"{row['id']}-{i}"} for i in range(40) for row in SHAREGPT]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    results = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.jsonl"
        result = run("turns", source, out, "--mode", mode, "--tokenizer", "cl100k_base",
                     "--workers", str(workers))
        assert result.exit_code == 0, result.stderr
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
        results.append((out.read_bytes(), manifest["steps"][0]["info"]))
    assert results[0] == results[1]
    assert results[0][1]["conversations_read"] == 160
    assert small_chunks == [2]


@pytest.mark.parametrize("name", ["sharegpt-sample.json", "toolcall-sample.json"])
def test_published_json_arrays_give_the_requests_of_their_lines(name, run, tmp_path):
    """The shipped samples are JSON arrays, as ShareGPT and LLaMA-Factory publish them:
    every field is kept (ids, tools, the system key), as from the same records as JSONL."""
    array = SAMPLE.with_name(name)
    lines = write_jsonl(tmp_path / "lines.jsonl", json.loads(array.read_text(encoding="utf-8")))
    outputs = []
    for source in (array, lines):
        out = tmp_path / f"{source.stem}.out.jsonl"
        result = run("turns", source, out, "--mode", "history", "--tokenizer", "cl100k_base")
        assert result.exit_code == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    rows = [json.loads(line) for line in outputs[0].splitlines()]
    strict("MooncakeTrace", rows, kept={"id"})
    if name == "toolcall-sample.json":
        assert rows[0]["messages"][0]["role"] == "system" and "tools" in rows[0]
    else:
        assert all("id" in row for row in rows)
