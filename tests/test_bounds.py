"""Bounded on hostile input: files read whole have a size bound and are never devices;
decompression goes a bounded piece at a time; a long line costs linear time; numbers
have upper bounds; deep nesting is one line.

Every hostile run here is a child process under a memory limit (``limited.run_limited``):
one that reads without bound fails in its own address space, and its peak resident
memory is measured.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from helpers import write_jsonl
from limited import run_limited

#: What a bounded run may take: the memory bound of the hostile-input drill.
PEAK_MB = 500


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1, stderr[-2000:]
    return stderr.rstrip("\n")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"text": "What is the capital of Japan?"},
                                               {"text": "Name three primes."}])


# ---------------------------------------------------------------- files read whole


@pytest.mark.parametrize(("args", "what"), [
    (["pad", "{in}", "{out}", "--tokens", "64", "--tokenizer", "cl100k_base", "--to", "openai",
      "--system-prompt", "Hi.", "--filler-file", "/dev/zero"], "filler file"),
    (["fit", "{in}", "{out}", "--tokens", "64", "--tokenizer", "cl100k_base",
      "--filler-file", "/dev/zero"], "filler file"),
    (["pad", "{in}", "{out}", "--tokens", "64", "--tokenizer", "cl100k_base", "--to", "openai",
      "--system-prompt-file", "/dev/zero"], "system prompt file"),
    (["check", "{in}", "--tokenizer", "cl100k_base", "--system-prompt-file", "/dev/zero"],
     "system prompt file"),
    (["verify", "{in}", "--manifest", "/dev/zero"], "manifest"),
    (["rebuild", "/dev/zero", "{out}"], "manifest"),
])
def test_a_device_given_as_a_file_read_whole_is_one_line(args, what, prompts, tmp_path):
    out = tmp_path / "out.jsonl"
    ran = run_limited(*(a.format(**{"in": prompts, "out": out}) for a in args), timeout=60)
    assert ran.code == 1 and not ran.timed_out
    line = one_line(ran.stderr)
    assert line.endswith(f"/dev/zero: a device, not a {what}"), line
    assert ran.peak_mb < PEAK_MB
    assert not out.exists()


def test_a_file_larger_than_any_system_prompt_is_refused(prompts, tmp_path, run):
    from promptkit import limits

    huge = tmp_path / "prompt.txt"
    with huge.open("w") as f:
        for _ in range((limits.MAX_WHOLE_FILE >> 20) + 1):
            f.write("word " * (1 << 18))
    out = tmp_path / "out.jsonl"
    result = run("pad", prompts, out, "--tokens", "64", "--tokenizer", "cl100k_base",
                 "--to", "openai", "--system-prompt-file", huge)
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {huge}: over 64 MiB, more than a system prompt file "
                             "can be; is it the right file?\n")
    assert not out.exists()


def test_a_system_prompt_from_a_pipe_is_read(prompts, tmp_path, run):
    fifo = tmp_path / "prompt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("You are terse."))
    writer.start()
    out = tmp_path / "out.jsonl"
    result = run("pad", prompts, out, "--tokens", "32", "--tokenizer", "cl100k_base",
                 "--to", "openai", "--system-prompt-file", fifo)
    writer.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    first = json.loads(out.read_text().splitlines()[0])
    assert first["messages"][0]["content"].startswith("You are terse.")
