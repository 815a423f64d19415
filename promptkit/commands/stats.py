"""``promptkit stats``: a file's records, conversations, turns, prompt tokens and shared
system prompts, on this machine (:func:`dataset_stats`) or a Ray cluster.

:func:`stats` is the command as the CLI runs it, callable from Python with its defaults.
"""

from __future__ import annotations

from typing import Any

from promptkit.commands.common import ray_ready, shuffled
from promptkit.commands.plots import stats_plot
from promptkit.core.errors import BadOptionError, PromptkitError, skipped_section
from promptkit.core.progress import is_wanted as progress_is_wanted
from promptkit.core.progress import wanted as progress_wanted
from promptkit.core.tokenizers import load_tokenizer
from promptkit.core.words import counted, plural
from promptkit.io import files
from promptkit.io.columns import ColumnSource
from promptkit.io.datasets import DatasetSource
from promptkit.io.shards import ShardedSource
from promptkit.ops.stats import Stats, collect, stats_of
from promptkit.runner import workers as parallel
from promptkit.runner.pipeline import (
    file_progress,
    open_source,
    source_progress,
)
from promptkit.text.templates import TEMPLATES


def stats(input_path: str, *, tokenizer: str | None = None, from_format: str | None = None,
          chat_template: str = "none", threads: int | None = None, workers: int = 1,
          skip_invalid: bool = False, dataset: dict[str, Any] | None = None,
          seed: int | None = None, plot: str | None = None, ray: str | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """``promptkit stats IN``: the statistics, as ``--json`` prints them.

    ``ray`` (``--ray ADDRESS``) counts on a Ray cluster. ``dataset`` holds the dataset
    options (``shuffle=True`` shuffles with ``seed``, random when not given)."""
    if plot is not None and tokenizer is None:
        raise BadOptionError("--plot draws prompt token counts: it needs --tokenizer")
    if chat_template != "none" and tokenizer is None:
        raise BadOptionError("--chat-template needs --tokenizer")
    if ray is not None:
        if plot is not None:
            raise BadOptionError("--plot draws every prompt's length on one machine: "
                                 "run it without --ray")
        ray_ready(ray, dataset=dataset)
        check_stats_options(chat_template, tokenizer)
        from promptkit.ray.commands import stats_on_ray  # (imports numpy: on demand)

        return stats_on_ray(input_path, address=ray, from_format=from_format,
                            tokenizer=tokenizer, skip_invalid=skip_invalid,
                            chat_template=chat_template)
    return dataset_stats(input_path, from_format=from_format, tokenizer=tokenizer,
                         dataset=shuffled(dataset, seed), plot=plot, workers=workers,
                         chat_template=chat_template, threads=threads,
                         skip_invalid=skip_invalid, progress=progress)


def check_stats_options(chat_template: str, tokenizer: str | None) -> None:
    """``stats``' template options, as it checks them before reading (with ``--ray`` too)."""
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
    check_stats_options(chat_template, tokenizer)
    if plot is not None:
        files.writable(plot)
        files.refuse_clashes([(plot, "--plot")], [input_path])
    loaded = load_tokenizer(tokenizer) if tokenizer else None
    source = open_source(input_path, from_format, skip_invalid=skip_invalid, dataset=dataset)
    label = "counting tokens" if tokenizer else "counting"
    try:
        with progress_wanted(progress_is_wanted() if progress is None else progress):
            chunked = source.chunk_files()
            if (workers is not None and chunked is not None
                    and parallel.can_run_parallel(chunked, workers)):
                collected = _stats_in_workers(source, chunked, tokenizer, skip_invalid,
                                              workers, chat_template, label)
            else:
                with source_progress(label, source):
                    collected = collect(source.records(), loaded, threads=threads,
                                        chat_template=chat_template, tokenizer_spec=tokenizer)
    finally:
        source.close()
    summary = collected.summary()
    warnings = []
    if collected.no_text:
        lines = ", ".join(source.name_line(str(n)) for n in collected.no_text_lines)
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
        "skipped": skipped_section([source.name_line(x) for x in source.skipped]),
        **summary,
        "warnings": warnings,
        "wrote": wrote,
    }


def _stats_in_workers(source: Any, path: str | list[str], tokenizer: str | None,
                      skip_invalid: bool, workers: int, chat_template: str = "none",
                      label: str = "counting") -> Any:
    """Statistics of a large file (or many), a chunk a worker process, merged in order."""
    source.close()  # the workers read it again, from the start
    digest = source.to_workers()
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
    source.from_workers(done)
    return total
