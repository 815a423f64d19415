"""Convenience functions for the Python API: records from and to files, and steps as a
``datasets.Dataset.map`` function."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from promptkit.core.errors import InvalidRecordError
from promptkit.core.records import Record
from promptkit.formats import get_format
from promptkit.formats.table import COLUMNS, find_mapping, from_row, to_row
from promptkit.io.jsonl import Source
from promptkit.io.sink import Sink
from promptkit.ops.base import Step
from promptkit.ops.registry import make


def read_records(path: str, fmt: str | None = None) -> Iterator[Record]:
    """The records of a JSONL file (``-`` for stdin), format detected unless given."""
    source = Source(path, fmt)
    try:
        yield from source.records()
    finally:
        source.close()


def write_records(path: str, records: Iterable[Record], fmt: str, *,
                  keep_replies: bool = False) -> int:
    """Write records atomically in format ``fmt``; return how many were written.
    ``keep_replies``: as the CLI's ``--keep-replies``."""
    sink = Sink(path, get_format(fmt), keep_replies=keep_replies)
    try:
        sink.write_all(records)
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    return sink.records_written


class DatasetMap:
    """Steps as a function for ``datasets.Dataset.map(batched=True, with_indices=True)``.

    Each row becomes a record whose index is its row number (as when the CLI reads
    the dataset), the steps run over the batch, and the records come back as
    promptkit's table columns. Operations are index-addressed, so any
    ``num_proc`` gives the rows the sequential CLI writes. One limit: lines of a
    conversation that continue across batches (``session_id`` with ``nonce --at
    user``/``every-turn``) need the CLI, which carries that state in order. A
    column the mapping does not use has no place in promptkit's columns: a row
    with a value in one raises, naming it (``dataset.select_columns`` first).

    ``columns`` are the dataset options of the CLI (``text_column``,
    ``system_column``, ``messages_column``, ``output_length_column``)::

        mapped = dataset.map(DatasetMap([Step("nonce", nonce_params(seed=7))]),
                             batched=True, with_indices=True, num_proc=2,
                             remove_columns=dataset.column_names)
    """

    def __init__(self, steps: list[Step], **columns: str | None):
        # Made as the CLI makes them (parameters checked; a step that needs the output
        # file, such as pad's into="file", is refused here).
        self.steps = [step if step.made else make(step.op, step.params) for step in steps]
        self.columns = {k.removesuffix("_column"): v for k, v in columns.items()}

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        names = list(batch)
        mapping = find_mapping(names, **self.columns)
        records: Iterable[Record] = (
            self._record(dict(zip(names, values, strict=True)), mapping, index)
            for values, index in zip(zip(*batch.values(), strict=True), indices, strict=True))
        for step in self.steps:
            records = step.apply(records)
        out: dict[str, list[Any]] = {name: [] for name in COLUMNS}
        for record in records:
            try:
                row = to_row(record)
            except InvalidRecordError as exc:
                raise InvalidRecordError(exc.problem, None, record.lineno) from None
            for name in COLUMNS:
                out[name].append(row[name])
        return out

    @staticmethod
    def _record(row: dict[str, Any], mapping: Any, index: int) -> Record:
        try:
            record = from_row(row, mapping)
        except InvalidRecordError as exc:
            raise InvalidRecordError(exc.problem, None, index + 1) from None
        record.index = index
        record.lineno = index + 1
        return record
