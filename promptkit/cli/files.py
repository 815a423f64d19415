"""The commands around files: ``synth`` (generate one), ``verify`` and ``rebuild`` (its
manifest), ``formats``, ``publish`` (a dataset repository) and ``bench`` (run AIPerf on
one): options in, the work done by :mod:`promptkit.commands`, lines out."""

from __future__ import annotations

from typing import Any

import click

from promptkit.cli.base import (
    PromptkitGroup,
    UserError,
    report,
    report_skipped,
    report_steps,
    summarize,
)
from promptkit.cli.help import INPUT, OUTPUT, SectionedCommand, SectionedGroup, shared
from promptkit.cli.options import (
    FORMAT_CHOICE,
    OUTPUT_CHOICE,
    SKIP_HELP,
    dataset_options,
    keep_replies_option,
    workers_option,
)
from promptkit.commands import publish
from promptkit.commands import synth as synth_command
from promptkit.commands.common import manifest_path_for
from promptkit.commands.publish import (
    AIPERF_FORMATS,
    DEFAULT_FORMAT,
    DEFAULT_LICENSE,
    DEFAULT_SHARD_SIZE,
    parse_size,
)
from promptkit.commands.verify import rebuild as rebuild_command
from promptkit.commands.verify import verify as verify_command
from promptkit.core.errors import PromptkitError
from promptkit.core.limits import MAX_GROUPS, MAX_RECORDS, MAX_TOKENS
from promptkit.core.redact import redact_text
from promptkit.core.words import counted
from promptkit.formats import FORMATS, TABLE_FORMATS
from promptkit.provenance import manifest


@click.group(cls=SectionedGroup)
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
    result = synth_command.prefix_test(
        output_path, groups=groups, group_size=group_size, system_tokens=system_tokens,
        tokenizer=tokenizer, system_prompt=system_prompt, filler_file=filler_file,
        order=order, output_tokens=output_tokens, to_format=to_format, seed=seed,
        manifest_path=manifest_path, argv=PromptkitGroup.argv)
    summarize(result, manifest_path_for(output_path, manifest_path))


@click.command(cls=SectionedCommand)
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
    checked = verify_command(path, manifest_path)
    if checked["problems"]:
        raise UserError(f"{path}: does not match its manifest: "
                        + "; ".join(checked["problems"]))
    click.echo(f"{path}: OK, matches {checked['manifest']}")



@click.command(cls=SectionedCommand)
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
    result = rebuild_command(manifest_path, output_path, input_path=input_path,
                             allow_paths=allow_paths, workers=workers, ray=ray_address,
                             argv=PromptkitGroup.argv)
    parts = "parts" in result["output"]
    summarize(result, manifest_path_for(output_path, parts=parts))
    if result["output"]["sha256"] == manifest.read(manifest_path)["output"]["sha256"]:
        click.echo(f"promptkit: {output_path} is identical to the file the manifest describes",
                   err=True)
    else:
        click.echo(f"promptkit: {output_path} holds the same lines as the file the manifest "
                   "describes, compressed to other bytes (another zlib or zstd version)",
                   err=True)



@click.command("formats", cls=SectionedCommand)
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


@click.command("publish", cls=SectionedCommand)
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
    if private and repo_id is None:
        raise click.UsageError("--private goes with --push")
    if repo_id is not None:
        problem = publish.repo_id_problem(repo_id)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--push")
        publish.hub_token()  # no token: fail before anything is made
    result = publish.publish(
        input_path, out_dir, from_format=from_format, to_format=to_format,
        skip_invalid=skip_invalid, workers=workers, dataset=dataset, seed=seed,
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


# ---------------------------------------------------------------- bench: run AIPerf from .env


class BenchStop(click.ClickException):
    """'promptkit bench' stops before running (``promptkit: ...``): exit 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"promptkit: {redact_text(self.format_message())}", err=True)


class BenchSettingError(BenchStop):
    """A bad setting of 'promptkit bench': exit 2."""

    exit_code = 2


@click.command("bench", cls=SectionedCommand)
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
    from promptkit.commands import bench  # (urllib.request, ssl: on demand, for start-up)

    try:
        code = bench.bench(env_file, dry=dry_run, allow_repeats=allow_repeats)
    except bench.SettingError as exc:
        raise BenchSettingError(str(exc)) from None
    except PromptkitError as exc:
        raise BenchStop(str(exc)) from None
    ctx.exit(code)
