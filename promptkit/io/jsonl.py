"""Reading records from a JSONL file or stdin.

:class:`Source` reads JSONL in large chunks (``read1``, so records from a pipe flow on
as soon as they arrive), hashes the bytes for the manifest, detects the format from the
first records, and reports bad lines as ``FILE:LINE: problem``. The bytes may be
compressed, start with a byte order mark, or hold one JSON array of objects (or an
AIPerf ``inputs.json``) instead of lines. :func:`parse_lines` and :func:`parse_objects`
make records of lines and array items (a worker parses its chunk with them).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import orjson

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.limits import MAX_LINE, size_text
from promptkit.core.records import Record
from promptkit.formats import Format, default_output, detect_many, get_format
from promptkit.formats.payloads import session_payloads
from promptkit.io import compression
from promptkit.io.files import CHUNK, STDIO, display_name
from promptkit.io.jsoncodec import (
    KEY_ENDS,
    TOO_DEEP,
    array_items,
    beyond_64_bits,
    duplicate_key,
    exact_loads,
    load_line,
    lost_digits,
    too_deep,
)

#: Records read ahead to detect a file's format.
DETECT_RECORDS = 64
#: The UTF-8 byte order mark some editors put first (Notepad, PowerShell).
BOM = b"\xef\xbb\xbf"


class Counter:
    """Something that counts the records read (``parse_lines`` adds to it)."""

    count = 0


class Source(Counter):
    """Records of one JSONL file (or stdin), with counts and a sha256 of its bytes.

    The bytes may be compressed (gzip, zstd, bz2, xz: told by their first bytes),
    start with a UTF-8 byte order mark, or hold one JSON array of objects instead of
    JSON lines: each item is then a record, numbered as a line would be. The sha256
    is that of the bytes as read.
    """

    #: ``--limit``: read only the first this many records (None: all of them).
    limit: int | None = None
    #: The places in the stream before this file's first line (for a shard of many
    #: files, see :mod:`promptkit.io.shards`): added to each record's line number and index.
    base: int = 0

    def __init__(self, path: str, fmt: str | None = None, *, skip_invalid: bool = False,
                 allow_empty: bool = False):
        """``allow_empty``: a file with no records is no error (one shard of many)."""
        self.path = path
        self.name = display_name(path)
        self.skip_invalid = skip_invalid
        self.sha256 = hashlib.sha256()
        self.count = 0  # records read
        self.skipped: list[str] = []  # "LINE: problem" of each skipped line
        self.before_read: Callable[[], None] | None = None
        #: For progress: the bytes read, the lines split off them, and whether all is read.
        self.bytes_read = 0
        self.lines_read = 0
        self.at_end = False
        #: The codec the bytes are compressed with (None: plain).
        self.compression: str | None = None
        #: ``lines`` (JSON lines) or ``array`` (one JSON array of objects).
        self.layout = "lines"
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
        #: What was read to detect the format, to be parsed again in order: batches
        #: ``(first line number, lines)``, or ``(item number, value)`` of an array.
        self._read_ahead: list[Any] = []
        try:
            first, chunks = _first_byte(self._content(), self.name)
            self._items: Iterator[Any]
            document = False
            if first == b"{":
                document, chunks = _data_list(chunks)
            if first == b"[" or document:
                self.layout = "array"
                items = array_items(chunks, self.name, closing="}" if document else "")
                self._items = inputs_json_items(items, self.name) if document else items
            else:
                self._items = self._counted(_line_batches(chunks, self.name))
            if fmt == "inputs_json" and not document:
                raise PromptkitError(f"{self.name}: --from inputs_json: not an inputs.json "
                                     'document ({"data": [{"session_id": ..., "payloads": '
                                     "[...]}]}, as AIPerf writes it)")
            self._head = self._first_objects()
            self.format: Format = (get_format(fmt) if fmt
                                   else get_format("inputs_json") if document
                                   # No records: any format reads none of them.
                                   else get_format("openai") if allow_empty and not self._head
                                   else self._detect())
            self._empty = not self._head
            self._head = []  # parsed again, from what was read ahead: not held twice
        except BaseException:
            self.close()
            raise

    @property
    def default_output(self) -> str:
        """The output format when none is named: the input's own, if AIPerf loads it."""
        return default_output(self.format.name)

    def shape(self) -> dict[str, str]:
        """For the manifest: how the bytes held the records, where not plain JSON lines."""
        out: dict[str, Any] = {"compression": self.compression} if self.compression else {}
        if self.layout == "array":
            out["layout"] = "json-array"
        if self.limit is not None:
            out["limit"] = self.limit
        return out

    def close(self) -> None:
        if self.path != STDIO:
            self._stream.close()
        self._read_ahead = []  # (a line of hundreds of megabytes, held no longer)

    def expected_records(self) -> int | None:
        """For progress: how many records the input holds, estimated from the lines in
        the bytes read so far and the file's size (exact but for blank and bad lines
        once everything is read); ``None`` for stdin and JSON arrays."""
        if self.layout != "lines":
            return None
        if self.at_end:
            expected: int | None = self.lines_read
        elif self.path == STDIO or not self.bytes_read:
            expected = None
        else:
            try:
                size = os.fstat(self._stream.fileno()).st_size
            except (OSError, ValueError):
                return None
            expected = round(self.lines_read * size / self.bytes_read) if size else None
        if self.limit is not None:  # (--limit N: the first N records)
            return self.limit if expected is None else min(expected, self.limit)
        return expected

    def _counted(self, batches: Iterator[tuple[int, list[bytes]]]
                 ) -> Iterator[tuple[int, list[bytes]]]:
        for batch in batches:
            self.lines_read += len(batch[1])
            yield batch

    def _raw(self) -> Iterator[bytes]:
        """The bytes as read (hashed), in large chunks (``read1``: a pipe's records
        flow on as soon as they arrive)."""
        read = getattr(self._stream, "read1", self._stream.read)
        update = self.sha256.update
        while True:
            if self.before_read is not None:
                self.before_read()
            chunk = read(CHUNK)
            if not chunk:
                self.at_end = True
                return
            update(chunk)
            self.bytes_read += len(chunk)
            yield chunk

    def _content(self) -> Iterator[bytes]:
        """The text's bytes: decompressed when the first bytes name a codec, without a
        leading byte order mark."""
        raw = self._raw()
        head = b""
        for chunk in raw:
            head += chunk
            if len(head) >= compression.MAGIC_BYTES:
                break
        self.compression = compression.sniff(head)
        chunks = _chained(head, raw)
        if self.compression is not None:
            chunks = compression.decompress(chunks, self.compression, self.name)
        return _without_bom(chunks)

    def _first_objects(self) -> list[dict[str, Any]]:
        """The first records (up to ``DETECT_RECORDS`` of those already read), to detect
        the format. What was read for it is kept, to be parsed again in order."""
        head: list[dict[str, Any]] = []
        if self.layout == "array":
            for item in self._items:
                self._read_ahead.append(item)
                number, obj = item
                if obj.__class__ is not dict:
                    if not self.skip_invalid:
                        raise InvalidRecordError(
                            f"expected a JSON object, got {type(obj).__name__}", self.name, number)
                    continue  # counted when the records are parsed
                head.append(obj)
                if len(head) == DETECT_RECORDS:
                    break
            return head
        for first, lines in self._items:
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
            raise type(exc)(exc.problem, self.name, self._first_lineno()) from None

    def _first_lineno(self) -> int:
        if self.layout == "array":
            return next((n for n, obj in self._read_ahead if obj.__class__ is dict), 1)
        for first, lines in self._read_ahead:
            for lineno, line in enumerate(lines, start=first):
                if line.strip():
                    return lineno
        return 1

    def _skip_or_raise(self, exc: InvalidRecordError) -> None:
        if not (self.skip_invalid or exc.always_skipped):
            raise exc
        self.skipped.append(f"{exc.lineno}: {exc.problem}")

    def line_batches(self) -> Iterator[tuple[int, list[bytes]]]:
        """``(first line number, lines)`` of the JSON lines, in order, unparsed (what was
        read to detect the format first)."""
        return itertools.chain(self._read_ahead, self._items)

    @property
    def is_empty(self) -> bool:
        """Whether the file holds no records (known once it is opened)."""
        return self._empty

    def records(self, *, allow_empty: bool = False) -> Iterator[Record]:
        """The records, in file order. Raises on the first bad line unless skipping, and
        for a file with no records unless ``allow_empty``."""
        if self._empty and not allow_empty:
            raise PromptkitError(f"{self.name}: empty file: no records")
        items = itertools.chain(self._read_ahead, self._items)
        if self.layout == "array":
            records = parse_objects(items, self.format, self.name, self._skip_or_raise, self,
                                    self.base)
        else:
            records = parse_lines(items, self.format, self.name, self._skip_or_raise, self,
                                  self.base)
        return self.limited(records)

    def limited(self, records: Iterator[Record]) -> Iterator[Record]:
        """``records``, up to :attr:`limit` of them; the rest of the input is then read
        only into the sha256 (which stays that of the whole input)."""
        if self.limit is None:
            return records
        return self._first(records, self.limit)

    def _first(self, records: Iterator[Record], limit: int) -> Iterator[Record]:
        if self.count < limit:
            for record in records:
                yield record
                if self.count >= limit:
                    break
        self.drain()

    def drain(self) -> None:
        """Read the rest of the bytes only into the sha256."""
        read = getattr(self._stream, "read1", self._stream.read)
        while chunk := read(CHUNK):
            self.sha256.update(chunk)
            self.bytes_read += len(chunk)

    @property
    def records_read(self) -> int:
        return self.count

    def objects(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(line number, object)`` of each line (or array item), in order, every integer
        exact; blank lines left out, a line that is no JSON object raised or skipped."""
        items = itertools.chain(self._read_ahead, self._items)
        if self.layout == "array":
            for number, obj in items:
                if obj.__class__ is dict:
                    yield number, obj
                else:
                    self._skip_or_raise(InvalidRecordError(
                        f"expected a JSON object, got {type(obj).__name__}", self.name, number))
            return
        for first, lines in items:
            for lineno, line in enumerate(lines, start=first):
                try:
                    obj = load_line(line, self.name, lineno)
                except InvalidRecordError as exc:
                    self._skip_or_raise(exc)
                    continue
                if obj is not None:
                    yield lineno, exact_loads(line) if beyond_64_bits(obj) else obj


def _chained(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _without_bom(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The bytes without a leading UTF-8 byte order mark (Notepad, PowerShell)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(BOM):
            break
    if head.startswith(BOM):
        head = head[len(BOM):]
    if head:
        yield head
    yield from chunks


#: The start of an AIPerf ``inputs.json``: one object whose first key is ``data``, a list.
_DATA_LIST = re.compile(rb'\s*\{\s*"data"\s*:\s*(?=\[)')


def is_inputs_json(head: bytes) -> bool:
    """Whether text beginning with ``head`` (its first 64 bytes, or all) is an AIPerf
    ``inputs.json`` document."""
    return _DATA_LIST.match(head) is not None


#: What text that may still become :data:`_DATA_LIST` begins with.
_DATA_LIST_START = re.compile(rb'\s*\{\s*(?:"(?:d(?:a(?:t(?:a(?:"\s*(?::\s*)?)?)?)?)?)?)?\Z')


def _data_list(chunks: Iterator[bytes]) -> tuple[bool, Iterator[bytes]]:
    """Whether the text is an ``inputs.json`` document (see :data:`_DATA_LIST`); if so,
    the chunks from the opening bracket of its ``data`` list, else all of them. Reads
    only as far as it must to tell (a stream's first line is not waited for beyond)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if _DATA_LIST.match(head) or not _DATA_LIST_START.match(head) or len(head) > 4096:
            break
    found = _DATA_LIST.match(head)
    if found is None:
        return False, _chained(head, chunks)
    return True, _chained(head[found.end():], chunks)


def inputs_json_items(sessions: Iterator[tuple[int, Any]], name: str
                      ) -> Iterator[tuple[int, Any]]:
    """The request bodies of an ``inputs.json``'s sessions (``data``'s items), each as
    ``{"session_id": ..., "payload": body}``, numbered one by one in the file's order."""
    seen: set[str] = set()
    number = 0
    for at, item in sessions:
        try:
            bodies = session_payloads(item, at - 1)
        except InvalidRecordError as exc:
            raise InvalidRecordError(f"inputs_json: {exc.problem}", name, number + 1) from None
        if bodies[0]["session_id"] in seen:
            raise InvalidRecordError(
                f"inputs_json: data[{at - 1}]: session_id {bodies[0]['session_id']!r} again "
                "(AIPerf refuses the file)", name, number + 1)
        seen.add(bodies[0]["session_id"])
        for body in bodies:
            number += 1
            yield number, body


def _first_byte(chunks: Iterator[bytes], name: str) -> tuple[bytes, Iterator[bytes]]:
    """The first byte that is not white space (``b""`` if none), and all the chunks.

    The white space before it is kept as its newlines alone (blank lines: only their
    count matters), however much of it there is.
    """
    seen: list[bytes] = []
    held = 0  # bytes in seen: white space of the line the first byte is on
    newlines = 0
    first = b""
    for chunk in chunks:
        text = chunk.lstrip()
        if text:
            first = text[:1]
            seen.append(chunk)
            break
        last = chunk.rfind(b"\n")
        if last >= 0:
            newlines += chunk.count(b"\n")
            seen, held = [], 0
            chunk = chunk[last + 1:]
        seen.append(chunk)
        held += len(chunk)
        if held > MAX_LINE:
            raise long_line(name, newlines + 1)
    return first, itertools.chain(_blank_lines(newlines), seen, chunks)


def _blank_lines(count: int) -> Iterator[bytes]:
    while count > 0:
        yield b"\n" * min(count, CHUNK)
        count -= CHUNK


def long_line(name: str, lineno: int) -> InvalidRecordError:
    return InvalidRecordError(f"a line longer than {size_text(MAX_LINE)}: no record is that long "
                              "(is it the right file?)", name, lineno)


def _line_batches(chunks: Iterable[bytes], name: str) -> Iterator[tuple[int, list[bytes]]]:
    """``(first line number, lines)`` of each chunk, whole lines only.

    A line that goes on over many chunks is held as its parts and joined once, when it
    ends: its cost is linear in its length, and a line longer than
    :data:`~promptkit.core.limits.MAX_LINE` is an error. A chunk of white space alone (blank
    lines, as a decompression bomb may hold billions of) only moves the line count on.
    """
    lineno = 1
    held: list[bytes] = []  # the parts of the line not yet ended
    size = 0
    for chunk in chunks:
        if b"\n" not in chunk:
            held.append(chunk)
            size += len(chunk)
            if size > MAX_LINE:
                raise long_line(name, lineno)
            continue
        if held and size + chunk.index(b"\n") > MAX_LINE:
            raise long_line(name, lineno)
        if chunk.isspace():
            first = chunk.index(b"\n")
            if held and not all(part.isspace() for part in held):
                yield lineno, [b"".join(held) + chunk[:first]]
            lineno += chunk.count(b"\n")
            tail = chunk[chunk.rindex(b"\n") + 1:]
            held, size = ([tail], len(tail)) if tail else ([], 0)
            continue
        lines = chunk.split(b"\n")
        if held:
            held.append(lines[0])
            lines[0] = b"".join(held)
        tail = lines.pop()
        held, size = ([tail], len(tail)) if tail else ([], 0)
        yield lineno, lines
        lineno += len(lines)
    if held:
        yield lineno, [b"".join(held)]


def parse_lines(
    batches: Iterable[tuple[int, list[bytes]]],
    fmt: Format,
    name: str,
    on_invalid: Callable[[InvalidRecordError], None],
    counter: Counter,
    base: int = 0,
) -> Iterator[Record]:
    """Records of batches of consecutive lines, ``(first line number, lines)``.

    Blank lines are skipped. A record's ``index`` is its line number less one, so
    a chunk of a file parsed on its own gets the same indices as the whole file
    read in order. Counts the records in ``counter.count``.

    ``base``: the places in the stream before this file (one shard of many, see
    :mod:`promptkit.io.shards`), added to each record's ``lineno`` and ``index``; errors
    still name the file's own line.
    """
    parse = fmt.parse
    loads = orjson.loads
    key_ends = KEY_ENDS
    shift = base - 1
    link = fmt.linker() if fmt.linker is not None else None
    for first, lines in batches:
        lineno = first - 1
        for line in lines:
            lineno += 1
            try:
                obj = loads(line)
                if obj.__class__ is not dict:
                    load_line(line, name, lineno)  # raises the right message
                if too_deep(line, obj):
                    raise InvalidRecordError(TOO_DEEP, name, lineno)
                ends = len(key_ends(line))
                if ends != len(obj) and duplicate_key(line, obj, ends) is not None:
                    load_line(line, name, lineno)  # raises the right message
                record = parse(obj)
                if lost_digits(record):  # orjson read an integer beyond 64 bits as a float
                    record = parse(exact_loads(line))
            except orjson.JSONDecodeError:
                try:
                    load_line(line, name, lineno)  # None (a blank line) or raises
                except InvalidRecordError as exc:
                    on_invalid(exc)
                continue
            except InvalidRecordError as exc:
                if exc.lineno is not None or not beyond_64_bits(obj):
                    on_invalid(
                        type(exc)(f"{fmt.name}: {exc.problem}", name, lineno)
                        if exc.lineno is None else exc
                    )
                    continue
                try:  # e.g. hash ids beyond 64 bits, read as floats: read them exactly
                    record = parse(exact_loads(line))
                except InvalidRecordError as again:
                    on_invalid(type(again)(f"{fmt.name}: {again.problem}", name, lineno))
                    continue
            record.lineno = lineno + base
            record.index = lineno + shift
            if link is not None:
                try:
                    link(record)
                except InvalidRecordError as exc:
                    on_invalid(type(exc)(f"{fmt.name}: {exc.problem}", name, lineno))
                    continue
            counter.count += 1
            yield record


def parse_objects(
    items: Iterable[tuple[int, Any]],
    fmt: Format,
    name: str,
    on_invalid: Callable[[InvalidRecordError], None],
    counter: Counter,
    base: int = 0,
) -> Iterator[Record]:
    """Records of ``(item number, value)`` pairs (the items of a JSON array), as
    :func:`parse_lines` makes them of lines: the item number stands for the line."""
    parse = fmt.parse
    link = fmt.linker() if fmt.linker is not None else None
    for number, obj in items:
        try:
            if obj.__class__ is not dict:
                raise InvalidRecordError(f"expected a JSON object, got {type(obj).__name__}",
                                         name, number)
            record = parse(obj)
            record.lineno = number + base
            record.index = number + base - 1
            if link is not None:
                link(record)
        except InvalidRecordError as exc:
            on_invalid(
                type(exc)(f"{fmt.name}: {exc.problem}", name, number)
                if exc.lineno is None else exc
            )
            continue
        counter.count += 1
        yield record
