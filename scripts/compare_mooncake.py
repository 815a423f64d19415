#!/usr/bin/env python3
"""``promptkit check`` on the Mooncake traces, beside the FAST'25 paper's Table 2.

Usage::

    python scripts/compare_mooncake.py [FOLDER]

FOLDER holds ``*_trace.jsonl`` or ``*_trace.jsonl.gz`` (default: the traces
this repository ships in ``data/mooncake``; gzipped ones are unpacked to a
temporary folder first). For each trace it prints the request count, average input and
output tokens, ``check``'s hit rate (vLLM rules, 512-token blocks, unbounded
cache), two other ways of counting on the same file (hit blocks over all
blocks; hit tokens without the never-the-last-token rule), and the paper's
figure. Then the time of ``promptkit check`` against ``promptkit stats`` on the
same file (reading and parsing it: the baseline), each the median of 3 runs.
"""

from __future__ import annotations

import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Table 2 of Qin et al., "Mooncake: Trading More Storage for Less Computation", FAST'25.
PAPER = {"conversation": "40%", "toolagent": "59%", "synthetic": "66%"}


def other_counts(rows: list[dict]) -> tuple[float, float]:
    """(hit blocks / all blocks, hit tokens / prompt tokens without the last-token rule)."""
    seen: set[int] = set()
    hit_blocks = blocks = hit_tokens = tokens = 0
    for row in rows:
        leading = 0
        for block in row["hash_ids"]:
            if block not in seen:
                break
            leading += 1
        seen.update(row["hash_ids"])
        hit_blocks += leading
        blocks += len(row["hash_ids"])
        hit_tokens += min(leading * 512, row["input_length"])
        tokens += row["input_length"]
    return hit_blocks / blocks, hit_tokens / tokens


def timed(args: list[str]) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "promptkit", *args], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    default = Path(__file__).resolve().parents[1] / "data" / "mooncake"
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    unpacked = Path(tempfile.mkdtemp(prefix="mooncake-"))
    traces = sorted(folder.glob("*_trace.jsonl"))
    for packed in sorted(folder.glob("*_trace.jsonl.gz")):
        path = unpacked / packed.name.removesuffix(".gz")
        with gzip.open(packed, "rb") as f, path.open("wb") as out:
            shutil.copyfileobj(f, out)
        traces.append(path)
    if not traces:
        sys.exit(f"no *_trace.jsonl or *_trace.jsonl.gz in {folder}")
    print("| trace | requests | avg input | avg output | check | blocks | no last-token "
          "rule | paper |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    timing = []
    for path in traces:
        name = path.name.removesuffix("_trace.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        done = subprocess.run([sys.executable, "-m", "promptkit", "check", str(path), "--json"],
                              check=True, capture_output=True, text=True)
        report = json.loads(done.stdout)
        blocks, uncapped = other_counts(rows)
        avg_in = sum(r["input_length"] for r in rows) / len(rows)
        avg_out = sum(r["output_length"] for r in rows) / len(rows)
        print(f"| {name} | {len(rows):,} | {avg_in:,.0f} | {avg_out:,.0f} | "
              f"**{report['hit_rate']:.1%}** | {blocks:.1%} | {uncapped:.1%} | "
              f"{PAPER.get(name, '-')} |")
        timing.append((name, timed(["stats", str(path)]), timed(["check", str(path)])))
    print("\n| trace | `stats` s (baseline) | `check` s | check / stats |\n|---|---:|---:|---:|")
    for name, stats_s, check_s in timing:
        print(f"| {name} | {stats_s:.2f} | {check_s:.2f} | {check_s / stats_s:.2f} |")
    shutil.rmtree(unpacked)


if __name__ == "__main__":
    main()
