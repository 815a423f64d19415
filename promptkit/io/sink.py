"""Writing records: the :class:`Encoder` that makes a record's line, and the
:class:`Sink` that writes the lines to a file atomically (or to stdout).

A :class:`Sink` writes to a temporary file beside the output and renames it into place
only on success: a failed or interrupted run leaves no partial file and never damages
an existing one. Its hashing and writing run on a :class:`Background` thread. Every
writer (this one, the parallel workers, the Arrow batches, Ray tasks) encodes with
:class:`Encoder` and reports what it wrote as :class:`Written` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

import orjson

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.records import Record
from promptkit.formats import Format, writer
from promptkit.io import compression
from promptkit.io.files import (
    CHUNK,
    STDIO,
    os_error,
    put_in_place,
    remove_quietly,
    temporary,
    writable,
)
from promptkit.io.jsoncodec import dumps_exact
from promptkit.io.keys import KeyBuckets, distinct_sorted, prompt_key


class Tap(Protocol):
    """What counts the records an :class:`Encoder` writes, as it writes them:
    :class:`promptkit.ops.stats.Tap` (token statistics), kept by the encoder without
    this layer knowing the operation."""

    #: The statistics so far (merged from workers by the runners).
    stats: Any
    #: The tokenizer it counts with (the manifest names it).
    tokenizer: Any

    def add(self, record: Record) -> None: ...

    def finish(self) -> Any: ...


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
