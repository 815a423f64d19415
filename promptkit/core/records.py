"""The canonical in-memory record every format reads into and writes from.

A record is one line of a dataset file: one conversation (or one turn of a
conversation that continues on later lines sharing its ``session_id``). Transforms
see only this shape, so each is written once for all formats.

Fields a format does not map are kept in ``fields`` (top level) or
``Message.fields`` (per message or turn) and written back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Roles that count as "the user" (``None`` is a turn with no role: servers treat it as user).
USER_ROLES = frozenset({None, "user"})
#: Roles of recorded replies: ``assistant``, and the model names ShareGPT dumps use.
REPLY_ROLES = frozenset({"assistant", "gpt", "chatgpt", "bing", "model", "bard"})


@dataclass(slots=True)
class Message:
    """One message (chat formats) or turn (AIPerf formats).

    ``content`` is a string, or a list of parts: strings (AIPerf ``texts``), dicts
    such as OpenAI content parts ``{"type": "text", "text": ...}`` or AIPerf
    ``{"name": ..., "contents": [...]}`` objects. ``None`` for messages without
    content (an assistant message with only tool calls).
    """

    role: str | None
    content: Any
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Record:
    """One dataset entry in canonical form.

    - ``messages``: the conversation, in order. Empty for records that carry only
      ``input_length``/``hash_ids`` (``mooncake_trace`` without text).
    - ``extra``: fields merged into the request body (AIPerf ``extra``; a
      per-record ``cache_salt`` lives here).
    - ``layout``: how the source format held the content (e.g. ``"payload"`` for a
      ``mooncake_trace`` payload), so writing back to the same format is faithful.
    - ``lineno``: the source line, for error messages.
    - ``index``: the record's position, which index-addressed transforms use (the
      line number less one for a file; ``None`` for records made in memory).
    """

    messages: list[Message] = field(default_factory=list)
    session_id: str | None = None
    timestamp: int | float | None = None
    delay: int | float | None = None
    output_length: int | None = None
    extra: dict[str, Any] | None = None
    input_length: int | None = None
    hash_ids: list[int] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    layout: str | None = None
    lineno: int | None = None
    index: int | None = None

    @property
    def has_text(self) -> bool:
        return bool(self.messages)


def content_texts(content: Any) -> list[str]:
    """Every text of a message content, in order: a string, or the text parts, AIPerf
    ``texts`` strings and ``contents`` of a part list."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif isinstance(part.get("contents"), list):
                    texts.extend(t for t in part["contents"] if isinstance(t, str))
    return texts


def message_texts(record: Record) -> list[str]:
    """Every text of a record's messages, in order (what promptkit counts tokens of)."""
    return [text for message in record.messages for text in content_texts(message.content)]


def is_empty(content: Any) -> bool:
    """Whether a message content holds nothing to send: ``None``, ``""``, no parts, or
    only empty texts (a part that is no text, an image, is something)."""
    if content is None or content.__class__ is str:
        return not content
    if not isinstance(content, list):
        return False
    for part in content:
        if isinstance(part, str):
            if part:
                return False
        elif isinstance(part, dict) and ("text" in part or part.get("type") == "text"):
            if part.get("text"):
                return False
        elif isinstance(part, dict) and "contents" in part and "type" not in part:
            if any(part["contents"] or ()):
                return False
        else:
            return False
    return True


def ends_with_reply(record: Record) -> bool:
    """Whether a record's last message is a recorded reply (what a model once answered)."""
    return bool(record.messages) and record.messages[-1].role in REPLY_ROLES


def first_text(content: Any) -> str | None:
    """The first text of a message content, or ``None`` if it has none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                return part
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    return part["text"]
                contents = part.get("contents")
                if isinstance(contents, list) and contents and isinstance(contents[0], str):
                    return contents[0]
    return None


def prepend_text(content: Any, prefix: str) -> Any:
    """Return ``content`` with ``prefix`` put before its first token, keeping its shape.

    A string gains the prefix; a part list gets it on its first part when that part
    is text, or a new leading text part otherwise (so it still comes first).
    """
    if content is None:
        return prefix
    if isinstance(content, str):
        return prefix + content
    if isinstance(content, list):
        parts = list(content)
        if parts:
            head = parts[0]
            if isinstance(head, str):
                parts[0] = prefix + head
                return parts
            if isinstance(head, dict):
                if head.get("type") == "text" and isinstance(head.get("text"), str):
                    parts[0] = {**head, "text": prefix + head["text"]}
                    return parts
                contents = head.get("contents")
                if isinstance(contents, list) and contents and isinstance(contents[0], str):
                    parts[0] = {**head, "contents": [prefix + contents[0], *contents[1:]]}
                    return parts
        if not parts or isinstance(parts[0], str):
            return [prefix, *parts]
        return [{"type": "text", "text": prefix}, *parts]
    raise TypeError(f"unsupported message content: {type(content).__name__}")
