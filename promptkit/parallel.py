"""Run a pipeline over a regular file in worker processes, chunk by chunk, in order.

A chunk is a run of whole lines. Operations are index-addressed (a record's
nonce comes from its line number), so a chunk processed on its own gives the
bytes a sequential run gives. The one thing a chunk cannot know is which
conversations earlier chunks began (lines sharing a ``session_id``): each chunk
reports the sessions it saw, and a chunk that continued one begun earlier is
redone in order, in the main process, with the state of everything before it.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import tempfile
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRecordError
from .formats import get_format
from .streams import Counter, Encoder, Sink, parse_lines

CHUNK_BYTES = 4 << 20
#: Files smaller than this run in one process: starting workers would cost more.
MIN_PARALLEL_BYTES = 16 << 20


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def can_run_parallel(path: str, workers: int) -> bool:
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        stat = os.stat(path)
    except OSError:
        return False
    import stat as st

    return st.S_ISREG(stat.st_mode) and stat.st_size >= MIN_PARALLEL_BYTES


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


@dataclass
class ChunkResult:
    data: bytes | str  # the output lines, or the scratch file that holds them
    read: int
    written: int
    skipped: list[str]
    keys: bytes
    states: list[Any] = field(default_factory=list)


_job: Job | None = None


def _init(job: Job) -> None:
    global _job
    _job = job


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
    skipped: list[str] = []

    def on_invalid(exc: InvalidRecordError) -> None:
        if not job.skip_invalid:
            raise exc
        skipped.append(f"{exc.lineno}: {exc.problem}")

    encoder = Encoder(get_format(job.out_format), skip_invalid=job.skip_invalid)
    if states is None:
        states = [step.new_state() for step in job.steps]
    lines = zip(itertools.count(first_lineno), chunk.split(b"\n"), strict=False)
    read = Counter()
    records = parse_lines(lines, get_format(job.in_format), job.name, on_invalid, read)
    for step, state in zip(job.steps, states, strict=True):
        records = step.apply(records, state)
    try:
        data = b"".join(encoder.encode_all(records))
    except InvalidRecordError as exc:
        raise (exc.located(job.name) if exc.path is None else exc) from None
    return ChunkResult(data, read.count, encoder.count, skipped + encoder.skipped,
                       encoder.keys.tobytes(), states)


def chunks(path: str, digest: Any) -> Any:
    """``(offset, size, first line number)`` of runs of whole lines, hashing the file."""
    lineno = 1
    offset = 0
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
            block = tail + block
            cut = block.rfind(b"\n") + 1
            tail = block[cut:]
            if cut:
                yield offset, cut, lineno
                offset += cut
                lineno += block.count(b"\n", 0, cut)
    if tail:
        yield offset, len(tail), lineno


@dataclass
class InputFacts:
    records_read: int = 0
    skipped: list[str] = field(default_factory=list)
    sha256: Any = field(default_factory=hashlib.sha256)


def run_file(path: str, job: Job, sink: Sink, workers: int) -> InputFacts:
    """Process ``path`` with ``workers`` processes, writing to ``sink`` in input order."""
    facts = InputFacts()
    states = [step.new_state() for step in job.steps]  # everything before the next chunk
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init, initargs=(job,)) as pool:
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
                with open(result.data, "rb") as f:
                    data = f.read()
                os.unlink(result.data)
            else:
                data = result.data
            sink.write_bytes(data)
            sink.encoder.keys.frombytes(result.keys)
            sink.encoder.count += result.written
            facts.records_read += result.read
            facts.skipped += result.skipped

        for offset, size, lineno in chunks(path, facts.sha256):
            future = pool.apply_async(_work, (offset, size, lineno))
            pending.append((offset, size, lineno, future))
            if len(pending) >= 2 * workers:
                finish()
        while pending:
            finish()
    return facts
