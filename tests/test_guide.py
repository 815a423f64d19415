"""Every promptkit command the guides show in a ``sh`` block runs as shown, and the
English and Japanese guides are kept in step (same sections, same commands)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import example_clone
import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guide.md"
GUIDE_JA = ROOT / "docs" / "guide.ja.md"


def sections(path: Path) -> list[tuple[int, list[str]]]:
    """(heading level, the ``sh`` command lines under it) of each heading, in order.

    Fences are recognised at any indentation, so an indented ``sh`` block is run (and
    fails the "starts with promptkit" check) instead of being skipped.
    """
    out: list[tuple[int, list[str]]] = [(0, [])]
    fence = None  # the info string of the open fence; None outside a fence
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:] if fence is None else None
        elif fence is None:
            heading = re.match(r"(#{1,6}) ", line)
            if heading:
                out.append((len(heading.group(1)), []))
        elif fence == "sh" and stripped:
            out[-1][1].append(line)
    return out


def commands(path: Path) -> list[str]:
    return [line for _, lines in sections(path) for line in lines]


def test_the_guide_shows_commands():
    assert len(commands(GUIDE)) >= 20
    assert all(line.startswith("promptkit ") for line in commands(GUIDE))


def test_the_guides_are_in_step():
    english, japanese = sections(GUIDE), sections(GUIDE_JA)
    assert [level for level, _ in japanese] == [level for level, _ in english]
    assert commands(GUIDE_JA) == commands(GUIDE)
    # The same commands under the same sections, not only in the same order.
    assert [lines for _, lines in japanese] == [lines for _, lines in english]


def test_the_readme_links_both_guides():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/guide.md)" in readme
    assert "(docs/guide.ja.md)" in readme


#: The examples run so far in the module's workdir.
RAN: set[str] = set()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return example_clone.make(tmp_path_factory.mktemp("guide"))


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # 'promptkit' as the console script next to this interpreter, the rest as written.
    script = Path(sys.executable).with_name("promptkit")
    RAN.add(command)
    return subprocess.run(
        command.replace("promptkit ", f"{script} "),
        shell=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", commands(GUIDE))
def test_guide_command_runs_as_shown(command, workdir):
    assert command.startswith("promptkit ")
    if " || " in command:
        # A guard shown failing: the guarded command itself must exit 1, as the guide says.
        guarded = run(command.split(" || ")[0], workdir)
        assert guarded.returncode == 1, guarded.stdout + guarded.stderr
        assert "is above --max-hit-rate" in guarded.stderr
    result = run(command, workdir)
    assert result.returncode == 0, result.stderr


def test_the_examples_leave_git_status_clean(workdir):
    """The guide's examples, run at the top of a clone, add nothing to ``git status``
    (those not run yet in this session run here first, in the guide's order)."""
    for command in commands(GUIDE):
        if command not in RAN:
            run(command, workdir)  # a guard shown failing exits 0 through its "||"
    assert len(list(workdir.glob("*.manifest.json"))) >= 10  # the examples did write
    assert example_clone.untracked(workdir) == []
