"""Every promptkit command the guides show in a ``sh`` block runs as shown, and the
English and Japanese guides are kept in step (same sections, same commands)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import example_clone
import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """The guide's commands, each run once in its own folder (tests/example_clone.py)."""
    return example_clone.Steps(tmp_path_factory.mktemp("guide"), commands(GUIDE), run_step)


#: What the guarded part of a command shown failing ("A || B") printed, by command.
GUARDED: dict[str, subprocess.CompletedProcess[str]] = {}


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # 'promptkit' as the console script next to this interpreter, the rest as written.
    script = Path(sys.executable).with_name("promptkit")
    return subprocess.run(
        command.replace("promptkit ", f"{script} "),
        shell=True,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_step(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command as shown; for a guard shown failing, its guarded part first, alone."""
    if " || " in command:
        GUARDED[command] = run(command.split(" || ")[0], cwd)
    return run(command, cwd)


@pytest.mark.parametrize("index", range(len(commands(GUIDE))), ids=commands(GUIDE))
def test_guide_command_runs_as_shown(index, steps):
    command = steps.commands[index]
    assert command.startswith("promptkit ")
    _, result = steps.result(index)
    if " || " in command:
        # A guard shown failing: the guarded command itself must exit 1, as the guide says.
        guarded = GUARDED[command]
        assert guarded.returncode == 1, guarded.stdout + guarded.stderr
        assert "is above --max-hit-rate" in guarded.stderr
    assert result.returncode == 0, result.stderr


#: Figures the guide's prose gives that its commands do not print, and why.
NOT_PRINTED = {
    "52.50%": "what check would say without the manifest's system prompt",
}

BLOCKS = [(lines, prose) for lines, prose
          in example_clone.blocks_and_prose(GUIDE.read_text(encoding="utf-8"))
          if example_clone.FIGURE.search(prose)]


@pytest.mark.parametrize(("lines", "prose"), BLOCKS, ids=[lines[0] for lines, _ in BLOCKS])
def test_the_figures_the_guide_gives_are_printed(lines, prose, steps):
    """Each hit rate the text after a block gives is in what the block's commands print
    (or, for a pipe's ``check`` stage, record in the manifest they write)."""
    printed = ""
    for line in lines:
        index = steps.commands.index(line)
        folder, result = steps.result(index)
        guarded = GUARDED.get(line)
        printed += result.stdout + result.stderr + (guarded.stdout + guarded.stderr
                                                    if guarded else "")
        for manifest in folder.glob("*.manifest.json"):
            if f" {manifest.name.removesuffix('.manifest.json')}" in line:
                rates = re.findall(r'"hit_rate": ([0-9.]+)', manifest.read_text("utf-8"))
                printed += " ".join(f"{float(rate):.2%}" for rate in rates)
    missing = [figure for figure in example_clone.FIGURE.findall(prose)
               if figure not in printed and figure not in NOT_PRINTED]
    assert missing == [], printed


def test_the_manifest_shown_is_the_one_written(steps):
    """The guide shows the ``aiperf`` part of ``long-x4.jsonl.manifest.json``."""
    text = GUIDE.read_text(encoding="utf-8")
    shown = json.loads("{" + re.search(r"```json\n(.*?)```", text, flags=re.S).group(1) + "}")
    writes = next(i for i, c in enumerate(steps.commands) if " long-x4.jsonl " in c)
    folder, _ = steps.result(writes)
    written = json.loads((folder / "long-x4.jsonl.manifest.json").read_text(encoding="utf-8"))
    assert {key: written["aiperf"][key] for key in shown["aiperf"]} == shown["aiperf"]


def test_the_examples_leave_git_status_clean(steps):
    """The guide's examples, run at the top of a clone in the guide's order, add nothing
    to ``git status``."""
    folder = steps.last_folder()
    assert len(list(folder.glob("*.manifest.json"))) >= 10  # the examples did write
    assert example_clone.untracked(folder) == []
