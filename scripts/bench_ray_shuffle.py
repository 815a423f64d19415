#!/usr/bin/env python3
"""``--ray`` with the sort-based shuffle promptkit sets, against Ray's own default, in one run.

Usage::

    python scripts/bench_ray_shuffle.py [--records N] [--repeat R]

Starts a two-node Ray cluster on this machine (one CPU a node,
``tests/ray_cluster.py``), writes a single_turn file of N records (default
2,000) sharing long prefixes, and runs, alternately for R rounds (default 3),
``promptkit check FILE --json --ray ADDRESS`` and ``promptkit hash-trace FILE
OUT --ray ADDRESS`` twice: as promptkit runs them (Ray Data's groupbys on the
sort-based shuffle, ``promptkit.ray._configure``) and with Ray's default shuffle
left in place (the baseline: the same command, ``_configure`` made to restore
it). The reports and the parts must be the same either way. Prints a Markdown
table of the medians and each command's ratio of default to promptkit's.
Ratios, not seconds, are the figures to compare: both run alternately on the
same machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"

#: The command line, with Ray's default shuffle put back after promptkit's settings.
DEFAULT_SHUFFLE = """
import sys
import promptkit.ray as pr
from ray.data import DataContext

configure = pr._configure
default = DataContext().shuffle_strategy

def keep_default(ray):
    configure(ray)
    ray.data.DataContext.get_current().shuffle_strategy = default

pr._configure = keep_default
from promptkit.entry import main
sys.argv = ["promptkit", *sys.argv[1:]]
main()
"""


def corpus(path: Path, records: int) -> None:
    rng = random.Random(3)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "prompt",
             "cache", "block"]
    heads = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(5)]
    with path.open("w", encoding="utf-8") as f:
        for i in range(records):
            tail = " ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
            f.write(json.dumps({"text": f"{heads[i % 5]} {i} {tail}"}) + "\n")


def run(how: str, args: list[str]) -> tuple[float, bytes]:
    prefix = ([sys.executable, "-m", "promptkit"] if how == "promptkit"
              else [sys.executable, "-c", DEFAULT_SHUFFLE])
    start = time.monotonic()
    out = subprocess.run([*prefix, *args], capture_output=True, check=True)
    return time.monotonic() - start, out.stdout


def parts_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.name.startswith("part-")):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from ray_cluster import local_cluster

    work = Path(tempfile.mkdtemp(prefix="bench-ray-shuffle-"))
    try:
        source = work / "corpus.jsonl"
        corpus(source, args.records)
        times: dict[tuple[str, str], list[float]] = {}
        seen: dict[str, set[str]] = {}
        with local_cluster((1, 1)) as cluster:
            for _ in range(args.repeat):
                for how in ("promptkit", "default"):
                    took, out = run(how, ["check", str(source), "--json", "--tokenizer",
                                          "cl100k_base", "--ray", cluster.address])
                    report = {k: v for k, v in json.loads(out).items() if k != "ray"}
                    seen.setdefault("check", set()).add(json.dumps(report, sort_keys=True))
                    times.setdefault(("check --ray", how), []).append(took)
                    folder = work / f"parts-{how}"
                    shutil.rmtree(folder, ignore_errors=True)
                    took, _ = run(how, ["hash-trace", str(source), str(folder), "--tokenizer",
                                        "cl100k_base", "--ray", cluster.address])
                    seen.setdefault("hash-trace", set()).add(parts_digest(folder))
                    times.setdefault(("hash-trace --ray", how), []).append(took)
        same = all(len(v) == 1 for v in seen.values())
        print(f"{args.records:,} records ({source.stat().st_size / 1e6:.1f} MB), two nodes "
              f"of 1 CPU, {args.repeat} rounds; same reports and parts both ways: {same}\n")
        print("| command | sort-based shuffle (promptkit) | Ray's default shuffle | ratio |")
        print("|---|---:|---:|---:|")
        for command in ("check --ray", "hash-trace --ray"):
            ours = statistics.median(times[(command, "promptkit")])
            theirs = statistics.median(times[(command, "default")])
            print(f"| `{command}` | {ours:.1f} s | {theirs:.1f} s | {theirs / ours:.1f}x |")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
