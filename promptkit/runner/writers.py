"""How a run's output lines are written: three writers, one contract.

Every JSON line promptkit writes is the bytes :class:`promptkit.io.sink.Encoder` makes
of a record (the ``encode`` writer: records in, lines out, each record's prompt key
kept for the distinct count). Two writers here make the same bytes, and the same keys,
without making records where they can prove it, and leave the rest to the encoder:

- :class:`Splicer` (``splice/1``): an input line that only gains a nonce is written as
  itself with the nonce inserted (:meth:`Splicer.splice`: where, what, its key; or
  ``None``: the usual way); used by :func:`promptkit.runner.workers.process_chunk`.
- :class:`Lane`: a chunk of Arrow batches whose prompt is one text column becomes its
  lines straight from the columns (:meth:`Lane.chunk`: the lines, or ``None``: the
  record way); used by :func:`promptkit.runner.batches.process_rows`.

``tests/unit/test_writers.py`` runs the three on the same inputs and compares bytes and keys.

The splice writer
-----------------

A record that only gains a nonce is written as its input line with the nonce inserted,
not parsed into a record and encoded again.

A nonce at the start of a text inserts bytes and changes nothing else, so the line
can keep its own bytes: its key order, number spelling, escapes and unknown fields
stay as they were, and the cost of building a record and encoding it again is saved
(a quarter of a line's cost, measured: ``scripts/bench_nonce.py``). The line is still
parsed, checked as the format's reader checks it, and counted for the
distinct-prompt count.

The insertion point is found in the raw line and proven to be the right one, or the
line goes the usual way (parsed into a record, the step applied, encoded; see
:func:`promptkit.runner.workers.process_chunk`). For an AIPerf ``single_turn`` line the text
literal's opening quote must follow ``"text":`` (optional spaces after the colon; for
a ``mooncake_trace`` line, ``"text_input":``, or the first hash id after
``"hash_ids": [``, which a fresh one replaces: the session's, on every line of it, as
:func:`promptkit.ops.nonce.first_id` makes it) where

- no backslash comes just before that first quote, so the quote is a string's start
  (inside a string every quote is escaped; a bare ``text`` is no JSON), and the string
  is the key ``text``;
- everything before it holds exactly one ``{`` and no ``[``, ``]`` or ``}`` at all, not
  even inside strings: so nothing nested was opened before it, and the key belongs to
  the line's own object;
- the line holds no key twice (checked as every reader here checks it);
- no carriage return comes before the line's last byte: JSON allows one as white space
  between tokens, but AIPerf reads the file in text mode, where a lone carriage return
  ends a line (the encoder writes none);
- the line written is one AIPerf takes (:mod:`promptkit.formats.accept`): a line with an
  empty text that gains no nonce goes the usual way, which refuses it (or skips it).

So the bytes inserted after that quote are the start of the value of the record's
``text``, exactly. A record the slow path would write otherwise than its input
(a field set to ``null``, which the writer leaves out; an integer beyond 64 bits) goes
the usual way too, and so does a line whose ``extra`` sends tools (the nonce step
counts the records whose nonce comes after their tools).

Which writer made a file is the manifest's ``output.writer``: ``splice/1`` (this one)
or ``encode`` (every line encoded again: every file made before this writer existed,
whose manifests name none). ``rebuild`` uses the writer the manifest names.

The lane
--------

Rows whose prompt is one text column, written as ``single_turn``, ``mooncake_trace``
or ``openai`` with at most a nonce at the start of that text, become their output lines
straight from the columns. The lines are the bytes the records would have been encoded
to (a batch the lane cannot prove that for goes the record way). The lane is no writer
of its own in manifests: its bytes are the ``encode`` writer's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from promptkit.core.errors import PromptkitError
from promptkit.core.limits import MAX_TOKENS
from promptkit.core.records import Record
from promptkit.formats import FORMATS
from promptkit.formats.accept import FIELDS, problem
from promptkit.formats.aiperf import parse_mooncake, parse_single_turn
from promptkit.formats.table import Mapping, missing
from promptkit.io.jsoncodec import KEY_ENDS, beyond_64_bits, duplicate_key, too_deep
from promptkit.io.keys import key_parts, salt_of, stable_key
from promptkit.io.sink import Encoder
from promptkit.ops.base import Step
from promptkit.ops.nonce import HASH_ID_BASE, NonceMaker, NonceState, first_id

#: The writer that keeps input lines, in manifests; its rules are fixed for a version.
WRITER = "splice/1"
#: Every line encoded again from its record (every file made before ``splice/1``).
ENCODE = "encode"
WRITERS = (ENCODE, WRITER)
#: Where a nonce is an insertion into a single_turn line's text.
POSITIONS = frozenset({"start", "user", "system", "every-turn"})
_FORMATS = frozenset({"single_turn", "mooncake_trace"})
_USER = frozenset({None, "user"})
#: single_turn fields that are strings (checked inline; ``output_length`` too).
_TEXTS = frozenset({"text", "role", "session_id"})


def nonce_maker(params: dict[str, Any]) -> tuple[NonceMaker, str, str]:
    """The nonces of a nonce step's ``params``, and the template's text before and after
    the nonce: what a writer inserts, as the step would."""
    before, _, after = params["template"].partition("{nonce}")
    return (NonceMaker(params["kind"], params["seed"], length=params["length"],
                       start_time=params["start_time"], time_step_us=params["time_step_us"]),
            before, after)


def writer_of(recorded: dict[str, Any]) -> str:
    """The writer a manifest says made its file: ``encode`` when it names none (it was
    made before the splice writer); one this promptkit does not have is an error."""
    writer = recorded["output"].get("writer", ENCODE)
    if writer not in WRITERS:
        raise PromptkitError(f"output.writer {writer!r}: this promptkit writes with "
                             f"{', '.join(WRITERS)} (another promptkit version made the file)")
    return str(writer)


def plan(steps: list[Any], in_format: str, out_format: str) -> dict[str, Any] | None:
    """The nonce parameters the splice writer can take a run's lines with, or ``None``
    when the run is not one it takes (other steps, another format out than in, copies,
    a salt, a tokenizer)."""
    if len(steps) != 1 or steps[0].op != "nonce":
        return None
    params = steps[0].params
    if (in_format != out_format or in_format not in _FORMATS or params["at"] not in POSITIONS
            or params["copies"] != 1 or params.get("tokenizer") is not None):
        return None
    return params


class Splicer:
    """Puts nonces into lines of one format (see the module's rules), with the state a
    nonce step keeps (the conversations begun)."""

    def __init__(self, params: dict[str, Any], fmt: str, state: NonceState,
                 key: Callable[[tuple[Any, ...]], int]):
        self.maker, before, after = nonce_maker(params)
        self.make = self.maker.make
        self.before, self.after = before, after
        # The nonces themselves are ASCII letters, digits and ``-:.@``: no escapes.
        self.escaped = (orjson.dumps(before)[1:-1], orjson.dumps(after)[1:-1])
        self.at = params["at"]
        self.state = state
        self.key = key
        self.read = self._single_turn if fmt == "single_turn" else self._mooncake
        #: Whether the lines may hold a carriage return (the caller knows it of a chunk).
        self.returns = True
        #: The nonces of a run of indices made ahead (see :meth:`ahead`), and the first.
        self._made: list[str] = []
        self._first = 0
        kind = {"uuid": "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "random": f"[a-z2-7]{{{params['length']}}}",
                "timestamp": r"[0-9]+@[0-9T:-]+\.[0-9]{6}Z"}[params["kind"]]
        self._nonce_shape = re.compile(re.escape(before) + kind + re.escape(after)).match

    def ahead(self, first: int, count: int) -> None:
        """Make the nonces of indices ``first`` to ``first + count - 1`` at once (a chunk's
        lines: a uuid nonce made a batch at a time costs a third, measured)."""
        self._made = self.maker.make_many(first, count)
        self._first = first

    def split(self, text: str) -> tuple[str, str]:
        """A text as ``(its nonce, the rest)``: what leads it in the shape of this run's
        nonces (template included), or ``""``. The nonces' shape has one extent (a fixed
        length, or digits up to ``@``), so the split is a function of the text alone:
        equal texts give equal pairs, and a nonce'd text gives the nonce put in it."""
        found = self._nonce_shape(text)
        if found is None:
            return "", text
        return text[:found.end()], text[found.end():]

    def prompt_key(self, record: Record) -> int:
        """The key of a record's prompt, for the distinct count of a run this writer
        takes part in (every record of it, the ones written the usual way too): a text
        is keyed as its :meth:`split`, so a nonce'd line's key needs no new string of
        the nonce and its text together (most of the cost of a key, measured)."""
        messages = record.messages
        if len(messages) == 1 and messages[0].content.__class__ is str:
            return self.key((messages[0].role, *self.split(messages[0].content),
                             salt_of(record.extra)))
        return self.key(key_parts(record))

    def splice(self, line: bytes, index: int) -> tuple[int, int, bytes, int] | None:
        """``(start, end, new, key)`` of one input line (record ``index``): the bytes
        ``new`` replace ``line[start:end]`` (a nonce: inserted, ``start == end``; no
        ``new``: the line stays as it is), and the key of the prompt then written; or
        ``None``: the line goes the usual way (the state is then untouched)."""
        if self.returns:
            cr = line.find(b"\r")
            if cr != -1 and cr != len(line) - 1:
                return None  # kept, it would end the line for AIPerf (the module's rules)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if obj.__class__ is not dict or too_deep(line, obj):
            return None  # the usual way names what is wrong
        extra = obj.get("extra")
        if extra.__class__ is dict and "tools" in extra:
            return None  # the usual way counts the records that send tools
        found = self.read(obj)
        if found is None:
            return None
        role, text, locate = found
        ends = len(KEY_ENDS(line))
        if ends != len(obj) and duplicate_key(line, obj, ends) is not None:
            return None
        at = self.at
        session = obj.get("session_id")
        state = self.state
        continuing = session is not None and session in state.started
        if text is None and at != "start" and at != "every-turn":
            return None  # hash ids have no user or system message: the usual way says so
        if at == "start" or at == "system":
            nonce = not continuing
            if nonce and at == "system" and role != "system":
                return None  # a system message is made: not an insertion
        elif at == "user":
            if session is not None and session in state.user_done:
                nonce = False
            elif role in _USER:
                nonce = True
            elif continuing:
                nonce = False
            else:
                return None  # no user message: the usual way says so
        else:  # every-turn
            nonce = True
        if not nonce and text == "":
            return None  # an empty prompt: the usual way refuses it (or skips it)
        start = end = 0
        new = b""
        salt = salt_of(extra) if extra.__class__ is dict else None
        if text is None:  # a first hash id: a fresh one, its session's (every line of it)
            ids = obj["hash_ids"]
            found_id = locate(line)
            if found_id is None or max(ids) >= HASH_ID_BASE:  # (the usual way refuses)
                return None
            start, end = found_id.span(1)
            fresh = first_id(state, self.maker, session, ids[0], index)
            new = str(fresh).encode()
            ids = [fresh, *ids[1:]]
            key = self.key((obj["input_length"], salt, tuple(ids)))
        else:
            if nonce:
                start = end = locate(line)
                if start < 0:
                    return None
                at_made = index - self._first
                made = (self._made[at_made] if 0 <= at_made < len(self._made)
                        else self.make(index))
                before, after = self.escaped
                new = before + made.encode() + after
                key = self.key((role, self.before + made + self.after, text, salt))
            else:
                key = self.key((role, *self.split(text), salt))
        if session is not None:
            state.started.add(session)
            if at == "user" and nonce:
                state.user_done.add(session)
        return start, end, new, key

    @staticmethod
    def _single_turn(obj: dict[str, Any]) -> tuple[Any, str, Any] | None:
        """``(role, text, how to find the text)`` of a single_turn line the writer would
        write back as it is."""
        text = obj.get("text")
        if text.__class__ is not str:
            return None
        for key, value in obj.items():  # the reader's checks, inline for the usual fields
            kind = value.__class__
            if key in _TEXTS:
                if kind is not str:
                    break
            elif key != "output_length" or kind is not int or not 0 < value <= MAX_TOKENS:
                break
        else:
            return obj.get("role"), text, TEXT_START
        return ((obj.get("role"), text, TEXT_START)
                if _checked(obj, parse_single_turn, "single_turn", "text") else None)

    @staticmethod
    def _mooncake(obj: dict[str, Any]) -> tuple[Any, str | None, Any] | None:
        """``(role, text_input, how to find it)`` of a mooncake_trace line with a text
        (it has no role), ``(None, None, how to find the first id)`` of one with hash
        ids, when the writer would write it back as it is."""
        if not _checked(obj, parse_mooncake, "mooncake_trace", "text_input", "hash_ids"):
            return None
        text = obj.get("text_input")
        if text.__class__ is str:
            return None, text, _TEXT_INPUT
        return (None, None, _FIRST_ID) if obj.get("hash_ids") else None


def _checked(obj: dict[str, Any], parse: Callable[[dict[str, Any]], Any], kind: str,
             text: str, ints: str | None = None) -> bool:
    """Whether a line's object passes the reader's checks (``parse``), and the writer
    would write it back as it is: no field set to null (which it leaves out), no integer
    beyond 64 bits (which orjson read as a float; the field ``ints``, once checked, holds
    only integers); and whether AIPerf takes it as ``kind``, its ``text`` aside (a nonce
    fills an empty one: :meth:`Splicer.splice` looks at that)."""
    if None in obj.values():
        return False
    try:
        parse(obj)
    except Exception:  # noqa: BLE001 (the usual way says what is wrong)
        return False
    if any(beyond_64_bits(value) for key, value in obj.items() if key != ints):
        return False
    return problem(kind, {**obj, text: "-"} if text in obj else obj) is None


#: A line up to the opening quote of its text (``text``; ``text_input``) or the first of
#: its hash ids, by the module's rules: one ``{`` and no other brace or bracket before an
#: unescaped key (spaces may follow the colon).
def _text_finder(key: bytes) -> Callable[[bytes], int]:
    """Where the value of the string ``key`` begins in a line (after its opening quote),
    by the module's rules; -1 if not proven. A line that begins with the key (the most
    usual) is told by its first bytes."""
    compact, spaced = b'{"%s":"' % key, b'{"%s": "' % key
    match = re.compile(rb'[ \t]*\{[^{}\[\]]*?(?<!\\)"%s": *"' % re.escape(key)).match

    def find(line: bytes) -> int:
        if line.startswith(compact):
            return len(compact)
        if line.startswith(spaced):
            return len(spaced)
        found = match(line)
        return found.end() if found is not None else -1

    return find


#: Where a line's "text" value starts (the splice writer's and bench_nonce.py's finder).
TEXT_START = _text_finder(b"text")
_TEXT_INPUT = _text_finder(b"text_input")
_FIRST_ID = re.compile(rb'[ \t]*\{[^{}\[\]]*?(?<!\\)"hash_ids": *\[ *(-?[0-9]+)').match


# ---------------------------------------------------------------- the lane

#: Output formats the lane writes, and the keys a row's own fields must not take there.
_LANE_FORMATS = {"single_turn": frozenset({"role", "text"}),
                 "mooncake_trace": frozenset({"messages"}),
                 "openai": frozenset({"messages"})}
#: Where a nonce goes into a record of one user message: before its text.
_LANE_POSITIONS = frozenset({"start", "user", "every-turn"})


class Lane:
    """Output lines made straight from a chunk's columns, for runs whose records are one
    user message of a text column with the other columns kept as fields, written as
    ``single_turn``, ``mooncake_trace`` or ``openai`` with no step but a nonce at the
    start of that text (one copy, no tokenizer).

    Such a record is written as ``{"role": "user", "text": TEXT, FIELDS...}``
    (single_turn) or ``{"messages": [{"role": "user", "content": TEXT}], FIELDS...}``,
    its fields the row's other columns in order with empty values (null, a float NaN)
    left out, and its key in the distinct count that of ``("user", TEXT, None)``: what
    the formats' ``dump`` and :func:`~promptkit.io.keys.prompt_key` make of it. A chunk
    with anything else (a text column that is not all text, an empty text with no nonce,
    a column named as one of those keys or as a field AIPerf reads, a value JSON cannot
    hold as it is, any column for openai) goes the record way, which writes it or names
    what is wrong.
    """

    def __init__(self, mapping: Mapping, out_format: str, nonce: dict[str, Any] | None,
                 stable_keys: bool = False):
        assert mapping.text is not None
        self.text = mapping.text
        self.format = out_format
        # A column of a field AIPerf reads goes the record way, which checks its value.
        kind = FORMATS[out_format].aiperf_type
        assert kind is not None
        self.taken = _LANE_FORMATS[out_format] | FIELDS[kind]
        self.nonces: Any = None
        self.before = self.after = ""
        if nonce is not None:
            maker, self.before, self.after = nonce_maker(nonce)
            self.nonces = maker.make_many
        self.key = stable_key if stable_keys else hash

    @classmethod
    def for_run(cls, mapping: Mapping, steps: list[Step], out_format: str,
                tokenizer: str | None, stable_keys: bool = False) -> Lane | None:
        """The lane of a run, or ``None`` when its records must be made."""
        if (mapping.layout != "text" or out_format not in _LANE_FORMATS or tokenizer
                or (mapping.system, mapping.output_length, mapping.input_length,
                    mapping.timestamp) != (None, None, None, None)):
            return None
        if not steps:
            return cls(mapping, out_format, None, stable_keys)
        if len(steps) != 1 or steps[0].op != "nonce":
            return None
        params = steps[0].params
        if (params["at"] not in _LANE_POSITIONS or params["copies"] != 1
                or params.get("tokenizer") is not None or params.get("keep_tokens")):
            return None
        return cls(mapping, out_format, params, stable_keys)

    def chunk(self, batches: list[Any], first_index: int, encoder: Encoder) -> bytes | None:
        """The output lines of a chunk whose first record has index ``first_index``, its
        keys and count put into ``encoder``; ``None`` (and ``encoder`` untouched) when a
        batch of it is not one the lane takes."""
        parts: list[bytes] = []
        keys: list[int] = []
        index = first_index
        for batch in batches:
            made = self.lines(batch, index, keys)
            if made is None:
                return None
            parts.append(b"".join(made))  # (each line orjson made holds a 4 KiB buffer)
            index += batch.num_rows
        encoder.keys.extend(keys)
        encoder.count += len(keys)
        if encoder.fields is not None:
            encoder.fields.add("messages")
        return b"".join(parts)

    def lines(self, batch: Any, first_index: int, keys: list[int]) -> list[bytes] | None:
        """The lines of one batch (their keys appended to ``keys``), or ``None``."""
        import pyarrow as pa

        names = list(batch.schema.names)
        if names.count(self.text) != 1:
            return None
        column = batch.column(names.index(self.text))
        kind = column.type
        if column.null_count or not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                                     or str(kind) == "string_view"):
            return None
        kept = [(i, name) for i, name in enumerate(names) if name != self.text]
        if any(name in self.taken for _, name in kept) or len({n for _, n in kept}) != len(kept):
            return None
        if kept and self.format == "openai":
            return None
        texts = column.to_pylist()
        if self.nonces is None and "" in texts:
            return None  # an empty prompt: the record way refuses it (or skips it)
        if self.nonces is not None:
            before, after = self.before, self.after
            texts = [before + nonce + after + text for nonce, text
                     in zip(self.nonces(first_index, len(texts)), texts, strict=True)]
        key = self.key
        made_keys = [key(("user", text, None)) for text in texts]
        columns = [batch.column(i) for i, _ in kept]
        names_kept = tuple(name for _, name in kept)
        may_miss = [name for name, column in zip(names_kept, columns, strict=True)
                    if column.null_count or pa.types.is_floating(column.type)]
        dumps = orjson.dumps
        newline = orjson.OPT_APPEND_NEWLINE
        single = self.format == "single_turn"
        try:
            if not kept:
                if single:
                    out = [dumps({"role": "user", "text": text}, option=newline)
                           for text in texts]
                else:
                    out = [dumps({"messages": [{"role": "user", "content": text}]},
                                 option=newline) for text in texts]
            else:
                cells = zip(*(c.to_pylist() for c in columns), strict=True)
                if single:
                    line_keys = ("role", "text", *names_kept)
                    rows = (dict(zip(line_keys, ("user", text, *row), strict=True))
                            for text, row in zip(texts, cells, strict=True))
                else:
                    line_keys = ("messages", *names_kept)
                    rows = (dict(zip(line_keys, ([{"role": "user", "content": text}], *row),
                                     strict=True))
                            for text, row in zip(texts, cells, strict=True))
                if may_miss:
                    rows = (_present(row, may_miss) for row in rows)
                out = [dumps(row, option=newline) for row in rows]
        except TypeError:  # a value orjson does not write as it is (the record way does)
            return None
        keys.extend(made_keys)
        return out


def _present(row: dict[str, Any], may_miss: list[str]) -> dict[str, Any]:
    """``row`` without the empty values (null, a float NaN) of the columns that may
    hold them, as a record's fields leave them out."""
    for name in may_miss:
        if missing(row[name]):
            del row[name]
    return row
