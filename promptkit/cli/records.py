"""The commands that turn records into records (``nonce``, ``pad``, ``fit``, ``turns``,
``hash-trace``) and ``pipe``, which chains their steps: options in, the work done by
:mod:`promptkit.commands.transform`, the run's lines out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from promptkit.cli.base import (
    PromptkitGroup,
    report,
    report_ray,
    summarize,
)
from promptkit.cli.help import INPUT, OUTPUT, SectionedCommand, SectionedGroup, shared
from promptkit.cli.options import (
    FORMAT_CHOICE,
    OUTPUT_CHOICE,
    SKIP_HELP,
    TO_HELP,
    check_options,
    dataset_options,
    fit_options,
    hash_trace_options,
    io_options,
    keep_replies_option,
    nonce_options,
    pad_options,
    ray_option,
    turns_options,
    workers_option,
)
from promptkit.commands import steps as make
from promptkit.commands.common import manifest_path_for
from promptkit.commands.transform import pipe as run_steps
from promptkit.ops.base import Step

#: The options of :func:`~promptkit.cli.options.io_options` (and ``--seed`` of a
#: shuffled input): where a run reads and writes, not what its step does.
IO = ("input_path", "output_path", "from_format", "to_format", "keep_replies", "skip_invalid",
      "manifest_path", "workers", "dataset", "ray_address")


def io_of(options: dict[str, Any]) -> dict[str, Any]:
    """The run's input and output options, taken out of a command's ``options`` (the
    rest are its step's)."""
    return {name: options.pop(name) for name in IO if name in options}


def run_and_report(steps: list[Step], *, input_path: str, output_path: str,
                   manifest_path: str | None, ray_address: str | None = None,
                   **options: Any) -> None:
    """Run the steps (:func:`promptkit.commands.transform.pipe`) and say what was
    written."""
    result = run_steps(input_path, output_path, steps, manifest_path=manifest_path,
                       ray=ray_address, argv=PromptkitGroup.argv,
                       progress=not PromptkitGroup.quiet, **options)
    summarize(result, manifest_path_for(output_path, manifest_path,
                                        parts=ray_address is not None))
    if ray_address is not None:
        report_ray(result)


def nonce_step(*, template: str, **options: Any) -> Step:
    """``--template`` as typed (``\\n`` and ``\\t`` for a newline and a tab), the
    rest as given."""
    return make.nonce_step(template=template.replace("\\n", "\n").replace("\\t", "\t"),
                           **options)


@click.command(cls=SectionedCommand)
@io_options
@nonce_options
@report
def nonce(**options: Any) -> None:
    """Put a unique nonce at the start of every prompt, so no request hits the prefix cache.

    \b
    Examples:
      promptkit nonce in.jsonl out.jsonl --seed 7
      promptkit nonce in.jsonl out.jsonl --kind timestamp --at user
      promptkit nonce in.jsonl out.jsonl --at salt --copies 4
      cat in.jsonl | promptkit nonce - - > out.jsonl
    """
    io = io_of(options)
    step = nonce_step(**options)
    run_and_report([step], seed=step.params["seed"], **io)


@click.command(cls=SectionedCommand)
@io_options
@pad_options
@report
def pad(**options: Any) -> None:
    """Give records a shared system prompt of exactly N tokens under a tokenizer.

    Pad before a nonce: then 'nonce --at user' keeps the padded prompt shared (a nonce
    at the start is part of each record's own system prompt; pad warns when those are
    nearly all distinct).

    \b
    Examples:
      promptkit pad in.jsonl out.jsonl --tokens 2048 --tokenizer cl100k_base \\
          --system-prompt "You are a helpful assistant." --groups 4
      promptkit pad chat.jsonl out.jsonl --tokens 1024 --tokenizer ./tok_dir
      promptkit pipe read chat.jsonl pad --tokens 1024 --tokenizer cl100k_base \\
          nonce --at user write out.jsonl
    """
    io = io_of(options)
    step = make.pad_step(**options)
    if step.params["into"] == "file" and io["output_path"] == "-":
        raise click.UsageError(make.INTO_FILE)
    run_and_report([step], seed=step.params["seed"], **io)


@click.command(cls=SectionedCommand)
@io_options
@fit_options
@report
def fit(**options: Any) -> None:
    """Make every user text exactly N tokens under a tokenizer (cut, or filled out).

    \b
    Examples:
      promptkit fit in.jsonl out.jsonl --tokens 2048 --tokenizer cl100k_base --seed 1
      promptkit fit in.jsonl out.jsonl --tokens 512,2048 --tokenizer ./tok_dir
      promptkit fit trace.jsonl out.jsonl --tokens input_tokens --tokenizer cl100k_base
    """
    io = io_of(options)
    step = make.fit_step(**options)
    run_and_report([step], seed=step.params["seed"], **io)


@click.command(cls=SectionedCommand)
@io_options
@turns_options
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random, recorded).")
@report
def turns(**options: Any) -> None:
    """Make benchmark requests of recorded conversations (ShareGPT, alpaca, chat logs).

    Each request asks for as many tokens as the recorded reply had (output_length);
    the server makes its own replies. Replies before the first user message, and
    exchanges whose user message or reply is empty, are dropped, and conversations
    with no user message skipped, counted in the manifest.
    The output is mooncake_trace (multi_turn for --mode each) unless --to says otherwise.

    \b
    Examples:
      promptkit turns sharegpt.json requests.jsonl --tokenizer cl100k_base
      promptkit turns sharegpt.json sessions.jsonl --mode each --max-turns 4 --tokenizer T
      promptkit turns chats.jsonl long.jsonl --mode history --max-prompt-tokens 8192 --tokenizer T
    """
    io, seed = io_of(options), options.pop("seed")
    step = make.turns_step(**options)
    run_and_report([step], seed=seed, **io)


@click.command("hash-trace", cls=SectionedCommand)
@click.argument("input_path", metavar="IN")
@click.argument("output_path", metavar="OUT")
@hash_trace_options
@workers_option
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@shared(INPUT, "--skip-invalid", is_flag=True, help=SKIP_HELP)
@shared(OUTPUT, "--manifest", "manifest_path", metavar="PATH",
        help="Where to write the manifest, - for stdout (default: OUT.manifest.json).")
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random, recorded).")
@ray_option
@dataset_options
@report
def hash_trace(seed: int | None, **options: Any) -> None:
    """Turn text records into a mooncake_trace of hash ids: the prefix sharing, no text.

    \b
    Examples:
      promptkit hash-trace prompts/chat.jsonl.example trace.jsonl --tokenizer cl100k_base
      promptkit hash-trace prod.jsonl trace.jsonl --tokenizer ./tok_dir --block-size 64 --rate 2
    """
    io = io_of(options)
    step = make.hash_trace_step(**options)
    run_and_report([step], to_format="mooncake_trace", seed=seed, **io)


# ---------------------------------------------------------------- pipe: one in-process chain


@dataclass
class ReadStage:
    path: str
    from_format: str | None
    skip_invalid: bool
    workers: int | None
    dataset: dict[str, Any]
    seed: int | None = None
    ray_address: str | None = None


@dataclass
class WriteStage:
    path: str
    to_format: str | None
    manifest_path: str | None
    keep_replies: bool = False


@click.group(cls=SectionedGroup, chain=True)
def pipe() -> None:
    """Run several steps in one process, with one manifest covering them all.

    Stages: read IN, then any operations, then write OUT.

    \b
    Example:
      promptkit pipe read in.jsonl nonce --kind uuid --seed 7 write out.jsonl
      promptkit pipe read in.jsonl nonce --at user nonce --at salt write --to single_turn out.jsonl
    """


@pipe.command("read")
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@shared(INPUT, "--skip-invalid", is_flag=True, help=SKIP_HELP)
@workers_option
@ray_option
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random, recorded).")
@dataset_options
@click.argument("path", metavar="IN")
def pipe_read(path: str, from_format: str | None, skip_invalid: bool,
              workers: int | None, ray_address: str | None, seed: int | None,
              dataset: dict[str, Any]) -> ReadStage:
    """Read records from IN (JSONL or a JSON array, compressed or not; - for stdin; a
    Hugging Face dataset; or a folder or quoted glob of JSONL or parquet shards); with
    --ray, the pipe runs on a Ray cluster and OUT is a folder of parts."""
    return ReadStage(path, from_format, skip_invalid, workers, dataset, seed, ray_address)


@pipe.command("nonce")
@nonce_options
@report
def pipe_nonce(**options: Any) -> Step:
    """Put a unique nonce in every prompt (same options as 'promptkit nonce')."""
    return nonce_step(**options)


@pipe.command("pad")
@pad_options
@report
def pipe_pad(**options: Any) -> Step:
    """Give records a shared system prompt of exactly N tokens (options as 'promptkit pad')."""
    return make.pad_step(**options)


@pipe.command("fit")
@fit_options
@report
def pipe_fit(**options: Any) -> Step:
    """Make every user text exactly N tokens (same options as 'promptkit fit')."""
    return make.fit_step(**options)


@pipe.command("turns")
@turns_options
@report
def pipe_turns(**options: Any) -> Step:
    """Make benchmark requests of recorded conversations (options as 'promptkit turns')."""
    return make.turns_step(**options)


@pipe.command("check")
@check_options
@click.option("--max-hit-rate", type=click.FloatRange(0, 1), metavar="X",
              help="Fail the whole pipe, writing nothing, when the predicted hit rate "
                   "across conversations is above X.")
@report
def pipe_check(max_hit_rate: float | None, **options: Any) -> Step:
    """Predict the prefix-cache hits of the records at this point (options as 'promptkit
    check'); the report goes into the manifest."""
    return make.check_step(max_hit_rate=max_hit_rate, **options)


@pipe.command("hash-trace")
@hash_trace_options
@report
def pipe_hash_trace(**options: Any) -> Step:
    """Turn the records into hash ids of their blocks (options as 'promptkit
    hash-trace'); written as mooncake_trace unless 'write --to' says otherwise."""
    return make.hash_trace_step(**options)


@pipe.command("write")
@shared(OUTPUT, "--to", "to_format", type=OUTPUT_CHOICE, help=TO_HELP)
@keep_replies_option
@shared(OUTPUT, "--manifest", "manifest_path", metavar="PATH",
        help="Where to write the manifest (default: OUT.manifest.json).")
@click.argument("path", metavar="OUT")
def pipe_write(path: str, to_format: str | None, keep_replies: bool,
               manifest_path: str | None) -> WriteStage:
    """Write records to OUT (a JSONL file, OUT.jsonl.gz compressed, or - for stdout)."""
    return WriteStage(path, to_format, manifest_path, keep_replies)


@pipe.result_callback()
@report
def run_pipe(stages: list[Any]) -> None:
    reads = [f"'read {s.path}'" for s in stages if isinstance(s, ReadStage)]
    writes = [f"'write {s.path}'" for s in stages if isinstance(s, WriteStage)]
    if not stages or not isinstance(stages[0], ReadStage):
        raise click.UsageError("a pipe starts with 'read IN'" + (
            f"; {reads[0]} comes after another stage" if reads else ""))
    if not isinstance(stages[-1], WriteStage):
        raise click.UsageError("a pipe ends with 'write OUT'" + (
            f"; {writes[-1]} is not last" if writes else
            f": nothing writes the records of {reads[0]}"))
    read, write = stages[0], stages[-1]
    middle = stages[1:-1]
    if any(not isinstance(stage, Step) for stage in middle):
        raise click.UsageError(f"a pipe has one 'read' first and one 'write' last, not "
                               f"{' and '.join(reads + writes)}")
    run_and_report(middle, input_path=read.path, output_path=write.path,
                   from_format=read.from_format, to_format=write.to_format,
                   skip_invalid=read.skip_invalid, manifest_path=write.manifest_path,
                   workers=read.workers, dataset=read.dataset, seed=read.seed,
                   ray_address=read.ray_address, keep_replies=write.keep_replies)
