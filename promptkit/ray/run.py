"""``--ray``: record-wise steps over a file or many shards on a Ray cluster, written as a
folder of parts (:mod:`promptkit.provenance.parts`): the tasks and the driver's loop.
:func:`promptkit.ray.commands.run_folder` checks the input and OUT, runs :func:`run` and
puts the folder in place with its manifest.

The plan, every pass but the last bookkeeping on the cluster:

1. **Chunks** (:func:`promptkit.ray.inputs.plan_input`, the one planner of every
   ``--ray`` command). The input is one JSONL file (plain or compressed) or a folder or
   glob of JSONL shards read in sorted path order as one stream. Tasks hash each file
   and, for shards, count its lines (its places in the stream); each plain file is cut
   at every ``chunk_bytes`` (``PROMPTKIT_RAY_CHUNK_BYTES``, a tuning knob, default
   64 MiB) and a task per cut moves it to the next line end and counts the lines before
   it; the driver adds the counts up into each chunk's first line and index, and each
   chunk carries its shard's ``base`` (the places before it). A compressed file (or
   shard) cannot be cut at byte offsets: it is one chunk, read and decompressed
   streaming by one task.
2. **Steps.** A Ray task per chunk (two a CPU of the cluster in flight, handed out and
   taken in order by :mod:`promptkit.runner.schedule`) reads its bytes, runs the steps (as
   :func:`promptkit.runner.workers.process_chunk` does for ``--workers``) and writes its own
   part, ``part-NNNNN.jsonl``, to a staging folder beside OUT. The driver gets only
   small facts of each chunk: records read and written, skipped lines, the part's
   sha256 and size, the distinct prompt keys, token statistics, and the steps' states
   (the conversations a chunk saw).
3. **Conversations across chunks.** Lines sharing a ``session_id`` keep the first
   line's nonce. A chunk that continued a conversation begun in an earlier chunk is
   run again, as a task, with the state of everything before it, as its turn comes in
   order (only those chunks are read twice).
4. **Manifest.** The input's sha256 (for shards, that of the shards' own, as without
   ``--ray``) comes from the planning tasks: **the driver never reads the input's
   bytes**, only its first lines (the format) and, for ``pad`` of the records' own
   system prompts, the first pass that finds them. The driver streams the parts once
   for the sha256 of their concatenation (the bytes the same command writes without
   ``--ray``); ``run_folder`` writes ``manifest.json`` into the staging folder and
   renames the folder into place: the parts and their manifest appear together, or not
   at all.

A task is a plain Ray task: when a worker dies, Ray runs it again, and the part it
writes (to a temporary name, renamed) is the same bytes.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pickle
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptkit.core import progress
from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.formats import get_format
from promptkit.io import files
from promptkit.io.jsonl import Source
from promptkit.io.sink import Encoder, Written
from promptkit.ops.base import Step
from promptkit.ops.registry import ORDERED
from promptkit.ops.stats import Tap
from promptkit.provenance.parts import PART, hash_parts, make_staging, write_part
from promptkit.ray import address_kind, connect
from promptkit.ray.aggregate import distinct_count
from promptkit.ray.inputs import Chunk, chunk_of, plan_input
from promptkit.runner import schedule
from promptkit.runner.workers import ChunkResult, Job, job_encoder, process_chunk, spliced_batches
from promptkit.runner.writers import ENCODE
from promptkit.runner.writers import WRITER as SPLICE
from promptkit.runner.writers import plan as splice_plan

DEFAULT_CHUNK_BYTES = 64 << 20
#: How long the tasks in flight are waited for once cancelled (after an error).
CANCEL_SECONDS = 30


def chunk_bytes() -> int:
    """Bytes a chunk (and so a task, and a part) holds at most, about: the
    ``PROMPTKIT_RAY_CHUNK_BYTES`` environment variable, else 64 MiB."""
    value = os.environ.get("PROMPTKIT_RAY_CHUNK_BYTES", "")
    if not value:
        return DEFAULT_CHUNK_BYTES
    if not value.isdigit() or int(value) < 1:
        raise PromptkitError(f"PROMPTKIT_RAY_CHUNK_BYTES={value}: not a positive number of "
                             "bytes")
    return int(value)


# ---------------------------------------------------------------- tasks (on the cluster)


@dataclass
class TaskSettings:
    """What every chunk's task needs, sent with each task."""

    job: Job
    staging: str
    #: Seconds each task waits before it starts (tests of a worker killed mid-job).
    delay: float = 0.0


def _part(settings: TaskSettings, number: int) -> str:
    return os.path.join(settings.staging, PART.format(number))


#: A subfolder of the staging folder for the chunks' prompt keys (removed before the
#: folder becomes OUT): counted distinct by a shuffle, never gathered on the driver.
KEYS = ".keys"


def save_keys(staging: str, number: int, keys: bytes) -> None:
    """Keep chunk ``number``'s prompt keys (int64s) for :func:`distinct_keys`."""
    unique = np.unique(np.frombuffer(keys, dtype=np.int64))
    folder = os.path.join(staging, KEYS)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"keys-{number:05d}.npy")
    if unique.size:
        tmp = f"{path}.{os.getpid()}{files.TMP_SUFFIX}"
        with open(tmp, "wb") as f:
            np.save(f, unique)
        os.replace(tmp, path)
    else:  # a chunk redone may now write none
        files.remove_quietly(path)


def _facts(number: int, result: Any, sha256: str, size: int, staging: str
           ) -> dict[str, Any]:
    save_keys(staging, number, result.keys)
    return {"number": number, "read": result.read, "written": result.written,
            "skipped": pickle.dumps(result.skipped), "sha256": sha256, "bytes": size,
            "states": pickle.dumps(result.states),
            "stats": pickle.dumps(result.stats), "fields": pickle.dumps(result.fields),
            "error": b""}


def _failed(number: int, exc: PromptkitError) -> dict[str, Any]:
    """The facts of a chunk with a bad record: the error, raised by the driver when it is
    the first in stream order (the one the run without ``--ray`` reports), as one line."""
    empty = pickle.dumps(None)
    return {"number": number, "read": 0, "written": 0, "skipped": pickle.dumps([]),
            "sha256": "", "bytes": 0, "states": empty, "stats": empty,
            "fields": empty, "error": pickle.dumps(exc)}


def raise_first_error(facts: list[dict[str, Any]]) -> None:
    """Raise the error of the first chunk (in order) that had one."""
    for fact in facts:
        if fact["error"]:
            raise pickle.loads(fact["error"])


def process(row: dict[str, Any], settings: TaskSettings,
            states: list[Any] | None = None) -> dict[str, Any]:
    """Run the steps over one chunk and write its part (a Ray task; one redoing a chunk
    has ``states``, the steps' states of everything before it)."""
    progress.want(False)
    if settings.delay:
        time.sleep(settings.delay)
    chunk = chunk_of(row)
    try:
        return _process(chunk, settings, states)
    except PromptkitError as exc:  # Ray would wrap it in its own trace
        return _failed(chunk.number, exc)


def _process(chunk: Chunk, settings: TaskSettings, states: list[Any] | None
             ) -> dict[str, Any]:
    job = settings.job
    if chunk.size < 0:
        return _process_stream(chunk, settings, states)
    with open(chunk.path, "rb") as f:
        data = os.pread(f.fileno(), chunk.size, chunk.offset)
    result = process_chunk(job, data, chunk.first_lineno, states, base=chunk.base,
                           path=chunk.name or None)
    assert isinstance(result.data, bytes)
    sha256 = write_part(_part(settings, chunk.number), result.data)
    return _facts(chunk.number, result, sha256, len(result.data), settings.staging)


def _process_stream(chunk: Chunk, settings: TaskSettings,
                    states: list[Any] | None) -> dict[str, Any]:
    """A compressed file: read, decompressed, streaming, by this one task."""
    job = settings.job
    source = Source(chunk.path, job.in_format, skip_invalid=job.skip_invalid)
    source.name = chunk.name or job.name
    source.base = chunk.base
    encoder = job_encoder(job)  # (a Ray job's keys are stable ones)
    states = states if states is not None else [step.new_state() for step in job.steps]
    path = _part(settings, chunk.number)
    tmp = f"{path}.{os.getpid()}{files.TMP_SUFFIX}"
    digest = hashlib.sha256()
    size = 0
    if job.splice is not None:
        lines: Any = _spliced_stream(job, source, states, chunk.base, encoder)
    else:
        records: Any = source.records()
        for step, state in zip(job.steps, states, strict=True):
            records = step.apply(records, state)
        lines = encoder.encode_all(records)
    try:
        with open(tmp, "wb") as f:
            for line in lines:
                digest.update(line)
                size += len(line)
                f.write(line)
    except InvalidRecordError as exc:
        raise (exc.located(job.name) if exc.path is None else exc) from None
    finally:
        source.close()
    os.replace(tmp, path)
    # The source's skipped lines are its own lines; the stream's places add ``base``.
    skipped = [f"{int(head) + chunk.base}{sep}{rest}" if head.isdigit() else line
               for line in source.skipped for head, sep, rest in [line.partition(":")]]
    result = ChunkResult(b"", source.records_read, encoder.count,
                         skipped + encoder.skipped, encoder.keys.tobytes(), states,
                         encoder.tap.stats if encoder.tap is not None else None,
                         encoder.fields)
    return _facts(chunk.number, result, digest.hexdigest(), size, settings.staging)


def _spliced_stream(job: Job, source: Source, states: list[Any], base: int,
                    encoder: Encoder) -> Iterator[bytes]:
    """The output of a stream (a compressed file) by the splice writer, a batch of lines
    at a time; its account (records read and written, keys, lines skipped) goes into
    ``source`` and ``encoder``, as when its records are encoded."""
    for result in spliced_batches(job, source.line_batches(), states, base=base,
                                  path=source.name):
        source.count += result.read
        encoder.count += result.written
        encoder.keys.frombytes(result.keys)
        encoder.skipped += result.skipped
        assert isinstance(result.data, bytes)
        yield result.data


# ---------------------------------------------------------------- the driver


class PartsOutput(Written):
    """What the parts hold, together, as :func:`promptkit.provenance.describe.describe` reads a
    sink: records written, distinct prompts, the concatenation's sha256, token figures."""

    compression = None
    content_sha256 = None

    def __init__(self, path: str, fmt: Any, tokenizer: str | None, distinct: int) -> None:
        self.distinct = distinct
        self.name = path
        self.path = path
        self.format = fmt
        self.encoder = Encoder(fmt)
        self.sha256 = hashlib.sha256()
        if tokenizer is not None:
            self.encoder.tap = Tap(cached_tokenizer(tokenizer))

    def distinct_records(self) -> int:
        return self.distinct


def distinct_keys(ray: Any, folder: str) -> int:
    """How many distinct prompt keys the chunks wrote to ``folder`` (one ``.npy`` of
    int64 keys a chunk), counted by a shuffle in the cluster; the folder is removed."""
    paths = sorted(glob.glob(os.path.join(glob.escape(folder), "keys-*.npy")))
    try:
        if not paths:
            return 0
        return distinct_count(ray.data.read_numpy(paths).materialize(), "data")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(input_path: str, output_path: str, steps: list[Step], *, address: str,
        in_format: str, out_format: str, name: str, skip_invalid: bool, tokenizer: str | None,
        chunk_size: int | None = None, writer: str | None = None, keep_replies: bool = False
        ) -> tuple[PartsOutput, dict[str, Any], str, dict[str, Any]]:
    """Run ``steps`` over ``input_path`` on the cluster at ``address``, writing the parts
    into a staging folder beside ``output_path``. Returns the parts' account, the input's
    facts (``records``, ``skipped``, ``sha256``), the staging folder (the caller writes
    the manifest into it and renames it into place, or removes it) and the Ray
    settings for the manifest."""
    if any(step.op in ORDERED for step in steps):
        raise PromptkitError("--ray runs record-wise steps (nonce, pad, fit, turns); "
                             f"{next(s.op for s in steps if s.op in ORDERED)} is not one")
    step_bytes = chunk_size or chunk_bytes()
    staging = make_staging(output_path)
    try:
        job = Job(os.path.abspath(input_path), staging, in_format, out_format, steps,
                  skip_invalid, name, tokenizer, stable_keys=True, keep_replies=keep_replies)
        settings = TaskSettings(job, staging,
                                float(os.environ.get("PROMPTKIT_RAY_TEST_DELAY", "0") or 0))
        with connect(address) as ray:
            planned = plan_input(ray, input_path, step_bytes)
            chunks = planned.chunks
            # The splice writer takes what it takes without --ray: one file (compressed
            # too), or shards that are all plain.
            if writer != ENCODE and not any("compression" in shard
                                            for shard in planned.shards or []):
                job.splice = splice_plan(steps, in_format, out_format)
            facts, redone = _in_tasks(ray, steps, chunks, settings)
            distinct = distinct_keys(ray, os.path.join(staging, KEYS))
            nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
            version = ray.__version__
        out = PartsOutput(output_path, get_format(out_format), tokenizer, distinct)
        out.encoder.keep_replies = keep_replies
        if job.splice is not None:
            out.writer = SPLICE
        read, skipped, parts = 0, [], []
        for fact in facts:
            read += fact["read"]
            skipped += pickle.loads(fact["skipped"])
            out.encoder.count += fact["written"]
            stats = pickle.loads(fact["stats"])
            if stats is not None and out.encoder.tap is not None:
                out.encoder.tap.stats.merge(stats)
            fields = pickle.loads(fact["fields"])
            if fields and out.encoder.fields is not None:
                out.encoder.fields |= fields
            parts.append({"path": PART.format(fact["number"]), "records": fact["written"],
                          "bytes": fact["bytes"], "sha256": fact["sha256"]})
        hash_parts(staging, parts, out.sha256)
        ray_info = {"address": address_kind(address), "nodes": nodes, "ray_version": version,
                    "chunk_bytes": step_bytes, "chunks": len(chunks),
                    "chunks_redone": redone}
        inputs = {"records": read, "skipped": skipped, "sha256": planned.sha256,
                  "parts": parts, "planned": planned}
        return out, inputs, staging, ray_info
    except BaseException:
        files.remove_quietly(staging)
        raise


def _in_tasks(ray: Any, steps: list[Step], chunks: list[Chunk], settings: TaskSettings
              ) -> tuple[list[dict[str, Any]], int]:
    """The facts of every chunk, in order, each processed by a Ray task (the scheduler of
    :mod:`promptkit.runner.schedule`: two tasks a CPU of the cluster in flight), with the
    number of chunks done again. The chunks' states are merged in order (each step's
    ``state`` ends as that of the whole run); a chunk that continued a conversation begun
    earlier, or failed (a line that continues one may be no error), is run again by a
    task with the state before it, its part rewritten (its error, if it has one still,
    raised). A task whose worker dies is run again by Ray."""
    task = ray.remote(num_cpus=1, max_retries=-1)(process)
    shared = ray.put(settings)
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))

    def redo(chunk: Chunk, states: list[Any]) -> dict[str, Any]:
        fact: dict[str, Any] = ray.get(task.remote(vars(chunk), shared, states))
        raise_first_error([fact])
        return fact

    def cancel(refs: list[Any]) -> None:
        """Stop the tasks in flight (an error: their parts are not wanted), before the
        staging folder they write into is removed."""
        for ref in refs:
            ray.cancel(ref, force=True)
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_SECONDS)

    states = [step.new_state() for step in steps]
    facts: list[dict[str, Any]] = []
    redone = 0
    with contextlib.closing(schedule.in_order(
            chunks, lambda _, chunk: task.remote(vars(chunk), shared), window=window,
            get=ray.get, cancel=cancel)) as outcomes:
        for _, fact, again in schedule.carried(outcomes, states, redo, states_of=_states_of):
            facts.append(fact)
            redone += again
    for step, state in zip(steps, states, strict=True):
        step.state = state
    return facts, redone


def _states_of(fact: dict[str, Any]) -> list[Any] | None:
    """The steps' states a chunk's task ended with (``None``: it failed)."""
    return None if fact["error"] else list(pickle.loads(fact["states"]))


__all__ = ["KEYS", "PartsOutput", "TaskSettings", "chunk_bytes", "distinct_keys", "process",
           "raise_first_error", "run", "save_keys"]
