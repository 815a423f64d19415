#!/usr/bin/env python3
"""Benchmark ``promptkit nonce`` on one machine against ``--ray``, in one run.

Usage::

    python scripts/bench_ray.py [--records N] [--repeat R] [--workdir DIR]

What it does:

1. Generates the deterministic single_turn file of ``scripts/bench_nonce.py``
   (N records, default 1,000,000, about 1 KiB each) and its first N/4 records.
2. Starts a two-node Ray cluster on this machine (``ray start --head`` and
   ``ray start --address=...``, one CPU each: ``tests/ray_cluster.py``).
3. Runs, alternately for R rounds (default 3):
   - ``single``: ``promptkit nonce IN OUT --seed 7`` (default ``--workers``);
   - ``local``: the same with ``--ray local`` (a private local cluster that the
     command starts and stops, its start-up included);
   - ``2 nodes``: the same with ``--ray ADDRESS`` of the two-node cluster;
   - ``2 nodes N/4``: the N/4 file on the two nodes, for the driver's memory.
4. Checks that every ``--ray`` run's parts, concatenated, are byte-identical to
   the single-machine output (sha256), and prints a Markdown table: medians,
   each ``--ray`` mode's time as a ratio of the single-machine time, and the
   driver's peak RSS (the ``promptkit`` process's own ``ru_maxrss``; with
   ``--ray local`` the Ray processes the driver starts count too) at N/4 and N.
5. The shuffle cost: ``hash-trace``'s numbering of blocks by first appearance
   (``promptkit.ray.aggregate.number_blocks``: shuffles by block key and by record)
   on the two nodes, against :class:`promptkit.ops.hashtrace.HashIds` numbering the
   same blocks in one process, on synthetic rows (``--shuffle-records`` records of
   16 blocks, each block's key drawn so that leading blocks are often shared): the
   ids must be equal; the table gives blocks a second for both.

Ratios, not seconds, are the figures to compare: the modes run alternately on the
same machine. On one machine every mode shares the same cores; the point of the
two-node figure is the cost Ray adds (tasks, parts, the driver's bookkeeping), which
``docs/scale.md`` uses to project larger clusters. Always exits 0: a report.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 7


def load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_nonce = load(HERE / "bench_nonce.py", "bench_nonce")
log = bench_nonce.log


def digest_of(path: str) -> str:
    """sha256 of a file, or of a part folder's parts concatenated in order."""
    h = hashlib.sha256()
    files = ([path] if os.path.isfile(path) else
             sorted(str(p) for p in Path(path).glob("part-*.jsonl")))
    for name in files:
        with open(name, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    for name in (path, path + ".manifest.json"):
        if os.path.isfile(name):
            os.remove(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", help="kept if given (default: a temporary folder)")
    parser.add_argument("--shuffle-records", type=int, default=200_000,
                        help="records of the numbering (shuffle) measurement; 0: none")
    args = parser.parse_args()
    if args.records < 4 or args.repeat < 1:
        parser.error("--records must be at least 4 and --repeat at least 1")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-ray-")
    os.makedirs(workdir, exist_ok=True)
    try:
        return bench(workdir, args.records, args.repeat, args.shuffle_records,
                     shlex.join([sys.executable, *sys.argv]))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def synthetic_blocks(records: int, per_record: int = 16, seed: int = SEED) -> list[bytes]:
    """Each record's chained block digests (16 bytes each, concatenated): a record
    shares its first k blocks with an earlier one for a random k, like prompts that
    share a system prompt and differ after it."""
    import random

    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(records):
        shared = rng.randrange(per_record + 1) if out else 0
        lead = out[rng.randrange(len(out))][:16 * shared] if shared else b""
        fresh = b"".join(hashlib.blake2b(f"{i}:{k}".encode(), digest_size=16).digest()
                         for k in range(shared, per_record))
        out.append(lead + fresh)
    return out


def shuffle_bench(address: str, records: int) -> dict[str, Any]:
    """Number synthetic blocks on one process and on the cluster; times and agreement."""
    import pyarrow as pa
    import ray

    from promptkit.ops.hashtrace import DIGEST, HashIds
    from promptkit.ray.aggregate import number_blocks

    digests = synthetic_blocks(records)
    start = time.perf_counter()
    numbering = HashIds()
    local = [numbering.number(d) for d in digests]
    one = time.perf_counter() - start
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        blocks = [[d[i:i + DIGEST] for i in range(0, len(d), DIGEST)] for d in digests]
        table = pa.table({"index": pa.array(range(records), pa.int64()),
                          "blocks": pa.array(blocks, pa.list_(pa.binary(DIGEST)))})
        ds = ray.data.from_arrow(table).repartition(8).materialize()
        start = time.perf_counter()
        rows = number_blocks(ds).take_all()
        two = time.perf_counter() - start
    finally:
        ray.shutdown()
    ids = {row["index"]: list(row["hash_ids"]) for row in rows}
    same = all(ids[i] == local[i] for i in range(records))
    return {"blocks": sum(len(d) for d in digests) // DIGEST, "one": one, "two": two,
            "same": same, "distinct": len(numbering.ids)}


def bench(workdir: str, records: int, repeat: int, shuffle_records: int,
          command: str) -> int:
    quarter = records // 4
    src = os.path.join(workdir, f"single_turn_{records}.jsonl")
    src_q = os.path.join(workdir, f"single_turn_{quarter}.jsonl")
    launcher = bench_nonce.Launcher()
    log(f"generating {records} records in {workdir}")
    subprocess.run([sys.executable, str(HERE / "bench_nonce.py"), "--records", str(records),
                    "--generate-only", src, src_q], check=True)
    size = os.path.getsize(src)

    sys.path.insert(0, str(HERE.parent / "tests"))
    from ray_cluster import LocalCluster

    cluster = LocalCluster((1, 1)).start()
    log(f"two-node cluster at {cluster.address}")

    def nonce(inp: str, out: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "promptkit", "nonce", inp, out, "--seed", str(SEED),
                *extra]

    single_out = os.path.join(workdir, "single.jsonl")
    modes = {
        "single": (src, single_out, ()),
        "local": (src, os.path.join(workdir, "local-out"), ("--ray", "local")),
        "2 nodes": (src, os.path.join(workdir, "nodes-out"), ("--ray", cluster.address)),
        "2 nodes N/4": (src_q, os.path.join(workdir, "nodes-q-out"),
                        ("--ray", cluster.address)),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    problems: list[str] = []
    reference = ""
    try:
        for r in range(1, repeat + 1):
            for name, (inp, out, extra) in modes.items():
                log_path = os.path.join(workdir, "run.log")
                result = launcher.run(nonce(inp, out, *extra), log_path)
                runs[name].append(result)
                log(f"round {r}/{repeat} {name:12}: {result['wall']:7.2f} s wall, "
                    f"{result['cpu']:7.2f} s cpu (driver), peak {result['peak_mib']:.0f} MiB")
                if result["rc"] != 0:
                    problems.append(f"{name} exited {result['rc']}: "
                                    f"{Path(log_path).read_text(errors='replace')[-1500:]}")
                elif inp == src:
                    digest = digest_of(out)
                    if name == "single":
                        reference = reference or digest
                    if digest != reference:
                        problems.append(f"{name} round {r}: sha256 {digest} differs from the "
                                        f"single-machine output's {reference}")
                if name != "single":
                    remove(out)
            remove(single_out)
        shuffle = shuffle_bench(cluster.address, shuffle_records) if shuffle_records else None
    finally:
        cluster.stop()
        launcher.close()

    def median(name: str) -> float:
        return statistics.median(x["wall"] for x in runs[name])

    def peak(name: str) -> float:
        return max(x["peak_mib"] for x in runs[name])

    base = median("single")
    print(f"## nonce on one machine and with --ray ({records:,} records, "
          f"{size / 2**20:.0f} MiB)")
    print()
    print(f"Command: `{command}`")
    print()
    print(f"Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
          f"{repeat} rounds, modes alternating")
    print()
    print("| mode | wall median (s) | time / single-machine time | driver peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    for name in ("single", "local", "2 nodes"):
        print(f"| {name} | {median(name):.2f} | {median(name) / base:.2f} | "
              f"{peak(name):.0f} |")
    print(f"| 2 nodes, N/4 records | {median('2 nodes N/4'):.2f} | | "
          f"{peak('2 nodes N/4'):.0f} |")
    print()
    growth = peak("2 nodes") / peak("2 nodes N/4") if peak("2 nodes N/4") else float("inf")
    print(f"Driver peak RSS on two nodes, N over N/4: {growth:.2f}x. Records a second on "
          f"two nodes: {records / median('2 nodes'):,.0f} "
          f"({records / median('2 nodes') / 2:,.0f} a CPU); on one machine "
          f"{records / base:,.0f}.")
    print()
    if shuffle is not None:
        blocks = shuffle["blocks"]
        print(f"Numbering {blocks:,} blocks ({shuffle_records:,} records of 16, "
              f"{shuffle['distinct']:,} distinct) by first appearance: one process "
              f"{shuffle['one']:.2f} s ({blocks / shuffle['one']:,.0f} blocks/s), two nodes "
              f"{shuffle['two']:.2f} s ({blocks / shuffle['two']:,.0f} blocks/s, "
              f"{shuffle['two'] / shuffle['one']:.1f}x the time); ids "
              f"{'equal' if shuffle['same'] else 'DIFFERENT'}.")
        print()
        if not shuffle["same"]:
            problems.append("the distributed numbering gave other ids than HashIds")
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print(f"- {p}")
    else:
        print("Every --ray run's parts, concatenated, were byte-identical to the "
              "single-machine output.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
