"""Chat dataset formats that are not AIPerf's own: OpenAI chat JSONL, ShareGPT, prompt JSONL.

- ``openai``: each line is a chat request body, ``{"messages": [...], ...}``; every
  top-level field but ``messages`` is a request-body field (``Record.extra``).
  AIPerf loads such a file as ``mooncake_trace`` (messages mode), though it sends
  only ``messages`` (and ``tools``) of each line.
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``.
  Roles are written back as ShareGPT names (human, gpt, system).
- ``prompt``: ``{"prompt": "..."}``, one plain prompt a line.
- ``alpaca``: ``{"instruction": ..., "input": ..., "output": ..., "system": ...,
  "history": [[prompt, reply], ...]}`` (Stanford alpaca, LLaMA-Factory): a recorded
  conversation whose last user message is the instruction (and the input after a
  blank line) and whose last reply is ``output``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import orjson

from promptkit.core.errors import EmptyRecordError
from promptkit.core.records import USER_ROLES, Message, Record
from promptkit.formats._schema import bad, check_turn_fields, no_place, refuse, require_text
from promptkit.formats.aiperf import chat_content, dump_messages, parse_messages

_UNTIMED = ("session_id", "timestamp", "delay")

# ---------------------------------------------------------------- openai


def parse_openai(obj: dict[str, Any]) -> Record:
    body = {k: v for k, v in obj.items() if k != "messages"}
    return Record(
        messages=parse_messages(obj.get("messages")),
        extra=body or None,
        layout="openai",
    )


def dump_openai(record: Record) -> dict[str, Any]:
    require_text(record, "openai")
    refuse(record, "openai", _UNTIMED, "a request body has no such field; use mooncake_trace")
    out: dict[str, Any] = {"messages": dump_messages(record.messages)}
    if record.output_length is not None:
        out["max_tokens"] = record.output_length
    if record.fields:
        key = next(iter(record.fields))
        raise no_place("openai", f"field {key!r} (every openai field is sent to the server)",
                       "use mooncake_trace or single_turn, which keep it")
    out.update(record.extra or {})
    return out


# ---------------------------------------------------------------- sharegpt

_FROM = {"human": "user", "gpt": "assistant"}
_TO = {"user": "human", "assistant": "gpt"}


def parse_sharegpt(obj: dict[str, Any]) -> Record:
    """ShareGPT as FastChat and LLaMA-Factory write it. LLaMA-Factory's tool-call turns
    become OpenAI messages: ``function_call`` an assistant message with ``tool_calls``,
    ``observation`` a ``tool`` message answering it; its ``tools`` (a JSON string of
    bare function schemas) the request's ``tools`` list, and its ``system`` key a
    leading system message. The record's layout notes each, to write them back."""
    turns = obj.get("conversations")
    if not isinstance(turns, list):
        raise bad("'conversations' must be a list")
    if not turns:
        raise EmptyRecordError("an empty conversation ('conversations' is [])")
    flags = []
    messages = []
    system = obj.get("system")
    if isinstance(system, str) and system:
        messages.append(Message("system", system))
        flags.append("system-key")
    pending: list[str] = []  # ids of tool calls not answered yet
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
            raise bad(f"conversation turn {i} must be an object with a string 'from'")
        value = turn.get("value")
        if not isinstance(value, str):
            raise bad(f"conversation turn {i}: 'value' must be a string")
        fields = {k: v for k, v in turn.items() if k not in ("from", "value")}
        if turn["from"] == "function_call":
            calls = _tool_calls(value, i)
            pending = [call["id"] for call in calls]
            messages.append(Message("assistant", None, {"tool_calls": calls, **fields}))
        elif turn["from"] == "observation":
            call_id = pending.pop(0) if pending else f"call_{i}"
            messages.append(Message("tool", value, {"tool_call_id": call_id, **fields}))
        else:
            messages.append(Message(_FROM.get(turn["from"], turn["from"]), value, fields))
    taken = ("tools", "system") if "system-key" in flags else ("tools",)
    rest = {k: v for k, v in obj.items() if k not in taken}
    record = _free_form_record(rest, "conversations", messages, "sharegpt")
    if "tools" in obj:
        tools, tool_flags = _tools(obj["tools"])
        flags += tool_flags
        if tools:
            record.extra = {**(record.extra or {}), "tools": tools}
    if flags:
        record.layout = "sharegpt:" + ",".join(flags)
    return record


def _tool_calls(value: str, turn: int) -> list[dict[str, Any]]:
    """The OpenAI ``tool_calls`` of a ``function_call`` value: ``{"name", "arguments"}``
    (or a list of them), arguments an object or a JSON string."""
    try:
        calls = orjson.loads(value)
    except orjson.JSONDecodeError:
        calls = None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for k, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise bad(f"conversation turn {turn}: a function_call value must be JSON of "
                      '{"name": ..., "arguments": ...}')
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        out.append({"id": f"call_{turn}_{k}", "type": "function",
                    "function": {"name": call["name"], "arguments": arguments}})
    return out


def _tools(value: Any) -> tuple[list[Any], list[str]]:
    """``tools`` as the list of OpenAI tools a request carries, and how it was written."""
    flags = []
    if isinstance(value, str):
        flags.append("tools-string")
        if not value.strip():
            return [], [*flags, "tools-empty"]
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise bad("'tools' is a string but not JSON") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise bad("'tools' must be a list of tool objects (or a JSON string of one)")
    if not value:  # nothing to send (AIPerf refuses an empty list): noted, to write back
        return [], [*flags, "tools-empty"]
    if all("type" not in t for t in value):  # bare function schemas
        flags.append("tools-bare")
        value = [{"type": "function", "function": t} for t in value]
    return value, flags


_FREE_ATTRS = ("session_id", "timestamp", "delay", "output_length", "extra")


def _free_form_record(obj: dict[str, Any], key: str, messages: list[Message], fmt: str) -> Record:
    """A record of a format that is not a request body: known attributes by name."""
    check_turn_fields(obj)
    return Record(
        messages=messages,
        **{k: obj[k] for k in _FREE_ATTRS if k in obj},
        fields={k: v for k, v in obj.items() if k != key and k not in _FREE_ATTRS},
        layout=fmt,
    )


def _free_form(record: Record, out: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Top-level fields for formats that are not request bodies: kept by name."""
    for attr in _FREE_ATTRS:
        value = getattr(record, attr)
        if value is not None:
            out[attr] = value
    for key, value in record.fields.items():
        if key in out:
            raise no_place(fmt, f"a second {key!r} field")
        out[key] = value
    return out


def dump_sharegpt(record: Record) -> dict[str, Any]:
    require_text(record, "sharegpt")
    flags = set((record.layout or "").partition(":")[2].split(","))
    messages = list(record.messages)
    out: dict[str, Any] = {}
    if "system-key" in flags and messages[0].role == "system":
        out["system"] = _plain(messages.pop(0), "sharegpt")
    turns = []
    for m in messages:
        fields = dict(m.fields)
        if m.role == "assistant" and "tool_calls" in fields:
            turns.append({"from": "function_call",
                          "value": _call_value(fields.pop("tool_calls")), **fields})
            continue
        if m.role == "tool":
            fields.pop("tool_call_id", None)
        content = chat_content(m.content)
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise no_place("sharegpt", "non-text content parts")
            content = "".join(p["text"] for p in content)
        if content is None:
            raise no_place("sharegpt", f"a {m.role} message without content")
        role = "observation" if m.role == "tool" else m.role or "user"
        turns.append({"from": _TO.get(role, role), "value": content, **fields})
    out["conversations"] = turns
    extra = dict(record.extra or {})
    tools = extra.pop("tools", None)
    if tools is None and "tools-empty" in flags:
        tools = []
    if tools is not None:
        if "tools-bare" in flags:
            tools = [t["function"] if t.get("type") == "function" else t for t in tools]
        out["tools"] = json.dumps(tools, ensure_ascii=False) if "tools-string" in flags else tools
    return _free_form(replace(record, extra=extra or None), out, "sharegpt")


def _call_value(calls: Any) -> str:
    """A ``function_call`` value of OpenAI ``tool_calls``, as LLaMA-Factory writes it."""
    try:
        values = [{"name": c["function"]["name"],
                   "arguments": json.loads(c["function"]["arguments"])} for c in calls]
    except (KeyError, TypeError, ValueError):
        raise no_place("sharegpt", "a tool call that is not a function call") from None
    return json.dumps(values[0] if len(values) == 1 else values, ensure_ascii=False)


# ---------------------------------------------------------------- prompt


def parse_prompt(obj: dict[str, Any]) -> Record:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str):
        raise bad("'prompt' must be a string")
    return _free_form_record(obj, "prompt", [Message(None, prompt)], "prompt")


def dump_prompt(record: Record) -> dict[str, Any]:
    require_text(record, "prompt")
    if len(record.messages) != 1 or record.messages[0].role not in USER_ROLES:
        raise no_place("prompt", "a conversation (more than one user prompt)",
                       "write it --to openai, multi_turn or mooncake_trace")
    message = record.messages[0]
    if not isinstance(message.content, str) or message.fields:
        raise no_place("prompt", "structured message content")
    return _free_form(record, {"prompt": message.content}, "prompt")


# ---------------------------------------------------------------- alpaca

_ALPACA_KEYS = ("instruction", "input", "output", "system", "history")


def parse_alpaca(obj: dict[str, Any]) -> Record:
    def text(key: str) -> str | None:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise bad(f"'{key}' must be a string, not {type(value).__name__}")
        return value or None

    instruction = obj.get("instruction")
    if not isinstance(instruction, str):
        raise bad("'instruction' must be a string")
    messages = []
    system = text("system")
    if system is not None:
        messages.append(Message("system", system))
    history = obj.get("history")
    if history is not None:
        if not isinstance(history, list) or not all(
                isinstance(pair, list) and len(pair) == 2
                and all(isinstance(t, str) for t in pair) for pair in history):
            raise bad("'history' must be a list of [prompt, reply] string pairs")
        for prompt, reply in history:
            messages += [Message("user", prompt), Message("assistant", reply)]
    extra_input = text("input")
    messages.append(Message("user", f"{instruction}\n\n{extra_input}" if extra_input
                            else instruction))
    output = text("output")
    if output is not None:
        messages.append(Message("assistant", output))
    return _free_form_record({k: v for k, v in obj.items() if k not in _ALPACA_KEYS},
                             "instruction", messages, "alpaca")


def dump_alpaca(record: Record) -> dict[str, Any]:
    """The instruction is the last user message as it is now (an input read in is part
    of it); earlier exchanges become ``history``."""
    require_text(record, "alpaca")
    messages = list(record.messages)
    out: dict[str, Any] = {}
    if messages[0].role == "system":
        out["system"] = _plain(messages.pop(0), "alpaca")
    output = None
    if len(messages) > 1 and messages[-1].role == "assistant":
        output = _plain(messages.pop(), "alpaca")
    if not messages or messages[-1].role not in USER_ROLES:
        raise no_place("alpaca", "a conversation that does not end with a user message")
    out["instruction"] = _plain(messages.pop(), "alpaca")
    out["input"] = ""
    if output is not None:
        out["output"] = output
    history = []
    for i in range(0, len(messages), 2):
        pair = messages[i:i + 2]
        if len(pair) != 2 or pair[0].role not in USER_ROLES or pair[1].role != "assistant":
            raise no_place("alpaca", "a conversation that does not alternate user and "
                           "assistant", "write it --to sharegpt or openai")
        history.append([_plain(pair[0], "alpaca"), _plain(pair[1], "alpaca")])
    if history:
        out["history"] = history
    return _free_form(record, out, "alpaca")


def _plain(message: Message, fmt: str) -> str:
    if not isinstance(message.content, str) or message.fields:
        raise no_place(fmt, f"structured content in a {message.role or 'user'} message")
    return message.content
