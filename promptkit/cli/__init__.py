"""The command line: the ``promptkit`` group, its commands and the console entry point.

Click and options only: each command parses its options, calls :mod:`promptkit.commands`
(where what it does lives, callable from Python) and prints. The commands are in
:mod:`promptkit.cli.records` (records in, records out; ``pipe``),
:mod:`promptkit.cli.reports` (``stats``, ``check``) and :mod:`promptkit.cli.files`
(``synth``, ``verify``, ``rebuild``, ``formats``, ``publish``, ``bench``); the options they
share are :mod:`promptkit.cli.options`, errors and printed lines :mod:`promptkit.cli.base`.
"""

from __future__ import annotations

import signal

import click

from promptkit.cli import files, records, reports
from promptkit.cli.base import PromptkitGroup
from promptkit.core import interrupts, progress
from promptkit.core.version import VERSION


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


for command in (records.nonce, records.pad, records.fit, records.turns, records.hash_trace,
                records.pipe, reports.stats, reports.check, files.synth, files.verify,
                files.rebuild, files.list_formats, files.publish_command, files.bench_command):
    cli.add_command(command)


def main() -> None:
    """Console entry point: end on SIGINT, SIGTERM and SIGHUP as on an error, and quietly
    when stdout's reader is gone ('| head'), in both cases with nothing left behind."""
    if hasattr(signal, "SIGPIPE"):  # a write to a closed pipe raises, and the run unwinds
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    interrupts.install()
    cli(prog_name="promptkit")
