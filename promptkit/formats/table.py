"""Records as table rows: promptkit's own columns, and the columns of other datasets.

Written tables (parquet, a ``save_to_disk`` folder, a published dataset) use
:data:`COLUMNS`, one row a record::

    messages       list of {role: string, content: string}
    session_id     string            timestamp, delay   float64 (ms)
    output_length  int64             input_length       int64
    hash_ids       list of int64     extra              string (JSON object)

A column is null where a record has no such value. Text content only: records
with content parts, per-message fields or unmapped fields cannot be written this
way (a conversion never drops data; the error says so).

Reading a dataset maps its columns by name (:func:`find_mapping`): promptkit's
own columns; OpenAI ``messages``; ShareGPT ``conversations``; alpaca
``instruction``/``input``/``output`` (a recorded reply); or one text column (``prompt``, ``text``,
``question``); or the columns a user names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from ..errors import InvalidRecordError, PromptkitError
from ..records import Message, Record
from ._schema import no_place
from .aiperf import parse_messages

#: The columns of a written table, in order.
COLUMNS = ("messages", "session_id", "timestamp", "delay", "output_length", "input_length",
           "hash_ids", "extra")

#: The columns of an alpaca dataset (Stanford alpaca, LLaMA-Factory), read as
#: :func:`promptkit.formats.chat.parse_alpaca` reads a line.
ALPACA_COLUMNS = ("instruction", "input", "output", "system", "history")

#: Text columns tried in turn when no mapping is given.
TEXT_COLUMNS = ("prompt", "text", "question")


def arrow_schema() -> Any:
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([
        ("messages", pa.list_(message)),
        ("session_id", pa.string()),
        ("timestamp", pa.float64()),
        ("delay", pa.float64()),
        ("output_length", pa.int64()),
        ("input_length", pa.int64()),
        ("hash_ids", pa.list_(pa.int64())),
        ("extra", pa.string()),
    ])


def to_row(record: Record, fmt: str = "parquet") -> dict[str, Any]:
    """A record as a row of :data:`COLUMNS`; raises when it holds more than they can."""
    if record.fields:
        raise no_place(fmt, f"field {next(iter(record.fields))!r}")
    messages = []
    for message in record.messages:
        if message.fields:
            raise no_place(fmt, f"message field {next(iter(message.fields))!r}")
        if message.content is not None and not isinstance(message.content, str):
            raise no_place(fmt, "content parts (only text content)")
        messages.append({"role": message.role, "content": message.content})
    return {
        "messages": messages,
        "session_id": record.session_id,
        "timestamp": record.timestamp,
        "delay": record.delay,
        "output_length": record.output_length,
        "input_length": record.input_length,
        "hash_ids": record.hash_ids,
        "extra": orjson.dumps(record.extra).decode() if record.extra is not None else None,
    }


def _number(value: Any) -> Any:
    """float64 columns give back 1000.0 for 1000: keep whole numbers whole."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class Mapping:
    """Which dataset columns make a record (recorded in the manifest)."""

    layout: str  # promptkit, messages, conversations, alpaca or text
    text: str | None = None
    system: str | None = None
    messages: str | None = None
    output_length: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def columns(self) -> list[str]:
        if self.layout == "promptkit":
            return list(COLUMNS)
        if self.layout == "alpaca":
            return list(ALPACA_COLUMNS)
        return [c for c in (self.messages, self.text, self.system, self.output_length) if c]


def find_mapping(columns: list[str], *, text: str | None = None, system: str | None = None,
                 messages: str | None = None, output_length: str | None = None) -> Mapping:
    """The mapping of a dataset with ``columns``; raises naming them when none fits."""
    for name in (text, system, messages, output_length):
        if name is not None and name not in columns:
            raise PromptkitError(f"no column {name!r}; the columns are {', '.join(columns)}")
    if text is not None and messages is not None:
        raise PromptkitError("give --text-column or --messages-column, not both")
    if messages is not None:
        return Mapping("messages", system=system, messages=messages, output_length=output_length)
    if text is not None:
        return Mapping("text", text=text, system=system, output_length=output_length)
    if set(COLUMNS) <= set(columns) and system is None and output_length is None:
        return Mapping("promptkit")
    if "messages" in columns:
        return Mapping("messages", system=system, messages="messages",
                       output_length=output_length)
    if "conversations" in columns:
        return Mapping("conversations", system=system, messages="conversations",
                       output_length=output_length)
    if "instruction" in columns:
        return Mapping("alpaca", text="instruction", system=system, output_length=output_length)
    for name in TEXT_COLUMNS:
        if name in columns:
            return Mapping("text", text=name, system=system, output_length=output_length)
    raise PromptkitError(
        f"cannot tell which column holds the prompt; the columns are {', '.join(columns)}: "
        "name it with --text-column or --messages-column"
    )


def from_row(row: dict[str, Any], mapping: Mapping) -> Record:
    """The record of one dataset row (raises InvalidRecordError naming the column)."""
    if mapping.layout == "promptkit":
        return _from_own_row(row)
    if mapping.layout == "messages":
        assert mapping.messages is not None
        try:
            messages = parse_messages(row[mapping.messages])
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"column {mapping.messages!r}: {exc.problem}") from None
        for message in messages:  # a table has every key in every row: drop the empty ones
            message.fields = {k: v for k, v in message.fields.items() if v is not None}
    elif mapping.layout == "conversations":
        from .chat import parse_sharegpt

        try:
            messages = parse_sharegpt({"conversations": row["conversations"]}).messages
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"column 'conversations': {exc.problem}") from None
    elif mapping.layout == "alpaca":
        from .chat import parse_alpaca

        _text(row, "instruction")
        alpaca = {k: row[k] for k in ALPACA_COLUMNS if row.get(k) is not None}
        try:
            messages = parse_alpaca(alpaca).messages
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"alpaca columns: {exc.problem}") from None
    else:
        assert mapping.text is not None
        messages = [Message("user", _text(row, mapping.text))]
    if mapping.system is not None:
        messages.insert(0, Message("system", _text(row, mapping.system)))
    record = Record(messages=messages)
    if mapping.output_length is not None:
        value = row[mapping.output_length]
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidRecordError(
                    f"column {mapping.output_length!r} is {value!r}, not a positive integer")
            record.output_length = value
    return record


def _from_own_row(row: dict[str, Any]) -> Record:
    extra = row.get("extra")
    return Record(
        messages=[Message(m["role"], m["content"]) for m in row.get("messages") or []],
        session_id=row.get("session_id"),
        timestamp=_number(row.get("timestamp")),
        delay=_number(row.get("delay")),
        output_length=row.get("output_length"),
        input_length=row.get("input_length"),
        hash_ids=row.get("hash_ids"),
        extra=orjson.loads(extra) if extra is not None else None,
    )


def _text(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise InvalidRecordError(f"column {column!r} is {_kind(value)}, not text")
    return value


def _kind(value: Any) -> str:
    return "empty (null)" if value is None else f"{type(value).__name__} {value!r}"[:80]
