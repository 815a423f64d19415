"""Reading records from a file or stdin, and writing them atomically.

- :class:`Source` reads JSONL in large chunks (``read1``, so records from a pipe
  flow on as soon as they arrive), hashes the bytes for the manifest, detects the
  format from the first record, and reports bad lines as ``FILE:LINE: problem``.
- :class:`Sink` writes to a temporary file beside the output and renames it into
  place only on success: a failed or interrupted run leaves no partial file and
  never damages an existing one.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

import orjson

from .errors import InvalidRecordError, PromptkitError
from .files import put_in_place
from .formats import Format, detect_many, get_format
from .records import Record

if TYPE_CHECKING:
    from .stats import Tap

CHUNK = 1 << 20
#: Records read ahead to detect a file's format.
DETECT_RECORDS = 64
STDIO = "-"


class Counter:
    """Something that counts the records read (``parse_lines`` adds to it)."""

    count = 0


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIO else path


class Source(Counter):
    """Records of one JSONL file (or stdin), with counts and a sha256 of its bytes."""

    def __init__(self, path: str, fmt: str | None = None, *, skip_invalid: bool = False):
        self.path = path
        self.name = display_name(path)
        self.skip_invalid = skip_invalid
        self.sha256 = hashlib.sha256()
        self.count = 0  # records read
        self.skipped: list[str] = []  # "LINE: problem" of each skipped line
        self.before_read: Callable[[], None] | None = None
        #: Called with the bytes of each chunk read and the records so far (progress).
        self.on_read: Callable[[int, int], None] | None = None
        if path == STDIO:
            self._stream: IO[bytes] = sys.stdin.buffer
        else:
            try:
                self._stream = open(path, "rb")  # noqa: SIM115 (closed by close())
            except FileNotFoundError:
                raise PromptkitError(f"{path}: no such file") from None
            except IsADirectoryError:
                raise PromptkitError(f"{path}: is a directory, not a JSONL file") from None
            except OSError as exc:
                raise PromptkitError(f"{path}: {exc.strerror}") from None
        self._batches = self._iter_batches()
        self._read_ahead: list[tuple[int, list[bytes]]] = []
        try:
            self._head = self._first_objects()
            self.format: Format = get_format(fmt) if fmt else self._detect()
        except BaseException:
            self.close()
            raise

    @property
    def default_output(self) -> str:
        """The output format when none is named: the input's own."""
        return self.format.name

    def close(self) -> None:
        if self.path != STDIO:
            self._stream.close()

    def _iter_batches(self) -> Iterator[tuple[int, list[bytes]]]:
        """``(first line number, lines)`` of each chunk read, whole lines only."""
        read = getattr(self._stream, "read1", self._stream.read)
        lineno = 1
        tail = b""
        while True:
            if self.before_read is not None:
                self.before_read()
            chunk = read(CHUNK)
            if not chunk:
                break
            self.sha256.update(chunk)
            if self.on_read is not None:
                self.on_read(len(chunk), self.count)
            lines = chunk.split(b"\n")
            lines[0] = tail + lines[0]
            tail = lines.pop()
            if lines:
                yield lineno, lines
                lineno += len(lines)
        if tail:
            yield lineno, [tail]

    def _first_objects(self) -> list[dict[str, Any]]:
        """The first records (up to ``DETECT_RECORDS`` of those already read), to detect
        the format. The batches read for it are kept, to be parsed again in order."""
        head: list[dict[str, Any]] = []
        for first, lines in self._batches:
            self._read_ahead.append((first, lines))
            for lineno, line in enumerate(lines, start=first):
                try:
                    obj = load_line(line, self.name, lineno)
                except InvalidRecordError:
                    if not self.skip_invalid:
                        raise
                    continue  # counted when the records are parsed
                if obj is not None:
                    head.append(obj)
                    if len(head) == DETECT_RECORDS:
                        return head
            if head:  # never wait for more input just to detect the format
                break
        return head

    def _detect(self) -> Format:
        if not self._head:
            raise PromptkitError(f"{self.name}: empty file: no records")
        try:
            return get_format(detect_many(self._head))
        except InvalidRecordError as exc:
            raise InvalidRecordError(exc.problem, self.name, self._first_lineno()) from None

    def _first_lineno(self) -> int:
        for first, lines in self._read_ahead:
            for lineno, line in enumerate(lines, start=first):
                if line.strip():
                    return lineno
        return 1

    def _skip_or_raise(self, exc: InvalidRecordError) -> None:
        if not self.skip_invalid:
            raise exc
        self.skipped.append(f"{exc.lineno}: {exc.problem}")

    def records(self) -> Iterator[Record]:
        """The records, in file order. Raises on the first bad line unless skipping."""
        if not self._head:
            raise PromptkitError(f"{self.name}: empty file: no records")
        batches = itertools.chain(self._read_ahead, self._batches)
        return parse_lines(batches, self.format, self.name, self._skip_or_raise, self)

    @property
    def records_read(self) -> int:
        return self.count


def load_line(line: bytes, name: str, lineno: int) -> dict[str, Any] | None:
    """The JSON object of one line (None for a blank line)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if not line.strip():
            return None
        problem = str(exc)
        if "UTF-8" in problem or "utf-8" in problem:
            raise InvalidRecordError("invalid UTF-8", name, lineno) from None
        raise InvalidRecordError(f"invalid JSON: {problem}", name, lineno) from None
    if obj.__class__ is not dict:
        raise InvalidRecordError(f"expected a JSON object, got {type(obj).__name__}", name, lineno)
    return obj


def parse_lines(
    batches: Iterable[tuple[int, list[bytes]]],
    fmt: Format,
    name: str,
    on_invalid: Callable[[InvalidRecordError], None],
    counter: Counter,
) -> Iterator[Record]:
    """Records of batches of consecutive lines, ``(first line number, lines)``.

    Blank lines are skipped. A record's ``index`` is its line number less one, so
    a chunk of a file parsed on its own gets the same indices as the whole file
    read in order. Counts the records in ``counter.count``.
    """
    parse = fmt.parse
    loads = orjson.loads
    for first, lines in batches:
        lineno = first - 1
        for line in lines:
            lineno += 1
            try:
                obj = loads(line)
                if obj.__class__ is not dict:
                    load_line(line, name, lineno)  # raises the right message
                record = parse(obj)
            except orjson.JSONDecodeError:
                try:
                    load_line(line, name, lineno)  # None (a blank line) or raises
                except InvalidRecordError as exc:
                    on_invalid(exc)
                continue
            except InvalidRecordError as exc:
                on_invalid(
                    InvalidRecordError(f"{fmt.name}: {exc.problem}", name, lineno)
                    if exc.lineno is None else exc
                )
                continue
            record.lineno = lineno
            record.index = lineno - 1
            counter.count += 1
            yield record


class Encoder:
    """Turns records into JSONL bytes of one format, keeping a key of each prompt."""

    def __init__(self, fmt: Format, *, skip_invalid: bool = False):
        self.format = fmt
        self.skip_invalid = skip_invalid
        self.skipped: list[str] = []
        self.keys = array("q")  # one 64-bit hash of each record's prompt
        self.count = 0
        #: Counts what is written (token statistics), when set.
        self.tap: Tap | None = None
        #: Yield each record's dict, not its JSONL line (a table sink writes the rows).
        self.as_rows = False
        #: OpenAI lines: every top-level field written, since AIPerf sends only some
        #: (``messages`` and ``tools``); the manifest names the others.
        self.fields: set[str] | None = set() if fmt.name == "openai" else None

    def encode_all(self, records: Iterable[Record]) -> Iterator[Any]:
        """The JSONL line of each record (records the format cannot hold: error or skip);
        with ``as_rows``, the format's dict of each record instead (for table sinks)."""
        dump = self.format.dump
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        keep_key = self.keys.append
        tap = self.tap
        as_rows = self.as_rows
        fields = self.fields
        for record in records:
            try:
                obj = dump(record)
                if fields is not None:
                    fields.update(obj)
                data = obj if as_rows else dumps(obj, option=newline)
            except InvalidRecordError as exc:
                problem = f"cannot write as {self.format.name}: {exc.problem}"
                if not self.skip_invalid:
                    raise InvalidRecordError(problem, None, record.lineno) from None
                self.skipped.append(f"{record.lineno}: {problem}")
                continue
            except TypeError as exc:  # e.g. an integer beyond 64 bits
                raise InvalidRecordError(f"cannot encode: {exc}", None, record.lineno) from None
            keep_key(prompt_key(record))
            self.count += 1
            if tap is not None:
                tap.add(record)
            yield data
        if tap is not None:
            tap.finish()


class Written:
    """What every sink reports of what its :class:`Encoder` passed: records written,
    records skipped, distinct prompts."""

    encoder: Encoder

    @property
    def records_written(self) -> int:
        return self.encoder.count

    @property
    def skipped(self) -> list[str]:
        return self.encoder.skipped

    def distinct_records(self) -> int:
        """How many records have distinct prompts (hash of messages, ids and salt).

        Keeps 8 bytes a record; sorted in place, so counting costs no more.
        """
        import numpy as np

        if not self.encoder.keys:
            return 0
        keys = np.frombuffer(self.encoder.keys, dtype=np.int64)
        keys.sort()
        return int(1 + np.count_nonzero(keys[1:] != keys[:-1]))


class Sink(Written):
    """Writes records in one format to a path (atomically) or stdout, hashing the bytes."""

    def __init__(self, path: str, fmt: Format, *, skip_invalid: bool = False,
                 inputs: Iterable[str] = ()):
        self.path = path
        self.name = "<stdout>" if path == STDIO else path
        self.format = fmt
        self.encoder = Encoder(fmt, skip_invalid=skip_invalid)
        self.sha256 = hashlib.sha256()
        self._parts: list[bytes] = []
        self._size = 0
        self._tmp: str | None = None
        if path == STDIO:
            self._stream: IO[bytes] = sys.stdout.buffer
        else:
            refuse_overwrite(path, inputs)
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                raise PromptkitError(f"{path}: folder {folder} does not exist")
            fd, self._tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(path)}.", suffix=".promptkit-tmp", dir=folder
            )
            self._stream = os.fdopen(fd, "wb")

    def write_all(self, records: Iterable[Record]) -> None:
        parts = self._parts
        for data in self.encoder.encode_all(records):
            parts.append(data)
            self._size += len(data)
            if self._size >= CHUNK:
                self.flush()

    def write_bytes(self, data: bytes | memoryview) -> None:
        """Write already-encoded lines (from a worker), in order."""
        self.flush()
        self.sha256.update(data)
        self._stream.write(data)

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            self.sha256.update(data)
            self._stream.write(data)
        if self.path == STDIO:
            self._stream.flush()

    def commit(self) -> None:
        self.flush()
        if self._tmp is None:
            return
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        put_in_place(self._tmp, self.path)
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            self._stream.close()
            os.unlink(self._tmp)
            self._tmp = None


def refuse_overwrite(path: str, inputs: Iterable[str]) -> None:
    """Raise if writing ``path`` would overwrite one of the ``inputs``."""
    for source in inputs:
        if source == STDIO or not os.path.exists(path):
            continue
        if os.path.samefile(path, source):
            raise PromptkitError(f"{path}: refusing to overwrite the input file")


def prompt_key(record: Record) -> int:
    """A 64-bit key of what the server sees first: the prompt, hash ids and salt (a
    record with only an input length is a prompt of its own)."""
    extra = record.extra
    salt = extra.get("cache_salt") if extra else None
    messages = record.messages
    if len(messages) == 1 and messages[0].content.__class__ is str:
        return hash((messages[0].role, messages[0].content, salt))
    if not messages and not record.hash_ids:
        # Only a length: AIPerf makes a prompt of random tokens for each such record.
        return hash(("synthetic", record.index if record.index is not None else id(record)))
    parts: list[Any] = [record.input_length, salt]
    if record.hash_ids:
        parts.append(tuple(record.hash_ids))
    for m in messages:
        content = m.content
        parts.append(m.role)
        parts.append(content if isinstance(content, str) else orjson.dumps(content))
    return hash(tuple(parts))
