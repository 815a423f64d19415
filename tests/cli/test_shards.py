"""Many files as one input: a folder or a glob of shards reads as their concatenation.

The proof is the same command on the concatenated file: every record's index is its place
in the stream, so nonces, sampled lengths, hash ids and figures come out the same however
the stream is split (uneven shards, blank lines, a gzipped shard, an empty one, a session
begun in one shard and continued in a later one)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from helpers import read_jsonl

from promptkit.io import shards

CUTS = [0, 1, 9, 10, 22, 30, 30, 31, 45, 52, 60]
GZIPPED = 3


def lines_of(seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    lines = []
    for i in range(60):
        if i in (7, 23, 24, 50):  # blank lines: they count as lines, as in one file
            lines.append("")
            continue
        row = {"messages": [{"role": "user", "content": f"Question {i}: " + " ".join(
            rng.choice(words) for _ in range(rng.randint(3, 40)))}],
            "output_length": rng.randint(10, 100)}
        if i % 3 == 0:
            row["session_id"] = f"s{i % 5}"
        lines.append(json.dumps(row))
    return lines


def split(lines: list[str], folder: Path, cuts: list[int] = CUTS) -> list[Path]:
    folder.mkdir()
    paths = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        text = "".join(line + "\n" for line in lines[a:b]).encode()
        path = folder / f"part-{k:05d}.jsonl"
        if k == GZIPPED:
            path = path.with_suffix(".jsonl.gz")
            text = gzip.compress(text, mtime=0)
        path.write_bytes(text)
        paths.append(path)
    return paths


@pytest.fixture
def stream(tmp_path):
    """The concatenated file and its shards' folder."""
    lines = lines_of()
    whole = tmp_path / "all.jsonl"
    whole.write_text("".join(line + "\n" for line in lines))
    split(lines, tmp_path / "parts")
    return whole, tmp_path / "parts"


def test_the_stream_has_what_the_tests_claim(stream):
    whole, parts = stream
    paths = shards.expand(str(parts))
    assert len(paths) == 10 and paths == sorted(paths)
    counts = [shards.positions(p) for p in paths]
    assert counts == [b - a for a, b in zip(CUTS, CUTS[1:], strict=False)]
    assert 0 in counts and 1 in counts  # an empty shard and a one-line shard
    # A session begun in shard 1 (lines 1-8) continues in shard 3 (gzipped, lines 10-21).
    sessions = [json.loads(line).get("session_id") if line else None
                for line in whole.read_text().splitlines()]
    assert sessions[3] == "s3" and "s3" in sessions[10:22]
    assert shards.offsets(counts)[GZIPPED] == 10
    assert shards.offsets(counts)[-1] + counts[-1] == len(sessions)


COMMANDS = {
    "nonce": ["--seed", "3"],
    "fit": ["--tokens", "5,30", "--tokenizer", "cl100k_base", "--seed", "4"],
    "pad": ["--tokens", "48", "--groups", "3", "--system-prompt", "Shared.",
            "--tokenizer", "cl100k_base", "--seed", "5"],
}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_many_files_give_the_bytes_of_their_concatenation(command, workers, stream, tmp_path,
                                                          run, small_chunks):
    whole, parts = stream
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    args = [*COMMANDS[command], "--workers", workers]
    result = run(command, whole, one, *args)
    assert result.exit_code == 0, result.stderr
    result = run(command, parts, many, *args)
    assert result.exit_code == 0, result.stderr
    assert many.read_bytes() == one.read_bytes()
    # The whole file ran in workers; the shards, one gzipped, in one process.
    assert small_chunks == ([2] if workers == "2" else [])
    glob = tmp_path / "glob.jsonl"
    assert run(command, f"{parts}/part-*.jsonl*", glob, *args).exit_code == 0
    assert glob.read_bytes() == one.read_bytes()
    # Plain shards run in workers too, chunk by chunk, each chunk at its place.
    plain = plain_copy(parts, tmp_path / "plain")
    again = tmp_path / "plain.jsonl"
    result = run(command, plain, again, *args)
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == one.read_bytes()
    assert small_chunks == ([2, 2] if workers == "2" else [])
    manifest = json.loads(Path(f"{again}.manifest.json").read_text())["inputs"][0]
    assert [s["sha256"] for s in manifest["shards"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(plain.iterdir())]
    assert manifest["sha256"] == shards.combined_sha256(
        [s["sha256"] for s in manifest["shards"]])


def plain_copy(parts: Path, folder: Path) -> Path:
    """The shards with the gzipped one decompressed."""
    folder.mkdir()
    for path in parts.iterdir():
        data = path.read_bytes()
        if path.suffix == ".gz":
            data, path = gzip.decompress(data), path.with_suffix("")
        (folder / path.name).write_bytes(data)
    return folder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_bad_lines_in_workers_name_the_shard(workers, stream, tmp_path, run, small_chunks):
    _, parts = stream
    plain = plain_copy(parts, tmp_path / "plain")
    bad = plain / "part-00009.jsonl"  # lines 52..59 of the stream
    lines = bad.read_text().splitlines()
    lines[2] = "{not json"
    bad.write_text("".join(line + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    result = run("nonce", plain, out, "--seed", "1", "--workers", workers)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {bad}:3: invalid JSON")
    result = run("nonce", plain, out, "--seed", "1", "--workers", workers, "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    skipped = json.loads(Path(f"{out}.manifest.json").read_text())["skipped"]["lines"]
    assert [line.split(": ", 1)[0] for line in skipped] == [f"{bad}:3"]
    assert small_chunks == ([2, 2] if workers == "2" else [])


def test_a_continued_session_keeps_its_nonce_across_shards(stream, tmp_path, run):
    """AIPerf sends an OpenAI line of a session as it is (its messages hold whatever
    history it has): every line gets a nonce, and the lines of a session the one their
    session's first line got, across shards too."""
    whole, parts = stream
    out = tmp_path / "out.jsonl"
    assert run("nonce", parts, out, "--seed", "3").exit_code == 0
    rows = [json.loads(line) for line in whole.read_text().splitlines() if line]
    nonces: dict[str, str] = {}
    continued = 0
    for before, after in zip(rows, read_jsonl(out), strict=True):
        text, made = before["messages"][0]["content"], after["messages"][0]["content"]
        assert made.endswith("\n" + text) and made != text
        nonce = made[:-len(text) - 1]
        session = before.get("session_id")
        if session in nonces:  # a later line: its session's nonce
            assert nonce == nonces[session]
            continued += 1
        elif session is not None:
            nonces[session] = nonce
    assert continued == 14  # 19 lines of 5 sessions
    assert len(set(nonces.values())) == 5


@pytest.mark.parametrize("plain", [False, True])
def test_hash_trace_stats_check_and_turns_are_the_same(plain, stream, tmp_path, run,
                                                       small_chunks, monkeypatch):
    """(Plain shards: hash-trace, stats and check read them in worker processes.)"""
    from promptkit.runner import workers as parallel

    whole, parts = stream
    if plain:
        parts = plain_copy(parts, tmp_path / "plain")
    mapped: list[str] = []
    real = parallel.map_records

    def spy(path, *args, **kwargs):
        mapped.append("many" if isinstance(path, list) else "one")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(parallel, "map_records", spy)
    for name, path in (("one", whole), ("many", parts)):
        result = run("hash-trace", path, tmp_path / f"{name}.trace.jsonl",
                     "--tokenizer", "cl100k_base", "--block-size", "8")
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "many.trace.jsonl").read_bytes() == \
        (tmp_path / "one.trace.jsonl").read_bytes()
    for command in (["stats", "--tokenizer", "cl100k_base"],
                    ["check", "--tokenizer", "cl100k_base", "--block-size", "8"]):
        one = json.loads(run(*command, whole, "--json", "--workers", "2").stdout)
        many = json.loads(run(*command, parts, "--json", "--workers", "2").stdout)
        assert one.pop("input")["path"] == str(whole)
        read = many.pop("input")
        assert read["path"] == str(parts)
        assert read["sha256"] == shards.combined_sha256(
            [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(parts.iterdir())])
        assert many == one
    # hash-trace, stats, check: the file in workers, and the shards when all are plain.
    assert mapped == (["one", "many"] * 3 if plain else ["one"] * 3)
    # Conversations (sharegpt) split over shards make the same requests.
    rows = [json.dumps({"id": f"c{i}", "conversations": [
        {"from": "human", "value": f"Question {i} " + "more " * i},
        {"from": "gpt", "value": "An answer " * (i + 1)}]}) for i in range(12)]
    (tmp_path / "conv.jsonl").write_text("".join(r + "\n" for r in rows))
    split(rows, tmp_path / "conv", [0, 2, 3, 3, 8, 12])
    for name, path in (("one", tmp_path / "conv.jsonl"), ("many", tmp_path / "conv")):
        result = run("turns", path, tmp_path / f"{name}.turns.jsonl", "--mode", "first",
                     "--tokenizer", "cl100k_base")
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "many.turns.jsonl").read_bytes() == \
        (tmp_path / "one.turns.jsonl").read_bytes()


def test_the_manifest_lists_the_shards_and_verify_and_rebuild_use_them(stream, tmp_path, run):
    whole, parts = stream
    out = tmp_path / "out.jsonl"
    assert run("nonce", parts, out, "--seed", "3").exit_code == 0
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    [source] = manifest["inputs"]
    assert source["path"] == str(parts) and source["records"] == 56
    listed = source["shards"]
    assert [s["path"] for s in listed] == shards.expand(str(parts))
    for shard in listed:
        data = Path(shard["path"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["size"] == len(data)
    assert listed[GZIPPED]["compression"] == "gzip"
    assert source["sha256"] == shards.combined_sha256([s["sha256"] for s in listed])
    # A single file's manifest is as it always was: no shards.
    assert run("nonce", whole, tmp_path / "one.jsonl", "--seed", "3").exit_code == 0
    assert "shards" not in json.loads(Path(f"{tmp_path}/one.jsonl.manifest.json").read_text(
        ))["inputs"][0]

    result = run("verify", out)
    assert result.exit_code == 0, result.stderr
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{out}.manifest.json", again)
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == out.read_bytes()

    changed = Path(listed[4]["path"])
    changed.write_text(changed.read_text().replace("Question", "question", 1))
    result = run("rebuild", f"{out}.manifest.json", tmp_path / "third.jsonl")
    assert result.exit_code == 1
    assert f"input shard {changed} differs from the manifest's shard 4" in result.stderr
    assert not (tmp_path / "third.jsonl").exists()


def test_errors_name_the_shard_and_its_own_line(stream, tmp_path, run):
    _, parts = stream
    bad = parts / "part-00008.jsonl"  # lines 31..44 of the stream
    lines = bad.read_text().splitlines()
    lines[4] = '{"messages": [{"role": "user", "content": "cut'
    lines[6] = '{"messages": 3}'
    bad.write_text("".join(line + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    result = run("nonce", parts, out, "--seed", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {bad}:5: invalid JSON")
    assert not out.exists()
    result = run("nonce", parts, out, "--seed", "1", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    assert f"(first: {bad}:5)" in result.stderr
    skipped = json.loads(Path(f"{out}.manifest.json").read_text())["skipped"]
    assert [line.split(": ", 1)[0] for line in skipped["lines"]] == [f"{bad}:5", f"{bad}:7"]
    assert skipped["by_reason"] == {"invalid JSON: unexpected end of data": 1,
                                    "mooncake_trace: 'messages' must be a non-empty list": 1}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_error_raised_by_a_step_names_the_shard(workers, tmp_path, run, small_chunks):
    parts = tmp_path / "parts"
    fine = '{"messages": [{"role": "user", "content": "fine"}]}'
    split([fine] * 300 + ['{"messages": [{"role": "assistant", "content": "no user"}]}'],
          parts, [0, 200, 301])
    result = run("fit", parts, tmp_path / "out.jsonl", "--tokens", "5",
                 "--tokenizer", "cl100k_base", "--workers", workers)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {parts}/part-00001.jsonl:101: ")
    assert small_chunks == ([2] if workers == "2" else [])


@pytest.mark.parametrize("case", ["empty folder", "no match", "mixed", "csv"])
def test_inputs_that_name_no_shards_or_mixed_kinds_are_one_line(case, tmp_path, run):
    folder = tmp_path / "in"
    folder.mkdir()
    spec = str(folder)
    expected = f"{folder}: empty folder: no .jsonl"
    if case == "no match":
        spec = f"{folder}/*.jsonl"
        expected = f"{spec}: no files match"
    elif case == "mixed":
        import pyarrow as pa
        import pyarrow.parquet as pq

        (folder / "a.jsonl").write_text('{"text": "x"}\n')
        pq.write_table(pa.table({"text": ["y"]}), folder / "b.parquet")
        expected = (f"{folder}: shards of mixed kinds: {folder}/b.parquet is parquet, "
                    f"{folder}/a.jsonl is JSON lines")
    elif case == "csv":
        (folder / "a.csv").write_text("text\nx\n")
        spec = f"{folder}/*"
        expected = f"{folder}/a.csv: shards are JSON lines or parquet files, not .csv"
    out = tmp_path / "out.jsonl"
    result = run("nonce", spec, out)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {expected}")
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("spec", ["folder", "glob"])
@pytest.mark.parametrize("kind", ["dangling link", "fifo"])
def test_a_shard_that_cannot_be_read_is_reported(kind, spec, stream, tmp_path, run):
    _, parts = stream
    bad = parts / "part-00004.jsonl"
    bad.unlink()
    if kind == "dangling link":
        bad.symlink_to(tmp_path / "gone.jsonl")
        expected = f"{bad}: a link to {tmp_path / 'gone.jsonl'}, which does not exist"
    else:
        os.mkfifo(bad)
        expected = f"{bad}: is a FIFO, not a file of records"
    out = tmp_path / "out.jsonl"
    result = run("nonce", parts if spec == "folder" else f"{parts}/*.jsonl*", out)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {expected}\n"
    assert not out.exists()


#: A file dropped among the shards: a record, so a rebuild that read it would go on and
#: report its sha256 among the shards that differ.
SECRET = '{"text": "top secret"}\n'


@pytest.mark.parametrize("dropped", ["link out", "file"])
def test_rebuild_opens_only_the_shards_the_manifest_lists(dropped, stream, tmp_path, run):
    """A file dropped among the shards after the manifest was made, a link out of the
    folder or a plain file, is not read: its content and sha256 appear nowhere."""
    _, parts = stream
    out = tmp_path / "out.jsonl"
    assert run("nonce", parts, out, "--seed", "3").exit_code == 0
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    extra = parts / "part-00004b.jsonl"  # sorts among the listed shards
    if dropped == "link out":
        extra.symlink_to(secret)
    else:
        extra.write_text(SECRET)
    for args in ((), ("--allow-paths",)):
        result = run("rebuild", f"{out}.manifest.json", tmp_path / "again.jsonl", *args)
        assert result.exit_code == 1
        assert result.stderr == (f"promptkit: {out}.manifest.json: {extra} is not one of the "
                                 "input's shards the manifest lists: not read\n")
        assert hashlib.sha256(SECRET.encode()).hexdigest() not in result.stderr
        assert not (tmp_path / "again.jsonl").exists()
    # A copy of the shards elsewhere, given with --input: the same names are the shards.
    copy = tmp_path / "copy"
    copy.mkdir()
    for shard in parts.iterdir():
        if shard != extra:
            (copy / shard.name).write_bytes(shard.read_bytes())
    result = run("rebuild", f"{out}.manifest.json", tmp_path / "again.jsonl", "--input", copy)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()
    (copy / extra.name).write_text(SECRET)
    result = run("rebuild", f"{out}.manifest.json", tmp_path / "third.jsonl", "--input",
                 f"{copy}/*.jsonl*")
    assert result.exit_code == 1
    assert f"{copy / extra.name} is not one of the input's shards" in result.stderr


def test_parquet_shards_are_the_rows_of_one_table(tmp_path, run):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"prompt {i} " + "word " * i for i in range(25)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "all.parquet")
    (tmp_path / "pq").mkdir()
    for k, (a, b) in enumerate([(0, 3), (3, 3), (3, 10), (10, 25)]):
        pq.write_table(pa.table({"text": texts[a:b]}), tmp_path / "pq" / f"p{k}.parquet")
    for name, path in (("one", tmp_path / "all.parquet"), ("many", tmp_path / "pq")):
        result = run("nonce", path, tmp_path / f"{name}.jsonl", "--seed", "2")
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "many.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert shards.positions(str(tmp_path / "pq" / "p2.parquet")) == 7
    again = tmp_path / "again.jsonl"
    assert run("rebuild", tmp_path / "many.jsonl.manifest.json", again).exit_code == 0
    assert again.read_bytes() == (tmp_path / "one.jsonl").read_bytes()


def test_limit_reads_the_first_records_of_the_stream_and_hashes_every_shard(stream, tmp_path,
                                                                             run):
    whole, parts = stream
    for name, path in (("one", whole), ("many", parts)):
        result = run("nonce", path, tmp_path / f"{name}.jsonl", "--seed", "3", "--limit", "12")
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "many.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    listed = json.loads((tmp_path / "many.jsonl.manifest.json").read_text())["inputs"][0]
    assert len(listed["shards"]) == 10 and listed["limit"] == 12


def test_the_shipped_shards_are_the_example_trace_cut_in_three(tmp_path, run):
    root = Path(__file__).resolve().parents[2] / "prompts"
    parts = sorted((root / "shards").glob("part-*.jsonl"))
    assert len(parts) == 3
    assert b"".join(p.read_bytes() for p in parts) == (root / "trace.jsonl.example").read_bytes()
    for name, path in (("one", root / "trace.jsonl.example"), ("many", root / "shards")):
        assert run("nonce", path, tmp_path / f"{name}.jsonl", "--seed", "7").exit_code == 0
    assert (tmp_path / "many.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
