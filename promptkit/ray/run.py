"""``--ray``: record-wise steps over a file or many shards on a Ray cluster, written as a
folder of parts.

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
2. **Steps.** A Ray Data task per chunk reads its bytes, runs the steps (as
   :func:`promptkit.runner.workers.process_chunk` does for ``--workers``) and writes its own
   part, ``part-NNNNN.jsonl``, to a staging folder beside OUT. The driver gets only
   small facts of each chunk: records read and written, skipped lines, the part's
   sha256 and size, the distinct prompt keys, token statistics, and the steps' states
   (the conversations a chunk saw).
3. **Conversations across chunks.** Lines sharing a ``session_id`` keep the first
   line's nonce. A chunk that continued a conversation begun in an earlier chunk is
   run again, as a task, with the state of everything before it (in order: a second
   pass over those chunks only).
4. **Manifest.** The input's sha256 (for shards, that of the shards' own, as without
   ``--ray``) comes from the planning tasks: **the driver never reads the input's
   bytes**, only its first lines (the format) and, for ``pad`` of the records' own
   system prompts, the first pass that finds them. The driver streams the parts once
   for the sha256 of their concatenation (the bytes the same command writes without
   ``--ray``), writes
   ``manifest.json`` into the staging folder and renames the folder into place: the
   parts and their manifest appear together, or not at all.

A task is a plain Ray task: when a worker dies, Ray runs it again, and the part it
writes (to a temporary name, renamed) is the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from promptkit.core import leftovers
from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.formats import TABLE_FORMATS, get_format
from promptkit.io import files
from promptkit.io.files import STDIO
from promptkit.io.hashing import LineCount, hash_file
from promptkit.io.jsonl import Source
from promptkit.io.sink import Encoder, Written
from promptkit.ops.base import Step
from promptkit.ops.registry import ORDERED
from promptkit.provenance import manifest
from promptkit.ray import address_kind, connect
from promptkit.ray.inputs import Chunk, Planned, chunk_of, paths_of, plan_input
from promptkit.runner.splice import ENCODE, writer_of
from promptkit.runner.splice import WRITER as SPLICE
from promptkit.runner.splice import plan as splice_plan
from promptkit.runner.workers import Job, job_encoder, process_chunk, spliced_batches

#: The manifest of a part folder, inside it (so the folder is one unit: renamed into
#: place whole, copied or uploaded whole).
MANIFEST = "manifest.json"
PART = "part-{:05d}.jsonl"
DEFAULT_CHUNK_BYTES = 64 << 20


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


def _write_part(path: str, data: bytes) -> str:
    """Write a part under a temporary name and rename it (a task run again by Ray
    writes the same bytes over it); its sha256."""
    tmp = f"{path}.{os.getpid()}{files.TMP_SUFFIX}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


#: A subfolder of the staging folder for the chunks' prompt keys (removed before the
#: folder becomes OUT): counted distinct by a shuffle, never gathered on the driver.
KEYS = ".keys"


def save_keys(staging: str, number: int, keys: bytes) -> None:
    """Keep chunk ``number``'s prompt keys (int64s) for :func:`distinct_keys`."""
    import numpy as np

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
    """Run the steps over one chunk and write its part (a Ray Data task, or a Ray task
    redoing a chunk with ``states``, the steps' states of everything before it)."""
    from promptkit.core import progress

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
    sha256 = _write_part(_part(settings, chunk.number), result.data)
    return _facts(chunk.number, result, sha256, len(result.data), settings.staging)


def _process_stream(chunk: Chunk, settings: TaskSettings,
                    states: list[Any] | None) -> dict[str, Any]:
    """A compressed file: read, decompressed, streaming, by this one task."""
    from promptkit.runner.workers import ChunkResult

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
            from promptkit.core.tokenizers import cached_tokenizer
            from promptkit.ops.stats import Tap

            self.encoder.tap = Tap(cached_tokenizer(tokenizer))

    def distinct_records(self) -> int:
        return self.distinct


def distinct_keys(ray: Any, folder: str) -> int:
    """How many distinct prompt keys the chunks wrote to ``folder`` (one ``.npy`` of
    int64 keys a chunk), counted by a shuffle in the cluster; the folder is removed."""
    import glob

    from promptkit.ray.aggregate import distinct_count

    paths = sorted(glob.glob(os.path.join(glob.escape(folder), "keys-*.npy")))
    try:
        if not paths:
            return 0
        return distinct_count(ray.data.read_numpy(paths).materialize(), "data")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_output(output_path: str, input_path: str) -> None:
    """OUT of a ``--ray`` run: a folder of parts; refused before any work when it is
    stdin/stdout, the input, a file, or a folder promptkit did not make."""
    if output_path == STDIO:
        raise PromptkitError("--ray writes a folder of parts: name OUT (a folder), not -")
    files.refuse_clashes([(output_path, "OUT")], [input_path])
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise PromptkitError(f"{output_path}: folder {folder} does not exist")
    if os.path.lexists(output_path):
        if not os.path.isdir(output_path):
            raise PromptkitError(f"{output_path}: exists and is not a folder (--ray writes a "
                                 "folder of parts)")
        if os.listdir(output_path) and not os.path.isfile(
                os.path.join(output_path, MANIFEST)):
            raise PromptkitError(f"{output_path}: a folder that is not empty and holds no "
                                 f"{MANIFEST}: not replaced")


def make_staging(output_path: str) -> str:
    """A temporary folder beside OUT for the parts, claimed by this process (a later run
    sweeps it if this one dies)."""
    try:
        staging = tempfile.mkdtemp(prefix=leftovers.temp_prefix(output_path),
                                   suffix=files.TMP_SUFFIX,
                                   dir=os.path.dirname(os.path.abspath(output_path)))
    except OSError as exc:
        raise files.os_error(exc, output_path) from None
    leftovers.claim(staging)
    return staging


def check_input(input_path: str, dataset: dict[str, Any] | None) -> bool:
    """The inputs ``--ray`` reads: a JSONL file (plain or compressed), or a folder or glob
    of JSONL shards (see :func:`promptkit.ray.inputs.paths_of`); whether it is many."""
    if dataset:
        option = "--" + next(iter(dataset)).replace("_", "-")
        raise PromptkitError(f"--ray reads JSONL files by their line format; {option} is not "
                             "taken with it")
    return paths_of(input_path)[1]


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
            facts: list[dict[str, Any]] = []
            if chunks:
                rows = [vars(chunk) for chunk in chunks]
                ds = ray.data.from_items(rows, override_num_blocks=len(rows))
                ds = ds.map(process, fn_kwargs={"settings": settings}, num_cpus=1)
                facts = sorted(ds.take_all(), key=lambda r: r["number"])
            redone = _carry_conversations(ray, steps, chunks, facts, settings)
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
        _hash_parts(staging, parts, out.sha256)
        ray_info = {"address": address_kind(address), "nodes": nodes, "ray_version": version,
                    "chunk_bytes": step_bytes, "chunks": len(chunks),
                    "chunks_redone": redone}
        inputs = {"records": read, "skipped": skipped, "sha256": planned.sha256,
                  "parts": parts, "planned": planned}
        return out, inputs, staging, ray_info
    except BaseException:
        files.remove_quietly(staging)
        raise


def _carry_conversations(ray: Any, steps: list[Step], chunks: list[Chunk],
                         facts: list[dict[str, Any]], settings: TaskSettings) -> int:
    """Merge the chunks' states in order (each step's ``state`` ends as that of the whole
    run); a chunk that continued a conversation begun earlier, or failed (a line that
    continues one may be no error), is run again by a task with the state before it, its
    part rewritten (its error, if it has one still, raised). Returns how many were."""
    states = [step.new_state() for step in steps]
    again = ray.remote(max_retries=-1)(process)
    redone = 0
    for i, fact in enumerate(facts):
        later = None if fact["error"] else pickle.loads(fact["states"])
        if later is None or any(s.overlaps(r) for s, r in zip(states, later, strict=True)):
            fact = facts[i] = ray.get(again.remote(vars(chunks[i]), settings, states))
            raise_first_error([fact])
            states = pickle.loads(fact["states"])
            redone += 1
        else:
            for state, other in zip(states, later, strict=True):
                state.update(other)
    for step, state in zip(steps, states, strict=True):
        step.state = state
    return redone


def _hash_parts(folder: str, parts: list[dict[str, Any]], digest: Any) -> None:
    """Stream the parts in order into ``digest`` (their concatenation), checking each
    against the sha256 its task reported."""
    for part in parts:
        own = hashlib.sha256()
        hash_file(os.path.join(folder, part["path"]), own, digest)
        if own.hexdigest() != part["sha256"]:
            raise PromptkitError(f"{part['path']}: its bytes changed after its task wrote them")


def put_folder(staging: str, output_path: str, result: dict[str, Any]) -> None:
    """Write the manifest into the staging folder and rename the folder to OUT (an
    earlier part folder there is replaced; nothing is left on failure)."""
    for name in os.listdir(staging):  # a part a worker killed mid-write left (run again)
        if name.endswith(files.TMP_SUFFIX):
            files.remove_quietly(os.path.join(staging, name))
    manifest.write(os.path.join(staging, MANIFEST), result)
    files.replace_folder(staging, output_path)


def linked_refused(fmt: Any, input_path: str) -> None:
    """``--ray`` reads a file in chunks, each on its own: not a format whose lines depend
    on the lines before them."""
    if fmt.linked:
        raise PromptkitError(f"{input_path}: --ray reads a file in chunks, each on its own; a "
                             f"{fmt.name} line's session is found from the lines before it: "
                             "run it without --ray")


def table_refused(out_format: str) -> None:
    if out_format in TABLE_FORMATS:
        raise PromptkitError(f"--ray writes JSONL parts; --to {out_format} is not one")


def run_folder(input_path: str, output_path: str, steps: list[Step], *, address: str,
               from_format: str | None = None, to_format: str | None = None,
               skip_invalid: bool = False, argv: list[str] | None = None,
               dataset: dict[str, Any] | None = None, chunk_size: int | None = None,
               accept: Any = None, writer: str | None = None,
               keep_replies: bool = False) -> dict[str, Any]:
    """:func:`promptkit.runner.pipeline.run` on a Ray cluster: OUT is a folder of parts whose
    concatenation is the bytes ``run`` writes, with ``OUT/manifest.json``; the manifest
    is returned. ``accept(manifest)`` may refuse the result before it is put in place;
    ``writer``, ``keep_replies``: as :func:`promptkit.runner.pipeline.run` takes them."""
    from promptkit.ops.registry import make
    from promptkit.provenance.describe import describe
    from promptkit.runner.pipeline import counting_tokenizer, where_of

    many = check_input(input_path, dataset)
    check_output(output_path, input_path)
    # pad's first pass (the records' own system prompts) streams the input here.
    where = where_of(input_path, output_path, from_format)
    steps = [step if step.made else make(step.op, step.params, where) for step in steps]
    for step in steps:
        step.skip_invalid = skip_invalid
        if step.side_files:
            raise PromptkitError(f"--ray writes a folder of parts; {step.op} writes "
                                 f"{next(iter(step.side_files))} beside OUT: run it without "
                                 "--ray")
    source: Any
    if many:  # the first shard with records gives the format (its first lines read here)
        from promptkit.io.shards import ShardedSource

        source = ShardedSource(input_path, from_format, skip_invalid=skip_invalid)
    else:
        source = Source(input_path, from_format, skip_invalid=skip_invalid)
    try:
        in_format = source.format
        made_for = [step.output_format for step in steps if step.output_format]
        out_name = to_format or (made_for[-1] if made_for else None) or source.default_output
        shape = {} if many else source.shape()
        name = source.name
    finally:
        source.close()
    table_refused(out_name)
    for fmt in (in_format, get_format(out_name)):
        linked_refused(fmt, input_path)
    if shape.get("layout"):
        raise PromptkitError(f"{input_path}: a JSON array: --ray reads JSON lines")
    tokenizer = counting_tokenizer(steps)
    with files.Lock(output_path):
        out, facts, staging, ray_info = run(
            input_path, output_path, steps, address=address, in_format=in_format.name,
            out_format=out_name, name=name, skip_invalid=skip_invalid, tokenizer=tokenizer,
            chunk_size=chunk_size, writer=writer, keep_replies=keep_replies)
        try:
            for step in steps:
                if step.on_count is not None:
                    step.on_count(facts["records"])
            planned: Planned = facts["planned"]
            if planned.shards is not None:
                shape = {"shards": planned.shards}
            inputs = [{"path": name, "format": in_format.name, "records": facts["records"],
                       "sha256": facts["sha256"], **shape}]
            result = describe(inputs, facts["skipped"], out, steps, argv,  # type: ignore[arg-type]
                              name_lines=lambda lines: [planned.locate(x) for x in lines])
            result["output"]["parts"] = facts["parts"]
            result["ray"] = ray_info
            result["aiperf"]["note"] += (
                f" {output_path} is a folder of parts: AIPerf loads one file, their "
                f"concatenation (cat {output_path}/part-*.jsonl > FILE).")
            if accept is not None:
                accept(result)
            put_folder(staging, output_path, result)
        except BaseException:
            files.remove_quietly(staging)
            raise
    return result


def verify_folder(path: str, manifest_path: str | None = None) -> list[str]:
    """The differences between a part folder and its manifest (``OUT/manifest.json``):
    each part's sha256 and records, no part missing or extra, and the sha256 and records
    of their concatenation. Only the parts the manifest lists are read, and none that is
    a link out of the folder or not a file."""
    recorded = manifest.read(manifest_path or os.path.join(path, MANIFEST))
    parts = recorded["output"].get("parts")
    if not isinstance(parts, list):
        return [f"{path} is a folder, and its manifest describes one file, not parts"]
    problems = []
    found = sorted(name for name in os.listdir(path)
                   if name.startswith("part-") and name.endswith(".jsonl"))
    extra = sorted(set(found) - {part["path"] for part in parts})
    if extra:
        problems.append(f"{', '.join(extra)} not in the manifest")
    whole = hashlib.sha256()
    records = 0
    folder = os.path.realpath(path)
    for part in parts:
        name = part["path"]  # a file name (manifest.read checked it)
        file = os.path.join(path, name)
        if not os.path.exists(file):
            problems.append(f"{name} is a link to nothing" if os.path.lexists(file)
                            else f"{name} is missing")
            continue
        real = os.path.realpath(file)
        if os.path.commonpath([real, folder]) != folder:
            problems.append(f"{name} is a link out of the folder: not read")
            continue
        if not os.path.isfile(real):
            problems.append(f"{name} is not a file: not read")
            continue
        own, counted = hashlib.sha256(), LineCount()
        hash_file(file, own, whole, counted)
        lines = counted.lines
        records += lines
        if own.hexdigest() != part["sha256"]:
            problems.append(f"{name}: sha256 is {own.hexdigest()}, manifest says "
                            f"{part['sha256']}")
        if lines != part["records"]:
            problems.append(f"{name}: {lines} records, manifest says {part['records']}")
    if not problems and whole.hexdigest() != recorded["output"]["sha256"]:
        problems.append(f"the parts together: sha256 is {whole.hexdigest()}, manifest says "
                        f"{recorded['output']['sha256']}")
    if not problems and records != recorded["output"]["records"]:
        problems.append(f"the parts together: {records} records, manifest says "
                        f"{recorded['output']['records']}")
    return problems


def rebuild_parts(recorded: dict[str, Any], input_path: str, output_path: str,
                  steps: list[Step], *, from_format: str | None, skip_invalid: bool,
                  argv: list[str] | None, workers: int | None, accept: Any,
                  ray_address: str | None) -> dict[str, Any]:
    """Re-make a folder of parts a manifest describes: with ``ray_address`` on that
    cluster, in chunks of the recorded size; else here (:func:`promptkit.runner.pipeline.run`,
    one file) cut where the recorded parts end. ``accept`` sees the new manifest first."""
    parts = recorded["output"]["parts"]
    to_format = recorded["output"]["format"]
    keep_replies = manifest.kept_replies(recorded)
    if ray_address is not None:
        from promptkit.ray import check_address, require

        check_address(ray_address)
        require()
        chunk_size = recorded.get("ray", {}).get("chunk_bytes")
        return run_folder(input_path, output_path, steps, address=ray_address,
                          from_format=from_format, to_format=to_format,
                          skip_invalid=skip_invalid, argv=argv,
                          chunk_size=chunk_size if isinstance(chunk_size, int) else None,
                          accept=accept, writer=writer_of(recorded), keep_replies=keep_replies)
    from promptkit.runner.pipeline import run as run_here

    check_output(output_path, input_path)
    with files.Lock(output_path):
        staging = make_staging(output_path)
        try:
            whole = os.path.join(staging, "whole.jsonl")
            result = run_here(input_path, whole, steps, from_format=from_format,
                              to_format=to_format, skip_invalid=skip_invalid, argv=argv,
                              workers=workers, accept=accept, writer=writer_of(recorded),
                              keep_replies=keep_replies)
            made = []
            with open(whole, "rb") as f:
                for part in parts:  # (manifest.read checked each one's name and bytes)
                    data = f.read(part["bytes"])
                    sha256 = _write_part(os.path.join(staging, part["path"]), data)
                    made.append({"path": part["path"],
                                 "records": data.count(b"\n"), "bytes": len(data),
                                 "sha256": sha256})
                if f.read(1):
                    raise PromptkitError("the rebuilt output is longer than the recorded parts")
            os.unlink(whole)
            result["output"]["path"] = output_path
            result["output"]["parts"] = made
            result["aiperf"] = recorded.get("aiperf", result["aiperf"])
            result["rebuilt"] = "on one machine, cut where the recorded parts end"
            put_folder(staging, output_path, result)
        except BaseException:
            files.remove_quietly(staging)
            raise
    return result


__all__ = ["MANIFEST", "Chunk", "chunk_bytes", "chunk_of", "process", "rebuild_parts", "run",
           "run_folder", "verify_folder"]
