"""CSV and TSV inputs are read strictly: a row of other fields than the header's is a bad
record, lengths are integers within bounds, compressed files are read, and every error
is one line naming the file and the row.

The fixtures are in the published shapes: BurstGPT's header and its seconds, the Azure
traces' date-times, a text dataset as ``pandas.to_csv`` writes it (and Excel, with a
byte order mark and CRLF line ends).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from helpers import read_jsonl
from limited import bomb, run_limited

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,230,1317,Conversation log
118,GPT-4,417,276,693,API log
"""
BURSTGPT_WRITTEN = [
    {"timestamp": 0, "input_length": 472, "output_length": 18, "Model": "ChatGPT",
     "Total tokens": 490, "Log Type": "Conversation log"},
    {"timestamp": 40000, "input_length": 1087, "output_length": 230, "Model": "ChatGPT",
     "Total tokens": 1317, "Log Type": "Conversation log"},
    {"timestamp": 113000, "input_length": 417, "output_length": 276, "Model": "GPT-4",
     "Total tokens": 693, "Log Type": "API log"},
]
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
FIRST = "2023-11-16 18:15:46.6805900,374,44\n"
LAST = "2023-11-16 18:15:51.3910170,91,16\n"


def manifest_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.manifest.json").read_text())


@pytest.mark.parametrize(("row", "problem"), [
    # A comma in the timestamp's place: pandas took the first column as an index and
    # wrote 38 and 1 as the lengths.
    ("2023-11-16 18:15:46,5,38,1", "4 fields, the header has 3 (a comma in a text that is "
                                   "not quoted?)"),
    ("2023-11-16 18:15:47.0,5", "2 fields, the header has 3"),
])
def test_a_row_of_other_fields_than_the_header_is_a_bad_record(row, problem, tmp_path, run):
    trace = tmp_path / "trace.csv"
    trace.write_text(AZURE + f"{row}\n" + FIRST + LAST)
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = run("pipe", "read", trace, "write", out)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {trace}:1: {problem}\n"
    assert out.read_text() == "precious\n"

    result = run("pipe", "read", "--skip-invalid", trace, "write", out)
    assert result.exit_code == 0, result.stderr
    assert [(r["input_length"], r["output_length"]) for r in read_jsonl(out)] == [(374, 44),
                                                                              (91, 16)]
    assert manifest_of(out)["skipped"]["lines"] == [f"1: {problem}"]


def test_skipped_rows_are_listed_in_row_order(tmp_path, run):
    """A row of other fields and a row of a bad value, each way a dataset is read: by
    records (a trace with a timeline) and by Arrow batches (a text dataset)."""
    trace = tmp_path / "trace.csv"
    trace.write_text(AZURE + FIRST + "2023-11-16 18:15:47.0,-3,10\n"
                     + "2023-11-16 18:15:48.0,3,10,7\n" + LAST)
    texts = tmp_path / "texts.csv"
    texts.write_text("prompt,n\nfirst,3\nsecond,0\n\"third, quoted\",2\nfourth,5,\n"
                     "fifth, five,1\n")
    for source, options, kept, places in ((trace, [], 2, [2, 3]),
                                          (texts, ["--output-length-column", "n"], 3, [2, 5])):
        out = tmp_path / f"{source.stem}.jsonl"
        result = run("nonce", "--skip-invalid", *options, source, out, "--seed", "1")
        assert result.exit_code == 0, result.stderr
        assert len(read_jsonl(out)) == kept
        lines = manifest_of(out)["skipped"]["lines"]
        assert [int(line.split(":")[0]) for line in lines] == places, lines


def test_a_trailing_comma_is_no_field(tmp_path, run):
    # The header without one and every row with one, and the other way round: pandas
    # took the first column as an index and said "GeneratedTokens is empty".
    for text in (AZURE + FIRST.replace("\n", ",\n") + LAST.replace("\n", ",\n"),
                 AZURE.replace("\n", ",\n") + FIRST + LAST):
        trace = tmp_path / "trace.csv"
        trace.write_text(text)
        out = tmp_path / "out.jsonl"
        result = run("pipe", "read", trace, "write", out)
        assert result.exit_code == 0, result.stderr
        assert read_jsonl(out) == [{"timestamp": 0, "input_length": 374, "output_length": 44},
                                   {"timestamp": 4710, "input_length": 91,
                                    "output_length": 16}]


@pytest.mark.parametrize(("cell", "problem"), [
    ("1e308", "is 1e+308, more than 16,777,216 tokens"),
    ("1e309", "is '1e309', not a positive integer"),
    ("99999999999999999999", "is 99999999999999999999, more than 16,777,216 tokens"),
    ("16777217", "is 16777217, more than 16,777,216 tokens"),
    ("4.5", "is 4.5, not a positive integer"),
])
def test_a_length_is_an_integer_within_bounds(cell, problem, tmp_path, run):
    trace = tmp_path / "trace.csv"
    trace.write_text(AZURE + FIRST + f"2023-11-16 18:15:47.0,3,{cell}\n" + LAST)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", trace, "write", out)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {trace}:2: column 'GeneratedTokens' {problem}\n"
    assert not out.exists()


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
            "zst": zstandard.ZstdCompressor().compress}


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_compressed_csv_is_read_as_csv(suffix, tmp_path, run):
    trace = tmp_path / f"BurstGPT_1.csv.{suffix}"
    trace.write_bytes(COMPRESS[suffix](BURSTGPT.encode()))
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", trace, "write", out)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == BURSTGPT_WRITTEN
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_a_compressed_tsv_is_read_as_tsv(tmp_path, run):
    source = tmp_path / "d.tsv.gz"
    source.write_bytes(gzip.compress(b"prompt\tn\na, b\t3\nc\t4\n"))
    result = run("pipe", "read", "--output-length-column", "n", source, "write", "--to",
                 "single_turn", "-")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"role": "user", "text": "a, b", "output_length": 3},
        {"role": "user", "text": "c", "output_length": 4}]


def test_excel_s_csv_is_read_with_its_byte_order_mark_and_line_ends(tmp_path, run):
    source = tmp_path / "d.csv"
    source.write_bytes(b'\xef\xbb\xbf"prompt","n"\r\nhi,3\r\n"two\r\nlines, quoted",4\r\n')
    result = run("pipe", "read", "--output-length-column", "n", source, "write", "--to",
                 "single_turn", "-")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"role": "user", "text": "hi", "output_length": 3},
        {"role": "user", "text": "two\r\nlines, quoted", "output_length": 4}]


@pytest.mark.parametrize(("data", "row", "problem"), [
    (b'prompt,n\nfine,1\n"never closed,2\n', 2, "not CSV: unexpected end of data"),
    (b"prompt,n\n" + b"".join(b"p%d,1\n" % i for i in range(3000)) + b"bad \xff,1\n", 3001,
     "invalid UTF-8"),
])
def test_a_file_that_is_not_csv_is_one_line_naming_the_row(data, row, problem, tmp_path):
    """Run as a process: ``datasets`` logged its own lines to stderr beside promptkit's."""
    source = tmp_path / "d.csv"
    source.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "promptkit", "nonce", source,
                           tmp_path / "out.jsonl"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == f"promptkit: {source}:{row}: {problem}\n"
    assert not (tmp_path / "out.jsonl").exists()


def test_a_shuffled_csv_types_its_batches_as_an_unshuffled_one(tmp_path, run):
    """A column of numbers in its first rows and text (or nothing) later: shuffled, the
    rows of both meet in one batch, which ``datasets`` wants of one type."""
    source = tmp_path / "d.csv"
    source.write_text("prompt,tag,note\n" + "".join(
        f"p{i},{i if i < 2500 else 'x'},{'' if i < 2500 else 'late'}\n" for i in range(5000)))
    out = tmp_path / "out.jsonl"
    result = run("nonce", "--shuffle", source, out, "--seed", "1")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 5000
    assert [r["messages"][0]["content"].split("\n")[1] for r in rows[:50]] != [
        f"p{i}" for i in range(50)]
    for r in rows:  # each row's cells stay together, numbers or their texts
        i = int(r["messages"][0]["content"].split("\n")[1][1:])
        assert str(r["tag"]) == (str(i) if i < 2500 else "x")
        assert r.get("note") == (None if i < 2500 else "late")


MB = 1 << 20


@pytest.mark.parametrize(("body", "problem"), [
    # A quote never closed: the reader held the cell's characters, 4 bytes each.
    ([(b'prompt,n\nfirst,1\n"', 1), (b"a" * 1023 + b"\n", 70 * 1024), (b'",2\n', 1)],
     "a row longer than 64 MiB"),
    ([(b"prompt,n\nfirst,1\n", 1), (b"a" * MB, 500)], "a row longer than 64 MiB"),
])
def test_a_csv_row_beyond_its_bound_is_one_line_in_bounded_memory(body, problem, tmp_path):

    path = bomb(tmp_path / "bomb.csv.zst", "zstd", body)
    ran = run_limited("stats", path, memory=2 << 30, timeout=120)
    assert ran.code == 1 and not ran.timed_out, ran.stderr[-2000:]
    assert ran.stderr == (f"promptkit: {path}:2: {problem}: no record is that long (is it the "
                          "right file?)\n")
    assert ran.peak_mb < 500


def test_a_csv_bomb_of_rows_is_read_in_bounded_memory(tmp_path):

    row = b"the quick brown fox " * 3200 + b",12\n"  # 64 KB a row
    path = bomb(tmp_path / "rows.csv.zst", "zstd", [(b"prompt,n\n", 1), (row, 6000)])
    assert path.stat().st_size < 256 << 10
    ran = run_limited("stats", path, "--json", memory=2 << 30, timeout=300)
    assert ran.code == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout)["records"] == 6000
    assert ran.peak_mb < 500
