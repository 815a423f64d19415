"""Run a chain of operations from one source to one sink, and write its manifest.

This is the one place that does I/O around the pure operations: the CLI's
commands and the ``pipe`` chain are thin wrappers over :func:`run`. What goes into
the manifest is :mod:`promptkit.provenance.describe`; ``rebuild`` is
:mod:`promptkit.provenance.rebuild`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeGuard

from promptkit.core import leftovers
from promptkit.core.errors import (
    BadOptionError,
    FormatUnknownError,
    InvalidRecordError,
    PromptkitError,
    Skipping,
    skipped_section,
)
from promptkit.core.progress import Progress, tracked
from promptkit.core.progress import is_wanted as progress_is_wanted
from promptkit.core.progress import wanted as progress_wanted
from promptkit.core.records import Record
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.formats import TABLE_FORMATS, get_format
from promptkit.formats.aiperf import block_size_in
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
from promptkit.io.jsonl import Source
from promptkit.io.shards import ShardedSource, expand, is_many
from promptkit.io.sink import Sink
from promptkit.ops.base import Step, Where
from promptkit.ops.registry import ORDERED, STATEFUL, make, pass_label
from promptkit.ops.stats import Tap
from promptkit.provenance import manifest
from promptkit.provenance.describe import _line_of, describe
from promptkit.provenance.describe import (
    verify_output as verify_output,  # (publish checks its file)
)
from promptkit.runner import batches
from promptkit.runner import workers as parallel
from promptkit.runner.splice import ENCODE, WRITERS
from promptkit.runner.splice import WRITER as SPLICE
from promptkit.runner.splice import plan as splice_plan


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


#: What each operation's pass is called on the progress line (``check`` only looks at the
#: records as they pass, and shows its own pass once they all have).
def source_progress(label: str, source: Any, *, total: int | None = None) -> Progress:
    """The progress of a pass reading ``source`` in this process: its records read, of
    ``total`` or the source's own estimate. None shown for stdin (whose records may be
    typed at the terminal the line would be drawn on)."""
    expected = getattr(source, "expected_records", None)
    return Progress(label, lambda: source.count,
                    total=total if total is not None else expected,
                    enabled=getattr(source, "path", None) != STDIO)


def chunked_files(source: Any, input_path: str) -> str | list[str] | None:
    """What worker processes may read chunk by chunk (if large enough): a JSONL file of a
    line format, or the shards of many JSONL files; ``None`` for other inputs, and for a
    format whose lines depend on the lines before them (read in one pass, here)."""
    if getattr(getattr(source, "format", None), "linked", False):
        return None
    if by_lines(source):
        return input_path
    if isinstance(source, ShardedSource) and source.kind == "jsonl" and source.limit is None:
        return source.paths
    return None


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

    ``writer``: how lines are written (see :mod:`promptkit.runner.splice`): ``encode`` encodes
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


def located(exc: InvalidRecordError, source: Any) -> InvalidRecordError:
    """An error raised without a file (by a step or the writer), naming the input's file
    and line: the shard and its own line when the input is many files."""
    if exc.path is not None:
        return exc
    if isinstance(source, ShardedSource):
        return source.located(exc)
    return exc.located(source.name)


def named_lines(skipped: list[str], source: Any) -> list[str]:
    """Skipped records (``LINE: problem``, sorted) as the manifest lists them: by their
    shard and its own line (``SHARD:LINE: problem``) when the input is many files."""
    if isinstance(source, ShardedSource):
        return [source.name_line(line) for line in skipped]
    return skipped


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
            chunked = None if out_format.linked else chunked_files(source, input_path)
            plain = chunked is not None and parallel.plain_files(chunked)
            spliced = (splice_plan(steps, in_format.name, out_format.name)
                       if writer != ENCODE and isinstance(sink, Sink) and (
                           plain or isinstance(source, Source) and not isinstance(
                               source, ColumnSource) and source.layout == "lines")
                       else None)
            if spliced is not None:
                sink.writer = SPLICE
            if (chunked is not None and isinstance(sink, Sink)
                    and not any(step.op in ORDERED for step in steps)
                    and (parallel.can_run_parallel(chunked, workers)
                         or spliced is not None and plain)):
                source.close()
                facts = parallel.InputFacts()
                with leftovers.scratch_folder() as scratch, \
                        file_progress(label, chunked, facts):
                    job = parallel.Job(input_path, scratch, in_format.name, out_format.name,
                                       steps, skip_invalid, source.name, tokenizer,
                                       splice=spliced, keep_replies=keep_replies)
                    parallel.run_file(chunked, job, sink, workers if parallel.can_run_parallel(
                        chunked, workers) else 1, facts)
                _read_in_workers(source, facts)
            elif spliced is not None:  # stdin, a compressed file: its lines, in this process
                assert isinstance(source, Source) and isinstance(sink, Sink)
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
            inputs = [{"path": source.name, "format": in_format.name,
                       "records": facts.records_read,
                       "sha256": (source.sha256 if isinstance(source, ShardedSource)
                                  else facts.sha256).hexdigest()}]
            if isinstance(source, DatasetSource):
                inputs[0]["path"] = source.path
            if isinstance(source, DatasetSource | ColumnSource) or (
                    isinstance(source, ShardedSource) and source.kind == "parquet"):
                inputs[0]["dataset"] = source.describe()
            if not isinstance(source, DatasetSource | ColumnSource):
                inputs[0].update(source.shape())
            result = describe(inputs, facts.skipped, sink, steps, argv,
                              name_lines=lambda lines: named_lines(lines, source))
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
    from promptkit.ops.synth import GENERATORS

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
                dataset: dict[str, Any] | None = None) -> Source | DatasetSource | ShardedSource:
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


def by_lines(source: Source | DatasetSource | ShardedSource) -> TypeGuard[Source]:
    """Whether ``source`` is JSONL of a line format, whose chunks worker processes can
    read on their own (one read by columns carries its timestamps from line to line)."""
    return (isinstance(source, Source) and not isinstance(source, ColumnSource)
            and source.limit is None)


def open_sink(path: str, fmt: Any, *, skip_invalid: bool = False,
              inputs: list[str] | None = None, keep_replies: bool = False) -> Sink | TableSink:
    if fmt.name in TABLE_FORMATS:  # (a table holds replies: keep_replies is for requests)
        return TableSink(path, fmt, skip_invalid=skip_invalid, inputs=inputs or [])
    return Sink(path, fmt, skip_invalid=skip_invalid, inputs=inputs or [],
                keep_replies=keep_replies)


def _hash_trace_in_workers(source: Any, path: str | list[str], step: Step,
                           sink: Sink | TableSink, workers: int, skip_invalid: bool, label: str
                           ) -> parallel.InputFacts:
    """``hash-trace`` of a large file: workers tokenize and hash chunks; the ids are
    numbered here, in file order (so the bytes are those of one process)."""
    from promptkit.ops.hashtrace import HashIds, hashed_list

    source.close()
    facts = parallel.InputFacts()
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
        _read_in_workers(source, facts)  # the shards chunked so far: to name the line
        raise located(exc, source) from None
    _read_in_workers(source, facts)
    return facts


def _for_workers(source: Any) -> Any:
    """Ready ``source`` to be read again by worker processes (it read the first records,
    to detect the format): nothing counted; the digest the chunks hash one file into."""
    source.close()
    if isinstance(source, ShardedSource):
        source.read_in_workers([], [])
        return hashlib.sha256()  # each shard is hashed on its own (InputFacts.shards)
    source.sha256 = hashlib.sha256()  # the chunks hash the whole file again
    source.count = 0
    source.skipped = []
    return source.sha256


def _read_in_workers(source: Any, facts: parallel.InputFacts) -> None:
    """Many files read by workers: the source takes their account (sha256s, lines)."""
    if isinstance(source, ShardedSource) and facts.shards is not None:
        source.read_in_workers(facts.shards, facts.shard_lines)


def _splice_here(source: Source, sink: Sink, job: parallel.Job) -> parallel.InputFacts:
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
        raise located(exc, source) from None
    return facts


def _run_here(source: Source | DatasetSource | ShardedSource, sink: Sink | TableSink,
              steps: list[Step]) -> parallel.InputFacts:
    """The whole chain in this process, streaming (and flushing as input arrives)."""
    if sink.path == STDIO and isinstance(source, Source):
        source.before_read = sink.flush
    records: Iterable[Record] = source.records()
    for step in steps:
        records = step.apply(records, step.new_state() if step.op in STATEFUL else None)
    try:
        sink.write_all(records)
    except InvalidRecordError as exc:
        raise located(exc, source) from None
    return parallel.InputFacts(source.records_read, source.skipped, source.sha256)


def check_stats_options(chat_template: str, tokenizer: str | None) -> None:
    """``stats``' template options, as it checks them before reading (with ``--ray`` too)."""
    from promptkit.ops.check import TEMPLATES

    if chat_template not in TEMPLATES:
        raise PromptkitError(f"unknown chat template {chat_template!r}; choose from "
                             f"{', '.join(TEMPLATES)}")
    if chat_template != "none" and tokenizer is None:
        raise PromptkitError("--chat-template needs --tokenizer (the template's tokens are "
                             "counted under it)")


def dataset_stats(input_path: str, *, from_format: str | None = None,
                  tokenizer: str | None = None, threads: int | None = None,
                  skip_invalid: bool = False, dataset: dict[str, Any] | None = None,
                  plot: str | None = None, workers: int | None = None,
                  chat_template: str = "none", progress: bool | None = None
                  ) -> dict[str, Any]:
    """The statistics of a file (token figures with a tokenizer, under
    ``chat_template`` as ``check`` counts them), as a dict; ``warnings`` says what the
    figures leave out, ``wrote`` the files written (``plot``). ``progress`` shows the
    pass's progress on stderr when it is a terminal."""
    from promptkit.core.tokenizers import load_tokenizer
    from promptkit.core.words import counted, plural
    from promptkit.ops import stats

    check_stats_options(chat_template, tokenizer)
    if plot is not None:
        files.writable(plot)
        files.refuse_clashes([(plot, "--plot")], [input_path])
    loaded = load_tokenizer(tokenizer) if tokenizer else None
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    label = "counting tokens" if tokenizer else "counting"
    try:
        with progress_wanted(progress_is_wanted() if progress is None else progress):
            chunked = chunked_files(source, input_path)
            if (workers is not None and chunked is not None
                    and parallel.can_run_parallel(chunked, workers)):
                collected = _stats_in_workers(source, chunked, tokenizer, skip_invalid,
                                              workers, chat_template, label)
            else:
                with source_progress(label, source):
                    collected = stats.collect(source.records(), loaded, threads=threads,
                                              chat_template=chat_template,
                                              tokenizer_spec=tokenizer)
    finally:
        source.close()
    summary = collected.summary()
    warnings = []
    if collected.no_text:
        lines = ", ".join(named_lines([str(n) for n in collected.no_text_lines], source))
        more = ", ..." if collected.no_text > len(collected.no_text_lines) else ""
        found = (counted(collected.no_text, "record") if collected.no_text == collected.records
                 else f"{collected.no_text} of {counted(collected.records, 'record')}")
        fmt = source.format.name
        message = (f"no prompt text found in {found} ({plural(collected.no_text, 'line')} "
                   f"{lines}{more}), read as {fmt}: their messages hold no text (empty, "
                   f"media only, or the text under a key {fmt} does not read: give --from "
                   "FORMAT or --text-column KEY)")
        if tokenizer is not None and not collected.tokens:
            raise PromptkitError(f"{source.name}: {message}")
        warnings.append(message + ("; left out of the token figures" if collected.tokens
                                   else ""))
    if tokenizer is not None and collected.stated == collected.records:
        warnings.append(f"--tokenizer {tokenizer} was not used: the trace states each "
                        "record's prompt tokens (input_length)")
    wrote = []
    if plot is not None:
        from promptkit.commands.plots import stats_plot

        shared = [p for p in collected.system_prompts.values() if p.count > 1]
        prefix = max(shared, key=lambda p: p.count).tokens if shared else None
        stats_plot(plot, collected.tokens, prefix, f"{source.name}: prompt lengths"
                   + (f" ({tokenizer})" if tokenizer else ""))
        wrote.append(plot)
    return {
        "input": {"path": source.name, "format": source.format.name,
                  "sha256": source.sha256.hexdigest(),
                  **({"dataset": source.describe()}
                     if isinstance(source, DatasetSource | ColumnSource)
                     or (isinstance(source, ShardedSource) and source.kind == "parquet")
                     else {})},
        "tokenizer": tokenizer,
        **({"chat_template": chat_template} if tokenizer is not None else {}),
        "skipped": skipped_section(named_lines(source.skipped, source)),
        **summary,
        "warnings": warnings,
        "wrote": wrote,
    }


def check_file(input_path: str, *, from_format: str | None = None,
               tokenizer: str | None = None, skip_invalid: bool = False,
               dataset: dict[str, Any] | None = None, per_request: str | None = None,
               plot: str | None = None, workers: int | None = None,
               system_prompt_file: str | None = None, use_manifest: bool = True,
               progress: bool | None = None, **options: Any) -> dict[str, Any]:
    """The predicted prefix-cache hits of sending a file's records (see
    :mod:`promptkit.ops.check`), as a dict; ``per_request`` names a JSONL file to get one
    line a profiled request.

    What AIPerf adds to every request is applied: ``system_prompt_file`` (its
    ``--system-prompt-file``), or else the AIPerf arguments of the file's own manifest
    (``IN.manifest.json``) when it matches the file and ``use_manifest`` is true.
    ``progress`` shows the pass's progress on stderr when it is a terminal."""
    from promptkit.core.tokenizers import cached_tokenizer
    from promptkit.ops.check import CheckOptions, check_records

    for path in (per_request, plot):
        if path is not None:
            files.writable(path)
    files.refuse_clashes([(path, what) for path, what in ((per_request, "--per-request"),
                                                          (plot, "--plot")) if path],
                         [input_path])
    applied = aiperf_arguments(input_path, system_prompt_file, use_manifest)
    options["system_prompt"] = applied.pop("system_prompt")
    hash_block_size = applied.pop("hash_block_size", None)
    if hash_block_size is not None and options.get("hash_block_size") is None:
        options["hash_block_size"] = hash_block_size
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    # AIPerf loads OpenAI chat lines as mooncake_trace and sends only messages and tools.
    options["sends_extra"] = source.format.name != "openai"
    options["aiperf_type"] = source.format.aiperf_type  # (a trace may run on a fixed schedule)
    if options.get("hash_block_size") is None:  # what AIPerf makes of the format's hash ids
        options["hash_block_size"] = source.format.hash_block_size
    loaded = cached_tokenizer(tokenizer) if tokenizer else None
    skipping = Skipping(skip_invalid, "check")  # records read but not sendable as they are
    try:
        with progress_wanted(progress_is_wanted() if progress is None else progress):
            chunked = chunked_files(source, input_path)
            if (workers is not None and chunked is not None
                    and parallel.can_run_parallel(chunked, workers)):
                report = _check_in_workers(source, chunked, CheckOptions(**options),
                                           loaded, tokenizer, skipping, workers)
            else:
                with source_progress("checking", source):
                    report = check_records(source.records(), options=CheckOptions(**options),
                                           tokenizer=loaded, tokenizer_spec=tokenizer,
                                           skipping=skipping)
    except InvalidRecordError as exc:
        raise located(exc, source) from None
    finally:
        source.close()
    wrote = []
    if plot is not None:
        from promptkit.commands.plots import check_plot

        check_plot(plot, report.hits, report.lengths, f"{source.name}: predicted prefix-cache "
                   f"hits ({report.options.engine}, block {report.block_size})")
        wrote.append(plot)
    if per_request is not None:
        import orjson

        files.write_text(per_request, "".join(
            orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE).decode()
            for row in report.per_request()))
        wrote.append(per_request)
    return {"input": {"path": source.name, "format": source.format.name,
                      "sha256": source.sha256.hexdigest()},
            "tokenizer": tokenizer,
            "skipped": skipped_section(named_lines(
                sorted(source.skipped + skipping.skipped, key=_line_of), source)),
            **report.summary(), "aiperf_args": applied, "wrote": wrote}



def aiperf_arguments(input_path: str, system_prompt_file: str | None,
                     use_manifest: bool = True) -> dict[str, Any]:
    """The AIPerf arguments ``check`` applies to a file: ``applied`` (the arguments),
    ``source`` (``option``, ``manifest`` or ``None``), ``system_prompt`` (its text), and
    ``note`` when a manifest beside the file was not used."""
    from promptkit.ops import check

    out: dict[str, Any] = {"applied": [], "source": None, "system_prompt": None}
    if system_prompt_file is not None:
        out.update(applied=["--system-prompt-file", system_prompt_file], source="option",
                   system_prompt=check.read_prompt(system_prompt_file,
                                                   "--system-prompt-file"))
        return out
    path = manifest.default_path(input_path)
    if (not use_manifest or input_path == STDIO or is_many(input_path)
            or is_dataset(input_path)):
        return out
    try:
        recorded = manifest.read(path)
        problems = manifest.verify(input_path, path)
    except (PromptkitError, KeyError, TypeError):
        if os.path.exists(path):
            out["note"] = f"{path} is not a readable promptkit manifest: not applied"
        return out
    if problems:
        out["note"] = f"{path} does not match the file ({problems[0]}): not applied"
        return out
    args = recorded.get("aiperf", {}).get("args", [])
    if block_size_in(args) is not None:
        out["hash_block_size"] = block_size_in(args)
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--system-prompt":
            out.update(applied=[flag, value], source="manifest", system_prompt=value)
        elif flag == "--system-prompt-file":
            found = manifest.named_file(str(value), input_path)
            if found is None:
                raise PromptkitError(
                    f"{path}: --system-prompt-file {value}: no such file in "
                    f"{os.path.dirname(input_path) or '.'} (a manifest's files are read "
                    "from its file's folder only); give --system-prompt-file or "
                    "--no-manifest")
            out.update(applied=[flag, found], source="manifest",
                       system_prompt=check.read_prompt(found,
                                                       f"{path}: --system-prompt-file"))
    return out


def _stats_in_workers(source: Any, path: str | list[str], tokenizer: str | None,
                      skip_invalid: bool, workers: int, chat_template: str = "none",
                      label: str = "counting") -> Any:
    """Statistics of a large file (or many), a chunk a worker process, merged in order."""
    from promptkit.ops.stats import Stats, stats_of

    digest = _for_workers(source)
    total = Stats()
    done = parallel.InputFacts()
    with file_progress(label, path, done):
        for part, read, skipped in parallel.map_records(
                path, stats_of, (tokenizer, chat_template), workers, digest,
                fmt=source.format.name, name=source.name, skip_invalid=skip_invalid,
                done=done):
            total.merge(part)
            source.count += read
            done.records_read = source.count
            source.skipped += skipped
    _read_in_workers(source, done)
    return total


def _check_in_workers(source: Any, path: str | list[str], options: Any, tokenizer: Any,
                      spec: str | None, skipping: Skipping, workers: int) -> Any:
    """``check`` of a large file: workers tokenize and hash chunks; the cache is
    simulated here, in file order (the same report as one process)."""
    from promptkit.ops.check import Setup

    first = next(source.records(), None)  # from the lines already read to detect the format
    if first is None:
        source.close()
        raise PromptkitError(f"{source.name}: empty file: no records")
    setup = Setup(first, options, tokenizer, spec, Skipping(skipping.skip_invalid, skipping.op))
    digest = _for_workers(source)  # the chunks read the whole input again

    done = parallel.InputFacts()

    def pairs() -> Iterator[Any]:
        for (part, rejected), read, skipped in parallel.map_records(
                path, setup.entry_list, (), workers, digest,
                fmt=source.format.name, name=source.name, skip_invalid=skipping.skip_invalid,
                done=done):
            source.count += read
            done.records_read = source.count
            source.skipped += skipped
            skipping.skipped += rejected
            yield from part

    with file_progress("checking", path, done):
        report = setup.replay(pairs())
    _read_in_workers(source, done)
    return report


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
