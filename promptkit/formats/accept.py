"""What AIPerf accepts: the rules a written line of an AIPerf type must meet.

AIPerf 0.13 validates every line of a custom dataset with a pydantic model
(``aiperf.dataset.loader.models``: ``SingleTurn``, ``MultiTurn``, ``RandomPool``,
``MooncakeTrace``) and refuses the whole file for one line it does not take. These
are those models' rules, checked on the object a line is written from, and
promptkit's stricter one: a request is never empty. So:

- a text is a non-empty string; ``texts`` a non-empty list of non-empty strings, or
  of ``{"name", "contents"}`` objects with non-empty contents (not both kinds);
- a turn has a text (or an image, audio or video); not ``text`` and ``texts`` both,
  nor ``timestamp`` and ``delay`` both;
- ``output_length`` is a whole number of at least 1;
- a ``multi_turn`` line has a non-empty list of such turns;
- a ``mooncake_trace`` line has exactly one of ``input_length`` (at least 1, the only
  one ``hash_ids`` go with), ``text_input``, ``messages`` or ``payload``; messages are
  a non-empty list of objects with a ``role``, the last of them not empty (it is what
  the server answers); ``tools`` a non-empty list, only with ``messages``;
- a ``type`` field, which AIPerf reads as the line's dataset type, names its own type;
  but in a ``bailian_trace`` line it is the request type (``text``, ...), a string;
- a ``bailian_trace`` line has a whole-number ``chat_id`` (and ``parent_chat_id``,
  ``turn``, where given), a number ``timestamp``, ``input_length`` and ``output_length``
  of at least 1, and ``hash_ids`` a list of whole numbers.

:func:`problem` says what is wrong with a line, or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from promptkit.core.records import is_empty

_MEDIA = ("image", "images", "audio", "audios", "video", "videos")


def problem(aiperf_type: str, obj: dict[str, Any]) -> str | None:
    """Why AIPerf's model of ``aiperf_type`` (or promptkit's rule that a request is never
    empty) refuses the line ``obj``; ``None`` when it takes it."""
    kind = obj.get("type")
    if kind is not None and kind != aiperf_type and aiperf_type not in _OWN_TYPE:
        return (f"'type' is {kind!r}, and AIPerf reads a line's 'type' as its dataset "
                f"type ({aiperf_type})")
    return _RULES[aiperf_type](obj)


#: Types whose lines AIPerf does not read a dataset type from: a Bailian line's ``type`` is
#: its request type; a raw payload is sent as it is.
_OWN_TYPE = frozenset({"bailian_trace", "raw_payload"})


def _whole(value: Any) -> bool:
    return value.__class__ is int and value >= 1


#: The fields whose type the models check: the exact classes JSON gives them, and what
#: they are (a bool is no number).
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "role": ((str,), "a string"), "session_id": ((str,), "a string"),
    "timestamp": ((int, float), "a number"), "delay": ((int, float), "a number"),
    "extra": ((dict,), "an object"), "output_length": ((int,), "a whole number"),
}


def _typed(obj: dict[str, Any]) -> str | None:
    """The first field of ``obj`` of the wrong type; then ``output_length`` below 1."""
    types = _TYPES
    for key, value in obj.items():
        rule = types.get(key)
        if rule is not None and value is not None and value.__class__ not in rule[0]:
            return f"'{key}' is {type(value).__name__}, not {rule[1]}"
    length = obj.get("output_length")
    if length is not None and length < 1:
        return f"'output_length' is {length}, not a whole number of at least 1"
    return None


def _turn(obj: dict[str, Any]) -> str | None:
    """A single_turn line, or a turn of a multi_turn line."""
    text = obj.get("text")
    if not (text.__class__ is str and text and "texts" not in obj):  # (the common case)
        found = _texts(obj)
        if found is not None:
            return found
    found = _typed(obj)
    if found is None and obj.get("timestamp") and obj.get("delay"):
        return "'timestamp' and 'delay' are both set"
    return found


def _texts(obj: dict[str, Any]) -> str | None:
    """The text of a turn or random_pool entry: ``text`` or ``texts`` (or media)."""
    text, texts = obj.get("text"), obj.get("texts")
    if text is not None:
        if not isinstance(text, str):
            return f"'text' is {type(text).__name__}, not a string"
        if not text:
            return "'text' is empty"
        if texts:
            return "'text' and 'texts' are both set"
    if texts is not None:
        if not isinstance(texts, list) or not texts:
            return "'texts' is empty" if texts == [] else "'texts' is not a list"
        if all(isinstance(t, str) for t in texts):
            if not all(texts):
                return "'texts' holds an empty text"
        elif all(isinstance(t, dict) for t in texts):
            for t in texts:
                contents = t.get("contents")
                if (not isinstance(contents, list) or not contents
                        or not all(isinstance(c, str) and c for c in contents)):
                    return "'texts' holds an object whose 'contents' is empty or not texts"
        else:
            return "'texts' mixes strings and objects (AIPerf takes one kind or the other)"
    if text is None and texts is None and not any(obj.get(key) for key in _MEDIA):
        return "no text (nor any image, audio or video)"
    return None


def _multi_turn(obj: dict[str, Any]) -> str | None:
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        return "no turns"
    session = obj.get("session_id")
    if session is not None and not isinstance(session, str):
        return f"'session_id' is {type(session).__name__}, not a string"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"turn {i} is not an object"
        found = problem("single_turn", turn)
        if found is not None:
            return f"turn {i}: {found}"
    return None


_ORDER = ("input_length", "text_input", "messages", "payload")
_MODES = frozenset(_ORDER)


def _mooncake(obj: dict[str, Any]) -> str | None:
    mode = None
    for key, value in obj.items():
        if key in _MODES and value is not None:
            if mode is not None:
                mode = ""
                break
            mode = key
    if not mode:
        modes = [key for key in _ORDER if obj.get(key) is not None]
        return ("not exactly one of 'input_length', 'text_input', 'messages' or 'payload'"
                + (f" (found {', '.join(modes)})" if modes else ""))
    value = obj[mode]
    if obj.get("hash_ids") is not None and mode != "input_length":
        return f"'hash_ids' with '{mode}' (they go with 'input_length' only)"
    if obj.get("tools") is not None:
        tools = obj["tools"]
        if mode != "messages":
            return f"'tools' with '{mode}' (they go with 'messages' only)"
        if not isinstance(tools, list) or not tools or not all(isinstance(t, dict)
                                                               for t in tools):
            return "'tools' is not a non-empty list of tool objects"
    if mode == "input_length":
        if not _whole(value):
            return f"'input_length' is {value!r}, not a whole number of at least 1"
        ids = obj.get("hash_ids")
        if ids is not None and (not isinstance(ids, list) or not all(
                i.__class__ is int for i in ids)):
            return "'hash_ids' is not a list of whole numbers"
    elif mode == "text_input":
        if not isinstance(value, str) or not value:
            return "'text_input' is empty" if value == "" else "'text_input' is not a string"
    elif mode == "messages":
        found = _messages(value, "messages")
        if found is not None:
            return found
    else:
        if not isinstance(value, dict) or not value:
            return "'payload' is not a non-empty object"
        if "messages" in value:
            found = _messages(value["messages"], "payload.messages")
            if found is not None:
                return found
        elif "prompt" in value and is_empty(value["prompt"]):
            return "'payload.prompt' is empty"
    return _typed(obj)


def _messages(messages: Any, key: str) -> str | None:
    """OpenAI chat messages as AIPerf takes them, the last one (the prompt's end) not
    empty: it holds content, or tool calls."""
    if not isinstance(messages, list) or not messages:
        return f"'{key}' is not a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            return f"'{key}' item {i} is not an object with a 'role'"
    last = messages[-1]
    if is_empty(last.get("content")) and not last.get("tool_calls"):
        return f"the last message ({last['role']}) is empty: the request has no prompt"
    return None


def _bailian(obj: dict[str, Any]) -> str | None:
    for key in ("chat_id", "parent_chat_id", "turn"):
        value = obj.get(key)
        if (value is not None or key == "chat_id") and value.__class__ is not int:
            return f"'{key}' is {type(value).__name__}, not a whole number"
    timestamp = obj.get("timestamp")
    if timestamp.__class__ not in (int, float):
        return f"'timestamp' is {type(timestamp).__name__}, not a number"
    for key in ("input_length", "output_length"):
        if not _whole(obj.get(key)):
            return f"'{key}' is {obj.get(key)!r}, not a whole number of at least 1"
    if not isinstance(obj.get("type", ""), str):
        return f"'type' is {type(obj['type']).__name__}, not a string (the request type)"
    ids = obj.get("hash_ids", [])
    if not isinstance(ids, list) or not all(i.__class__ is int for i in ids):
        return "'hash_ids' is not a list of whole numbers"
    return None


def _burst_gpt(obj: dict[str, Any]) -> str | None:
    timestamp = obj.get("Timestamp")
    if timestamp.__class__ not in (int, float) or timestamp < 0:
        return f"'Timestamp' is {timestamp!r}, not a number of seconds of at least 0"
    for key in ("Request tokens", "Response tokens"):
        if not _whole(obj.get(key)):
            return f"'{key}' is {obj.get(key)!r}, not a whole number of at least 1"
    return None


_TURN_FIELDS = frozenset({"text", "texts", *_MEDIA, "image_uuids", "role", "session_id",
                          "timestamp", "delay", "output_length", "extra", "type"})
#: The fields each type's model reads (it keeps a line's other fields aside, unread).
FIELDS = {
    "single_turn": _TURN_FIELDS,
    "multi_turn": frozenset({"turns", "session_id", "type"}),
    "random_pool": frozenset({"text", "texts", *_MEDIA, "type"}),
    "mooncake_trace": frozenset({*_ORDER, "hash_ids", "tools", "output_length", "timestamp",
                                 "delay", "session_id", "extra", "type"}),
    # (AIPerf reads any other field as an attribute too: 'extra' is sent.)
    "bailian_trace": frozenset({"chat_id", "parent_chat_id", "timestamp", "input_length",
                                "output_length", "type", "turn", "hash_ids", "extra"}),
}

_RULES: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "single_turn": _turn,
    "multi_turn": _multi_turn,
    "random_pool": _texts,
    "mooncake_trace": _mooncake,
    "bailian_trace": _bailian,
    "burst_gpt_trace": _burst_gpt,
    "raw_payload": lambda obj: _messages(obj.get("messages"), "messages"),
}
