"""A scratch folder holding what a clone holds at its top, as a git repository, so
the README's and the guides' examples run where a user runs them and leave a clean
``git status`` behind (the repository's ``.gitignore`` covers what they write)."""

from __future__ import annotations

import shutil
import subprocess
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
