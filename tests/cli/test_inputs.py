"""Files as users bring them, and compressed outputs.

Compressed JSONL (gzip as the ``gzip`` tool writes it, concatenated members, zstd,
bz2, xz, told by their bytes, not their names), a UTF-8 byte order mark as
Notepad writes it, JSON arrays in LLaMA-Factory's and ShareGPT's shapes (also
named ``.jsonl``), integers beyond 64 bits; and ``OUT.jsonl.gz`` (``.zst``,
``.bz2``, ``.xz``) written deterministically, verified and rebuilt.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from helpers import MOONCAKE, mooncake_trace, read_jsonl, write_jsonl

PROMPTKIT = [sys.executable, "-m", "promptkit"]

# ---------------------------------------------------------------- fixtures of the real shape

#: LLaMA-Factory's alpaca_en_demo.json: an indented JSON array of alpaca objects.
ALPACA = [
    {"instruction": "Describe a process of making crepes.", "input": "",
     "output": "Whisk flour, eggs, milk and a pinch of salt; rest the batter; cook thin "
               "layers in a hot buttered pan, one minute a side."},
    {"instruction": "Translate the sentence into French.", "input": "The café is open.",
     "output": "Le café est ouvert."},
    {"instruction": "用一句话解释前缀缓存。", "input": "",
     "output": "前缀缓存保存共享提示前缀的键值张量, 以跳过重复的预填充。"},
]
#: LLaMA-Factory's glaive_toolcall_en_demo.json: ShareGPT turns and a JSON string of tools.
TOOLS = json.dumps([{"name": "get_weather", "description": "Weather of a city",
                     "parameters": {"type": "object",
                                    "properties": {"city": {"type": "string"}}}}])
GLAIVE = [
    {"conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call",
         "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": json.dumps({"temperature": 18, "sky": "cloudy"})},
        {"from": "gpt", "value": "It is 18 degrees and cloudy in Paris."}],
     "tools": TOOLS},
    {"conversations": [{"from": "human", "value": "Tell me a joke."},
                       {"from": "gpt", "value": "Why did the cache miss? It was cold."}],
     "tools": "[]"},
]
#: ShareGPT_V3_unfiltered_cleaned_split.json: an id and the conversation.
SHAREGPT = [
    {"id": "QWJhYvA_0", "conversations": [{"from": "human", "value": "Summarize prefix caching."},
                                          {"from": "gpt", "value": "It reuses KV blocks."}]},
    {"id": "i6IyJda_0", "conversations": [{"from": "human", "value": "Name a prime."},
                                          {"from": "gpt", "value": "7"},
                                          {"from": "human", "value": "Another?"}]},
]
ARRAYS = {"alpaca_en_demo": ALPACA, "glaive_toolcall_en_demo": GLAIVE,
          "ShareGPT_V3_unfiltered_cleaned_split": SHAREGPT}
#: A line whose unknown fields hold integers beyond 64 bits (a 30-digit id, a snowflake).
BIG = 123456789012345678901234567890
BIG_LINES = [
    {"text": "What is 2 + 2?", "id": BIG, "meta": {"trace": [-(2 ** 70), 1.5, 2 ** 64]}},
    {"text": "Name a colour.", "id": 7, "extra": {"seed": 2 ** 65}},
]


def json_array(path: Path, rows: list[dict]) -> Path:
    """A JSON array as LLaMA-Factory ships its demo files: indented, UTF-8 as it is."""
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def trace_lines(count: int = 3000) -> bytes:
    """The first lines of the Mooncake conversation trace the repository ships."""
    with mooncake_trace("conversation").open("rb") as f:
        return b"".join(next(f) for _ in range(count))


def gzip_like_the_tool(data: bytes, name: str) -> bytes:
    """What ``gzip FILE`` writes: the file's name and a time in the header."""
    out = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=out, mtime=1_700_000_000) as f:
        f.write(data)
    return out.getvalue()


def compressed(data: bytes, kind: str) -> bytes:
    half = data.index(b"\n", len(data) // 2) + 1
    if kind == "gzip":
        return gzip_like_the_tool(data, "trace.jsonl")
    if kind == "gzip-members":  # cat a.gz b.gz > ab.gz
        return gzip.compress(data[:half]) + gzip.compress(data[half:])
    if kind == "zstd":  # as the zstd tool writes it: content size and checksum
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    if kind == "zstd-frames":
        c = zstandard.ZstdCompressor()
        return c.compress(data[:half]) + c.compress(data[half:])
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    raise AssertionError(kind)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.manifest.json").read_text())


# ---------------------------------------------------------------- compressed inputs


@pytest.mark.parametrize("kind", ["gzip", "gzip-members", "zstd", "zstd-frames", "bz2", "xz"])
@pytest.mark.parametrize("name", ["trace.jsonl.{suffix}", "trace.jsonl"])
def test_a_compressed_file_reads_as_its_lines_whatever_its_name(kind, name, tmp_path, run):
    data = trace_lines()
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(data)
    suffix = {"gzip": "gz", "zstd": "zst", "bz2": "bz2", "xz": "xz"}[kind.split("-")[0]]
    packed = tmp_path / "in" / name.format(suffix=suffix)
    packed.parent.mkdir()
    packed.write_bytes(compressed(data, kind))
    want, got = tmp_path / "want.jsonl", tmp_path / "got.jsonl"
    assert run("nonce", plain, want, "--seed", "3").exit_code == 0
    result = run("nonce", packed, got, "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert got.read_bytes() == want.read_bytes()
    [source] = manifest_of(got)["inputs"]
    assert source["sha256"] == sha256(packed)  # the bytes read, as they are on disk
    assert source["records"] == 3000 and source["format"] == "mooncake_trace"
    assert source["compression"] == kind.split("-")[0]


def test_the_shipped_gzipped_mooncake_trace_reads_as_it_is(run):
    packed = MOONCAKE / "conversation_trace.jsonl.gz"
    direct = run("stats", packed, "--json")
    unpacked = run("stats", mooncake_trace("conversation"), "--json")
    assert direct.exit_code == 0, direct.stderr
    report, want = json.loads(direct.stdout), json.loads(unpacked.stdout)
    assert report["input"].pop("sha256") == sha256(packed)
    assert report["input"].pop("path") == str(packed)
    for side in (report, want):
        side["input"].pop("path", None)
        side["input"].pop("sha256", None)
    assert report == want


def test_compressed_stdin_reads_as_its_lines(tmp_path, run, single_turn):
    plain = run("nonce", "-", "-", "--seed", "5", input=single_turn.read_bytes())
    for data in (gzip.compress(single_turn.read_bytes()),
                 zstandard.ZstdCompressor().compress(single_turn.read_bytes())):
        result = run("nonce", "-", "-", "--seed", "5", input=data)
        assert result.exit_code == 0, result.stderr
        assert result.stdout_bytes == plain.stdout_bytes


def test_a_compressed_file_runs_in_one_process_with_workers(tmp_path, run, small_chunks):
    data = trace_lines()
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(data)
    packed = tmp_path / "trace.jsonl.gz"
    packed.write_bytes(gzip.compress(data))
    want, got = tmp_path / "want.jsonl", tmp_path / "got.jsonl"
    assert run("nonce", plain, want, "--seed", "3", "--workers", "2").exit_code == 0
    assert small_chunks == [2]  # the plain file split into chunks for two workers
    assert run("nonce", packed, got, "--seed", "3", "--workers", "2").exit_code == 0
    assert small_chunks == [2]  # the compressed one did not: it cannot be split
    assert got.read_bytes() == want.read_bytes()


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bz2", "xz"])
@pytest.mark.parametrize("fault", ["truncated", "corrupt", "damaged"])
def test_a_truncated_or_corrupt_compressed_file_is_one_line_and_writes_nothing(
        kind, fault, tmp_path, run):
    packed = compressed(trace_lines(), kind)
    if fault == "truncated":  # an interrupted download
        data = packed[:len(packed) // 2]
        problem = f"truncated {kind} file: it ends before the compressed data does"
    elif fault == "corrupt":  # one byte damaged near the end, where the check value is
        data = packed[:-6] + bytes([packed[-6] ^ 0xFF]) + packed[-5:]
        problem = f"corrupt {kind} data ("
    else:  # damaged inside: a codec may decode garbage before its check fails
        middle = len(packed) // 2
        data = packed[:middle] + bytes(b ^ 0x55 for b in packed[middle:middle + 64]) + (
            packed[middle + 64:])
        problem = ""
    path = tmp_path / "trace.jsonl.x"
    path.write_bytes(data)
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier file\n")
    result = run("nonce", path, out)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"promptkit: {path}:{' ' if problem else ''}{problem}"), line
    assert out.read_text() == "an earlier file\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "trace.jsonl.x"]


# ---------------------------------------------------------------- a byte order mark


def test_a_byte_order_mark_as_notepad_writes_it_is_accepted(tmp_path, run, small_chunks):
    rows = [{"text": "Résumé the café's menu."}, {"text": "東京の天気は?", "session_id": "s1"},
            {"text": "Third.", "id": 3}] * 40
    plain = jsonl(tmp_path / "plain.jsonl", rows)
    notepad = tmp_path / "notepad.jsonl"  # UTF-8 with BOM, CRLF line ends
    notepad.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    want = tmp_path / "want.jsonl"
    assert run("nonce", plain, want, "--seed", "2", "--workers", "1").exit_code == 0
    for workers in ("1", "2"):
        got = tmp_path / f"got{workers}.jsonl"
        result = run("nonce", notepad, got, "--seed", "2", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        assert got.read_bytes() == want.read_bytes()
        assert manifest_of(got)["inputs"][0]["sha256"] == sha256(notepad)  # BOM included
    assert small_chunks == [2]  # the BOM file split for two workers too
    array = tmp_path / "notepad.json"  # a JSON array saved by Notepad
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=2).encode())
    got = tmp_path / "array.jsonl"
    assert run("nonce", array, got, "--seed", "2").exit_code == 0
    assert read_jsonl(got) == read_jsonl(want)


def test_a_byte_order_mark_is_only_skipped_first(tmp_path, run):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    result = run("nonce", path, tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {path}:2: invalid JSON")


# ---------------------------------------------------------------- JSON arrays


@pytest.mark.parametrize("name", list(ARRAYS))
def test_a_json_array_gives_the_bytes_its_lines_give_and_keeps_every_field(name, tmp_path, run):
    rows = ARRAYS[name]
    lines = jsonl(tmp_path / f"{name}.jsonl", rows)
    want = tmp_path / "want.jsonl"
    same = ["--to", ARRAY_FORMATS[name]]  # datasets with replies, kept datasets
    assert run("nonce", lines, want, "--seed", "4", *same).exit_code == 0
    written = read_jsonl(want)
    assert len(written) == len(rows)
    content = ("instruction", "input", "conversations")  # the nonce goes in there
    for row, out in zip(rows, written, strict=True):
        assert set(out) == set(row)  # id and tools kept
        assert {k: v for k, v in out.items() if k not in content} == {
            k: v for k, v in row.items() if k not in content}
    array = json_array(tmp_path / f"{name}.json", rows)
    named_jsonl = tmp_path / "array-named.jsonl"  # a JSON array under a JSONL name
    named_jsonl.write_bytes(array.read_bytes())
    gzipped = tmp_path / f"{name}.json.gz"
    gzipped.write_bytes(gzip.compress(array.read_bytes()))
    for path in (array, named_jsonl, gzipped):
        got = tmp_path / "got.jsonl"
        result = run("nonce", path, got, "--seed", "4", *same)
        assert result.exit_code == 0, result.stderr
        assert got.read_bytes() == want.read_bytes(), path
        manifest = manifest_of(got)
        assert manifest["inputs"][0]["sha256"] == sha256(path)
        assert manifest["inputs"][0]["format"] == manifest_of(want)["inputs"][0]["format"]
        assert manifest["inputs"][0]["layout"] == "json-array"
    assert "layout" not in manifest_of(want)["inputs"][0]


ARRAY_FORMATS = {"alpaca_en_demo": "alpaca", "glaive_toolcall_en_demo": "sharegpt",
                 "ShareGPT_V3_unfiltered_cleaned_split": "sharegpt"}


def test_llama_factory_arrays_are_detected_as_their_formats(tmp_path, run):
    for name, fmt in ARRAY_FORMATS.items():
        path = json_array(tmp_path / f"{name}.json", ARRAYS[name])
        result = run("stats", path, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["input"]["format"] == fmt


@pytest.mark.parametrize(("text", "line", "problem"), [
    ('[{"text": "a"}, {"text": 2}]', 2, "single_turn: 'text' must be a string, not int"),
    ('[{"text": "a"}, 3]', 2, "expected a JSON object, got int"),
    ('[{"text": "a"}, {"text": "b"', 2,
     "the JSON array ends inside this item (a truncated file?)"),
    ('[{"text": "a"}, {"text": "b"},', 3, "the JSON array is not closed (a truncated file?)"),
    ('[{"text": "a"} {"text": "b"}]', 2, "invalid JSON: expected ',' or ']' after item 1"),
    ('[{"text": "a"}, {"text": "b",}]', 2, "invalid JSON: Expecting property name enclosed in "
                                           "double quotes"),
    ('[{"text": "a"}, {"text": NaN}]', 2, "invalid JSON: NaN is not a JSON value"),
    ('[{"text": "a"}, {"text": "b", "n": 1e400}]', 2,
     "invalid JSON: number is infinity when parsed as double"),
    ('[{"text": "a"}]\n[{"text": "b"}]\n', 2, "more data after the end of the JSON array"),
    ('[{"text": "a"}, {"text": "\xff"}]', 2, "invalid UTF-8"),
])
def test_a_bad_json_array_is_one_line_naming_the_item(text, line, problem, tmp_path, run):
    path = tmp_path / "in.json"
    path.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    out = tmp_path / "out.jsonl"
    result = run("nonce", path, out)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {path}:{line}: {problem}\n"
    assert not out.exists()


def test_a_json_array_skips_bad_items_with_skip_invalid(tmp_path, run):
    path = json_array(tmp_path / "in.json", [{"text": "a"}, {"text": 2}, {"text": "c"}])
    out = tmp_path / "out.jsonl"
    result = run("nonce", path, out, "--skip-invalid", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    assert [r["text"].split("\n")[1] for r in read_jsonl(out)] == ["a", "c"]
    assert manifest_of(out)["skipped"]["lines"] == [
        "2: single_turn: 'text' must be a string, not int"]


def test_a_json_array_of_unknown_keys_is_read_as_a_dataset(tmp_path, run):
    path = json_array(tmp_path / "qa.json", [{"question": "Why?", "answer": "Because."}])
    out = tmp_path / "out.jsonl"
    result = run("nonce", path, out, "--seed", "1")
    assert result.exit_code == 0, result.stderr
    [row] = read_jsonl(out)
    assert row["answer"] == "Because." and row["messages"][0]["content"].endswith("\nWhy?")
    assert manifest_of(out)["inputs"][0]["dataset"]["mapping"] == {"layout": "text",
                                                                   "text": "question"}


def test_a_json_array_streams_from_stdin(tmp_path, run):
    array = json.dumps(SHAREGPT, indent=2).encode()
    lines = "".join(json.dumps(r) + "\n" for r in SHAREGPT).encode()
    got = run("nonce", "-", "-", "--seed", "8", "--to", "sharegpt", input=array)
    assert got.exit_code == 0, got.stderr
    assert got.stdout_bytes == run("nonce", "-", "-", "--seed", "8", "--to", "sharegpt",
                                   input=lines).stdout_bytes


# ---------------------------------------------------------------- integers beyond 64 bits


def test_integers_beyond_64_bits_round_trip_exactly(tmp_path, run, small_chunks):
    lines = jsonl(tmp_path / "in.jsonl", BIG_LINES * 50)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert run("nonce", lines, one, "--seed", "6", "--workers", "1").exit_code == 0
    assert run("nonce", lines, two, "--seed", "6", "--workers", "2").exit_code == 0
    assert small_chunks == [2]
    assert one.read_bytes() == two.read_bytes()
    text = one.read_text()
    assert '"id":123456789012345678901234567890' in text
    assert '"trace":[-1180591620717411303424,1.5,18446744073709551616]' in text
    assert '"extra":{"seed":36893488147419103232}' in text
    assert [{**r, "text": "x"} for r in read_jsonl(one)] == [
        {**r, "text": "x"} for r in BIG_LINES * 50]
    array = json_array(tmp_path / "in.json", BIG_LINES * 50)
    three = tmp_path / "three.jsonl"
    assert run("nonce", array, three, "--seed", "6").exit_code == 0
    assert three.read_bytes() == one.read_bytes()
    moon = tmp_path / "moon.jsonl"  # to another format: still exact
    assert run("pipe", "read", lines, "write", "--to", "mooncake_trace", moon).exit_code == 0
    assert [r["id"] for r in read_jsonl(moon)][:2] == [BIG, 7]


def test_a_value_json_cannot_hold_names_its_field():
    from promptkit.core.errors import InvalidRecordError
    from promptkit.io.jsoncodec import dumps_exact

    # orjson's own bytes for everything else (floats, UTF-8 as it is)
    assert dumps_exact({"a": [2 ** 64, 1e16, "é"]}) == (
        b'{"a":[18446744073709551616,1e+16,"\xc3\xa9"]}\n')
    with pytest.raises(InvalidRecordError, match=r"cannot encode: field 'image.bytes' holds "
                                                 r"bytes, which JSON cannot"):
        dumps_exact({"text": "t", "image": {"bytes": b"\x89PNG", "path": None}, "n": 2 ** 70})


# ---------------------------------------------------------------- compressed outputs


@pytest.mark.parametrize("suffix", [".gz", ".zst", ".bz2", ".xz"])
def test_a_compressed_output_is_deterministic_verified_and_rebuilt(suffix, tmp_path, run):
    source = tmp_path / "in.jsonl"
    source.write_bytes(trace_lines(500))
    plain = tmp_path / "plain.jsonl"
    assert run("nonce", source, plain, "--seed", "9").exit_code == 0
    out, again = tmp_path / f"out.jsonl{suffix}", tmp_path / f"again.jsonl{suffix}"
    for path in (out, again):
        result = run("nonce", source, path, "--seed", "9")
        assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == again.read_bytes()  # same input and seed, same bytes
    unpack = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress,
              ".zst": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}
    assert unpack[suffix](out.read_bytes()) == plain.read_bytes()
    output = manifest_of(out)["output"]
    assert output["records"] == 500 and output["sha256"] == sha256(out)
    assert output["content_sha256"] == sha256(plain)
    assert output["compression"] == {".gz": "gzip", ".zst": "zstd"}.get(suffix, suffix[1:])
    assert run("verify", out).exit_code == 0
    rebuilt = tmp_path / f"rebuilt.jsonl{suffix}"
    result = run("rebuild", f"{out}.manifest.json", rebuilt)
    assert result.exit_code == 0, result.stderr
    assert "is identical to the file the manifest describes" in result.stderr
    assert rebuilt.read_bytes() == out.read_bytes()
    if suffix == ".gz":  # gzip as the gzip tool's -n writes it: no name, no time
        data = out.read_bytes()
        assert data[3] & 0x08 == 0 and data[4:8] == b"\0\0\0\0"


def test_rebuild_accepts_the_same_lines_compressed_to_other_bytes(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{i}"} for i in range(20)])
    out = tmp_path / "out.jsonl.gz"
    assert run("nonce", source, out, "--seed", "1").exit_code == 0
    manifest = manifest_of(out)
    # As another zlib would have compressed the same lines: other bytes, same lines.
    manifest["output"]["sha256"] = hashlib.sha256(gzip.compress(
        gzip.decompress(out.read_bytes()), compresslevel=1)).hexdigest()
    recorded = tmp_path / "recorded.manifest.json"
    recorded.write_text(json.dumps(manifest))
    result = run("rebuild", recorded, tmp_path / "re.jsonl.gz")
    assert result.exit_code == 0, result.stderr
    assert "holds the same lines as the file the manifest describes" in result.stderr
    manifest["output"]["content_sha256"] = "0" * 64  # other lines: a real difference
    recorded.write_text(json.dumps(manifest))
    result = run("rebuild", recorded, tmp_path / "re2.jsonl.gz")
    assert result.exit_code == 1
    assert "rebuilt file differs from the manifest" in result.stderr


def test_a_damaged_compressed_output_fails_verify_in_one_line(tmp_path, run, single_turn):
    out = tmp_path / "out.jsonl.gz"
    assert run("nonce", single_turn, out, "--seed", "1").exit_code == 0
    out.write_bytes(out.read_bytes()[:-6])
    result = run("verify", out)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"promptkit: {out}: truncated gzip file")


def test_aiperf_loads_a_gzipped_output_and_is_told_to_unpack_the_others(tmp_path, run):
    import aiperf_tool

    source = write_jsonl(tmp_path / "in.jsonl", [
        {"text": "Hello there.", "session_id": "a", "output_length": 5},
        {"text": "Second turn.", "session_id": "a", "delay": 100},
        {"text": "Alone.", "extra": {"cache_salt": "s"}}])
    for fmt in ("single_turn", "multi_turn"):
        plain, packed = tmp_path / f"{fmt}.jsonl", tmp_path / f"{fmt}.jsonl.gz"
        for path in (plain, packed):
            assert run("nonce", source, path, "--seed", "3", "--to", fmt).exit_code == 0
        args = manifest_of(packed)["aiperf"]["args"]
        assert args[:2] == ["--input-file", str(packed)]
        loaded = [aiperf_tool.load_dataset(fmt, p) for p in (plain, packed)]
        assert loaded[0] == loaded[1]
        assert loaded[1]  # the records are there
    packed = tmp_path / "out.jsonl.zst"
    assert run("nonce", source, packed, "--seed", "3").exit_code == 0
    aiperf = manifest_of(packed)["aiperf"]
    assert aiperf["args"][:2] == ["--input-file", str(tmp_path / "out.jsonl")]
    assert f"decompress it first (zstd -d {packed})" in aiperf["note"]


def test_pipe_and_workers_write_the_same_compressed_bytes(tmp_path, run, small_chunks):
    source = tmp_path / "in.jsonl"
    source.write_bytes(trace_lines(2000))
    one, two = tmp_path / "one.jsonl.gz", tmp_path / "two.jsonl.gz"
    assert run("nonce", source, one, "--seed", "5", "--workers", "1").exit_code == 0
    assert run("pipe", "read", "--workers", "2", source, "nonce", "--seed", "5", "write",
               two).exit_code == 0
    assert small_chunks == [2]
    assert one.read_bytes() == two.read_bytes()


def test_records_of_a_gzipped_pipe_flow_before_it_closes(tmp_path):
    """A compressed stream on stdin is decoded as it arrives (a sync flush is enough)."""
    import zlib

    packer = zlib.compressobj(wbits=31)  # gzip
    with subprocess.Popen([*PROMPTKIT, "nonce", "-", "-", "--seed", "1"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(packer.compress(b'{"text": "first"}\n') + packer.flush(zlib.Z_SYNC_FLUSH))
        proc.stdin.flush()
        line = proc.stdout.readline()  # arrives while stdin is still open
        assert json.loads(line)["text"].endswith("\nfirst")
        proc.stdin.write(packer.compress(b'{"text": "second"}\n') + packer.flush())
        proc.stdin.close()
        assert json.loads(proc.stdout.readline())["text"].endswith("\nsecond")
        assert proc.wait(timeout=30) == 0
