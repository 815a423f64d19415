"""CSV and TSV files as rows, strictly: each row has the header's fields.

A leaf module (compression, errors, limits). A CSV file (``.csv``; ``.tsv`` is
tab-separated; either may be compressed: ``trace.csv.gz``, told by its first bytes)
is read a row at a time with the standard library's ``csv`` reader and handed on as
Arrow batches of its rows, as a dataset's are read (see
:class:`promptkit.io.datasets.DatasetSource`). Rows are numbered from 1 after the
header (blank lines are not rows); an error names ``FILE:ROW``.

- A row with more or fewer fields than the header is a bad record (with
  ``--skip-invalid``, left out and counted): a comma in an unquoted text would
  otherwise move every later cell into the next column. Fields after the header's
  that are empty are no fields (a trailing comma), as is an empty name ending the
  header.
- A cell is a number when it reads as one: an integer within 64 bits, or a finite
  decimal; an empty cell is null (no value). A column is a number column in a batch
  when every cell of it is, else every cell is its text, as written. Nothing else is
  read into a cell: ``NA``, ``None`` or ``nan`` are texts (a prompt may say so).
- A row is at most :data:`~promptkit.core.limits.MAX_CSV_ROW` bytes (a quote never closed
  makes the rest of the file one cell), a batch about :data:`BATCH_TEXT` characters:
  memory follows them, not the file.
- A header name left empty is ``Unnamed: I`` (the column's place from 0), a name
  written twice gets ``.1``, ``.2`` after it: what ``pandas`` names them.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from typing import Any, NamedTuple, NoReturn

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.limits import MAX_CSV_ROW, size_text
from promptkit.io import compression

#: The suffixes of CSV files and the character between their fields.
DELIMITERS = {".csv": ",", ".tsv": "\t"}

#: Characters of text in one batch at most (fewer rows than ``batch_rows`` when they are
#: long: memory follows the batch).
BATCH_TEXT = 4 << 20

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT64 = 1 << 63
#: Integers a float64 holds exactly.
_EXACT_FLOAT = 1 << 53


class Numbered(NamedTuple):
    """A batch of rows and the number of its first (a bad row left out between two
    batches keeps the rows after it at their own numbers)."""

    first: int
    batch: Any


def delimiter_of(path: str) -> str | None:
    """The delimiter of a CSV file by its name (``.csv``, ``.tsv``, compressed or not),
    ``None`` for another file."""
    plain = compression.strip_suffix(path)
    for suffix, delimiter in DELIMITERS.items():
        if plain.lower().endswith(suffix):
            return delimiter
    return None


class CsvRows:
    """The rows of a CSV file: its :attr:`columns` (read when made) and
    :meth:`batches` of Arrow record batches, a bad row raised or, with ``skip_invalid``,
    left out and listed in ``skipped`` (``ROW: problem``)."""

    def __init__(self, path: str, name: str, delimiter: str, *, skip_invalid: bool,
                 skipped: list[str], batch_rows: int) -> None:
        self.name = name
        self.skip_invalid = skip_invalid
        self.skipped = skipped
        self.batch_rows = batch_rows
        csv.field_size_limit(MAX_CSV_ROW)  # (128 KiB by default: a long prompt is more)
        self._chunks = compression.read_file(path)
        self.row = 0  # rows read
        self._fed = 0  # bytes of the row being read (see _lines)
        self._reader = csv.reader(self._lines(), delimiter=delimiter, strict=True)
        header = next(self._rows(), None)
        if header is None:
            self.close()
            raise PromptkitError(f"{name}: empty file: no header")
        while len(header) > 1 and header[-1] == "":  # a trailing comma
            header.pop()
        self.columns = _named(header)

    def close(self) -> None:
        """Close the file (the chunks are a generator: closing it closes the file)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def batches(self, *, typed: bool = True) -> Iterator[Numbered]:
        """The rows as Arrow batches of up to ``batch_rows`` rows (and about
        :data:`BATCH_TEXT` characters), in order; ``typed``:
        with number columns (see the module's rules), else every column text."""
        width = len(self.columns)
        held: list[list[str]] = []
        size = 0  # characters held
        first = 1
        try:
            for cells in self._rows():
                self.row += 1
                if len(cells) != width:
                    if len(cells) < width or any(cells[width:]):
                        if held:  # (before the row is counted skipped: in row order)
                            yield Numbered(first, _batch(self.columns, held, typed))
                            held, size = [], 0
                        self._bad(f"{len(cells)} fields, the header has {width}"
                                  + (" (a comma in a text that is not quoted?)"
                                     if len(cells) > width else ""))
                        first = self.row + 1
                        continue
                    del cells[width:]  # empty fields after the last: a trailing comma
                held.append(cells)
                size += sum(map(len, cells))
                if len(held) == self.batch_rows or size >= BATCH_TEXT:
                    yield Numbered(first, _batch(self.columns, held, typed))
                    held, size = [], 0
                    first = self.row + 1
            if held:
                yield Numbered(first, _batch(self.columns, held, typed))
        finally:
            self.close()

    def _bad(self, problem: str) -> None:
        """The row just read is a bad record: raised, or left out and listed."""
        if not self.skip_invalid:
            raise InvalidRecordError(problem, self.name, self.row)
        self.skipped.append(f"{self.row}: {problem}")

    def _rows(self) -> Iterator[list[str]]:
        """The reader's rows, blank lines left out; its errors one line naming the row."""
        reader = self._reader
        while True:
            self._fed = 0  # bytes of the row being read
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InvalidRecordError(f"not CSV: {exc}", self.name, self.row + 1) from None
            if cells:
                yield cells

    def _lines(self) -> Iterator[str]:
        """The text's lines, each with its end (the reader takes a quoted line end as part
        of a cell), a byte order mark left out. A row longer than MAX_CSV_ROW (one line,
        or lines in a quoted cell), or bytes that are not UTF-8, are one line naming the
        row being read (each line is decoded as the reader takes it: a line end is never
        part of a UTF-8 character)."""
        held: list[bytes] = []
        size = 0
        start = True
        for chunk in self._chunks:
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if lines:
                held.append(lines[0])
                lines[0] = b"".join(held)
                held, size = [], 0
            for line in lines:
                self._fed += len(line) + 1
                if self._fed > MAX_CSV_ROW:
                    self._too_long()
                yield self._decoded(line + b"\n", start)
                start = False
            held.append(tail)
            size += len(tail)
            if self._fed + size > MAX_CSV_ROW:
                self._too_long()
        last = b"".join(held)
        if last:
            yield self._decoded(last, start)

    def _too_long(self) -> NoReturn:
        raise InvalidRecordError(f"a row longer than {size_text(MAX_CSV_ROW)}: no record is "
                                 "that long (is it the right file?)", self.name, self.row + 1)

    def _decoded(self, line: bytes, start: bool) -> str:
        try:
            text = line.decode()
        except UnicodeDecodeError:
            raise InvalidRecordError("invalid UTF-8", self.name, self.row + 1) from None
        return text.removeprefix("\ufeff") if start else text


def _named(header: list[str]) -> list[str]:
    """The header's names, an empty one ``Unnamed: I``, a repeated one ``NAME.1``."""
    out: list[str] = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        given, again = name, 0
        while name in out:
            again += 1
            name = f"{given}.{again}"
        out.append(name)
    return out


def typed(batch: Any) -> Any:
    """A batch of text columns with its number columns made numbers (see the module's
    rules): as :meth:`CsvRows.batches` types a batch."""
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [_column(column.to_pylist()) for column in batch.columns], names=batch.schema.names)


def _batch(columns: list[str], rows: list[list[str]], typed: bool) -> Any:
    import pyarrow as pa

    cells = zip(*rows, strict=True)
    return pa.RecordBatch.from_arrays(
        [_column(list(c)) if typed else pa.array(c, pa.string())
         for c in cells], names=columns)


def _column(cells: list[str | None]) -> Any:
    """One column of a batch: int64, float64 or its texts (see the module's rules); an
    empty cell (or ``None``) is null."""
    import pyarrow as pa

    filled = [cell for cell in cells if cell]
    if all(_INT.fullmatch(cell) for cell in filled):
        values = [int(cell) if cell else None for cell in cells]
        if all(-_INT64 <= v < _INT64 for v in values if v is not None):
            return pa.array(values, pa.int64())
        return pa.array([cell or None for cell in cells], pa.string())
    if all(_FLOAT.fullmatch(cell) for cell in filled):
        numbers = [float(cell) if cell else None for cell in cells]
        if all(abs(n) < float("inf") for n in numbers if n is not None) and all(
                abs(int(cell)) < _EXACT_FLOAT for cell in filled if _INT.fullmatch(cell)):
            return pa.array(numbers, pa.float64())
    return pa.array([cell or None for cell in cells], pa.string())
