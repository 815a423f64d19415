"""The one interface every source of records has, for the runner
(:mod:`promptkit.runner.pipeline`) and the commands that read inputs.

A source (a JSONL file or stdin, JSONL read by columns, a dataset, many shards as one
stream) says what it yields and how, so a reader never asks its class:

- :attr:`RecordSource.yields`: what it hands over beyond records (which every source
  yields, :meth:`~RecordSource.records`): :data:`LINES`, raw JSON lines of a line format
  (``line_batches()``: ``(first line number, lines)``), or :data:`BATCHES`, its rows as
  Arrow batches (``row_batches()``: ``(name, base, first row number, batch)``), or only
  :data:`RECORDS`;
- :meth:`~RecordSource.chunk_files`: the file (or files, in order) worker processes may
  read chunk by chunk on their own, with :meth:`~RecordSource.to_workers` before and
  :meth:`~RecordSource.from_workers` after;
- positions: a record's ``lineno`` is its place in the stream; :meth:`~RecordSource.located`
  and :meth:`~RecordSource.name_line` name the file and line of an error or a skipped
  record from it;
- :meth:`~RecordSource.input_entry`: what the manifest says of the input.

:class:`SourceBase` holds what most sources share (one input, whose places are its
lines); a source overrides what differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from promptkit.core.errors import InvalidRecordError
from promptkit.core.records import Record

#: What a source hands over beyond records (:attr:`RecordSource.yields`).
LINES = "lines"
BATCHES = "batches"
RECORDS = "records"


class RecordSource(Protocol):
    """What every source is to whoever reads it (see the module)."""

    path: str
    name: str
    format: Any
    count: int
    #: Called before each read that may wait (stdin): to flush what was written so far.
    before_read: Any

    @property
    def yields(self) -> str: ...

    @property
    def sha256(self) -> Any: ...

    @property
    def records_read(self) -> int: ...

    @property
    def skipped(self) -> list[str]: ...

    @property
    def default_output(self) -> str: ...

    def records(self) -> Iterator[Record]: ...

    def close(self) -> None: ...

    def expected_records(self) -> int | None: ...

    def chunk_files(self) -> str | list[str] | None: ...

    def to_workers(self) -> Any: ...

    def from_workers(self, facts: Any) -> None: ...

    def located(self, exc: InvalidRecordError) -> InvalidRecordError: ...

    def name_line(self, skipped: str) -> str: ...

    def input_entry(self, records: int) -> dict[str, Any]: ...


class SourceBase:
    """What a source of one input shares: its places are its own lines (or rows), no
    worker reads it in chunks, the manifest names it by its name."""

    name: str
    format: Any

    @property
    def yields(self) -> str:
        """What it hands over beyond records (see the module)."""
        return RECORDS

    def chunk_files(self) -> str | list[str] | None:
        """The file (or files, in order) worker processes may read chunk by chunk on
        their own: a file of a line format, read whole (whether the bytes are plain is
        the caller's to ask); ``None``: read here, in one pass."""
        return None

    def to_workers(self) -> Any:
        """Ready to be read again from the start by workers (see :meth:`chunk_files`):
        nothing counted yet; the digest the chunks hash the input into."""
        raise NotImplementedError(f"{type(self).__name__} is not read by workers")

    def from_workers(self, facts: Any) -> None:
        """Take the account of what workers read (``facts``: a
        :class:`promptkit.runner.workers.InputFacts`) where the source keeps one."""

    def located(self, exc: InvalidRecordError) -> InvalidRecordError:
        """An error raised without a file (by a step or the writer), naming this input."""
        return exc if exc.path is not None else exc.located(self.name)

    def name_line(self, skipped: str) -> str:
        """A skipped record's ``PLACE: problem`` as the manifest lists it."""
        return skipped

    def input_entry(self, records: int) -> dict[str, Any]:
        """The manifest's entry of the input, ``records`` of it read."""
        sha256: Any = getattr(self, "sha256")  # noqa: B009 (an attribute or a property)
        return {"path": self.name, "format": self.format.name, "records": records,
                "sha256": sha256.hexdigest()}
