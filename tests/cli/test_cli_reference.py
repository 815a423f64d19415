"""docs/cli.md is made from the commands and is current; every command is in the README
and every option in the reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from promptkit.cli import cli
from promptkit.cli.help import all_commands, reference

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "cli.md"


def test_the_reference_is_current():
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py")],
                          capture_output=True, text=True, check=True).stdout
    assert made == reference(cli)
    assert REFERENCE.read_text(encoding="utf-8") == made, (
        "docs/cli.md is out of date: python scripts/cli_reference.py > docs/cli.md")


def test_every_command_and_option_is_in_the_reference():
    text = REFERENCE.read_text(encoding="utf-8")
    for name, command in all_commands(cli):
        assert f"## `{name}`" in text, name
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    assert f"`{opt}" in text or f", {opt}" in text, (name, opt)
    assert "`--limit N`" in text and "`-V, --version`" in text


def test_every_command_is_in_the_readme_which_links_the_reference():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pipes = [line for line in readme.splitlines() if line.startswith("promptkit pipe ")]
    for name, _ in all_commands(cli):
        if name.startswith("promptkit pipe "):  # a stage: in a pipe the README shows
            stage = name.removeprefix("promptkit pipe ")
            assert any(f" {stage} " in line for line in pipes), name
        else:
            assert name in readme, name
    assert "[docs/cli.md](docs/cli.md)" in readme
