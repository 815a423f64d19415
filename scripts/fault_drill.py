#!/usr/bin/env python3
"""Kill real promptkit runs at random points and check that nothing is left behind.

Usage::

    python scripts/fault_drill.py [--size MB] [--trials N] [--seed S] [--tokenizer T]

Makes a single_turn input of about MB megabytes (default 100) in a fresh folder,
writes an "old" OUT there (the same command with another seed), and times one
full run with 1 and with 2 workers. Then, N times (default 40), starts

    promptkit nonce --tokenizer T --seed 1 IN OUT --workers W

(W 1 or 2, in a session of its own, with a private TMPDIR) and after a random
delay between 0 and the full run's time sends it SIGINT (to its process group,
as Ctrl-C does), SIGTERM, SIGHUP or SIGKILL (to the process alone, as ``kill``,
``timeout`` and CI cancellation do). After each trial it checks:

- the exit code is 128 + the signal with exactly one line on stderr (SIGKILL:
  killed), or 0 if the run finished first (the OUT is then the new output, and
  the old one is put back for the next trial);
- OUT is the old OUT, byte for byte (no partial file, nothing damaged);
- nothing is left beside OUT or in the TMPDIR; after SIGKILL, nothing once the
  next run (a small one into the same folder and TMPDIR) is done;
- no process of the run's session is alive 5 s after the run ended.

Prints one line a trial and a summary; exits 1 if any check failed. Linux only
(it reads /proc).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL]
PROMPTKIT = [sys.executable, "-m", "promptkit"]


def make_input(path: Path, megabytes: int) -> int:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog",
             "while", "seven", "wizards", "quietly", "judge", "boxing", "matches"]
    rng = random.Random(0)
    n = 0
    with open(path, "w") as f:
        while f.tell() < megabytes << 20:
            text = " ".join(rng.choice(words) for _ in range(60))
            f.write(json.dumps({"text": f"{n}: {text}", "output_length": 64}) + "\n")
            n += 1
    return n


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hear_signals() -> None:
    """In the child: hear SIGINT and SIGHUP even if this runs where they are ignored (a
    shell's background job ignores SIGINT, ``nohup`` SIGHUP), since an ignored signal
    stays ignored across exec (and promptkit keeps it so, as it should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def session_alive(sid: int) -> list[int]:
    """Living (not zombie) processes whose process group is ``sid``."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == sid and fields[0] not in ("Z", "X"):
            alive.append(int(entry))
    return alive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100, help="input size in MB")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="of the random choices")
    parser.add_argument("--tokenizer", default="cl100k_base",
                        help="count tokens under it (slower runs); 'none' for none")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    work = Path(tempfile.mkdtemp(prefix="pk-fault-drill-"))
    folder, tmp = work / "out", work / "tmp"
    folder.mkdir()
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "TIKTOKEN_CACHE_DIR": str(work / "tiktoken")}
    source, out = work / "input.jsonl", folder / "prompts.jsonl"
    small = work / "small.jsonl"
    small.write_text('{"text": "hello"}\n')
    records = make_input(source, args.size)
    tok = [] if args.tokenizer == "none" else ["--tokenizer", args.tokenizer]

    def command(workers: int, seed: int, target: Path) -> list[str]:
        return [*PROMPTKIT, "nonce", *tok, "--seed", str(seed), str(source), str(target),
                "--workers", str(workers)]

    print(f"input: {records:,} records, {source.stat().st_size / 1e6:.0f} MB; "
          f"command: promptkit nonce {' '.join(tok)} --seed 1 IN OUT --workers W", flush=True)
    subprocess.run(command(2, 2, out), env=env, check=True, capture_output=True)
    old = sha256(out)
    shutil.copy(out, work / "old.jsonl")
    took, new = {}, {}
    for workers in (1, 2):
        fresh = work / f"full-{workers}.jsonl"
        start = time.monotonic()
        subprocess.run(command(workers, 1, fresh), env=env, check=True, capture_output=True)
        took[workers] = time.monotonic() - start
        new[workers] = sha256(fresh)
        fresh.unlink()
        (work / f"full-{workers}.jsonl.manifest.json").unlink()
        print(f"full run, {workers} worker(s): {took[workers]:.1f} s", flush=True)
    assert new[1] == new[2], "1 and 2 workers wrote different bytes"
    expected_beside = {out.name, out.name + ".manifest.json"}

    failures: list[str] = []
    outcome: Counter[tuple[str, int, str]] = Counter()
    orphan_wait = 0.0
    ending: list[float] = []  # seconds from the signal to the run's exit
    began = time.monotonic()
    for trial in range(1, args.trials + 1):
        workers = rng.choice((1, 2))
        signum = rng.choice(SIGNALS)
        name = signal.Signals(signum).name
        delay = rng.uniform(0, took[workers])
        proc = subprocess.Popen(command(workers, 1, out), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=hear_signals)
        time.sleep(delay)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        signalled = time.monotonic()
        _, err_bytes = proc.communicate()
        if proc.returncode != 0:
            ending.append(time.monotonic() - signalled)
        err = err_bytes.decode(errors="replace")
        code = proc.returncode
        problems = []
        start = time.monotonic()
        while session_alive(proc.pid) and time.monotonic() - start < 5:
            time.sleep(0.05)
        orphan_wait = max(orphan_wait, time.monotonic() - start)
        if session_alive(proc.pid):
            problems.append(f"processes alive 5 s after: {session_alive(proc.pid)}")
        if code == 0:
            kind = "finished first"
            if sha256(out) != new[workers]:
                problems.append("exit 0 but OUT is not the full output")
            shutil.copy(work / "old.jsonl", out)
        elif signum == signal.SIGKILL:
            kind = "killed"
            if code != -signal.SIGKILL:
                problems.append(f"exit {code}")
        elif code == 128 + signum:
            kind = "clean exit"
            if err.count("\n") != 1 or f"interrupted ({name})" not in err:
                problems.append(f"stderr not one line: {err!r}")
        elif code == -signum:
            kind = "during startup"  # before promptkit set its handlers: nothing open yet
        else:
            kind = f"exit {code}"
            problems.append(f"exit {code}: {err.strip()[-300:]!r}")
        if sha256(out) != old:
            problems.append("OUT changed")
        if signum == signal.SIGKILL:
            subprocess.run([*PROMPTKIT, "nonce", str(small), str(folder / "next.jsonl")],
                           env=env, check=True, capture_output=True)
            for leftover in ("next.jsonl", "next.jsonl.manifest.json"):
                (folder / leftover).unlink()
        beside = sorted(set(os.listdir(folder)) - expected_beside)
        if beside:
            problems.append(f"left beside OUT: {beside}")
        scratch = sorted(os.listdir(tmp))
        if scratch:
            problems.append(f"left in TMPDIR: {scratch}")
            for entry in scratch:
                shutil.rmtree(tmp / entry, ignore_errors=True)
        for entry in beside:  # start the next trial clean
            shutil.rmtree(folder / entry, ignore_errors=True) if (folder / entry).is_dir() \
                else (folder / entry).unlink()
        outcome[(name, workers, kind)] += 1
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        print(f"{trial:3d} {name:7s} workers={workers} after {delay:5.2f} s: exit {code:4d} "
              f"({kind}) {status}", flush=True)
        if problems:
            failures.append(f"trial {trial} ({name}, {workers} workers): {'; '.join(problems)}")

    print("\nsummary (signal, workers, outcome: trials):")
    for (name, workers, kind), n in sorted(outcome.items()):
        print(f"  {name:7s} {workers} {kind:15s} {n}")
    if ending:
        ending.sort()
        print(f"signal to exit: median {ending[len(ending) // 2]:.2f} s, "
              f"slowest {ending[-1]:.2f} s")
    print(f"slowest end of a run's processes after it exited: {orphan_wait:.2f} s")
    print(f"drill took {time.monotonic() - began:.0f} s")
    print(f"{args.trials} trials, {len(failures)} failed")
    for failure in failures:
        print("  " + failure)
    if not args.keep:
        shutil.rmtree(work)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
