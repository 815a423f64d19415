"""JSON lines read by a column mapping instead of a line format.

With a column option (``--input-length-column``, ``--text-column``, ...), each
JSONL object is a row: its keys are the columns, mapped to records as a
dataset's are (:func:`promptkit.formats.table.find_mapping`). This is how a
request trace of lengths only, ``{"timestamp": ..., "input_tokens": ...,
"output_tokens": ...}``, becomes ``mooncake_trace`` records.

The file is read in one process, in order: a trace's timestamps are made
relative to its first record and checked to be in time order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.records import Record
from promptkit.formats import FORMATS, Format
from promptkit.formats.table import Mapping, Timeline, find_mapping, from_row
from promptkit.io.datasets import DatasetOptions, default_output
from promptkit.io.jsonl import Source

#: What a manifest names as the format of JSON lines read by columns.
COLUMNS_FORMAT = Format("jsonl", FORMATS["openai"].parse, FORMATS["openai"].dump, None,
                        "JSON lines mapped by columns", True)


class ColumnSource(Source):
    """Records of a JSONL file (or stdin) whose objects are mapped by columns.

    Same surface as :class:`~promptkit.io.jsonl.Source` (the sha256 is of the file's
    bytes), plus :meth:`describe` for the manifest, as a dataset source has.
    """

    def __init__(self, path: str, options: DatasetOptions, *, skip_invalid: bool = False):
        self.options = options
        self.mapping: Mapping | None = None
        super().__init__(path, None, skip_invalid=skip_invalid)
        self.limit = options.limit

    def _detect(self) -> Format:
        if not self._head:
            raise PromptkitError(f"{self.name}: empty file: no records")
        columns = list(dict.fromkeys(key for obj in self._head for key in obj))
        try:
            self.mapping = find_mapping(columns, **self.options.columns())
        except PromptkitError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        return COLUMNS_FORMAT

    @property
    def default_output(self) -> str:
        assert self.mapping is not None
        return default_output(self.mapping)

    def describe(self) -> dict[str, Any]:
        """The manifest's account of the input, beyond path, records and sha256."""
        assert self.mapping is not None
        return {"options": self.options.as_dict(), "mapping": self.mapping.as_dict()}

    def records(self, *, allow_empty: bool = False) -> Iterator[Record]:
        if self.is_empty:
            raise PromptkitError(f"{self.name}: empty file: no records")
        return self.limited(self._records())

    def _records(self) -> Iterator[Record]:
        mapping = self.mapping
        assert mapping is not None
        clock = Timeline(mapping.timestamp_unit) if mapping.timestamp_unit else None
        for lineno, row in self.objects():
            try:
                record = from_row(row, mapping, clock)
            except InvalidRecordError as exc:
                self._skip_or_raise(type(exc)(exc.problem, self.name, lineno))
                continue
            record.lineno = lineno
            record.index = lineno - 1
            self.count += 1
            yield record
