#!/usr/bin/env python3
"""Memory of reading a Hugging Face dataset: flat as the dataset grows?

Usage::

    python scripts/bench_datasets.py [--rows N] [--factor F]

Writes two parquet datasets of N and F*N rows (default 100,000 and 4x; ~1 KB of
text a row, several row groups), then runs ``promptkit nonce DATA OUT.jsonl``
on each in a fresh process and reports its peak RSS (``ru_maxrss``) and rows/s.
The ratio of the two peaks is the figure: about 1.0 means memory does not grow
with the dataset (rows stream through); F would mean it is all held in memory.
Always exits 0: it is a report.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

WORDS = (
    "the", "model", "server", "cache", "token", "prefix", "request", "latency", "batch",
    "queue", "memory", "throughput", "decode", "prefill", "kernel", "tensor", "block",
)


def make(path: str, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(rows)
    schema = pa.schema([("prompt", pa.string()), ("id", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            texts = [" ".join(rng.choices(WORDS, k=150)) for _ in range(n)]
            writer.write_table(pa.table({"prompt": texts, "id": list(range(start, start + n))},
                                        schema=schema))


def run(data: str, out: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one promptkit run in a fresh process."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(r.returncode)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "promptkit",
                           "nonce", data, out, "--seed", "1"],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    return int(done.stdout.split()[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--factor", type=int, default=4)
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory() as folder:
        results = []
        for rows in (args.rows, args.rows * args.factor):
            data = os.path.join(folder, f"d{rows}.parquet")
            make(data, rows)
            size = os.path.getsize(data) / 2**20
            peak, seconds = run(data, os.path.join(folder, f"out{rows}.jsonl"))
            results.append((rows, size, peak, seconds))
            os.unlink(data)
        print("| rows | parquet MiB | peak RSS MiB | rows/s |")
        print("|---:|---:|---:|---:|")
        for rows, size, peak, seconds in results:
            print(f"| {rows:,} | {size:.0f} | {peak:.0f} | {rows / seconds:,.0f} |")
        ratio = results[1][2] / results[0][2]
        print(f"\nPeak RSS ratio ({args.factor}x the rows): {ratio:.2f} "
              f"(1.0 = flat; {args.factor} = everything in memory)")


if __name__ == "__main__":
    main()
