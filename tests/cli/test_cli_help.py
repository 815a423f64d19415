"""What a new user meets in ``--help``: every command's own options first, the shared
ones after in named sections; one metavar style; ``-V``."""

from __future__ import annotations

import re

import click
import pytest

from promptkit import __version__
from promptkit.cli import cli
from promptkit.cli.help import OWN, SECTIONS, all_commands, section_of

COMMANDS = dict(all_commands(cli))
HEADING = re.compile(r"^(\S[^:]*):$")
OPTION = re.compile(r"^  (?:-\w, )?(--[\w-]+)")  # its long name


def help_sections(text: str) -> list[tuple[str, list[str]]]:
    """``(heading, options)`` of a help text, in the order it shows them."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            out.append((heading.group(1), []))
            continue
        option = OPTION.match(line)
        if option and out:
            out[-1][1].append(option.group(1))
    return out


def shown_help(run, name: str) -> str:
    result = run(*name.split()[1:], "--help")
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_own_options_come_first_then_the_shared_sections(name, run):
    command = COMMANDS[name]
    ctx = click.Context(command, info_name=name)
    shown = [(h, opts) for h, opts in help_sections(shown_help(run, name))
             if h in (OWN, *SECTIONS)]
    headings = [h for h, _ in shown]
    assert headings[0] == OWN, headings
    assert headings == [h for h in (OWN, *SECTIONS) if h in headings]  # in order, once each
    want = {max(p.opts, key=len): section_of(p) for p in command.get_params(ctx)
            if isinstance(p, click.Option)}
    where = {opt: heading for heading, opts in shown for opt in opts}
    assert where == want


@pytest.mark.parametrize(("name", "own"), [
    ("nonce", "--kind"), ("fit", "--tokens"), ("pad", "--tokens"), ("turns", "--mode"),
    ("check", "--engine"), ("pipe nonce", "--at")])
def test_a_commands_own_options_are_above_the_dataset_options(name, own, run):
    text = shown_help(run, f"promptkit {name}")
    if "--config" in text:
        assert text.index(f"  {own} ") < text.index("  --config ")
    assert text.index(f"  {own} ") < text.index("\n  -h, --help")


RAW_TYPES = re.compile(r"\b(INTEGER|FLOAT|BOOLEAN|FILENAME|DIRECTORY|RANGE|UUID)\b")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_one_metavar_style_and_no_click_type_names(name, run):
    assert not RAW_TYPES.search(shown_help(run, name))
    for param in COMMANDS[name].params:
        if not isinstance(param, click.Option) or param.is_flag:
            continue
        if isinstance(param.type, click.Choice):
            continue
        assert param.metavar, (name, param.opts)
        assert re.fullmatch(r"[A-Z][A-Z_.|,]*(\.png)?", param.metavar), (name, param.metavar)
        if isinstance(param.type, click.types.IntParamType):
            assert param.metavar == "N", (name, param.opts)
        elif isinstance(param.type, click.types.FloatParamType):
            assert param.metavar == "X", (name, param.opts)


def test_an_option_of_text_without_a_metavar_is_refused():
    with pytest.raises(TypeError, match="--name: give it a metavar"):
        @cli.command("unnamed-test-command")
        @click.option("--name")
        def unnamed(name: str) -> None:
            pass


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_short_version_flag(flag, run):
    result = run(flag)
    assert result.exit_code == 0
    assert result.stdout == f"promptkit, version {__version__}\n"
