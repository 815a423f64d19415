"""Progress on a terminal: every pass over the data shows a labelled line whose record
count rises while the pass runs, on stderr only, and nothing when stderr is no terminal
or with ``--quiet``.

The command line runs for real in a child process whose stderr is a pseudo-terminal;
what the terminal receives is read as it arrives, noting whether the child was still
running when each piece was read (so an update read then was drawn before the end).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import re
import select
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, write_jsonl

#: One drawn progress line: "LABEL: N UNIT [...]" or "LABEL:  45%|███| N/TOTAL UNIT [...]".
LINE = re.compile(r"(?P<label>[a-z][a-z ,]*): +(?:\d+%\|[^|]*\| )?(?P<n>[\d,]+)"
                  r"(?:/(?P<total>[\d,]+))? (?P<unit>records|prompts|requests) \[")
#: What tqdm writes to move between lines or clear one.
ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda",
         "sigma", "omega", "river", "stone", "cloud", "table", "window", "garden", "engine",
         "signal", "harbor", "lantern", "meadow", "copper", "violet", "tunnel", "summit"]


@dataclass
class Update:
    label: str
    n: int
    total: int | None
    unit: str
    running: bool  # the child had not exited when this was read


@dataclass
class Terminal:
    returncode: int
    updates: list[Update]
    text: str  # everything the terminal received, escapes and carriage returns removed


def on_terminal(*args: str | Path, cwd: Path, stdout: Path | None = None,
                prelude: str = "") -> Terminal:
    """Run ``promptkit ARGS`` with stderr on a pseudo-terminal (160 columns) and stdout
    to a file (``prelude``: Python run first in the child, e.g. smaller chunks)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    code = f"{prelude}\nfrom promptkit.cli import main\nmain()"
    out = open(stdout or os.devnull, "wb")  # noqa: SIM115 (closed below)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=slave, env=env)
    os.close(slave)
    pieces: list[tuple[bool, bytes]] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                if proc.poll() is not None and not pieces_pending(master):
                    break
                continue
            running = proc.poll() is None
            try:
                data = os.read(master, 65536)
            except OSError:  # the child's side is closed
                break
            if not data:
                break
            pieces.append((running, data))
        proc.wait(timeout=600)
    finally:
        out.close()
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    updates = []
    text = []
    for running, data in pieces:
        for part in re.split(r"[\r\n]", ESCAPES.sub("", data.decode("utf-8", "replace"))):
            part = part.strip()
            if not part:
                continue
            text.append(part)
            found = LINE.match(part)
            if found:
                total = found["total"]
                updates.append(Update(found["label"], int(found["n"].replace(",", "")),
                                      int(total.replace(",", "")) if total else None,
                                      found["unit"], running))
    return Terminal(proc.returncode, updates, "\n".join(text))


def pieces_pending(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def piped(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``promptkit ARGS`` with stdout and stderr both pipes (no terminal)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], cwd=cwd,
                          capture_output=True, stdin=subprocess.DEVNULL, env=env, check=False)


def labels_in_order(updates: list[Update]) -> list[str]:
    """The labels of the passes, in the order their first counted update came."""
    return list(dict.fromkeys(u.label for u in updates if u.n > 0))


def counted_while_running(updates: list[Update], label: str) -> list[int]:
    return [u.n for u in updates if u.label == label and u.n > 0 and u.running]


def chats(path: Path, records: int, *, prompts: int, seed: int = 1) -> Path:
    """Chat records whose system prompts come from a pool of ``prompts`` texts."""
    rng = random.Random(seed)
    pool = [f"You are assistant {i}. " + " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))
            for i in range(prompts)]
    return write_jsonl(path, [
        {"messages": [{"role": "system", "content": pool[i % prompts]},
                      {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(
                          100, 400)))}]}
        for i in range(records)])


def conversations(path: Path, records: int, seed: int = 3) -> Path:
    """Recorded conversations: two user turns, each with the assistant's reply."""
    rng = random.Random(seed)

    def say(low: int, high: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

    return write_jsonl(path, [{"messages": [
        {"role": role, "content": say(20, 200)}
        for role in ("user", "assistant", "user", "assistant")]} for _ in range(records)])


def texts(path: Path, records: int, seed: int = 2) -> Path:
    rng = random.Random(seed)
    return write_jsonl(path, [{"text": " ".join(rng.choices(WORDS, k=rng.randint(100, 600)))}
                              for _ in range(records)])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("progress")
    nonced = folder / "nonced.jsonl"  # with its manifest, for verify
    made = piped("nonce", texts(folder / "plain.jsonl", 3000), nonced, "--seed", "1",
                 cwd=folder)
    assert made.returncode == 0, made.stderr
    return {"nonced": nonced, "chats": chats(folder / "chats.jsonl", 3000, prompts=300),
            "texts": texts(folder / "texts.jsonl", 3000),
            "conversations": conversations(folder / "conversations.jsonl", 3000)}


def test_pad_shows_its_collecting_pass_then_prompts_then_records_while_running(
        files, tmp_path):
    term = on_terminal("pad", files["chats"], tmp_path / "out.jsonl", "--tokens", "600",
                       "--tokenizer", "cl100k_base", "--seed", "1", cwd=tmp_path)
    assert term.returncode == 0, term.text
    assert labels_in_order(term.updates) == ["collecting system prompts",
                                             "padding system prompts", "padding"]
    # Each pass drew a counted update before the run ended, and ended on its total.
    for label, total, unit in (("collecting system prompts", 3000, "records"),
                               ("padding system prompts", 300, "prompts"),
                               ("padding", 3000, "records")):
        assert counted_while_running(term.updates, label), label
        last = [u for u in term.updates if u.label == label][-1]
        assert (last.n, last.total, last.unit) == (total, total, unit)
    # The writing pass knew its total from the first pass, from its first update on.
    assert {u.total for u in term.updates if u.label == "padding"} == {3000}
    # The usual lines come after the progress, and the line is cleared at the end.
    assert term.text.splitlines()[-1].startswith("promptkit: wrote 3000 records")


def test_a_slow_pass_counts_up_record_by_record_not_at_the_end(files, tmp_path):
    term = on_terminal("fit", files["texts"], tmp_path / "out.jsonl", "--tokens", "800",
                       "--tokenizer", "cl100k_base", "--seed", "1", "--workers", "1",
                       cwd=tmp_path)
    assert term.returncode == 0, term.text
    counts = counted_while_running(term.updates, "fitting")
    assert any(0 < n < 3000 for n in counts), counts
    assert counts == sorted(counts)  # never backwards
    assert [u.n for u in term.updates if u.label == "fitting"][-1] == 3000


def test_worker_processes_report_each_chunk_as_it_is_done(files, tmp_path):
    small = ("from promptkit.runner import workers as parallel\n"
             "parallel.CHUNK_BYTES = 64 << 10\nparallel.MIN_PARALLEL_BYTES = 0")
    term = on_terminal("fit", files["texts"], tmp_path / "out.jsonl", "--tokens", "800",
                       "--tokenizer", "cl100k_base", "--seed", "1", "--workers", "2",
                       cwd=tmp_path, prelude=small)
    assert term.returncode == 0, term.text
    counts = counted_while_running(term.updates, "fitting")
    assert len({n for n in counts if n < 3000}) >= 2, counts  # chunk after chunk
    assert [u.n for u in term.updates if u.label == "fitting"][-1] == 3000


@pytest.mark.parametrize(("args", "passes"), [
    (["stats", "{texts}", "--tokenizer", "cl100k_base"], ["counting tokens"]),
    # One pass: each record goes through the cache as it is read ...
    (["check", "{chats}", "--tokenizer", "cl100k_base"], ["checking"]),
    # ... unless warmup requests come first: the requests are kept, then replayed.
    (["check", "{chats}", "--tokenizer", "cl100k_base", "--warmup", "2"],
     ["checking", "simulating the cache"]),
    (["hash-trace", "{chats}", "{out}", "--tokenizer", "cl100k_base"], ["hashing blocks"]),
    (["nonce", "{texts}", "{out}", "--seed", "1", "--keep-tokens", "--tokenizer",
      "cl100k_base"], ["adding nonces"]),
    (["turns", "{conversations}", "{out}", "--tokenizer", "cl100k_base"], ["making requests"]),
    (["pipe", "read", "{chats}", "nonce", "--seed", "1", "fit", "--tokens", "300",
      "--tokenizer", "cl100k_base", "check", "--tokenizer", "cl100k_base", "write", "{out}"],
     ["adding nonces, fitting", "checking"]),
    (["synth", "prefix-test", "{out}", "--groups", "10", "--group-size", "300",
      "--system-tokens", "200", "--tokenizer", "cl100k_base", "--seed", "1"],
     ["padding system prompts", "generating"]),
    (["publish", "{texts}", "{folder}"], ["copying", "writing parquet shards"]),
    (["verify", "{nonced}"], ["hashing"]),
])
def test_each_command_shows_its_passes(files, tmp_path, args, passes):
    args = [a.format(out=tmp_path / "out.jsonl", folder=tmp_path / "published", **files)
            for a in args]
    term = on_terminal(*args, cwd=tmp_path, stdout=tmp_path / "stdout")
    assert term.returncode == 0, term.text
    assert labels_in_order(term.updates) == passes
    for label in passes:
        assert counted_while_running(term.updates, label), label
    # stdout holds what it holds without a terminal, and no progress.
    plain = piped(*[a.replace("out.jsonl", "plain.jsonl").replace("published", "plain")
                    for a in args], cwd=tmp_path)
    assert plain.returncode == 0
    assert (tmp_path / "stdout").read_bytes() == plain.stdout


@pytest.mark.slow  # more than 5 s on 2 cores
def test_dataset_inputs_count_their_rows(files, tmp_path):
    import datasets

    rows = [json.loads(line) for line in files["texts"].read_text().splitlines()]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for source in ("rows.parquet", "saved"):
        term = on_terminal("fit", tmp_path / source, tmp_path / f"{source}.jsonl",
                           "--tokens", "300", "--tokenizer", "cl100k_base", "--seed", "1",
                           cwd=tmp_path)
        assert term.returncode == 0, term.text
        fitting = [u for u in term.updates if u.label == "fitting"]
        assert counted_while_running(fitting, "fitting"), source
        assert fitting[-1].n == fitting[-1].total == 3000  # the rows, known from the start
        assert {u.total for u in fitting} == {3000}


@pytest.mark.slow  # more than 5 s on 2 cores
def test_no_progress_without_a_terminal_or_with_quiet(files, tmp_path):
    args = ["pad", files["chats"], tmp_path / "a.jsonl", "--tokens", "600",
            "--tokenizer", "cl100k_base", "--seed", "1"]
    plain = piped(*args, cwd=tmp_path)
    quiet = piped("-q", *args[:2], tmp_path / "b.jsonl", *args[3:], cwd=tmp_path)
    assert plain.returncode == quiet.returncode == 0
    assert plain.stdout == quiet.stdout == b""
    # Nothing but the usual lines: the same as --quiet's, but for the output's name.
    assert plain.stderr.replace(b"a.jsonl", b"b.jsonl") == quiet.stderr
    assert plain.stderr.startswith(b"promptkit: wrote 3000 records")
    assert b"\r" not in plain.stderr
    term = on_terminal("-q", *args[:2], tmp_path / "c.jsonl", *args[3:], cwd=tmp_path)
    assert term.returncode == 0
    assert term.updates == []
    assert term.text.startswith("promptkit: wrote 3000 records")


def test_records_to_stdout_are_the_same_bytes_with_progress_on_stderr(files, tmp_path):
    term = on_terminal("nonce", files["texts"], "-", "--seed", "1", cwd=tmp_path,
                       stdout=tmp_path / "stdout.jsonl")
    plain = piped("nonce", files["texts"], "-", "--seed", "1", cwd=tmp_path)
    assert term.returncode == plain.returncode == 0
    assert (tmp_path / "stdout.jsonl").read_bytes() == plain.stdout
    assert [u.n for u in term.updates if u.label == "adding nonces"][-1] == 3000
