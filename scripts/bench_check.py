#!/usr/bin/env python3
"""``promptkit check``'s time and memory at two sizes, in one run.

Usage::

    python scripts/bench_check.py [--sizes 50000,200000] [--block-size 16]

Generates deterministic single_turn files (one a size) of records of 50 to 300
random common English words each, after the record's number (so every block is
distinct: about 11 blocks a record under cl100k_base at block 16), then measures:

- on the larger file, ``promptkit check FILE --tokenizer cl100k_base --json`` with
  its default ``--workers`` and with ``--workers 1``: wall time, peak RSS, and
  whether the two reports are the same;
- the floor: tiktoken's own ``encode_ordinary_batch`` of the same texts on one
  thread (no reading, no JSON, no cache simulation);
- on the smaller file, ``check``'s peak RSS; from the two, the memory ``check``
  adds a distinct block (RSS added / blocks added).

Peak RSS is the process's own (``wait4``'s ``ru_maxrss``). Always exits 0: it
is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their", "has",
    "would", "when", "if", "so", "no", "will", "more", "can", "out", "up", "what", "about",
    "into", "than", "them", "time", "only", "could", "new", "some", "these", "two", "may",
    "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me",
    "even", "most", "made", "after", "also", "did", "many", "before", "must", "through",
    "back", "years", "where", "much", "your", "way", "well", "down", "should", "because",
    "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make",
    "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both",
    "life", "being", "under", "never", "day", "same", "another", "know", "while", "last",
    "might", "us", "great", "old", "year", "off", "come", "since", "against", "go", "came",
    "right", "used", "take", "three",
)


def generate(path: str, records: int) -> None:
    rng = random.Random(7)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(records):
            text = f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(50, 300)))
            f.write('{"text": "' + text + '"}\n')


def check(path: str, block_size: int, *extra: str) -> tuple[float, int, dict]:
    """``check``'s wall seconds, peak RSS (bytes) and report."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "promptkit", "check", path, "--tokenizer", "cl100k_base",
         "--block-size", str(block_size), "--json", *extra], stdout=subprocess.PIPE)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"check failed ({process.returncode})")
    return time.perf_counter() - started, usage.ru_maxrss * 1024, json.loads(out)


def floor(path: str) -> tuple[float, list[int]]:
    """tiktoken's batch encode of the file's texts on one thread: seconds, lengths."""
    from promptkit.core.tokenizers import cached_tokenizer

    encoding = cached_tokenizer("cl100k_base").encoding  # (tiktoken's, loaded offline)
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    started = time.perf_counter()
    lengths = [len(t) for t in encoding.encode_ordinary_batch(texts, num_threads=1)]
    return time.perf_counter() - started, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,200000")
    parser.add_argument("--block-size", type=int, default=16)
    args = parser.parse_args()
    small, large = sorted(int(n) for n in args.sizes.split(","))
    mb = 2**20
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for n in (small, large):
            paths[n] = os.path.join(folder, f"{n}.jsonl")
            generate(paths[n], n)
        # The checks first: a process started from this one starts its peak RSS at this
        # one's, which the floor's texts and tokens would raise.
        t_default, rss_large, report = check(paths[large], args.block_size)
        t_one, _, report_one = check(paths[large], args.block_size, "--workers", "1")
        _, rss_small, _ = check(paths[small], args.block_size)
        blocks, floors = {}, {}
        for n in (small, large):
            floors[n], lengths = floor(paths[n])
            blocks[n] = sum(length // args.block_size for length in lengths)
        seconds = floors[large]
        print(f"{large:,} records, {report['prompt_tokens']:,} prompt tokens, "
              f"{blocks[large]:,} distinct blocks of {args.block_size}\n")
        print("| run | seconds | vs the floor |\n|---|---:|---:|")
        print(f"| tiktoken encode_ordinary_batch, 1 thread (the floor) | {seconds:.1f} | 1.00x |")
        print(f"| check (default --workers) | {t_default:.1f} | {t_default / seconds:.2f}x |")
        print(f"| check --workers 1 | {t_one:.1f} | {t_one / seconds:.2f}x |")
        print(f"\nthe same report for both: {report == report_one}\n")
        print("| records | distinct blocks | check peak RSS |\n|---:|---:|---:|")
        print(f"| {small:,} | {blocks[small]:,} | {rss_small / mb:.0f} MB |")
        print(f"| {large:,} | {blocks[large]:,} | {rss_large / mb:.0f} MB |")
        per_block = (rss_large - rss_small) / (blocks[large] - blocks[small])
        print(f"\n{per_block:.0f} bytes of peak RSS added a distinct block")


if __name__ == "__main__":
    main()
