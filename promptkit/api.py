"""Convenience functions for the Python API: records from a file, records to a file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .formats import get_format
from .records import Record
from .streams import Sink, Source


def read_records(path: str, fmt: str | None = None) -> Iterator[Record]:
    """The records of a JSONL file (``-`` for stdin), format detected unless given."""
    source = Source(path, fmt)
    try:
        yield from source.records()
    finally:
        source.close()


def write_records(path: str, records: Iterable[Record], fmt: str) -> int:
    """Write records atomically in format ``fmt``; return how many were written."""
    sink = Sink(path, get_format(fmt))
    try:
        sink.write_all(records)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return sink.records_written
