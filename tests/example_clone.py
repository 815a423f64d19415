"""A scratch folder holding what a clone holds at its top, as a git repository, so
the README's and the guides' examples run where a user runs them and leave a clean
``git status`` behind (the repository's ``.gitignore`` covers what they write)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(folder: Path) -> Path:
    """Copy the shipped inputs and ``.gitignore`` into ``folder`` and commit them."""
    for name in ("prompts", "data"):
        shutil.copytree(ROOT / name, folder / name)
    shutil.copy(ROOT / ".gitignore", folder / ".gitignore")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "clone")
    return folder


def untracked(folder: Path) -> list[str]:
    """What ``git status`` would show a user: files the examples left and git sees."""
    return git(folder, "status", "--porcelain", "--untracked-files=all").splitlines()


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True,
                          text=True).stdout


class Steps:
    """A document's commands, each run once in a folder of its own: a copy of the folder
    the command before it ran in, so that it finds what a reader who ran the document's
    commands in order has (the clone's files and what the earlier commands wrote),
    whichever tests ran before it. A test run alone runs the commands before it first.

    ``run(command, folder)`` runs one command; :meth:`result` gives the folder a command
    ran in (kept: later tests read what it wrote) and what it returned."""

    def __init__(self, base: Path, commands: list[str],
                 run: Callable[[str, Path], subprocess.CompletedProcess[str]]) -> None:
        self.base = base
        self.commands = commands
        self.run = run
        self.done: list[tuple[Path, subprocess.CompletedProcess[str]]] = []

    def result(self, index: int) -> tuple[Path, subprocess.CompletedProcess[str]]:
        while len(self.done) <= index:
            number = len(self.done)
            folder = self.base / f"{number:03d}"
            if self.done:
                shutil.copytree(self.done[-1][0], folder, symlinks=True)
            else:
                make(folder)
            self.done.append((folder, self.run(self.commands[number], folder)))
        return self.done[index]

    def last_folder(self) -> Path:
        return self.result(len(self.commands) - 1)[0]


#: A figure the prose gives, as the commands print it: "50.96%".
FIGURE = re.compile(r"\b\d+\.\d\d%")


def blocks_and_prose(text: str) -> list[tuple[list[str], str]]:
    """Each ``sh`` block's command lines (fences at any indentation) and the paragraph
    that follows it (none when a fence or heading comes first): where a document says
    what the commands print."""
    out: list[tuple[list[str], str]] = []
    fence = None  # the info string of the open fence; None outside a fence
    prose: list[str] | None = None  # the paragraph after the last sh block, being read
    for line in text.splitlines():
        stripped = line.strip()
        if prose is not None and (stripped.startswith(("```", "#")) or not stripped and prose):
            out[-1] = (out[-1][0], "\n".join(prose))
            prose = None
        if stripped.startswith("```"):
            if fence is None:
                fence = stripped[3:]
                if fence == "sh":
                    out.append(([], ""))
            else:
                prose = [] if fence == "sh" else None
                fence = None
        elif fence == "sh" and stripped:
            out[-1][0].append(line)
        elif prose is not None and stripped:
            prose.append(line)
    if prose is not None:
        out[-1] = (out[-1][0], "\n".join(prose))
    return out
