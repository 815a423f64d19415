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
from limited import bomb, run_limited

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
    assert line.endswith(f"/dev/zero: is a character device, not a {what}"), line
    assert ran.peak_mb < PEAK_MB
    assert not out.exists()


def test_bench_s_input_file_that_is_a_device_is_one_line(tmp_path):
    """INPUT_FILE=/dev/zero was scanned for its records until memory ran out."""
    env = tmp_path / "zero.env"
    env.write_text("MODEL=m\nURL=http://127.0.0.1:9\nINPUT_FILE=/dev/zero\n")
    ran = run_limited("bench", "--dry-run", "--env-file", env, timeout=60, cwd=tmp_path)
    assert ran.code == 1 and not ran.timed_out
    assert one_line(ran.stderr) == ("promptkit: INPUT_FILE=/dev/zero: a character device, "
                                    "not a prompt file")
    assert ran.peak_mb < PEAK_MB


def test_a_file_larger_than_any_system_prompt_is_refused(prompts, tmp_path, run):
    from promptkit.core import limits

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


# ---------------------------------------------------------------- decompression bombs

RECORD = (json.dumps({"text": "the quick brown fox jumps over the lazy dog " * 45}) + "\n"
          ).encode()


MB = 1 << 20
RECORDS_MB = RECORD * (MB // len(RECORD))  # whole records, about a megabyte


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Bombs of each codec and their records: 300 MB of records (zstd, xz, gzip: the
    whole of it, or over 400 MB a piece, from one 64 KiB piece of input), or two records
    around 600 MB of blank lines (bz2: 242 bytes for 300 MB of them)."""
    folder = tmp_path_factory.mktemp("bombs")
    per_mb = MB // len(RECORD)
    out = {codec: (bomb(folder / f"records.jsonl.{codec}", codec, [(RECORDS_MB, 300)]),
                   300 * per_mb) for codec in ("zstd", "xz", "gzip")}
    out["bz2"] = (bomb(folder / "blank.jsonl.bz2", "bz2",
                       [(RECORD, 1), (b"\n" * MB, 600), (RECORD, 1)]), 2)
    return out


@pytest.mark.slow  # more than 5 s on 2 cores
@pytest.mark.parametrize("codec", ["zstd", "bz2", "xz", "gzip"])
def test_a_decompression_bomb_is_read_in_bounded_memory(codec, bombs):
    path, records = bombs[codec]
    assert path.stat().st_size < (2 * MB if codec == "gzip" else 64 << 10)
    ran = run_limited("stats", path, "--json", memory=2 << 30, timeout=300)
    assert ran.code == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout)["records"] == records
    assert ran.peak_mb < PEAK_MB


@pytest.mark.slow  # more than 5 s on 2 cores
def test_a_bomb_nonced_with_two_workers_stays_bounded(bombs, tmp_path):
    path, records = bombs["zstd"]
    out = tmp_path / "out.jsonl"
    ran = run_limited("nonce", path, out, "--workers", "2", "--seed", "1", memory=2 << 30,
                      timeout=300)
    assert ran.code == 0, ran.stderr[-2000:]
    assert f"wrote {records} records" in ran.stderr
    assert ran.peak_mb < PEAK_MB


# ---------------------------------------------------------------- long lines


def test_a_line_longer_than_the_bound_is_one_line_in_bounded_memory(tmp_path):
    from promptkit.core import limits

    path = bomb(tmp_path / "spaces.jsonl.zst", "zstd",
                [(b'{"text": "x"}\n{"text": "', 1), (b" " * MB, (limits.MAX_LINE >> 20) + 8),
                 (b'"}\n', 1)])
    ran = run_limited("stats", path, memory=2 << 30, timeout=120)
    assert ran.code == 1 and not ran.timed_out
    assert one_line(ran.stderr) == (f"promptkit: {path}:2: a line longer than 400 MiB: no "
                                    "record is that long (is it the right file?)")
    assert ran.peak_mb < PEAK_MB


def test_a_long_line_in_a_plain_file_read_by_workers_is_one_line(tmp_path):
    from promptkit.core import limits

    path = tmp_path / "long.jsonl"
    with path.open("wb") as f:
        f.write(RECORD * 64)
        f.write(b'{"text": "')
        for _ in range((limits.MAX_LINE >> 20) + 1):
            f.write(b"a" * MB)
        f.write(b'"}\n')
    out = tmp_path / "out.jsonl"
    ran = run_limited("nonce", path, out, "--workers", "2", memory=4 << 30, timeout=120)
    assert ran.code == 1 and not ran.timed_out
    assert one_line(ran.stderr) == (f"promptkit: {path}:65: a line longer than 400 MiB: no "
                                    "record is that long (is it the right file?)")
    assert not out.exists()


def test_a_long_line_costs_what_as_many_short_lines_cost():
    """A line that goes on over many chunks is joined once, not chunk by chunk (which
    cost time quadratic in its length: a 200 MB line took 45 s, 400 MB did not end)."""
    import time

    from promptkit.io.jsonl import _line_batches

    size, piece = 64 * MB, 64 << 10
    long_line = b"a" * size + b"\n"
    short_lines = (b"a" * 1023 + b"\n") * (size // 1024)

    def seconds(data: bytes) -> float:
        view = memoryview(data)
        chunks = (bytes(view[i:i + piece]) for i in range(0, len(data), piece))
        start = time.perf_counter()
        lines = sum(len(batch) for _, batch in _line_batches(chunks, "f"))
        took = time.perf_counter() - start
        assert lines == data.count(b"\n")
        return took

    short = min(seconds(short_lines) for _ in range(3))
    long = min(seconds(long_line) for _ in range(3))
    assert long < 2 * short + 0.25, (long, short)


@pytest.mark.slow  # more than 5 s on 2 cores
def test_blank_lines_and_white_space_keep_their_line_numbers(tmp_path, run):
    from promptkit.io import files

    lines = [b"\n" * 3, b'{"text": "a"}\n', b"   \n" * 2, b"\n" * (3 * files.CHUNK),
             b'  {"text": "b"}\n', b" " * files.CHUNK + b"\n", b'{"text": oops}\n']
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b" " * (2 * files.CHUNK) + b"".join(lines))
    result = run("stats", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {path}:{3 * files.CHUNK + 9}: invalid JSON")
    result = run("stats", path, "--skip-invalid", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["records"] == 2


# ---------------------------------------------------------------- numbers

HUGE = str(2**64)


@pytest.mark.parametrize(("args", "error"), [
    (["pad", "{in}", "{out}", "--tokens", HUGE, "--tokenizer", "cl100k_base", "--to", "openai",
      "--system-prompt", "Hi."],
     f"Invalid value for '--tokens': {HUGE} is not in the range 1<=x<=16777216."),
    (["fit", "{in}", "{out}", "--tokens", HUGE, "--tokenizer", "cl100k_base"],
     f"Invalid value for '--tokens': '{HUGE}' is more than 16,777,216 tokens"),
    (["fit", "{in}", "{out}", "--tokens", f"8,{HUGE}", "--tokenizer", "cl100k_base"],
     f"Invalid value for '--tokens': '8,{HUGE}' goes beyond 16,777,216 tokens"),
    (["nonce", "{in}", "{out}", "--copies", HUGE],
     f"Invalid value for '--copies': {HUGE} is not in the range 1<=x<=1000000."),
    (["nonce", "{in}", "{out}", "--kind", "random", "--length", HUGE],
     f"Invalid value for '--length': {HUGE} is not in the range 1<=x<=1024."),
    (["synth", "prefix-test", "{out}", "--system-tokens", HUGE],
     f"Invalid value for '--system-tokens': {HUGE} is not in the range 1<=x<=16777216."),
    (["check", "{in}", "--tokenizer", "cl100k_base", "--requests", HUGE],
     f"Invalid value for '--requests': {HUGE} is not in the range 1<=x<=100000000."),
])
def test_a_number_beyond_its_bound_is_a_usage_error(args, error, prompts, tmp_path):
    out = tmp_path / "out.jsonl"
    ran = run_limited(*(a.format(**{"in": prompts, "out": out}) for a in args), timeout=60)
    assert ran.code == 2 and not ran.timed_out, ran.stderr[-2000:]
    assert ran.stderr.splitlines()[-1].startswith(f"Error: {error}")
    assert not out.exists()


def test_synth_refuses_more_records_than_its_bound(tmp_path):
    out = tmp_path / "out.jsonl"
    ran = run_limited("synth", "prefix-test", out, "--groups", "100000", "--group-size",
                      "100000", "--system-tokens", "16", timeout=60)
    assert ran.code == 1 and not ran.timed_out
    assert one_line(ran.stderr) == ("promptkit: prefix-test: 100,000 groups of 100,000 are "
                                    "more than 100,000,000 records")
    assert not out.exists()


def crafted(manifest: Path, where: str, value) -> Path:
    """``manifest`` with one parameter set to ``value``: ``steps.N.NAME`` or
    ``generator.NAME``."""
    made = json.loads(manifest.read_text())
    *path, name = where.split(".")
    node = made
    for key in path:
        node = node[int(key)] if key.isdigit() else node[key]
    node["params"][name] = value
    manifest.write_text(json.dumps(made))
    return manifest


@pytest.mark.parametrize(("made", "where", "value", "problem"), [
    (["pad", "{in}", "{out}", "--tokens", "40", "--tokenizer", "cl100k_base", "--to", "openai",
      "--system-prompt", "Hi.", "--seed", "1"], "steps.0.tokens", 2**64,
     f"steps[0]: pad: tokens is {2**64}, not an integer from 1 to 16,777,216"),
    (["pad", "{in}", "{out}", "--tokens", "40", "--tokenizer", "cl100k_base", "--to", "openai",
      "--system-prompt", "Hi.", "--seed", "1"], "steps.0.groups", 2**64,
     f"steps[0]: pad: groups is {2**64}, not an integer from 1 to 100,000"),
    (["fit", "{in}", "{out}", "--tokens", "40", "--tokenizer", "cl100k_base", "--seed", "1"],
     "steps.0.tokens", [8, 2**64],
     f"steps[0]: fit: tokens is [8, {2**64}], not an integer from 1 to 16,777,216, a range "
     "[LOW, HIGH] within it or a column name"),
    (["nonce", "{in}", "{out}", "--seed", "1"], "steps.0.copies", 2**64,
     f"steps[0]: nonce: copies is {2**64}, not an integer from 1 to 1,000,000"),
    (["synth", "prefix-test", "{out}", "--groups", "2", "--group-size", "2", "--system-tokens",
      "16", "--seed", "1"], "generator.group_size", 2**64,
     f"generator.params: prefix-test: group_size is {2**64}, not an integer from 1 to "
     "100,000,000"),
])
def test_a_crafted_manifest_s_number_beyond_its_bound_is_one_line(made, where, value, problem,
                                                                 prompts, tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run(*(a.format(**{"in": prompts, "out": out}) for a in made))
    assert result.exit_code == 0, result.stderr
    manifest = crafted(Path(f"{out}.manifest.json"), where, value)
    again = tmp_path / "again.jsonl"
    ran = run_limited("rebuild", manifest, again, timeout=60)
    assert ran.code == 1 and not ran.timed_out
    assert one_line(ran.stderr) == f"promptkit: {manifest}: {problem}"
    assert not again.exists()


# ---------------------------------------------------------------- tracebacks


DEEP = 500  # past MAX_DEPTH (100); with a thousand, Python's own recursion limit


def nested(depth: int, kind: str) -> str:
    return ('{"a":' * depth + "1" + "}" * depth if kind == "objects"
            else "[" * depth + "1" + "]" * depth)


@pytest.mark.parametrize("kind", ["objects", "arrays"])
@pytest.mark.parametrize("depth", [DEEP, 1000])
@pytest.mark.parametrize("args", [["nonce", "{in}", "-"], ["nonce", "--at", "salt", "{in}", "-"],
                                  ["stats", "{in}"],
                                  ["turns", "--tokenizer", "cl100k_base", "{in}", "-"],
                                  ["check", "--tokenizer", "cl100k_base", "{in}"]])
def test_a_record_nested_too_deep_is_one_line(args, depth, kind, tmp_path, run):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}], "meta": '
                    f"{nested(depth, kind)}}}\n")
    result = run(*(a.format(**{"in": path}) for a in args))
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {path}:1: arrays and objects nested deeper than 100 "
                             "levels\n")


def test_a_too_deep_record_is_skipped_with_skip_invalid(tmp_path, run):
    path = tmp_path / "deep.jsonl"
    path.write_text(f'{{"text": "a", "meta": {nested(DEEP, "objects")}}}\n{{"text": "b"}}\n')
    result = run("nonce", "--skip-invalid", "--at", "salt", path, "-")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == ["b"]


@pytest.mark.parametrize("depth", [DEEP, 1000])
def test_a_json_array_item_nested_too_deep_is_one_line(depth, tmp_path, run):
    path = tmp_path / "deep.json"
    path.write_text(f'[{{"text": "a"}}, {{"text": "b", "meta": {nested(depth, "arrays")}}}]')
    result = run("stats", path)
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {path}:2: arrays and objects nested deeper than 100 "
                             "levels\n")


def test_deep_but_not_too_deep_records_are_read(tmp_path, run):
    path = tmp_path / "deep.jsonl"
    path.write_text(f'{{"text": "a", "meta": {nested(98, "objects")}}}\n')
    result = run("nonce", "--at", "salt", "--seed", "1", path, "-")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["meta"] == json.loads(nested(98, "objects"))


@pytest.mark.parametrize(("line", "args", "problem"), [
    ('{"input_length": 4294967296, "output_length": 5}', ["stats"],
     "mooncake_trace: 'input_length' is 4294967296, more than 16,777,216 tokens"),
    ('{"input_length": 9223372036854775808, "output_length": 5, "hash_ids": [1]}', ["check"],
     "mooncake_trace: 'input_length' is 9223372036854775808, more than 16,777,216 tokens"),
    ('{"input_length": 100, "output_length": 4294967296}', ["stats"],
     "mooncake_trace: 'output_length' is 4294967296, more than 16,777,216 tokens"),
])
def test_a_length_beyond_any_model_is_one_line(line, args, problem, tmp_path, run):
    path = tmp_path / "trace.jsonl"
    path.write_text(line + "\n")
    result = run(*args, path)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {path}:1: {problem}\n"


def test_a_truncated_parquet_shard_is_one_line(tmp_path, run):
    import datasets

    folder = tmp_path / "shards"
    folder.mkdir()
    rows = [{"prompt": f"question {i} " * 20} for i in range(2000)]
    datasets.Dataset.from_list(rows).to_parquet(folder / "a.parquet")
    whole = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(whole[:len(whole) // 2])
    for args in (["stats", folder], ["nonce", folder, tmp_path / "out.jsonl"]):
        result = run(*args)
        assert result.exit_code == 1
        assert result.stderr == (f"promptkit: {folder}/b.parquet: Parquet magic bytes not "
                                 "found in footer. Either the file is corrupted or this is not "
                                 "a parquet file.\n")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_ctrl_c_while_promptkit_starts_is_one_line(tmp_path):
    """A Ctrl-C in the first moments (Python importing promptkit, then Click reading the
    options) ends the run with its one line and 130, never a traceback. Only a signal
    before promptkit's first line runs (Python's own start, its first hundredths of a
    second: ``site``, finding the module) ends it as Python ends then, with no frame of
    promptkit."""
    import signal
    import subprocess
    import sys
    import time

    import promptkit

    package = os.path.dirname(promptkit.__file__)  # no frame of its code may show
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": f"prompt {i} " * 30}
                                               for i in range(60_000)])
    seen = []
    for trial in range(24):
        out = tmp_path / f"out{trial}.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "promptkit", "nonce", str(path), str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(trial * 0.025)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        stderr = err.decode()
        seen.append((trial * 0.025, proc.returncode))
        python_starting = proc.returncode in (1, -signal.SIGINT) and package not in stderr
        assert python_starting or (proc.returncode, stderr) == (
            130, "promptkit: interrupted (SIGINT); unfinished output removed\n"), (
            trial * 0.025, proc.returncode, stderr[-3000:])
        assert not out.exists()
    assert sum(code == 130 for _, code in seen) >= 12, seen


def test_a_line_too_long_for_the_memory_there_is_says_so(tmp_path):
    """Under a memory limit a long line (within MAX_LINE) may not fit orjson's buffer:
    that is no bad JSON ("invalid JSON: Not enough memory ..." was)."""
    words = b"the quick brown fox jumps over the lazy dog "
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"text": "' + words * (100_000_000 // len(words)) + b'"}\n')
    ran = run_limited("stats", path, memory=1 << 30, timeout=120)
    assert ran.code == 1 and not ran.timed_out
    assert one_line(ran.stderr) == (f"promptkit: {path}:1: not enough memory to parse a line "
                                    f"of {path.stat().st_size - 1:,} bytes")
