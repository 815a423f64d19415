"""The exact JSON codec of promptkit's records: JSON read as strictly as orjson reads it
and as exactly as the standard library does, and written as orjson writes it.

- :func:`load_line` reads one line: a JSON object, or one line naming what is wrong
  (invalid UTF-8, invalid JSON with its column, a key held twice, nesting deeper than
  :data:`~promptkit.core.limits.MAX_DEPTH`);
- :func:`array_items` reads the items of one JSON array a piece at a time;
- :func:`exact_loads`, :func:`beyond_64_bits` and :func:`lost_digits` keep integers
  beyond 64 bits exact (orjson reads them as floats);
- :func:`dumps_exact` writes such integers where orjson refuses them.
"""

from __future__ import annotations

import codecs
import datetime
import enum
import json
import math
import re
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from promptkit.core.errors import InvalidRecordError
from promptkit.core.limits import MAX_DEPTH, MAX_LINE, size_text
from promptkit.core.records import Record


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
                    raise duplicate_error(exc.key, name, number + 1) from None
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


def duplicate_error(key: str, name: str, lineno: int) -> InvalidRecordError:
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
        raise duplicate_error(key, name, lineno)
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
