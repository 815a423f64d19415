"""Run a pipeline over a regular file in worker processes, chunk by chunk, in order.

A chunk is a run of whole lines. Operations are index-addressed (a record's
nonce comes from its line number), so a chunk processed on its own gives the
bytes a sequential run gives. The one thing a chunk cannot know is which
conversations earlier chunks began (lines sharing a ``session_id``): each chunk
reports the sessions it saw, and a chunk that continued one begun earlier is
redone in order, in the main process, with the state of everything before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import compression, interrupts, progress
from .errors import InvalidRecordError
from .formats import get_format
from .records import Record
from .streams import BOM, Counter, Encoder, Sink, parse_lines

CHUNK_BYTES = 4 << 20
#: Files smaller than this run in one process: starting workers would cost more.
MIN_PARALLEL_BYTES = 16 << 20


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def can_run_parallel(path: str, workers: int) -> bool:
    """Whether ``path`` is a large regular file of plain JSON lines, which splits at line
    ends (a compressed file or a JSON array does not: it is read in one process)."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        stat = os.stat(path)
    except OSError:
        return False
    import stat as st

    if not st.S_ISREG(stat.st_mode) or stat.st_size < MIN_PARALLEL_BYTES:
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    return compression.sniff(head) is None and not head.removeprefix(BOM).lstrip().startswith(
        b"[")


@dataclass
class Job:
    """Everything a worker needs to process a chunk (sent once, at pool start)."""

    path: str
    scratch: str  # a folder for the workers' output chunks
    in_format: str
    out_format: str
    steps: list[Any]
    skip_invalid: bool
    name: str
    #: The tokenizer the written records are counted under, if any.
    tokenizer: str | None = None


@dataclass
class ChunkResult:
    data: bytes | str  # the output lines, or the scratch file that holds them
    read: int
    written: int
    skipped: list[str]
    keys: bytes
    states: list[Any] = field(default_factory=list)
    stats: Any = None  # token statistics of what was written (a stats.Stats), if counted
    fields: set[str] | None = None  # the top-level fields of OpenAI lines written


_job: Job | None = None


def _init(job: Job) -> None:
    global _job
    interrupts.worker_started()
    progress.want(False)  # the parent shows the chunks done
    _job = job
    keep_freed_memory()


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it at once.

    A chunk frees megabytes of short-lived strings; by default glibc hands them
    back to the system and the next chunk takes a page fault for every 4 KiB
    again (measured: a tenth of the run). Elsewhere than glibc this does nothing.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc.so" not in name:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_mmap_threshold, 64 << 20)


def _work(offset: int, size: int, first_lineno: int) -> ChunkResult:
    """Process the chunk at ``offset`` (read here: only its place crosses processes)."""
    assert _job is not None
    with open(_job.path, "rb") as f:
        chunk = os.pread(f.fileno(), size, offset)
    result = process_chunk(_job, chunk, first_lineno)
    # Passing megabytes back through the pool's pipe costs more than a file does.
    fd, scratch = tempfile.mkstemp(dir=_job.scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(result.data)  # type: ignore[arg-type]
    result.data = scratch
    return result


def process_chunk(job: Job, chunk: bytes, first_lineno: int,
                  states: list[Any] | None = None) -> ChunkResult:
    """Parse, transform and encode the lines of one chunk (states: fresh unless given)."""
    encoder = Encoder(get_format(job.out_format), skip_invalid=job.skip_invalid)
    if job.tokenizer is not None:
        from .stats import Tap
        from .tokenizers import cached_tokenizer

        encoder.tap = Tap(cached_tokenizer(job.tokenizer), threads=1)
    if states is None:
        states = [step.new_state() for step in job.steps]
    records, read, skipped = chunk_records(chunk, first_lineno, job.in_format, job.name,
                                           job.skip_invalid)
    for step, state in zip(job.steps, states, strict=True):
        records = step.apply(records, state)
    try:
        data = b"".join(encoder.encode_all(records))
    except InvalidRecordError as exc:
        raise (exc.located(job.name) if exc.path is None else exc) from None
    return ChunkResult(data, read.count, encoder.count, skipped + encoder.skipped,
                       encoder.keys.tobytes(), states,
                       encoder.tap.stats if encoder.tap is not None else None, encoder.fields)


def chunk_records(chunk: bytes, first_lineno: int, fmt: str, name: str, skip_invalid: bool
                  ) -> tuple[Iterator[Record], Counter, list[str]]:
    """The records of one chunk of whole lines (parsed as they are taken), a counter of
    those read, and the skipped lines (``LINE: problem``) when skipping."""
    skipped: list[str] = []

    def on_invalid(exc: InvalidRecordError) -> None:
        if not skip_invalid:
            raise exc
        skipped.append(f"{exc.lineno}: {exc.problem}")

    read = Counter()
    records = parse_lines([(first_lineno, chunk.split(b"\n"))], get_format(fmt), name,
                          on_invalid, read)
    return records, read, skipped


def chunks(path: str, digest: Any) -> Any:
    """``(offset, size, first line number)`` of runs of whole lines, hashing the file.

    Reads into one reused buffer: fresh megabyte-sized buffers would cost a page
    fault for every 4 KiB, every time.
    """
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    lineno = 1
    offset = 0  # of the first byte not yet handed out
    kept = 0  # bytes at the start of the buffer not yet handed out
    first = True
    with open(path, "rb") as f:
        while True:
            got = f.readinto(view[kept:])
            if not got:
                break
            digest.update(view[kept:kept + got])
            filled = kept + got
            if first and buffer.startswith(BOM):  # hashed, never parsed
                buffer[:filled - len(BOM)] = buffer[len(BOM):filled]
                offset = len(BOM)
                filled -= len(BOM)
            first = False
            cut = buffer.rfind(b"\n", 0, filled) + 1
            if cut == 0 and filled == len(buffer):  # a line longer than the buffer
                view.release()
                buffer.extend(bytes(len(buffer)))
                view = memoryview(buffer)
                kept = filled
                continue
            if cut:
                yield offset, cut, lineno
                offset += cut
                lineno += buffer.count(b"\n", 0, cut)
            kept = filled - cut
            buffer[:kept] = buffer[cut:filled]
    if kept:
        yield offset, kept, lineno


class _Relay:
    """Moves a worker's scratch file into the sink through one reused buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(CHUNK_BYTES * 2)

    def copy_from(self, scratch: str, sink: Sink) -> None:
        with open(scratch, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > len(self.buffer):
                self.buffer = bytearray(size)
            view = memoryview(self.buffer)[:size]
            got = 0
            while got < size:
                got += f.readinto(view[got:]) or 0
                if not got:
                    break
            sink.write_bytes(view[:got])
            view.release()
        os.unlink(scratch)


@dataclass
class InputFacts:
    records_read: int = 0
    skipped: list[str] = field(default_factory=list)
    sha256: Any = field(default_factory=hashlib.sha256)
    #: The bytes of the input whose chunks are done (for progress: what is left).
    bytes_done: int = 0

    def expected_records(self, size: int) -> int | None:
        """For progress: the records in a file of ``size`` bytes, estimated from the
        chunks done so far."""
        return round(self.records_read * size / self.bytes_done) if self.bytes_done else None


@contextlib.contextmanager
def worker_pool(workers: int, initializer: Any, initargs: tuple[Any, ...]) -> Iterator[Any]:
    """A pool of forked workers, ended without a hang.

    On success and on an error, the workers finish the chunks they hold (at most two
    each) and exit (``close``, ``join``). Only an interrupt terminates them:
    ``Pool.terminate`` kills a worker even while it writes a result, which can leave
    the result queue's lock held and the pool's own shutdown waiting for it forever
    (seen about once in 100 failing runs under load); after a signal, the run's deadline
    (:mod:`promptkit.interrupts`) ends such a wait.
    """
    context = multiprocessing.get_context("fork")
    with interrupts.pool_starting(), progress.paused():
        pool = context.Pool(workers, initializer=initializer, initargs=initargs)
    try:
        yield pool
    except KeyboardInterrupt:
        pool.terminate()
        raise
    finally:
        pool.close()
        pool.join()


def run_file(path: str, job: Job, sink: Sink, workers: int,
             facts: InputFacts | None = None) -> InputFacts:
    """Process ``path`` with ``workers`` processes, writing to ``sink`` in input order;
    the facts of the input (``facts``, when given, counted as each chunk is done, for
    progress) are returned."""
    facts = facts if facts is not None else InputFacts()
    states = [step.new_state() for step in job.steps]  # everything before the next chunk
    out = _Relay()
    with worker_pool(workers, _init, (job,)) as pool:
        pending: deque[tuple[int, int, int, Any]] = deque()

        def finish() -> None:
            offset, size, lineno, future = pending.popleft()
            result: ChunkResult = future.get()
            if any(s.overlaps(r) for s, r in zip(states, result.states, strict=True)):
                with open(path, "rb") as f:  # redo in order, with the history before it
                    chunk = os.pread(f.fileno(), size, offset)
                result = process_chunk(job, chunk, lineno, states)
            else:
                for state, later in zip(states, result.states, strict=True):
                    state.update(later)
            if isinstance(result.data, str):
                out.copy_from(result.data, sink)
            else:
                sink.write_bytes(result.data)
            sink.encoder.keys.frombytes(result.keys)
            sink.encoder.count += result.written
            if result.stats is not None and sink.encoder.tap is not None:
                sink.encoder.tap.stats.merge(result.stats)
            if result.fields and sink.encoder.fields is not None:
                sink.encoder.fields |= result.fields
            facts.records_read += result.read
            facts.skipped += result.skipped
            facts.bytes_done += size

        for offset, size, lineno in chunks(path, facts.sha256):
            future = pool.apply_async(_work, (offset, size, lineno))
            pending.append((offset, size, lineno, future))
            if len(pending) >= 2 * workers:
                finish()
        while pending:
            finish()
    return facts


# ---------------------------------------------------------------- any function, chunk by chunk

_mapper: tuple[str, Any, tuple[Any, ...], tuple[str, str, bool]] | None = None


def _init_map(path: str, fn: Any, args: tuple[Any, ...], reading: tuple[str, str, bool]) -> None:
    global _mapper
    interrupts.worker_started()
    progress.want(False)  # the parent shows the chunks done
    _mapper = (path, fn, args, reading)
    keep_freed_memory()


def _map_work(offset: int, size: int, first_lineno: int) -> tuple[Any, int, list[str]]:
    assert _mapper is not None
    path, fn, args, (fmt, name, skip_invalid) = _mapper
    with open(path, "rb") as f:
        chunk = os.pread(f.fileno(), size, offset)
    records, read, skipped = chunk_records(chunk, first_lineno, fmt, name, skip_invalid)
    result = fn(records, *args)
    return result, read.count, skipped


def map_records(path: str, fn: Any, args: tuple[Any, ...], workers: int, digest: Any, *,
                fmt: str, name: str, skip_invalid: bool, done: InputFacts | None = None
                ) -> Iterator[tuple[Any, int, list[str]]]:
    """``fn(records, *args)`` of the records of each chunk of ``path``, in ``workers``
    processes: ``(result, records read, skipped lines)`` of each chunk, in file order
    (``digest`` hashes the file; ``done.bytes_done``, when given, counts the bytes of
    the chunks yielded, for progress)."""
    reading = (fmt, name, skip_invalid)
    done = done if done is not None else InputFacts()
    with worker_pool(workers, _init_map, (path, fn, args, reading)) as pool:
        pending: deque[tuple[int, Any]] = deque()
        for offset, size, lineno in chunks(path, digest):
            pending.append((size, pool.apply_async(_map_work, (offset, size, lineno))))
            if len(pending) >= 2 * workers:
                size, future = pending.popleft()
                result = future.get()
                done.bytes_done += size
                yield result
        while pending:
            size, future = pending.popleft()
            result = future.get()
            done.bytes_done += size
            yield result
