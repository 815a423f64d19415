"""How promptkit's commands show their options: each command's own options first, then
the options every file command shares, in named sections ("Input options", ...).

An option joins a shared section by being made with :func:`shared`; every other
option is the command's own and is listed first, under "Options". The same grouping
makes the generated reference, ``docs/cli.md`` (:func:`reference`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import click

#: The shared sections, in the order help lists them (after the command's own options).
INPUT = "Input options"
DATASET = "Dataset and column options"
OUTPUT = "Output options"
SECTIONS = (INPUT, DATASET, OUTPUT)
OWN = "Options"
#: The order of the shared input options, whichever order a command declares them in.
INPUT_ORDER = ("--from", "--limit", "--shuffle", "--seed", "--skip-invalid", "--workers")


class SectionOption(click.Option):
    """An option listed in one of the shared :data:`SECTIONS`."""

    def __init__(self, *args: Any, section: str, **kwargs: Any) -> None:
        assert section in SECTIONS, section
        self.section = section
        super().__init__(*args, **kwargs)


def shared(section: str, *decls: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``click.option(*decls, **kwargs)``, listed in the shared ``section``."""
    return click.option(*decls, cls=SectionOption, section=section, **kwargs)


def section_of(param: click.Parameter) -> str:
    return param.section if isinstance(param, SectionOption) else OWN


def sections(command: click.Command, ctx: click.Context
             ) -> Iterator[tuple[str, list[click.Option]]]:
    """``(heading, options)`` of ``command``: its own first (help last among them), then
    each shared section it has, in :data:`SECTIONS` order."""
    options = [p for p in command.get_params(ctx) if isinstance(p, click.Option)]
    for heading in (OWN, *SECTIONS):
        chosen = [p for p in options if section_of(p) == heading]
        if heading == INPUT:
            chosen.sort(key=lambda p: INPUT_ORDER.index(p.opts[0])
                        if p.opts[0] in INPUT_ORDER else len(INPUT_ORDER))
        if chosen:
            yield heading, chosen


def _write_sections(command: click.Command, ctx: click.Context,
                    formatter: click.HelpFormatter) -> None:
    for heading, params in sections(command, ctx):
        records = [r for r in (p.get_help_record(ctx) for p in params) if r is not None]
        if records:
            with formatter.section(heading):
                formatter.write_dl(records)


def default_metavars(command: click.Command) -> None:
    """One metavar style: a whole number is ``N``, any other number ``X``; an option of
    text must name its own (``PATH``, ``COL``, ``T`` ...). Click's type names
    (``INTEGER RANGE``) never show."""
    for param in command.params:
        if (not isinstance(param, click.Option) or param.is_flag or param.metavar is not None
                or isinstance(param.type, click.Choice)):
            continue
        if isinstance(param.type, click.types.IntParamType):
            param.metavar = "N"
        elif isinstance(param.type, click.types.FloatParamType):
            param.metavar = "X"
        else:
            raise TypeError(f"{command.name} {param.opts[0]}: give it a metavar")


class SectionedCommand(click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default_metavars(self)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_sections(self, ctx, formatter)


class SectionedGroup(click.Group):
    command_class = SectionedCommand
    group_class: type[click.Group] | type[type] = type  # subgroups: of this class too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        default_metavars(self)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        _write_sections(self, ctx, formatter)
        self.format_commands(ctx, formatter)


# ---------------------------------------------------------------- the reference


def all_commands(group: click.Group, prefix: str = "promptkit"
                 ) -> Iterator[tuple[str, click.Command]]:
    """``(full name, command)`` of ``group`` and every command under it, depth first,
    in the order ``--help`` lists them."""
    yield prefix, group
    ctx = click.Context(group, info_name=prefix)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{prefix} {name}")
        else:
            yield f"{prefix} {name}", command


def _context(name: str, command: click.Command) -> click.Context:
    return click.Context(command, info_name=name, terminal_width=88, max_content_width=88,
                         help_option_names=["-h", "--help"])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def reference(group: click.Group) -> str:
    """The Markdown reference of every command and option of ``group`` (docs/cli.md)."""
    out = ["# promptkit command reference", "",
           "Every command and option, as `--help` shows them. Generated from the commands "
           "by `python scripts/cli_reference.py > docs/cli.md`; do not edit by hand.", ""]
    commands = list(all_commands(group))
    for name, _ in commands:
        out.append(f"- [`{name}`](#{name.replace(' ', '-')})")
    for name, command in commands:
        ctx = _context(name, command)
        formatter = ctx.make_formatter()
        command.format_usage(ctx, formatter)
        command.format_help_text(ctx, formatter)
        if isinstance(command, click.Group):
            command.format_commands(ctx, formatter)
        out += ["", f'<a id="{name.replace(" ", "-")}"></a>', "", f"## `{name}`", "",
                "```text", formatter.getvalue().rstrip(), "```"]
        for heading, params in sections(command, ctx):
            rows = [r for r in (p.get_help_record(ctx) for p in params) if r is not None]
            out += ["", f"**{heading}**", "", "| Option | Description |", "| --- | --- |"]
            out += [f"| `{_cell(left)}` | {_cell(right)} |" for left, right in rows]
    return "\n".join(out) + "\n"
