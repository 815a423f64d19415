#!/usr/bin/env python3
"""Speedup of ``--workers 2`` over ``--workers 1`` for ``stats`` and ``hash-trace``, in one run.

Usage::

    python scripts/bench_workers.py [--records N] [--words W] [--repeat R]

Generates N single_turn records (default 100,000) of W common English words
each (default 300, about 300 cl100k_base tokens; the generator of
``bench_check.py``), then alternates R rounds (default 2) of:

- ``promptkit stats FILE --tokenizer cl100k_base --workers 1`` (one process; its
  tokenizer already spreads each batch over one thread per CPU),
- the same with ``--threads 1`` (one process, one thread: strictly sequential),
- ``promptkit stats ... --workers 2``,
- ``promptkit hash-trace FILE OUT --tokenizer cl100k_base --workers 1`` and ``--workers 2``
  (the two outputs are compared: they must be the same bytes).

Reports the medians and the speedups; the issue's target is at least 1.6x for
N=2 over N=1 on a 2-CPU machine. Always exits 0: it is a report.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_check import generate  # noqa: E402


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "promptkit", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "records.jsonl")
        generate(data, args.records, args.words)
        print(f"{args.records:,} records, {os.path.getsize(data) / 2**20:.0f} MiB, "
              f"{os.cpu_count()} CPUs", flush=True)
        tok = ["--tokenizer", "cl100k_base"]
        runs: dict[str, list[float]] = {}
        outs = {n: os.path.join(folder, f"trace{n}.jsonl") for n in ("1", "2")}
        for _ in range(args.repeat):
            for name, command in (
                ("stats --workers 1", ["stats", data, *tok, "--workers", "1"]),
                ("stats --workers 1 --threads 1", ["stats", data, *tok, "--workers", "1",
                                                   "--threads", "1"]),
                ("stats --workers 2", ["stats", data, *tok, "--workers", "2"]),
                ("hash-trace --workers 1", ["hash-trace", data, outs["1"], *tok,
                                            "--workers", "1"]),
                ("hash-trace --workers 2", ["hash-trace", data, outs["2"], *tok,
                                            "--workers", "2"]),
            ):
                for path in outs.values():  # hash-trace refuses nothing, but start clean
                    if path in command and os.path.exists(path):
                        os.unlink(path)
                runs.setdefault(name, []).append(timed(command))
        same = filecmp.cmp(outs["1"], outs["2"], shallow=False)
        median = {name: statistics.median(times) for name, times in runs.items()}
        print("| command | seconds (median) |\n|---|---:|")
        for name, seconds in median.items():
            print(f"| `{name}` | {seconds:.1f} |")
        stats_speedup = median["stats --workers 1"] / median["stats --workers 2"]
        stats_strict = median["stats --workers 1 --threads 1"] / median["stats --workers 2"]
        trace_speedup = median["hash-trace --workers 1"] / median["hash-trace --workers 2"]
        print(f"\nstats: {stats_speedup:.2f}x over --workers 1 "
              f"({stats_strict:.2f}x over one thread)")
        print(f"hash-trace: {trace_speedup:.2f}x over --workers 1; outputs identical: {same}")
        for name, value in (("stats", stats_speedup), ("hash-trace", trace_speedup)):
            verdict = "TARGET MET" if value >= 1.6 else "TARGET MISSED"
            print(f"{verdict}: {name} {value:.2f}x (target >= 1.6)")


if __name__ == "__main__":
    main()
