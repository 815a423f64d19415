"""Reading records from a file or stdin, and writing them atomically.

- :class:`Source` reads JSONL in large chunks (``read1``, so records from a pipe
  flow on as soon as they arrive), hashes the bytes for the manifest, detects the
  format from the first record, and reports bad lines as ``FILE:LINE: problem``.
- :class:`Sink` writes to a temporary file beside the output and renames it into
  place only on success: a failed or interrupted run leaves no partial file and
  never damages an existing one.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import enum
import hashlib
import itertools
import json
import math
import os
import re
import sys
import uuid
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

import orjson

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.limits import MAX_DEPTH, MAX_LINE, size_text
from promptkit.core.records import Record
from promptkit.formats import Format, default_output, detect_many, get_format, writer
from promptkit.formats.payloads import session_payloads
from promptkit.io import compression
from promptkit.io.files import os_error, put_in_place, remove_quietly, temporary, writable

if TYPE_CHECKING:
    from promptkit.ops.stats import Tap

CHUNK = 1 << 20
#: Records read ahead to detect a file's format.
DETECT_RECORDS = 64
STDIO = "-"
#: The UTF-8 byte order mark some editors put first (Notepad, PowerShell).
BOM = b"\xef\xbb\xbf"


class Counter:
    """Something that counts the records read (``parse_lines`` adds to it)."""

    count = 0


def display_name(path: str) -> str:
    return "<stdin>" if path == STDIO else path


class Source(Counter):
    #: ``--limit``: read only the first this many records (None: all of them).
    limit: int | None = None
    #: The places in the stream before this file's first line (for a shard of many
    #: files, see :mod:`promptkit.io.shards`): added to each record's line number and index.
    base: int = 0

    """Records of one JSONL file (or stdin), with counts and a sha256 of its bytes.

    The bytes may be compressed (gzip, zstd, bz2, xz: told by their first bytes),
    start with a UTF-8 byte order mark, or hold one JSON array of objects instead of
    JSON lines: each item is then a record, numbered as a line would be. The sha256
    is that of the bytes as read.
    """

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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError("number is infinity when parsed as double")
    return value


#: The standard library's parser: exact for integers beyond 64 bits (orjson reads them as
#: floats), and as strict as orjson about what is JSON.
_EXACT = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def exact_loads(line: bytes) -> Any:
    """A line's JSON value with every integer exact (slower than orjson)."""
    return _EXACT.decode(line.decode("utf-8"))


_NOT_SPACE = re.compile(r"[^ \t\r\n]").search


def array_items(chunks: Iterator[bytes], name: str, closing: str = ""
                ) -> Iterator[tuple[int, Any]]:
    """``(item number, value)`` of each item of the JSON array in ``chunks``, read a
    piece at a time (flat memory), with the standard library's C scanner (exact for
    integers beyond 64 bits). Syntax errors name the item being read. ``closing``: what
    closes the text after the array (the ``}`` of an object holding it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    scan = _EXACT.raw_decode
    text = ""
    pos = 0
    ended = False
    broken = False  # the text ends early at bytes that are not UTF-8
    number = 0  # items read

    def more(least: int = 1) -> None:
        """Read on until at least ``least`` characters are there after ``pos``."""
        nonlocal text, pos, ended, broken
        if least > MAX_LINE:
            raise InvalidRecordError(f"an item longer than {size_text(MAX_LINE)}: no record is "
                                     "that long (is it the right file?)", name, number + 1)
        parts = [text[pos:]]
        have = len(parts[0])
        while have < least and not ended:
            chunk = next(chunks, None)
            held = decoder.getstate()[0]
            try:
                part = decoder.decode(chunk if chunk is not None else b"", final=chunk is None)
            except UnicodeDecodeError as exc:  # the text up to it; the item there fails
                part = (held + (chunk or b""))[:exc.start].decode("utf-8")
                broken = True
                chunk = None
            ended = chunk is None
            parts.append(part)
            have += len(part)
        text = "".join(parts)
        pos = 0

    def ends_early(problem: str) -> InvalidRecordError:
        return InvalidRecordError("invalid UTF-8" if broken else problem, name, number + 1)

    def skip_space() -> str:
        """The next character that is not white space ("" at the end)."""
        nonlocal pos
        while True:
            found = _NOT_SPACE(text, pos)
            pos = found.start() if found else len(text)
            if pos < len(text):
                return text[pos]
            if ended:
                return ""
            more()

    skip_space()
    pos += 1  # the opening bracket: the caller saw it
    after_item = False
    empty = True
    while True:
        char = skip_space()
        if not char:
            raise ends_early("the JSON array is not closed (a truncated file?)")
        if after_item:
            if char == ",":
                pos += 1
                after_item = False
                continue
            if char != "]":
                raise InvalidRecordError(f"invalid JSON: expected ',' or ']' after item {number}",
                                         name, number + 1)
        if char == "]" and (after_item or empty):
            pos += 1
            break
        try:
            value, end = scan(text, pos)
        except RecursionError:  # (before MAX_DEPTH can be checked: the scanner recurses)
            raise InvalidRecordError(TOO_DEEP, name, number + 1) from None
        except json.JSONDecodeError as exc:
            cut = exc.pos >= len(text.rstrip()) - 16 or exc.msg.startswith("Unterminated")
            if cut and not ended:
                more(2 * (len(text) - pos) + 1)  # the item goes on: read twice as much
                continue
            if cut and exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated"):
                raise ends_early("the JSON array ends inside this item (a truncated "
                                 "file?)") from None
            raise ends_early(f"invalid JSON: {exc.msg}") from None
        except ValueError as exc:  # NaN, Infinity, 1e400
            raise InvalidRecordError(f"invalid JSON: {exc}", name, number + 1) from None
        if end == len(text) and not ended:  # a number may go on in the next chunk
            more(2 * (len(text) - pos) + 1)
            continue
        if text.count("[", pos, end) + text.count("{", pos, end) > MAX_DEPTH \
                and nested_deeper(value):
            raise InvalidRecordError(TOO_DEEP, name, number + 1)
        if value.__class__ is dict:
            ends = len(_TEXT_KEY_ENDS(text, pos, end))
            if ends != len(value) and ends != _keys(value):
                try:
                    json.loads(text[pos:end], object_pairs_hook=_unique_pairs)
                except _Duplicate as exc:
                    raise _duplicate_error(exc.key, name, number + 1) from None
        pos = end
        number += 1
        after_item = True
        empty = False
        yield number, value
    for char in closing:
        if skip_space() != char:
            raise ends_early(f"expected {char!r} after the end of the JSON array")
        pos += 1
    if skip_space() or broken:
        raise ends_early("more data after the end of the JSON " + (
            "document" if closing else "array"))


def json_problem(exc: orjson.JSONDecodeError, line: bytes) -> str:
    """orjson's error without its own position text (``line 1 column 11 (char 10)``:
    one line is all it saw): the column in characters, and the character there."""
    if exc.msg == "unexpected end of data":  # its column is the line's end
        return exc.msg
    text = line.decode("utf-8", "replace")
    shown = f" ({text[exc.pos]!r})" if 0 <= exc.pos < len(text) else ""
    return f"{exc.msg} at column {exc.pos + 1}{shown}"


class _Duplicate(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> None:
    """``object_pairs_hook`` that stops at a key an object holds twice."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen.add(key)


def _keys(value: Any) -> int:
    """The keys of every object in a parsed JSON value."""
    if value.__class__ is dict:
        return len(value) + sum(_keys(v) for v in value.values()
                                if v.__class__ is dict or v.__class__ is list)
    return sum(_keys(v) for v in value if v.__class__ is dict or v.__class__ is list)


#: A quote, white space, a colon: every key ends so (and a few texts hold it too).
KEY_ENDS = re.compile(rb'"\s*:').findall


_TEXT_KEY_ENDS = re.compile(r'"\s*:').findall


def duplicate_key(line: bytes, obj: dict[str, Any], ends: int | None = None) -> str | None:
    """A key some object of ``line`` holds twice (orjson keeps the last silently), or
    None. ``obj`` is the line as orjson read it, so it holds each key once; ``ends``
    is ``len(KEY_ENDS(line))`` when the caller has it.

    Every key written ends with a quote, white space and a colon, so those endings
    are at least the keys written: when they are as many as ``obj`` holds, no key is
    written twice. That is one regex scan of the line (scripts/bench_json_keys.py
    measures it); only a line it cannot clear (a text that holds ``":``) is parsed
    again, by the standard library, to name the key."""
    if ends is None:
        ends = len(KEY_ENDS(line))
    if ends == len(obj) or ends == _keys(obj):
        return None
    try:
        json.loads(line, object_pairs_hook=_unique_pairs)
    except _Duplicate as exc:
        return exc.key
    except ValueError:  # what the standard library reads otherwise than orjson
        return None
    return None


def _duplicate_error(key: str, name: str, lineno: int) -> InvalidRecordError:
    return InvalidRecordError(f"invalid JSON: the key {json.dumps(key, ensure_ascii=False)} "
                              "appears twice in one object (readers keep one or the other)",
                              name, lineno)


def load_line(line: bytes, name: str, lineno: int) -> dict[str, Any] | None:
    """The JSON object of one line (None for a blank line)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("Not enough memory"):  # (under a memory limit: not bad JSON)
            raise InvalidRecordError(f"not enough memory to parse a line of "
                                     f"{size_text(len(line))}", name, lineno) from None
        if not line.strip():
            return None
        try:  # orjson's words differ by version: ask the codec
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecordError("invalid UTF-8", name, lineno) from None
        raise InvalidRecordError(f"invalid JSON: {json_problem(exc, line)}", name,
                                 lineno) from None
    if obj.__class__ is not dict:
        raise InvalidRecordError(f"expected a JSON object, got {type(obj).__name__}", name, lineno)
    if too_deep(line, obj):
        raise InvalidRecordError(TOO_DEEP, name, lineno)
    key = duplicate_key(line, obj)
    if key is not None:
        raise _duplicate_error(key, name, lineno)
    return obj


#: The problem of a record nested deeper than :data:`~promptkit.core.limits.MAX_DEPTH`.
TOO_DEEP = f"arrays and objects nested deeper than {MAX_DEPTH} levels"


def too_deep(line: bytes, obj: Any) -> bool:
    """Whether a line's value nests arrays and objects deeper than
    :data:`~promptkit.core.limits.MAX_DEPTH` levels (its own object is level 1). Deeper records
    are refused when read: what is done with a record (keys, integers, copies) walks it
    level by level, and a thousand levels are a RecursionError. Two counts of the line's
    brackets clear nearly every line; only one that holds as many is walked."""
    return line.count(b"[") + line.count(b"{") > MAX_DEPTH and nested_deeper(obj)


def nested_deeper(obj: Any) -> bool:
    """Whether ``obj`` nests arrays and objects deeper than
    :data:`~promptkit.core.limits.MAX_DEPTH` levels (walked a level at a time, not recursively)."""
    level = [obj]
    for _ in range(MAX_DEPTH):
        level = [item for value in level
                 for item in (value.values() if value.__class__ is dict else value)
                 if item.__class__ is dict or item.__class__ is list]
        if not level:
            return False
    return True


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


#: orjson reads an integer beyond 64 bits as a float at least this large (in magnitude).
_BIG = 2.0 ** 63


def beyond_64_bits(value: Any) -> bool:
    """Whether ``value`` holds a float as large as one orjson makes of an integer beyond
    64 bits (so the line must be read again, exactly)."""
    kind = value.__class__
    if kind is float:
        return bool(value >= _BIG or value <= -_BIG)
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    for item in value:
        kind = item.__class__
        if kind is not str and kind is not int and beyond_64_bits(item):
            return True
    return False


def lost_digits(record: Record) -> bool:
    """Whether a record's numbers may hold an integer beyond 64 bits that orjson read as a
    float: in the fields it keeps as they are (unknown fields, extra, message fields,
    content parts) or its times. Cheap for a record that has none of them."""
    if record.fields and beyond_64_bits(record.fields):
        return True
    if record.extra and beyond_64_bits(record.extra):
        return True
    for message in record.messages:
        if message.fields and beyond_64_bits(message.fields):
            return True
        if message.content.__class__ is list and beyond_64_bits(message.content):
            return True
    when = record.timestamp
    if when.__class__ is float and (when >= _BIG or when <= -_BIG):
        return True
    when = record.delay
    return when.__class__ is float and (when >= _BIG or when <= -_BIG)


class Encoder:
    """Turns records into JSONL bytes of one format, keeping a key of each prompt."""

    def __init__(self, fmt: Format, *, skip_invalid: bool = False,
                 key: Callable[[Record], int] | None = None, keep_replies: bool = False):
        self.format = fmt
        #: Write conversations that end with a recorded reply as requests (``--keep-replies``).
        self.keep_replies = keep_replies
        #: The key of a record's prompt, for the distinct count (default: prompt_key).
        self.key = key or prompt_key
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
        dump = writer(self.format, keep_replies=self.keep_replies)
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        keep_key = self.keys.append
        key = self.key
        tap = self.tap
        as_rows = self.as_rows
        fields = self.fields
        encode, header = self.format.encode, self.format.header
        data: Any
        for record in records:
            try:
                obj = dump(record)
                if fields is not None:
                    fields.update(obj)
                if as_rows:
                    data = obj
                elif encode is None:
                    data = dumps(obj, option=newline)
                else:
                    data = encode(obj) if header is None else header(obj) + encode(obj)
                    header = None
            except InvalidRecordError as exc:
                problem = f"cannot write as {self.format.name}: {exc.problem}"
                if not self.skip_invalid:
                    raise InvalidRecordError(problem, None, record.lineno) from None
                self.skipped.append(f"{record.lineno}: {problem}")
                continue
            except TypeError as exc:  # an integer beyond 64 bits, or a value JSON cannot hold
                if as_rows:
                    raise InvalidRecordError(f"cannot encode: {exc}", None,
                                             record.lineno) from None
                data = dumps_exact(dump(record), record.lineno)
            keep_key(key(record))
            self.count += 1
            if tap is not None:
                tap.add(record)
            yield data
        if tap is not None:
            tap.finish()


_MARK = "\x00promptkit-int-{}\x00"
_MARKED = b'"\\u0000promptkit-int-%d\\u0000"'  # the marker as orjson writes it
_INT_RANGE = range(-(2 ** 63), 2 ** 64)  # what orjson writes


def dumps_exact(obj: Any, lineno: int | None = None) -> bytes:
    """A JSON line of ``obj`` exactly as orjson writes it, integers beyond 64 bits
    included (orjson refuses them): each goes in where orjson wrote a marker string.
    A value JSON cannot hold raises, naming its field."""
    ints: list[int] = []
    marked = _mark_ints(obj, ints)
    try:
        data = orjson.dumps(marked, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError as exc:
        found = _not_json(obj)
        problem = f"field {found[0]!r} holds {found[1]}, which JSON cannot" if found else exc
        raise InvalidRecordError(f"cannot encode: {problem}", None, lineno) from None
    for i, value in enumerate(ints):
        token = _MARKED % i
        if data.count(token) != 1:  # the data holds the marker itself: write it the slow way
            return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        data = data.replace(token, str(value).encode())
    return data


def _mark_ints(value: Any, ints: list[int]) -> Any:
    kind = value.__class__
    if kind is int:
        if value in _INT_RANGE:
            return value
        ints.append(value)
        return _MARK.format(len(ints) - 1)
    if kind is dict:
        return {key: _mark_ints(item, ints) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_mark_ints(item, ints) for item in value]
    return value


def _not_json(value: Any, path: str = "") -> tuple[str, str] | None:
    """``(field, type)`` of the first value in ``value`` that is not JSON, if any."""
    kind = value.__class__
    if kind is dict:
        for key, item in value.items():
            found = _not_json(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif kind is list or kind is tuple:
        for i, item in enumerate(value):
            found = _not_json(item, f"{path}[{i}]")
            if found:
                return found
    elif not isinstance(value, str | int | float | type(None) | datetime.date | datetime.time
                        | uuid.UUID | enum.Enum):
        return path or "(the record)", type(value).__name__
    return None


#: Lines joined at a time: each ``orjson.dumps`` result holds about 4 KiB, whatever its
#: length, until it is freed (measured with tracemalloc: 4,097 bytes for a 40-byte
#: line), so a chunk of short lines held whole costs 4 KiB a line.
JOINED = 256


def joined(lines: Iterable[bytes]) -> bytes:
    """``b"".join(lines)``, :data:`JOINED` lines at a time (see there): the lines of a
    4 MiB chunk of 200-byte lines held at once took 80 MiB."""
    parts: list[bytes] = []
    group: list[bytes] = []
    for line in lines:
        group.append(line)
        if len(group) == JOINED:
            parts.append(b"".join(group))
            group.clear()
    parts.append(b"".join(group))
    return b"".join(parts)


class Written:
    """What every sink reports of what its :class:`Encoder` passed: records written,
    records skipped, distinct prompts."""

    encoder: Encoder
    #: How the lines were written (see :mod:`promptkit.runner.splice`): ``encode``, every record
    #: encoded; ``splice/1``, lines that only gained a nonce keep their input bytes.
    writer = "encode"

    @property
    def records_written(self) -> int:
        return self.encoder.count

    @property
    def skipped(self) -> list[str]:
        return self.encoder.skipped

    #: Keys of the records written beyond the last :data:`KEPT_KEYS` (see
    #: :meth:`bound_keys`), or None.
    _spilled: KeyBuckets | None = None

    def bound_keys(self) -> None:
        """Move the keys kept in memory to bucket files once they are many (8 bytes a
        record would grow with the file: 800 MB for 100 million records)."""
        keys = self.encoder.keys
        if len(keys) >= KEPT_KEYS:
            if self._spilled is None:
                self._spilled = KeyBuckets(getattr(self, "path", STDIO))
            self._spilled.add(keys)
            del keys[:]

    def distinct_records(self) -> int:
        """How many records have distinct prompts (hash of messages, ids and salt):
        the keys sorted and counted, bucket by bucket when they were moved to files."""
        import numpy as np

        keys = np.frombuffer(self.encoder.keys, dtype=np.int64)
        if self._spilled is not None:
            return self._spilled.count(keys)
        return distinct_sorted(np.sort(keys))


#: Keys of written records kept in memory before they go to bucket files (512 KiB).
KEPT_KEYS = 1 << 16


def distinct_sorted(keys: Any) -> int:
    """How many distinct values a sorted numpy array holds."""
    return int(len(keys) and 1 + (keys[1:] != keys[:-1]).sum())


class KeyBuckets:
    """Prompt keys in 64 unnamed temporary files (gone when closed, or when the process
    ends however it ends), one for each value of a key's top 6 bits: a distinct count
    then sorts one bucket at a time, so memory holds a 64th of the keys."""

    BITS = 6

    def __init__(self, beside: str) -> None:
        import tempfile

        folder = os.path.dirname(os.path.abspath(beside)) if beside != STDIO else None
        try:
            self.files = [tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (count closes)
                          for _ in range(1 << self.BITS)]
        except OSError:  # a folder one may not write temporary files in: the default one
            self.files = [tempfile.TemporaryFile()  # noqa: SIM115 (count closes them)
                          for _ in range(1 << self.BITS)]

    def _split(self, keys: Any) -> list[Any]:
        import numpy as np

        values = np.frombuffer(keys, dtype=np.int64)
        buckets = (values.view(np.uint64) >> np.uint64(64 - self.BITS)).astype(np.intp)
        order = np.argsort(buckets, kind="stable")
        ends = np.cumsum(np.bincount(buckets, minlength=1 << self.BITS))
        ordered = values[order]
        return np.split(ordered, ends[:-1])

    def add(self, keys: Any) -> None:
        for f, part in zip(self.files, self._split(keys), strict=True):
            if len(part):
                f.write(part.tobytes())

    def count(self, rest: Any) -> int:
        """The distinct keys in the files and in ``rest`` (the keys still in memory);
        the files are closed."""
        import numpy as np

        total = 0
        for f, part in zip(self.files, self._split(rest), strict=True):
            f.seek(0)
            keys = np.concatenate([np.frombuffer(f.read(), dtype=np.int64), part])
            f.close()
            total += distinct_sorted(np.sort(keys))
        return total


class Background:
    """One thread that runs calls in order, so that hashing and writing large buffers
    (which release the GIL) overlap the parsing on the caller's thread. The first error
    a call raises is raised again to the caller (at its next :meth:`submit` or
    :meth:`wait`); later calls are then not run."""

    def __init__(self, depth: int = 2) -> None:
        import queue
        import threading

        self._jobs: queue.Queue[tuple[Callable[[Any], None], Any] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._failed = False  # an error was raised: later calls are not run
        self._thread = threading.Thread(target=self._run, name="promptkit-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job[0](job[1])
            except BaseException as exc:  # noqa: BLE001 (raised again on the caller's thread)
                self._error = exc
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._failed = True
            raise error

    def submit(self, call: Callable[[Any], None], data: Any) -> None:
        """Run ``call(data)`` after the calls before it (``data`` must not change after)."""
        self._raise()
        if not self._failed:
            self._jobs.put((call, data))

    def wait(self) -> None:
        """Wait until every call submitted has run."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """End the thread once the calls submitted have run (errors are dropped: the
        caller is already failing, or has waited)."""
        self._error = None
        self._failed = True
        self._jobs.put(None)
        self._thread.join()


class Sink(Written):
    """Writes records in one format to a path (atomically) or stdout, hashing the bytes.

    A path ending in ``.gz``, ``.zst``, ``.bz2`` or ``.xz`` is written compressed,
    deterministically; ``sha256`` is then that of the compressed file and
    ``content_sha256`` that of the lines in it.
    """

    def __init__(self, path: str, fmt: Format, *, skip_invalid: bool = False,
                 inputs: Iterable[str] = (), keep_replies: bool = False):
        self.path = path
        self.name = "<stdout>" if path == STDIO else path
        self.format = fmt
        self.encoder = Encoder(fmt, skip_invalid=skip_invalid, keep_replies=keep_replies)
        self.sha256 = hashlib.sha256()
        #: The codec the output is compressed with (by its name), or None.
        self.compression = compression.by_suffix(path) if path != STDIO else None
        self.content_sha256 = hashlib.sha256() if self.compression else None
        self._compressor: compression.Compressor | None = None
        #: Hashes and writes (compresses) what is emitted, for a file.
        self._background: Background | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._tmp: str | None = None
        if path == STDIO:
            self._stream: IO[bytes] = sys.stdout.buffer
        else:
            refuse_overwrite(path, inputs)
            writable(path)
            fd, self._tmp = temporary(path)
            self._stream = os.fdopen(fd, "wb")
            try:
                self._background = Background()
                if self.compression is not None:
                    self._compressor = compression.Compressor(self.compression, self._stream,
                                                              self.sha256)
            except BaseException:  # (a signal, even): no one else knows of the file yet
                self.abort()
                raise

    def write_all(self, records: Iterable[Record]) -> None:
        parts = self._parts
        for data in self.encoder.encode_all(records):
            parts.append(data)
            self._size += len(data)
            if self._size >= CHUNK or len(parts) >= JOINED:  # (see joined)
                self._drain()

    def write_bytes(self, data: bytes | memoryview) -> None:
        """Write already-encoded lines (from a worker), in order."""
        self._drain()
        self._emit(data)

    def write_now(self, data: bytes | memoryview) -> None:
        """:meth:`write_bytes`, done before it returns (``data`` may change after)."""
        self._drain()
        if self._background is not None:
            self._background.wait()
        self._emit_now(data)

    def _emit(self, data: bytes | memoryview) -> None:
        if self._background is not None:
            # Off this thread, in order; a view may be of a buffer its owner reuses.
            self._background.submit(self._emit_now,
                                    bytes(data) if isinstance(data, memoryview) else data)
        else:
            self._emit_now(data)

    def _emit_now(self, data: bytes | memoryview) -> None:
        try:
            if self._compressor is None:
                self.sha256.update(data)
                self._stream.write(data)
            else:
                assert self.content_sha256 is not None
                self.content_sha256.update(data)
                self._compressor.write(data)
        except BrokenPipeError:  # stdout's reader is gone ('| head'): the CLI ends quietly
            raise
        except OSError as exc:  # no space left, a file too large
            raise os_error(exc, self.name) from None

    def _drain(self) -> None:
        self.bound_keys()
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._emit(data)

    def flush(self) -> None:
        """Write out what is buffered (stdout: now). A compressed file is finished here:
        called once everything is written, before the manifest takes its sha256."""
        self._drain()
        if self._background is not None:
            self._background.wait()
        try:
            if self.path == STDIO:
                self._stream.flush()
            elif self._compressor is not None:
                self._compressor.finish()
                self._compressor = None
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise os_error(exc, self.name) from None

    def finish(self) -> None:
        """Write everything out and flush it to disk; the file is then complete in its
        temporary place, ready for :meth:`commit` to rename it."""
        self.flush()
        if self._tmp is None or self._stream.closed:
            return
        self._stop()
        try:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
        except OSError as exc:
            raise os_error(exc, self.path) from None

    def commit(self) -> None:
        self.finish()
        if self._tmp is None:
            return
        put_in_place(self._tmp, self.path)
        self._tmp = None

    def _stop(self) -> None:
        if self._background is not None:
            self._background.close()
            self._background = None

    def abort(self) -> None:
        """Remove the temporary file; never raises (an error is already on its way)."""
        self._stop()
        if self._tmp is not None:
            # The buffer may not be writable (no space left): there is nothing to keep.
            with contextlib.suppress(OSError):
                self._stream.close()
            remove_quietly(self._tmp)
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
    record with only an input length is a prompt of its own).

    Python's hash of a string is salted per process: keys agree within a process and
    its forks (``--workers``), not across processes started apart (Ray workers: those
    use :func:`stable_prompt_key`)."""
    return hash(key_parts(record))


def stable_prompt_key(record: Record) -> int:
    """:func:`prompt_key`'s key made the same in every process (blake2b of the parts'
    repr, 64 bits): for distinct counts merged from processes that are not forks of
    one another."""
    return stable_key(key_parts(record))


def stable_key(parts: tuple[Any, ...]) -> int:
    """The key of a prompt's parts (see :func:`stable_prompt_key`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def salt_of(extra: dict[str, Any] | None) -> Any:
    """A request's ``cache_salt``, for a key: as it is (a string, as servers take it), or
    any other JSON value as its text (a list or an object cannot be hashed)."""
    salt = extra.get("cache_salt") if extra else None
    if salt is None or salt.__class__ is str:
        return salt
    return json.dumps(salt, sort_keys=True)


def key_parts(record: Record) -> tuple[Any, ...]:
    extra = record.extra
    salt = salt_of(extra)
    messages = record.messages
    if len(messages) == 1 and messages[0].content.__class__ is str:
        return (messages[0].role, messages[0].content, salt)
    if not messages and not record.hash_ids:
        # Only a length: AIPerf makes a prompt of random tokens for each such record.
        return ("synthetic", record.index if record.index is not None else id(record))
    parts: list[Any] = [record.input_length, salt]
    if record.hash_ids:
        parts.append(tuple(record.hash_ids))
    for m in messages:
        content = m.content
        parts.append(m.role)
        if isinstance(content, str):
            parts.append(content)
        else:
            try:
                parts.append(orjson.dumps(content))
            except TypeError:  # an integer beyond 64 bits
                parts.append(dumps_exact(content))
    return tuple(parts)
