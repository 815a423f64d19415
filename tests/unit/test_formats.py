"""Every format reads into the canonical record and writes back unchanged; conversions
keep data or fail clearly; every output validates with AIPerf's own loader models."""

from __future__ import annotations

import json
from pathlib import Path

import aiperf_tool
import pytest
from helpers import read_jsonl, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from promptkit.core.errors import ConversionError, InvalidRecordError
from promptkit.formats import FORMATS, detect

AIPERF_MODELS = {
    "single_turn": "SingleTurn",
    "multi_turn": "MultiTurn",
    "random_pool": "RandomPool",
    "mooncake_trace": "MooncakeTrace",
}

SAMPLES = {
    "single_turn": [
        {"text": "Hello"},
        {"session_id": "a", "timestamp": 10, "role": "user", "text": "Hi",
         "output_length": 5, "extra": {"cache_salt": "x"}, "id": 7},
        {"delay": 250, "texts": ["one", "two"], "image": "/tmp/cat.png"},
        {"texts": [{"name": "field_a", "contents": ["A", "B"]}]},
    ],
    "multi_turn": [
        {"session_id": "s", "turns": [
            {"role": "system", "text": "Be brief."},
            {"text": "Hi", "delay": 100, "output_length": 8, "extra": {"top_p": 0.9}},
        ], "tag": "keep me"},
        {"turns": [{"texts": ["a", "b"]}]},
    ],
    "random_pool": [{"text": "Pool entry"}, {"texts": ["x", "y"], "note": 1}],
    "mooncake_trace": [
        {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
        {"input_length": 10},
        {"session_id": "c1", "text_input": "Plain text", "output_length": 4},
        {"timestamp": 5, "messages": [{"role": "system", "content": "S"},
                                       {"role": "user", "content": "U", "name": "bob"}],
         "tools": [{"type": "function", "function": {"name": "f"}}]},
        {"payload": {"messages": [{"role": "user", "content": "P"}], "max_tokens": 3}},
        {"payload": {"prompt": "Complete me", "model": "m"}, "delay": 3},
    ],
    "openai": [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "system", "content": "S"},
                      {"role": "user", "content": [{"type": "text", "text": "look"},
                                                   {"type": "image_url",
                                                    "image_url": {"url": "data:,"}}]},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "c1", "type": "function",
                           "function": {"name": "f", "arguments": "{}"}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "42"}],
         "model": "m", "temperature": 0.2},
    ],
    "sharegpt": [
        {"id": "x1", "conversations": [{"from": "system", "value": "S"},
                                       {"from": "human", "value": "Q"},
                                       {"from": "gpt", "value": "A", "weight": 0}]},
    ],
    "prompt": [{"prompt": "Once upon a time"}, {"prompt": "P", "id": 3, "output_length": 9}],
    "alpaca": [  # Stanford alpaca and LLaMA-Factory's alpaca_en_demo.json shapes
        {"instruction": "Give three tips for staying healthy.", "input": "",
         "output": "1. Eat a balanced diet."},
        {"instruction": "Translate.", "input": "", "output": "Bonjour", "system": "Be brief.",
         "history": [["Hi", "Hello"]], "id": 4},
    ],
}


def roundtrip(fmt: str, rows: list[dict]) -> list[dict]:
    spec = FORMATS[fmt]
    return [spec.dump(spec.parse(row)) for row in rows]


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_read_then_write_gives_back_every_field(fmt):
    assert roundtrip(fmt, SAMPLES[fmt]) == SAMPLES[fmt]


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_format_is_detected_from_the_first_record(fmt, tmp_path, run):
    if fmt == "random_pool":  # indistinguishable from single_turn by its keys: named with --from
        assert detect(SAMPLES[fmt][0]) == "single_turn"
        return
    for row in SAMPLES[fmt]:
        assert detect(row) == fmt
    source = write_jsonl(tmp_path / "in.jsonl", SAMPLES[fmt])
    result = run("nonce", source, tmp_path / "out.jsonl", "--seed", "1", "--at", "salt",
                 "--keep-replies")
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == fmt
    # The input's own format when AIPerf loads it, else one it loads.
    assert manifest["output"]["format"] == {"sharegpt": "mooncake_trace",
                                            "alpaca": "mooncake_trace",
                                            "prompt": "single_turn"}.get(fmt, fmt)


@pytest.mark.parametrize("fmt", list(AIPERF_MODELS))
def test_aiperf_loader_models_accept_every_written_record(fmt):
    aiperf_tool.validate(AIPERF_MODELS[fmt], roundtrip(fmt, SAMPLES[fmt]))


def test_openai_lines_load_in_aiperf_as_mooncake_trace():
    aiperf_tool.validate("MooncakeTrace", roundtrip("openai", SAMPLES["openai"]))


CONVERSIONS = [
    ("single_turn", "multi_turn"), ("single_turn", "mooncake_trace"), ("single_turn", "openai"),
    ("single_turn", "prompt"), ("single_turn", "sharegpt"), ("openai", "mooncake_trace"),
    ("sharegpt", "openai"), ("prompt", "single_turn"), ("mooncake_trace", "openai"),
    ("multi_turn", "openai"), ("random_pool", "single_turn"),
]


@pytest.mark.parametrize(("src", "dst"), CONVERSIONS)
def test_conversion_keeps_the_conversation(src, dst):
    rows = {
        "single_turn": [{"text": "Hi there", "output_length": 4}],
        "openai": [{"messages": [{"role": "system", "content": "S"},
                                 {"role": "user", "content": "U"}]}],
        "sharegpt": [{"conversations": [{"from": "human", "value": "Q"},
                                        {"from": "gpt", "value": "A"}]}],
        "prompt": [{"prompt": "P", "id": 1}],
        "mooncake_trace": [{"messages": [{"role": "user", "content": "M"}], "timestamp": 0}],
        "multi_turn": [{"turns": [{"role": "user", "text": "T"}]}],
        "random_pool": [{"text": "R"}],
    }[src]
    if dst == "openai" and src == "mooncake_trace":
        rows = [{"messages": [{"role": "user", "content": "M"}], "output_length": 3}]
    record = FORMATS[src].parse(rows[0])
    written = FORMATS[dst].dump(record)
    back = FORMATS[dst].parse(written)
    assert [(m.role or "user", m.content) for m in back.messages] == [
        (m.role or "user", m.content) for m in record.messages
    ]
    if dst in AIPERF_MODELS:
        aiperf_tool.validate(AIPERF_MODELS[dst], [written])


@pytest.mark.parametrize(("src_row", "dst", "problem"), [
    ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
     "single_turn", "conversation of 2 messages"),
    ({"input_length": 100, "hash_ids": [1]}, "openai", "no text"),
    ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
     "multi_turn", "recorded assistant message"),
    ({"text": "x", "timestamp": 5}, "openai", "'timestamp'"),
    ({"text": "x", "session_id": "s"}, "random_pool", "'session_id'"),
    ({"prompt": "x", "id": 1}, "openai", "field 'id'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "single_turn", "content part of type 'image_url'"),
])
def test_conversion_that_would_drop_data_fails(src_row, dst, problem):
    record = FORMATS[detect(src_row)].parse(src_row)
    with pytest.raises(ConversionError, match=problem):
        FORMATS[dst].dump(record)


@pytest.mark.parametrize(("fmt", "row", "problem"), [
    ("single_turn", {"text": 3}, "'text' must be a string"),
    ("single_turn", {"text": "a", "texts": ["b"]}, "cannot both be set"),
    ("single_turn", {"role": "user"}, "no 'text'"),
    ("single_turn", {"text": "a", "output_length": 0}, "positive"),
    ("single_turn", {"text": "a", "timestamp": 1, "delay": 2}, "cannot both"),
    ("multi_turn", {"turns": []}, "non-empty"),
    ("mooncake_trace", {"input_length": 5, "text_input": "x"}, "exactly one"),
    ("mooncake_trace", {"text_input": "x", "hash_ids": [1]}, "only allowed"),
    ("mooncake_trace", {"input_length": 5, "hash_ids": ["a"]}, "list of integers"),
    ("openai", {"messages": [{"content": "no role"}]}, "string 'role'"),
    ("sharegpt", {"conversations": [{"from": "human"}]}, "'value' must be a string"),
])
def test_wrong_shape_is_rejected_with_the_field_named(fmt, row, problem):
    with pytest.raises(InvalidRecordError, match=problem):
        FORMATS[fmt].parse(row)


def test_cli_conversion_round_trip_through_files(tmp_path, run):
    source = write_jsonl(tmp_path / "chat.jsonl", SAMPLES["openai"])
    mooncake = tmp_path / "trace.jsonl"
    back = tmp_path / "back.jsonl"
    assert run("pipe", "read", source, "write", "--to", "mooncake_trace", mooncake).exit_code == 0
    assert run("pipe", "read", mooncake, "write", "--to", "openai", back).exit_code == 0
    # The request-body fields travel as AIPerf 'extra' and come back as top-level fields.
    assert read_jsonl(back) == SAMPLES["openai"]


def test_failed_conversion_names_file_and_line_and_writes_nothing(tmp_path, run):
    source = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "fine"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
    ])
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "write", "--to", "single_turn", out)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:2: cannot write as single_turn: ")
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [source]


json_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)))


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(json_text.filter(bool), min_size=1, max_size=3),
       role=st.sampled_from([None, "user"]),
       extra=st.none() | st.dictionaries(st.text(min_size=1), st.integers(-(2**63), 2**63 - 1),
                                         max_size=2),
       fmt=st.sampled_from(["single_turn", "mooncake_trace", "openai", "prompt", "multi_turn"]))
def test_read_of_write_is_identity(texts, role, extra, fmt, tmp_path_factory):
    """read(write(x)) == x through real files, for any text (any Unicode, newlines, quotes;
    not empty: an empty prompt is refused, see tests/cli/test_accept.py)."""
    from promptkit.api import read_records, write_records
    from promptkit.core.records import Message, Record

    records = [Record(messages=[Message(role, t)], extra=extra) for t in texts]
    if fmt == "prompt":
        records = [Record(messages=[Message(None, t)]) for t in texts]
    path = tmp_path_factory.mktemp("rt") / "f.jsonl"
    write_records(str(path), records, fmt)
    again = list(read_records(str(path), fmt))
    # An empty 'extra' and none at all are the same request; multi_turn keeps it per turn.
    assert [(m.content, r.extra or m.fields.get("extra") or None)
            for r in again for m in r.messages] == [
        (m.content, r.extra or None) for r in records for m in r.messages
    ]
    assert len(again) == len(records)


def test_unknown_fields_survive_a_nonce(tmp_path, run):
    rows = [{"text": "q", "custom": {"nested": [1, 2]}, "id": "r1"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert run("nonce", source, out, "--seed", "3").exit_code == 0
    row = read_jsonl(out)[0]
    assert row["custom"] == {"nested": [1, 2]} and row["id"] == "r1"
    assert row["text"].endswith("\nq")


def test_random_pool_named_with_from(tmp_path, run):
    source = write_jsonl(tmp_path / "pool.jsonl", SAMPLES["random_pool"])
    out = tmp_path / "out.jsonl"
    assert run("nonce", source, out, "--from", "random_pool", "--seed", "1").exit_code == 0
    manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
    assert manifest["aiperf"]["custom_dataset_type"] == "random_pool"
    aiperf_tool.validate("RandomPool", read_jsonl(out))
