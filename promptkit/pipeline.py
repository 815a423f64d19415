"""Run a chain of operations from one source to one sink, and describe it in a manifest.

This is the one place that does I/O around the pure operations: the CLI's
commands and the ``pipe`` chain are thin wrappers over :func:`run`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeGuard

from . import __version__, compression, files, manifest, parallel
from .columns import ColumnSource
from .datasets_io import (
    COLUMN_OPTIONS,
    DatasetOptions,
    DatasetSource,
    TableSink,
    is_dataset,
    is_json_array,
)
from .errors import FormatUnknownError, InvalidRecordError, PromptkitError, Skipping
from .formats import TABLE_FORMATS, get_format
from .pad import PadState
from .progress import Progress
from .records import Record
from .stats import Tap
from .steps import ORDERED, STATEFUL, Step, Where, make
from .streams import STDIO, Sink, Source, display_name
from .tokenizers import cached_tokenizer


def counting_tokenizer(steps: list[Step]) -> str | None:
    """The tokenizer the output's token statistics are counted under: the last
    step's that names one (``None``: no token statistics)."""
    named = [s.params["tokenizer"] for s in steps if s.params.get("tokenizer")]
    return named[-1] if named else None


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
    progress: bool = False,
    accept: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Read, transform, write; return the manifest, also written to ``manifest_path``.

    ``input_path`` is a JSONL file (or ``-``) or a Hugging Face dataset (see
    :mod:`promptkit.datasets_io`), read with the ``dataset`` options
    (:class:`~promptkit.datasets_io.DatasetOptions` fields). ``progress`` shows a
    progress bar on stderr when it is a terminal.

    Large regular files are processed by ``workers`` processes (default: one per
    CPU, up to 4); the output is the same bytes for every number of workers.
    On any error nothing is written: no output file, no manifest, and an existing
    output stays untouched. ``accept(manifest)``, when given, may raise to refuse the
    result before anything is put in place. OUT, its manifest and side files are put
    in place together (see :mod:`promptkit.files`), under a lock on OUT.
    A step not yet made (``Step(op, params)``) is made here for this input and output,
    as the command line makes it (see :mod:`promptkit.steps`).
    """
    workers = parallel.default_workers() if workers is None else workers
    where = Where(input_path, output_path, from_format, dataset)
    steps = [step if step.made else make(step.op, step.params, where) for step in steps]
    for step in steps:
        step.skip_invalid = skip_invalid
    if manifest_path == STDIO and output_path == STDIO:
        raise PromptkitError("the output and the manifest cannot both go to stdout")
    outputs = files.Outputs(output_path, manifest_path,
                            [path for step in steps for path in step.side_files],
                            inputs=[input_path], stale=_stale(output_path))
    try:
        return _run(outputs, input_path, output_path, steps, from_format=from_format,
                    to_format=to_format, skip_invalid=skip_invalid,
                    manifest_path=manifest_path, argv=argv, workers=workers,
                    dataset=dataset, progress=progress, accept=accept)
    finally:
        outputs.release()


def _run(outputs: files.Outputs, input_path: str, output_path: str, steps: list[Step], *,
         from_format: str | None, to_format: str | None, skip_invalid: bool,
         manifest_path: str | None, argv: list[str] | None, workers: int,
         dataset: dict[str, Any] | None, progress: bool,
         accept: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    try:
        in_format = source.format
        made_for = [step.output_format for step in steps if step.output_format]
        out_format = get_format(to_format or (made_for[-1] if made_for else None)
                                or source.default_output)
        sink = open_sink(output_path, out_format, skip_invalid=skip_invalid, inputs=[input_path])
        tokenizer = counting_tokenizer(steps)
        if tokenizer is not None:
            sink.encoder.tap = Tap(cached_tokenizer(tokenizer))
        bar = Progress(input_path, enabled=progress)
        try:
            if (by_lines(source) and isinstance(sink, Sink)
                    and not any(step.op in ORDERED for step in steps)
                    and parallel.can_run_parallel(input_path, workers)):
                source.close()
                with tempfile.TemporaryDirectory(prefix="promptkit-") as scratch:
                    job = parallel.Job(input_path, scratch, in_format.name, out_format.name,
                                       steps, skip_invalid, source.name, tokenizer)
                    facts = parallel.run_file(input_path, job, sink, workers, bar)
            elif (len(steps) == 1 and steps[0].op == "hash_trace" and by_lines(source)
                  and parallel.can_run_parallel(input_path, workers)):
                facts = _hash_trace_in_workers(source, input_path, steps[0], sink, workers,
                                               skip_invalid)
            else:
                if isinstance(source, Source):
                    source.on_read = bar.advance
                facts = _run_here(source, sink, steps)
            for step in steps:
                if step.check is not None:
                    step.check(facts.records_read)
            sink.flush()
            inputs = [{"path": source.name, "format": in_format.name,
                       "records": facts.records_read, "sha256": facts.sha256.hexdigest()}]
            if isinstance(source, DatasetSource):
                inputs[0]["path"] = source.path
            if isinstance(source, DatasetSource | ColumnSource):
                inputs[0]["dataset"] = source.describe()
            else:
                inputs[0].update(source.shape())
            result = describe(inputs, facts.skipped, sink, steps, argv)
            if accept is not None:
                accept(result)
            _put_in_place(outputs, sink, steps, manifest_path, result)
        except BaseException:
            sink.abort()
            raise
        finally:
            bar.close()
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
    :mod:`promptkit.synth`); return the manifest, also written to ``manifest_path``
    (as :func:`run` writes them)."""
    from .synth import GENERATORS

    make, info = GENERATORS[name]
    if manifest_path == STDIO and output_path == STDIO:
        raise PromptkitError("the output and the manifest cannot both go to stdout")
    generator = {"name": name, "params": params, "info": info(params)}
    outputs = files.Outputs(output_path, manifest_path, stale=_stale(output_path))
    try:
        sink = Sink(output_path, get_format(to_format))
        tokenizer = params.get("tokenizer")
        if tokenizer is not None:
            sink.encoder.tap = Tap(cached_tokenizer(tokenizer))
        try:
            sink.write_all(make(**params))
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
                dataset: dict[str, Any] | None = None) -> Source | DatasetSource:
    """The source of ``path``: a Hugging Face dataset, or JSONL (a file or stdin; a JSON
    array is read as its lines would be), read by its line format or, given column
    options, by columns (:mod:`promptkit.columns`). A JSON array file is read through
    ``datasets`` when options that choose rows are given (``--limit``, ``--shuffle``), and
    by columns when its objects fit no line format (as a parquet file's columns are)."""
    local = path != STDIO and from_format is None
    if local and is_dataset(path):
        return DatasetSource(path, DatasetOptions(**(dataset or {})), skip_invalid=skip_invalid)
    rows = {k: v for k, v in (dataset or {}).items() if k not in COLUMN_OPTIONS}
    if rows and local and is_json_array(path):
        return DatasetSource(path, DatasetOptions(**(dataset or {})), skip_invalid=skip_invalid)
    if rows:
        option = "--" + next(iter(rows)).replace("_", "-")
        raise PromptkitError(f"{display_name(path)}: a JSONL input; {option} is for datasets "
                             "(parquet, dataset folders, hf:OWNER/NAME)")
    if dataset:
        if from_format is not None:
            option = "--" + next(iter(dataset)).replace("_", "-")
            raise PromptkitError(f"{display_name(path)}: --from {from_format} reads lines as "
                                 f"that format; {option} maps them by columns: give one")
        return ColumnSource(path, DatasetOptions(**dataset), skip_invalid=skip_invalid)
    try:
        return Source(path, from_format, skip_invalid=skip_invalid)
    except FormatUnknownError:
        if not (local and is_json_array(path)):
            raise
    return ColumnSource(path, DatasetOptions(), skip_invalid=skip_invalid)


def by_lines(source: Source | DatasetSource) -> TypeGuard[Source]:
    """Whether ``source`` is JSONL of a line format, whose chunks worker processes can
    read on their own (one read by columns carries its timestamps from line to line)."""
    return isinstance(source, Source) and not isinstance(source, ColumnSource)


def open_sink(path: str, fmt: Any, *, skip_invalid: bool = False,
              inputs: list[str] | None = None) -> Sink | TableSink:
    if fmt.name in TABLE_FORMATS:
        return TableSink(path, fmt, skip_invalid=skip_invalid, inputs=inputs or [])
    return Sink(path, fmt, skip_invalid=skip_invalid, inputs=inputs or [])


def _hash_trace_in_workers(source: Source, path: str, step: Step, sink: Sink | TableSink,
                           workers: int, skip_invalid: bool) -> parallel.InputFacts:
    """``hash-trace`` of a large file: workers tokenize and hash chunks; the ids are
    numbered here, in file order (so the bytes are those of one process)."""
    from .hashtrace import HashIds, hashed_list

    source.close()
    facts = parallel.InputFacts()
    numbering = HashIds()

    def records() -> Iterator[Record]:
        for (part, rejected), read, skipped in parallel.map_records(
                path, hashed_list, (step.params, skip_invalid), workers, facts.sha256,
                fmt=source.format.name, name=source.name, skip_invalid=skip_invalid):
            facts.records_read += read
            facts.skipped += skipped + rejected
            for record, digests in part:
                record.hash_ids = numbering.number(digests)
                yield record

    try:
        sink.write_all(records())
    except InvalidRecordError as exc:
        raise (exc.located(source.name) if exc.path is None else exc) from None
    return facts


def _run_here(source: Source | DatasetSource, sink: Sink | TableSink,
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
        raise (exc.located(source.name) if exc.path is None else exc) from None
    return parallel.InputFacts(source.records_read, source.skipped, source.sha256)


def describe(inputs: list[dict[str, Any]], skipped_reading: list[str], sink: Sink | TableSink,
             steps: list[Step], argv: list[str] | None,
             generator: dict[str, Any] | None = None) -> dict[str, Any]:
    out_format = sink.format
    skipped = sorted(skipped_reading + sink.skipped
                     + [line for step in steps for line in getattr(step.state, "skipped", [])],
                     key=_line_of)
    distinct = sink.distinct_records()
    return {
        "schema": manifest.SCHEMA,
        "promptkit_version": __version__,
        "created": manifest.now_utc(),
        "argv": list(argv if argv is not None else sys.argv),
        "inputs": inputs,
        **({"generator": generator} if generator is not None else {}),
        "output": {
            "path": sink.name,
            "format": out_format.name,
            "records": sink.records_written,
            "sha256": sink.sha256.hexdigest(),
            **compressed_output(sink),
        },
        "steps": [step.as_dict() for step in steps],
        "skipped": manifest.skipped_section(skipped),
        "side_outputs": [
            {"path": path, "sha256": manifest.text_sha256(text)}
            for step in steps for path, text in step.side_files.items()
        ],
        "aiperf": aiperf_section(sink.name, out_format.name, out_format.aiperf_type, distinct,
                                 [arg for step in steps for arg in step.aiperf_args],
                                 getattr(sink, "compression", None)),
        "warnings": warnings_for(steps, out_format.name, inputs, sink),
        **token_section(sink),
    }


def compressed_output(sink: Sink | TableSink) -> dict[str, Any]:
    """A compressed output's codec and the sha256 of the lines in it (which ``rebuild``
    compares when another zlib or zstd compressed the same lines differently)."""
    codec = getattr(sink, "compression", None)
    if codec is None:
        return {}
    assert isinstance(sink, Sink) and sink.content_sha256 is not None
    return {"compression": codec, "content_sha256": sink.content_sha256.hexdigest()}


def token_section(sink: Sink | TableSink) -> dict[str, Any]:
    """The output's token statistics, when a step named a tokenizer."""
    tap = sink.encoder.tap
    if tap is None:
        return {}
    assert tap.tokenizer is not None
    return {"token_stats": {"tokenizer": tap.tokenizer.name, **tap.finish().summary()}}


def _line_of(skipped: str) -> int:
    head = skipped.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def aiperf_section(path: str, fmt: str, aiperf_type: str | None, distinct: int,
                   extra_args: list[str] | None = None,
                   codec: str | None = None) -> dict[str, Any]:
    # AIPerf reads gzip by its first bytes, except in random_pool; nothing else compressed.
    unreadable = codec is not None and (codec != "gzip" or aiperf_type == "random_pool")
    loaded = compression.strip_suffix(path) if unreadable else path
    args = ["--input-file", loaded, "--custom-dataset-type", aiperf_type] if aiperf_type else []
    section: dict[str, Any] = {
        "custom_dataset_type": aiperf_type,
        "args": args + (extra_args or []),
        "distinct_records": distinct,
        "note": (
            f"At most {distinct} requests, warmup included, never repeat a prompt: "
            "beyond that AIPerf wraps around the file and the repeats hit the prefix cache."
        ),
    }
    if aiperf_type == "multi_turn":
        section["note"] = (
            f"{distinct} distinct conversations. AIPerf sends one request a turn and counts "
            "turns in --request-count, each turn with the conversation's history (the "
            "server's replies too): later turns hit the earlier ones, as 'promptkit check' "
            "predicts. Beyond one pass over the file's turns, warmup included, AIPerf wraps "
            "around and repeats whole conversations, which hit the prefix cache."
        )
    elif aiperf_type is None and fmt in ("sharegpt", "alpaca"):
        section["note"] = (
            f"AIPerf does not load {fmt} files, and their recorded replies are not requests: "
            "'promptkit turns FILE OUT --mode first --tokenizer T' makes one request a "
            "conversation with the first reply's length as output_length (--mode each: an "
            "AIPerf multi_turn session a conversation; --mode history: the whole history)."
        )
    elif aiperf_type is None:
        section["note"] = (
            f"AIPerf does not load {fmt} files; convert with "
            "'promptkit pipe read FILE write --to single_turn OUT' (or multi_turn)."
        )
    elif fmt == "openai":
        section["note"] += (
            " AIPerf reads OpenAI chat lines as mooncake_trace and sends only 'messages'"
            " and 'tools' of each line."
        )
    if unreadable and aiperf_type:
        assert codec is not None
        section["note"] += (
            f" AIPerf does not read {codec}-compressed {aiperf_type} files: decompress it "
            f"first ({compression.CODECS[codec].unpack} {path}), then load {loaded}."
        )
    return section


#: The fields of an OpenAI chat line that AIPerf (loading it as mooncake_trace) sends.
SENT_FROM_OPENAI = frozenset({"messages", "tools"})
#: Nonce positions that put the nonce into a record's own system message, when it has one.
_INTO_SYSTEM = ("start", "system", "every-turn")


def warnings_for(steps: list[Step], out_format: str, inputs: list[dict[str, Any]] | None = None,
                 sink: Sink | TableSink | None = None) -> list[str]:
    """What the manifest (and stderr) warns of: files AIPerf will not send as written,
    and padding that shares nothing."""
    warnings = []
    salted = False
    for step in steps:
        if step.op == "nonce" and step.params.get("at") == "salt" and out_format in (
            "openai", "sharegpt", "prompt"
        ):
            salted = True
            warnings.append(
                f"cache_salt is written into {out_format} lines, but AIPerf does not send it "
                "from this format; write --to single_turn, multi_turn or mooncake_trace"
            )
    for i, step in enumerate(steps):
        if isinstance(step.state, PadState) and step.state.nearly_all_distinct():
            warnings.append(_pad_warning(step.state, steps[:i], (inputs or [{}])[0]))
    fields = sink.encoder.fields if sink is not None else None
    if fields and out_format == "openai":
        unsent = sorted(fields - SENT_FROM_OPENAI - ({"cache_salt"} if salted else set()))
        if unsent:
            warnings.append(_unsent_warning(unsent))
    return warnings


def _unsent_warning(fields: list[str]) -> str:
    names = ", ".join(f"'{name}'" for name in fields)
    many = len(fields) > 1
    them, gets = ("them", "gets none of them") if many else ("it", "never gets it")
    text = (f"request field{'s' if many else ''} {names} {'are' if many else 'is'} written "
            "into openai lines, but AIPerf loads them as mooncake_trace and sends only "
            f"'messages' and 'tools': the server {gets}; write --to mooncake_trace (or "
            f"single_turn, multi_turn) to carry {them} in 'extra', which AIPerf merges into "
            "every request body")
    options = {"model": "--model", "stream": "--streaming"}
    overriding = [name for name in options if name in fields]
    if overriding:
        text += (" (there " + " and ".join(f"'{name}'" for name in overriding)
                 + " would override AIPerf's "
                 + " and ".join(options[name] for name in overriding) + ")")
    return text


def _pad_warning(state: PadState, earlier: list[Step], read: dict[str, Any]) -> str:
    records, distinct = state.own_prompts()
    text = (f"pad: the records' own system prompts are nearly all distinct ({distinct} "
            f"distinct in {records} records), so the padded prompts are too and hardly any "
            "request shares one with another")
    nonces = [s.params.get("at") for s in earlier if s.op == "nonce"]
    source = "an earlier stage of this pipe, 'nonce --at AT',"
    if not nonces:
        made = _made_by(read)
        if made is not None:
            nonces = [s.get("params", {}).get("at") for s in made.get("steps", [])
                      if isinstance(s, dict) and s.get("op") == "nonce"]
            source = f"{made['path']} says the input was made by 'nonce --at AT', which"
    at = next((a for a in nonces if a in _INTO_SYSTEM), None)
    if at is not None:
        text += (f"; {source.replace('--at AT', f'--at {at}')} put a nonce into each "
                 "record's own system prompt: pad first, then 'nonce --at user', which keeps "
                 "the padded prompt shared and every user turn unique")
    return text


def _made_by(read: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest beside an input file (``IN.manifest.json``) with ``path`` added, when
    the bytes read (``read``: the run's account of its input) are the ones it describes."""
    path = read.get("path")
    if not path or path == display_name(STDIO) or "dataset" in read:
        return None
    found = manifest.default_path(path)
    try:
        recorded = manifest.read(found)
        matches = recorded["output"]["sha256"] == read.get("sha256")
    except (PromptkitError, KeyError, TypeError):
        return None
    return {**recorded, "path": found} if matches else None


def rebuild(manifest_path: str, output_path: str, *, input_path: str | None = None,
            argv: list[str] | None = None, workers: int | None = None,
            allow_paths: bool = False) -> dict[str, Any]:
    """Re-make a file from its manifest and input; raise if the bytes differ.

    A manifest is another person's input: one that names files outside its own folder
    (an input, a filler or system prompt file; a ``hf:`` input, which is a download) is
    refused, naming them, before anything is read, unless ``allow_paths`` (the input:
    ``input_path``, which replaces the one the manifest names)."""
    recorded = manifest.read(manifest_path)
    outside = paths_outside(manifest_path, recorded, input_path)
    if outside and not allow_paths:
        named = ", ".join(f"{what} {path}" for what, path in outside)
        raise PromptkitError(f"{manifest_path}: names files outside its folder, not read: "
                             f"{named} (--allow-paths reads them; --input PATH gives the "
                             "input)")
    own_manifest = None if output_path == STDIO else manifest.default_path(output_path)

    def same_file(result: dict[str, Any]) -> None:
        """Refuse a differing result before it is put in place: no OUT, no manifest."""
        problem = rebuilt_problem(recorded, result)
        if problem is not None:
            raise PromptkitError(f"{output_path}: {problem}; not written")

    if "generator" in recorded:
        return _regenerate(manifest_path, recorded, output_path, own_manifest, argv,
                           same_file)
    return _rerun(manifest_path, recorded, output_path, own_manifest, input_path, argv,
                  workers, same_file)


def rebuilt_problem(recorded: dict[str, Any], result: dict[str, Any]) -> str | None:
    """How a rebuilt file (its manifest ``result``) differs from the one ``recorded``
    describes: its bytes, its side files or its AIPerf arguments (paths of its own files
    aside: a rebuilt file has its own name); ``None`` when it is the same."""
    want = recorded["output"]["sha256"]
    # A compressed file: the same lines, compressed by another zlib or zstd, may differ
    # in bytes; the lines are what was made.
    lines = recorded["output"].get("content_sha256")
    same_lines = lines is not None and result["output"].get("content_sha256") == lines
    if result["output"]["sha256"] != want and not same_lines:
        return (f"rebuilt file differs from the manifest "
                f"(sha256 {result['output']['sha256']}, manifest says {want})")
    for what, made, described in (
            ("side files", _side_sha256s(result), _side_sha256s(recorded)),
            ("AIPerf arguments", _args_shape(result), _args_shape(recorded))):
        if made != described:
            return f"rebuilt {what} differ from the manifest ({made}, manifest says {described})"
    return None


#: AIPerf arguments whose value is a path of this run's own files.
_PATH_ARGS = frozenset({"--input-file", "--system-prompt-file"})


def _args_shape(described: dict[str, Any]) -> list[str]:
    """A manifest's AIPerf arguments with the paths of its own files left out (a rebuilt
    file has its own name)."""
    args = described.get("aiperf", {}).get("args", [])
    return [a if i == 0 or args[i - 1] not in _PATH_ARGS else "PATH" for i, a in enumerate(args)]


def _side_sha256s(described: dict[str, Any]) -> list[str]:
    return [str(side.get("sha256")) for side in described.get("side_outputs", [])
            if isinstance(side, dict)]


def paths_outside(manifest_path: str, recorded: dict[str, Any],
                  input_path: str | None = None) -> list[tuple[str, str]]:
    """The files ``rebuild`` would read that are outside the manifest's own folder, as
    ``(field, path)``: the input (unless ``input_path`` replaces it; a ``hf:`` input is a
    download), and every file a step's or the generator's parameters name. A path is
    taken as ``rebuild`` reads it (relative to the working folder), links resolved."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(manifest_path)))
    named: list[tuple[str, str]] = []
    if input_path is None:
        named += [(f"inputs[{i}].path", entry["path"])
                  for i, entry in enumerate(recorded["inputs"])
                  if entry["path"] != display_name(STDIO)]
    described = [(f"steps[{i}].params", step["params"])
                 for i, step in enumerate(recorded["steps"])]
    if "generator" in recorded:
        described.append(("generator.params", recorded["generator"]["params"]))
    for where, params in described:
        named += [(f"{where}.{key}", params[key]) for key in ("filler_file", "system_prompt_file")
                  if isinstance(params.get(key), str)]

    def inside(path: str) -> bool:
        if path.startswith("hf:"):
            return False
        real = os.path.realpath(path)
        return os.path.commonpath([real, folder]) == folder

    return [(what, path) for what, path in named if not inside(path)]


def _regenerate(manifest_path: str, recorded: dict[str, Any], output_path: str,
                own_manifest: str | None, argv: list[str] | None,
                accept: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from .synth import GENERATORS, checked_params

    generator = recorded["generator"]
    if generator["name"] not in GENERATORS:
        raise PromptkitError(f"{manifest_path}: unknown generator {generator['name']!r}")
    try:
        params = checked_params(generator["name"], generator["params"])
    except PromptkitError as exc:
        raise PromptkitError(f"{manifest_path}: generator.params: {exc}") from None
    return generate(generator["name"], params, output_path,
                    to_format=recorded["output"]["format"], manifest_path=own_manifest,
                    argv=argv, accept=accept)


def _same_rows(dataset: dict[str, Any] | None) -> dict[str, Any] | None:
    """Dataset options that read the rows a manifest describes: a hub dataset at the
    commit it was read at, not wherever its branch points now."""
    if dataset is None:
        return None
    options = dict(dataset["options"])
    if dataset.get("revision"):
        options["revision"] = dataset["revision"]
    return options


def _rerun(manifest_path: str, recorded: dict[str, Any], output_path: str,
           own_manifest: str | None, input_path: str | None, argv: list[str] | None,
           workers: int | None, accept: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from dataclasses import fields

    inputs = recorded["inputs"]
    if len(inputs) != 1:
        raise PromptkitError(f"{manifest_path}: expected one input, found {len(inputs)}")
    source = input_path or inputs[0]["path"]
    if source == display_name(STDIO):
        raise PromptkitError(f"{manifest_path}: the input was stdin; name it with --input")
    dataset = inputs[0].get("dataset")
    options = _same_rows(dataset)
    known = {f.name for f in fields(DatasetOptions)}
    for key in options or {}:
        if key not in known:
            raise PromptkitError(f"{manifest_path}: inputs[0].dataset.options: unknown "
                                 f"option {key!r}")
    from_format = None if dataset is not None else inputs[0]["format"]
    where = Where(source, output_path, from_format, options)
    steps = []
    for i, step in enumerate(recorded["steps"]):
        try:
            steps.append(make(step["op"], step["params"], where))
        except PromptkitError as exc:
            raise PromptkitError(f"{manifest_path}: steps[{i}]: {exc}") from None
    return run(
        source,
        output_path,
        steps,
        from_format=from_format,
        dataset=options,
        to_format=recorded["output"]["format"],
        skip_invalid=recorded["skipped"]["count"] > 0,
        manifest_path=own_manifest,
        argv=argv,
        workers=workers,
        accept=accept,
    )


def verify_output(path: str, manifest_path: str | None = None) -> list[str]:
    """The differences between a written file and its manifest (see
    :func:`promptkit.manifest.verify`): JSONL files by their bytes and lines, tables
    (parquet, hf-dir) as :class:`~promptkit.datasets_io.TableSink` hashed them."""

    def facts(file: str, fmt: str) -> tuple[str, int]:
        if fmt in TABLE_FORMATS:
            from .datasets_io import table_facts

            return table_facts(file, fmt)
        return manifest.file_facts(file)

    return manifest.verify(path, manifest_path, facts)


def dataset_stats(input_path: str, *, from_format: str | None = None,
                  tokenizer: str | None = None, threads: int | None = None,
                  skip_invalid: bool = False, dataset: dict[str, Any] | None = None,
                  plot: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """The statistics of a file (token figures with a tokenizer), as a dict."""
    from . import stats
    from .tokenizers import load_tokenizer

    if plot is not None:
        files.writable(plot)
        files.refuse_clashes([(plot, "--plot")], [input_path])
    loaded = load_tokenizer(tokenizer) if tokenizer else None
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    try:
        if (workers is not None and by_lines(source)
                and parallel.can_run_parallel(input_path, workers)):
            collected = _stats_in_workers(source, input_path, tokenizer, skip_invalid, workers)
        else:
            collected = stats.collect(source.records(), loaded, threads=threads)
    finally:
        source.close()
    if plot is not None:
        from .plots import stats_plot

        shared = [p for p in collected.system_prompts.values() if p.count > 1]
        prefix = max(shared, key=lambda p: p.count).tokens if shared else None
        stats_plot(plot, collected.tokens, prefix, f"{source.name}: prompt lengths"
                   + (f" ({tokenizer})" if tokenizer else ""))
    return {
        "input": {"path": source.name, "format": source.format.name,
                  "sha256": source.sha256.hexdigest(),
                  **({"dataset": source.describe()}
                     if isinstance(source, DatasetSource | ColumnSource)
                     else {})},
        "tokenizer": tokenizer,
        "skipped": manifest.skipped_section(source.skipped),
        **collected.summary(),
    }


def check_file(input_path: str, *, from_format: str | None = None,
               tokenizer: str | None = None, skip_invalid: bool = False,
               dataset: dict[str, Any] | None = None, per_request: str | None = None,
               plot: str | None = None, workers: int | None = None,
               system_prompt_file: str | None = None, use_manifest: bool = True,
               **options: Any) -> dict[str, Any]:
    """The predicted prefix-cache hits of sending a file's records (see
    :mod:`promptkit.check`), as a dict; ``per_request`` names a JSONL file to get one
    line a profiled request.

    What AIPerf adds to every request is applied: ``system_prompt_file`` (its
    ``--system-prompt-file``), or else the AIPerf arguments of the file's own manifest
    (``IN.manifest.json``) when it matches the file and ``use_manifest`` is true."""
    from .check import CheckOptions, check_records
    from .tokenizers import cached_tokenizer

    for path in (per_request, plot):
        if path is not None:
            files.writable(path)
    files.refuse_clashes([(path, what) for path, what in ((per_request, "--per-request"),
                                                          (plot, "--plot")) if path],
                         [input_path])
    applied = aiperf_arguments(input_path, system_prompt_file, use_manifest)
    options["system_prompt"] = applied.pop("system_prompt")
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    # AIPerf loads OpenAI chat lines as mooncake_trace and sends only messages and tools.
    options["sends_extra"] = source.format.name != "openai"
    loaded = cached_tokenizer(tokenizer) if tokenizer else None
    skipping = Skipping(skip_invalid, "check")  # records read but not sendable as they are
    try:
        if (workers is not None and by_lines(source)
                and parallel.can_run_parallel(input_path, workers)):
            report = _check_in_workers(source, input_path, CheckOptions(**options), loaded,
                                       tokenizer, skipping, workers)
        else:
            report = check_records(source.records(), options=CheckOptions(**options),
                                   tokenizer=loaded, tokenizer_spec=tokenizer,
                                   skipping=skipping)
    except InvalidRecordError as exc:
        raise (exc.located(source.name) if exc.path is None else exc) from None
    finally:
        source.close()
    if plot is not None:
        from .plots import check_plot

        check_plot(plot, report.hits, report.lengths, f"{source.name}: predicted prefix-cache "
                   f"hits ({report.options.engine}, block {report.block_size})")
    if per_request is not None:
        import orjson

        files.write_text(per_request, "".join(
            orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE).decode()
            for row in report.per_request()))
    return {"input": {"path": source.name, "format": source.format.name,
                      "sha256": source.sha256.hexdigest()},
            "tokenizer": tokenizer,
            "skipped": manifest.skipped_section(
                sorted(source.skipped + skipping.skipped, key=_line_of)),
            **report.summary(), "aiperf_args": applied}


def aiperf_arguments(input_path: str, system_prompt_file: str | None,
                     use_manifest: bool = True) -> dict[str, Any]:
    """The AIPerf arguments ``check`` applies to a file: ``applied`` (the arguments),
    ``source`` (``option``, ``manifest`` or ``None``), ``system_prompt`` (its text), and
    ``note`` when a manifest beside the file was not used."""
    from . import check

    out: dict[str, Any] = {"applied": [], "source": None, "system_prompt": None}
    if system_prompt_file is not None:
        out.update(applied=["--system-prompt-file", system_prompt_file], source="option",
                   system_prompt=check.read_prompt(system_prompt_file,
                                                   "--system-prompt-file"))
        return out
    path = manifest.default_path(input_path)
    if not use_manifest or input_path == STDIO or is_dataset(input_path):
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
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--system-prompt":
            out.update(applied=[flag, value], source="manifest", system_prompt=value)
        elif flag == "--system-prompt-file":
            found = manifest.named_file(str(value), input_path) or str(value)
            out.update(applied=[flag, found], source="manifest",
                       system_prompt=check.read_prompt(found,
                                                       f"{path}: --system-prompt-file"))
    return out


def _stats_in_workers(source: Source, path: str, tokenizer: str | None, skip_invalid: bool,
                      workers: int) -> Any:
    """Statistics of a large file, a chunk a worker process, merged in file order."""
    from .stats import Stats, stats_of

    source.close()
    source.sha256 = hashlib.sha256()  # the chunks hash the whole file again
    total = Stats()
    for part, read, skipped in parallel.map_records(
            path, stats_of, (tokenizer,), workers, source.sha256,
            fmt=source.format.name, name=source.name, skip_invalid=skip_invalid):
        total.merge(part)
        source.count += read
        source.skipped += skipped
    return total


def _check_in_workers(source: Source, path: str, options: Any, tokenizer: Any,
                      spec: str | None, skipping: Skipping, workers: int) -> Any:
    """``check`` of a large file: workers tokenize and hash chunks; the cache is
    simulated here, in file order (the same report as one process)."""
    from .check import Setup

    first = next(source.records(), None)  # from the lines already read to detect the format
    source.close()
    if first is None:
        raise PromptkitError(f"{source.name}: empty file: no records")
    setup = Setup(first, options, tokenizer, spec, Skipping(skipping.skip_invalid, skipping.op))
    source.sha256 = hashlib.sha256()
    source.count = 0
    source.skipped = []  # the chunks read the whole file again

    def pairs() -> Iterator[Any]:
        for (part, rejected), read, skipped in parallel.map_records(
                path, setup.entry_list, (), workers, source.sha256,
                fmt=source.format.name, name=source.name, skip_invalid=skipping.skip_invalid):
            source.count += read
            source.skipped += skipped
            skipping.skipped += rejected
            yield from part

    return setup.replay(pairs())


def system_prompts(input_path: str, from_format: str | None = None,
                   dataset: dict[str, Any] | None = None) -> list[str]:
    """The distinct system prompts that begin the records of a file, in order."""
    from .records import first_text

    seen: dict[str, None] = {}
    source = open_source(input_path, from_format, skip_invalid=True, dataset=dataset)
    try:
        for record in source.records():
            if record.messages and record.messages[0].role == "system":
                seen.setdefault(first_text(record.messages[0].content) or "", None)
    finally:
        source.close()
    return list(seen)
