"""Request fields of OpenAI chat lines reach the server, or the run says they will not.

AIPerf loads an OpenAI chat line as ``mooncake_trace`` and sends its ``messages`` and
``tools`` only: ``max_tokens``, ``temperature`` and the rest stay behind. A manifest
of openai lines names those fields in its warnings; ``--to mooncake_trace`` (or
``single_turn``, ``multi_turn``) carries them in ``extra``, which AIPerf merges into
the request body. Every claim is checked on AIPerf's own loaders and chat endpoint:
the request body AIPerf would send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import read_jsonl, write_jsonl

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def logged_requests(n: int, system: bool = True) -> list[dict]:
    """Chat completion requests as a gateway logs them (the request bodies)."""
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is the weather in city {i} today?"}]
        if system:
            messages.insert(0, {"role": "system", "content": "You are a weather assistant."})
        rows.append({"model": "gpt-4o-mini", "messages": messages, "max_tokens": 64,
                     "temperature": 0, "tools": [WEATHER_TOOL], "tool_choice": "auto"})
    return rows


UNSENT = ("request fields 'max_tokens', 'model', 'temperature', 'tool_choice' are written "
          "into openai lines, but AIPerf loads them as mooncake_trace and sends only "
          "'messages' and 'tools': the server gets none of them; write --to mooncake_trace "
          "(or single_turn, multi_turn) to carry them in 'extra', which AIPerf merges into "
          "every request body (there 'model' would override AIPerf's --model)")


@pytest.fixture(scope="module")
def aiperf_bodies(tmp_path_factory) -> Callable[[Path, str], list[dict[str, Any]]]:
    """The chat request bodies AIPerf 0.13 makes of a file: its own loader for the
    dataset type, then its chat endpoint's payload for each turn (in AIPerf's own
    virtualenv: ``tests/aiperf_tool.py``)."""
    import aiperf_tool
    from tokenizer_dir import build_tokenizer_dir

    tokenizer = build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "bpe")

    def bodies(path: Path, kind: str) -> list[dict[str, Any]]:
        return aiperf_tool.request_bodies(kind, path, tokenizer)

    return bodies


def manifest_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.manifest.json").read_text())


def test_openai_lines_keep_their_fields_and_the_run_says_aiperf_drops_them(
        tmp_path, run, aiperf_bodies):
    source = write_jsonl(tmp_path / "requests.jsonl", logged_requests(4))
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--at", "user", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert all(row["max_tokens"] == 64 for row in read_jsonl(out))  # kept, as written
    tools, unsent = manifest_of(out)["warnings"]  # (the nonce comes after the tools)
    assert tools.startswith("4 of 4 records send tools and their nonce is in a user message")
    assert unsent == UNSENT
    assert f"promptkit: warning: {UNSENT}\n" in result.stderr
    for body in aiperf_bodies(out, "mooncake_trace"):  # what the warning is about
        assert body["tools"] == [WEATHER_TOOL]
        assert not {"max_tokens", "temperature", "tool_choice"} & body.keys()
        assert body["model"] == "test-model"  # AIPerf's --model


def test_mooncake_trace_carries_them_in_extra_into_the_request_body(
        tmp_path, run, aiperf_bodies):
    source = write_jsonl(tmp_path / "requests.jsonl", logged_requests(4))
    out = tmp_path / "trace.jsonl"
    result = run("nonce", source, out, "--at", "user", "--seed", "1", "--to", "mooncake_trace")
    assert result.exit_code == 0, result.stderr
    [tools] = manifest_of(out)["warnings"]  # (the nonce comes after the tools), no other
    assert tools.startswith("4 of 4 records send tools and their nonce is in a user message")
    assert result.stderr.count("warning") == 1
    row = read_jsonl(out)[0]
    assert row["extra"] == {"model": "gpt-4o-mini", "max_tokens": 64, "temperature": 0,
                            "tool_choice": "auto"}
    assert row["tools"] == [WEATHER_TOOL]  # AIPerf's own place for them
    bodies = aiperf_bodies(out, "mooncake_trace")
    assert len(bodies) == 4
    for body in bodies:
        assert (body["max_tokens"], body["temperature"], body["tool_choice"]) == (64, 0, "auto")
        assert body["tools"] == [WEATHER_TOOL]
        assert body["model"] == "gpt-4o-mini"  # the line's own: it overrides --model
        assert body["messages"][0] == {"role": "system",
                                       "content": "You are a weather assistant."}


@pytest.mark.parametrize("fmt", ["single_turn", "multi_turn"])
def test_single_and_multi_turn_carry_them_in_extra_too(fmt, tmp_path, run, aiperf_bodies):
    source = write_jsonl(tmp_path / "requests.jsonl", logged_requests(3, system=False))
    out = tmp_path / f"{fmt}.jsonl"
    result = run("pipe", "read", source, "write", "--to", fmt, out)
    assert result.exit_code == 0, result.stderr
    assert manifest_of(out)["warnings"] == []
    bodies = aiperf_bodies(out, fmt)
    assert len(bodies) == 3
    for body in bodies:
        assert (body["max_tokens"], body["temperature"]) == (64, 0)
        assert body["tools"] == [WEATHER_TOOL]


def test_lines_of_messages_and_tools_only_get_no_warning(tmp_path, run):
    rows = [{"messages": row["messages"], "tools": row["tools"]} for row in logged_requests(3)]
    out = tmp_path / "out.jsonl"
    result = run("nonce", write_jsonl(tmp_path / "in.jsonl", rows), out, "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert manifest_of(out)["warnings"] == [] and "warning" not in result.stderr


def test_an_output_length_written_as_max_tokens_is_named(tmp_path, run, aiperf_bodies):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"text": "Write a haiku about the sea.", "output_length": 40}])
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "write", "--to", "openai", out)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == [{"messages": [{"role": "user", "content":
                                              "Write a haiku about the sea."}],
                                "max_tokens": 40}]
    [warning] = manifest_of(out)["warnings"]
    assert warning == (
        "request field 'max_tokens' is written into openai lines, but AIPerf loads them as "
        "mooncake_trace and sends only 'messages' and 'tools': the server never gets it; write "
        "--to mooncake_trace (or single_turn, multi_turn) to carry it in 'extra', which "
        "AIPerf merges into every request body")
    [body] = aiperf_bodies(out, "mooncake_trace")
    assert "max_tokens" not in body


def test_the_same_warning_for_every_number_of_workers(small_chunks, tmp_path, run):
    rows = [{"messages": row["messages"], "tools": row["tools"]} for row in logged_requests(300)]
    rows[280]["seed"] = 42  # in a late chunk only
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    warnings = set()
    for workers in ("1", "2", "4"):
        out = tmp_path / f"out{workers}.jsonl"
        result = run("nonce", source, out, "--seed", "1", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        warnings.add(tuple(manifest_of(out)["warnings"]))
    assert small_chunks == [2, 4]
    [(warning,)] = warnings
    assert warning.startswith("request field 'seed' is written into openai lines")
