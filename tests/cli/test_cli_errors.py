"""Errors as a new user meets them: runtime errors one line with the ``promptkit:``
prefix (exit 1), usage errors exit 2, pipe guards that name what they mean; counts in
the right number; ``--limit`` on every input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

from promptkit.core.words import counted, plural

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "prompts"


def test_a_missing_input_is_one_prefixed_line_exit_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", "promptkit", "nonce", "/nonexist",
                             str(tmp_path / "out.jsonl")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "promptkit: /nonexist: no such file\n"
    assert list(tmp_path.iterdir()) == []


def test_text_records_without_a_tokenizer_are_a_usage_error(run):
    result = run("check", PROMPTS / "trace.jsonl.example")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith("Error: text records need --tokenizer")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_fit_tokens_naming_no_column_says_what_tokens_takes(workers, tmp_path, run,
                                                            small_chunks):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"q{i}"} for i in range(300)])
    result = run("fit", "--tokens", "abc", source, tmp_path / "out.jsonl", "--tokenizer",
                 "cl100k_base", "--workers", workers)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "Error: --tokens abc: the first record has no column 'abc'; --tokens takes a number "
        "N, a range LOW,HIGH or the name of a column holding each record's own count")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["stats", "{src}", "--plot", "{tmp}/s.png"], 2,
     "Error: --plot draws prompt token counts: it needs --tokenizer"),
    (["publish", "{src}", "{tmp}/pub", "--license", "Not A License"], 2,
     "Error: --license 'Not A License': not a Hugging Face license id"),
    (["nonce", "{src}", "{tmp}/o.jsonl", "--shuffle"], 2,
     "Error: {src}: a JSONL input; --shuffle is for datasets"),
])
def test_options_that_do_not_go_together_exit_2(args, code, message, tmp_path, run):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "b"}])
    result = run(*[a.format(src=src, tmp=tmp_path) for a in args])
    assert result.exit_code == code, result.stderr
    assert result.stderr.splitlines()[-1].startswith(message.format(src=src))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_rebuild_of_a_stdin_run_needs_input_exit_2(tmp_path, run):
    out = tmp_path / "out.jsonl"
    assert run("nonce", "-", out, "--seed", "1", input=b'{"text": "a"}\n').exit_code == 0
    result = run("rebuild", f"{out}.manifest.json", tmp_path / "again.jsonl")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].endswith("the input was stdin; name it with --input")


@pytest.mark.parametrize(("stages", "message"), [
    (["read", "{src}"], "a pipe ends with 'write OUT': nothing writes the records of "
                        "'read {src}'"),
    (["read", "{src}", "write", "{tmp}/a.jsonl", "write", "{tmp}/b.jsonl"],
     "a pipe has one 'read' first and one 'write' last, not 'read {src}' and "
     "'write {tmp}/a.jsonl' and 'write {tmp}/b.jsonl'"),
    (["read", "{src}", "pad", "--tokens", "64", "--tokenizer", "cl100k_base",
      "--system-prompt", "Hi.", "--into", "file", "write", "-"],
     "pad --into file writes OUT.system.txt beside OUT, and 'write -' is stdout: write to "
     "a file (write out.jsonl writes out.jsonl.system.txt)"),
])
def test_pipe_guards_name_the_files_they_mean(stages, message, tmp_path, run):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    result = run("pipe", *[s.format(src=src, tmp=tmp_path) for s in stages])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: " + message.format(src=src, tmp=tmp_path)


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize(("count", "noun", "shown"), [
    (0, "record", "0 records"), (1, "record", "1 record"), (2, "record", "2 records"),
    (1, "parquet shard", "1 parquet shard"), (3, "entry", "3 entries"), (-1, "token", "-1 token"),
])
def test_counted(count, noun, shown):
    assert counted(count, noun) == shown
    assert shown.endswith(plural(count, noun))


def test_one_record_is_one_record(tmp_path, run):
    source = write_jsonl(tmp_path / "one.jsonl", [{"text": "only"}])
    result = run("nonce", source, tmp_path / "out.jsonl", "--seed", "1")
    assert result.stderr.startswith("promptkit: wrote 1 record (1 distinct) as single_turn")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    result = run("nonce", bad, tmp_path / "out2.jsonl", "--skip-invalid")
    assert "promptkit: skipped 1 invalid record (first: line 2)" in result.stderr


# ---------------------------------------------------------------- --limit everywhere


ROWS = [{"text": f"prompt number {i}"} for i in range(40)]


def inputs(tmp_path: Path) -> dict[str, Path]:
    plain = write_jsonl(tmp_path / "in.jsonl", ROWS)
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    array = tmp_path / "in.json"
    array.write_text(json.dumps(ROWS))
    csv = tmp_path / "in.csv"
    csv.write_text("text\n" + "".join(f"{r['text']}\n" for r in ROWS))
    return {"jsonl": plain, "gzip": packed, "array": array, "csv": csv}


@pytest.mark.parametrize("kind", ["jsonl", "gzip", "array", "csv"])
def test_limit_reads_the_first_n_records_of_any_file_and_rebuild_repeats_it(
        kind, tmp_path, run):
    source = inputs(tmp_path)[kind]
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--limit", "7", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 7
    texts = [r["text"] if "text" in r else r["messages"][0]["content"] for r in rows]
    assert [t.split("\n", 1)[1] for t in texts] == [r["text"] for r in ROWS[:7]]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["inputs"][0]["records"] == 7
    if kind != "csv":  # a file's sha256 is that of all its bytes, not of the part read
        import hashlib

        assert manifest["inputs"][0]["limit"] == 7
        assert manifest["inputs"][0]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{out}.manifest.json", again, "--allow-paths")
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == out.read_bytes()
    assert run("verify", out).exit_code == 0


def test_limit_on_stdin(tmp_path, run):
    source = inputs(tmp_path)["jsonl"]
    result = run("nonce", "-", "-", "--limit", "3", "--seed", "3", input=source.read_bytes())
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 3
    assert result.stderr.startswith("promptkit: wrote 3 records")


def test_limit_gives_the_same_bytes_for_any_number_of_workers(tmp_path, run, small_chunks):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"p{i} " * 30} for i in range(600)])
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}.jsonl"
        assert run("nonce", source, out, "--limit", "250", "--seed", "5",
                   "--workers", workers).exit_code == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 250
    whole = tmp_path / "whole.jsonl"
    assert run("nonce", source, whole, "--seed", "5", "--workers", "2").exit_code == 0
    assert whole.read_bytes().splitlines()[:250] == outs[0].splitlines()


@pytest.mark.parametrize("command", [["stats", "{src}"], ["check", "{src}", "--tokenizer",
                                                          "cl100k_base"]])
def test_limit_in_stats_and_check(command, tmp_path, run):
    source = inputs(tmp_path)["jsonl"]
    result = run(*[c.format(src=source) for c in command], "--limit", "5", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["records"] == 5
