"""Every promptkit command the README shows in a ``sh`` block runs as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import example_clone
import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """Every line of the ``sh`` blocks, and the commands of the datasets table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    table = re.findall(r"^\|.*\| `(promptkit [^`]+)` \|$", text, flags=re.M)
    return [line for block in blocks for line in block.splitlines() if line.strip()] + table


def test_the_datasets_table_is_run():
    table = [c for c in readme_commands() if "sharegpt-sample.json sharegpt.jsonl" in c]
    assert len(table) == 1


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 10


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """The README's commands, each run once in its own folder (tests/example_clone.py)."""
    return example_clone.Steps(tmp_path_factory.mktemp("readme"), readme_commands(), run)


@pytest.mark.parametrize("index", range(len(readme_commands())), ids=readme_commands())
def test_readme_command_runs_as_shown(index, steps):
    command = steps.commands[index]
    assert command.startswith("promptkit ")
    _, result = steps.result(index)
    assert result.returncode == 0, result.stderr


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # 'promptkit' as the console script next to this interpreter, the rest as written.
    script = Path(sys.executable).with_name("promptkit")
    return subprocess.run(command.replace("promptkit ", f"{script} "), shell=True, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def workdir(tmp_path):
    return example_clone.make(tmp_path / "clone")


def test_readme_python_examples_run(workdir, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    monkeypatch.chdir(workdir)
    for code in blocks:
        if "promptkit.ray" in code:
            continue  # on a Ray cluster: tests/integration/test_ray.py runs it
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = (workdir / "api-out.jsonl").read_text().splitlines()
    assert len(lines) == 20
    script = Path(sys.executable).with_name("promptkit")
    for api, command in (("api-nonced.jsonl", "nonce prompts/trace.jsonl.example {} --seed 7"),
                         ("api-padded.jsonl", "pipe read prompts/chat.jsonl.example pad "
                          "--tokens 256 --tokenizer cl100k_base --seed 7 nonce --at user "
                          "--seed 8 write {}")):
        subprocess.run([str(script), *command.format("cli.jsonl").split()], cwd=workdir,
                       check=True, capture_output=True)
        assert (workdir / api).read_bytes() == (workdir / "cli.jsonl").read_bytes()
    import datasets

    mapped = datasets.load_dataset("parquet", data_files=str(workdir / "alpaca-map.parquet"),
                                   split="train")
    assert mapped.num_rows == 16
    cli = workdir / "alpaca-cli.parquet"
    subprocess.run([str(script), "nonce", "prompts/alpaca-sample.parquet", str(cli), "--to",
                    "parquet", "--seed", "7"], cwd=workdir, check=True, capture_output=True)
    from_cli = datasets.load_dataset("parquet", data_files=str(cli), split="train")
    assert mapped.to_list() == from_cli.to_list()


def test_the_examples_leave_git_status_clean(steps):
    """A user who runs the README's examples at the top of a clone, in the README's
    order, sees no new files in ``git status``."""
    folder = steps.last_folder()
    assert len(list(folder.glob("*.manifest.json"))) >= 10  # the examples did write
    assert example_clone.untracked(folder) == []


#: Phrases a user's copy must not contain: paths only this project's machines have,
#: the PyPI name ``promptkit`` (an unrelated package there), the retired CLI name.
FORBIDDEN = ("shared/data", "pypi.org/project/promptkit", "install 'promptkit[",
             "install promptkit", "huggingface-cli", "this session", "the issue's")


@pytest.mark.parametrize("path", sorted(
    p.relative_to(ROOT).as_posix()
    for pattern in ("README.md", "docs/*.md", "data/*/README.md", "scripts/*.py",
                    "promptkit/**/*.py", ".env.example")
    for p in ROOT.glob(pattern)))
def test_what_users_read_points_at_what_they_have(path):
    text = (ROOT / path).read_text(encoding="utf-8").lower()
    assert [phrase for phrase in FORBIDDEN if phrase in text] == []


def test_the_quick_start_is_two_commands_and_ci_runs_the_second():
    """Setup is two commands: install and run the main job, install and run the tests;
    ``.ci/run`` runs the second one, nothing more."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    commands = [line for block in blocks[:2] for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    assert commands[0].startswith("pip install . && promptkit ")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == commands[1]
