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

from typing import Any

from ..records import USER_ROLES, Message, Record
from ._schema import bad, check_turn_fields, no_place, refuse, require_text
from .aiperf import chat_content, dump_messages, parse_messages

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
    turns = obj.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise bad("'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
            raise bad(f"conversation turn {i} must be an object with a string 'from'")
        value = turn.get("value")
        if not isinstance(value, str):
            raise bad(f"conversation turn {i}: 'value' must be a string")
        role = _FROM.get(turn["from"], turn["from"])
        fields = {k: v for k, v in turn.items() if k not in ("from", "value")}
        messages.append(Message(role, value, fields))
    return _free_form_record(obj, "conversations", messages, "sharegpt")


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
    turns = []
    for m in record.messages:
        content = chat_content(m.content)
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise no_place("sharegpt", "non-text content parts")
            content = "".join(p["text"] for p in content)
        if content is None:
            raise no_place("sharegpt", f"a {m.role} message without content")
        role = m.role or "user"
        turns.append({"from": _TO.get(role, role), "value": content, **m.fields})
    return _free_form(record, {"conversations": turns}, "sharegpt")


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
