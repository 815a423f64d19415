"""Dataset rows in Arrow batches through a run's steps, chunk by chunk, in order, in
worker processes.

A dataset source (:class:`~promptkit.io.datasets.DatasetSource`: parquet, Arrow,
``save_to_disk`` folders, CSV, JSON arrays, hub datasets; or parquet shards,
:class:`~promptkit.io.shards.ShardedSource`) hands its rows over as Arrow batches. Whole
batches make a chunk (:data:`CHUNK_BYTES` of Arrow data). This process reads the
batches and writes each chunk as an Arrow IPC stream into shared memory; a worker reads
it there in place, maps its columns to records a batch at a time
(:func:`promptkit.formats.table.batch_records`), applies the steps and encodes, as a
chunk of JSON lines is processed (:mod:`promptkit.runner.workers`: the same pool, the same
accounting, the output back in shared memory, the same redo in order of a chunk that
continued a conversation an earlier one began). Steps are index-addressed, so the
output is the same bytes for every number of workers; with one worker the chunks are
processed in this process, one after another.

Where a run allows it, a chunk skips the records altogether (:class:`Lane`): rows whose
prompt is one text column, written as ``single_turn``, ``mooncake_trace`` or ``openai``
with at most a nonce at the start of that text, become their output lines straight from
the columns. The lines are the bytes the records would have been encoded to (a batch
the lane cannot prove that for goes the record way: tested against it on generated
tables).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import multiprocessing
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from promptkit.core import interrupts, leftovers, progress
from promptkit.core.errors import InvalidRecordError
from promptkit.core.records import Record
from promptkit.formats import FORMATS
from promptkit.formats.accept import FIELDS
from promptkit.formats.table import Mapping, _missing, batch_records
from promptkit.io.datasets import DatasetSource
from promptkit.io.jsonl import Counter
from promptkit.io.keys import stable_key
from promptkit.io.sink import Encoder, Sink
from promptkit.ops.base import Step
from promptkit.ops.nonce import NonceMaker
from promptkit.ops.registry import ORDERED
from promptkit.runner import workers as parallel

#: The Arrow data of the rows in one chunk (whole batches: a chunk may hold a little more).
#: Small: the main process holds the chunks the workers have not finished.
CHUNK_BYTES = 1 << 20
#: The shared memory a chunk's rows go to a worker in (a larger chunk goes through the
#: pool's pipe), and its output comes back in (a larger one by a scratch file).
INPUT_SLOT_BYTES = 4 << 20
SLOT_BYTES = 4 << 20
#: A dataset runs in workers from this many rows (or, when the rows are not known
#: beforehand, from ``parallel.MIN_PARALLEL_BYTES`` of data files).
MIN_PARALLEL_ROWS = 50_000
#: Output formats the lane writes, and the keys a row's own fields must not take there.
_LANE_FORMATS = {"single_turn": frozenset({"role", "text"}),
                 "mooncake_trace": frozenset({"messages"}),
                 "openai": frozenset({"messages"})}
#: Where a nonce goes into a record of one user message: before its text.
_LANE_POSITIONS = frozenset({"start", "user", "every-turn"})


@dataclass
class RowsJob:
    """Everything a worker needs to process a chunk of rows (sent once, at pool start)."""

    job: parallel.Job
    mapping: Mapping
    #: How a chunk's lines are made from its columns, when the run allows it.
    lane: Lane | None = None


@dataclass
class Chunk:
    """A run of whole batches of one dataset (one shard of many): their data, the row
    number of the first (from 1, in the dataset), and the dataset's name and ``base``
    (the rows of the stream before it)."""

    name: str
    base: int
    first: int
    #: The batches; or, sent to a worker, their Arrow IPC stream: ``(slot, size)`` in the
    #: shared memory of the input slots, or bytes when larger than a slot.
    batches: list[Any] | bytes | tuple[int, int]


def takes(source: Any, sink: Any, steps: list[Step]) -> bool:
    """Whether a run goes through here: a dataset (or parquet shards, with no ``--limit``)
    written as JSON lines, by steps that do not need every record in one process, from
    rows that do not carry a timeline (a trace's timestamps are made relative to its
    first record, in order)."""
    from promptkit.io.shards import ShardedSource

    dataset = isinstance(source, DatasetSource) or (
        isinstance(source, ShardedSource) and source.kind == "parquet" and source.limit is None)
    return (dataset and isinstance(sink, Sink)
            and not any(step.op in ORDERED for step in steps)
            and source.mapping.timestamp is None)


def run_dataset(source: Any, sink: Sink, steps: list[Step], *, out_format: str,
                skip_invalid: bool, tokenizer: str | None, workers: int
                ) -> parallel.InputFacts:
    """Run ``steps`` over the rows of ``source`` (a dataset, or parquet shards: see
    :func:`takes`) into ``sink``, in ``workers`` processes when it has many rows (else in
    this one, chunk by chunk); the facts of the input are returned (and ``source.count``
    follows them, for progress)."""
    job = parallel.Job(source.path, "", "dataset", out_format, steps, skip_invalid,
                       source.name, tokenizer, keep_replies=sink.encoder.keep_replies)
    rows = RowsJob(job, source.mapping, Lane.for_run(source.mapping, steps, out_format,
                                                     tokenizer))
    facts = parallel.InputFacts(sha256=source.sha256)
    if not _worth_workers(source, workers):
        parallel.keep_freed_memory()  # (as workers do: freed chunks are reused, not faulted in)
        states = [step.new_state() for step in steps]
        for chunk in chunks(source):
            parallel.absorb(process_rows(rows, chunk, states), sink, facts)
            source.count = facts.records_read
    else:
        with leftovers.scratch_folder() as scratch:
            job.scratch = scratch
            _in_workers(source, sink, rows, workers, facts)
    if source.skipped:  # rows the reader left out (a CSV row of other fields), in order
        facts.skipped = list(heapq.merge(facts.skipped, source.skipped, key=_place))
    return facts


def _place(skipped: str) -> int:
    """The row number of a skipped row's line (``ROW: problem``)."""
    return int(skipped.split(":", 1)[0])


def _worth_workers(source: Any, workers: int) -> bool:
    """Whether starting workers pays: two or more asked for, processes can be forked, and
    the dataset has many rows (when its metadata does not say, large data files)."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return False
    expected = source.expected_rows()
    if expected is not None:
        return bool(expected >= MIN_PARALLEL_ROWS)
    size = source.data_size()
    return size is not None and size >= parallel.MIN_PARALLEL_BYTES


def _in_workers(source: Any, sink: Sink, rows: RowsJob, workers: int,
                facts: parallel.InputFacts) -> None:
    states = [step.new_state() for step in rows.job.steps]  # everything before the next chunk
    relay = parallel.Relay()
    # At most 2 * workers chunks are in flight: the one sent next takes the slots (its
    # rows in, its lines out) of the one just written.
    inputs = parallel.Slots(2 * workers, INPUT_SLOT_BYTES)
    outputs = parallel.Slots(2 * workers, SLOT_BYTES)
    with _closing(inputs), _closing(outputs), parallel.worker_pool(
            workers, _init, (rows, inputs, outputs)) as pool:
        pending: deque[tuple[Chunk, Any]] = deque()

        def finish() -> None:
            chunk, future = pending.popleft()
            try:
                result: parallel.ChunkResult | None = future.get()
            except InvalidRecordError:  # a row continuing a conversation begun earlier
                result = None  # may be none: the chunk in order says (or raises it again)
            if result is None or any(
                    s.overlaps(r) for s, r in zip(states, result.states, strict=True)):
                if result is not None and isinstance(result.data, str):
                    os.unlink(result.data)
                # Done again in order, with the history before it.
                result = process_rows(rows, chunk, states, inputs)
            else:
                for state, later in zip(states, result.states, strict=True):
                    state.update(later)
            parallel.absorb(result, sink, facts, relay, outputs)
            source.count = facts.records_read

        for number, chunk in enumerate(chunks(source)):
            slot = number % (2 * workers)
            assert isinstance(chunk.batches, list)
            size = pack_into(chunk.batches, inputs.maps[slot])
            chunk.batches = (slot, size) if size is not None else pack(chunk.batches)
            pending.append((chunk, pool.apply_async(_work, (chunk, slot))))
            if len(pending) >= 2 * workers:
                finish()
        while pending:
            finish()


@contextlib.contextmanager
def _closing(slots: Any) -> Iterator[Any]:
    """Close shared memory slots on the way out; one still viewed by an Arrow buffer
    (an error on its way holds it) is left to the process's end."""
    try:
        yield slots
    finally:
        with contextlib.suppress(BufferError):
            slots.close()


def chunks(source: Any) -> Iterator[Chunk]:
    """Runs of whole batches of about :data:`CHUNK_BYTES` of one dataset (or shard; a new
    schema begins a new chunk, as does a row after one left out), in order."""
    held: list[Any] = []
    size = 0
    chunk = Chunk("", 0, 1, held)
    after = 1  # the number of the row after the chunk's last
    for name, base, row_no, batch in source.row_batches():
        if held and (size >= CHUNK_BYTES or name != chunk.name or base != chunk.base
                     or row_no != after or not batch.schema.equals(held[0].schema)):
            yield chunk
            held, size = [], 0
        if not held:
            chunk = Chunk(name, base, row_no, held)
        held.append(batch)
        size += batch.nbytes
        after = row_no + batch.num_rows
    if held:
        yield chunk


def pack(batches: list[Any]) -> bytes:
    """The batches of a chunk as Arrow IPC stream bytes (a slice carries only its own
    rows, where pickling it would carry the whole batch it was cut from)."""
    import pyarrow as pa

    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, batches[0].schema) as writer:
        for batch in batches:
            writer.write(batch)
    return bytes(out.getvalue().to_pybytes())


def pack_into(batches: list[Any], room: Any) -> int | None:
    """Write the batches of a chunk into ``room`` (shared memory) as an Arrow IPC stream:
    its size, or ``None`` when it does not fit."""
    import pyarrow as pa

    return _written(pa.FixedSizeBufferWriter(pa.py_buffer(room)), batches)


def _written(out: Any, batches: list[Any]) -> int | None:
    import pyarrow as pa

    try:
        with pa.ipc.new_stream(out, batches[0].schema) as writer:
            for batch in batches:
                writer.write(batch)
    except (OSError, pa.ArrowInvalid):  # out of room
        return None
    return int(out.tell())


def unpack(data: bytes | tuple[int, int], inputs: Any = None) -> list[Any]:
    """The batches of a chunk from its IPC stream: bytes, or ``(slot, size)`` of
    ``inputs`` (read in place)."""
    import pyarrow as pa

    if isinstance(data, tuple):
        slot, size = data
        buffer = pa.py_buffer(inputs.maps[slot]).slice(0, size)
    else:
        buffer = pa.py_buffer(data)
    return list(pa.ipc.open_stream(buffer))


_rows_job: RowsJob | None = None
_inputs: Any = None
_outputs: Any = None


def _init(rows: RowsJob, inputs: Any, outputs: Any) -> None:
    global _rows_job, _inputs, _outputs
    interrupts.worker_started()
    progress.want(False)  # the parent shows the chunks done
    _rows_job, _inputs, _outputs = rows, inputs, outputs
    parallel.keep_freed_memory()


def _work(chunk: Chunk, slot: int) -> parallel.ChunkResult:
    """Process one chunk of rows (its batches as an Arrow IPC stream) in a worker. The
    output goes back in shared memory (``slot``), or, larger than a slot, by a scratch
    file."""
    assert _rows_job is not None
    result = process_rows(_rows_job, chunk, None, _inputs)
    assert isinstance(result.data, bytes)
    room = _outputs.maps[slot]
    if len(result.data) <= len(room):
        room[:len(result.data)] = result.data
        result.data = (slot, len(result.data))
        return result
    fd, scratch = tempfile.mkstemp(dir=_rows_job.job.scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(result.data)
    result.data = scratch
    return result


def process_rows(rows: RowsJob, chunk: Chunk, states: list[Any] | None = None,
                 inputs: Any = None) -> parallel.ChunkResult:
    """Map, transform and encode the rows of one chunk (its batches, or their IPC stream:
    bytes, or in a slot of ``inputs``); ``states``: fresh unless given. Rows left out
    (``--skip-invalid``) are listed by their place in the stream (the dataset's row plus
    its ``base``), as every record and step names them."""
    job = rows.job
    batches = (chunk.batches if isinstance(chunk.batches, list)
               else unpack(chunk.batches, inputs))
    base = chunk.base
    encoder = parallel.job_encoder(job)
    if states is None:
        states = [step.new_state() for step in job.steps]
    lines = (rows.lane.chunk(batches, chunk.first + base - 1, encoder) if rows.lane
             else None)
    if lines is not None:
        return parallel.ChunkResult(lines, encoder.count, encoder.count, [],
                                    encoder.keys.tobytes(), states, None, encoder.fields)
    skipped: list[str] = []
    read = Counter()
    records = _records(rows, batches, chunk, read, skipped)
    try:
        for step, state in zip(job.steps, states, strict=True):
            records = step.apply(records, state)
        data = b"".join(joined(encoder.encode_all(records)))
    except InvalidRecordError as exc:
        if exc.path is not None:
            raise
        lineno = exc.lineno - base if exc.lineno is not None else None
        raise InvalidRecordError(exc.problem, chunk.name, lineno) from None
    return parallel.ChunkResult(data, read.count, encoder.count, skipped + encoder.skipped,
                                encoder.keys.tobytes(), states,
                                encoder.tap.stats if encoder.tap is not None else None,
                                encoder.fields)


#: Lines joined at a time: each line orjson makes holds a buffer of 4 KiB until joined.
JOIN_LINES = 512


def joined(lines: Iterator[bytes]) -> Iterator[bytes]:
    """``lines`` joined :data:`JOIN_LINES` at a time (a chunk's lines all held at once
    would take 4 KiB each: 100 MiB for 25,000 short lines)."""
    while group := list(itertools.islice(lines, JOIN_LINES)):
        yield b"".join(group)


def _records(rows: RowsJob, batches: list[Any], chunk: Chunk, read: Counter,
             skipped: list[str]) -> Iterator[Record]:
    """The records of a chunk's batches (a row that makes none: an error naming the
    dataset and its row, or skipped as ``PLACE: problem``)."""
    job = rows.job
    row_no = chunk.first
    base = chunk.base
    for batch in batches:
        for made in batch_records(batch, rows.mapping):
            if made.__class__ is not Record:
                assert isinstance(made, InvalidRecordError)
                if not (job.skip_invalid or made.always_skipped):
                    raise InvalidRecordError(made.problem, chunk.name, row_no)
                skipped.append(f"{row_no + base}: {made.problem}")
            else:
                assert isinstance(made, Record)
                made.lineno = row_no + base
                made.index = row_no + base - 1
                read.count += 1
                yield made
            row_no += 1


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
            self.nonces = NonceMaker(nonce["kind"], nonce["seed"], length=nonce["length"],
                                     start_time=nonce["start_time"],
                                     time_step_us=nonce["time_step_us"]).make_many
            self.before, _, self.after = nonce["template"].partition("{nonce}")
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
        if _missing(row[name]):
            del row[name]
    return row
