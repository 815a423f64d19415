"""Datasets read in Arrow batches: the same bytes as promptkit wrote before, for every
``--workers``, and the manifests made before still rebuild.

``tests/data/before-arrow`` holds files and manifests made by promptkit before datasets
were read in batches (``MADE.txt`` there says how): they stand for the manifests users
already have.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import read_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit.core.errors import InvalidRecordError
from promptkit.formats import get_format
from promptkit.formats.table import find_mapping
from promptkit.io import shards
from promptkit.io.sink import Encoder
from promptkit.ops.nonce import NonceMaker, nonce_params
from promptkit.ops.registry import make
from promptkit.runner import batches
from promptkit.runner import workers as parallel

BEFORE = Path(__file__).parents[1] / "data" / "before-arrow"
MANIFESTS = sorted(p.name for p in BEFORE.glob("*.jsonl.manifest.json"))


@pytest.fixture
def before(tmp_path, monkeypatch):
    """A copy of the files made before, as the working folder (the manifests name their
    inputs relative to it)."""
    folder = tmp_path / "before"
    shutil.copytree(BEFORE, folder)
    monkeypatch.chdir(folder)
    return folder


def test_the_fixture_has_every_kind_of_run():
    assert len(MANIFESTS) == 17


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_manifest_made_before_rebuilds_the_same_bytes(name, workers, before, run,
                                                         small_batches):
    made = name.removesuffix(".manifest.json")
    result = run("rebuild", name, "again.jsonl", "--workers", workers)
    assert result.exit_code == 0, result.stderr
    assert (before / "again.jsonl").read_bytes() == (before / made).read_bytes()
    recorded = json.loads((before / name).read_text())
    # Every dataset run but those that need each record in order ran in worker processes.
    in_order = (recorded["inputs"][0]["dataset"]["mapping"].get("timestamp")
                or recorded["steps"] and recorded["steps"][-1]["op"] == "check")
    assert small_batches == ([] if workers == "1" or in_order else [2])


# ---------------------------------------------------------------- the lane and the record way

#: Columns a generated table may have beside its text column ``prompt``: name -> (Arrow
#: type, values). Some names are keys the lane writes itself, or AIPerf reads (``type``,
#: which must name the file's own type); some values JSON holds only another way (bytes,
#: Decimal): the record way says what it makes of them.
CELLS = {
    "n": (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    "u": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "score": (pa.float64(), st.one_of(st.none(), st.just(math.nan), st.floats())),
    "note": (pa.string(), st.one_of(st.none(), st.text(max_size=12))),
    "flag": (pa.bool_(), st.booleans()),
    "tags": (pa.list_(pa.string()), st.lists(st.text(max_size=4), max_size=3)),
    "meta": (pa.struct([("k", pa.int32()), ("s", pa.string())]),
             st.one_of(st.none(), st.fixed_dictionaries({"k": st.integers(0, 9),
                                                          "s": st.text(max_size=4)}))),
    "blob": (pa.binary(), st.binary(max_size=4)),
    "price": (pa.decimal128(6, 2), st.decimals(min_value=0, max_value=9999, places=2)),
    "role": (pa.string(), st.just("user")),
    "messages": (pa.string(), st.just("m")),
    "type": (pa.string(), st.sampled_from(["text", "single_turn", "mooncake_trace"])),
}
#: The columns the lane takes in each format: no key it writes itself, values orjson
#: writes as they are.
PLAIN = {"single_turn": ("n", "u", "score", "note", "flag", "tags", "meta", "messages"),
         "mooncake_trace": ("n", "u", "score", "note", "flag", "tags", "meta", "role"),
         "openai": ()}


@st.composite
def tables(draw):
    rows = draw(st.integers(1, 12))
    names = draw(st.lists(st.sampled_from(sorted(CELLS)), unique=True, max_size=4))
    texts = st.text(max_size=30)  # quotes, backslashes, control characters, any script
    prompt = draw(st.lists(st.one_of(texts, st.none()) if draw(st.booleans()) else texts,
                           min_size=rows, max_size=rows))
    columns = {"prompt": pa.array(prompt, pa.large_string() if draw(st.booleans())
                                  else pa.string())}
    for name in names:
        kind, values = CELLS[name]
        columns[name] = pa.array(draw(st.lists(values, min_size=rows, max_size=rows)), kind)
    order = draw(st.permutations(list(columns)))
    return pa.table({name: columns[name] for name in order})


NONCES = st.one_of(st.none(), st.fixed_dictionaries({
    "kind": st.sampled_from(["uuid", "timestamp", "random"]),
    "at": st.sampled_from(["start", "user", "every-turn"]),
    "template": st.sampled_from(["{nonce}\n", "[{nonce}] ", "\"{nonce}\"\\"]),
    "length": st.integers(1, 20), "seed": st.integers(0, 2**63 - 1)}))


def run_chunk(rows, table, first):
    """``(data, read, written, skipped, keys, fields)`` of one chunk, or the error."""
    try:
        result = batches.process_rows(rows, batches.Chunk(
            "d.parquet", 0, first, table.to_batches(max_chunksize=5)))
    except InvalidRecordError as exc:
        return str(exc)
    return (result.data, result.read, result.written, result.skipped, result.keys,
            result.fields)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), out=st.sampled_from(["single_turn", "mooncake_trace", "openai"]),
       nonce=NONCES, first=st.integers(1, 10**6), skip_invalid=st.booleans())
def test_the_lane_writes_what_the_records_would(table, out, nonce, first, skip_invalid):
    mapping = find_mapping(table.column_names, text="prompt")
    steps = [] if nonce is None else [make("nonce", nonce_params(
        **nonce, start_time="2026-01-01T00:00:00Z"))]
    job = parallel.Job("d.parquet", "", "dataset", out, steps, skip_invalid, "d.parquet")
    lane = batches.Lane.for_run(mapping, steps, out, None)
    assert lane is not None
    fast = run_chunk(batches.RowsJob(job, mapping, lane), table, first)
    slow = run_chunk(batches.RowsJob(job, mapping, None), table, first)
    assert fast == slow
    # The lane took the chunk when every value is one it writes as it is (else the test
    # would hold for a lane that never takes one).
    plain = (table.column("prompt").null_count == 0
             and all(name in PLAIN[out] for name in table.column_names if name != "prompt")
             and (nonce is not None or "" not in table.column("prompt").to_pylist()))
    encoder = Encoder(get_format(out))
    taken = lane.chunk(table.to_batches(max_chunksize=5), first - 1, encoder)
    assert (taken is not None) == plain


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), first=st.integers(0, 2**53),
       count=st.integers(0, 300), kind=st.sampled_from(["uuid", "timestamp", "random"]))
def test_nonces_made_a_batch_at_a_time_are_those_made_one_by_one(seed, first, count, kind):
    maker = NonceMaker(kind, seed, length=11, start_time="2026-01-01T00:00:00Z")
    assert maker.make_many(first, count) == [maker.make(i) for i in range(first, first + count)]


# ---------------------------------------------------------------- the command line

def alpaca(path: Path, rows: int, *, nulls: tuple[int, ...] = ()) -> Path:
    """An alpaca-shaped parquet file of ``rows`` rows, row groups of 40 (``nulls``: rows,
    from 1, whose instruction is null)."""
    table = pa.table({
        "instruction": [None if i + 1 in nulls else f"Task {i}: say \"{i}\"\n\tnow é"
                        for i in range(rows)],
        "input": ["" if i % 3 else f"on item {i}" for i in range(rows)],
        "output": [f"Done {i}." for i in range(rows)],
    })
    pq.write_table(table, path, row_group_size=40)
    return path


def without_run(manifest: dict) -> dict:
    """A manifest without what differs from run to run of the same thing."""
    return {k: v for k, v in manifest.items() if k not in ("created", "argv")}


@pytest.mark.parametrize("slot", [None, 64], ids=["slots", "no-room-in-slots"])
def test_every_worker_count_writes_the_same_bytes_and_manifest(slot, tmp_path, run,
                                                               small_batches, monkeypatch):
    if slot is not None:  # every chunk's rows through the pool's pipe, its lines by a file
        monkeypatch.setattr(batches, "INPUT_SLOT_BYTES", slot)
        monkeypatch.setattr(batches, "SLOT_BYTES", slot)
    source = alpaca(tmp_path / "big.parquet", 500, nulls=(7, 250))
    made = {}
    out = tmp_path / "out.jsonl"
    for workers in ("1", "2", "3"):
        result = run("nonce", source, out, "--to", "single_turn", "--seed", "5",
                     "--text-column", "instruction", "--skip-invalid", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        made[workers] = (out.read_bytes(),
                         without_run(json.loads(Path(f"{out}.manifest.json").read_text())))
        out.unlink()
    assert small_batches == [2, 3]  # 500 rows in chunks of 3 rows, in worker processes
    assert made["1"] == made["2"] == made["3"]
    data, manifest = made["1"]
    assert data.count(b"\n") == 498 and manifest["output"]["records"] == 498
    assert manifest["skipped"]["lines"] == [
        "7: column 'instruction' is empty (null), not text",
        "250: column 'instruction' is empty (null), not text"]
    assert manifest["aiperf"]["distinct_records"] == 498
    [read] = manifest["inputs"]
    assert read["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert read["dataset"]["sha256_of"] == "the file's bytes"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_row_in_a_later_chunk_is_one_line_naming_it(workers, tmp_path, run,
                                                          small_batches):
    source = alpaca(tmp_path / "bad.parquet", 300, nulls=(205,))
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--to", "single_turn", "--text-column", "instruction",
                 "--workers", workers)
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {source}:205: column 'instruction' is empty (null), "
                             "not text\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]
    # A record the output format cannot hold: the row is named the same way.
    result = run("nonce", source, out, "--to", "openai", "--text-column", "instruction",
                 "--workers", workers)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:1: cannot write as openai: openai has "
                                    "no place for field 'input'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_a_saved_dataset_is_hashed_by_its_data_files(tmp_path, run, small_batches):
    import datasets

    rows = [{"prompt": f"p{i}", "k": i} for i in range(200)]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(folder, num_shards=2)
    out = tmp_path / "out.jsonl"
    result = run("nonce", folder, out, "--seed", "1", "--workers", "2")
    assert result.exit_code == 0, result.stderr
    [read] = json.loads(Path(f"{out}.manifest.json").read_text())["inputs"]
    files = sorted(folder.glob("*.arrow"))
    assert len(files) == 2 and read["dataset"]["data_files"] == [f.name for f in files]
    assert read["sha256"] == shards.combined_sha256(
        [hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    assert [row["k"] for row in read_jsonl(out)] == list(range(200))


def test_a_conversation_across_chunks_keeps_its_nonce_in_workers(tmp_path, run, small_batches):
    """promptkit's own columns (a parquet it wrote): a conversation's later rows, in later
    chunks, keep the nonce of its first; one with no user message of its own is no error
    when the conversation has its nonce (a worker that saw only its chunk said it was: the
    chunk is done again in order)."""
    from promptkit.formats.table import COLUMNS, arrow_schema

    def row(session, *messages):
        return {**dict.fromkeys(COLUMNS), "session_id": session,
                "messages": [{"role": role, "content": text} for role, text in messages]}

    rows = []
    for i in range(30):
        rows.append(row(f"s{i % 4}", ("user", f"turn {i}")) if i < 4 or i % 5
                    else row(f"s{i % 4}", ("assistant", f"reply {i}")))
    source = tmp_path / "own.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), source)
    made = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.jsonl"
        result = run("nonce", source, out, "--at", "user", "--to", "mooncake_trace",
                     "--seed", "3", "--workers", workers, "--keep-replies")
        assert result.exit_code == 0, result.stderr
        made.append(out.read_bytes())
    assert small_batches == [2]
    assert made[0] == made[1]
    written = read_jsonl(tmp_path / "w1.jsonl")
    # Only each conversation's first row has a nonce (the rest continue it).
    firsts = [w["messages"][0]["content"] for w in written[:4]]
    assert all(len(text.split("\n", 1)[0]) == 36 for text in firsts)
    assert [w["messages"][0]["content"] for w in written[4:]] == [
        r["messages"][0]["content"] for r in rows[4:]]


def test_parquet_shards_in_workers_are_one_table_and_name_their_own_rows(tmp_path, run,
                                                                         small_batches):
    texts = [None if i in (20, 31) else f"prompt {i} " + "word " * (i % 9) for i in range(40)]
    pq.write_table(pa.table({"text": texts, "n": list(range(40))}), tmp_path / "all.parquet")
    (tmp_path / "pq").mkdir()
    cuts = [(0, 4), (4, 4), (4, 19), (19, 40)]  # one shard without rows
    for k, (a, b) in enumerate(cuts):
        pq.write_table(pa.table({"text": pa.array(texts[a:b], pa.string()),
                                 "n": pa.array(range(a, b), pa.int64())}),
                       tmp_path / "pq" / f"p{k}.parquet")
    made = {}
    for name, path in (("one", tmp_path / "all.parquet"), ("many", tmp_path / "pq")):
        for workers in ("1", "2"):
            out = tmp_path / f"{name}{workers}.jsonl"
            result = run("nonce", path, out, "--seed", "2", "--skip-invalid", "--workers",
                         workers)
            assert result.exit_code == 0, result.stderr
            made[name, workers] = out.read_bytes()
    assert small_batches == [2, 2]
    assert len(set(made.values())) == 1
    listed = json.loads((tmp_path / "many2.jsonl.manifest.json").read_text())
    assert listed["skipped"]["lines"] == [
        f"{tmp_path}/pq/p3.parquet:2: column 'text' is empty (null), not text",
        f"{tmp_path}/pq/p3.parquet:13: column 'text' is empty (null), not text"]
    assert [s["path"] for s in listed["inputs"][0]["shards"]] == [
        f"{tmp_path}/pq/p{k}.parquet" for k in range(4)]
    assert listed["inputs"][0]["records"] == 38
    result = run("nonce", tmp_path / "pq", tmp_path / "bad.jsonl", "--workers", "2")
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {tmp_path}/pq/p3.parquet:2: column 'text' is empty "
                             "(null), not text\n")
    assert not (tmp_path / "bad.jsonl").exists()


def test_a_streamed_hub_dataset_is_read_in_batches_and_hashed_by_its_rows(tmp_path, run,
                                                                         monkeypatch):
    """The Hub is the one stand-in here (this machine cannot reach it): load_dataset of
    the repository streams a local parquet file through the real ``datasets``, as the
    Hub's parquet files stream, and its commit is a made-up one."""
    import datasets

    from promptkit.io import datasets as datasets_io

    source = alpaca(tmp_path / "hub.parquet", 300, nulls=(11,))
    real = datasets.load_dataset

    def from_the_hub(path, *args, **kwargs):
        if path != "someone/alpaca":
            return real(path, *args, **kwargs)
        assert kwargs["streaming"] is True
        return real("parquet", data_files=str(source), split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", from_the_hub)
    monkeypatch.setattr(datasets_io, "_commit_of", lambda repo, revision: "0123abc")
    monkeypatch.setattr(datasets_io, "BATCH_ROWS", 7)
    out, local = tmp_path / "out.jsonl", tmp_path / "local.jsonl"
    for path, written in (("hf:someone/alpaca", out), (source, local)):
        result = run("nonce", path, written, "--to", "single_turn", "--seed", "4",
                     "--text-column", "instruction", "--skip-invalid")
        assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == local.read_bytes()
    [read] = json.loads(Path(f"{out}.manifest.json").read_text())["inputs"]
    assert read["dataset"]["sha256_of"] == "the rows read, one orjson line each"
    assert read["dataset"]["revision"] == "0123abc"
    rows = pq.read_table(source).to_pylist()
    assert read["sha256"] == hashlib.sha256(b"".join(
        orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE) for row in rows)).hexdigest()
    assert read["records"] == 299


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_ends_a_dataset_run_in_workers_with_nothing_left(signum, tmp_path):
    """As for JSON lines (tests/cli/test_signals.py): a real run on parquet in two workers,
    signalled mid-run."""
    from test_signals import Run, ends_cleanly

    source = tmp_path / "big.parquet"
    line = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)
    pq.write_table(pa.table({"prompt": [f"{i}: {line}" for i in range(300_000)]}), source,
                   row_group_size=50_000)
    ends_cleanly(Run(tmp_path, source, 2), signum)
