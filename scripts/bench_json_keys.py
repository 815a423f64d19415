#!/usr/bin/env python3
"""What finding a key written twice costs on the JSONL fast path, in one run.

Usage::

    python scripts/bench_json_keys.py [--lines N] [--repeat R] [--input FILE.jsonl]

For each kind of line (a single_turn text with no colon, one with colons, chat
messages, a text holding ``":``), times, alternately for R rounds, ``orjson.loads``
alone and ``orjson.loads`` followed by the test ``parse_lines`` makes
(``line.count(b":") != len(obj)`` and then :func:`promptkit.io.jsoncodec.duplicate_key`),
over the same N lines, and prints the ratio of the medians (1.00x: free), and what
the test adds a line. ``--input`` adds the first N lines of a file of your own
(e.g. the one ``scripts/bench_nonce.py`` generates). Parsing
the whole record (``Format.parse``) and writing it come on top in a real run, so
the share of a whole ``nonce`` run is smaller still: ``scripts/bench_nonce.py``
measures that. Exits 0: a report, not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable

import orjson

from promptkit.io.jsoncodec import KEY_ENDS, duplicate_key

WORDS = """the model prompt token cache server request latency benchmark answer question
explain summarize write code function python memory queue thread""".split()  # noqa: SIM905


def text(rng: random.Random, colons: bool) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(20, 300))]
    if colons:
        for i in range(0, len(words), 15):
            words[i] += ":"
    return " ".join(words)


def lines(kind: str, n: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        if kind == "text, no colon":
            row: dict = {"text": text(rng, False), "session_id": f"s{i}", "output_length": 64}
        elif kind == "text with colons":
            row = {"text": text(rng, True), "session_id": f"s:{i}", "output_length": 64}
        elif kind == "chat messages":
            row = {"messages": [{"role": "system", "content": text(rng, True)},
                                {"role": "user", "content": text(rng, False)}],
                   "extra": {"cache_salt": f"salt-{i}"}}
        else:  # a text holding JSON: every line needs the standard library's second look
            row = {"text": "Call it: " + json.dumps({"name": "f", "arguments": {"x": i}}),
                   "output_length": 64}
        out.append(json.dumps(row, ensure_ascii=False).encode())
    return out


def plain(data: list[bytes]) -> None:
    loads = orjson.loads
    for line in data:
        loads(line)


def checked(data: list[bytes]) -> None:
    loads = orjson.loads
    for line in data:
        obj = loads(line)
        ends = len(KEY_ENDS(line))
        if ends != len(obj) and duplicate_key(line, obj, ends) is not None:
            raise AssertionError("no duplicates here")


def timed(func: Callable[[list[bytes]], None], data: list[bytes]) -> float:
    started = time.perf_counter()
    func(data)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--input", metavar="FILE.jsonl", help="also time this file's lines")
    args = parser.parse_args()
    print("| line kind | orjson.loads (s) | + duplicate-key test (s) | ratio | added a line |")
    print("|---|---:|---:|---:|---:|")
    kinds = ["text, no colon", "text with colons", "chat messages", "text holding JSON"]
    for kind in kinds + ([args.input] if args.input else []):
        if kind == args.input:
            with open(kind, "rb") as f:
                data = [line for line in itertools.islice(f, args.lines) if line.strip()]
        else:
            data = lines(kind, args.lines)
        a, b = [], []
        for _ in range(args.repeat):
            a.append(timed(plain, data))
            b.append(timed(checked, data))
        base, test = statistics.median(a), statistics.median(b)
        added = (test - base) / len(data) * 1e6
        print(f"| {kind} | {base:.3f} | {test:.3f} | {test / base:.2f}x | {added:.2f} us |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
