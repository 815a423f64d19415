"""Run a chain of operations from one source to one sink, and write its manifest.

This is the one place that does I/O around the pure operations: the CLI's
commands and the ``pipe`` chain are thin wrappers over :func:`run`. What goes into
the manifest is :mod:`promptkit.provenance.describe`; ``rebuild`` is
:mod:`promptkit.provenance.rebuild`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from promptkit.core import leftovers
from promptkit.core.errors import (
    BadOptionError,
    FormatUnknownError,
    InvalidRecordError,
    PromptkitError,
)
from promptkit.core.progress import Progress, tracked
from promptkit.core.progress import is_wanted as progress_is_wanted
from promptkit.core.progress import wanted as progress_wanted
from promptkit.core.records import Record
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.formats import TABLE_FORMATS, get_format
from promptkit.io import files
from promptkit.io.columns import ColumnSource
from promptkit.io.datasets import (
    COLUMN_OPTIONS,
    DatasetOptions,
    DatasetSource,
    TableSink,
    is_dataset,
    is_json_array,
)
from promptkit.io.files import STDIO, display_name
from promptkit.io.interface import LINES, RecordSource
from promptkit.io.jsonl import Source
from promptkit.io.shards import ShardedSource, expand, is_many
from promptkit.io.sink import Sink
from promptkit.ops.base import Step, Where
from promptkit.ops.hashtrace import HashIds, hashed_list
from promptkit.ops.registry import ORDERED, STATEFUL, make, pass_label
from promptkit.ops.stats import Tap
from promptkit.ops.synth import GENERATORS
from promptkit.provenance import manifest
from promptkit.provenance.describe import describe
from promptkit.provenance.describe import (
    verify_output as verify_output,  # (publish checks its file)
)
from promptkit.runner import batches
from promptkit.runner import workers as parallel
from promptkit.runner.writers import ENCODE, WRITERS
from promptkit.runner.writers import WRITER as SPLICE
from promptkit.runner.writers import plan as splice_plan


def counting_tokenizer(steps: list[Step]) -> str | None:
    """The tokenizer the output's token statistics are counted under: the last
    step's that names one (``None``: no token statistics)."""
    named = [s.params["tokenizer"] for s in steps if s.params.get("tokenizer")]
    return named[-1] if named else None


def where_of(input_path: str, output_path: str, from_format: str | None = None,
             dataset: dict[str, Any] | None = None,
             counted: dict[str, int] | None = None) -> Where:
    """What the steps of a run from ``input_path`` to ``output_path`` are made for (see
    :func:`promptkit.ops.registry.make`), with the first pass ``pad`` makes over the input
    (the records it read go into ``counted["records"]``, for the next pass's progress)."""
    return Where(input_path, output_path, from_format, dataset,
                 system_prompts=lambda: system_prompts(input_path, from_format, dataset,
                                                       counted=counted))


def source_progress(label: str, source: RecordSource, *, total: int | None = None
                    ) -> Progress:
    """The progress of a pass reading ``source`` in this process: its records read, of
    ``total`` or the source's own estimate. None shown for stdin (whose records may be
    typed at the terminal the line would be drawn on)."""
    return Progress(label, lambda: source.count,
                    total=total if total is not None else source.expected_records,
                    enabled=source.path != STDIO)


def file_progress(label: str, path: str | list[str], facts: parallel.InputFacts) -> Progress:
    """The progress of a pass over ``path`` (or shards) in worker processes, chunk by
    chunk."""
    size = sum(os.path.getsize(p) for p in ([path] if isinstance(path, str) else path))
    return Progress(label, lambda: facts.records_read,
                    total=lambda: facts.expected_records(size))


def run(
    input_path: str,
    output_path: str,
    steps: list[Step],
    *,
    from_format: str | None = None,
    to_format: str | None = None,
    skip_invalid: bool = False,
    manifest_path: str | None = None,
    argv: list[str] | None = None,
    workers: int | None = None,
    dataset: dict[str, Any] | None = None,
    progress: bool | None = None,
    accept: Callable[[dict[str, Any]], None] | None = None,
    writer: str | None = None,
    keep_replies: bool = False,
) -> dict[str, Any]:
    """Read, transform, write; return the manifest, also written to ``manifest_path``.

    ``input_path`` is a JSONL file (or ``-``) or a Hugging Face dataset (see
    :mod:`promptkit.io.datasets`), read with the ``dataset`` options
    (:class:`~promptkit.io.datasets.DatasetOptions` fields). ``progress`` shows each
    pass's progress on stderr when it is a terminal (default: as
    :func:`promptkit.core.progress.want` said; off unless told).

    Large regular files are processed by ``workers`` processes (default: one per
    CPU, up to 4); the output is the same bytes for every number of workers.
    On any error nothing is written: no output file, no manifest, and an existing
    output stays untouched. ``accept(manifest)``, when given, may raise to refuse the
    result before anything is put in place. OUT, its manifest and side files are put
    in place together (see :mod:`promptkit.io.files`), under a lock on OUT.
    A step not yet made (``Step(op, params)``) is made here for this input and output,
    as the command line makes it (see :mod:`promptkit.ops.base`).

    ``writer``: how lines are written (see :mod:`promptkit.runner.writers`): ``encode`` encodes
    every record again, as promptkit did before the splice writer (``rebuild`` of such
    a file); by default a nonce run's lines keep their input bytes where they can.

    ``keep_replies`` (``--keep-replies``): write a conversation that ends with a recorded
    reply as a request (mooncake_trace, openai) as it is, instead of refusing it.
    """
    workers = parallel.default_workers() if workers is None else workers
    if writer not in (None, *WRITERS):
        raise PromptkitError(f"unknown writer {writer!r} (one of {', '.join(WRITERS)})")
    counted: dict[str, int] = {}
    where = where_of(input_path, output_path, from_format, dataset, counted)
    # Not over records written to the terminal the progress line would be drawn on.
    shown = ((progress_is_wanted() if progress is None else progress)
             and not (output_path == STDIO and _stdout_is_terminal()))
    with progress_wanted(shown):
        steps = [step if step.made else make(step.op, step.params, where) for step in steps]
    for step in steps:
        step.skip_invalid = skip_invalid
    if manifest_path == STDIO and output_path == STDIO:
        raise PromptkitError("the output and the manifest cannot both go to stdout")
    outputs = files.Outputs(output_path, manifest_path,
                            [path for step in steps for path in step.side_files],
                            inputs=input_files(input_path), stale=_stale(output_path))
    try:
        with progress_wanted(shown):
            return _run(outputs, input_path, output_path, steps, from_format=from_format,
                        to_format=to_format, skip_invalid=skip_invalid,
                        manifest_path=manifest_path, argv=argv, workers=workers,
                        dataset=dataset, records=counted.get("records"), accept=accept,
                        writer=writer, keep_replies=keep_replies)
    finally:
        outputs.release()


def input_files(input_path: str) -> list[str]:
    """The files an input reads: its shards when it names many (see
    :mod:`promptkit.io.shards`; none when it matches none: opening it says so), else itself."""
    if not is_many(input_path):
        return [input_path]
    try:
        return expand(input_path)
    except PromptkitError:
        return []


def _stdout_is_terminal() -> bool:
    try:
        return os.isatty(1)
    except OSError:
        return False


def _run(outputs: files.Outputs, input_path: str, output_path: str, steps: list[Step], *,
         from_format: str | None, to_format: str | None, skip_invalid: bool,
         manifest_path: str | None, argv: list[str] | None, workers: int,
         dataset: dict[str, Any] | None, records: int | None,
         accept: Callable[[dict[str, Any]], None] | None, writer: str | None = None,
         keep_replies: bool = False) -> dict[str, Any]:
    """:func:`run` once its steps are made (``records``: the input's records, when a
    first pass counted them)."""
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    try:
        in_format = source.format
        made_for = [step.output_format for step in steps if step.output_format]
        out_format = get_format(to_format or (made_for[-1] if made_for else None)
                                or source.default_output)
        sink = open_sink(output_path, out_format, skip_invalid=skip_invalid,
                         inputs=input_files(input_path), keep_replies=keep_replies)
        try:  # from here on, an error removes the sink's temporary file
            tokenizer = counting_tokenizer(steps)
            if tokenizer is not None:
                sink.encoder.tap = Tap(cached_tokenizer(tokenizer))
            label = pass_label(steps)
            # A format whose lines depend on the ones written before them: one pass, here.
            chunked = None if out_format.linked else source.chunk_files()
            plain = chunked is not None and parallel.plain_files(chunked)
            spliced = (splice_plan(steps, in_format.name, out_format.name)
                       if writer != ENCODE and isinstance(sink, Sink)
                       and (plain or source.yields == LINES) else None)
            if spliced is not None:
                sink.writer = SPLICE
            if (chunked is not None and isinstance(sink, Sink)
                    and not any(step.op in ORDERED for step in steps)
                    and (parallel.can_run_parallel(chunked, workers)
                         or spliced is not None and plain)):
                facts = parallel.InputFacts(sha256=source.to_workers())
                with leftovers.scratch_folder() as scratch, \
                        file_progress(label, chunked, facts):
                    job = parallel.Job(input_path, scratch, in_format.name, out_format.name,
                                       steps, skip_invalid, source.name, tokenizer,
                                       splice=spliced, keep_replies=keep_replies)
                    parallel.run_file(chunked, job, sink, workers if parallel.can_run_parallel(
                        chunked, workers) else 1, facts)
                source.from_workers(facts)
            elif spliced is not None:  # stdin, a compressed file: its lines, in this process
                assert isinstance(sink, Sink)
                job = parallel.Job(input_path, "", in_format.name, out_format.name, steps,
                                   skip_invalid, source.name, splice=spliced,
                                   keep_replies=keep_replies)
                with source_progress(label, source, total=records):
                    facts = _splice_here(source, sink, job)
            elif (len(steps) == 1 and steps[0].op == "hash_trace" and chunked is not None
                  and parallel.can_run_parallel(chunked, workers)):
                facts = _hash_trace_in_workers(source, chunked, steps[0], sink, workers,
                                               skip_invalid, label)
            elif not out_format.linked and batches.takes(source, sink, steps):  # a dataset
                assert isinstance(sink, Sink)
                with source_progress(label, source, total=records):
                    facts = batches.run_dataset(source, sink, steps, out_format=out_format.name,
                                                skip_invalid=skip_invalid, tokenizer=tokenizer,
                                                workers=workers)
            else:
                with source_progress(label, source, total=records):
                    facts = _run_here(source, sink, steps)
            for step in steps:
                if step.on_count is not None:
                    step.on_count(facts.records_read)
            sink.flush()
            result = describe([source.input_entry(facts.records_read)], facts.skipped, sink,
                              steps, argv,
                              name_lines=lambda lines: [source.name_line(x) for x in lines])
            if accept is not None:
                accept(result)
            _put_in_place(outputs, sink, steps, manifest_path, result)
        except BaseException:
            sink.abort()
            raise
    finally:
        source.close()
    if manifest_path == STDIO:
        manifest.write(STDIO, result)
    return result


def _stale(output_path: str) -> list[str]:
    """OUT's manifest at its default path, which an OUT written with its manifest
    elsewhere (or none) would leave describing a file that is gone."""
    return [] if output_path == STDIO else [manifest.default_path(output_path)]


def _put_in_place(outputs: files.Outputs, sink: Sink | TableSink, steps: list[Step],
                  manifest_path: str | None, result: dict[str, Any]) -> None:
    """Finish OUT, stage its side files and manifest, and rename them all into place
    (an error before the renames leaves everything as it was)."""
    try:
        sink.finish()
        for step in steps:
            for path, text in step.side_files.items():
                outputs.stage(path, text)
        if manifest_path not in (None, STDIO):
            outputs.stage(manifest_path, manifest.dumps(result))
        outputs.commit(sink.commit)
    except BaseException:
        outputs.abort()
        raise


def generate(name: str, params: dict[str, Any], output_path: str, *, to_format: str,
             manifest_path: str | None = None, argv: list[str] | None = None,
             accept: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Write the records generator ``name`` makes from ``params`` (see
    :mod:`promptkit.ops.synth`); return the manifest, also written to ``manifest_path``
    (as :func:`run` writes them)."""
    make, info = GENERATORS[name]
    if manifest_path == STDIO and output_path == STDIO:
        raise PromptkitError("the output and the manifest cannot both go to stdout")
    generator = {"name": name, "params": params, "info": info(params)}
    outputs = files.Outputs(output_path, manifest_path, stale=_stale(output_path))
    try:
        sink = Sink(output_path, get_format(to_format))
        try:
            tokenizer = params.get("tokenizer")
            if tokenizer is not None:
                sink.encoder.tap = Tap(cached_tokenizer(tokenizer))
            # Not over records written to the terminal the progress line would be drawn on.
            with progress_wanted(progress_is_wanted() and not (
                    output_path == STDIO and _stdout_is_terminal())):
                sink.write_all(tracked(make(**params), "generating"))
            sink.flush()
            result = describe([], [], sink, [], argv, generator)
            if accept is not None:
                accept(result)
            _put_in_place(outputs, sink, [], manifest_path, result)
        except BaseException:
            sink.abort()
            raise
    finally:
        outputs.release()
    if manifest_path == STDIO:
        manifest.write(STDIO, result)
    return result


def open_source(path: str, from_format: str | None = None, *, skip_invalid: bool = False,
                dataset: dict[str, Any] | None = None) -> RecordSource:
    """The source of ``path``: a Hugging Face dataset, or JSONL (a file or stdin; a JSON
    array is read as its lines would be), read by its line format or, given column
    options, by columns (:mod:`promptkit.io.columns`). A JSON array file is read through
    ``datasets`` when options that choose rows are given (``--limit``, ``--shuffle``), and
    by columns when its objects fit no line format (as a parquet file's columns are).

    ``limit`` (``--limit``) reads the first records of any input: a dataset's rows (after
    a shuffle), or the first records of JSON lines or an array, plain, compressed or
    stdin (read in one process; the sha256 is still that of the whole input)."""
    if path != STDIO and is_many(path):
        return ShardedSource(path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    local = path != STDIO and from_format is None
    if local and is_dataset(path):
        return DatasetSource(path, DatasetOptions(**(dataset or {})), skip_invalid=skip_invalid)
    dataset = dict(dataset or {})
    rows = {k: v for k, v in dataset.items() if k not in COLUMN_OPTIONS and k != "limit"}
    if rows and local and is_json_array(path):
        return DatasetSource(path, DatasetOptions(**dataset), skip_invalid=skip_invalid)
    if rows:
        option = "--" + next(iter(rows)).replace("_", "-").removesuffix("-seed")
        raise BadOptionError(f"{display_name(path)}: a JSONL input; {option} is for datasets "
                             "(parquet, dataset folders, hf:OWNER/NAME)")
    limit = dataset.pop("limit", None)
    source: Source
    if dataset:
        if from_format is not None:
            option = "--" + next(iter(dataset)).replace("_", "-")
            raise BadOptionError(f"{display_name(path)}: --from {from_format} reads lines as "
                                 f"that format; {option} maps them by columns: give one")
        source = ColumnSource(path, DatasetOptions(**dataset, limit=limit),
                              skip_invalid=skip_invalid)
    else:
        try:
            source = Source(path, from_format, skip_invalid=skip_invalid)
        except FormatUnknownError:
            if not (local and is_json_array(path)):
                raise
            source = ColumnSource(path, DatasetOptions(limit=limit), skip_invalid=skip_invalid)
    source.limit = limit
    return source


def open_sink(path: str, fmt: Any, *, skip_invalid: bool = False,
              inputs: list[str] | None = None, keep_replies: bool = False) -> Sink | TableSink:
    if fmt.name in TABLE_FORMATS:  # (a table holds replies: keep_replies is for requests)
        return TableSink(path, fmt, skip_invalid=skip_invalid, inputs=inputs or [])
    return Sink(path, fmt, skip_invalid=skip_invalid, inputs=inputs or [],
                keep_replies=keep_replies)


def _hash_trace_in_workers(source: RecordSource, path: str | list[str], step: Step,
                           sink: Sink | TableSink, workers: int, skip_invalid: bool, label: str
                           ) -> parallel.InputFacts:
    """``hash-trace`` of a large file: workers tokenize and hash chunks; the ids are
    numbered here, in file order (so the bytes are those of one process)."""
    facts = parallel.InputFacts(sha256=source.to_workers())
    numbering = HashIds()

    def records() -> Iterator[Record]:
        for (part, rejected), read, skipped in parallel.map_records(
                path, hashed_list, (step.params, skip_invalid), workers, facts.sha256,
                fmt=source.format.name, name=source.name, skip_invalid=skip_invalid,
                done=facts):
            facts.records_read += read
            facts.skipped += skipped + rejected
            for record, digests in part:
                record.hash_ids = numbering.number(digests)
                yield record

    try:
        with file_progress(label, path, facts):
            sink.write_all(records())
    except InvalidRecordError as exc:
        source.from_workers(facts)  # the shards chunked so far: to name the line
        raise source.located(exc) from None
    source.from_workers(facts)
    return facts


def _splice_here(source: Any, sink: Sink, job: parallel.Job) -> parallel.InputFacts:
    """A nonce run by the splice writer over a stream of lines (stdin, a compressed
    file, ``--limit``), in this process, a batch of lines at a time (near the limit, a
    line at a time)."""
    if sink.path == STDIO:
        source.before_read = sink.flush
    facts = parallel.InputFacts(sha256=source.sha256)
    limit = source.limit
    try:
        for result in parallel.spliced_batches(job, source.line_batches(), lines_left=(
                None if limit is None else lambda: limit - facts.records_read)):
            parallel.absorb(result, sink, facts)
            source.count = facts.records_read
        if limit is not None:
            source.drain()
    except InvalidRecordError as exc:
        raise source.located(exc) from None
    return facts


def _run_here(source: RecordSource, sink: Sink | TableSink, steps: list[Step]
              ) -> parallel.InputFacts:
    """The whole chain in this process, streaming (and flushing as input arrives)."""
    if sink.path == STDIO:
        source.before_read = sink.flush
    records: Iterable[Record] = source.records()
    for step in steps:
        records = step.apply(records, step.new_state() if step.op in STATEFUL else None)
    try:
        sink.write_all(records)
    except InvalidRecordError as exc:
        raise source.located(exc) from None
    return parallel.InputFacts(source.records_read, source.skipped, source.sha256)


def system_prompts(input_path: str, from_format: str | None = None,
                   dataset: dict[str, Any] | None = None,
                   counted: dict[str, int] | None = None) -> list[str]:
    """The distinct system prompts that begin the records of a file, in order (the
    records read go into ``counted["records"]`` when given)."""
    from promptkit.core.records import first_text

    seen: dict[str, None] = {}
    source = open_source(input_path, from_format, skip_invalid=True, dataset=dataset)
    try:
        with source_progress("collecting system prompts", source):
            for record in source.records():
                if record.messages and record.messages[0].role == "system":
                    seen.setdefault(first_text(record.messages[0].content) or "", None)
        if counted is not None:
            counted["records"] = source.count
    finally:
        source.close()
    return list(seen)
