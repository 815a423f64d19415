"""What each command does with ``--ray``, callable from Python: the record-wise steps
(:func:`run_folder`: ``nonce``, ``pad``, ``fit``, ``turns``, run by
:mod:`promptkit.ray.run`), ``hash-trace`` (:func:`hash_trace_folder`), ``check``
(:func:`check_on_ray`) and ``stats`` (:func:`stats_on_ray`); and :func:`on_cluster`,
what ``rebuild --ray`` runs a folder of parts with.

For ``hash-trace``, ``check`` and ``stats``, chunks of records become rows in Ray tasks
(:mod:`promptkit.ray.aggregate`' row builders), the global parts run as distributed Ray
Data operations, and ``hash-trace``'s parts are written by tasks. The driver holds small
facts a chunk (records read, skipped lines, a part's sha256), never every record or
block. Outputs are folders of parts (:mod:`promptkit.provenance.parts`).

This module imports numpy and pyarrow (Ray Data's own dependencies); Ray itself is
imported when a command connects (:func:`promptkit.ray.connect`)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from promptkit.core.errors import (
    CheckError,
    InvalidRecordError,
    PromptkitError,
    Skipping,
    skipped_section,
)
from promptkit.core.records import Record
from promptkit.core.tokenizers import cached_tokenizer, load_tokenizer
from promptkit.core.words import counted, plural
from promptkit.formats import TABLE_FORMATS, get_format
from promptkit.io import files
from promptkit.io.jsonl import Source
from promptkit.io.keys import stable_prompt_key
from promptkit.io.shards import ShardedSource
from promptkit.io.sink import Encoder, joined
from promptkit.ops.base import Step
from promptkit.ops.check import CheckOptions
from promptkit.ops.hashtrace import DIGEST, hashed_records
from promptkit.ops.registry import make
from promptkit.ops.stats import Tap
from promptkit.provenance.describe import describe, line_of
from promptkit.provenance.parts import (
    PART,
    check_output,
    hash_parts,
    make_staging,
    put_folder,
    write_part,
)
from promptkit.ray import address_kind, check_address, connect, require
from promptkit.ray.aggregate import (
    NeedsSequence,
    check_rows,
    check_setup,
    conform,
    merge_stats,
    number_blocks,
    sequence_reason,
    stats_rows,
    unbounded_check,
)
from promptkit.ray.inputs import Planned, chunk_of, paths_of, plan_input
from promptkit.ray.run import KEYS, PartsOutput, chunk_bytes, distinct_keys, run, save_keys
from promptkit.runner.pipeline import counting_tokenizer, where_of
from promptkit.runner.workers import chunk_records


def _open(input_path: str, from_format: str | None, skip_invalid: bool) -> tuple[Any, Any]:
    """The input's format and its first record (read here: a few lines)."""
    _, many = paths_of(input_path)
    if many:
        source: Any = ShardedSource(input_path, from_format, skip_invalid=skip_invalid)
    else:
        source = Source(input_path, from_format, skip_invalid=skip_invalid)
    try:
        if source.layout != "lines":
            raise PromptkitError(f"{input_path}: a JSON array: --ray reads JSON lines")
        first = next(iter(source.records()), None)
        return source.format, first
    finally:
        source.close()


def _records(row: dict[str, Any], fmt: str, skip_invalid: bool
             ) -> tuple[Any, Any, list[str], Any]:
    """A chunk's records, a function giving how many were read, the skipped lines (filled
    as the records are taken, ``PLACE: problem``) and a closer."""
    chunk = chunk_of(row)
    name = row["name"]
    if chunk.size < 0:
        source = Source(chunk.path, fmt, skip_invalid=skip_invalid)
        source.name = name
        source.base = chunk.base
        skipped: list[str] = []

        def taken() -> Any:
            yield from source.records()
            skipped.extend(f"{int(h) + chunk.base}:{rest}" if h.isdigit() else line
                           for line in source.skipped for h, _, rest in [line.partition(":")])

        return taken(), lambda: source.records_read, skipped, source.close
    with open(chunk.path, "rb") as f:
        data = os.pread(f.fileno(), chunk.size, chunk.offset)
    records, read, skipped = chunk_records(data, chunk.first_lineno, fmt, name, skip_invalid,
                                           chunk.base)
    return records, lambda: read.count, skipped, lambda: None


def _located(exc: InvalidRecordError, row: dict[str, Any]) -> InvalidRecordError:
    if exc.path is not None:
        return exc
    lineno = exc.lineno - int(row.get("base", 0)) if exc.lineno is not None else None
    return InvalidRecordError(exc.problem, row["name"], lineno)


def _rows(planned: Planned, input_path: str) -> list[dict[str, Any]]:
    names = {os.path.abspath(s["path"]): s["path"] for s in planned.shards or []}
    return [{**vars(chunk), "name": names.get(chunk.path, input_path)}
            for chunk in planned.chunks]


# ---------------------------------------------------------------- hash-trace


def _hash_chunk(row: dict[str, Any], fmt: str, skip_invalid: bool, params: dict[str, Any]
                ) -> dict[str, Any]:
    """A chunk's hash-trace rows (a Ray task): each record's block digests and its
    hash-id record, pickled together, with the chunk's records read and skipped."""
    records, read, skipped, close = _records(row, fmt, skip_invalid)
    skipping = Skipping(skip_invalid, "hash_trace")
    out = []
    try:
        for record, digests in hashed_records(
                records, tokenizer=params["tokenizer"], block_size=params["block_size"],
                rate=params.get("rate"), threads=1, skipping=skipping):
            out.append((record.index, [digests[i:i + DIGEST]
                                       for i in range(0, len(digests), DIGEST)],
                        pickle.dumps(record)))
    except InvalidRecordError as exc:
        raise _located(exc, row) from None
    finally:
        close()
    return {"number": row["number"], "read": read(),
            "skipped": pickle.dumps(skipped + skipping.skipped), "rows": pickle.dumps(out)}


def _unpack_hash(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"number": row["number"], "index": index, "blocks": blocks, "record": record}
            for index, blocks, record in pickle.loads(row["rows"])]


def _write_hash_part(t: Any, staging: str, tokenizer: str) -> Any:
    """One chunk's part (a Ray Data task): its records with their ids, in order, and
    their token figures (a Tap, as the run without ``--ray`` counts what it writes)."""
    number = int(t.column("number")[0].as_py())
    is_record = np.asarray(t.column("record").is_valid())
    ids = dict(zip(t.column("index").filter(pa.array(~is_record)).to_pylist(),
                   t.column("hash_ids").filter(pa.array(~is_record)).to_pylist(), strict=True))
    mine = t.filter(pa.array(is_record)).sort_by("index")
    encoder = Encoder(get_format("mooncake_trace"), key=stable_prompt_key)
    encoder.tap = Tap(cached_tokenizer(tokenizer), threads=1)

    def records() -> Any:
        for index, blob in zip(mine.column("index").to_pylist(),
                               mine.column("record").to_pylist(), strict=True):
            record: Record = pickle.loads(blob)
            record.hash_ids = ids[index]
            yield record

    data = joined(encoder.encode_all(records()))
    sha256 = write_part(os.path.join(staging, PART.format(number)), data)
    save_keys(staging, number, encoder.keys.tobytes())
    return pa.table({"number": [number], "written": [encoder.count], "bytes": [len(data)],
                     "sha256": [sha256], "stats": [pickle.dumps(encoder.tap.finish())]})


def hash_trace_folder(input_path: str, output_path: str, step: Step, *, address: str,
                      from_format: str | None, skip_invalid: bool, argv: list[str] | None,
                      chunk_size: int | None = None) -> dict[str, Any]:
    """``hash-trace`` on a Ray cluster: OUT a folder of parts (their concatenation the bytes
    of the run without ``--ray``) and ``OUT/manifest.json``; the manifest is returned."""
    check_output(output_path, input_path)
    step = step if step.made else make(step.op, step.params)
    step.skip_invalid = skip_invalid
    fmt, _ = _open(input_path, from_format, skip_invalid)
    step_bytes = chunk_size or chunk_bytes()
    with files.Lock(output_path):
        staging = make_staging(output_path)
        try:
            with connect(address) as ray:
                planned = plan_input(ray, input_path, step_bytes)
                rows = _rows(planned, input_path)
                firsts = np.array([c.first_index for c in planned.chunks], dtype=np.int64)
                facts_ds = (ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
                            .map(_hash_chunk, fn_kwargs={"fmt": fmt.name,
                                                         "skip_invalid": skip_invalid,
                                                         "params": step.params}, num_cpus=1)
                            .materialize())
                hashed = facts_ds.flat_map(_unpack_hash).materialize()
                ids = number_blocks(hashed)
                fields = [("number", pa.int64()), ("index", pa.int64()),
                          ("record", pa.binary()), ("hash_ids", pa.list_(pa.int64()))]

                def numbered(t: Any) -> Any:
                    index = np.asarray(t.column("index").to_numpy(), dtype=np.int64)
                    chunk = np.searchsorted(firsts, index, side="right") - 1
                    return conform(t.append_column("number", pa.array(chunk)), fields)

                both = (hashed.select_columns(["number", "index", "record"])
                        .map_batches(lambda t: conform(t, fields), batch_format="pyarrow")
                        .union(ids.map_batches(numbered, batch_format="pyarrow")))
                written = {row["number"]: row for row in both.groupby("number").map_groups(
                    _write_hash_part, batch_format="pyarrow",
                    fn_kwargs={"staging": staging,
                               "tokenizer": step.params["tokenizer"]}).take_all()}
                facts = sorted(facts_ds.select_columns(["number", "read", "skipped"])
                               .take_all(), key=lambda r: r["number"])
                ray_section = {**_ray_section(ray, address, step_bytes, planned),
                               "chunks_redone": 0}
                distinct = distinct_keys(ray, os.path.join(staging, KEYS))
            out = PartsOutput(output_path, get_format("mooncake_trace"),
                              step.params["tokenizer"], distinct)
            read, skipped, parts = 0, [], []
            for fact in facts:
                number = fact["number"]
                read += fact["read"]
                skipped += pickle.loads(fact["skipped"])
                part = written.get(number)
                if part is None:  # a chunk with no records: an empty part
                    part = {"written": 0, "bytes": 0,
                            "sha256": write_part(os.path.join(staging, PART.format(number)),
                                                  b"")}
                if part.get("stats") and out.encoder.tap is not None:
                    out.encoder.tap.stats.merge(pickle.loads(part["stats"]))
                out.encoder.count += part["written"]
                parts.append({"path": PART.format(number), "records": part["written"],
                              "bytes": part["bytes"], "sha256": part["sha256"]})
            hash_parts(staging, parts, out.sha256)
            inputs = [{"path": input_path, "format": fmt.name, "records": read,
                       "sha256": planned.sha256, **_shape(input_path, planned)}]
            result = describe(inputs, skipped, out, [step], argv,  # type: ignore[arg-type]
                              name_lines=lambda lines: [planned.locate(x) for x in lines])
            _as_folder(result, output_path, parts, ray_section)
            put_folder(staging, output_path, result)
        except BaseException:
            files.remove_quietly(staging)
            raise
    return result


# ---------------------------------------------------------------- check, stats


def _check_chunk(row: dict[str, Any], fmt: str, skip_invalid: bool, first: bytes,
                 options: Any, tokenizer: str | None) -> dict[str, Any]:
    """A chunk's check rows (a Ray task): the stream's first record makes the setup
    (the tokenizer loaded here), :func:`~promptkit.ray.aggregate.check_rows` the rows."""
    records, read, skipped, close = _records(row, fmt, skip_invalid)
    setup = check_setup(pickle.loads(first), options,
                        cached_tokenizer(tokenizer) if tokenizer else None, tokenizer,
                        skip_invalid)
    try:
        rows = list(check_rows(records, setup))
    except InvalidRecordError as exc:
        raise _located(exc, row) from None
    finally:
        close()
    return {"number": row["number"], "read": read(),
            "skipped": pickle.dumps(skipped + setup.skipping.skipped),
            "rows": pickle.dumps(rows)}


def _unpack(row: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pickle.loads(row["rows"]))


def _facts(ds: Any) -> tuple[int, list[str]]:
    """Records read and lines skipped, over the chunks in order."""
    read, skipped = 0, []
    for fact in sorted(ds.select_columns(["number", "read", "skipped"]).take_all(),
                       key=lambda r: r["number"]):
        read += fact["read"]
        skipped += pickle.loads(fact["skipped"])
    return read, skipped


def _ray_section(ray: Any, address: str, step_bytes: int, planned: Planned) -> dict[str, Any]:
    """What the manifest or report records of the cluster and the chunks."""
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return {"address": address_kind(address), "nodes": nodes, "ray_version": ray.__version__,
            "chunk_bytes": step_bytes, "chunks": len(planned.chunks)}


def _as_folder(result: dict[str, Any], output_path: str, parts: list[dict[str, Any]],
              ray_section: dict[str, Any]) -> None:
    """A run's manifest made that of a folder of parts: its parts, the cluster, and how
    AIPerf loads them."""
    result["output"]["parts"] = parts
    result["ray"] = ray_section
    result["aiperf"]["note"] += (
        f" {output_path} is a folder of parts: AIPerf loads one file, their "
        f"concatenation (cat {output_path}/part-*.jsonl > FILE).")


def check_on_ray(input_path: str, *, address: str, from_format: str | None,
                 tokenizer: str | None, skip_invalid: bool, aiperf_args: dict[str, Any],
                 chunk_size: int | None = None, **options: Any) -> dict[str, Any]:
    """``check``'s report for an unbounded cache, computed on a Ray cluster: tasks make
    each chunk's rows, :func:`~promptkit.ray.aggregate.unbounded_check` the figures. Raises
    :class:`~promptkit.ray.aggregate.NeedsSequence` when the check needs the requests in
    order (the caller runs it on one node).

    ``aiperf_args``: what AIPerf adds to every request, as the caller found it (the
    ``check`` command's ``aiperf_arguments``: ``applied``, ``source``, ``system_prompt``
    and ``hash_block_size`` from ``--system-prompt-file`` or the file's manifest)."""
    applied = dict(aiperf_args)
    options["system_prompt"] = applied.pop("system_prompt")
    hash_block_size = applied.pop("hash_block_size", None)
    if hash_block_size is not None and options.get("hash_block_size") is None:
        options["hash_block_size"] = hash_block_size
    fmt, first = _open(input_path, from_format, skip_invalid)
    options["sends_extra"] = fmt.name != "openai"
    options["aiperf_type"] = fmt.aiperf_type
    if options.get("hash_block_size") is None:
        options["hash_block_size"] = fmt.hash_block_size
    check_options = CheckOptions(**options)
    if fmt.linked:
        raise NeedsSequence(f"a {fmt.name} line's session is found from the lines before it")
    reason = sequence_reason(check_options)
    if reason is not None:
        raise NeedsSequence(reason)
    if first is None:
        raise PromptkitError(f"{input_path}: empty file: no records")
    try:  # the driver's setup: the report's header, and the tokenizer checked here
        setup = check_setup(first, check_options,
                            cached_tokenizer(tokenizer) if tokenizer else None, tokenizer)
    except CheckError as exc:
        raise PromptkitError(f"{input_path}: {exc}") from None
    except InvalidRecordError as exc:
        raise exc.located(input_path) from None
    if setup.fixed_schedule:
        raise NeedsSequence("AIPerf's fixed schedule sends the conversations in the order "
                            "of their timestamps")
    step_bytes = chunk_size or chunk_bytes()
    with connect(address) as ray:
        planned = plan_input(ray, input_path, step_bytes)
        rows = _rows(planned, input_path)
        facts_ds = (ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
                    .map(_check_chunk, fn_kwargs={
                        "fmt": fmt.name, "skip_invalid": skip_invalid,
                        "first": pickle.dumps(first), "options": check_options,
                        "tokenizer": tokenizer}, num_cpus=1)
                    .materialize())
        read, skipped = _facts(facts_ds)
        summary = unbounded_check(facts_ds.flat_map(_unpack), setup)
        ray_section = _ray_section(ray, address, step_bytes, planned)
    skipped.sort(key=line_of)
    return {"input": {"path": input_path, "format": fmt.name, "sha256": planned.sha256},
            "tokenizer": tokenizer,
            "skipped": skipped_section([planned.locate(x) for x in skipped]),
            **summary, "aiperf_args": applied, "wrote": [], "ray": ray_section}


def _stats_chunk(row: dict[str, Any], fmt: str, skip_invalid: bool, tokenizer: str | None,
                 chat_template: str) -> dict[str, Any]:
    """A chunk's partial statistics (a Ray task), with its records read and skipped."""
    records, read, skipped, close = _records(row, fmt, skip_invalid)
    try:
        out = stats_rows(records, tokenizer=tokenizer, chat_template=chat_template,
                         first_index=row["first_index"])
    except InvalidRecordError as exc:
        raise _located(exc, row) from None
    finally:
        close()
    return {**out, "number": row["number"], "read": read(), "skipped": pickle.dumps(skipped)}


def stats_on_ray(input_path: str, *, address: str, from_format: str | None,
                 tokenizer: str | None, skip_invalid: bool, chat_template: str = "none",
                 chunk_size: int | None = None) -> dict[str, Any]:
    """``stats``' figures computed on a Ray cluster: tasks count each chunk
    (:func:`~promptkit.ray.aggregate.stats_rows`), :func:`~promptkit.ray.aggregate.merge_stats`
    merges them; the report of the ``stats`` command without ``--ray``. The caller checks
    ``chat_template`` against ``tokenizer`` first (as ``stats`` does either way)."""
    if tokenizer:
        load_tokenizer(tokenizer)  # a bad tokenizer named here, before any task
    fmt, _ = _open(input_path, from_format, skip_invalid)
    linked_refused(fmt, input_path)
    step_bytes = chunk_size or chunk_bytes()
    with connect(address) as ray:
        planned = plan_input(ray, input_path, step_bytes)
        rows = _rows(planned, input_path)
        ds = (ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
              .map(_stats_chunk, fn_kwargs={"fmt": fmt.name, "skip_invalid": skip_invalid,
                                            "tokenizer": tokenizer,
                                            "chat_template": chat_template}, num_cpus=1)
              .materialize())
        _, skipped = _facts(ds)
        summary = merge_stats(ds)
        ray_section = _ray_section(ray, address, step_bytes, planned)
    warnings = []
    records = summary["records"]
    no_text = summary.get("no_prompt_text", {}).get("records", 0)
    has_tokens = "prompt_tokens" in summary
    if no_text:
        shown = summary["no_prompt_text"]["lines"]
        lines = ", ".join(planned.locate(str(n)) for n in shown)
        more = ", ..." if no_text > len(shown) else ""
        found = (counted(no_text, "record") if no_text == records
                 else f"{no_text} of {counted(records, 'record')}")
        message = (f"no prompt text found in {found} ({plural(no_text, 'line')} "
                   f"{lines}{more}), read as {fmt.name}: their messages hold no text (empty, "
                   f"media only, or the text under a key {fmt.name} does not read: give "
                   "--from FORMAT or --text-column KEY)")
        if tokenizer is not None and not has_tokens:
            raise PromptkitError(f"{input_path}: {message}")
        warnings.append(message + ("; left out of the token figures" if has_tokens else ""))
    if tokenizer is not None and summary.get("prompt_tokens_stated", 0) == records:
        warnings.append(f"--tokenizer {tokenizer} was not used: the trace states each "
                        "record's prompt tokens (input_length)")
    return {"input": {"path": input_path, "format": fmt.name, "sha256": planned.sha256},
            "tokenizer": tokenizer,
            **({"chat_template": chat_template} if tokenizer is not None else {}),
            "skipped": skipped_section([planned.locate(x) for x in skipped]),
            **summary, "warnings": warnings, "wrote": [], "ray": ray_section}


def _shape(input_path: str, planned: Planned) -> dict[str, Any]:
    if planned.shards is not None:
        return {"shards": planned.shards}
    source = Source(input_path)
    try:
        return dict(source.shape())
    finally:
        source.close()


# ---------------------------------------------------------------- record-wise steps


def check_input(input_path: str, dataset: dict[str, Any] | None) -> bool:
    """The inputs ``--ray`` reads: a JSONL file (plain or compressed), or a folder or glob
    of JSONL shards (see :func:`promptkit.ray.inputs.paths_of`); whether it is many."""
    if dataset:
        option = "--" + next(iter(dataset)).replace("_", "-")
        raise PromptkitError(f"--ray reads JSONL files by their line format; {option} is not "
                             "taken with it")
    return paths_of(input_path)[1]


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
    """:func:`promptkit.runner.pipeline.run` on a Ray cluster (by :func:`promptkit.ray.run.run`):
    OUT is a folder of parts whose concatenation is the bytes ``run`` writes, with
    ``OUT/manifest.json``; the manifest is returned. ``accept(manifest)`` may refuse the
    result before it is put in place; ``writer``, ``keep_replies``: as
    :func:`promptkit.runner.pipeline.run` takes them."""
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
            _as_folder(result, output_path, facts["parts"], ray_info)
            if accept is not None:
                accept(result)
            put_folder(staging, output_path, result)
        except BaseException:
            files.remove_quietly(staging)
            raise
    return result


def on_cluster(address: str) -> Callable[..., dict[str, Any]]:
    """:func:`run_folder` on the cluster at ``address``, as
    :func:`promptkit.provenance.rebuild.rebuild` takes it (``on_cluster``) to re-make a
    folder of parts there: the address is checked, and Ray found, when it runs."""

    def run_there(*args: Any, **kwargs: Any) -> dict[str, Any]:
        check_address(address)
        require()
        return run_folder(*args, address=address, **kwargs)

    return run_there


__all__ = ["check_on_ray", "hash_trace_folder", "on_cluster", "run_folder", "stats_on_ray"]
