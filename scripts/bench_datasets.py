#!/usr/bin/env python3
"""Memory and speed of reading datasets as users bring them: flat as the file grows?

Usage::

    python scripts/bench_datasets.py [--rows N] [--factor F] [--rounds R]
                                     [--skip-memory] [--skip-split]
                                     [--parquet-rows P] [--skip-parquet]

Writes the same ShareGPT-shaped records (an ``id`` and 2-6 turns of 30-200 words,
as in ShareGPT_V3_unfiltered_cleaned_split.json), N and F*N of them (default
10,000 and 10x), as

- JSON lines (the baseline),
- a JSON array, indented as ShareGPT and LLaMA-Factory ship theirs,
- gzip-compressed JSON lines,
- a parquet file (several row groups),

then runs ``promptkit nonce IN OUT.jsonl --seed 1 --workers 1`` on each in a fresh
process and reports its peak RSS (``ru_maxrss`` of the whole process) and rows/s.
It also runs the JSON array through ``datasets``, the way promptkit read JSON
arrays before (``--split train``, an option that chooses rows, sends a JSON array
there), for comparison.

The figures: for each kind, the peak at F*N over the peak at N (about 1.0 = flat,
memory does not grow with the file; F = everything held); and the JSON array's
peak and speed over the JSON lines' at F*N, in the same run.

Then, unless ``--skip-split``, how a compressed file is best run with two workers:
as it is (one process: a compressed file cannot be split at line ends), or
decompressed to a temporary file first and split (the time to decompress
included); the plain file with two workers, and with one, are the bounds.

Then, unless ``--skip-parquet``, parquet at Arrow speed: P (default 1,000,000)
alpaca-shaped rows (``instruction``, ``input`` -- empty in 60% of rows -- and
``output``, made by a seeded generator: about 100 MB of parquet for 1,000,000 rows,
row groups of 100,000), timed against the loop a user would write with pyarrow and
orjson (:data:`LOOP`), alternating, R rounds, each in a fresh process:

- the loop, and the loop with a uuid4 nonce before each text (what the nonce adds);
- ``promptkit nonce big.parquet out.jsonl --to single_turn --seed 1 --text-column
  instruction`` with the default workers, with ``--workers 1``, and on the first
  P/10 rows (is memory flat?).

It reports medians of wall time, CPU time (user + system, the workers included) and
peak RSS (``ru_maxrss``: the largest process). promptkit's outputs are checked to be
the same bytes in every round and for every ``--workers``, to hold P lines, and each
line's text to be a nonce, a newline and the row's instruction.

Every output of the same records is checked to be the same bytes. Always exits 0:
it is a report.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

WORDS = (
    "the", "model", "server", "cache", "token", "prefix", "request", "latency", "batch",
    "queue", "memory", "throughput", "decode", "prefill", "kernel", "tensor", "block",
    "café", "東京", "naïve",
)


def records(rows: int) -> list[dict]:
    rng = random.Random(rows)
    out = []
    for i in range(rows):
        turns = [{"from": "human" if t % 2 == 0 else "gpt",
                  "value": " ".join(rng.choices(WORDS, k=rng.randint(30, 200)))}
                 for t in range(rng.randint(2, 6))]
        out.append({"id": f"{rng.getrandbits(40):010x}_{i % 7}", "conversations": turns})
    return out


def make(folder: str, rows: int) -> dict[str, str]:
    """The files of ``rows`` records: kind -> path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = records(rows)
    paths = {kind: os.path.join(folder, f"d{rows}.{ext}") for kind, ext in (
        ("jsonl", "jsonl"), ("json-array", "json"), ("jsonl.gz", "jsonl.gz"),
        ("parquet", "parquet"))}
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        for row in data:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(paths["json-array"], "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
    with open(paths["jsonl"], "rb") as f, gzip.open(paths["jsonl.gz"], "wb") as out:
        shutil.copyfileobj(f, out)
    table = pa.Table.from_pylist(data)
    pq.write_table(table, paths["parquet"], row_group_size=2000)
    return paths


def run(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one command in a fresh process (see :func:`measure`)."""
    wall, _, peak = measure(argv)
    return peak, wall


def nonce(path: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "promptkit", "nonce", path, out, "--seed", "1", *extra]


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def memory(folder: str, sizes: list[int]) -> None:
    kinds = ["jsonl", "json-array", "jsonl.gz", "parquet", "json-array via datasets"]
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    for rows in sizes:
        paths = make(folder, rows)
        outputs = {}
        for kind in kinds:
            path = paths[kind.split(" ")[0]]
            out = os.path.join(folder, f"out-{rows}-{kind.replace(' ', '-')}.jsonl")
            extra = ["--workers", "1"]
            if kind.endswith("via datasets"):
                extra = ["--split", "train"]  # a dataset option: read through datasets
            peak, seconds = run(nonce(path, out, *extra))
            results[kind, rows] = (os.path.getsize(path) / 2**20, peak, rows / seconds)
            outputs[kind] = out
        # The same records give the same bytes, whatever they came in (the dataset paths
        # write mooncake_trace, the line paths the input's sharegpt).
        assert len({digest(outputs[k]) for k in ("jsonl", "json-array", "jsonl.gz")}) == 1
        assert digest(outputs["parquet"]) == digest(outputs["json-array via datasets"])
        for path in paths.values():
            os.unlink(path)
    print("| input | rows | MiB on disk | peak RSS MiB | rows/s |")
    print("|---|---:|---:|---:|---:|")
    for kind in kinds:
        for rows in sizes:
            size, peak, rate = results[kind, rows]
            print(f"| {kind} | {rows:,} | {size:.1f} | {peak:.0f} | {rate:,.0f} |")
    small, large = sizes
    print(f"\nPeak RSS at {large // small}x the rows over the peak at 1x "
          "(1.0 = flat; the factor = everything held):")
    for kind in kinds:
        print(f"- {kind}: {results[kind, large][1] / results[kind, small][1]:.2f}")
    array, lines = results["json-array", large], results["jsonl", large]
    print(f"\nAt {large:,} rows, the JSON array over the same records as JSON lines: "
          f"peak RSS {array[1] / lines[1]:.2f}x, speed {array[2] / lines[2]:.2f}x; "
          f"gzip-compressed JSON lines: peak {results['jsonl.gz', large][1] / lines[1]:.2f}x, "
          f"speed {results['jsonl.gz', large][2] / lines[2]:.2f}x")


def split(folder: str, rows: int, rounds: int) -> None:
    """Two workers on a compressed file: as it is, or decompressed first and split."""
    paths = make(folder, rows)
    plain, packed = paths["jsonl"], paths["jsonl.gz"]
    unpacked = os.path.join(folder, "unpacked.jsonl")
    unpack = [sys.executable, "-c", "import gzip, shutil, sys; "
              "shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], 'wb'), 1 << 20)",
              packed, unpacked]
    times: dict[str, list[float]] = {"plain": [], "plain, --workers 1": [], "as it is": [],
                                     "decompress, split": []}
    outs = {}
    for _ in range(rounds):
        for kind in times:
            out = os.path.join(folder, f"split-{kind.replace(' ', '').replace(',', '-')}.jsonl")
            started = time.perf_counter()
            if kind.startswith("plain"):
                workers = "1" if kind.endswith("1") else "2"
                subprocess.run(nonce(plain, out, "--workers", workers), check=True,
                               capture_output=True)
            elif kind == "as it is":
                subprocess.run(nonce(packed, out, "--workers", "2"), check=True,
                               capture_output=True)
            else:
                subprocess.run(unpack, check=True)
                subprocess.run(nonce(unpacked, out, "--workers", "2"), check=True,
                               capture_output=True)
                os.unlink(unpacked)
            times[kind].append(time.perf_counter() - started)
            outs[kind] = digest(out)
    assert len(set(outs.values())) == 1
    size = os.path.getsize(plain) / 2**20
    print(f"\n{rows:,} records ({size:.0f} MiB of JSON lines, "
          f"{os.path.getsize(packed) / 2**20:.0f} MiB gzipped), --workers 2 unless said, "
          f"median of {rounds} (wall s):\n")
    print("| run | wall s | over the plain file |")
    print("|---|---:|---:|")
    base = sorted(times["plain"])[rounds // 2]
    for kind, values in times.items():
        median = sorted(values)[rounds // 2]
        print(f"| {kind} | {median:.2f} | {median / base:.2f}x |")


#: The baseline: what a user writes to turn a parquet file into ``{"text": ...}`` lines.
LOOP = """\
import sys, orjson, pyarrow.parquet as pq
with open(sys.argv[2], "wb") as out:
    for batch in pq.ParquetFile(sys.argv[1]).iter_batches():
        for row in batch.to_pylist():
            out.write(orjson.dumps({"text": row["instruction"]}, option=orjson.OPT_APPEND_NEWLINE))
"""
#: The same loop with a nonce before each text (what the nonce alone adds).
LOOP_NONCE = """\
import sys, uuid, orjson, pyarrow.parquet as pq
with open(sys.argv[2], "wb") as out:
    for batch in pq.ParquetFile(sys.argv[1]).iter_batches():
        for row in batch.to_pylist():
            text = f"{uuid.uuid4()}\\n{row['instruction']}"
            out.write(orjson.dumps({"text": text}, option=orjson.OPT_APPEND_NEWLINE))
"""

ALPACA_WORDS = [
    "write", "explain", "list", "give", "describe", "summarize", "translate", "classify",
    "rewrite", "generate", "the", "a", "of", "to", "and", "in", "for", "with", "on", "is",
    "are", "this", "that", "how", "what", "why", "which", "model", "data", "user", "story",
    "poem", "code", "function", "table", "café", "naïve", "東京",
]


def alpaca(path: str, rows: int, seed: int = 11) -> None:
    """``rows`` alpaca-shaped rows (the same first rows for any ``rows``), row groups of
    100,000: ``instruction`` (3-14 words and a question mark), ``input`` (2-12 words in
    40% of rows, else empty), ``output`` (5-22 words)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    vocabulary = ALPACA_WORDS + ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz",
                                                     k=rng.randint(3, 9)))
                                 for _ in range(1000)]

    def words(low: int, high: int) -> str:
        return " ".join(rng.choices(vocabulary, k=rng.randint(low, high)))

    group = 100_000
    writer = None
    for start in range(0, rows, group):
        count = min(group, rows - start)
        table = pa.table({
            "instruction": [words(3, 14) + "?" for _ in range(count)],
            "input": [words(2, 12) if rng.random() < 0.4 else "" for _ in range(count)],
            "output": [words(5, 22) for _ in range(count)],
        })
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def measure(argv: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s of the process and its children, peak RSS MiB of the largest) of
    one command in a fresh process."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(u.ru_utime + u.ru_stime, u.ru_maxrss); "
            "sys.exit(r.returncode)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr}")
    cpu, peak = done.stdout.split()[-2:]
    return wall, float(cpu), int(peak) / 1024


def check_texts(path: str, table_path: str) -> int:
    """The lines of a promptkit output, each checked to be a nonce, a newline and the
    row's instruction, in row order."""
    import orjson
    import pyarrow.parquet as pq

    lines = 0
    with open(path, "rb") as f:
        for batch in pq.ParquetFile(table_path).iter_batches(columns=["instruction"]):
            for instruction in batch.column(0).to_pylist():
                text = orjson.loads(f.readline())["text"]
                nonce, _, rest = text.partition("\n")
                assert len(nonce) == 36 and rest == instruction, (lines, text)
                lines += 1
        assert f.readline() == b""
    return lines


def parquet(folder: str, rows: int, rounds: int) -> None:
    """Parquet to single_turn: promptkit against the pyarrow + orjson loop."""
    big, small = os.path.join(folder, "big.parquet"), os.path.join(folder, "small.parquet")
    alpaca(big, rows)
    alpaca(small, rows // 10)
    loop, loop_nonce = os.path.join(folder, "loop.py"), os.path.join(folder, "loop_nonce.py")
    for path, text in ((loop, LOOP), (loop_nonce, LOOP_NONCE)):
        with open(path, "w") as f:
            f.write(text)
    out = os.path.join(folder, "out.jsonl")
    options = ["--to", "single_turn", "--seed", "1", "--text-column", "instruction"]
    runs = {
        "loop (baseline)": [sys.executable, loop, big, out],
        "loop with a uuid4 nonce": [sys.executable, loop_nonce, big, out],
        "promptkit (default workers)": [sys.executable, "-m", "promptkit", "nonce", big, out,
                                        *options],
        "promptkit --workers 1": [sys.executable, "-m", "promptkit", "nonce", big, out,
                                  *options, "--workers", "1"],
        f"promptkit (default workers), {rows // 10:,} rows": [
            sys.executable, "-m", "promptkit", "nonce", small, out, *options],
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    made: dict[str, set[str]] = {name: set() for name in runs if name.startswith("promptkit")}
    for _ in range(rounds):
        for name, argv in runs.items():
            results[name].append(measure(argv))
            if name in made:
                made[name].add(digest(out))
            os.unlink(out)
            if os.path.exists(out + ".manifest.json"):
                os.unlink(out + ".manifest.json")
    whole = [name for name in made if "rows" not in name]
    assert all(len(made[name]) == 1 for name in made), made
    assert len({digest for name in whole for digest in made[name]}) == 1
    subprocess.run(runs["promptkit --workers 1"], check=True, capture_output=True)
    assert check_texts(out, big) == rows

    def median(name: str, i: int) -> float:
        return sorted(r[i] for r in results[name])[rounds // 2]

    base = median("loop (baseline)", 0)
    size = os.path.getsize(big) / 2**20
    print(f"\n{rows:,} alpaca-shaped rows ({size:.0f} MiB of parquet), "
          f"medians of {rounds} rounds:\n")
    print("| run | wall s | over the loop | CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name in runs:
        wall = median(name, 0)
        print(f"| {name} | {wall:.2f} | {wall / base:.2f}x | {median(name, 1):.2f} | "
              f"{median(name, 2):.0f} |")
    print("\nEvery round (wall s / CPU s / peak MiB):\n")
    print("| round | " + " | ".join(runs) + " |")
    print("|---:|" + "---:|" * len(runs))
    for i in range(rounds):
        print(f"| {i + 1} | " + " | ".join(
            f"{r[i][0]:.2f} / {r[i][1]:.2f} / {r[i][2]:.0f}" for r in results.values()) + " |")
    small_name = f"promptkit (default workers), {rows // 10:,} rows"
    print(f"\nPeak RSS at {rows:,} rows over {rows // 10:,} (default workers): "
          f"{median('promptkit (default workers)', 2) / median(small_name, 2):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the split timing")
    parser.add_argument("--skip-split", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--parquet-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-parquet", action="store_true")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_memory:
            memory(folder, [args.rows, args.rows * args.factor])
        if not args.skip_split:
            split(folder, args.rows * args.factor, args.rounds)
        if not args.skip_parquet:
            parquet(folder, args.parquet_rows, args.rounds)


if __name__ == "__main__":
    main()
