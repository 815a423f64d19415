"""Every promptkit command the README shows in a ``sh`` block runs as shown."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "prompts", folder / "prompts")
    return folder


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_shown(command, workdir):
    assert command.startswith("promptkit ")
    # 'promptkit' as the console script next to this interpreter, the rest as written.
    script = Path(sys.executable).with_name("promptkit")
    result = subprocess.run(command.replace("promptkit ", f"{script} "), shell=True,
                            cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_readme_python_examples_run(workdir, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(workdir)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    lines = (workdir / "api-out.jsonl").read_text().splitlines()
    assert len(lines) == 20
    import datasets

    mapped = datasets.load_dataset("parquet", data_files=str(workdir / "alpaca-map.parquet"),
                                   split="train")
    assert mapped.num_rows == 16
    cli = workdir / "alpaca-cli.parquet"
    script = Path(sys.executable).with_name("promptkit")
    subprocess.run([str(script), "nonce", "prompts/alpaca-sample.parquet", str(cli), "--to",
                    "parquet", "--seed", "7"], cwd=workdir, check=True, capture_output=True)
    from_cli = datasets.load_dataset("parquet", data_files=str(cli), split="train")
    assert mapped.to_list() == from_cli.to_list()
