"""What every command of the command line shares: the root group's class (the
arguments it was called with, ``--quiet``), errors mapped to exit codes, and the lines a
run prints on stderr.

Errors a user can cause print one line, ``promptkit: FILE:LINE: problem``, and exit 1;
bad option combinations are usage errors (exit 2). Data goes to stdout only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from promptkit.cli.help import SectionedGroup
from promptkit.core import interrupts
from promptkit.core.errors import BadOptionError, PromptkitError
from promptkit.core.interrupts import Interrupted
from promptkit.core.redact import redact_text
from promptkit.core.words import counted, plural
from promptkit.io.files import os_error


class UserError(click.ClickException):
    """A data error: one line, ``promptkit: FILE:LINE: problem``, exit 1."""

    def show(self, file: Any = None) -> None:
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


def files_not_stdout(*options: tuple[str, str | None]) -> None:
    """Refuse ``-`` for an option that names a file beside the report (``--plot``,
    ``--per-request``): stdout carries the report."""
    for option, value in options:
        if value == "-":
            raise click.UsageError(f"{option} -: stdout carries the report; name a file")


def report_wrote(paths: list[str]) -> None:
    for path in paths:
        click.echo(f"promptkit: wrote {path}", err=True)


def report_ray(result: dict[str, Any]) -> None:
    """``--ray``: the parts written, the chunks and the nodes."""
    click.echo(f"promptkit: {counted(len(result['output']['parts']), 'part')} from "
               f"{counted(result['ray']['chunks'], 'chunk')} on "
               f"{counted(result['ray']['nodes'], 'Ray node')}", err=True)
