#!/usr/bin/env python3
"""The cost of ``promptkit check`` beyond tokenization, as a ratio, in one run.

Usage::

    python scripts/bench_check.py [--records N] [--words W] [--repeat R]

Generates a deterministic single_turn file of N records (default 100,000) of W
random common English words each (default 1,000: about 1,000 cl100k_base
tokens), then alternates R rounds (default 2) of:

- tokenization: ``promptkit stats FILE --tokenizer cl100k_base`` (read, parse,
  tokenize every text on threads; the same tokenization check does);
- check: ``promptkit check FILE --tokenizer cl100k_base`` (the same, plus the
  cache simulation, first-difference positions and the replay).

Reports both medians and ``(check - tokenization) / tokenization``: at most 1.0 means the
simulation costs no more than the tokenization. Always exits 0: it is a report.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
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


def generate(path: str, records: int, words: int) -> None:
    rng = random.Random(7)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(records):
            text = f"{i} " + " ".join(rng.choices(WORDS, k=words))
            f.write('{"text": "' + text + '"}\n')


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "promptkit", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "records.jsonl")
        generate(data, args.records, args.words)
        print(f"{args.records:,} records, {os.path.getsize(data) / 2**20:.0f} MiB", flush=True)
        tokenize, check = [], []
        for _ in range(args.repeat):
            tokenize.append(timed(["stats", data, "--tokenizer", "cl100k_base"]))
            check.append(timed(["check", data, "--tokenizer", "cl100k_base"]))
        t, c = statistics.median(tokenize), statistics.median(check)
        print("| | seconds (median) |\n|---|---:|")
        print(f"| promptkit stats (tokenization) | {t:.1f} |")
        print(f"| promptkit check | {c:.1f} |")
        ratio = (c - t) / t
        print(f"\ncheck costs {ratio:.2f}x the tokenization beyond it")


if __name__ == "__main__":
    main()
