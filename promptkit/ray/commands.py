"""``hash-trace``, ``check`` and ``stats`` with ``--ray``: chunks of records become rows in
Ray tasks (:mod:`promptkit.ray.aggregate`' row builders), the global parts run as
distributed Ray Data operations, and ``hash-trace``'s parts are written by tasks. The
driver holds small facts a chunk (records read, skipped lines, a part's sha256), never
every record or block."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from promptkit.core.errors import InvalidRecordError, PromptkitError, Skipping, skipped_section
from promptkit.core.records import Record
from promptkit.formats import get_format
from promptkit.io import files
from promptkit.io.jsonl import Source
from promptkit.io.keys import stable_prompt_key
from promptkit.io.sink import Encoder, joined
from promptkit.ops.base import Step
from promptkit.ray import address_kind, connect
from promptkit.ray.inputs import Planned, paths_of, plan_input
from promptkit.ray.run import (
    KEYS,
    PART,
    PartsOutput,
    _hash_parts,
    _write_part,
    check_output,
    chunk_bytes,
    chunk_of,
    distinct_keys,
    linked_refused,
    make_staging,
    put_folder,
    save_keys,
)
from promptkit.runner.workers import chunk_records


def _open(input_path: str, from_format: str | None, skip_invalid: bool) -> tuple[Any, Any]:
    """The input's format and its first record (read here: a few lines)."""
    _, many = paths_of(input_path)
    if many:
        from promptkit.io.shards import ShardedSource

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


def _setup_ray(ray: Any) -> tuple[int, str]:
    return sum(1 for node in ray.nodes() if node.get("Alive")), ray.__version__


# ---------------------------------------------------------------- hash-trace


def _hash_chunk(row: dict[str, Any], fmt: str, skip_invalid: bool, params: dict[str, Any]
                ) -> dict[str, Any]:
    """A chunk's hash-trace rows (a Ray task): each record's block digests and its
    hash-id record, pickled together, with the chunk's records read and skipped."""
    from promptkit.ops.hashtrace import DIGEST, hashed_records

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
    import pyarrow as pa

    from promptkit.core.tokenizers import cached_tokenizer
    from promptkit.ops.stats import Tap

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
    sha256 = _write_part(os.path.join(staging, PART.format(number)), data)
    save_keys(staging, number, encoder.keys.tobytes())
    return pa.table({"number": [number], "written": [encoder.count], "bytes": [len(data)],
                     "sha256": [sha256], "stats": [pickle.dumps(encoder.tap.finish())]})


def hash_trace_folder(input_path: str, output_path: str, step: Step, *, address: str,
                      from_format: str | None, skip_invalid: bool, argv: list[str] | None,
                      chunk_size: int | None = None) -> dict[str, Any]:
    """``hash-trace`` on a Ray cluster: OUT a folder of parts (their concatenation the bytes
    of the run without ``--ray``) and ``OUT/manifest.json``; the manifest is returned."""
    import pyarrow as pa

    from promptkit.ops.registry import make
    from promptkit.provenance.describe import describe
    from promptkit.ray.aggregate import _conform, number_blocks

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
                    return _conform(t.append_column("number", pa.array(chunk)), fields)

                both = (hashed.select_columns(["number", "index", "record"])
                        .map_batches(lambda t: _conform(t, fields), batch_format="pyarrow")
                        .union(ids.map_batches(numbered, batch_format="pyarrow")))
                written = {row["number"]: row for row in both.groupby("number").map_groups(
                    _write_hash_part, batch_format="pyarrow",
                    fn_kwargs={"staging": staging,
                               "tokenizer": step.params["tokenizer"]}).take_all()}
                facts = sorted(facts_ds.select_columns(["number", "read", "skipped"])
                               .take_all(), key=lambda r: r["number"])
                nodes, version = _setup_ray(ray)
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
                            "sha256": _write_part(os.path.join(staging, PART.format(number)),
                                                  b"")}
                if part.get("stats") and out.encoder.tap is not None:
                    out.encoder.tap.stats.merge(pickle.loads(part["stats"]))
                out.encoder.count += part["written"]
                parts.append({"path": PART.format(number), "records": part["written"],
                              "bytes": part["bytes"], "sha256": part["sha256"]})
            _hash_parts(staging, parts, out.sha256)
            inputs = [{"path": input_path, "format": fmt.name, "records": read,
                       "sha256": planned.sha256, **_shape(input_path, planned)}]
            result = describe(inputs, skipped, out, [step], argv,  # type: ignore[arg-type]
                              name_lines=lambda lines: [planned.locate(x) for x in lines])
            result["output"]["parts"] = parts
            result["ray"] = {"address": address_kind(address), "nodes": nodes,
                             "ray_version": version, "chunk_bytes": step_bytes,
                             "chunks": len(planned.chunks), "chunks_redone": 0}
            result["aiperf"]["note"] += (
                f" {output_path} is a folder of parts: AIPerf loads one file, their "
                f"concatenation (cat {output_path}/part-*.jsonl > FILE).")
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
    from promptkit.core.tokenizers import cached_tokenizer
    from promptkit.ray.aggregate import check_rows, check_setup

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
    nodes, version = _setup_ray(ray)
    return {"address": address_kind(address), "nodes": nodes, "ray_version": version,
            "chunk_bytes": step_bytes, "chunks": len(planned.chunks)}


def check_on_ray(input_path: str, *, address: str, from_format: str | None,
                 tokenizer: str | None, skip_invalid: bool, use_manifest: bool = True,
                 system_prompt_file: str | None = None, chunk_size: int | None = None,
                 **options: Any) -> dict[str, Any]:
    """``check``'s report for an unbounded cache, computed on a Ray cluster: tasks make
    each chunk's rows, :func:`~promptkit.ray.aggregate.unbounded_check` the figures. Raises
    :class:`~promptkit.ray.aggregate.NeedsSequence` when the check needs the requests in
    order (the caller runs it on one node)."""
    from promptkit.core.tokenizers import cached_tokenizer
    from promptkit.ops.check import CheckError, CheckOptions
    from promptkit.ray.aggregate import NeedsSequence, check_setup, sequence_reason, unbounded_check
    from promptkit.runner.pipeline import _line_of, aiperf_arguments

    applied = aiperf_arguments(input_path, system_prompt_file, use_manifest)
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
    skipped.sort(key=_line_of)
    return {"input": {"path": input_path, "format": fmt.name, "sha256": planned.sha256},
            "tokenizer": tokenizer,
            "skipped": skipped_section([planned.locate(x) for x in skipped]),
            **summary, "aiperf_args": applied, "wrote": [], "ray": ray_section}


def _stats_chunk(row: dict[str, Any], fmt: str, skip_invalid: bool, tokenizer: str | None,
                 chat_template: str) -> dict[str, Any]:
    """A chunk's partial statistics (a Ray task), with its records read and skipped."""
    from promptkit.ray.aggregate import stats_rows

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
    merges them; the report of :func:`promptkit.runner.pipeline.dataset_stats`."""
    from promptkit.core.tokenizers import load_tokenizer
    from promptkit.core.words import counted, plural
    from promptkit.ray.aggregate import merge_stats
    from promptkit.runner.pipeline import check_stats_options

    check_stats_options(chat_template, tokenizer)
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


__all__ = ["check_on_ray", "hash_trace_folder", "stats_on_ray"]
