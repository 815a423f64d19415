"""Alibaba's Bailian usage traces (``bailian_trace``): one request a line, no text.

The public Qwen traces (github.com/alibaba-edu/qwen-bailian-usagetraces-anon, the
"KVCache in the wild" data) hold lines such as::

    {"chat_id": 159, "parent_chat_id": -1, "timestamp": 61.114, "input_length": 521,
     "output_length": 132, "type": "text", "turn": 1, "hash_ids": [1089, 1090, 1091]}

How AIPerf 0.13 loads them (``BailianTrace``, ``BailianTraceDatasetLoader``; run here):

- ``timestamp`` is seconds (AIPerf multiplies it by 1000); the file is replayed on
  AIPerf's fixed schedule;
- a hash id is a block of 16 tokens (the type's own block size), the last one partial;
- lines linked by ``parent_chat_id`` are one session (``-1``, or a parent the file does
  not hold: the line begins one), its turns in the order of ``turn``; AIPerf names the
  session by its first line's ``chat_id``, and sends each later turn as it sends any
  conversation's: after the earlier turns and the server's replies to them, although a
  Bailian line's ids already hold that history;
- ``type`` is the request type (``text``, ``search``, ``image``, ``file``), not AIPerf's
  dataset type; every other field is an attribute AIPerf reads where it has a use for
  it: ``extra`` is merged into the request body.

The canonical record holds ``input_length``, ``hash_ids``, ``output_length``, the
timestamp in milliseconds (as every record does; the decimal digits of the seconds are
kept, so writing it back gives the same number), ``extra``, the session as
``session_id`` (its first line's ``chat_id``, as AIPerf names it) and the Bailian
fields in ``fields``: ``chat_id``, ``parent_chat_id``, ``turn`` and ``request_type``
(the ``type``, under its name in AIPerf's model, so that no other format takes it for a
dataset type).

A line's session depends on the lines before it: :class:`Chains` links them as a file
is read, in one pass, and :class:`Numbering` gives the lines of other formats chat ids
as they are written (both kept for one file, in one process).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from promptkit.core.errors import ConversionError, InvalidRecordError
from promptkit.core.records import Record
from promptkit.formats._schema import bad, no_place
from promptkit.formats.aiperf import check_hash_ids

#: AIPerf's tokens a hash id for this type (its plugin's ``default_block_size``).
BLOCK_SIZE = 16
#: The fields of a Bailian line, in the order the public traces write them.
_KEYS = ("chat_id", "parent_chat_id", "timestamp", "input_length", "output_length", "type",
         "turn", "hash_ids")
#: What the canonical record keeps in ``fields`` (``type`` as ``request_type``).
FIELDS = ("chat_id", "parent_chat_id", "turn", "request_type")
_READ = frozenset({*_KEYS, "extra"})
_THOUSAND = Decimal(1000)


def _whole(obj: dict[str, Any], key: str, *, least: int | None = None) -> int:
    value = obj[key]
    if value.__class__ is not int:
        raise bad(f"'{key}' must be a whole number, not {type(value).__name__}")
    if least is not None and value < least:
        raise bad(f"'{key}' is {value}: it must be at least {least}")
    return value


def _number(value: Decimal) -> int | float:
    """A decimal as JSON writes it: a whole number as an integer."""
    return int(value) if value == value.to_integral_value() else float(value)


def seconds_to_ms(seconds: int | float) -> int | float:
    """Milliseconds of a Bailian timestamp, from its decimal digits (61.114 is 61114)."""
    return _number(Decimal(repr(seconds)) * _THOUSAND)


def ms_to_seconds(ms: int | float) -> int | float:
    """A Bailian timestamp of milliseconds (61114 is 61.114)."""
    return _number(Decimal(repr(ms)) / _THOUSAND)


def parse_bailian(obj: dict[str, Any]) -> Record:
    for key in ("chat_id", "timestamp", "input_length", "output_length"):
        if key not in obj:
            raise bad(f"no '{key}' (a Bailian line has chat_id, timestamp, input_length "
                      "and output_length)")
    chat = _whole(obj, "chat_id")
    parent = _whole(obj, "parent_chat_id") if "parent_chat_id" in obj else -1
    turn = _whole(obj, "turn") if "turn" in obj else 1
    timestamp = obj["timestamp"]
    if timestamp.__class__ not in (int, float):
        raise bad(f"'timestamp' must be a number of seconds, not {type(timestamp).__name__}")
    if timestamp < 0:
        raise bad(f"'timestamp' is {timestamp}: seconds from the trace's start, at least 0")
    length = _whole(obj, "input_length", least=1)
    output = _whole(obj, "output_length", least=1)
    kind = obj.get("type", "")
    if kind.__class__ is not str:
        raise bad(f"'type' must be a string (the request type), not {type(kind).__name__}")
    ids = obj.get("hash_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(i.__class__ is int for i in ids):
            raise bad("'hash_ids' must be a list of whole numbers")
        check_hash_ids(ids, length)
    extra = obj.get("extra")
    if extra is not None and not isinstance(extra, dict):
        raise bad(f"'extra' must be an object, not {type(extra).__name__}")
    fields: dict[str, Any] = {"chat_id": chat, "parent_chat_id": parent, "turn": turn,
                              "request_type": kind}
    for key, value in obj.items():
        if key not in _READ:
            if key in FIELDS:  # (request_type: the name promptkit keeps 'type' under)
                raise bad(f"'{key}' is AIPerf's name for 'type': give one of them")
            fields[key] = value
    return Record(timestamp=seconds_to_ms(timestamp), output_length=output, extra=extra,
                  input_length=length, hash_ids=ids, fields=fields, layout="bailian_trace")


def dump_bailian(record: Record) -> dict[str, Any]:
    """A line of a record that holds its Bailian fields (see :class:`Numbering` for the
    lines of other formats)."""
    return _line(record, record.fields["chat_id"], record.fields.get("parent_chat_id", -1),
                 record.fields.get("turn", 1))


def _line(record: Record, chat: Any, parent: Any, turn: Any) -> dict[str, Any]:
    if record.messages:
        raise no_place("bailian_trace", "a prompt's text",
                       "it holds lengths and hash ids only; write --to mooncake_trace")
    for attr, what in (("input_length", "an input_length"), ("output_length",
                                                               "an output_length"),
                       ("timestamp", "a timestamp")):
        if getattr(record, attr) is None:
            raise ConversionError(f"bailian_trace needs {what} on every line")
    if record.delay is not None:
        raise no_place("bailian_trace", "'delay'", "its lines are timed by timestamp")
    out: dict[str, Any] = {"chat_id": chat, "parent_chat_id": parent,
                           "timestamp": ms_to_seconds(record.timestamp),  # type: ignore[arg-type]
                           "input_length": record.input_length,
                           "output_length": record.output_length,
                           "type": record.fields.get("request_type", ""), "turn": turn}
    if record.hash_ids is not None:
        out["hash_ids"] = record.hash_ids
    if record.extra is not None:
        out["extra"] = record.extra
    for key, value in record.fields.items():
        if key not in FIELDS:
            if key in out:
                raise no_place("bailian_trace", f"a second {key!r} field")
            out[key] = value
    return out


class Chains:
    """Links the lines of a Bailian trace into sessions as they are read: a line's
    session is its parent's (``parent_chat_id``), or begins with it (``-1``, itself, or a
    parent the file does not hold, as AIPerf takes it). A parent read after its child
    is an error: the child was taken for a session's first line (the file must be in
    time order, as the public traces are); so is a ``chat_id`` read twice."""

    def __init__(self) -> None:
        self.roots: dict[int, int] = {}  # chat_id -> its session's first chat_id
        self.waiting: dict[int, int] = {}  # a parent not read yet -> its first child's line

    def __call__(self, record: Record) -> None:
        fields = record.fields
        chat, parent = fields.get("chat_id"), fields.get("parent_chat_id", -1)
        if chat is None:  # (a line of another format: no chain)
            return
        roots = self.roots
        if chat in roots:
            raise InvalidRecordError(f"chat_id {chat} again: a chat_id names one line")
        child = self.waiting.pop(chat, None)
        if child is not None:
            raise InvalidRecordError(
                f"chat_id {chat} is the parent_chat_id of line {child}, read before it: "
                "promptkit links a Bailian trace's turns in one pass, each after its parent "
                "(sort the file by timestamp)")
        if parent == -1 or parent == chat:
            root = chat
        else:
            found = roots.get(parent)
            if found is None:  # not read (yet): the line begins a session, as AIPerf takes it
                self.waiting.setdefault(parent, record.lineno or 0)
                root = chat
            else:
                root = found
        roots[chat] = root
        record.session_id = str(root)


class Numbering:
    """Writes records as Bailian lines, one file in order: a record read from a Bailian
    trace keeps its chat ids; one of another format gets chat ids 1, 2, ... in the
    order written, each line of a session the parent of the next (``turn`` counted),
    a line with no session a session of its own. A chat id written twice (the copies
    ``nonce --copies`` makes) is refused: the sessions would merge."""

    def __init__(self) -> None:
        self.written: set[int] = set()
        self.last: dict[str, tuple[int, int]] = {}  # session -> its last chat_id, turn
        self.count = 0
        self._again: tuple[Record, dict[str, Any]] | None = None

    def __call__(self, record: Record) -> dict[str, Any]:
        if self._again is not None and self._again[0] is record:  # encoded again, exactly
            return self._again[1]
        fields = record.fields
        if "chat_id" in fields:
            out = dump_bailian(record)
        else:
            self.count += 1
            chat = self.count
            parent, turn = -1, 1
            session = record.session_id
            if session is not None and session in self.last:
                parent, turn = self.last[session]
                turn += 1
            out = _line(record, chat, parent, turn)
            if session is not None:
                self.last[session] = (chat, turn)
        chat = out["chat_id"]
        if chat in self.written:
            raise ConversionError(
                f"chat_id {chat} is written twice, which would merge two sessions "
                "(nonce --copies makes copies of a line: write them --to mooncake_trace)")
        self.written.add(chat)
        self._again = (record, out)
        return out


def detected(obj: dict[str, Any]) -> bool:
    """Whether a line is a Bailian trace's: a ``chat_id`` with the fields that chain it,
    and no ``session_id`` or ``request_type`` (a mooncake_trace line written from one)."""
    return ("chat_id" in obj and "input_length" in obj
            and ("parent_chat_id" in obj or "turn" in obj)
            and "session_id" not in obj and "request_type" not in obj)
