#!/usr/bin/env python3
"""What one long line costs against as many bytes of short lines, in one run.

Usage::

    python scripts/bench_long_line.py [--mb N] [--repeat R] [--memory GB] [--keep DIR]

Writes two JSONL files of N megabytes (default 400): one record whose text is all
of it, and records of about a kilobyte each. Then, alternately for R rounds
(default 3), times ``promptkit stats FILE`` and ``promptkit nonce FILE OUT
--workers 1 --seed 1`` on each (one process a command, under an address-space
limit of GB gigabytes, default 8: what ``prlimit --as`` sets) and prints the median
seconds, the ratio long / short (1.00x: a long line costs what short lines do) and
each run's peak resident memory. A line held in parts and joined once costs time
linear in its length; one joined again chunk by chunk costs time quadratic in it.
Exits 0: a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTKIT = [sys.executable, "-m", "promptkit"]
WORDS = "the quick brown fox jumps over the lazy dog "


def write_files(folder: Path, megabytes: int) -> dict[str, Path]:
    size = megabytes * 1_000_000
    long, short = folder / "long.jsonl", folder / "short.jsonl"
    with long.open("w") as f:
        f.write('{"text": "')
        piece = WORDS * (1_000_000 // len(WORDS))
        written = 0
        while written < size:
            f.write(piece)
            written += len(piece)
        f.write('"}\n')
    line = json.dumps({"text": WORDS * 22}) + "\n"
    with short.open("w") as f:
        f.write(line * (size // len(line)))
    return {"long": long, "short": short}


def timed(args: list[str], memory: int) -> tuple[float, float]:
    """Seconds and peak resident MB of ``promptkit ARGS`` (which must succeed)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    start = time.monotonic()
    proc = subprocess.Popen([*PROMPTKIT, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=limit)
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.monotonic() - start
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"promptkit {' '.join(args)} failed: {err.strip()[-500:]}")
    return took, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=400, help="size of each file, in MB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory", type=float, default=8, help="address-space limit, GB")
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="pk-long-line-"))
    folder.mkdir(parents=True, exist_ok=True)
    memory = int(args.memory * (1 << 30))
    try:
        paths = write_files(folder, args.mb)
        out = folder / "out.jsonl"
        commands = {"stats": lambda p: ["stats", str(p)],
                    "nonce": lambda p: ["nonce", str(p), str(out), "--workers", "1",
                                        "--seed", "1"]}
        seconds: dict[tuple[str, str], list[float]] = {}
        peaks: dict[tuple[str, str], float] = {}
        for _ in range(args.repeat):
            for command, make in commands.items():
                for kind, path in paths.items():
                    took, peak = timed(make(path), memory)
                    seconds.setdefault((command, kind), []).append(took)
                    peaks[(command, kind)] = max(peaks.get((command, kind), 0.0), peak)
        print(f"{args.mb} MB a file; medians of {args.repeat} rounds, alternating; address "
              f"space at most {args.memory:g} GB")
        print(f"{'command':8s} {'one line':>12s} {'short lines':>12s} {'ratio':>7s} "
              f"{'peak MB (one line / short)':>28s}")
        for command in commands:
            long = statistics.median(seconds[(command, "long")])
            short = statistics.median(seconds[(command, "short")])
            print(f"{command:8s} {long:10.1f} s {short:10.1f} s {long / short:6.2f}x "
                  f"{peaks[(command, 'long')]:17.0f} / {peaks[(command, 'short')]:.0f}")
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
