"""``promptkit check``: the predicted prefix-cache hits of sending a file's records, on
this machine (:func:`check_file`) or a Ray cluster, with the AIPerf arguments the file's
manifest (or ``--system-prompt-file``) adds to every request (:func:`aiperf_arguments`).

:func:`check` is the command as the CLI runs it, callable from Python with its defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from promptkit.commands.common import ray_ready, say, shuffled
from promptkit.commands.plots import check_plot
from promptkit.commands.steps import check_params
from promptkit.core.errors import (
    BadOptionError,
    InvalidRecordError,
    PromptkitError,
    Skipping,
    skipped_section,
)
from promptkit.core.progress import is_wanted as progress_is_wanted
from promptkit.core.progress import wanted as progress_wanted
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.formats.aiperf import block_size_in
from promptkit.io import files
from promptkit.io.datasets import is_dataset
from promptkit.io.files import STDIO
from promptkit.io.shards import is_many
from promptkit.ops import check as checking
from promptkit.ops.check import CheckOptions, Setup, check_records, hit_rate_problem
from promptkit.provenance import manifest
from promptkit.provenance.describe import line_of
from promptkit.runner import workers as parallel
from promptkit.runner.pipeline import (
    file_progress,
    open_source,
    source_progress,
)


def check(input_path: str, *, from_format: str | None = None, skip_invalid: bool = False,
          dataset: dict[str, Any] | None = None, seed: int | None = None,
          per_request: str | None = None, plot: str | None = None, workers: int = 1,
          use_manifest: bool = True, ray: str | None = None, progress: bool | None = None,
          note: Callable[[str], None] = say, **options: Any) -> dict[str, Any]:
    """``promptkit check IN``: the report, as ``--json`` prints it.

    ``options`` are the check's own options (``tokenizer``, ``chat_template``,
    ``engine``, ``block_size``, ``capacity_tokens``, ``requests``, ``warmup``,
    ``system_prompt_file``, ...: see :func:`promptkit.commands.steps.check_params`).
    ``ray`` (``--ray ADDRESS``) computes the report of an unbounded cache on a Ray
    cluster; a check that needs the requests in order runs here instead, and ``note``
    says why (on stderr by default). ``dataset`` holds the dataset options
    (``shuffle=True`` shuffles with ``seed``, random when not given). Whether the report
    passes ``--max-hit-rate`` is :func:`hit_rate_failure`.
    """
    params = check_params(**options)
    tokenizer = params.pop("tokenizer")
    params.pop("max_total_hit_rate", None)  # (a bound on the report: hit_rate_failure)
    system_prompt_file = params.pop("system_prompt_file", None)
    summary = None
    if ray is not None:
        for option, value in (("--plot", plot), ("--per-request", per_request)):
            if value is not None:
                raise BadOptionError(f"{option} writes every request's figures on one "
                                     "machine: run it without --ray")
        ray_ready(ray, dataset=dataset)
        from promptkit.ray.aggregate import NeedsSequence  # (imports numpy: on demand)
        from promptkit.ray.commands import check_on_ray

        applied = aiperf_arguments(input_path, system_prompt_file, use_manifest)
        try:
            summary = check_on_ray(input_path, address=ray, from_format=from_format,
                                   tokenizer=tokenizer, skip_invalid=skip_invalid,
                                   aiperf_args=applied, **params)
        except NeedsSequence as exc:
            note(f"check: {exc}: ran on one node")
    if summary is None:
        summary = check_file(input_path, from_format=from_format, tokenizer=tokenizer,
                             skip_invalid=skip_invalid, dataset=shuffled(dataset, seed),
                             per_request=per_request, plot=plot, workers=workers,
                             system_prompt_file=system_prompt_file, use_manifest=use_manifest,
                             progress=progress, **params)
    return summary


def hit_rate_failure(summary: dict[str, Any], max_hit_rate: float | None,
                     max_total_hit_rate: float | None) -> str | None:
    """Why a report fails ``--max-hit-rate`` / ``--max-total-hit-rate`` (the CLI's
    exit 1), or ``None``."""
    problem = hit_rate_problem(summary, max_hit_rate, max_total_hit_rate)
    return None if problem is None else f"{summary['input']['path']}: {problem}"


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
            chunked = source.chunk_files()
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
        raise source.located(exc) from None
    finally:
        source.close()
    wrote = []
    if plot is not None:
        check_plot(plot, report.hits, report.lengths, f"{source.name}: predicted prefix-cache "
                   f"hits ({report.options.engine}, block {report.block_size})")
        wrote.append(plot)
    if per_request is not None:
        files.write_text(per_request, "".join(
            orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE).decode()
            for row in report.per_request()))
        wrote.append(per_request)
    return {"input": {"path": source.name, "format": source.format.name,
                      "sha256": source.sha256.hexdigest()},
            "tokenizer": tokenizer,
            "skipped": skipped_section([source.name_line(x) for x in sorted(
                source.skipped + skipping.skipped, key=line_of)]),
            **report.summary(), "aiperf_args": applied, "wrote": wrote}


def aiperf_arguments(input_path: str, system_prompt_file: str | None,
                     use_manifest: bool = True) -> dict[str, Any]:
    """The AIPerf arguments ``check`` applies to a file: ``applied`` (the arguments),
    ``source`` (``option``, ``manifest`` or ``None``), ``system_prompt`` (its text), and
    ``note`` when a manifest beside the file was not used."""
    out: dict[str, Any] = {"applied": [], "source": None, "system_prompt": None}
    if system_prompt_file is not None:
        out.update(applied=["--system-prompt-file", system_prompt_file], source="option",
                   system_prompt=checking.read_prompt(system_prompt_file,
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
                       system_prompt=checking.read_prompt(found,
                                                          f"{path}: --system-prompt-file"))
    return out


def _check_in_workers(source: Any, path: str | list[str], options: Any, tokenizer: Any,
                      spec: str | None, skipping: Skipping, workers: int) -> Any:
    """``check`` of a large file: workers tokenize and hash chunks; the cache is
    simulated here, in file order (the same report as one process)."""
    first = next(source.records(), None)  # from the lines already read to detect the format
    if first is None:
        source.close()
        raise PromptkitError(f"{source.name}: empty file: no records")
    setup = Setup(first, options, tokenizer, spec, Skipping(skipping.skip_invalid, skipping.op))
    source.close()  # the workers read it again, from the start
    digest = source.to_workers()

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
    source.from_workers(done)
    return report
