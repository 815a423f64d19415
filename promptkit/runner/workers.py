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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from promptkit.core import interrupts, progress
from promptkit.core.errors import InvalidRecordError
from promptkit.core.limits import MAX_LINE
from promptkit.core.records import Record
from promptkit.formats import get_format
from promptkit.io import compression
from promptkit.io.jsonl import BOM, Counter, is_inputs_json, long_line, parse_lines
from promptkit.io.keys import stable_key, stable_prompt_key
from promptkit.io.sink import Background, Encoder, Sink, joined

CHUNK_BYTES = 4 << 20
#: Files smaller than this run in one process: starting workers would cost more.
MIN_PARALLEL_BYTES = 16 << 20


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def can_run_parallel(path: str | list[str], workers: int) -> bool:
    """Whether ``path`` is a large regular file of plain JSON lines, which splits at line
    ends (a compressed file or a JSON array does not: it is read in one process); or,
    given the shards of many files (see :mod:`promptkit.io.shards`), whether every one is
    plain JSON lines and together they are large."""
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return False
    sizes = _plain_sizes(path)
    return sizes is not None and sum(sizes) >= MIN_PARALLEL_BYTES


def plain_files(path: str | list[str]) -> bool:
    """Whether ``path`` (or every shard of many files) is a regular file of plain JSON
    lines, read chunk by chunk (in this process with one worker)."""
    return _plain_sizes(path) is not None


def _plain_sizes(path: str | list[str]) -> list[int] | None:
    sizes = [_plain_size(p) for p in ([path] if isinstance(path, str) else path)]
    return None if None in sizes else sizes  # type: ignore[return-value]


def _plain_size(path: str) -> int | None:
    """The size of a regular file of plain JSON lines (``None``: another kind of file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    import stat as st

    if not st.S_ISREG(stat.st_mode):
        return None
    with open(path, "rb") as f:
        head = f.read(4096)
    text = head.removeprefix(BOM).lstrip()
    plain = (compression.sniff(head) is None and not text.startswith(b"[")
             and not is_inputs_json(text))
    return stat.st_size if plain else None


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
    #: Key prompts the same in every process (chunks run in processes that are not
    #: forks of one: Ray), for the distinct count.
    stable_keys: bool = False
    #: The nonce parameters the splice writer takes lines with (see
    #: :mod:`promptkit.runner.splice`), or None: every line is encoded from its record.
    splice: dict[str, Any] | None = None
    #: Write conversations that end with a recorded reply as requests (``--keep-replies``).
    keep_replies: bool = False


@dataclass
class ChunkResult:
    #: The output lines; or where they are: the scratch file, or ``(slot, size)`` in
    #: the shared memory of :class:`Slots`.
    data: bytes | str | tuple[int, int]
    read: int
    written: int
    skipped: list[str]
    keys: bytes
    states: list[Any] = field(default_factory=list)
    stats: Any = None  # token statistics of what was written (a stats.Stats), if counted
    fields: set[str] | None = None  # the top-level fields of OpenAI lines written


class Slots:
    """Shared memory a worker hands a chunk's output back in: one slot a chunk in
    flight, mapped before the workers are forked, so each sees every slot. Copying the
    output there costs a fraction of writing it to a file and reading it back (the
    pages stay mapped from chunk to chunk); output too large for its slot goes by a
    scratch file."""

    def __init__(self, count: int, size: int) -> None:
        import mmap

        self.maps = [mmap.mmap(-1, size) for _ in range(count)]

    def close(self) -> None:
        for room in self.maps:
            room.close()


_job: Job | None = None
_slots: Slots | None = None


def _init(job: Job, slots: Slots | None = None) -> None:
    global _job, _slots
    interrupts.worker_started()
    progress.want(False)  # the parent shows the chunks done
    _job, _slots = job, slots
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


def _work(path: str, offset: int, size: int, first_lineno: int, base: int,
          slot: int | None = None) -> ChunkResult:
    """Process the chunk of ``path`` at ``offset`` (read here: only its place crosses
    processes); ``base``: the places in the stream before ``path`` (one shard of many).
    The output goes back in shared memory (``slot``), or else by a scratch file."""
    assert _job is not None
    with open(path, "rb") as f:
        chunk = os.pread(f.fileno(), size, offset)
    result = process_chunk(_job, chunk, first_lineno, base=base, path=path)
    assert isinstance(result.data, bytes)
    if _slots is not None and slot is not None and len(result.data) <= len(_slots.maps[slot]):
        _slots.maps[slot][:len(result.data)] = result.data
        result.data = (slot, len(result.data))
        return result
    # Passing megabytes back through the pool's pipe costs more than a file does.
    fd, scratch = tempfile.mkstemp(dir=_job.scratch)
    with os.fdopen(fd, "wb") as f:
        f.write(result.data)
    result.data = scratch
    return result


def process_chunk(job: Job, chunk: bytes, first_lineno: int,
                  states: list[Any] | None = None, *, base: int = 0,
                  path: str | None = None) -> ChunkResult:
    """Parse, transform and encode the lines of one chunk (states: fresh unless given).

    ``path``, ``base``: the shard the chunk is of, and the places in the stream before it,
    when the input is many files (errors name the shard and its own line)."""
    name = job.name if path is None or path == job.path else path
    encoder = job_encoder(job)
    if states is None:
        states = [step.new_state() for step in job.steps]
    try:
        if job.splice is not None:
            data, read, skipped = _spliced(job, chunk, first_lineno, states[0], encoder, name,
                                           base)
        else:
            records, read, skipped = chunk_records(chunk, first_lineno, job.in_format, name,
                                                   job.skip_invalid, base)
            for step, state in zip(job.steps, states, strict=True):
                records = step.apply(records, state)
            data = joined(encoder.encode_all(records))
    except InvalidRecordError as exc:
        if exc.path is not None:
            raise
        lineno = exc.lineno - base if exc.lineno is not None else None
        raise InvalidRecordError(exc.problem, name, lineno) from None
    return ChunkResult(data, read.count, encoder.count, skipped + encoder.skipped,
                       encoder.keys.tobytes(), states,
                       encoder.tap.stats if encoder.tap is not None else None, encoder.fields)


def job_encoder(job: Job) -> Encoder:
    """The encoder of a job's chunk: its output format, its keys (stable ones when the
    chunks run in processes that are not forks of one), its token count."""
    encoder = Encoder(get_format(job.out_format), skip_invalid=job.skip_invalid,
                      key=stable_prompt_key if job.stable_keys else None,
                      keep_replies=job.keep_replies)
    if job.tokenizer is not None:
        from promptkit.core.tokenizers import cached_tokenizer
        from promptkit.ops.stats import Tap

        encoder.tap = Tap(cached_tokenizer(job.tokenizer), threads=1)
    return encoder


def _spliced(job: Job, chunk: bytes, first_lineno: int, state: Any, encoder: Encoder,
             name: str, base: int) -> tuple[bytes, Counter, list[str]]:
    """The output of one chunk of a nonce run by the splice writer (see
    :mod:`promptkit.runner.splice`): the chunk's bytes with each nonce inserted, and each line
    the splicer does not take (or a bad one) the usual way, in its place."""
    from promptkit.runner.splice import Splicer

    (step,) = job.steps
    splicer = Splicer(job.splice or {}, job.in_format, state,
                      stable_key if job.stable_keys else hash)
    splice = splicer.splice
    splicer.returns = b"\r" in chunk
    encoder.key = splicer.prompt_key  # the lines written the usual way: keyed alike
    fmt = get_format(job.in_format)
    skipped: list[str] = []

    def on_invalid(exc: InvalidRecordError) -> None:
        if not (job.skip_invalid or exc.always_skipped):
            raise exc
        skipped.append(f"{(exc.lineno or 0) + base}: {exc.problem}")

    read = Counter()
    view = memoryview(chunk)
    parts: list[Any] = []
    add = parts.append
    keep_key = encoder.keys.append
    returns = splicer.returns
    size = len(chunk)
    done = 0  # the chunk's bytes before this are in parts
    start = 0  # where the line begins in the chunk
    lineno = first_lineno
    index = first_lineno - 1 + base
    taken = 0  # lines the splicer took
    lines = chunk.split(b"\n")
    splicer.ahead(index, len(lines))
    for line in lines:
        end = start + len(line)
        spliced = splice(line, index) if line else None
        if spliced is None:  # the usual way, or a blank line
            add(view[done:start])
            records = parse_lines([(lineno, [line])], fmt, name, on_invalid, read, base)
            parts.extend(encoder.encode_all(step.apply(records, state)))
            done = min(end + 1, size)
        else:
            cut, cut_end, new, key = spliced
            if new:
                add(view[done:start + cut])
                add(new)
                done = start + cut_end
            if returns and line[-1] == 0x0D:  # a carriage return ends the line: drop it
                add(view[done:end - 1])
                done = end
            if end == size:  # the file's last line has no newline
                add(view[done:end])
                add(b"\n")
                done = end
            keep_key(key)
            taken += 1
        start = end + 1
        lineno += 1
        index += 1
    add(view[done:])
    read.count += taken
    encoder.count += taken
    return b"".join(parts), read, skipped


def spliced_batches(job: Job, batches: Iterable[tuple[int, list[bytes]]],
                    states: list[Any] | None = None, *, base: int = 0,
                    path: str | None = None, lines_left: Any = None) -> Iterator[ChunkResult]:
    """The results of a nonce run by the splice writer over batches of lines
    ``(first line number, lines)`` (a stream: stdin, a compressed file), in order, each
    batch a chunk; ``states`` carry on from batch to batch. ``lines_left()``, when given,
    is how many more records to read (``--limit``): a batch that may hold more is taken
    a line at a time, up to the last one."""
    states = states if states is not None else [step.new_state() for step in job.steps]
    for first, lines in batches:
        if lines_left is not None and lines_left() < len(lines):
            for lineno, line in enumerate(lines, start=first):
                if lines_left() <= 0:
                    return
                yield process_chunk(job, line + b"\n", lineno, states, base=base, path=path)
            continue
        yield process_chunk(job, b"\n".join([*lines, b""]), first, states, base=base,
                            path=path)
        if lines_left is not None and lines_left() <= 0:
            return


def chunk_records(chunk: bytes, first_lineno: int, fmt: str, name: str, skip_invalid: bool,
                  base: int = 0) -> tuple[Iterator[Record], Counter, list[str]]:
    """The records of one chunk of whole lines (parsed as they are taken), a counter of
    those read, and the skipped lines (``PLACE: problem``, their place in the stream:
    ``base`` plus the line) when skipping."""
    skipped: list[str] = []

    def on_invalid(exc: InvalidRecordError) -> None:
        if not (skip_invalid or exc.always_skipped):
            raise exc
        skipped.append(f"{(exc.lineno or 0) + base}: {exc.problem}")

    read = Counter()
    records = parse_lines([(first_lineno, chunk.split(b"\n"))], get_format(fmt), name,
                          on_invalid, read, base)
    return records, read, skipped


def chunks(path: str, digest: Any, lines: list[int] | None = None) -> Any:
    """``(offset, size, first line number)`` of runs of whole lines, hashing the file
    (``lines``, when given, gets the file's line count once all is read).

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
                if filled > MAX_LINE:
                    raise long_line(path, lineno)
                view.release()
                buffer.extend(bytes(min(len(buffer), MAX_LINE + 1 - len(buffer))))
                view = memoryview(buffer)
                kept = filled
                continue
            if cut:
                yield offset, cut, lineno
                offset += cut
                lineno += buffer.count(b"\n", 0, cut)
            kept = filled - cut
            if len(buffer) > CHUNK_BYTES and kept < CHUNK_BYTES:  # after a long line
                rest = buffer[cut:filled]
                view.release()
                buffer = bytearray(CHUNK_BYTES)
                buffer[:kept] = rest
                view = memoryview(buffer)
            else:
                buffer[:kept] = buffer[cut:filled]
    if kept:
        yield offset, kept, lineno
    if lines is not None:
        lines.append(lineno - 1 + (kept > 0))


def pieces(files: str | list[str], facts: InputFacts, digest: Any = None, *,
           background: bool = False) -> Iterator[tuple[str, int, int, int, int]]:
    """``(path, offset, size, first line number, base)`` of the runs of whole lines of one
    file or, given a list, of the shards of many files in order (see
    :mod:`promptkit.io.shards`; ``base``: the lines of the shards before, and each shard's
    path, sha256 and size go into ``facts.shards``). The bytes are hashed into
    ``digest`` (default ``facts.sha256``) for one file; with ``background``, on a thread
    of its own (while this one works on the chunks)."""
    if isinstance(files, str):
        digest = digest if digest is not None else facts.sha256
        if not background:
            for offset, size, lineno in chunks(files, digest):
                yield files, offset, size, lineno, 0
            return
        hashing = Background()
        try:
            for offset, size, lineno in chunks(files, _Submitted(hashing, digest.update)):
                yield files, offset, size, lineno, 0
            hashing.wait()
        finally:
            hashing.close()
        return
    base = 0
    facts.shards = []
    facts.shard_lines = []
    for path in files:
        digest = hashlib.sha256()
        lines: list[int] = []
        for offset, size, lineno in chunks(path, digest, lines):
            yield path, offset, size, lineno, base
        facts.shards.append({"path": path, "sha256": digest.hexdigest(),
                             "size": os.path.getsize(path)})
        facts.shard_lines.append(lines[0])
        base += lines[0]


class _Submitted:
    """A digest whose updates run on a :class:`Background` thread (a copy of each piece:
    the caller reuses its buffer)."""

    def __init__(self, background: Background, update: Any) -> None:
        self.background = background
        self._update = update

    def update(self, data: Any) -> None:
        self.background.submit(self._update, bytes(data))


class Relay:
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
            sink.write_now(view[:got])
            view.release()
        os.unlink(scratch)


@dataclass
class InputFacts:
    records_read: int = 0
    skipped: list[str] = field(default_factory=list)
    sha256: Any = field(default_factory=hashlib.sha256)
    #: The bytes of the input whose chunks are done (for progress: what is left).
    bytes_done: int = 0
    #: Many files as one input: each shard's path, sha256 and size, and its lines (see
    #: :func:`pieces`).
    shards: list[dict[str, Any]] | None = None
    shard_lines: list[int] = field(default_factory=list)

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
    (:mod:`promptkit.core.interrupts`) ends such a wait.
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


def run_file(path: str | list[str], job: Job, sink: Sink, workers: int,
             facts: InputFacts | None = None) -> InputFacts:
    """Process ``path`` (or the shards of many files, in order) with ``workers``
    processes, writing to ``sink`` in input order; the facts of the input (``facts``,
    when given, counted as each chunk is done, for progress) are returned."""
    facts = facts if facts is not None else InputFacts()
    states = [step.new_state() for step in job.steps]  # everything before the next chunk
    if workers < 2:  # chunk by chunk in this process (the splice writer reads so)
        keep_freed_memory()  # chunks of megabytes, one after another, as in a worker
        with open_chunks() as read:
            for file, offset, size, lineno, base in pieces(path, facts, background=True):
                absorb(process_chunk(job, read(file, offset, size), lineno, states, base=base,
                                     path=file), sink, facts)
                facts.bytes_done += size
        return facts
    out = Relay()
    slots = Slots(2 * workers, CHUNK_BYTES + CHUNK_BYTES // 2)
    with contextlib.closing(slots), worker_pool(workers, _init, (job, slots)) as pool:
        pending: deque[tuple[str, int, int, int, int, Any]] = deque()

        def finish() -> None:
            file, offset, size, lineno, base, future = pending.popleft()
            try:
                result: ChunkResult | None = future.get()
            except InvalidRecordError:  # a line continuing a conversation begun earlier
                result = None  # may be none: the chunk in order says (or raises it again)
            if result is None or any(
                    s.overlaps(r) for s, r in zip(states, result.states, strict=True)):
                with open(file, "rb") as f:  # redo in order, with the history before it
                    chunk = os.pread(f.fileno(), size, offset)
                result = process_chunk(job, chunk, lineno, states, base=base, path=file)
            else:
                for state, later in zip(states, result.states, strict=True):
                    state.update(later)
            absorb(result, sink, facts, out, slots)
            facts.bytes_done += size

        # At most 2 * workers chunks are in flight: the one sent next takes the slot of
        # the one just written.
        for number, (file, offset, size, lineno, base) in enumerate(pieces(path, facts)):
            future = pool.apply_async(_work, (file, offset, size, lineno, base,
                                              number % (2 * workers)))
            pending.append((file, offset, size, lineno, base, future))
            if len(pending) >= 2 * workers:
                finish()
        while pending:
            finish()
    return facts


def absorb(result: ChunkResult, sink: Sink, facts: InputFacts, relay: Relay | None = None,
           slots: Slots | None = None) -> None:
    """Write a chunk's output into ``sink`` (from its scratch file, through ``relay``; or
    from its slot of ``slots``) and take its account: records read, written and skipped,
    keys, token figures."""
    if isinstance(result.data, str):
        (relay or Relay()).copy_from(result.data, sink)
    elif isinstance(result.data, tuple):
        assert slots is not None
        slot, size = result.data
        # Both views released here, even when the write fails: a view an error's traceback
        # still held would keep the shared memory from closing.
        with memoryview(slots.maps[slot]) as view, view[:size] as part:
            sink.write_now(part)
    else:
        sink.write_bytes(result.data)
    sink.encoder.keys.frombytes(result.keys)
    sink.bound_keys()
    sink.encoder.count += result.written
    if result.stats is not None and sink.encoder.tap is not None:
        sink.encoder.tap.stats.merge(result.stats)
    if result.fields and sink.encoder.fields is not None:
        sink.encoder.fields |= result.fields
    facts.records_read += result.read
    facts.skipped += result.skipped


@contextlib.contextmanager
def open_chunks() -> Iterator[Any]:
    """``read(path, offset, size)``: the bytes of a chunk, each file opened once."""
    opened: dict[str, Any] = {}

    def read(path: str, offset: int, size: int) -> bytes:
        if path not in opened:
            for f in opened.values():
                f.close()
            opened.clear()
            opened[path] = open(path, "rb")  # noqa: SIM115 (closed below)
        return os.pread(opened[path].fileno(), size, offset)

    try:
        yield read
    finally:
        for f in opened.values():
            f.close()


# ---------------------------------------------------------------- any function, chunk by chunk

_mapper: tuple[Any, Any, tuple[Any, ...], tuple[str, str, bool]] | None = None


def _init_map(path: Any, fn: Any, args: tuple[Any, ...], reading: tuple[str, str, bool]) -> None:
    global _mapper
    interrupts.worker_started()
    progress.want(False)  # the parent shows the chunks done
    _mapper = (path, fn, args, reading)
    keep_freed_memory()


def _map_work(path: str, offset: int, size: int, first_lineno: int, base: int
              ) -> tuple[Any, int, list[str]]:
    assert _mapper is not None
    files, fn, args, (fmt, name, skip_invalid) = _mapper
    shard = not isinstance(files, str)  # one of many files: errors name it
    with open(path, "rb") as f:
        chunk = os.pread(f.fileno(), size, offset)
    records, read, skipped = chunk_records(chunk, first_lineno, fmt, path if shard else name,
                                           skip_invalid, base)
    try:
        result = fn(records, *args)
    except InvalidRecordError as exc:
        if not shard or exc.path is not None:
            raise
        raise InvalidRecordError(exc.problem, path, exc.lineno - base
                                 if exc.lineno is not None else None) from None
    return result, read.count, skipped


def map_records(path: str | list[str], fn: Any, args: tuple[Any, ...], workers: int,
                digest: Any, *, fmt: str, name: str, skip_invalid: bool,
                done: InputFacts | None = None) -> Iterator[tuple[Any, int, list[str]]]:
    """``fn(records, *args)`` of the records of each chunk of ``path`` (or of the shards
    of many files, in order), in ``workers`` processes: ``(result, records read, skipped
    lines)`` of each chunk, in file order (``digest`` hashes one file; shards go into
    ``done.shards``; ``done.bytes_done``, when given, counts the bytes of the chunks
    yielded, for progress)."""
    reading = (fmt, name, skip_invalid)
    done = done if done is not None else InputFacts()
    with worker_pool(workers, _init_map, (path, fn, args, reading)) as pool:
        pending: deque[tuple[int, Any]] = deque()
        for file, offset, size, lineno, base in pieces(path, done, digest):
            pending.append((size, pool.apply_async(_map_work,
                                                   (file, offset, size, lineno, base))))
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
