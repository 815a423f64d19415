"""The command line: parse options, call the pipeline, print, map errors to exit codes.

Errors a user can cause print one line, ``promptkit: FILE:LINE: problem``, and exit 1; bad
option combinations are usage errors (exit 2). Data goes to stdout only.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from promptkit.cli.help import DATASET, INPUT, OUTPUT, SectionedGroup, shared
from promptkit.commands.publish import (
    AIPERF_FORMATS,
    DEFAULT_FORMAT,
    DEFAULT_LICENSE,
    DEFAULT_SHARD_SIZE,
    parse_size,
)
from promptkit.core import interrupts, progress
from promptkit.core.errors import BadOptionError, PromptkitError
from promptkit.core.interrupts import Interrupted
from promptkit.core.limits import (
    MAX_COPIES,
    MAX_GROUPS,
    MAX_NONCE_LENGTH,
    MAX_RECORDS,
    MAX_TOKENS,
    MAX_WORKERS,
)
from promptkit.core.version import VERSION
from promptkit.core.words import counted, plural
from promptkit.formats import FORMATS, READ_ONLY, TABLE_FORMATS
from promptkit.io.files import os_error
from promptkit.ops.base import Step
from promptkit.ops.check import TEMPLATES
from promptkit.ops.nonce import (
    DEFAULT_RANDOM_LENGTH,
    DEFAULT_TIME_STEP_US,
    KINDS,
    NONCE_TEMPLATES,
    POSITIONS,
    nonce_params,
)
from promptkit.provenance import manifest
from promptkit.runner import pipeline

#: Input formats: every line format of JSON lines.
FORMAT_CHOICE = click.Choice([name for name, f in FORMATS.items() if f.encode is None])
#: Output formats: every line format, and tables (parquet, a save_to_disk folder).
OUTPUT_CHOICE = click.Choice([*(name for name in FORMATS if name not in READ_ONLY),
                              *TABLE_FORMATS])


class UserError(click.ClickException):
    """A data error: one line, ``promptkit: FILE:LINE: problem``, exit 1."""

    def show(self, file: Any = None) -> None:
        from promptkit.core.redact import redact_text

        click.echo(f"promptkit: {redact_text(self.format_message())}", err=True)


def report(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn promptkit's errors into one-line messages with exit code 1."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadOptionError as exc:
            raise click.UsageError(str(exc)) from None
        except PromptkitError as exc:
            raise UserError(str(exc)) from None
        except BrokenPipeError:  # stdout's reader is gone: ended quietly by the group
            raise
        except OSError as exc:  # a system error no layer below named: path and reason
            raise UserError(str(os_error(exc))) from None

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


class PromptkitGroup(SectionedGroup):
    """The root group: remembers the arguments it was called with, for manifests."""

    group_class = SectionedGroup

    argv: list[str] = []
    #: ``promptkit --quiet``: no progress bar.
    quiet = False

    def main(self, args: Any = None, *pargs: Any, **kwargs: Any) -> Any:
        PromptkitGroup.argv = ["promptkit", *(sys.argv[1:] if args is None else args)]
        return super().main(args, *pargs, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:  # (Click would call a signal there "Aborted!", exit 1)
            return super().make_context(*args, **kwargs)
        except Interrupted as exc:
            interrupts.report(exc)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as exc:  # cleaned up on the way here: one line, 128 + signal
            interrupts.report(exc)
            sys.exit(exc.exit_code)
        except BrokenPipeError:  # '| head' has read enough: cleaned up the same way
            interrupts.stdout_closed()


# ---------------------------------------------------------------- option types


class FitTokens(click.ParamType):
    """``fit --tokens``: a number, a range ``LOW,HIGH`` or a column name (checked here,
    passed on as given)."""

    name = "N|LOW,HIGH|COLUMN"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from promptkit.ops.fit import parse_tokens

        try:
            parse_tokens(str(value))
        except PromptkitError as exc:
            self.fail(f"{str(exc).removeprefix('--tokens: ')} (it takes a whole number N "
                      f"from 1 to {MAX_TOKENS:,}, a range LOW,HIGH with 1 <= LOW <= HIGH "
                      "within it, or a column name)", param, ctx)
        return str(value)


# ---------------------------------------------------------------- shared option bundles

TO_HELP = ("Output format (default: the input format when AIPerf loads it, else "
           "mooncake_trace, single_turn for prompt lines; mooncake_trace for a dataset).")

keep_replies_option = shared(
    OUTPUT, "--keep-replies", is_flag=True,
    help="Write a conversation that ends with a recorded reply as a request (mooncake_trace, "
         "openai) as it is: AIPerf sends the reply as the end of the prompt. Refused "
         "otherwise ('promptkit turns' makes requests of recorded conversations).")

SKIP_HELP = ("Skip bad records (unreadable, or ones a step or the output format cannot "
             "take) instead of stopping; the manifest lists them and counts them by reason.")


workers_option = shared(
    INPUT, "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), default=None,
    help="Processes for large input files (default: one per CPU, up to 4). "
         "The output is the same bytes for every value.")


ray_option = shared(
    INPUT, "--ray", "ray_address", metavar="ADDRESS",
    help="Run on a Ray cluster: local (a private one on this machine), auto (the one this "
         "machine belongs to), ray://HOST:PORT or HOST:PORT. OUT is then a folder of parts "
         "(part-00000.jsonl ...) and OUT/manifest.json; the parts in order are the bytes "
         "written without --ray.")


#: Options of a Hugging Face dataset input, passed on as one ``dataset`` dict.
DATASET_KEYS = ("config", "split", "revision", "text_column", "system_column",
                "messages_column", "output_length_column", "input_length_column",
                "timestamp_column", "timestamp_unit", "limit", "shuffle")


def dataset_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options for reading a Hugging Face dataset, gathered into ``dataset=``. The column
    options also read a JSONL input by columns instead of by its line format."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        chosen = {key: kwargs.pop(key) for key in DATASET_KEYS}
        kwargs["dataset"] = {k: v for k, v in chosen.items() if v not in (None, False)}
        return func(*args, **kwargs)

    for decorator in reversed([
        shared(DATASET, "--config", metavar="NAME", help="Dataset input: the configuration."),
        shared(DATASET, "--split", metavar="NAME",
               help="Dataset input: the split [default: train]."),
        shared(DATASET, "--revision", metavar="REV",
               help="Dataset input: a branch, tag or commit of a hub dataset."),
        shared(DATASET, "--text-column", metavar="COL",
               help="Dataset or JSONL input: the column holding the prompt text."),
        shared(DATASET, "--system-column", metavar="COL",
               help="Dataset or JSONL input: a column holding a system prompt."),
        shared(DATASET, "--messages-column", metavar="COL",
               help="Dataset or JSONL input: a column of OpenAI chat messages."),
        shared(DATASET, "--output-length-column", metavar="COL",
               help="Dataset or JSONL input: a column of output lengths (tokens)."),
        shared(DATASET, "--input-length-column", metavar="COL",
               help="Dataset or JSONL input: a column of input lengths (tokens), for a "
                    "trace without text (written as mooncake_trace)."),
        shared(DATASET, "--timestamp-column", metavar="COL",
               help="Dataset or JSONL input: a column of request times (ISO 8601 "
                    "date-times or numbers), written as milliseconds from the first "
                    "record's."),
        shared(DATASET, "--timestamp-unit", type=click.Choice(["s", "ms", "us", "ns"]),
               help="The unit of numeric timestamps [default: ms; s for BurstGPT]."),
        shared(INPUT, "--limit", type=click.IntRange(min=1),
               help="Read only the first N records of the input (of a dataset: after "
                    "--shuffle)."),
        shared(INPUT, "--shuffle", is_flag=True,
               help="Dataset input: shuffle the rows with --seed (a dataset on disk "
                    "exactly; a streamed one in a 10,000-row buffer)."),
    ]):
        wrapper = decorator(wrapper)
    return wrapper


def with_seed(dataset: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """Dataset options with ``--shuffle`` turned into the seed that shuffles."""
    if dataset.pop("shuffle", False):
        from promptkit.core.seeds import new_seed

        dataset["shuffle_seed"] = new_seed() if seed is None else seed
    return dataset


def io_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """IN and OUT arguments, formats, --skip-invalid and --manifest."""
    for decorator in reversed([
        click.argument("input_path", metavar="IN"),
        click.argument("output_path", metavar="OUT"),
        shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
               help="Input format (default: detected from the first record)."),
        shared(OUTPUT, "--to", "to_format", type=OUTPUT_CHOICE, help=TO_HELP
               + " OUT.jsonl.gz, .zst, .bz2, .xz: compressed."),
        keep_replies_option,
        shared(INPUT, "--skip-invalid", is_flag=True, help=SKIP_HELP),
        shared(OUTPUT, "--manifest", "manifest_path", metavar="PATH",
               help="Where to write the manifest, - for stdout (default: "
                    "OUT.manifest.json; none when OUT is stdout unless given)."),
        workers_option,
        ray_option,
    ]):
        func = decorator(func)
    return dataset_options(func)


def nonce_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--kind", type=click.Choice(KINDS), default="uuid", show_default=True,
                     help="What the nonce is made of."),
        click.option("--seed", type=int,
                     help="Seed: same input and seed give the same bytes "
                          "(default: a random seed, recorded in the manifest)."),
        click.option("--at", type=click.Choice(POSITIONS), default="start", show_default=True,
                     help="Where the nonce goes: start of the conversation, the system "
                          "message, the first user message, every turn, or a cache_salt."),
        click.option("--template", default="{nonce}\\n", show_default=True, metavar="TEXT",
                     help="Text put before the content; {nonce} is replaced by the nonce."),
        click.option("--length", type=click.IntRange(min=1, max=MAX_NONCE_LENGTH),
                     default=DEFAULT_RANDOM_LENGTH,
                     show_default=True, help="Characters of a random nonce."),
        click.option("--start-time", metavar="ISO",
                     help="First timestamp of a timestamp nonce (default: now, UTC)."),
        click.option("--time-step-us", type=click.IntRange(min=1), default=DEFAULT_TIME_STEP_US,
                     show_default=True, help="Microseconds between records' timestamps."),
        click.option("--copies", type=click.IntRange(min=1, max=MAX_COPIES), default=1,
                     show_default=True,
                     help="Distinct nonce'd copies of each record, so long runs never "
                          "resend a prompt."),
        click.option("--tokenizer", metavar="T",
                     help="Count prompt tokens under T (as 'stats' does): the manifest gets "
                          "the figures before and after the nonce."),
        click.option("--keep-tokens", is_flag=True,
                     help="With --tokenizer: take the nonce's tokens back out of the end of "
                          "the last user message, so every prompt keeps its token count."),
        click.option("--chat-template", type=click.Choice(NONCE_TEMPLATES),
                     help="With --tokenizer: count each prompt's tokens before its nonce as "
                          "the server renders it (template header, tools), and warn when "
                          "they fill a cache block."),
    ]):
        func = decorator(func)
    return func


def nonce_step(kind: str, seed: int | None, at: str, template: str, length: int,
               start_time: str | None, time_step_us: int, copies: int,
               tokenizer: str | None = None, keep_tokens: bool = False,
               chat_template: str | None = None) -> Step:
    """The nonce options as a step (made, its parameters checked, by ``nonce.make_step``
    when the run starts)."""
    template = template.replace("\\n", "\n").replace("\\t", "\t")
    if "{nonce}" not in template:
        raise click.BadParameter("must contain {nonce}", param_hint="--template")
    if keep_tokens and tokenizer is None:
        raise click.UsageError("--keep-tokens needs --tokenizer (the tokens it keeps are "
                               "counted under it)")
    if chat_template and tokenizer is None:
        raise click.UsageError("--chat-template needs --tokenizer (the tokens before each "
                               "nonce are counted under it)")
    if start_time is not None:
        from promptkit.ops.nonce import parse_time

        try:
            parse_time(start_time)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--start-time") from None
    return Step("nonce", nonce_params(
        kind=kind, seed=seed, at=at, template=template, length=length,
        start_time=start_time, time_step_us=time_step_us, copies=copies,
        tokenizer=tokenizer, keep_tokens=keep_tokens, chat_template=chat_template,
    ))


def summarize(result: dict[str, Any], manifest_path: str | None) -> None:
    out = result["output"]
    line = (f"promptkit: wrote {counted(out['records'], 'record')} "
            f"({result['aiperf']['distinct_records']} distinct) as {out['format']} "
            f"to {out['path']}")
    if manifest_path:
        line += f"; manifest {manifest_path}"
    click.echo(line, err=True)
    args = result["aiperf"]["args"]
    for side in result.get("side_outputs", []):
        flag = next((a for a, v in zip(args, args[1:], strict=False) if v == side["path"]),
                    None)
        click.echo(f"promptkit: wrote {side['path']}"
                   + (f" (AIPerf: {flag} {side['path']})" if flag else ""), err=True)
    report_skipped(result["skipped"])
    report_steps(result)


def report_steps(result: dict[str, Any]) -> None:
    """What the steps of a run say on stderr: what turns made, and the warnings."""
    for step in result["steps"]:
        info = step.get("info", {})
        if step["op"] == "turns":
            line = (f"promptkit: turns: {counted(info['requests'], 'request')} from "
                    f"{counted(info['conversations_read'], 'conversation')}")
            if info["dropped"]:
                line += "; " + ", ".join(f"{n} {why}" for why, n in info["dropped"].items())
            click.echo(line, err=True)
    for warning in result["warnings"]:
        click.echo(f"promptkit: warning: {warning}", err=True)


def report_skipped(skipped: dict[str, Any]) -> None:
    """One line on stderr: how many records were skipped, the first one's line and the
    commonest reason (the manifest has them all, by reason)."""
    if not skipped["count"]:
        return
    reason, count = next(iter(skipped["by_reason"].items()))
    first = skipped["lines"][0].split(": ", 1)[0]  # LINE, or SHARD:LINE of many files
    click.echo(f"promptkit: skipped {skipped['count']} invalid "
               f"{plural(skipped['count'], 'record')} (first: "
               f"{'line ' if first.isdigit() else ''}{first}); "
               f"commonest reason ({count}): {reason}", err=True)


def run_and_report(input_path: str, output_path: str, steps: list[Step], *,
                   from_format: str | None, to_format: str | None, skip_invalid: bool,
                   manifest_path: str | None, workers: int | None,
                   dataset: dict[str, Any] | None = None,
                   ray_address: str | None = None, keep_replies: bool = False) -> None:
    if ray_address is not None:
        ray_and_report(input_path, output_path, steps, from_format=from_format,
                       to_format=to_format, skip_invalid=skip_invalid,
                       manifest_path=manifest_path, dataset=dataset, ray_address=ray_address,
                       keep_replies=keep_replies)
        return
    if manifest_path is None and output_path != "-":
        manifest_path = manifest.default_path(output_path)
    result = pipeline.run(
        input_path, output_path, steps,
        from_format=from_format, to_format=to_format, skip_invalid=skip_invalid,
        manifest_path=manifest_path, argv=PromptkitGroup.argv, workers=workers,
        dataset=dataset, progress=not PromptkitGroup.quiet, keep_replies=keep_replies,
    )
    summarize(result, manifest_path)


def ray_and_report(input_path: str, output_path: str, steps: list[Step], *,
                   from_format: str | None, to_format: str | None, skip_invalid: bool,
                   manifest_path: str | None, dataset: dict[str, Any] | None,
                   ray_address: str, keep_replies: bool = False) -> None:
    """``--ray``: the steps on a Ray cluster, OUT a folder of parts with its manifest."""
    from promptkit import ray as on_ray

    on_ray.check_address(ray_address)
    if manifest_path is not None:
        raise click.UsageError("--ray writes its manifest into OUT (OUT/manifest.json): "
                               "--manifest is not taken with it")
    on_ray.require()
    from promptkit.ray.run import MANIFEST, run_folder

    result = run_folder(input_path, output_path, steps, address=ray_address,
                        from_format=from_format, to_format=to_format,
                        skip_invalid=skip_invalid, argv=PromptkitGroup.argv, dataset=dataset,
                        keep_replies=keep_replies)
    summarize(result, f"{output_path}/{MANIFEST}")
    parts = result["output"]["parts"]
    click.echo(f"promptkit: {counted(len(parts), 'part')} from "
               f"{counted(result['ray']['chunks'], 'chunk')} on "
               f"{counted(result['ray']['nodes'], 'Ray node')}", err=True)


def ray_ready(ray_address: str, manifest_path: str | None = None,
              dataset: dict[str, Any] | None = None) -> None:
    """--ray's address, --manifest and dataset options checked, Ray importable."""
    from promptkit import ray as on_ray

    on_ray.check_address(ray_address)
    if manifest_path is not None:
        raise click.UsageError("--ray writes its manifest into OUT (OUT/manifest.json): "
                               "--manifest is not taken with it")
    if dataset and any(value is not None and value is not False for value in dataset.values()):
        option = "--" + next(k for k, v in dataset.items()
                             if v is not None and v is not False).replace("_", "-")
        raise click.UsageError(f"--ray reads JSONL files; {option} is not taken with it")
    on_ray.require()


def ray_hash_trace(input_path: str, output_path: str, step: Step, *, from_format: str | None,
                   skip_invalid: bool, manifest_path: str | None, dataset: dict[str, Any],
                   ray_address: str) -> None:
    """``hash-trace --ray``: ids numbered by distributed shuffles, parts written by tasks."""
    ray_ready(ray_address, manifest_path, dataset)
    from promptkit.ray.commands import hash_trace_folder
    from promptkit.ray.run import MANIFEST

    result = hash_trace_folder(input_path, output_path, step, address=ray_address,
                               from_format=from_format, skip_invalid=skip_invalid,
                               argv=PromptkitGroup.argv)
    summarize(result, f"{output_path}/{MANIFEST}")
    click.echo(f"promptkit: {counted(len(result['output']['parts']), 'part')} from "
               f"{counted(result['ray']['chunks'], 'chunk')} on "
               f"{counted(result['ray']['nodes'], 'Ray node')}", err=True)


# ---------------------------------------------------------------- commands


@click.group(cls=PromptkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(VERSION, "-V", "--version", prog_name="promptkit")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress (shown on stderr when it is a terminal: each pass over the "
                   "input, its records counted).")
def cli(quiet: bool) -> None:
    """Prepare prompt datasets for LLM serving benchmarks.

    IN, every command's input, is a file (JSON lines or a JSON array, compressed or
    not; parquet), - for stdin, a Hugging Face dataset, or many files read as one
    stream in sorted path order: a folder or a quoted glob of JSONL or parquet shards.

    \b
    Example:
      promptkit nonce prompts/trace.jsonl.example out.jsonl --seed 7
      promptkit stats 'logs/*.jsonl.gz'
    """
    PromptkitGroup.quiet = quiet
    progress.want(not quiet)


@cli.command()
@io_options
@nonce_options
@report
def nonce(input_path: str, output_path: str, from_format: str | None, to_format: str | None,
          keep_replies: bool, skip_invalid: bool, manifest_path: str | None,
          workers: int | None, dataset: dict[str, Any], ray_address: str | None,
          **options: Any) -> None:
    """Put a unique nonce at the start of every prompt, so no request hits the prefix cache.

    \b
    Examples:
      promptkit nonce in.jsonl out.jsonl --seed 7
      promptkit nonce in.jsonl out.jsonl --kind timestamp --at user
      promptkit nonce in.jsonl out.jsonl --at salt --copies 4
      cat in.jsonl | promptkit nonce - - > out.jsonl
    """
    step = nonce_step(**options)
    run_and_report(input_path, output_path, [step],
                   from_format=from_format, to_format=to_format, skip_invalid=skip_invalid,
                   manifest_path=manifest_path, workers=workers, keep_replies=keep_replies,
                   dataset=with_seed(dataset, step.params["seed"]), ray_address=ray_address)


tokenizer_option = click.option(
    "--tokenizer", metavar="T",
    help="A tiktoken encoding (cl100k_base works offline), a folder or tokenizer.json "
         "file, or hf:OWNER/NAME from the local Hugging Face cache.")


@cli.command()
@click.argument("input_path", metavar="IN")
@tokenizer_option
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@click.option("--chat-template", type=click.Choice(TEMPLATES), default="none", show_default=True,
              help="Count prompt tokens under this template, as 'check' does (none: each "
                   "text on its own, nothing added).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_WORKERS),
              help="Threads for batch tokenization (default: one per CPU).")
@shared(INPUT, "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), default=1,
        show_default=True,
        help="Processes for a large JSONL file (a chunk each, merged in order); "
                   "the figures are the same for every value.")
@shared(INPUT, "--skip-invalid", is_flag=True,
        help="Skip bad records instead of stopping; the report counts them by reason.")
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random).")
@click.option("--plot", metavar="FILE.png",
              help="Also draw the prompt-length histogram, shared prefix marked "
                   "(needs matplotlib and --tokenizer).")
@ray_option
@dataset_options
@report
def stats(input_path: str, tokenizer: str | None, from_format: str | None, chat_template: str,
          as_json: bool, threads: int | None, workers: int, skip_invalid: bool,
          seed: int | None, plot: str | None, ray_address: str | None,
          dataset: dict[str, Any]) -> None:
    """Count records, conversations, turns and prompt tokens; show shared prompts.

    Requests are what AIPerf sends in one pass over the file (one a record, one a
    multi_turn turn); turns are user messages. A record's prompt tokens are those of
    the prompt its messages make under --chat-template, as 'check' counts them (a
    multi_turn conversation: its turns, without the server's replies).

    \b
    Examples:
      promptkit stats prompts/trace.jsonl.example --tokenizer cl100k_base
      promptkit stats out.jsonl --tokenizer ./my_tokenizer_dir --json
      promptkit stats hf:tatsu-lab/alpaca --limit 1000 --tokenizer cl100k_base
    """
    import json

    files_not_stdout(("--plot", plot))
    if plot is not None and tokenizer is None:
        raise click.UsageError("--plot draws prompt token counts: it needs --tokenizer")
    if chat_template != "none" and tokenizer is None:
        raise click.UsageError("--chat-template needs --tokenizer")
    if ray_address is not None:
        if plot is not None:
            raise click.UsageError("--plot draws every prompt's length on one machine: "
                                   "run it without --ray")
        ray_ready(ray_address, dataset=dataset)
        from promptkit.ray.commands import stats_on_ray

        summary = stats_on_ray(input_path, address=ray_address, from_format=from_format,
                               tokenizer=tokenizer, skip_invalid=skip_invalid,
                               chat_template=chat_template)
    else:
        summary = pipeline.dataset_stats(input_path, from_format=from_format,
                                         tokenizer=tokenizer,
                                         dataset=with_seed(dataset, seed), plot=plot,
                                         workers=workers, chat_template=chat_template,
                                         threads=threads, skip_invalid=skip_invalid)
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_stats(summary)
    for warning in summary["warnings"]:
        click.echo(f"promptkit: warning: {warning}", err=True)
    report_wrote(summary["wrote"])
    report_skipped(summary["skipped"])


def files_not_stdout(*options: tuple[str, str | None]) -> None:
    """Refuse ``-`` for an option that names a file beside the report (``--plot``,
    ``--per-request``): stdout carries the report."""
    for option, value in options:
        if value == "-":
            raise click.UsageError(f"{option} -: stdout carries the report; name a file")


def report_wrote(paths: list[str]) -> None:
    for path in paths:
        click.echo(f"promptkit: wrote {path}", err=True)


def print_stats(summary: dict[str, Any]) -> None:
    click.echo(f"{summary['input']['path']} ({summary['input']['format']})")
    for key in ("records", "conversations", "requests", "turns"):
        click.echo(f"  {key:22} {summary[key]}")
    tokens = summary.get("prompt_tokens")
    if tokens:
        figures = "  ".join(f"{k} {v}" for k, v in tokens.items())
        stated = summary.get("prompt_tokens_stated", 0)
        tokenized = (f"{summary['tokenizer']}, template {summary['chat_template']}"
                     if stated < summary["records"] and summary["tokenizer"] else None)
        source = ("input_length" if not tokenized else f"{tokenized}; {stated} records' "
                  "input_length" if stated else tokenized)
        click.echo(f"  {'prompt tokens':22} {figures}  ({source})")
        if "distinct_first_tokens" in summary:
            click.echo(f"  {'distinct first tokens':22} {summary['distinct_first_tokens']}")
    shared = summary["system_prompts"]
    click.echo(f"  {'system prompts':22} {shared['distinct']} distinct, "
               f"in {shared['records_with_one']} records")
    for prompt in shared["most_shared"][:5]:
        size = f", {prompt['tokens']} tokens" if prompt["tokens"] is not None else ""
        click.echo(f"    {prompt['records']} records{size}: {prompt['starts']!r}")


def pad_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--tokens", "tokens", required=True, metavar="N",
                     type=click.IntRange(min=1, max=MAX_TOKENS),
                     help="Exact length of the shared system prompt, in tokens."),
        click.option("--tokenizer", required=True, metavar="T",
                     help="The tokenizer the length is exact under (see 'stats')."),
        click.option("--system-prompt", metavar="TEXT",
                     help="Base text (default: each record's own system message)."),
        click.option("--system-prompt-file", metavar="PATH", help="Base text from a file."),
        click.option("--filler-file", metavar="PATH",
                     help="Filler words from a file (default: seeded faker English words)."),
        click.option("--groups", type=click.IntRange(min=1, max=MAX_GROUPS), default=1,
                     show_default=True,
                     help="Distinct shared prompts, differing at their first token."),
        click.option("--group-by", metavar="FIELD",
                     help="Records with the same value of FIELD share a group "
                          "(default: round-robin by record)."),
        click.option("--into", type=click.Choice(["system", "text", "file"]), default="system",
                     show_default=True,
                     help="A system message; before the first text; or OUT.system.txt for "
                          "AIPerf's --system-prompt-file (single_turn)."),
        click.option("--seed", type=int, help="Seed of the filler (default: random, recorded)."),
    ]):
        func = decorator(func)
    return func


def pad_step(*, tokens: str, tokenizer: str, system_prompt: str | None,
             system_prompt_file: str | None, filler_file: str | None, groups: int,
             group_by: str | None, into: str, seed: int | None) -> Step:
    """The pad options as a step (made by ``pad.make_step`` for the run's input and output
    when the run starts: the groups' prompts, ``OUT.system.txt`` for ``--into file``)."""
    from promptkit.core.seeds import new_seed

    try:
        n = int(tokens)
    except ValueError:
        n = 0
    if n < 1:
        raise PromptkitError(f"--tokens: {tokens!r} is not a positive integer")
    if system_prompt is not None and system_prompt_file is not None:
        raise click.UsageError("give --system-prompt or --system-prompt-file, not both")
    if system_prompt_file is not None:
        from promptkit.io.files import read_whole

        try:
            system_prompt = read_whole(system_prompt_file, "system prompt file").decode("utf-8")
        except OSError as exc:
            raise PromptkitError(f"{system_prompt_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise PromptkitError(f"{system_prompt_file}: not UTF-8 text") from None
    if into == "file" and (system_prompt is None or groups != 1):
        raise click.UsageError("--into file needs --system-prompt(-file), one group and an "
                               "OUT file")
    return Step("pad", {"tokens": n, "tokenizer": tokenizer, "groups": groups,
                        "seed": new_seed() if seed is None else seed,
                        "system_prompt": system_prompt, "filler_file": filler_file,
                        "into": into, "group_by": group_by})


@cli.command()
@io_options
@pad_options
@report
def pad(input_path: str, output_path: str, from_format: str | None, to_format: str | None,
        keep_replies: bool, skip_invalid: bool, manifest_path: str | None, workers: int | None,
        dataset: dict[str, Any], ray_address: str | None, **options: Any) -> None:
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
    step = pad_step(**options)
    if step.params["into"] == "file" and output_path == "-":
        raise click.UsageError("--into file needs --system-prompt(-file), one group and an "
                               "OUT file")
    dataset = with_seed(dataset, step.params["seed"])
    run_and_report(input_path, output_path, [step], from_format=from_format,
                   to_format=to_format, skip_invalid=skip_invalid,
                   manifest_path=manifest_path, workers=workers, dataset=dataset,
                   ray_address=ray_address, keep_replies=keep_replies)


def fit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--tokens", required=True, metavar="N|LOW,HIGH|COLUMN", type=FitTokens(),
                     help="Exact tokens of each user text: a number, a uniform range drawn "
                          "per record (seeded), or a column holding each record's own."),
        click.option("--tokenizer", required=True, metavar="T",
                     help="The tokenizer the length is exact under (see 'stats')."),
        click.option("--filler-file", metavar="PATH",
                     help="Filler words from a file (default: seeded faker English words)."),
        click.option("--seed", type=int,
                     help="Seed of the filler and the range (default: random, recorded)."),
    ]):
        func = decorator(func)
    return func


def fit_step(*, tokens: str, tokenizer: str, filler_file: str | None,
             seed: int | None) -> Step:
    """The fit options as a step (made by ``fit.make_step`` when the run starts)."""
    from promptkit.core.seeds import new_seed
    from promptkit.ops.fit import parse_tokens

    return Step("fit", {"tokens": parse_tokens(tokens), "tokenizer": tokenizer,
                        "seed": new_seed() if seed is None else seed,
                        "filler_file": filler_file})


@cli.command()
@io_options
@fit_options
@report
def fit(input_path: str, output_path: str, from_format: str | None, to_format: str | None,
        keep_replies: bool, skip_invalid: bool, manifest_path: str | None, workers: int | None,
        dataset: dict[str, Any], ray_address: str | None, **options: Any) -> None:
    """Make every user text exactly N tokens under a tokenizer (cut, or filled out).

    \b
    Examples:
      promptkit fit in.jsonl out.jsonl --tokens 2048 --tokenizer cl100k_base --seed 1
      promptkit fit in.jsonl out.jsonl --tokens 512,2048 --tokenizer ./tok_dir
      promptkit fit trace.jsonl out.jsonl --tokens input_tokens --tokenizer cl100k_base
    """
    step = fit_step(**options)
    run_and_report(input_path, output_path, [step], from_format=from_format,
                   to_format=to_format, skip_invalid=skip_invalid,
                   manifest_path=manifest_path, workers=workers, keep_replies=keep_replies,
                   dataset=with_seed(dataset, step.params["seed"]), ray_address=ray_address)


def turns_options(func: Callable[..., Any]) -> Callable[..., Any]:
    from promptkit.ops.turns import MODES

    bound = functools.partial(click.option, type=click.IntRange(min=1, max=MAX_TOKENS),
                              metavar="N")
    for decorator in reversed([
        click.option("--mode", type=click.Choice(MODES), default="first", show_default=True,
                     help="first: one request a conversation, its first user message; each: "
                          "an AIPerf multi_turn session, a turn a user message; history: one "
                          "request, the whole conversation up to its last user message."),
        click.option("--tokenizer", required=True, metavar="T",
                     help="Each request's output_length is its recorded reply's tokens "
                          "under T (see 'stats')."),
        bound("--min-prompt-tokens", help="Leave out requests with fewer prompt tokens."),
        bound("--max-prompt-tokens", help="Leave out requests with more prompt tokens."),
        bound("--min-output-tokens", help="Leave out requests whose reply had fewer tokens."),
        bound("--max-output-tokens", help="Leave out requests whose reply had more tokens."),
        bound("--max-turns", help="Keep the first N exchanges of a conversation."),
        click.option("--chat-template", type=click.Choice(NONCE_TEMPLATES),
                     help="Count the prompt bounds as the server sees a request: rendered "
                          "through this template with its tools (default: the raw texts)."),
    ]):
        func = decorator(func)
    return func


def turns_step(*, tokenizer: str, **params: Any) -> Step:
    """The turns options as a step (made by ``turns.make_step`` when the run starts)."""
    for low, high in (("min_prompt_tokens", "max_prompt_tokens"),
                      ("min_output_tokens", "max_output_tokens")):
        if params[low] is not None and params[high] is not None and params[low] > params[high]:
            raise click.UsageError(f"--{low.replace('_', '-')} is above "
                                   f"--{high.replace('_', '-')}")
    if params.get("chat_template") is None:  # only when used: plain runs keep their shape
        params.pop("chat_template", None)
    return Step("turns", {"tokenizer": tokenizer, **params})


@cli.command()
@io_options
@turns_options
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random, recorded).")
@report
def turns(input_path: str, output_path: str, from_format: str | None, to_format: str | None,
          keep_replies: bool, skip_invalid: bool, manifest_path: str | None,
          workers: int | None, dataset: dict[str, Any], seed: int | None,
          ray_address: str | None, **options: Any) -> None:
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
    step = turns_step(**options)
    run_and_report(input_path, output_path, [step], from_format=from_format,
                   to_format=to_format, skip_invalid=skip_invalid,
                   manifest_path=manifest_path, workers=workers, keep_replies=keep_replies,
                   dataset=with_seed(dataset, seed), ray_address=ray_address)


class CacheBustChoice(click.ParamType):
    """A ``--cache-bust`` mode, in promptkit's spelling or AIPerf's."""

    name = "mode"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from promptkit.text.cachebust import mode_of

        try:
            return mode_of(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def check_options(func: Callable[..., Any]) -> Callable[..., Any]:
    from promptkit.ops.check import ENGINES, TEMPLATES

    for decorator in reversed([
        tokenizer_option,
        click.option("--chat-template", type=click.Choice(TEMPLATES), default="none",
                     show_default=True,
                     help="What the server renders: raw texts (none: each tokenized on its "
                          "own, as 'stats' counts), a built-in template, or the Hugging Face "
                          "tokenizer's own (hf)."),
        click.option("--engine", type=click.Choice(ENGINES), default="vllm", show_default=True,
                     help="vllm: full blocks, chained hashes; sglang: token-level radix."),
        click.option("--block-size", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
                     help="Tokens a block of the server's cache [default: 16; for hash-id "
                          "traces the tokens a hash id stands for]."),
        click.option("--hash-block-size", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
                     help="Tokens AIPerf makes of a hash id (its --isl-block-size) [default: "
                          "the manifest's, else 16 for bailian_trace, 512 for "
                          "mooncake_trace]."),
        click.option("--capacity-tokens", type=click.IntRange(min=1), metavar="N",
                     help="Cache size in tokens, LRU eviction (default: unbounded)."),
        click.option("--num-gpu-blocks", type=click.IntRange(min=2), metavar="N",
                     help="vLLM's KV cache blocks, as its log says ('GPU KV cache size' / "
                          "--num-gpu-blocks-override): its block pool, replayed exactly at "
                          "concurrency 1."),
        click.option("--requests", type=click.IntRange(min=1, max=MAX_RECORDS),
                     help="Profiled requests (default: one pass over the file); beyond it "
                          "AIPerf wraps around the file and repeats prompts: the report "
                          "counts them."),
        click.option("--warmup", type=click.IntRange(min=0, max=MAX_RECORDS), default=0,
                     show_default=True,
                     help="Warmup requests sent first, from the same records."),
        click.option("--fixed-schedule/--no-fixed-schedule", default=None,
                     help="As AIPerf's options: every line once, conversations in the order "
                          "of their timestamps (no --requests), or the file in order "
                          "[default: as AIPerf decides: a fixed schedule for a mooncake_trace "
                          "IN whose first line has a timestamp; in a pipe, the file in order]."),
        click.option("--system-prompt-file", metavar="PATH",
                     help="The file AIPerf sends as a system message on every request (its "
                          "--system-prompt-file) [default: the one the file's manifest "
                          "names]."),
        click.option("--cache-bust", type=CacheBustChoice(), default="none",
                     show_default=True, metavar="MODE",
                     help="AIPerf's --cache-bust: where it puts its run-time marker (none, "
                          "system-prefix, system-suffix, first-turn-prefix, "
                          "first-turn-suffix, warmup-isolation-system, "
                          "warmup-isolation-first-turn; AIPerf's underscores too)."),
        click.option("--reply-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
                     help="Tokens the server generates for a request without output_length: "
                          "a reply AIPerf sends back in a conversation's history, and blocks "
                          "that take cache room."),
        click.option("--max-total-hit-rate", type=click.FloatRange(0, 1), metavar="X",
                     help="Fail when the predicted total hit rate (within conversations "
                          "too; the top of its range) is above X."),
    ]):
        func = decorator(func)
    return func


def check_params(tokenizer: str | None, chat_template: str, engine: str,
                 block_size: int | None, hash_block_size: int | None,
                 capacity_tokens: int | None,
                 num_gpu_blocks: int | None, requests: int | None, warmup: int,
                 fixed_schedule: bool | None, system_prompt_file: str | None,
                 reply_tokens: int | None, max_total_hit_rate: float | None,
                 cache_bust: str = "none") -> dict[str, Any]:
    if block_size is not None and block_size < 1:
        raise PromptkitError(f"--block-size: {block_size} is below 1")
    params: dict[str, Any] = {
        "tokenizer": tokenizer, "chat_template": chat_template, "engine": engine,
        "block_size": block_size, "capacity_tokens": capacity_tokens,
        "requests": requests, "warmup": warmup, "reply_tokens": reply_tokens}
    if num_gpu_blocks is not None:
        if capacity_tokens is not None:
            raise click.UsageError("give --capacity-tokens or --num-gpu-blocks, not both")
        if engine != "vllm":
            raise click.UsageError("--num-gpu-blocks is vLLM's block count (--engine vllm)")
    for key, value in (("num_gpu_blocks", num_gpu_blocks), ("hash_block_size", hash_block_size),
                       ("cache_bust", None if cache_bust == "none" else cache_bust),
                       ("fixed_schedule", fixed_schedule),
                       ("system_prompt_file", system_prompt_file),
                       ("max_total_hit_rate", max_total_hit_rate)):
        if value is not None:
            params[key] = value
    return params


@cli.command()
@click.argument("input_path", metavar="IN")
@check_options
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-hit-rate", type=click.FloatRange(0, 1), metavar="X",
              help="Exit 1 when the predicted hit rate across conversations (what a nonce "
                   "removes) is above X.")
@click.option("--no-manifest", "use_manifest", is_flag=True, flag_value=False, default=True,
              help="Do not apply the AIPerf arguments of IN.manifest.json.")
@click.option("--plot", metavar="FILE.png",
              help="Also draw hit tokens per request and the cumulative hit rate "
                   "(needs matplotlib).")
@click.option("--per-request", metavar="PATH",
              help="Also write a JSONL line a profiled request: its record, prompt and hit "
                   "tokens, and where that record first differs from all before it.")
@shared(INPUT, "--skip-invalid", is_flag=True,
        help="Skip bad records instead of stopping; the report counts them by reason.")
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random).")
@shared(INPUT, "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), default=1,
        show_default=True,
        help="Processes that tokenize a large JSONL file, a chunk each (the cache is "
                   "simulated in order: the same report for every value).")
@ray_option
@dataset_options
@report
def check(input_path: str, from_format: str | None, as_json: bool,
          max_hit_rate: float | None, use_manifest: bool, plot: str | None,
          per_request: str | None, skip_invalid: bool, seed: int | None, workers: int,
          ray_address: str | None, dataset: dict[str, Any], **options: Any) -> None:
    """Predict the prefix-cache hit rate a benchmark run of a file will see.

    \b
    Examples:
      promptkit check out.jsonl --tokenizer cl100k_base --max-hit-rate 0.01
      promptkit check chat.jsonl --tokenizer ./tok_dir --chat-template hf --requests 5000
      promptkit check mooncake_trace.jsonl --json
    """
    import json

    files_not_stdout(("--plot", plot), ("--per-request", per_request))
    params = check_params(**options)
    tokenizer = params.pop("tokenizer")
    max_total_hit_rate = params.pop("max_total_hit_rate", None)
    summary = None
    if ray_address is not None:
        summary = ray_check(input_path, from_format=from_format, tokenizer=tokenizer,
                            skip_invalid=skip_invalid, use_manifest=use_manifest,
                            plot=plot, per_request=per_request, dataset=dataset,
                            ray_address=ray_address, **params)
    if summary is None:
        summary = pipeline.check_file(input_path, from_format=from_format, tokenizer=tokenizer,
                                      skip_invalid=skip_invalid,
                                      dataset=with_seed(dataset, seed),
                                      per_request=per_request, plot=plot, workers=workers,
                                      use_manifest=use_manifest, **params)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_check(summary)
    report_wrote(summary["wrote"])
    report_skipped(summary["skipped"])
    from promptkit.ops.check import hit_rate_problem

    problem = hit_rate_problem(summary, max_hit_rate, max_total_hit_rate)
    if problem is not None:
        raise UserError(f"{summary['input']['path']}: {problem}")


def ray_check(input_path: str, *, plot: str | None, per_request: str | None,
              dataset: dict[str, Any], ray_address: str, **params: Any
              ) -> dict[str, Any] | None:
    """``check --ray``: the report of an unbounded cache computed on the cluster, or
    ``None`` (said on stderr, with why) when the check needs the requests in order and
    runs on one node."""
    for option, value in (("--plot", plot), ("--per-request", per_request)):
        if value is not None:
            raise click.UsageError(f"{option} writes every request's figures on one machine: "
                                   "run it without --ray")
    ray_ready(ray_address, dataset=dataset)
    from promptkit.ray.aggregate import NeedsSequence
    from promptkit.ray.commands import check_on_ray

    try:
        return check_on_ray(input_path, address=ray_address, **params)
    except NeedsSequence as exc:
        click.echo(f"promptkit: check: {exc}: ran on one node", err=True)
        return None


def print_check(s: dict[str, Any]) -> None:
    capacity = (f"{s['num_gpu_blocks']} vLLM blocks" if s.get("num_gpu_blocks")
                else f"{s['capacity_tokens']} tokens" if s["capacity_tokens"] else "unbounded")
    template = f", template {s['chat_template']}" if s["chat_template"] else ", hash ids"
    click.echo(f"{s['input']['path']}: predicted prefix-cache hit rate {s['hit_rate']:.2%} "
               f"({s['engine']}, block {s['block_size']}, {capacity}{template})")
    low, high = s["hit_rate_range"]
    if low != high:
        click.echo(f"  range                  {low:.2%} to {high:.2%} (the replies' tokens "
                   "as sent back are not known)")
    if s["within_conversation_hit_tokens"]:
        click.echo(f"  across conversations   {s['cross_conversation_hit_rate']:.2%}; within "
                   f"them {s['within_conversation_hit_rate']:.2%} (history sent again)")
    click.echo(f"  requests               {s['requests']} (+{s['warmup']} warmup) from "
               f"{s['records']} records, {s['conversations']} conversations")
    if s.get("fixed_schedule"):
        click.echo("  schedule               AIPerf's fixed schedule: every line once, the "
                   "conversations in the order of their timestamps")
    repeating = s.get("requests_repeating_a_prompt")
    if repeating and s.get("fixed_schedule"):
        click.echo(f"  repeated prompts       {counted(repeating, 'request')} resend a warmup "
                   "prompt: the fixed schedule sends every line after the warmup")
    elif repeating:
        size = (f"a {s['records']}-record file" if s["requests_per_pass"] == s["records"]
                else f"a {s['records']}-record file of {s['requests_per_pass']} requests")
        click.echo(f"  repeated prompts       {counted(repeating, 'request')} resend a prompt: "
                   f"AIPerf wraps around {size}; use nonce --copies "
                   f"{s['copies_for_distinct_prompts']} for distinct prompts")
    click.echo(f"  prompt tokens          {s['prompt_tokens']}, of which hits {s['hit_tokens']}")
    per = s["hit_tokens_per_request"]
    click.echo("  hit tokens a request   " + "  ".join(f"{k} {v}" for k, v in per.items())
               + f"  ({counted(s['requests_with_hits'], 'request')} hit)")
    for key in ("first_differing_token", "first_differing_block"):
        if key in s:
            figures = "  ".join(f"{k} {v}" for k, v in s[key].items() if k != "window")
            click.echo(f"  {key.replace('_', ' '):22} {figures}")
    first = s["first_block"]
    click.echo(f"  first blocks           {first['distinct']} distinct; the most shared is in "
               f"{counted(first['shared_by_most'], 'record')}")
    if s.get("template_header_tokens"):
        click.echo(f"  template header        {s['template_header_tokens']} tokens before "
                   "the first content")
    if s.get("records_with_tools"):
        click.echo(f"  tools                  {counted(s['records_with_tools'], 'record')} "
                   "send tools" + (", rendered before the user's text"
                                   if s["chat_template"] != "none" else ""))
    applied = s.get("aiperf_args", {})
    if applied.get("applied"):
        flag, value = applied["applied"]
        shown = value if flag.endswith("-file") else f"({len(value)} characters)"
        click.echo(f"  AIPerf arguments       {flag} {shown} (from the {applied['source']})")
    for key in ("warning", "warning_salts", "warning_tools", "warning_history"):
        if key in s:
            click.echo(f"promptkit: warning: {s[key]}", err=True)
    if applied.get("note"):
        click.echo(f"promptkit: note: {applied['note']}", err=True)


@cli.command("hash-trace")
@click.argument("input_path", metavar="IN")
@click.argument("output_path", metavar="OUT")
@click.option("--tokenizer", required=True, metavar="T",
              help="The tokenizer the blocks are counted under (see 'stats').")
@click.option("--block-size", type=click.IntRange(min=1, max=MAX_TOKENS), default=512,
              show_default=True,
              metavar="N", help="Tokens a block (one hash id each; the last may be partial).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True),
              help="Requests a second, for timestamps where records have none.")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_WORKERS),
              help="Threads for batch tokenization in one process (default: one per CPU).")
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
def hash_trace(input_path: str, output_path: str, tokenizer: str, block_size: int,
               rate: float | None, threads: int | None, workers: int | None,
               from_format: str | None, skip_invalid: bool, manifest_path: str | None,
               seed: int | None, ray_address: str | None, dataset: dict[str, Any]) -> None:
    """Turn text records into a mooncake_trace of hash ids: the prefix sharing, no text.

    \b
    Examples:
      promptkit hash-trace prompts/chat.jsonl.example trace.jsonl --tokenizer cl100k_base
      promptkit hash-trace prod.jsonl trace.jsonl --tokenizer ./tok_dir --block-size 64 --rate 2
    """
    step = Step("hash_trace", {"tokenizer": tokenizer, "block_size": block_size, "rate": rate,
                               "threads": threads})
    if ray_address is not None:
        ray_hash_trace(input_path, output_path, step, from_format=from_format,
                       skip_invalid=skip_invalid, manifest_path=manifest_path,
                       dataset=dataset, ray_address=ray_address)
        return
    run_and_report(input_path, output_path, [step], from_format=from_format,
                   to_format="mooncake_trace", skip_invalid=skip_invalid,
                   manifest_path=manifest_path, workers=workers,
                   dataset=with_seed(dataset, seed))


@cli.group()
def synth() -> None:
    """Generate benchmark workloads from options alone, with a manifest.

    \b
    Example:
      promptkit synth prefix-test prefix-test.jsonl --seed 7
    """


@synth.command("prefix-test")
@click.argument("output_path", metavar="OUT")
@click.option("--groups", type=click.IntRange(min=1, max=MAX_GROUPS), default=16,
              show_default=True,
              help="Groups: each shares one system prompt, differing from the others' "
                   "at the first token.")
@click.option("--group-size", type=click.IntRange(min=1, max=MAX_RECORDS), default=8,
              show_default=True,
              help="Requests in each group.")
@click.option("--system-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), default=None,
              metavar="N",
              help="Exact tokens of each shared system prompt under --tokenizer "
                   "[default: 320, about 2 KB of text].")
@click.option("--tokenizer", default="cl100k_base", show_default=True, metavar="T",
              help="The tokenizer the prompt length is exact under (see 'stats').")
@click.option("--system-prompt", metavar="TEXT",
              help="Start of every system prompt (then seeded filler).  [default: "
                   "\"You are a helpful assistant. Follow the user's instruction exactly.\"]")
@click.option("--filler-file", metavar="PATH",
              help="Filler words from a file (default: seeded faker English words).")
@click.option("--order", type=click.Choice(["interleaved", "grouped"]), default="interleaved",
              show_default=True,
              help="Groups in turn (a hit needs all G prompts cached), or each group's "
                   "requests in a row.")
@click.option("--output-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
              help="output_length of every request (default: none; the echo is short).")
@shared(OUTPUT, "--to", "to_format", type=OUTPUT_CHOICE, default="mooncake_trace",
        show_default=True,
              help="Output format. Formats without a system message get the prompt, a "
                   "blank line and the task as one text.")
@click.option("--seed", type=int, help="Seed of the filler and the words (default: random, "
                                       "recorded).")
@shared(OUTPUT, "--manifest", "manifest_path", metavar="PATH",
        help="Where to write the manifest, - for stdout (default: OUT.manifest.json).")
@report
def prefix_test(output_path: str, groups: int, group_size: int, system_tokens: int | None,
                tokenizer: str, system_prompt: str | None, filler_file: str | None,
                order: str, output_tokens: int | None, to_format: str, seed: int | None,
                manifest_path: str | None) -> None:
    """The classic prefix-cache test: G groups x S requests sharing exact system prompts.

    Every request of a group has the same system prompt of exactly N tokens; the
    user turn is "Please echo the following word: WORD", a word per group.

    \b
    Examples:
      promptkit synth prefix-test prefix-test.jsonl --seed 7
      promptkit synth prefix-test pt.jsonl --groups 4 --group-size 32 --system-tokens 4096 \\
          --tokenizer ./tok_dir --to single_turn --order grouped
    """
    from promptkit.core.seeds import new_seed
    from promptkit.ops import synth as generators

    params = {
        "groups": groups, "group_size": group_size,
        "system_tokens": generators.DEFAULT_SYSTEM_TOKENS if system_tokens is None
        else system_tokens,
        "tokenizer": tokenizer,
        "system_prompt": generators.DEFAULT_SYSTEM_PROMPT if system_prompt is None
        else system_prompt,
        "filler_file": filler_file, "seed": new_seed() if seed is None else seed,
        "order": order, "output_tokens": output_tokens,
        "into": "system" if FORMATS[to_format].holds_system else "text",
    }
    params = generators.checked_params("prefix-test", params)  # before anything is written
    if manifest_path is None and output_path != "-":
        manifest_path = manifest.default_path(output_path)
    result = pipeline.generate("prefix-test", params, output_path, to_format=to_format,
                               manifest_path=manifest_path, argv=PromptkitGroup.argv)
    summarize(result, manifest_path)


def _is_part_folder(manifest_path: str) -> bool:
    """Whether a folder is one of parts (``--ray``), by its manifest: a saved dataset
    (``--to hf-dir``) is a folder too, with its manifest beside it."""
    import json

    from promptkit.io.files import read_whole

    try:
        return "parts" in json.loads(read_whole(manifest_path, "manifest")).get("output", {})
    except (OSError, ValueError, AttributeError, PromptkitError):
        return False
    except RecursionError:  # nested too deeply: reading it as the folder's says so
        return True


@cli.command()
@click.argument("path", metavar="FILE")
@click.option("--manifest", "manifest_path", metavar="PATH",
              help="The manifest (default: FILE.manifest.json).")
@report
def verify(path: str, manifest_path: str | None) -> None:
    """Check a file against its manifest (sha256 and record count); exit 1 if it differs.

    A folder of parts (written with --ray) is checked part by part against
    FOLDER/manifest.json, and the parts together.

    \b
    Example:
      promptkit verify out.jsonl
    """
    import os

    from promptkit.provenance.describe import verify_output
    from promptkit.ray.run import MANIFEST, verify_folder

    if os.path.isdir(path) and _is_part_folder(manifest_path or os.path.join(path, MANIFEST)):
        problems = verify_folder(path, manifest_path)
        if problems:
            raise UserError(f"{path}: does not match its manifest: " + "; ".join(problems))
        click.echo(f"{path}: OK, matches {manifest_path or os.path.join(path, MANIFEST)}")
        return
    problems = verify_output(path, manifest_path)
    if problems:
        raise UserError(f"{path}: does not match its manifest: " + "; ".join(problems))
    click.echo(f"{path}: OK, matches {manifest_path or manifest.default_path(path)}")


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST")
@click.argument("output_path", metavar="OUT")
@click.option("--input", "input_path", metavar="PATH",
              help="The input file (default: the path recorded in the manifest).")
@click.option("--allow-paths", is_flag=True,
              help="Read the files the manifest names outside its own folder (its input, "
                   "filler and system prompt files) and download an hf: input; without it "
                   "rebuild lists them and stops.")
@workers_option
@shared(INPUT, "--ray", "ray_address", metavar="ADDRESS",
        help="A folder of parts (made with --ray): rebuild it on this Ray cluster (local, "
             "auto, ray://HOST:PORT, HOST:PORT); without it, on this machine, cut into the "
             "same parts.")
@report
def rebuild(manifest_path: str, output_path: str, input_path: str | None, allow_paths: bool,
            workers: int | None, ray_address: str | None) -> None:
    """Re-make a file from its manifest and input, byte for byte; exit 1 if it differs.

    A manifest may come from someone else: rebuild reads no file it names outside
    the manifest's folder unless --allow-paths (or --input PATH for the input).

    \b
    Examples:
      promptkit rebuild out.jsonl.manifest.json again.jsonl
      promptkit rebuild downloaded.manifest.json again.jsonl --input my-copy.jsonl
    """
    from promptkit.provenance.rebuild import rebuild as rebuild_file

    result = rebuild_file(manifest_path, output_path, input_path=input_path,
                              argv=PromptkitGroup.argv, workers=workers,
                              allow_paths=allow_paths, ray_address=ray_address)
    parts = "parts" in result["output"]
    summarize(result, f"{output_path}/manifest.json" if parts else
              manifest.default_path(output_path) if output_path != "-" else None)
    if result["output"]["sha256"] == manifest.read(manifest_path)["output"]["sha256"]:
        click.echo(f"promptkit: {output_path} is identical to the file the manifest describes",
                   err=True)
    else:
        click.echo(f"promptkit: {output_path} holds the same lines as the file the manifest "
                   "describes, compressed to other bytes (another zlib or zstd version)",
                   err=True)


@cli.command("formats")
def list_formats() -> None:
    """List the file formats promptkit reads and writes.

    \b
    Example:
      promptkit formats
    """
    for fmt in [*FORMATS.values(), *TABLE_FORMATS.values()]:
        loads = f"aiperf --custom-dataset-type {fmt.aiperf_type}" if fmt.aiperf_type else "-"
        click.echo(f"{fmt.name:15} {fmt.description}  [{loads}]")
    click.echo("Line formats read from JSON lines or a JSON array, plain or compressed "
               "(gzip, zstd, bz2, xz). Any Hugging Face dataset reads too: hf:OWNER/NAME, a "
               "dataset folder, or parquet, arrow or CSV files.")


def shard_size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("publish")
@click.argument("input_path", metavar="IN")
@click.argument("out_dir", metavar="OUT_DIR")
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@shared(OUTPUT, "--to", "to_format", default=DEFAULT_FORMAT, show_default=True,
        type=click.Choice(AIPERF_FORMATS),
              help="Format of aiperf/prompts.jsonl (mooncake_trace holds every record).")
@keep_replies_option
@click.option("--license", "license_id", default=DEFAULT_LICENSE, show_default=True,
              metavar="ID",
              help="The card's license: a Hugging Face license id (apache-2.0, mit, "
                   "cc-by-4.0, other, ...); 'unknown' since promptkit cannot know the input's.")
@click.option("--pretty-name", metavar="TEXT",
              help="The card's title (default: the repository or folder name).")
@click.option("--max-shard-size", default=DEFAULT_SHARD_SIZE, show_default=True,
              metavar="SIZE",
              callback=shard_size,
              help="Largest parquet shard: bytes, or 200KB, 500MB, 1GB, 64MiB ...")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_DIR if it is not empty (only a folder publish made).")
@click.option("--push", "repo_id", metavar="REPO_ID",
              help="Then upload OUT_DIR to this Hugging Face dataset repository (created if "
                   "missing), with the token of HF_TOKEN or 'hf auth login'.")
@click.option("--private", is_flag=True, help="With --push: create the repository private.")
@shared(INPUT, "--skip-invalid", is_flag=True, help=SKIP_HELP)
@workers_option
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random, recorded).")
@dataset_options
@report
def publish_command(input_path: str, out_dir: str, from_format: str | None, to_format: str,
                    keep_replies: bool, license_id: str, pretty_name: str | None,
                    max_shard_size: int, overwrite: bool, repo_id: str | None, private: bool,
                    skip_invalid: bool, workers: int | None, seed: int | None,
                    dataset: dict[str, Any]) -> None:
    """Make a folder that is a Hugging Face dataset repository; --push uploads it.

    OUT_DIR gets data/train-*.parquet (promptkit's columns, in order), a README.md
    dataset card saying how the data was made, aiperf/prompts.jsonl (the file AIPerf
    loads) and its manifest, which lists every published file's sha256.

    \b
    Examples:
      promptkit publish out.jsonl published --license apache-2.0
      promptkit publish out.jsonl published --overwrite --push me/prompts --private
    """
    from promptkit.commands import publish

    if private and repo_id is None:
        raise click.UsageError("--private goes with --push")
    if repo_id is not None:
        problem = publish.repo_id_problem(repo_id)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--push")
        publish.hub_token()  # no token: fail before anything is made
    result = publish.publish(
        input_path, out_dir, from_format=from_format, to_format=to_format,
        skip_invalid=skip_invalid, workers=workers, dataset=with_seed(dataset, seed),
        license=license_id, max_shard_size=max_shard_size, pretty_name=pretty_name,
        repo_id=repo_id, overwrite=overwrite, argv=PromptkitGroup.argv,
        keep_replies=keep_replies)
    shards = [f for f in result["published"]["files"] if f["path"].startswith("data/")]
    out = result["output"]
    click.echo(f"promptkit: published {counted(out['records'], 'record')} "
               f"({result['aiperf']['distinct_records']} distinct) to {out_dir}: "
               f"{counted(len(shards), 'parquet shard')}, "
               f"{publish.AIPERF_FILE} ({out['format']}), "
               f"README.md, {publish.MANIFEST_FILE}", err=True)
    report_skipped(result["skipped"])
    report_steps(result)
    if repo_id is not None:
        url = publish.push(out_dir, repo_id, private=private)
        click.echo(f"promptkit: pushed {out_dir} to {url}", err=True)


# ---------------------------------------------------------------- pipe: one in-process chain


@dataclass
class ReadStage:
    path: str
    from_format: str | None
    skip_invalid: bool
    workers: int | None
    dataset: dict[str, Any]
    ray_address: str | None = None


@dataclass
class WriteStage:
    path: str
    to_format: str | None
    manifest_path: str | None
    keep_replies: bool = False


@cli.group(chain=True)
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
    return ReadStage(path, from_format, skip_invalid, workers, with_seed(dataset, seed),
                     ray_address)


@pipe.command("nonce")
@nonce_options
def pipe_nonce(**options: Any) -> Step:
    """Put a unique nonce in every prompt (same options as 'promptkit nonce')."""
    return nonce_step(**options)


@pipe.command("pad")
@pad_options
@report
def pipe_pad(**options: Any) -> Step:
    """Give records a shared system prompt of exactly N tokens (options as 'promptkit pad')."""
    return pad_step(**options)


@pipe.command("fit")
@fit_options
@report
def pipe_fit(**options: Any) -> Step:
    """Make every user text exactly N tokens (same options as 'promptkit fit')."""
    return fit_step(**options)


@pipe.command("turns")
@turns_options
@report
def pipe_turns(**options: Any) -> Step:
    """Make benchmark requests of recorded conversations (options as 'promptkit turns')."""
    return turns_step(**options)


@pipe.command("check")
@check_options
@click.option("--max-hit-rate", type=click.FloatRange(0, 1), metavar="X",
              help="Fail the whole pipe, writing nothing, when the predicted hit rate "
                   "across conversations is above X.")
@report
def pipe_check(max_hit_rate: float | None, **options: Any) -> Step:
    """Predict the prefix-cache hits of the records at this point (options as 'promptkit
    check'); the report goes into the manifest."""
    params = check_params(**options)
    if max_hit_rate is not None:
        params["max_hit_rate"] = max_hit_rate
    return Step("check", params)


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
    if write.path == "-" and any(s.op == "pad" and s.params["into"] == "file" for s in middle):
        raise click.UsageError("pad --into file writes OUT.system.txt beside OUT, and "
                               "'write -' is stdout: write to a file (write out.jsonl "
                               "writes out.jsonl.system.txt)")
    run_and_report(read.path, write.path, middle,
                   from_format=read.from_format, to_format=write.to_format,
                   skip_invalid=read.skip_invalid, manifest_path=write.manifest_path,
                   workers=read.workers, dataset=read.dataset, ray_address=read.ray_address,
                   keep_replies=write.keep_replies)


def main() -> None:
    """Console entry point: end on SIGINT, SIGTERM and SIGHUP as on an error, and quietly
    when stdout's reader is gone ('| head'), in both cases with nothing left behind."""
    if hasattr(signal, "SIGPIPE"):  # a write to a closed pipe raises, and the run unwinds
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    interrupts.install()
    cli(prog_name="promptkit")


# ---------------------------------------------------------------- bench: run AIPerf from .env


class BenchStop(click.ClickException):
    """'promptkit bench' stops before running (``promptkit: ...``): exit 1."""

    def show(self, file: Any = None) -> None:
        from promptkit.core.redact import redact_text

        click.echo(f"promptkit: {redact_text(self.format_message())}", err=True)


class BenchSettingError(BenchStop):
    """A bad setting of 'promptkit bench': exit 2."""

    exit_code = 2


@cli.command("bench")
@click.option("--env-file", metavar="PATH",
              help="The settings file (default: .env in the current folder, if present); "
                   "see .env.example.")
@click.option("--dry-run", is_flag=True,
              help="Print the exact aiperf profile command (and the predicted hit rate on "
                   "stderr) and stop: no cache reset, no run, nothing written.")
@click.option("--allow-repeats", is_flag=True,
              help="Run even when warmup + requests exceed the file's distinct records "
                   "(prompts repeat and may hit the prefix cache).")
@click.pass_context
def bench_command(ctx: click.Context, env_file: str | None, dry_run: bool,
                  allow_repeats: bool) -> None:
    """Run aiperf profile as .env says; predict, then measure, the prefix-cache hit rate.

    Exit code: AIPerf's; 1 when the runner stops; 2 for a bad setting; 3 when the
    hit rate the server measured is above MAX_HIT_RATE; 128 + n for a run that
    signal n stopped (130: Ctrl-C), with no comparison and no cache_condition.json.

    \b
    Examples:
      promptkit bench --dry-run
      promptkit bench --env-file vllm.env
      CONCURRENCY=16 promptkit bench --allow-repeats
    """
    from promptkit.commands import bench

    try:
        code = bench.bench(env_file, dry=dry_run, allow_repeats=allow_repeats)
    except bench.SettingError as exc:
        raise BenchSettingError(str(exc)) from None
    except PromptkitError as exc:
        raise BenchStop(str(exc)) from None
    ctx.exit(code)
