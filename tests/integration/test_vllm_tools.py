"""On the real vLLM engine: requests with tools are predicted as the server renders them.

vLLM's OpenAI server renders a request's ``tools`` through the chat template, and
tool-aware templates put them before the user's text (the tests' tokenizer folder
has one, in the manner of Qwen 2.5: ``tests/tokenizer_dir.py``). The engine runs
with ``--enable-auto-tool-choice --tool-call-parser hermes`` (it refuses tool
requests otherwise) and ``--trust-request-chat-template``.

- vLLM's own ``/tokenize`` (the renderer its chat endpoint uses) is the truth for
  a prompt's tokens: every request Hypothesis makes of real tool-calling shapes,
  rendered by ``promptkit`` under the tokenizer's template and under each built-in
  template (vLLM given the real template of that family: ``tests/chat_templates.py``),
  has exactly vLLM's tokens, or both refuse it.
- The engine's ``/metrics`` counters are the truth for a run: a glaive-shaped
  tool-call workload made with ``turns`` and ``nonce`` is sent by the real ``aiperf
  profile``, and ``check`` predicts its hit and prompt tokens exactly, with the
  nonce at the user's text (it comes after the tools: hits), as a ``cache_salt``
  and in a system message (the template renders it before the tools: no hits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import test_templates as shapes
from chat_templates import real_templates
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vllm_sessions import whole_word_replies
from toolcall_data import write_glaive
from vllm_engine import SERVED_NAME, VllmServer, run_profile

from promptkit.core.tokenizers import load_tokenizer
from promptkit.formats.aiperf import parse_messages
from promptkit.text.templates import Renderer, TemplateError, request_tools

#: Built-in template -> the real template vLLM is given for it (chat_templates.FILES).
BUILT_IN = {"qwen2.5": "qwen2.5", "llama3.1": "llama3.1", "chatml": "chatml-tools"}


def promptkit(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=check,
                          capture_output=True, text=True)


def tokenize(server: VllmServer, body: dict[str, Any]) -> list[int] | None:
    """vLLM's prompt tokens of a chat request (``None``: it refuses the request)."""
    request = urllib.request.Request(
        f"{server.url}/tokenize", data=json.dumps({"model": SERVED_NAME, **body}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            tokens: list[int] = json.load(response)["tokens"]
            return tokens
    except urllib.error.HTTPError as error:
        assert error.code == 400, error.read()
        return None


def ours(renderer: Renderer, messages: list[dict[str, Any]],
         tools: list[dict[str, Any]] | None) -> list[int] | None:
    try:
        text = renderer.text(renderer.conversation(parse_messages(messages)),
                             request_tools(tools))
    except TemplateError:
        return None
    return renderer.encode([text])[0]


@pytest.mark.parametrize("template", ["hf", *BUILT_IN])
def test_prompt_tokens_are_the_servers_own(vllm_server: VllmServer, template: str) -> None:
    tokenizer = load_tokenizer(str(vllm_server.tokenizer))
    renderer = Renderer(template, tokenizer, str(vllm_server.tokenizer))
    real = real_templates()[BUILT_IN[template]] if template in BUILT_IN else None
    bos = tokenizer.encode("<|begin_of_text|>")  # (Hermes writes its BOS; ChatML has none)
    refused = st.sampled_from([
        [{"role": "user", "content": None}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None,
                                              "tool_calls": [{"id": "a", "type": "function",
                                                              "function": {"name": "f"}}]}]])

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(sent=st.one_of(shapes.messages(), refused),
           sent_tools=st.one_of(shapes.tools, shapes.good_tools,
                                st.none() if template != "chatml" else st.nothing()))
    def same(sent: list[dict[str, Any]], sent_tools: list[dict[str, Any]] | None) -> None:
        body: dict[str, Any] = {"messages": sent, "add_generation_prompt": True}
        if sent_tools is not None:
            body["tools"] = sent_tools
        if real is not None:
            body["chat_template"] = real
        expected = tokenize(vllm_server, body)
        got = ours(renderer, sent, sent_tools)
        if template == "chatml" and got is not None:
            got = bos + got
        assert got == expected

    same()


#: A template that loops over a message's content, as multimodal-aware ones do: vLLM
#: hands it the content as a list of text parts, which it writes apart.
PARTS_TEMPLATE = (
    "{%- for message in messages %}{{- '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}{{- part['text'] + ' | ' }}{%- endfor %}"
    "{%- endif %}{{- '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}")


def test_a_template_looping_over_content_gets_its_parts(vllm_server: VllmServer,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    shutil.copytree(vllm_server.tokenizer, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = PARTS_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    renderer = Renderer("hf", load_tokenizer(str(folder)), str(folder))
    assert renderer.parts

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(sent=shapes.messages())
    def same(sent: list[dict[str, Any]]) -> None:
        expected = tokenize(vllm_server, {"messages": sent, "add_generation_prompt": True,
                                          "chat_template": PARTS_TEMPLATE})
        assert ours(renderer, sent, None) == expected

    same()


@pytest.fixture(scope="module")
def tool_files(vllm_server: VllmServer,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 glaive-shaped tool-call conversations made into one request each (``turns
    --mode first``), then nonce'd three ways."""
    work = tmp_path_factory.mktemp("tools")
    source = write_glaive(work / "glaive.json", 40, seed=1)
    first = work / "first.jsonl"
    promptkit("turns", source, first, "--mode", "first", "--tokenizer", vllm_server.tokenizer)
    files = {"first": first}
    for name, args in (("nonce", ()), ("salt", ("--at", "salt")),
                       ("system", ("--at", "system"))):
        files[name] = work / f"{name}.jsonl"
        promptkit("nonce", first, files[name], "--seed", "1", *args)
    return files


def check(server: VllmServer, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return promptkit("check", path, "--json", "--tokenizer", server.tokenizer,
                     "--chat-template", "hf", "--block-size", str(server.block_size), *args,
                     check=False)


@pytest.mark.parametrize("name", ["first", "nonce", "salt", "system"])
def test_tool_call_workload_is_predicted_exactly(vllm_server: VllmServer,
                                                 tool_files: dict[str, Path], name: str) -> None:
    path = tool_files[name]
    report = json.loads(check(vllm_server, path).stdout)
    requests = len(path.read_text(encoding="utf-8").splitlines())
    hits, queries, _ = run_profile(vllm_server, path, requests=requests)
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
    if name in ("salt", "system"):  # no shared block before the nonce, or a salted one
        assert hits == 0
    else:  # the tools come before the user's text, and the nonce
        assert report["cross_conversation_hit_rate"] > 0.05


def test_max_hit_rate_fails_on_a_nonced_tool_workload(vllm_server: VllmServer,
                                                      tool_files: dict[str, Path]) -> None:
    refused = check(vllm_server, tool_files["nonce"], "--max-hit-rate", "0.01")
    assert refused.returncode == 1
    assert "above --max-hit-rate 1.00%" in refused.stderr
    assert check(vllm_server, tool_files["salt"], "--max-hit-rate", "0.01").returncode == 0


def test_each_turn_of_tool_conversations_is_predicted_exactly(vllm_server: VllmServer,
                                                              tmp_path: Path) -> None:
    """``turns --mode each``: a multi_turn conversation whose every request sends the
    tools; the model's replies held to whole words (as a trained model's re-tokenize
    as they were generated), so the point prediction is exact."""
    source = write_glaive(tmp_path / "glaive.json", 12, seed=2)
    path = tmp_path / "each.jsonl"
    promptkit("turns", source, path, "--mode", "each", "--tokenizer", vllm_server.tokenizer)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    lengths = [t["output_length"] for r in rows for t in r["turns"] if "output_length" in t]
    assert all("tools" in t["extra"] for r in rows for t in r["turns"] if "output_length" in t)
    report = json.loads(check(vllm_server, path).stdout)
    assert report["requests"] == len(lengths)
    hits, queries, _ = run_profile(vllm_server, path, requests=len(lengths), output_tokens=None,
                                   generated=sum(lengths),
                                   extra_args=whole_word_replies(vllm_server))
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
