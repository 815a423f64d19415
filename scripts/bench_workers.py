#!/usr/bin/env python3
"""Speedup of ``--workers 2`` over ``--workers 1`` for stats, hash-trace and check; memory.

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
  (the two outputs are compared: they must be the same bytes),
- ``promptkit check FILE --tokenizer cl100k_base --workers 1`` and ``--workers 2``.

Each run's peak RSS is taken too (``ru_maxrss``: the largest of the run's processes,
main or worker). For memory, the ``--workers 2`` runs are repeated once on a file of
a third of the records: a peak that does not grow with the file is flat.
Reports the medians and the speedups of N=2 over N=1 (at most 2x on a 2-CPU
machine) for stats, hash-trace and check. Always exits 0.
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


def timed(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one promptkit run in a fresh process."""
    code = ("import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(r.returncode)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "promptkit",
                           *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - started, int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "records.jsonl")
        small = os.path.join(folder, "third.jsonl")
        generate(data, args.records, args.words)
        generate(small, args.records // 3, args.words)
        print(f"{args.records:,} records, {os.path.getsize(data) / 2**20:.0f} MiB, "
              f"{os.cpu_count()} CPUs", flush=True)
        tok = ["--tokenizer", "cl100k_base"]
        outs = {n: os.path.join(folder, f"trace{n}.jsonl") for n in ("1", "2", "small")}

        def commands(path: str, out: dict[str, str]) -> list[tuple[str, list[str]]]:
            return [
                ("stats --workers 1", ["stats", path, *tok, "--workers", "1"]),
                ("stats --workers 1 --threads 1", ["stats", path, *tok, "--workers", "1",
                                                   "--threads", "1"]),
                ("stats --workers 2", ["stats", path, *tok, "--workers", "2"]),
                ("hash-trace --workers 1", ["hash-trace", path, out["1"], *tok,
                                            "--workers", "1"]),
                ("hash-trace --workers 2", ["hash-trace", path, out["2"], *tok,
                                            "--workers", "2"]),
                ("check --workers 1", ["check", path, *tok, "--workers", "1"]),
                ("check --workers 2", ["check", path, *tok, "--workers", "2"]),
            ]

        runs: dict[str, list[float]] = {}
        peaks: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, command in commands(data, outs):
                for path in outs.values():  # start each hash-trace on a clean name
                    if path in command and os.path.exists(path):
                        os.unlink(path)
                seconds, peak = timed(command)
                runs.setdefault(name, []).append(seconds)
                peaks[name] = max(peaks.get(name, 0.0), peak)
        same = filecmp.cmp(outs["1"], outs["2"], shallow=False)
        small_peaks = {}
        for name, command in commands(small, {**outs, "2": outs["small"]}):
            if name.endswith("--workers 2"):
                small_peaks[name] = timed(command)[1]
        median = {name: statistics.median(times) for name, times in runs.items()}
        print("| command | seconds (median) | peak RSS MiB | peak RSS MiB, a third of the "
              "records |\n|---|---:|---:|---:|")
        for name, seconds in median.items():
            third = f"{small_peaks[name]:.0f}" if name in small_peaks else ""
            print(f"| `{name}` | {seconds:.1f} | {peaks[name]:.0f} | {third} |")
        speedup = {tool: median[f"{tool} --workers 1"] / median[f"{tool} --workers 2"]
                   for tool in ("stats", "hash-trace", "check")}
        strict = median["stats --workers 1 --threads 1"] / median["stats --workers 2"]
        print(f"\nstats: {speedup['stats']:.2f}x over --workers 1 ({strict:.2f}x over one "
              "thread)")
        print(f"hash-trace: {speedup['hash-trace']:.2f}x over --workers 1; outputs "
              f"identical: {same}")
        print(f"check: {speedup['check']:.2f}x over --workers 1 (its cache simulation runs "
              "in one process)")

if __name__ == "__main__":
    main()
