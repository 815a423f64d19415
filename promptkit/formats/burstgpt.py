"""BurstGPT traces (``burst_gpt_trace``), written as AIPerf 0.13 loads them: a CSV file.

BurstGPT (github.com/HPMLL/BurstGPT) is a CSV of requests, one a row: ``Timestamp``
(seconds from the trace's start), ``Model``, ``Request tokens``, ``Response tokens``,
``Total tokens``, ``Log Type``. AIPerf's ``BurstGPTTraceDatasetLoader`` reads the
first, third and fourth by name (the others it ignores), makes up a prompt of each
row's length (no text, no hash ids: every prompt its own) and sends each row as a
conversation of its own. It opens the file as plain UTF-8 text (no gzip), and replays
it on its fixed schedule only when told (``--fixed-schedule``: it looks for the
timestamp of a JSON first line, which a CSV has not).

promptkit reads such a CSV by its columns (:mod:`promptkit.formats.table`) and writes
these three columns: a record that holds more (text, hash ids, a session, ``extra``)
is refused, since the file would drop it.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from promptkit.core.errors import ConversionError, InvalidRecordError
from promptkit.core.records import Record
from promptkit.formats._schema import no_place
from promptkit.formats.bailian import ms_to_seconds

#: BurstGPT's columns, in its order; AIPerf reads ``Timestamp``, ``Request tokens`` and
#: ``Response tokens``.
COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens",
           "Log Type")
_HINT = "a BurstGPT row is a request's lengths, time and plain columns; write --to mooncake_trace"


def parse_burst_gpt(obj: dict[str, Any]) -> Record:
    raise InvalidRecordError("a BurstGPT trace is a CSV file: give its path (its columns "
                             "say what it is), without --from")


def dump_burst_gpt(record: Record) -> dict[str, Any]:
    """A row: the timestamp in seconds, the lengths, and the record's other fields as
    columns (a BurstGPT CSV's ``Model``, ``Total tokens``, ``Log Type`` read back), in
    BurstGPT's order."""
    for attr, what in (("messages", "a prompt's text"), ("hash_ids", "hash ids"),
                       ("session_id", "a session"), ("extra", "'extra'"), ("delay", "'delay'")):
        if getattr(record, attr):
            raise no_place("burst_gpt_trace", what, _HINT)
    for attr, what in (("timestamp", "a timestamp"), ("input_length", "an input_length"),
                       ("output_length", "an output_length")):
        if getattr(record, attr) is None:
            raise ConversionError(f"burst_gpt_trace needs {what} on every row")
    values = {**record.fields, "Timestamp": ms_to_seconds(record.timestamp),  # type: ignore[arg-type]
              "Request tokens": record.input_length, "Response tokens": record.output_length}
    for key, value in record.fields.items():
        if key in ("Timestamp", "Request tokens", "Response tokens"):
            raise no_place("burst_gpt_trace", f"a second {key!r} column")
        if value is not None and value.__class__ not in (str, int, float, bool):
            raise no_place("burst_gpt_trace", f"field {key!r} (a {type(value).__name__}: a "
                           "CSV column holds plain values)", _HINT)
    return {**{k: values.pop(k) for k in COLUMNS if k in values}, **values}


class Rows:
    """Writes records as the rows of one CSV, in order: every row has the first one's
    columns (a CSV has one header)."""

    def __init__(self) -> None:
        self.columns: list[str] | None = None

    def __call__(self, record: Record) -> dict[str, Any]:
        row = dump_burst_gpt(record)
        if self.columns is None:
            self.columns = list(row)
        elif list(row) != self.columns:
            raise ConversionError(f"its columns are {', '.join(row)}, and the first row's "
                                  f"{', '.join(self.columns)} (a CSV has one header)")
        return row


def _line(values: Any) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().encode()


def encode_row(row: dict[str, Any]) -> bytes:
    """A row as a CSV line."""
    return _line(repr(v) if v.__class__ is float else v for v in row.values())


def header(row: dict[str, Any]) -> bytes:
    """The CSV's header, of its first row."""
    return _line(row)
