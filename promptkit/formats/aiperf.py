"""AIPerf's custom dataset formats: single_turn, multi_turn, random_pool, mooncake_trace.

Field names and rules follow AIPerf 0.13's loader models
(``aiperf.dataset.loader.models``): ``text`` xor ``texts``, ``timestamp`` xor
``delay``, ``extra`` shallow-merged into the request body, and exactly one of
``input_length``/``text_input``/``messages``/``payload`` for mooncake_trace.
"""

from __future__ import annotations

from typing import Any

from promptkit.core.limits import MAX_TOKENS
from promptkit.core.records import USER_ROLES, Message, Record, content_texts
from promptkit.formats._schema import (
    bad,
    check_text_list,
    check_turn_fields,
    check_type,
    no_place,
    refuse,
    require_text,
)

# ---------------------------------------------------------------- single_turn / random_pool

_TURN_KEYS = frozenset(
    {"text", "texts", "role", "session_id", "timestamp", "delay", "output_length", "extra"}
)
#: Turn fields whose type and rules need checking (text and role are checked inline).
_CHECKED_KEYS = _TURN_KEYS - {"text", "texts", "role"}
_MEDIA_KEYS = ("image", "images", "audio", "audios", "video", "videos", "image_uuids")


def _turn_content(obj: dict[str, Any]) -> tuple[Any, bool]:
    """The text of a turn object: ``(content, has_text)``; content is a str or a list."""
    text = obj.get("text")
    texts = obj.get("texts")
    if text is not None and texts is not None:
        raise bad("'text' and 'texts' cannot both be set")
    if text is not None:
        if not isinstance(text, str):
            raise bad(f"'text' must be a string, not {type(text).__name__}")
        return text, True
    if texts is not None:
        return check_text_list(texts, "texts"), True
    if not any(obj.get(k) for k in _MEDIA_KEYS):
        raise bad("no 'text' or 'texts' (nor any image, audio or video)")
    return None, False


def parse_single_turn(obj: dict[str, Any]) -> Record:
    get = obj.get
    text = get("text")
    if text.__class__ is str and "texts" not in obj:  # the common case, checked cheaply
        content = text
    else:
        content, _ = _turn_content(obj)
    role = get("role")
    others = None
    checks = False
    for key in obj:
        if key in _CHECKED_KEYS:
            checks = True
        elif key not in _TURN_KEYS:
            others = obj.keys() - _TURN_KEYS
            break
    if checks or others:
        check_turn_fields(obj)
    elif role is not None and role.__class__ is not str:
        check_turn_fields(obj)  # raises, naming the field
    return Record(
        [Message(role, content)],
        get("session_id"),
        get("timestamp"),
        get("delay"),
        get("output_length"),
        get("extra"),
        None,
        None,
        {k: obj[k] for k in obj if k in others} if others else {},
        "single_turn",
    )


def _text_fields(message: Message, fmt: str) -> dict[str, Any]:
    """``text`` or ``texts`` for one message's content."""
    content = message.content
    if isinstance(content, str):
        return {"text": content}
    if content is None:
        return {}
    texts = []
    for part in content:
        if isinstance(part, str) or (isinstance(part, dict) and "contents" in part):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type") == "text":
            texts.append(part.get("text", ""))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise no_place(fmt, f"a content part of type {kind!r}")
    return {"texts": texts}


#: The hint for a conversation with recorded replies, which AIPerf's formats do not send.
TURNS_HINT = ("it holds recorded replies: 'promptkit turns IN OUT --mode first|each|history "
              "--tokenizer T' makes requests of it")


def _one_message(record: Record, fmt: str) -> Message:
    require_text(record, fmt)
    if len(record.messages) != 1:
        hint = "write it --to multi_turn, openai or mooncake_trace"
        if any(m.role == "assistant" for m in record.messages):
            hint = TURNS_HINT
        elif any(m.role == "system" for m in record.messages):
            hint = "it has a system message; " + hint
        raise no_place(fmt, f"a conversation of {len(record.messages)} messages", hint)
    message = record.messages[0]
    if message.fields:
        raise no_place(fmt, f"message field {next(iter(message.fields))!r}")
    return message


def _schedule(record: Record) -> dict[str, Any]:
    """The record's session and timing fields, in AIPerf's order, as a new dict."""
    out: dict[str, Any] = {}
    if record.session_id is not None:
        out["session_id"] = record.session_id
    if record.timestamp is not None:
        out["timestamp"] = record.timestamp
    if record.delay is not None:
        out["delay"] = record.delay
    return out


def dump_single_turn(record: Record) -> dict[str, Any]:
    messages = record.messages
    if len(messages) == 1 and not messages[0].fields:
        message = messages[0]
    else:
        message = _one_message(record, "single_turn")
    out = _schedule(record)
    if message.role is not None:
        out["role"] = message.role
    content = message.content
    if content.__class__ is str:
        out["text"] = content
    else:
        out.update(_text_fields(message, "single_turn"))
    if record.output_length is not None:
        out["output_length"] = record.output_length
    if record.extra is not None:
        out["extra"] = record.extra
    if record.fields:
        _add_fields(out, record.fields, "single_turn")
    return out


def _add_fields(out: dict[str, Any], fields: dict[str, Any], fmt: str) -> None:
    for key, value in fields.items():
        if key in out:
            raise no_place(fmt, f"a second {key!r} field")
        out[key] = value


_POOL_KEYS = frozenset({"text", "texts"})


def parse_random_pool(obj: dict[str, Any]) -> Record:
    content, _ = _turn_content(obj)
    return Record(
        messages=[Message(None, content)],
        fields={k: v for k, v in obj.items() if k not in _POOL_KEYS},
        layout="random_pool",
    )


def dump_random_pool(record: Record) -> dict[str, Any]:
    message = _one_message(record, "random_pool")
    hint = "AIPerf samples random_pool entries at random and ignores it; use single_turn"
    refuse(record, "random_pool",
           ("session_id", "timestamp", "delay", "output_length", "extra"), hint)
    if message.role not in USER_ROLES:
        raise no_place("random_pool", f"role {message.role!r}", hint)
    out = _text_fields(message, "random_pool")
    _add_fields(out, record.fields, "random_pool")
    return out


# ---------------------------------------------------------------- multi_turn

def parse_multi_turn(obj: dict[str, Any]) -> Record:
    """A conversation. A turn that is a plain string is a user turn with that text, as
    in MT-bench question files (``{"question_id": 81, "turns": ["...", "..."]}``)."""
    turns = obj.get("turns")
    if not isinstance(turns, list) or not turns:
        raise bad("'turns' must be a non-empty list")
    check_type(obj, "session_id", str, "a string")
    messages = []
    for i, turn in enumerate(turns):
        if isinstance(turn, str):
            messages.append(Message(None, turn))  # written back as {"text": ...}
            continue
        if not isinstance(turn, dict):
            raise bad(f"turn {i} must be an object or a string")
        try:
            content, _ = _turn_content(turn)
            check_turn_fields(turn)
        except Exception as exc:
            raise bad(f"turn {i}: {exc}") from None
        fields = {k: v for k, v in turn.items() if k not in ("text", "texts", "role")}
        messages.append(Message(turn.get("role"), content, fields))
    return Record(
        messages=messages,
        session_id=obj.get("session_id"),
        fields={k: v for k, v in obj.items() if k not in ("turns", "session_id")},
        layout="multi_turn",
    )


_PER_TURN = ("timestamp", "delay", "output_length")
#: What keeps AIPerf from taking a leading system turn as the conversation's system prompt.
_UNHOISTED = frozenset({*_PER_TURN, "extra", *_MEDIA_KEYS})


def first_turn(messages: list[Message]) -> int:
    """The turn of a ``multi_turn`` conversation AIPerf sends first: 1 when the first is
    a system turn AIPerf sends as every turn's system prompt (text only and not empty,
    no timing, length or ``extra``, before a turn of another role), else 0."""
    return int(len(messages) > 1 and messages[0].role == "system"
               and messages[1].role != "system" and not _UNHOISTED & messages[0].fields.keys()
               and any(content_texts(messages[0].content)))


def hoisted_system(record: Record) -> bool:
    """Whether AIPerf sends a ``multi_turn`` conversation's first message as the system
    prompt of every turn rather than as a turn of its own."""
    return record.layout == "multi_turn" and first_turn(record.messages) == 1


def turn_tools(record: Record, message: Message | None = None) -> Any:
    """The ``tools`` AIPerf sends with a request of ``record`` (``None``: none): those of
    the turn's own ``extra`` (``message``, a ``multi_turn`` turn), else the record's. Every
    format sends them: ``extra`` is merged into the request body, and OpenAI lines and
    ``mooncake_trace`` messages send their ``tools``."""
    extra = message.fields.get("extra") if message is not None else None
    if isinstance(extra, dict) and "tools" in extra:
        return extra["tools"]
    return record.extra.get("tools") if isinstance(record.extra, dict) else None


def sends_tools(record: Record) -> bool:
    """Whether a request of ``record`` sends tools (a turn of a conversation, any)."""
    extra = record.extra
    if extra is not None and extra.get("tools"):
        return True
    return record.layout == "multi_turn" and any(
        isinstance(m.fields.get("extra"), dict) and m.fields["extra"].get("tools")
        for m in record.messages)


def first_request(record: Record) -> tuple[list[Message], Any]:
    """The messages and tools of the first request AIPerf sends for ``record``: a
    ``multi_turn`` conversation's first turn (after the system prompt it sends with
    every turn), else all of the record's messages."""
    messages = record.messages
    if record.layout != "multi_turn" or not messages:
        return messages, turn_tools(record)
    first = messages[:2] if hoisted_system(record) else messages[:1]
    return first, turn_tools(record, first[-1])


def requests_of(record: Record) -> int:
    """How many requests AIPerf sends for ``record`` in one pass over the file: one a
    turn of a ``multi_turn`` conversation, else one."""
    if record.layout != "multi_turn":
        return 1
    return max(len(record.messages) - hoisted_system(record), 1)



def dump_multi_turn(record: Record) -> dict[str, Any]:
    """A conversation; the record's own timing and length go on the first turn AIPerf
    sends, its ``extra`` (request-body fields) on every turn AIPerf sends, so a leading
    system turn stays the system prompt, not a request of its own."""
    require_text(record, "multi_turn")
    first = first_turn(record.messages)
    turns = []
    for i, message in enumerate(record.messages):
        if message.role in ("assistant", "tool") and record.layout != "multi_turn":
            raise no_place(
                "multi_turn", f"a recorded {message.role} message",
                "AIPerf sends every turn as a request and generates the replies itself; "
                + TURNS_HINT,
            )
        turn: dict[str, Any] = {}
        if message.role is not None:
            turn["role"] = message.role
        turn.update(_text_fields(message, "multi_turn"))
        _add_fields(turn, message.fields, "multi_turn")
        if i == first:  # a one-line record's own timing applies to its (first) request
            for attr in _PER_TURN:
                value = getattr(record, attr)
                if value is not None:
                    if attr in turn:
                        raise no_place("multi_turn", f"a second {attr!r} on turn {i}")
                    turn[attr] = value
        if record.extra is not None and i >= first:  # request-body fields: every request
            turn["extra"] = {**turn.get("extra", {}), **record.extra}
        turns.append(turn)
    out: dict[str, Any] = {}
    if record.session_id is not None:
        out["session_id"] = record.session_id
    out["turns"] = turns
    _add_fields(out, record.fields, "multi_turn")
    return out


# ---------------------------------------------------------------- mooncake_trace

_MOONCAKE_KEYS = frozenset(
    {"input_length", "hash_ids", "text_input", "messages", "payload", "session_id",
     "timestamp", "delay", "output_length", "extra"}
)


def parse_messages(value: Any) -> list[Message]:
    """OpenAI chat messages into canonical messages (other keys kept per message)."""
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty list")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad(f"message {i} must be an object with a string 'role'")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad(f"message {i}: 'content' must be a string or a list of parts")
        messages.append(
            Message(msg["role"], content,
                    {k: v for k, v in msg.items() if k not in ("role", "content")})
        )
    return messages


def chat_content(content: Any) -> Any:
    """Content in OpenAI chat form: AIPerf ``texts`` items become text parts."""
    if not isinstance(content, list):
        return content
    parts: list[Any] = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif isinstance(part, dict) and "contents" in part and "type" not in part:
            parts.extend({"type": "text", "text": text} for text in part["contents"])
        else:
            parts.append(part)
    return parts


def dump_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role or "user", "content": chat_content(m.content)}
        msg.update(m.fields)
        out.append(msg)
    return out


#: The tokens AIPerf 0.13 makes of a mooncake_trace hash id unless told otherwise (its
#: --isl-block-size default).
MOONCAKE_BLOCK_SIZE = 512
#: AIPerf's names for the tokens a hash id stands for.
HASH_BLOCK_FLAGS = ("--prompt-input-tokens-block-size", "--synthetic-input-tokens-block-size",
                    "--isl-block-size")

def block_size_in(args: list[Any]) -> int | None:
    """The tokens a hash id stands for that AIPerf arguments (a manifest's) give, if any."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag in HASH_BLOCK_FLAGS and str(value).isdigit() and int(value) >= 1:
            return int(value)
    return None


#: Hash ids are int64 (AIPerf, Parquet, check's arrays): from 0 to this, inclusive.
MAX_HASH_ID = 2 ** 63 - 1


def check_hash_ids(hash_ids: list[int], input_length: int) -> None:
    """The checks a list of integer hash ids gets whatever the block size: not empty,
    each from 0 to 2^63-1, no more ids than tokens."""
    if not hash_ids:
        raise bad("'hash_ids' is empty: give one id a block of the prompt, or leave it out")
    low, high = min(hash_ids), max(hash_ids)
    if low < 0 or high > MAX_HASH_ID:
        raise bad(f"'hash_ids' holds {low if low < 0 else high}: ids are whole numbers from "
                  "0 to 2^63-1")
    if len(hash_ids) > input_length:
        raise bad(f"{len(hash_ids)} hash ids for input_length {input_length}: more blocks "
                  "than tokens")


def blocks_problem(hash_ids: list[int], input_length: int, block_size: int) -> str | None:
    """Why a hash-id record does not fit the block size (None when it does): ``n`` ids
    are ``n`` blocks, the last one partial, so ``input_length`` must be more than
    ``(n - 1) * block_size`` tokens."""
    most = -(-input_length // block_size)
    if len(hash_ids) <= most:
        return None
    return (f"{len(hash_ids)} hash ids for input_length {input_length}: at block size "
            f"{block_size} that length is at most {most} block{'s' * (most != 1)}")


def parse_mooncake(obj: dict[str, Any]) -> Record:
    modes = [k for k in ("input_length", "text_input", "messages", "payload") if k in obj]
    if len(modes) != 1:
        raise bad(
            "exactly one of 'input_length', 'text_input', 'messages' or 'payload' must be set"
            + (f" (found {', '.join(modes)})" if modes else "")
        )
    mode = modes[0]
    check_turn_fields(obj)
    get = obj.get
    record = Record(
        session_id=get("session_id"),
        timestamp=get("timestamp"),
        delay=get("delay"),
        output_length=get("output_length"),
        extra=get("extra"),
        fields={k: v for k, v in obj.items() if k not in _MOONCAKE_KEYS},
        layout=f"mooncake_trace:{mode}",
    )
    hash_ids = get("hash_ids")
    if hash_ids is not None and mode != "input_length":
        raise bad("'hash_ids' is only allowed with 'input_length'")
    if mode == "input_length":
        length = get("input_length")
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            raise bad("'input_length' must be a positive integer")
        if length > MAX_TOKENS:
            raise bad(f"'input_length' is {length}, more than {MAX_TOKENS:,} tokens")
        if hash_ids is not None and (
            not isinstance(hash_ids, list)
            or not all(isinstance(h, int) and not isinstance(h, bool) for h in hash_ids)
        ):
            raise bad("'hash_ids' must be a list of integers")
        if hash_ids is not None:
            check_hash_ids(hash_ids, length)
        record.input_length = length
        record.hash_ids = hash_ids
    elif mode == "text_input":
        text = get("text_input")
        if not isinstance(text, str):
            raise bad("'text_input' must be a string")
        record.messages = [Message(None, text)]
    elif mode == "messages":
        record.messages = parse_messages(get("messages"))
        if "tools" in record.fields:  # AIPerf sends them with the messages: a body field
            record.extra = {"tools": record.fields.pop("tools"), **(record.extra or {})}
    else:
        payload = get("payload")
        if not isinstance(payload, dict) or not payload:
            raise bad("'payload' must be a non-empty object")
        body = dict(payload)
        if "messages" in body:
            record.messages = parse_messages(body.pop("messages"))
        elif isinstance(body.get("prompt"), str):
            record.messages = [Message(None, body.pop("prompt"))]
            record.layout = "mooncake_trace:payload-prompt"
        else:
            raise bad("'payload' has neither 'messages' nor a string 'prompt'")
        # The payload's other fields are request-body fields, like AIPerf's 'extra'.
        record.extra = {**body, **(record.extra or {})} if body or record.extra else None
    return record


def dump_mooncake(record: Record) -> dict[str, Any]:
    out = _schedule(record)
    layout = record.layout or ""
    in_payload = layout.startswith("mooncake_trace:payload") and bool(record.messages)
    if not record.messages:
        if record.input_length is None:
            raise no_place("mooncake_trace", "a record with no text and no input_length")
        out["input_length"] = record.input_length
    elif in_payload:
        if layout.endswith("prompt"):
            body: dict[str, Any] = {"prompt": record.messages[0].content}
        else:
            body = {"messages": dump_messages(record.messages)}
        body.update(record.extra or {})
        out["payload"] = body
    else:
        only = record.messages[0]
        if (
            len(record.messages) == 1
            and only.role is None
            and isinstance(only.content, str)
            and not only.fields
        ):
            out["text_input"] = only.content
        else:
            out["messages"] = dump_messages(record.messages)
    extra = None if in_payload else record.extra
    if extra is not None and isinstance(extra.get("tools"), list) and "messages" in out:
        # AIPerf's own place for tools, which it checks and sends with the messages.
        out["tools"] = extra["tools"]
        extra = {k: v for k, v in extra.items() if k != "tools"} or None
    if record.output_length is not None:
        out["output_length"] = record.output_length
    if record.hash_ids is not None:
        out["hash_ids"] = record.hash_ids
    if extra is not None:
        out["extra"] = extra
    _add_fields(out, record.fields, "mooncake_trace")
    return out


# ---------------------------------------------------------------- schedules

#: The types AIPerf 0.13 replays on its fixed schedule by itself when the file's first
#: line has a ``timestamp`` (its trace loaders' ``is_trace``; promptkit writes these).
TRACE_TYPES = frozenset({"mooncake_trace", "bailian_trace"})


def fixed_schedule(aiperf_type: str | None, timed: bool, asked: bool | None = None) -> bool:
    """Whether AIPerf 0.13 replays a file on its fixed schedule: every line once, the
    conversations in the order of their first line's timestamp, ``--request-count``
    ignored. ``asked`` is its ``--fixed-schedule`` (True) or ``--no-fixed-schedule``
    (False); ``None`` is AIPerf's own choice: a trace type whose first line has a
    timestamp (``timed``). (A fixed schedule without that timestamp is a run AIPerf
    refuses.)"""
    if asked is not None:
        return asked
    return aiperf_type in TRACE_TYPES and timed
