#!/usr/bin/env python3
"""Benchmark ``promptkit nonce`` against a hand-written ``json`` loop, in one run.

Usage::

    python scripts/bench_nonce.py [--records N] [--workdir DIR] [--repeat R]

What it does:

1. Generates a deterministic AIPerf single_turn JSONL file of N records (default
   1,000,000): texts of 100-2000 characters assembled from a fixed word list
   with a seeded ``random.Random``, about 20% of records with a (unique)
   ``session_id`` and an ``output_length``, about 40% with ``role: "user"``.
   A prefix of N/4 records is written alongside, for the memory-growth check.
2. Runs, alternately for R rounds, the baseline (a separate Python process with
   the loop a user would write: stdlib ``json`` + ``uuid.uuid4``), the same loop
   with ``orjson`` and batched writes, ``python -m promptkit nonce IN OUT --seed 7``
   (default workers, and ``--workers 1``), promptkit on the N/4 file, and ``cat IN >
   OUT`` (the floor: reading and writing the bytes, nothing else).
3. Measures each child's wall time and peak RSS (``os.wait4`` rusage, so the
   figure is the child's own, not this script's), checks both outputs
   (record count, a sample of records compared with the input, the manifest).
   Linux carries a process's peak RSS across ``exec``, and ``subprocess``
   starts children with ``vfork``, so a child's ru_maxrss is at least the peak
   of the process that started it: the children are started by a small
   launcher process that stays small (its peak, an upper bound of the floor
   of every figure, about 10-15 MiB, is printed with the results).
4. Prints a Markdown table: median wall and CPU times of each, the speed ratio
   baseline/it (higher is better), peak RSS at N/4 and at N, and the exact
   command line, then TARGET MET / TARGET NOT MET lines: default workers at least
   3x the baseline's wall time and less CPU in all than the orjson loop;
   ``--workers 1`` at least 2.5x; peak RSS under 150 MB and flat.

The ratio is the figure to compare between machines: both sides run on the same
machine in the same run, alternated, so shared-core noise hits both alike.
The script always exits 0: it is a report, not a test.

Standard library only (promptkit itself must be importable by the interpreter
that runs this script, e.g. ``/work/venv/bin/python``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

TARGET_RATIO = 3.0
TARGET_ONE_PROC_RATIO = 2.5
TARGET_PEAK_MIB = 150.0
#: Peak RSS at N may exceed the peak at N/4 by at most this fraction to count as flat.
FLAT_TOLERANCE = 0.10
SEED = 7
DATA_SEED = 20240607

BASELINE = r'''
import json, sys, uuid

src, dst = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f, \
        open(dst, "w", encoding="utf-8", buffering=1 << 20) as out:
    for line in f:
        d = json.loads(line)
        d["text"] = str(uuid.uuid4()) + "\n" + d["text"]
        out.write(json.dumps(d) + "\n")
'''

# The same loop with orjson, reading and writing bytes in batches: what a user who
# reaches for a fast JSON library writes.
ORJSON_LOOP = r'''
import sys, uuid, orjson

src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f, open(dst, "wb") as out:
    parts = []
    for line in f:
        d = orjson.loads(line)
        d["text"] = str(uuid.uuid4()) + "\n" + d["text"]
        parts.append(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE))
        if len(parts) == 4096:
            out.write(b"".join(parts))
            parts.clear()
    out.write(b"".join(parts))
'''

WORDS = """
the a of to and in is for on with as by at from that this it be are was were
model prompt token cache server request latency throughput benchmark dataset
answer question explain summarize translate describe compare list write code
function class module python rust kernel memory buffer queue thread process
network packet router switch cluster node replica shard index query table row
column schema join filter sort group aggregate window stream batch pipeline
user assistant system message context history conversation session turn reply
please carefully briefly step detail example following previous next each every
why how what when where which who whose whom because although however therefore
large small fast slow new old first last long short high low good better best
document paragraph sentence chapter section report article paper review note
customer order invoice payment account balance transfer refund policy contract
weather river mountain forest city village road bridge harbor island desert
history science music painting poetry novel theatre film garden kitchen recipe
naïve café résumé façade über jalapeño déjà coöperate — “quoted” ½ °C →
""".split()  # noqa: SIM905 (a word list reads better as text)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def sentence_pool(rng: random.Random, size: int = 4096) -> list[str]:
    """Sentences of 4-28 words; some end a paragraph (newline), some hold quotes."""
    pool = []
    for _ in range(size):
        words = rng.choices(WORDS, k=rng.randint(4, 28))
        if rng.random() < 0.1:
            i = rng.randrange(len(words))
            words[i] = f'"{words[i]}"'
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice(".....?!:")
        pool.append(sentence + ("\n" if rng.random() < 0.12 else " "))
    return pool


def generate(path: str, quarter_path: str, records: int, seed: int = DATA_SEED) -> None:
    """Write ``records`` single_turn lines to ``path``, the first N/4 also to ``quarter_path``."""
    rng = random.Random(seed)
    pool = sentence_pool(rng)
    mean = sum(map(len, pool)) / len(pool)
    quarter = records // 4
    dumps = json.dumps
    batch: list[str] = []
    with open(path, "w", encoding="utf-8") as out, \
            open(quarter_path, "w", encoding="utf-8") as qout:
        for i in range(records):
            length = rng.randint(100, 2000)
            text = "".join(rng.choices(pool, k=int(length / mean) + 2))[:length].rstrip()
            roll = rng.random()
            obj: dict[str, object] = {}
            if roll < 0.2:
                obj["session_id"] = f"session-{i:07d}"
            if roll < 0.1 or roll >= 0.7:
                obj["role"] = "user"
            obj["text"] = text
            if roll < 0.2:
                obj["output_length"] = rng.randint(16, 1024)
            batch.append(dumps(obj, ensure_ascii=False))
            if len(batch) == 20_000 or i == records - 1 or i == quarter - 1:
                chunk = "\n".join(batch) + "\n"
                out.write(chunk)
                if i < quarter:
                    qout.write(chunk)
                batch.clear()


# ---------------------------------------------------------------- measuring


#: Runs each command it reads (a JSON line ``[cmd, log_path]``) and answers a JSON line
#: ``[wall_s, ru_maxrss_kib, cpu_s, exit_code]``; ``null`` asks for its own peak RSS.
#: It stays small, so the RSS it hands down to its children through vfork is small.
LAUNCHER = r'''
import json, os, resource, subprocess, sys, time

for line in sys.stdin:
    job = json.loads(line)
    if job is None:
        answer = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        cmd, log_path = job
        with open(log_path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        answer = [wall, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, proc.returncode]
    print(json.dumps(answer), flush=True)
'''

#: ru_maxrss unit in bytes: KiB on Linux, bytes on macOS.
RSS_UNIT = 1 if sys.platform == "darwin" else 1024


class Launcher:
    """A small long-lived process that starts the measured children and waits for them."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _ask(self, job: object) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def run(self, cmd: list[str], log_path: str) -> dict[str, float]:
        """Run ``cmd``; its wall time (s), peak RSS (MiB), CPU time (s) and exit code."""
        wall, maxrss, cpu, rc = self._ask([cmd, log_path])
        return {"wall": wall, "peak_mib": maxrss * RSS_UNIT / 2**20, "cpu": cpu, "rc": rc}

    def own_peak_mib(self) -> float:
        return float(self._ask(None)) * RSS_UNIT / 2**20

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait()


def count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def check_output(src: str, dst: str, records: int, sample: int = 2000) -> list[str]:
    """Problems with ``dst`` as a nonce'd copy of ``src`` (empty if none)."""
    problems = []
    n = count_lines(dst)
    if n != records:
        problems.append(f"{dst}: {n} records, expected {records}")
    with open(src, encoding="utf-8") as fin, open(dst, encoding="utf-8") as fout:
        for k, (a, b) in enumerate(zip(fin, fout, strict=False)):
            if k == sample:
                break
            before, after = json.loads(a), json.loads(b)
            nonce, sep, rest = after.get("text", "").partition("\n")
            if not (sep and UUID_RE.match(nonce) and rest == before["text"]):
                problems.append(f"{dst}: line {k + 1}: text is not UUID + newline + input text")
                break
            if {**after, "text": before["text"]} != before:
                problems.append(f"{dst}: line {k + 1}: fields differ from the input")
                break
    return problems


def mib(value: float) -> str:
    return f"{value:.1f}"


# ---------------------------------------------------------------- main


def breakdown(path: str, lines_wanted: int = 100_000) -> list[tuple[str, float]]:
    """Where one process spends its time, per line: each stage of ``nonce`` timed on its
    own over the first lines of ``path`` (CPU time, the least of 5 passes), in this
    process (promptkit's own functions, so it imports promptkit)."""
    import hashlib

    import numpy as np
    import orjson

    from promptkit.io.jsoncodec import KEY_ENDS
    from promptkit.ops.nonce import NonceMaker, NonceState, nonce_params
    from promptkit.ops.registry import make
    from promptkit.runner import workers as parallel
    from promptkit.runner.writers import TEXT_START, Splicer

    with open(path, "rb") as f:
        data = b"".join(f.readline() for _ in range(lines_wanted))
    lines = data.split(b"\n")[:-1]
    n = len(lines)
    objs = [orjson.loads(line) for line in lines]
    params = nonce_params(seed=SEED)

    def chunked(splice: bool) -> None:
        step = make("nonce", {"seed": SEED})
        job = parallel.Job(path, "", "single_turn", "single_turn", [step], False, path,
                           splice=step.params if splice else None)
        states = [step.new_state()]
        start = 0
        while start < len(data):  # chunks of whole lines, as a run cuts them
            end = data.rfind(b"\n", start, start + (4 << 20)) + 1 or len(data)
            parallel.process_chunk(job, data[start:end], 1, states)
            start = end

    fresh: list[str] = []

    def new_texts() -> None:  # a str keeps its hash once made: new ones for each pass
        fresh[:] = [orjson.loads(line)["text"] for line in lines]

    def keys() -> None:
        for text in fresh:
            hash((None, "x", text, None))

    shuffled = np.random.default_rng(SEED).integers(-2**63, 2**63 - 1, n, dtype=np.int64)

    def spliced() -> None:
        splice = Splicer(params, "single_turn", NonceState(), hash).splice
        for i, line in enumerate(lines):
            splice(line, i)

    stages: list[tuple[Any, ...]] = [
        ("`orjson.loads` of the line", lambda: [orjson.loads(x) for x in lines]),
        ("no key written twice (one regular expression)",
         lambda: [len(KEY_ENDS(x)) for x in lines]),
        ("the reader's checks of the fields",
         lambda: [Splicer._single_turn(o) for o in objs]),
        ("finding the text's first byte", lambda: [TEXT_START(x) for x in lines]),
        ("making the uuid nonce (a chunk's at once, as the writer does)",
         lambda: NonceMaker("uuid", SEED).make_many(0, n)),
        ("the distinct-count key (hashing the text)", keys, new_texts),
        ("all of the above, one line at a time (Splicer.splice)", spliced),
        ("a whole chunk by the splice writer (the line's bytes kept)",
         lambda: chunked(True)),
        ("a whole chunk by the encode writer (each record encoded again)",
         lambda: chunked(False)),
        ("sha256 of the input line (the output's: as much again)",
         lambda: hashlib.sha256(data).digest()),
        ("the distinct count (sorting the keys)",
         lambda: np.sort(shuffled)),
    ]
    out = []
    for name, call, *setup in stages:
        best = float("inf")
        for _ in range(5):
            for prepare in setup:
                prepare()
            start = time.process_time()
            call()
            best = min(best, time.process_time() - start)
        out.append((name, best / n * 1e6))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000,
                        help="records in the generated file (default: 1,000,000)")
    parser.add_argument("--workdir", help="where to put the files (default: a temporary "
                        "folder, removed afterwards; a given folder is kept)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of baseline + promptkit (default: 3)")
    parser.add_argument("--generate-only", nargs=2, metavar=("OUT", "QUARTER_OUT"),
                        help=argparse.SUPPRESS)  # internal: the data-generating child
    args = parser.parse_args()
    if args.generate_only:
        out, quarter_out = args.generate_only
        generate(out, quarter_out, args.records)
        return 0
    records = args.records
    quarter = records // 4
    if quarter < 1 or args.repeat < 1:
        parser.error("--records must be at least 4 and --repeat at least 1")
    command = shlex.join([sys.executable, *sys.argv])

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-nonce-")
    os.makedirs(workdir, exist_ok=True)
    try:
        return bench(workdir, records, quarter, args.repeat, command)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def bench(workdir: str, records: int, quarter: int, repeat: int, command: str) -> int:
    src = os.path.join(workdir, f"single_turn_{records}.jsonl")
    src_q = os.path.join(workdir, f"single_turn_{quarter}.jsonl")
    base_out = os.path.join(workdir, "baseline_out.jsonl")
    pk_out = os.path.join(workdir, "promptkit_out.jsonl")
    pk_out_q = os.path.join(workdir, "promptkit_out_quarter.jsonl")
    script = os.path.join(workdir, "baseline.py")
    with open(script, "w", encoding="utf-8") as f:
        f.write(BASELINE)
    orjson_script = os.path.join(workdir, "orjson_loop.py")
    with open(orjson_script, "w", encoding="utf-8") as f:
        f.write(ORJSON_LOOP)

    launcher = Launcher()  # first, while this process is at its smallest
    log(f"generating {records} records in {workdir}")
    start = time.perf_counter()
    # In a child process, so that this one stays small too.
    subprocess.run([sys.executable, os.path.abspath(__file__), "--records", str(records),
                    "--generate-only", src, src_q], check=True)
    size = os.path.getsize(src)
    log(f"generated {size / 2**20:.0f} MiB in {time.perf_counter() - start:.1f} s")

    baseline_cmd = [sys.executable, script, src, base_out]

    def promptkit_cmd(inp: str, out: str) -> list[str]:
        return [sys.executable, "-m", "promptkit", "nonce", inp, out, "--seed", str(SEED)]

    runs: dict[str, list[dict[str, float]]] = {
        "baseline": [], "orjson": [], "promptkit": [], "one-proc": [], "quarter": [], "cat": []}
    problems: list[str] = []
    digests: set[str] = set()
    manifest: dict[str, Any] = {}
    for r in range(1, repeat + 1):
        for name, cmd, out, n, inp in (
            ("baseline", baseline_cmd, base_out, records, src),
            ("promptkit", promptkit_cmd(src, pk_out), pk_out, records, src),
            # The same job in one process (--workers 1): the per-process cost.
            ("one-proc", [*promptkit_cmd(src, pk_out), "--workers", "1"], pk_out, records, src),
            ("quarter", promptkit_cmd(src_q, pk_out_q), pk_out_q, quarter, src_q),
            ("orjson", [sys.executable, orjson_script, src, base_out], base_out, records, src),
            ("cat", ["sh", "-c", f"cat {shlex.quote(src)} > {shlex.quote(base_out)}"],
             base_out, records, src),
        ):
            log_path = os.path.join(workdir, f"{name}.log")
            result = launcher.run(cmd, log_path)
            runs[name].append(result)
            log(f"round {r}/{repeat} {name:9}: {result['wall']:7.2f} s wall, "
                f"{result['cpu']:7.2f} s cpu, peak {mib(result['peak_mib'])} MiB")
            if result["rc"] != 0:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
                problems.append(f"{name} exited {result['rc']}: {tail.strip()}")
            elif r == 1 and name != "cat":  # later rounds are the same job again
                problems += check_output(inp, out, n)
            if name not in ("baseline", "orjson", "cat") and result["rc"] == 0:
                with open(out + ".manifest.json", encoding="utf-8") as f:
                    m = json.load(f)
                if name in ("promptkit", "one-proc"):
                    manifest = m
                    digests.add(m["output"]["sha256"])
                if m["output"]["records"] != n or m["inputs"][0]["records"] != n:
                    problems.append(f"{name}: manifest counts {m['inputs'][0]['records']} in, "
                                    f"{m['output']['records']} out; expected {n}")
            for path in (out, out + ".manifest.json"):
                if os.path.exists(path):
                    os.remove(path)

    floor = launcher.own_peak_mib()
    launcher.close()
    if len(digests) > 1:
        problems.append(f"promptkit --seed {SEED} wrote different bytes across rounds: "
                        f"{sorted(digests)}")

    def median(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    def peak(name: str) -> float:
        return max(x["peak_mib"] for x in runs[name])

    b_wall, p_wall = median("baseline", "wall"), median("promptkit", "wall")
    ratio = b_wall / p_wall if p_wall else float("inf")
    one_ratio = b_wall / median("one-proc", "wall")
    p_cpu, o_cpu = median("promptkit", "cpu"), median("orjson", "cpu")
    peak_q, peak_n = peak("quarter"), peak("promptkit")
    growth = peak_n - peak_q

    print(f"## nonce vs a hand-written json loop ({records:,} records, {size / 2**20:.0f} MiB)")
    print()
    print(f"Command: `{command}`")
    print()
    print(f"Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()} "
          f"({platform.python_implementation()}), {platform.system()} {platform.machine()}, "
          f"{repeat} rounds, each running every command below in turn; medians")
    print()
    print("| | wall (s) | ratio (baseline / it) | CPU (s) | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("baseline", "baseline: `json` loop"),
                        ("orjson", "`orjson` loop, batched writes"),
                        ("promptkit", "promptkit, default workers"),
                        ("one-proc", "promptkit `--workers 1`"),
                        ("cat", "`cat IN > OUT` (the floor)")):
        wall = median(name, "wall")
        print(f"| {label} | {wall:.2f} | {b_wall / wall:.2f}x | {median(name, 'cpu'):.2f} "
              f"| {mib(peak(name))} |")
    print()
    print("Every run (wall s / cpu s / peak MiB):")
    print()
    print("| round | baseline | orjson loop | promptkit | promptkit --workers 1 "
          "| promptkit N/4 | cat |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in range(repeat):
        cells = [f"{x['wall']:.2f} / {x['cpu']:.2f} / {mib(x['peak_mib'])}"
                 for x in (runs[name][r] for name in ("baseline", "orjson", "promptkit",
                                                      "one-proc", "quarter", "cat"))]
        print(f"| {r + 1} | " + " | ".join(cells) + " |")
    print()
    print(f"Peak RSS at N/4 ({quarter:,} records): {mib(peak_q)} MiB; at N: {mib(peak_n)} "
          "MiB. With workers, the peak is that of the largest process (the main one or a "
          "worker; each worker is a fork of the main process). Peak RSS figures are the "
          "child's ru_maxrss, which Linux carries across vfork+exec from the launcher that "
          "starts them: none can read lower than the launcher's RSS at that moment (at most "
          f"{mib(floor)} MiB, its peak).")
    if manifest:
        print(f"Input sha256 (from promptkit's manifest): {manifest['inputs'][0]['sha256']}; "
              f"distinct_records: {manifest['aiperf']['distinct_records']:,}; "
              f"promptkit output identical across rounds: {'yes' if len(digests) == 1 else 'no'}.")
    print()
    log("timing each stage in this process")
    print(f"Where one process spends its time, per line (microseconds of CPU, the least of "
          f"5 passes over the first {min(100_000, quarter):,} lines):")
    print()
    print("| stage | µs a line |")
    print("|---|---:|")
    for name, micros in breakdown(src_q, min(100_000, quarter)):
        print(f"| {name} | {micros:.3f} |")
    print()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    ok = "TARGET MET" if ratio >= TARGET_RATIO else "TARGET NOT MET"
    print(f"{ok}: speed ratio {ratio:.2f}x, default workers (target >= {TARGET_RATIO:g}x)")
    ok = "TARGET MET" if p_cpu < o_cpu else "TARGET NOT MET"
    print(f"{ok}: promptkit CPU {p_cpu:.2f} s, default workers, all processes "
          f"(target: less than the orjson loop's {o_cpu:.2f} s)")
    ok = "TARGET MET" if one_ratio >= TARGET_ONE_PROC_RATIO else "TARGET NOT MET"
    print(f"{ok}: speed ratio {one_ratio:.2f}x, --workers 1 "
          f"(target >= {TARGET_ONE_PROC_RATIO:g}x)")
    ok = "TARGET MET" if peak_n < TARGET_PEAK_MIB else "TARGET NOT MET"
    print(f"{ok}: promptkit peak RSS {mib(peak_n)} MiB at {records:,} records "
          f"(target < {TARGET_PEAK_MIB:g} MB)")
    flat = growth <= FLAT_TOLERANCE * peak_q
    ok = "TARGET MET" if flat else "TARGET NOT MET"
    print(f"{ok}: peak RSS flat as the file grows: {mib(peak_q)} MiB at {quarter:,} -> "
          f"{mib(peak_n)} MiB at {records:,} records ({growth:+.1f} MiB, "
          f"tolerance +{FLAT_TOLERANCE:.0%})")
    if problems:
        print("TARGET NOT MET: outputs did not check out (see PROBLEM lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
