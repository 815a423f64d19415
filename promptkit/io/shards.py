"""Many files as one input: a folder or a glob of JSONL or parquet shards, read in sorted
path order as one stream.

A record's place in the stream is what index-addressed steps (nonces, sampled lengths)
use, so the output is the same however the stream is split into files: the records of a
JSONL shard are numbered after every line of the shards before it (blank and bad lines
count, as they do in one file), the rows of a parquet shard after every row before it.
Errors and skipped records still name the shard and its own line: ``part-3.jsonl:17``.

The API other code builds on (the Ray helper computes the same offsets, shard by shard,
on a cluster):

- :func:`is_many` -- whether an input names many files (a folder of shards, a glob);
- :func:`expand` -- the shards, sorted; one-line errors for no files or mixed kinds;
- :func:`kind_of` -- ``"jsonl"`` or ``"parquet"``;
- :func:`shard_name` -- a shard's name within its input, wherever the input is;
- :func:`positions` -- the places one shard takes in the stream (lines, or rows);
- :func:`offsets` -- each shard's first place, from the places of those before it;
- :class:`ShardedSource` -- the stream itself, with the surface of
  :class:`~promptkit.io.jsonl.Source`.

The input's sha256 is :func:`~promptkit.io.hashing.combined_sha256` of the shards' own.
"""

from __future__ import annotations

import bisect
import glob
import os
from collections.abc import Iterator
from typing import Any

from promptkit.core.errors import BadOptionError, InvalidRecordError, PromptkitError
from promptkit.core.records import Record
from promptkit.formats import default_output
from promptkit.io import compression
from promptkit.io.datasets import DatasetOptions, DatasetSource
from promptkit.io.files import first_line, special_kind
from promptkit.io.hashing import combined_sha256, file_sha256
from promptkit.io.jsonl import Source

#: Names of JSONL shards in a folder (each may end in a codec's suffix, ``.jsonl.gz``).
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIX = ".parquet"
#: Files a glob may match that are neither JSON lines nor parquet.
_OTHER_TABLES = (".arrow", ".csv", ".tsv")
#: Files that make a folder a Hugging Face dataset (read through ``datasets``), not shards.
_DATASET_MARKERS = ("state.json", "dataset_dict.json", "README.md")
_MAGIC = "*?["


def is_many(spec: str) -> bool:
    """Whether ``spec`` names many files read as one input: a glob (``'logs/*.jsonl'``,
    quoted so the shell leaves it alone) that is not itself a file, or a folder that holds
    ``.jsonl``/``.ndjson`` (compressed or not) or ``.parquet`` files, or nothing at all.
    A folder that is a Hugging Face dataset (``save_to_disk``, or one with a dataset card,
    ``README.md``) or holds neither is read through ``datasets``, as before."""
    if spec == "-" or spec.startswith("hf:"):
        return False
    if os.path.isdir(spec):
        if any(os.path.exists(os.path.join(spec, marker)) for marker in _DATASET_MARKERS):
            return False
        names = _visible(spec)
        return not names or any(_kind_by_name(name) for name in names)
    return any(c in spec for c in _MAGIC) and not os.path.exists(spec)


def expand(spec: str) -> list[str]:
    """The shards ``spec`` names, sorted by path: a folder's ``.jsonl``/``.ndjson``
    (compressed or not) and ``.parquet`` files (hidden files and ``_``-files left out), or
    the files a glob matches (``**`` matches folders at any depth). Raises one line for a
    folder or glob with no such files, for shards of mixed kinds, and for a shard that is
    a link to nothing, a device, a FIFO or a socket."""
    if os.path.isdir(spec):
        names = _visible(spec)
        paths = sorted(_files([os.path.join(spec, name) for name in names
                               if _kind_by_name(name)]))
        if not paths:
            what = "empty folder" if not names else "a folder with no shards"
            raise PromptkitError(f"{spec}: {what}: no .jsonl, .ndjson (compressed or not) "
                                 "or .parquet files")
    else:
        paths = sorted(_files(glob.glob(spec, recursive=True)))
        if not paths:
            raise PromptkitError(f"{spec}: no files match")
        other = next((p for p in paths if _strip(p).endswith(_OTHER_TABLES)), None)
        if other is not None:
            raise PromptkitError(f"{other}: shards are JSON lines or parquet files, not "
                                 f"{os.path.splitext(other)[1]}")
    try:
        kind_of(paths)
    except PromptkitError as exc:
        raise PromptkitError(f"{spec}: {exc}") from None
    return paths


def _files(paths: list[str]) -> list[str]:
    """The files among ``paths`` (folders left out); a link to nothing, a device, a FIFO
    or a socket raises one line: a shard that cannot be read is not left out unsaid."""
    for path in paths:
        if os.path.islink(path) and not os.path.exists(path):
            raise PromptkitError(f"{path}: a link to {os.readlink(path)}, which does not "
                                 "exist")
        what = special_kind(path)
        if what is not None:
            raise PromptkitError(f"{path}: is {what}, not a file of records")
    return [p for p in paths if os.path.isfile(p)]


def shard_name(spec: str, path: str) -> str:
    """A shard's name within the input ``spec`` names: its path from the folder, or from
    a glob's folder (the part before its first wildcard), the same wherever the input
    is."""
    root = spec
    if not os.path.isdir(spec):
        while any(c in root for c in _MAGIC):
            root = os.path.dirname(root)
    return os.path.relpath(path, root or ".")


def kind_of(paths: list[str]) -> str:
    """``"parquet"`` when every path ends in ``.parquet``, ``"jsonl"`` when none does (a
    JSONL shard is read by its content: plain or compressed); mixed kinds raise."""
    parquet = [p for p in paths if p.lower().endswith(PARQUET_SUFFIX)]
    if parquet and len(parquet) != len(paths):
        jsonl = next(p for p in paths if not p.lower().endswith(PARQUET_SUFFIX))
        raise PromptkitError(f"shards of mixed kinds: {parquet[0]} is parquet, {jsonl} is "
                             "JSON lines; read one kind at a time")
    return "parquet" if parquet else "jsonl"


def positions(path: str) -> int:
    """The places a shard takes in the stream: a parquet file's rows, or a JSONL file's
    lines (decompressed; blank and bad lines count, a last line without a newline too)."""
    if path.lower().endswith(PARQUET_SUFFIX):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowException, OSError) as exc:  # a truncated file: no footer
            raise PromptkitError(f"{path}: {first_line(exc)}") from None
    lines = 0
    last = b"\n"
    for chunk in compression.read_file(path):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    return lines + (last != b"\n")


def offsets(counts: list[int]) -> list[int]:
    """Each shard's first place in the stream (its records' indexes start there), given
    every shard's :func:`positions`: ``[0, c0, c0 + c1, ...]``."""
    out, total = [], 0
    for count in counts:
        out.append(total)
        total += count
    return out


def _visible(folder: str) -> list[str]:
    return [n for n in os.listdir(folder) if not n.startswith((".", "_"))]


def _strip(path: str) -> str:
    return compression.strip_suffix(path.lower())


def _kind_by_name(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(PARQUET_SUFFIX):
        return "parquet"
    return "jsonl" if _strip(lower).endswith(JSONL_SUFFIXES) else None


class _Combined:
    """The ``sha256`` of a sharded input: :func:`combined_sha256` of its shards read."""

    def __init__(self, source: ShardedSource):
        self.source = source

    def hexdigest(self) -> str:
        return combined_sha256([shard["sha256"] for shard in self.source.described()])


class ShardedSource:
    """The records of many shards as one stream, with the surface of
    :class:`~promptkit.io.jsonl.Source` (and of
    :class:`~promptkit.io.datasets.DatasetSource` for parquet shards).

    Inside, a record's ``lineno`` is its place in the stream (its index plus one), as a
    line number is in one file; :meth:`locate` and :meth:`name_line` turn it back into
    the shard and the shard's own line for messages. Shards are opened one at a time.
    """

    limit: int | None = None
    layout = "lines"
    compression = None

    def __init__(self, spec: str, fmt: str | None = None, *, skip_invalid: bool = False,
                 dataset: dict[str, Any] | None = None):
        self.path = spec
        self.name = spec
        self.paths = expand(spec)
        self.kind = kind_of(self.paths)
        self.skip_invalid = skip_invalid
        self.before_read: Any = None
        self.options = dict(dataset or {})
        self._check_options(fmt)
        #: ``(first place, path)`` of each shard opened so far, in order.
        self._bases: list[int] = []
        self._done: list[dict[str, Any]] = []  # each shard read: path, sha256, size, ...
        self._skipped_done: list[str] = []
        self._count_done = 0
        self._lines_done = 0
        self._bytes_done = 0
        self._sizes = [os.path.getsize(p) for p in self.paths]
        self._next = 0  # the next shard to open
        self._base = 0
        self._current: Any = None
        self._fmt = fmt
        self.mapping: Any = None
        self._first_rows: dict[str, Any] | None = None
        self.format: Any = None
        # Open shards until one holds records: its format is the stream's.
        while self._next < len(self.paths):
            sub = self._open_next()
            if not _empty(sub):
                self.format = sub.format
                if self.kind == "parquet":
                    self.mapping = sub.mapping
                break
            for _ in sub.records(allow_empty=True):  # none: its bad lines are noted
                pass
            self._finish_current()
        if self.format is None:
            raise PromptkitError(f"{spec}: empty input: no records in "
                                 f"{len(self.paths)} shard{'s' if len(self.paths) != 1 else ''}")

    def _check_options(self, fmt: str | None) -> None:
        unused = {k for k in self.options if k != "limit"}
        if self.kind == "parquet":
            unused -= {"text_column", "system_column", "messages_column",
                       "output_length_column", "input_length_column", "timestamp_column",
                       "timestamp_unit"}
            if fmt is not None:
                raise BadOptionError(f"{self.name}: parquet shards are read by their columns; "
                                     f"--from {fmt} reads JSON lines")
        if unused:
            option = "--" + sorted(unused)[0].replace("_", "-").removesuffix("-seed")
            raise BadOptionError(f"{self.name}: many files as one input; {option} reads one "
                                 "file or dataset")
        self.limit = self.options.pop("limit", None)

    # ------------------------------------------------------------ shards one by one

    def _open_next(self) -> Any:
        path = self.paths[self._next]
        self._next += 1
        self._bases.append(self._base)
        if self.kind == "parquet":
            self._current = self._open_parquet(path)
        else:
            fmt = self._fmt or (self.format.name if self.format is not None else None)
            sub = Source(path, fmt, skip_invalid=self.skip_invalid, allow_empty=True)
            if sub.layout != "lines":
                sub.close()
                raise PromptkitError(f"{path}: a JSON array; shards are JSON lines")
            sub.before_read = self.before_read
            self._current = sub
        self._current.base = self._base
        return self._current

    def _open_parquet(self, path: str) -> Any:
        if positions(path) == 0:
            return _NoRows(path)
        options = DatasetOptions(**self.options)
        sub = DatasetSource(path, options, skip_invalid=self.skip_invalid)
        if self.mapping is not None and sub.mapping.as_dict() != self.mapping.as_dict():
            sub.close()
            raise PromptkitError(f"{path}: its columns map to records otherwise than the first "
                                 f"shard's ({sub.mapping.as_dict()}, the first: "
                                 f"{self.mapping.as_dict()}); give the column options")
        return sub

    def _finish_current(self) -> None:
        """Account for the shard just read to its end, and close it."""
        sub = self._current
        path = self.paths[self._next - 1]
        sub.close()
        if self.kind == "parquet":
            sha256, size = file_sha256(path)
            places = positions(path)
            entry: dict[str, Any] = {"path": path, "sha256": sha256, "size": size}
        else:
            places = sub.lines_read
            size = sub.bytes_read
            entry = {"path": path, "sha256": sub.sha256.hexdigest(), "size": size}
            if sub.compression:
                entry["compression"] = sub.compression
        self._done.append(entry)
        self._skipped_done += self._global(sub.skipped, self._base)
        self._count_done += sub.count
        self._lines_done += places
        self._bytes_done += size
        self._base += places
        self._current = None

    def _drain(self) -> None:
        """Read the rest of the input (after ``--limit``) only into the shards' sha256s."""
        if self._current is not None:
            drain = getattr(self._current, "drain", None)
            if drain is not None:
                drain()
            self._finish_current()
        for path in self.paths[self._next:]:
            sha256, size = file_sha256(path)
            self._done.append({"path": path, "sha256": sha256, "size": size})
            self._bases.append(self._base)
        self._next = len(self.paths)

    @staticmethod
    def _global(skipped: list[str], base: int) -> list[str]:
        out = []
        for line in skipped:
            head, sep, rest = line.partition(": ")
            out.append(f"{int(head) + base}{sep}{rest}" if head.isdigit() else line)
        return out

    # ------------------------------------------------------------ the Source surface

    @property
    def count(self) -> int:
        return self._count_done + (self._current.count if self._current is not None else 0)

    @count.setter
    def count(self, value: int) -> None:
        self._count_done = value - (self._current.count if self._current is not None else 0)

    @property
    def records_read(self) -> int:
        return self.count

    @property
    def skipped(self) -> list[str]:
        current = self._current
        if current is None:
            return list(self._skipped_done)
        return self._skipped_done + self._global(current.skipped, current.base)

    @skipped.setter
    def skipped(self, value: list[str]) -> None:
        """(Only once no shard is open: see :meth:`read_in_workers`.)"""
        self._skipped_done = list(value)

    @property
    def sha256(self) -> _Combined:
        return _Combined(self)

    @property
    def default_output(self) -> str:
        return default_output(self.format.name) if self.kind == "jsonl" else "mooncake_trace"

    def described(self) -> list[dict[str, Any]]:
        """The shards read so far, each ``{"path", "sha256", "size"}`` (and its
        ``compression``, if any), for the manifest."""
        return list(self._done)

    def shape(self) -> dict[str, Any]:
        """For the manifest: the shards, and ``limit`` when given."""
        out: dict[str, Any] = {"shards": self.described()}
        if self.limit is not None:
            out["limit"] = self.limit
        return out

    def describe(self) -> dict[str, Any]:
        """Parquet shards: the manifest's account of how the rows were read."""
        return {"options": {**self.options, **({"limit": self.limit} if self.limit else {})},
                "mapping": self.mapping.as_dict(),
                "sha256_of": "the shards' files (combined: the sha256 of their sha256s)"}

    def expected_records(self) -> int | None:
        current = self._current
        lines = self._lines_done + (getattr(current, "lines_read", 0) if current else 0)
        read = self._bytes_done + (getattr(current, "bytes_read", 0) if current else 0)
        expected = round(lines * sum(self._sizes) / read) if read else None
        if self.limit is not None:
            return self.limit if expected is None else min(expected, self.limit)
        return expected

    def close(self) -> None:
        if self._current is not None:
            self._current.close()

    def records(self) -> Iterator[Record]:
        """The records of every shard, in order (``limit``: the first so many)."""
        stream = self._records()
        if self.limit is None:
            return stream
        return self._first(stream, self.limit)

    def _records(self) -> Iterator[Record]:
        while True:
            sub = self._current
            if sub is not None:
                yield from sub.records(allow_empty=True)
                self._finish_current()
            if self._next >= len(self.paths):
                return
            self._open_next()

    def row_batches(self) -> Iterator[tuple[str, int, int, Any]]:
        """Parquet shards: ``(shard, base, row number in the shard, batch)`` of every row,
        as Arrow batches in order (see :mod:`promptkit.runner.batches`), each shard accounted
        for once read (its sha256, size and rows), as :meth:`records` does."""
        assert self.kind == "parquet"
        while True:
            sub = self._current
            if sub is not None:
                if not isinstance(sub, _NoRows):
                    yield from sub.row_batches()
                self._finish_current()
            if self._next >= len(self.paths):
                return
            self._open_next()

    def expected_rows(self) -> int | None:
        """Parquet shards: the rows of every shard, from their footers."""
        return sum(positions(p) for p in self.paths) if self.kind == "parquet" else None

    def data_size(self) -> int:
        return sum(self._sizes)

    def _first(self, records: Iterator[Record], limit: int) -> Iterator[Record]:
        for record in records:
            yield record
            if self.count >= limit:
                break
        self._drain()

    def read_in_workers(self, described: list[dict[str, Any]], lines: list[int]) -> None:
        """Take the account of the shards as worker processes read them, chunk by chunk
        (see :func:`promptkit.runner.workers.pieces`): each one's path, sha256 and size, and
        its lines (for :meth:`locate`)."""
        if self._current is not None:
            self._current.close()
            self._current = None
        if not described:  # about to be read so: nothing read yet
            self._count_done = 0
            self._skipped_done = []
        self._done = list(described)
        # The shard after the last one counted (still being read, if any) starts at the end.
        self._bases = offsets(lines) + [sum(lines)]
        self._next = len(self.paths)

    # ------------------------------------------------------------ places and names

    def locate(self, place: int) -> tuple[str, int]:
        """The shard and its own line (or row) of a place in the stream."""
        if not self._bases:
            return self.paths[0], place
        i = min(max(0, bisect.bisect_right(self._bases, place - 1) - 1), len(self.paths) - 1)
        return self.paths[i], place - self._bases[i]

    def located(self, exc: InvalidRecordError) -> InvalidRecordError:
        """An error raised without a file (by a step or the writer), naming the shard
        and its own line."""
        if exc.path is not None:
            return exc
        if exc.lineno is None:
            return exc.located(self.name)
        path, line = self.locate(exc.lineno)
        return InvalidRecordError(exc.problem, path, line)

    def name_line(self, skipped: str) -> str:
        """A skipped record's ``PLACE: problem`` as ``SHARD:LINE: problem``."""
        head, sep, rest = skipped.partition(": ")
        if not head.isdigit():
            return skipped
        path, line = self.locate(int(head))
        return f"{path}:{line}{sep}{rest}"


class _NoRows:
    """A parquet shard with no rows."""

    count = 0
    skipped: list[str] = []
    base = 0

    def __init__(self, path: str):
        self.path = path

    def records(self, allow_empty: bool = True) -> Iterator[Record]:
        return iter(())

    def close(self) -> None:
        pass


def _empty(sub: Any) -> bool:
    return isinstance(sub, _NoRows) or bool(getattr(sub, "is_empty", False))
