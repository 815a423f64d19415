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
``instruction``/``input``/``output`` (a recorded reply); or one text column (``prompt``,
``text``, ``question``); a request trace of lengths only (the Azure LLM inference
traces, BurstGPT: :data:`TRACE_COLUMNS`); or the columns a user names.

A trace's timestamps (:class:`Timeline`) become what AIPerf takes: integer
milliseconds from the first record's, in time order.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import orjson

from promptkit.core.errors import BadOptionError, InvalidRecordError, PromptkitError
from promptkit.core.limits import MAX_TOKENS
from promptkit.core.records import Message, Record
from promptkit.formats._schema import no_place
from promptkit.formats.aiperf import parse_messages

#: The columns of a written table, in order.
COLUMNS = ("messages", "session_id", "timestamp", "delay", "output_length", "input_length",
           "hash_ids", "extra")

#: The columns of an alpaca dataset (Stanford alpaca, LLaMA-Factory), read as
#: :func:`promptkit.formats.chat.parse_alpaca` reads a line.
ALPACA_COLUMNS = ("instruction", "input", "output", "system", "history")

#: Text columns tried in turn when no mapping is given.
TEXT_COLUMNS = ("prompt", "text", "question")

#: Request traces of lengths only, recognised by their columns: input length, output
#: length, timestamp, and the unit of a numeric timestamp.
TRACE_COLUMNS = (
    # Azure LLM inference traces 2023 and 2024 (github.com/Azure/AzurePublicDataset):
    # TIMESTAMP is a date-time, e.g. 2023-11-16 18:15:46.6805900.
    ("ContextTokens", "GeneratedTokens", "TIMESTAMP", "ms"),
    # BurstGPT (github.com/HPMLL/BurstGPT): Timestamp is seconds from the trace's start.
    ("Request tokens", "Response tokens", "Timestamp", "s"),
)

#: Units a numeric timestamp can be in, as milliseconds.
TIME_UNITS = {"s": Decimal(1000), "ms": Decimal(1), "us": Decimal("0.001"),
              "ns": Decimal("0.000001")}


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

    layout: str  # promptkit, messages, conversations, alpaca, text or lengths
    text: str | None = None
    system: str | None = None
    messages: str | None = None
    output_length: str | None = None
    input_length: str | None = None
    timestamp: str | None = None
    #: The unit of numeric timestamps (date-times need none).
    timestamp_unit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def columns(self) -> list[str]:
        if self.layout == "promptkit":
            return list(COLUMNS)
        named: tuple[str | None, ...] = (self.messages, self.text, self.system,
                                         self.input_length, self.output_length, self.timestamp)
        if self.layout == "alpaca":
            named = (*ALPACA_COLUMNS, *named[2:])
        return list(dict.fromkeys(c for c in named if c))


def find_mapping(columns: list[str], *, text: str | None = None, system: str | None = None,
                 messages: str | None = None, output_length: str | None = None,
                 input_length: str | None = None, timestamp: str | None = None,
                 timestamp_unit: str | None = None) -> Mapping:
    """The mapping of a dataset with ``columns``; raises naming them when none fits."""
    for name in (text, system, messages, output_length, input_length, timestamp):
        if name is not None and name not in columns:
            raise PromptkitError(f"no column {name!r}; the columns are {', '.join(columns)}")
    if text is not None and messages is not None:
        raise BadOptionError("give --text-column or --messages-column, not both")
    if input_length is not None and (text, messages, system) != (None, None, None):
        raise BadOptionError("a record has a text or an input length, not both: give "
                             "--input-length-column without --text-column, --messages-column "
                             "and --system-column")
    if timestamp_unit is not None and timestamp_unit not in TIME_UNITS:
        raise PromptkitError(f"unknown timestamp unit {timestamp_unit!r}; the units are "
                             f"{', '.join(TIME_UNITS)}")
    mapping = _mapping(columns, text=text, system=system, messages=messages,
                       output_length=output_length, input_length=input_length,
                       timestamp=timestamp)
    if mapping.timestamp is None:
        if timestamp_unit is not None:
            raise BadOptionError("--timestamp-unit: no timestamp column; name it with "
                                 "--timestamp-column")
        return mapping
    unit = timestamp_unit or mapping.timestamp_unit or "ms"  # a detected trace knows its own
    return Mapping(**{**asdict(mapping), "timestamp_unit": unit})


def _mapping(columns: list[str], *, text: str | None, system: str | None, messages: str | None,
             output_length: str | None, input_length: str | None,
             timestamp: str | None) -> Mapping:
    timed = {"output_length": output_length, "timestamp": timestamp}
    if messages is not None:
        return Mapping("messages", system=system, messages=messages, **timed)
    if text is not None:
        return Mapping("text", text=text, system=system, **timed)
    if input_length is not None:
        return Mapping("lengths", input_length=input_length, **timed)
    if set(COLUMNS) <= set(columns) and (system, output_length, timestamp) == (None,) * 3:
        return Mapping("promptkit")
    if "messages" in columns:
        return Mapping("messages", system=system, messages="messages", **timed)
    if "conversations" in columns:
        return Mapping("conversations", system=system, messages="conversations", **timed)
    if "instruction" in columns:
        return Mapping("alpaca", text="instruction", system=system, **timed)
    for name in TEXT_COLUMNS:
        if name in columns:
            return Mapping("text", text=name, system=system, **timed)
    if system is None:
        for given, made, clock, unit in TRACE_COLUMNS:
            if given in columns and made in columns:
                if timestamp is None and clock in columns:
                    return Mapping("lengths", input_length=given,
                                   output_length=output_length or made, timestamp=clock,
                                   timestamp_unit=unit)
                return Mapping("lengths", input_length=given,
                               output_length=output_length or made, timestamp=timestamp)
    raise PromptkitError(
        f"cannot tell which column holds the prompt; the columns are {', '.join(columns)}: "
        "name it with --text-column or --messages-column (or --input-length-column for a "
        "trace of lengths only)"
    )


def from_row(row: dict[str, Any], mapping: Mapping, clock: Timeline | None = None) -> Record:
    """The record of one dataset row (raises InvalidRecordError naming the column).

    A mapping with a timestamp column needs the ``clock`` of the rows read before
    (see :class:`Timeline`); it is advanced only when the row makes a record.
    """
    if mapping.layout == "promptkit":
        own = _from_own_row(row)
        own.fields = _unused(row, mapping)
        return own
    if mapping.layout == "lengths":
        messages = []
    elif mapping.layout == "messages":
        assert mapping.messages is not None
        try:
            messages = parse_messages(row.get(mapping.messages))
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"column {mapping.messages!r}: {exc.problem}") from None
        for message in messages:  # a table has every key in every row: drop the empty ones
            message.fields = {k: v for k, v in message.fields.items() if v is not None}
    elif mapping.layout == "conversations":
        from promptkit.formats.chat import parse_sharegpt

        try:
            messages = parse_sharegpt({"conversations": row.get("conversations")}).messages
        except InvalidRecordError as exc:
            raise type(exc)(f"column 'conversations': {exc.problem}") from None
        for message in messages:  # a table has every key in every row: drop the empty ones
            message.fields = {k: v for k, v in message.fields.items() if v is not None}
    elif mapping.layout == "alpaca":
        from promptkit.formats.chat import parse_alpaca

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
    if mapping.input_length is not None:
        record.input_length = _length(row, mapping.input_length)
    output = mapping.output_length
    # A trace of lengths states every output length; a dataset of texts may leave some out.
    if output is not None and (mapping.layout == "lengths" or not _missing(row.get(output))):
        record.output_length = _length(row, output)
    if mapping.timestamp is not None:
        if clock is None:
            raise PromptkitError("a trace's timestamps are made relative to its first record, "
                                 "read in order: read it with the promptkit command line")
        record.timestamp = clock.place(row.get(mapping.timestamp), mapping.timestamp)
    record.fields = _unused(row, mapping)
    return record


def batch_records(batch: Any, mapping: Mapping, clock: Timeline | None = None
                  ) -> Iterator[Record | InvalidRecordError]:
    """The record of each row of an Arrow batch (a ``RecordBatch`` or ``Table``), in
    order, as :func:`from_row` makes it from the row; a row that makes none gives its
    :class:`InvalidRecordError`, not raised (the reader names the row and may skip it).

    A mapping of one text column is done column by column: each column becomes Python
    values once, and a row's fields are zipped from the columns the mapping leaves (only
    a column that can hold an empty value, a null or a float NaN, is looked at row by
    row). Other layouts go row by row, through :func:`from_row`.
    """
    if mapping.layout != "text":
        for row in batch.to_pylist():
            try:
                yield from_row(row, mapping, clock)
            except InvalidRecordError as exc:
                yield exc
        return
    if mapping.timestamp is not None and clock is None:
        raise PromptkitError("a trace's timestamps are made relative to its first record, "
                             "read in order: read it with the promptkit command line")
    names = list(batch.schema.names)
    used = _used_columns(mapping)
    values = {name: batch.column(i).to_pylist() for i, name in enumerate(names)
              if name in used}
    kept = [name for name in names if name not in used]
    kept_columns = [batch.column(i) for i, name in enumerate(names) if name not in used]
    may_miss = [name for name, column in zip(kept, kept_columns, strict=True)
                if column.null_count or _floating(column.type)]
    assert mapping.text is not None
    text_column, texts = mapping.text, values[mapping.text]
    systems = values[mapping.system] if mapping.system is not None else None
    output = mapping.output_length
    outputs = values[output] if output is not None else None
    stamp = mapping.timestamp
    stamps = values[stamp] if stamp is not None else None
    rows = (zip(*(column.to_pylist() for column in kept_columns), strict=True) if kept
            else itertools.repeat((), batch.num_rows))
    for i, cells in enumerate(rows):
        text = texts[i]
        if not isinstance(text, str):
            yield InvalidRecordError(f"column {text_column!r} is {_kind(text)}, not text")
            continue
        messages = [Message("user", text)]
        record = Record(messages)
        try:
            if systems is not None:
                assert mapping.system is not None
                messages.insert(0, Message("system", _text_of(systems[i], mapping.system)))
            if outputs is not None and not _missing(outputs[i]):
                assert output is not None
                record.output_length = _length_of(outputs[i], output)
            if stamps is not None:
                assert stamp is not None and clock is not None
                record.timestamp = clock.place(stamps[i], stamp)
        except InvalidRecordError as exc:
            yield exc
            continue
        fields = dict(zip(kept, cells, strict=True))
        for name in may_miss:
            if _missing(fields[name]):
                del fields[name]
        record.fields = fields
        yield record


def _floating(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_floating(kind))


def _unused(row: dict[str, Any], mapping: Mapping) -> dict[str, Any]:
    """The row's columns the mapping does not use, kept as the record's fields (written
    back, or refused by a format with no place for them, as a JSONL line's are). A table
    has every column in every row: empty values (null, a CSV's NaN) are left out."""
    used = _used_columns(mapping)
    return {k: v for k, v in row.items() if k not in used and not _missing(v)}


@functools.lru_cache(maxsize=16)
def _used_columns(mapping: Mapping) -> frozenset[str]:
    return frozenset(mapping.columns())


def _missing(value: Any) -> bool:
    """An empty cell: null, or the NaN a CSV reader puts in a number column."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _length(row: dict[str, Any], column: str) -> int:
    """A token count: a positive integer (``12``, ``12.0`` or ``"12"``)."""
    return _length_of(row.get(column), column)


def _length_of(value: Any, column: str) -> int:
    """:func:`_length` of a cell's ``value``: at most :data:`~promptkit.core.limits.MAX_TOKENS`
    (``1e308`` is no length, though a float of it is whole)."""
    number: int | float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = value if value > MAX_TOKENS else int(value)
    elif isinstance(value, str) and (whole := _INTEGER.fullmatch(value.strip())):
        number = int(whole[1])
    if number is None or number < 1:
        raise InvalidRecordError(f"column {column!r} is {_shown(value)}, not a positive integer")
    if number > MAX_TOKENS:
        raise InvalidRecordError(f"column {column!r} is {number}, more than {MAX_TOKENS:,} "
                                 "tokens")
    return int(number)


_INTEGER = re.compile(r"\+?(\d+)(?:\.0*)?")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FRACTION = re.compile(r"(.*\d\d:\d\d:\d\d)[.,](\d+)(\D.*)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Timeline:
    """A trace's timestamps as AIPerf schedules them: integer milliseconds from the first
    record's, rounded half up, in time order.

    A timestamp is a date-time (an ISO 8601 string, with any number of fractional
    digits; without a zone it is taken as UTC) or a number in ``unit``. A record
    earlier than the one before it is an error, as is a date-time in a trace of
    numbers (or the reverse).
    """

    def __init__(self, unit: str = "ms"):
        self.factor = TIME_UNITS[unit]
        self.origin: Decimal | None = None
        self.last: Decimal | None = None
        self.last_value: Any = None
        self.dated: bool | None = None

    def place(self, value: Any, column: str) -> int:
        moment, dated = self._moment(value, column)
        if self.dated is not None and dated != self.dated:
            kinds = ("a date-time", "a number") if dated else ("a number", "a date-time")
            raise InvalidRecordError(f"column {column!r} is {value!r}, {kinds[0]}, but the "
                                     f"first record's is {kinds[1]}")
        if self.last is not None and moment < self.last:
            raise InvalidRecordError(
                f"column {column!r} is {_shown(value)}, earlier than the record before it "
                f"({_shown(self.last_value)}); a trace must be in time order")
        origin = moment if self.origin is None else self.origin
        try:
            offset = int((moment - origin).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        except InvalidOperation:  # beyond Decimal's 28 digits: no trace is that long
            raise InvalidRecordError(f"column {column!r} is {_shown(value)}, too far from the "
                                     "first record's") from None
        self.origin, self.dated = origin, dated
        self.last, self.last_value = moment, value
        return offset

    def _moment(self, value: Any, column: str) -> tuple[Decimal, bool]:
        """The time of ``value`` in milliseconds (since the epoch for a date-time), and
        whether it is a date-time."""
        if isinstance(value, datetime):
            return _milliseconds(value), True
        if isinstance(value, str):
            text = value.strip()
            if _NUMBER.fullmatch(text):
                return Decimal(text) * self.factor, False
            # datetime keeps 6 fractional digits: the fraction is added exactly instead.
            parts = _FRACTION.fullmatch(text)
            fraction = Decimal(f"0.{parts[2]}") * 1000 if parts else Decimal(0)
            try:
                moment = datetime.fromisoformat(parts[1] + (parts[3] or "") if parts else text)
                return _milliseconds(moment) + fraction, True
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return Decimal(value) * self.factor, False
        elif isinstance(value, float) and math.isfinite(value):
            return Decimal(repr(value)) * self.factor, False
        raise InvalidRecordError(f"column {column!r} is {_shown(value)}, not a time (an ISO "
                                 "8601 date-time or a number)")


def _milliseconds(moment: datetime) -> Decimal:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Decimal((moment - _EPOCH) // timedelta(microseconds=1)) / 1000


def _shown(value: Any) -> str:
    """A cell's value in a message (a CSV number column with an empty cell is read as
    floats: 12.0 is shown as the 12 the file has)."""
    if _missing(value):
        return "empty (null)"
    if isinstance(value, datetime):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return repr(int(value))
    return repr(value)


def _from_own_row(row: dict[str, Any]) -> Record:
    extra = row.get("extra")
    return Record(
        messages=[Message(m["role"], m["content"]) for m in row.get("messages") or []],
        session_id=row.get("session_id"),
        timestamp=_number(row.get("timestamp")),
        delay=_number(row.get("delay")),
        output_length=_own_length(row, "output_length"),
        input_length=_own_length(row, "input_length"),
        hash_ids=row.get("hash_ids"),
        extra=orjson.loads(extra) if extra is not None else None,
    )


def _own_length(row: dict[str, Any], column: str) -> int | None:
    value = row.get(column)
    return None if value is None else _length_of(value, column)


def _text(row: dict[str, Any], column: str) -> str:
    return _text_of(row.get(column), column)


def _text_of(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise InvalidRecordError(f"column {column!r} is {_kind(value)}, not text")
    return value


def _kind(value: Any) -> str:
    return "empty (null)" if value is None else f"{type(value).__name__} {value!r}"[:80]
