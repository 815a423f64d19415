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

Where a run allows it, a chunk skips the records altogether: rows whose prompt is one
text column become their output lines straight from the columns
(:class:`promptkit.runner.writers.Lane`, one of the writers held to the encoder's bytes).
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from promptkit.core import interrupts, leftovers, progress
from promptkit.core.errors import InvalidRecordError
from promptkit.core.records import Record
from promptkit.formats.table import Mapping, batch_records
from promptkit.io.interface import BATCHES
from promptkit.io.jsonl import Counter
from promptkit.io.sink import Sink, joined
from promptkit.ops.base import Step
from promptkit.ops.registry import ORDERED
from promptkit.runner import schedule
from promptkit.runner import workers as parallel
from promptkit.runner.writers import Lane

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
    """Whether a run goes through here: a source that yields Arrow batches (a dataset, or
    parquet shards with no ``--limit``: see :mod:`promptkit.io.interface`) written as JSON
    lines, by steps that do not need every record in one process, from
    rows that do not carry a timeline (a trace's timestamps are made relative to its
    first record, in order)."""
    return (source.yields == BATCHES and isinstance(sink, Sink)
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
    # Chunks in flight: the one sent next takes the slots (its rows in, its lines out) of
    # the one just written.
    window = 2 * workers
    inputs = parallel.Slots(window, INPUT_SLOT_BYTES)
    outputs = parallel.Slots(window, SLOT_BYTES)
    with _closing(inputs), _closing(outputs), parallel.worker_pool(
            workers, _init, (rows, inputs, outputs)) as pool:

        def submit(number: int, chunk: Chunk) -> Any:
            slot = number % window
            assert isinstance(chunk.batches, list)
            size = pack_into(chunk.batches, inputs.maps[slot])
            chunk.batches = (slot, size) if size is not None else pack(chunk.batches)
            return pool.apply_async(_work, (chunk, slot))

        def redo(chunk: Chunk, states: list[Any]) -> parallel.ChunkResult:
            return process_rows(rows, chunk, states, inputs)  # in order, with the history

        for _, result, _ in schedule.carried(
                schedule.in_order(chunks(source), submit, window=window), states, redo,
                discard=parallel.discard):
            parallel.absorb(result, sink, facts, relay, outputs)
            source.count = facts.records_read


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
    return parallel.handed_back(process_rows(_rows_job, chunk, None, _inputs), _outputs,
                                slot, _rows_job.job.scratch)


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
        data = joined(encoder.encode_all(parallel.applied(job.steps, states, records)))
    except InvalidRecordError as exc:
        raise parallel.in_chunk(exc, chunk.name, base) from None
    return parallel.ChunkResult(data, read.count, encoder.count, skipped + encoder.skipped,
                                encoder.keys.tobytes(), states,
                                encoder.tap.stats if encoder.tap is not None else None,
                                encoder.fields)


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
