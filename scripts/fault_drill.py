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

Then it runs the hostile cases of outputs, manifests and leftovers (each promptkit
run under ``prlimit --as=4G``, with a private TMPDIR): a
device (as root), FIFO, socket or link to a device given as OUT, ``--manifest``, a
side file, ``--per-request`` or ``--plot``; a link dropped among an input's shards
or a part folder's parts; manifests nested 100,000 deep or with null fields or NUL
in a path; an unreadable shard; ``nonce big - | head -1``; tiktoken's cache; a run
killed with SIGKILL in the middle of putting its files in place. It counts
tracebacks, leftovers, replaced devices and a secret file's text or sha256 shown.

Then it drills ``promptkit bench`` (with the tests' helpers: the real AIPerf of
``tests/aiperf_tool.py`` and the local server of ``tests/openai_server.py``):

- secrets: ``--bench-secrets`` random secrets (``tests/secret_shapes.py``: tokens,
  passwords holding ``@ : / ? # , ' "`` and spaces) in every place a user puts one
  (.env lines that do not parse, EXTRA_INPUTS, URL, RESET_CACHE hooks, AIPERF_ARGS,
  AIPERF), each run as ``promptkit bench --dry-run`` and as a run (a program that
  records its arguments standing in for AIPerf; the hooks run against the local
  server): no piece of a secret in stdout, stderr or ``cache_condition.json``, no
  traceback, the exit code expected;
- its AIPerf: the real AIPerf on a server slowed to 0.5 s a request, and while it
  profiles, SIGKILL, SIGTERM, SIGINT or SIGHUP to bench, or SIGKILL to AIPerf: exit
  128 + the signal (SIGKILL of bench: killed), one last line, no comparison, no
  ``cache_condition.json``, no process of the run's session alive 10 s later; and
  AIPerf that cannot start, a .env that is not UTF-8: one line;
- ``--ray`` where nothing listens, or a socket that never answers: one line, within
  30 s.

``--section signals``, ``outputs`` or ``bench`` runs one of the three alone.

Last, hostile sizes and shapes, under the same limit: decompression bombs (zstd, xz,
gzip, bz2; JSON lines and CSV), ``/dev/zero`` and an 80 MB file read whole, numbers
past their bounds (options and crafted manifests), inputs that gave tracebacks (lengths
past 2**32 and 2**63, JSON 1,000 deep, a truncated parquet shard) and CSV shapes that
gave wrong output; the peak memory of every bomb and device run is held under 500 MB
(``wait4``). Then ``stats`` of one line of ``--long-mb`` MB (default 400) against as
many bytes of short lines, under 8 GB: the time ratio.

Prints one line a trial (and a case) and a summary; exits 1 if any check failed.
Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
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
from typing import Any

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


def session_alive(sid: int) -> list[int]:
    """Living (not zombie) processes of session ``sid`` (in any of its process groups:
    bench's AIPerf has one of its own)."""
    from limited import processes

    return [pid for pid, _, _, session, state in processes()
            if session == sid and state not in ("Z", "X")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100, help="input size in MB")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="of the random choices")
    parser.add_argument("--tokenizer", default="cl100k_base",
                        help="count tokens under it (slower runs); 'none' for none")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--section", choices=["all", "signals", "outputs", "bench", "bounds"],
                        default="all", help="the signal trials on nonce, the hostile outputs "
                        "and manifests, the bench drill, hostile sizes and shapes, or all "
                        "four (the default)")
    parser.add_argument("--bench-secrets", type=int, default=3,
                        help="random secrets put in every place (bench section)")
    parser.add_argument("--long-mb", type=int, default=400,
                        help="the long line timed against as many bytes of short lines "
                        "(bounds section)")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))  # the tests' helpers: limited, aiperf_tool, ...
    failures: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="pk-fault-drill-"))
    (work / "tmp").mkdir()
    try:
        if args.section in ("all", "signals"):
            failures += signal_trials(work, args)
        if args.section in ("all", "outputs"):
            failures += outputs_drill(work)
        if args.section in ("all", "bench"):
            failures += bench_drill(work / "bench", args)
        if args.section in ("all", "bounds"):
            failures += bounds_drill(work, args.long_mb)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def signal_trials(work: Path, args: argparse.Namespace) -> list[str]:
    """The signal trials on ``promptkit nonce``; returns the failures."""
    from limited import hear_signals

    rng = random.Random(args.seed)
    folder, tmp = work / "out", work / "tmp"
    folder.mkdir()
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
    return failures


# ---------------------------------------------------------------- promptkit bench

TESTS = Path(__file__).resolve().parents[1] / "tests"
RECORDER = """import json, os, sys
with open(os.environ["PK_RECORD"], "w") as f:
    json.dump(sys.argv[1:], f)
"""
BENCH_SIGNALS = [("bench", signal.SIGKILL), ("bench", signal.SIGTERM),
                 ("bench", signal.SIGINT), ("bench", signal.SIGHUP), ("AIPerf", signal.SIGKILL)]
UNFINISHED = "the run did not finish; no comparison, no cache_condition.json"


def bench_env(**settings: str) -> dict[str, str]:
    """This environment without bench's settings, plus ``settings``."""
    from promptkit.commands.bench import SETTINGS

    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return {**env, **settings}


def bench_drill(work: Path, args: argparse.Namespace) -> list[str]:
    """The bench section (in ``work``): secrets, its AIPerf under signals, Ray's address.
    Prints a line a case and a summary; returns the failures."""
    print("\npromptkit bench: secrets, its AIPerf under signals; --ray:", flush=True)
    work.mkdir()
    failures: list[str] = []
    bench_secrets(work, args, failures)
    bench_signals(work, args, failures)
    ray_address(work, failures)
    print(f"bench drill: {len(failures)} failed")
    for failure in failures:
        print("  " + failure)
    return failures


def bench_secrets(work: Path, args: argparse.Namespace, failures: list[str]) -> None:
    import secret_shapes
    from openai_server import OpenAIServer

    rng = random.Random(args.seed)
    recorder = work / "recorder.py"
    recorder.write_text(RECORDER, encoding="utf-8")
    program = f"{sys.executable} {recorder}"
    runs = tracebacks = leaks = codes = 0
    places = 0
    began = time.monotonic()
    with OpenAIServer(model="test-model") as server:
        host = server.url.removeprefix("http://")
        for _ in range(args.bench_secrets):
            secret = secret_shapes.make_secret(rng)
            for place in secret_shapes.places(secret, host, program):
                places += 1
                env_file = work / ".env"
                env_file.write_bytes(secret_shapes.env_file(
                    place, ["MODEL=test-model", "REQUEST_COUNT=2"]))
                artifacts = work / "artifacts"
                for dry in (True, False):
                    settings = {"ARTIFACT_DIR": str(artifacts), "URL": server.url,
                                "AIPERF": program, **place.environment}
                    env = bench_env(**settings, PK_RECORD=str(work / "argv.json"))
                    done = subprocess.run(
                        [*PROMPTKIT, "bench", "--env-file", str(env_file),
                         *(["--dry-run"] if dry else [])], env=env, cwd=work,
                        capture_output=True, text=True, timeout=120)
                    runs += 1
                    record = artifacts / "cache_condition.json"
                    written = record.read_text(encoding="utf-8") if record.exists() else ""
                    shutil.rmtree(artifacts, ignore_errors=True)
                    what = f"{place.name} ({'dry run' if dry else 'run'}, secret {secret!r})"
                    if "Traceback" in done.stderr:
                        tracebacks += 1
                        failures.append(f"{what}: a traceback: {done.stderr[-300:]!r}")
                    found = secret_shapes.leaked(secret, done.stdout, done.stderr, written)
                    if found:
                        leaks += 1
                        failures.append(f"{what}: {found} shown")
                    want = {"ok": (0,), "error": (2,), "either": (0, 2)}[place.outcome]
                    if dry and done.returncode not in want:
                        codes += 1
                        failures.append(f"{what}: exit {done.returncode}: "
                                        f"{done.stderr.strip()[-200:]!r}")
    print(f"bench secrets: {args.bench_secrets} secrets x {places // max(args.bench_secrets, 1)} "
          f"places, {runs} runs (dry run and run) in {time.monotonic() - began:.0f} s: "
          f"{leaks} with a secret in their output, {tracebacks} tracebacks, {codes} "
          "unexpected exit codes", flush=True)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def bench_signals(work: Path, args: argparse.Namespace, failures: list[str]) -> None:
    import aiperf_tool
    from limited import hear_signals
    from openai_server import OpenAIServer
    from tokenizer_dir import build_tokenizer_dir

    class Slow(OpenAIServer):
        def handle(self, method: str, path: str, body: object) -> object:
            if path.endswith("/completions"):
                time.sleep(0.5)
            return super().handle(method, path, body)  # type: ignore[arg-type]

    rng = random.Random(args.seed)
    tokenizer = build_tokenizer_dir(work / "tokenizer")
    prompts = work / "prompts.jsonl"
    example = Path(__file__).resolve().parents[1] / "prompts" / "trace.jsonl.example"
    subprocess.run([*PROMPTKIT, "nonce", str(example), str(prompts), "--copies", "10",
                    "--seed", "7"], check=True, capture_output=True)
    tmp = work / "aiperf-tmp"
    tmp.mkdir()
    for target, signum in BENCH_SIGNALS:
        name = signal.Signals(signum).name
        artifacts = work / f"artifacts-{target}-{name}"
        with Slow(model="test-model") as server:
            env = bench_env(
                MODEL="test-model", URL=server.url, INPUT_FILE=str(prompts),
                REQUEST_COUNT="200", TOKENIZER=str(tokenizer), CHAT_TEMPLATE="none",
                ARTIFACT_DIR=str(artifacts), AIPERF=str(aiperf_tool.executable()),
                AIPERF_ARGS="--ui none --no-gpu-telemetry", TMPDIR=str(tmp))
            proc = subprocess.Popen([*PROMPTKIT, "bench"], env=env, cwd=work,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    start_new_session=True, preexec_fn=hear_signals)
            end = time.monotonic() + 150
            while len(server.chat_requests()) < 2 and proc.poll() is None \
                    and time.monotonic() < end:
                time.sleep(0.1)
            problems = []
            if proc.poll() is not None or len(server.chat_requests()) < 2:
                problems.append("AIPerf sent no request in 150 s")
            else:
                time.sleep(rng.uniform(0, 2))
                victims = [proc.pid] if target == "bench" else children_of(proc.pid)
                if len(victims) == 1:
                    os.kill(victims[0], signum)
                else:
                    problems.append(f"{len(victims)} processes under bench, not AIPerf alone")
            signalled = time.monotonic()
            try:
                _, err = proc.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                _, err = proc.communicate()
                problems.append("bench, or a process holding its output, not ended in 90 s")
            ended = time.monotonic() - signalled
            gone = time.monotonic()
            while session_alive(proc.pid) and time.monotonic() - gone < 10:
                time.sleep(0.1)
            lingering = time.monotonic() - gone
            left = session_alive(proc.pid)
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            sent = len(server.chat_requests())
        lines = err.splitlines()
        if target == "bench" and signum == signal.SIGKILL:
            if proc.returncode != -signal.SIGKILL:
                problems.append(f"exit {proc.returncode}")
        else:
            want = 128 + signum
            why = (f"interrupted ({name})" if target == "bench" else f"AIPerf died of {name}")
            if proc.returncode != want:
                problems.append(f"exit {proc.returncode}, not {want}")
            if not lines or lines[-1] != f"promptkit: {why}: {UNFINISHED}":
                problems.append(f"last line {lines[-1:]!r}")
        if any("prefix cache:" in line for line in lines):
            problems.append("a comparison was printed")
        if "Traceback" in err:
            problems.append("a traceback")
        if (artifacts / "cache_condition.json").exists():
            problems.append("cache_condition.json written")
        if left:
            problems.append(f"{len(left)} processes of the run alive 10 s after")
        status = "ok" if not problems else "FAIL " + "; ".join(problems)
        print(f"bench: {name} to {target} after {sent} requests: exit {proc.returncode}, "
              f"ended {ended:.2f} s after the signal, its processes gone {lingering:.2f} s "
              f"later: {status}", flush=True)
        if problems:
            failures.append(f"bench: {name} to {target}: {'; '.join(problems)}")
    # AIPerf that cannot start (after the synthetic-prompts warnings), a .env that is
    # not UTF-8: a last line that says so, exit 2, nothing written.
    for what, lines, said in [
        ("AIPERF=/nonexistent", b"MODEL=m\nREQUEST_COUNT=2\nAIPERF=/nonexistent\n",
         "promptkit: AIPERF: /nonexistent: no such program, or not executable"),
        (".env not UTF-8", b"MODEL=m\nHF_TOKEN=hf_\xff\n",
         "promptkit: {env}:2: HF_TOKEN: not UTF-8 text (the value is not shown)"),
    ]:
        env_file = work / "one-line.env"
        env_file.write_bytes(lines + f"ARTIFACT_DIR={work / 'none'}\n".encode())
        done = subprocess.run([*PROMPTKIT, "bench", "--env-file", str(env_file)],
                              env=bench_env(), cwd=work, capture_output=True, text=True,
                              timeout=120)
        last = done.stderr.splitlines()[-1:]
        ok = (done.returncode == 2 and last == [said.format(env=env_file)]
              and "Traceback" not in done.stderr and not (work / "none").exists())
        print(f"bench: {what}: exit {done.returncode}: {last}: {'ok' if ok else 'FAIL'}",
              flush=True)
        if not ok:
            failures.append(f"bench: {what}: exit {done.returncode}: {done.stderr[-300:]!r}")


def ray_address(work: Path, failures: list[str]) -> None:
    """``nonce --ray ADDRESS`` where no Ray cluster answers: nothing listening, and a
    socket that takes connections and never says a word. One line, exit 1, within 30 s,
    nothing written."""
    import socket

    infile = work / "one.jsonl"
    infile.write_text('{"text": "a"}\n', encoding="utf-8")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes connections; nobody reads or writes
        port = silent.getsockname()[1]
        for address in ("127.0.0.1:1", "ray://127.0.0.1:1", f"127.0.0.1:{port}"):
            began = time.monotonic()
            try:
                done = subprocess.run(
                    [*PROMPTKIT, "nonce", str(infile), str(work / "parts"), "--ray", address],
                    capture_output=True, text=True, timeout=120, cwd=work,
                    env={**os.environ, "RAY_AUTH_MODE": "disabled"})
                code, err = done.returncode, done.stderr
            except subprocess.TimeoutExpired as exc:
                code, err = None, (exc.stderr or b"").decode(errors="replace")
            took = time.monotonic() - began
            lines = err.count("\n")
            ok = (code == 1 and lines == 1 and took <= 30 and "Traceback" not in err
                  and not (work / "parts").exists())
            print(f"--ray {address}: exit {code} after {took:.1f} s, {lines} line(s): "
                  f"{err.strip()[-200:]!r}: {'ok' if ok else 'FAIL'}", flush=True)
            if not ok:
                failures.append(f"--ray {address}: exit {code} after {took:.1f} s: "
                                f"{err[-300:]!r}")


# ---------------------------------------------------------------- hostile outputs


#: Hostile cases run under a memory limit (address space; Python with pyarrow and
#: matplotlib loaded maps about 1.5 GB).
LIMIT = ["prlimit", f"--as={4 << 30}"]
#: What reading a file without root's permission override looks like.
NO_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
               "--inh-caps=-dac_override,-dac_read_search"]
#: A file outside the folders a run may read: a record, so reading it does not stop at
#: its first character (its sha256 then shows in a report of differing shards).
SECRET = '{"text": "top secret, not to be read"}\n'


def measured(command: list[str], cwd: Path, env: dict[str, str]
             ) -> tuple[int, str, str, float, float]:
    """Run ``command``: its exit code, stdout, stderr, peak resident memory in MB (its
    largest process, ``wait4``: ``prlimit`` runs the command in its own process) and
    seconds; killed after 300 s (the tests' own measure, ``tests/limited.py``)."""
    from limited import measure

    ran = measure(command, timeout=300, cwd=cwd, env=env)
    return (ran.code, ran.stdout.decode(errors="replace"), ran.stderr, ran.peak_mb,
            ran.seconds)


class OutputsTally:
    """The cases of :func:`outputs_drill` and what went wrong in them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cases = 0
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.peaks: list[tuple[str, float, float]] = []  # (case, MB, seconds) when bounded

    def env(self, tmp: Path, **more: str | None) -> dict[str, str]:
        env = {**os.environ, "TMPDIR": str(tmp),
               "TIKTOKEN_CACHE_DIR": str(self.work / "tiktoken"), **more}
        return {k: v for k, v in env.items() if v is not None}

    def run(self, name: str, args: list[str | Path], folder: Path, *, code: int = 1,
            nodes: tuple[Path, ...] = (), new: set[str] | frozenset[str] = frozenset(),
            secret: str | None = None, prefix: list[str] | None = None,
            env: dict[str, str | None] | None = None, then: set[str] | None = None,
            max_mb: float | None = None) -> float:
        """``promptkit ARGS`` in ``folder`` with a private TMPDIR: exit ``code`` (1: with
        exactly one line on stderr), no traceback, every node in ``nodes`` the same node,
        nothing in ``folder`` but what was there (or ``then``) and ``new``, nothing in
        TMPDIR, ``secret`` nowhere, a peak resident memory under ``max_mb`` (when given).
        Returns the peak, in MB."""
        from limited import node_state

        tmp = folder / ".drill-tmp"
        tmp.mkdir()
        before = {p: node_state(p) for p in nodes}
        listed = (set(os.listdir(folder)) - {tmp.name}) if then is None else then
        code_, stdout, stderr, peak, seconds = measured(
            [*(prefix or []), *LIMIT, *PROMPTKIT, *map(str, args)], folder,
            self.env(tmp, **(env or {})))
        problems = self.look(code_, stdout, stderr, code, secret)
        if max_mb is not None:
            self.peaks.append((name, peak, seconds))
            if peak >= max_mb:
                self.counts[f"over {max_mb:.0f} MB"] += 1
                problems.append(f"peak {peak:.0f} MB")
        if any(not os.path.lexists(p) or node_state(p) != state for p, state in before.items()):
            self.counts["replaced devices"] += 1
            problems.append("a node was replaced")
        self.finish(name, folder, tmp, listed | set(new), problems)
        return peak

    def look(self, returncode: int, stdout: str, stderr: str, code: int,
             secret: str | None) -> list[str]:
        problems = []
        if "Traceback" in stderr:
            self.counts["tracebacks"] += 1
            problems.append("traceback: " + stderr.strip().splitlines()[-1][:200])
        elif returncode != code:
            problems.append(f"exit {returncode}, not {code}: {stderr.strip()[-200:]!r}")
        elif code == 1 and stderr.count("\n") != 1:
            problems.append(f"not one line: {stderr!r}")
        if secret is not None and ("top secret" in stdout + stderr
                                   or hashlib.sha256(secret.encode()).hexdigest()
                                   in stdout + stderr):
            self.counts["secrets shown"] += 1
            problems.append("the secret file's text or sha256 shown")
        return problems

    def finish(self, name: str, folder: Path, tmp: Path, expected: set[str],
               problems: list[str]) -> None:
        left = sorted(set(os.listdir(folder)) - expected - {tmp.name}) + [
            f"TMPDIR/{p}" for p in sorted(os.listdir(tmp))]
        if left:
            self.counts["leftovers"] += 1
            problems.append(f"left: {left}")
        shutil.rmtree(tmp)
        self.cases += 1
        print(f"  {'ok  ' if not problems else 'FAIL'} {name}"
              + (": " + "; ".join(problems) if problems else ""), flush=True)
        if problems:
            self.failures.append(f"{name}: {'; '.join(problems)}")


def outputs_drill(work: Path) -> list[str]:
    """Outputs that are devices, FIFOs or sockets; manifests that lead out of their folder
    through links or hold what once gave tracebacks; runs that lose their reader, meet an
    unreadable shard or are killed while putting files in place. Prints a line a case and
    the totals; returns the failures."""
    print("\nhostile outputs, manifests and leftovers (each run under "
          f"{' '.join(LIMIT)}):", flush=True)
    base = work / "outputs"
    base.mkdir()
    tally = OutputsTally(work)
    texts = "".join(json.dumps({"text": f"Tell me about item {i}, please."}) + "\n"
                    for i in range(20))
    (base / "in.jsonl").write_text(texts)
    setup = {"cwd": base, "env": tally.env(work / "tmp"), "check": True, "capture_output": True}
    subprocess.run([*PROMPTKIT, "nonce", "in.jsonl", "made.jsonl", "--seed", "1"], **setup)
    if os.geteuid() != 0:
        print("  (not root: no device nodes, no unreadable shard)")
    _device_cases(tally, base)
    _link_cases(tally, base, texts)
    _manifest_cases(tally, base)
    _leftover_cases(tally, base, texts)
    summary = ", ".join(f"{tally.counts[k]} {k}" for k in
                        ("tracebacks", "leftovers", "replaced devices", "secrets shown"))
    print(f"{tally.cases} cases: {summary}; {len(tally.failures)} failed")
    for failure in tally.failures:
        print("  " + failure)
    return tally.failures


def _device_cases(tally: OutputsTally, base: Path) -> None:
    from limited import make_node

    outputs = {
        "OUT": ["nonce", "in.jsonl", "NODE"],
        "OUT parquet": ["nonce", "in.jsonl", "NODE", "--to", "parquet"],
        "--manifest": ["nonce", "in.jsonl", "o.jsonl", "--manifest", "NODE"],
        "--manifest, OUT -": ["nonce", "in.jsonl", "-", "--manifest", "NODE"],
        "side file": ["pad", "in.jsonl", "o.jsonl", "--tokens", "40", "--tokenizer",
                      "cl100k_base", "--system-prompt", "Be brief.", "--into", "file"],
        "--per-request": ["check", "in.jsonl", "--tokenizer", "cl100k_base", "--per-request",
                          "NODE"],
        "check --plot": ["check", "in.jsonl", "--tokenizer", "cl100k_base", "--plot", "NODE"],
        "stats --plot": ["stats", "in.jsonl", "--tokenizer", "cl100k_base", "--plot", "NODE"],
        "rebuild OUT": ["rebuild", "made.jsonl.manifest.json", "NODE"],
        "synth OUT": ["synth", "prefix-test", "NODE", "--groups", "2", "--group-size", "2"],
        "publish OUT_DIR": ["publish", "in.jsonl", "NODE"],
    }
    kinds = ["fifo", "socket"] + (["device", "link"] if os.geteuid() == 0 else [])
    for kind in kinds:
        for what, args in outputs.items():
            node = base / ("o.jsonl.system.txt" if what == "side file" else f"node-{kind}")
            make_node(node, kind)
            tally.run(f"{kind} as {what}", [node.name if a == "NODE" else a for a in args],
                      base, nodes=(node,), new={node.name, node.name + ".dev"})
            node.unlink(missing_ok=True)
            if kind == "link":
                node.with_name(node.name + ".dev").unlink(missing_ok=True)


def _link_cases(tally: OutputsTally, base: Path, texts: str) -> None:
    secret = base.parent / "secret.txt"
    secret.write_text(SECRET)
    shards = base / "shards"
    shards.mkdir()
    for k in range(3):
        (shards / f"part-{k}.jsonl").write_text(texts)
    setup = {"cwd": base, "env": tally.env(base.parent / "tmp"), "check": True,
             "capture_output": True}
    subprocess.run([*PROMPTKIT, "nonce", "shards", "sharded.jsonl", "--seed", "1"], **setup)
    (shards / "part-1b.jsonl").symlink_to(secret)
    for extra in ([], ["--allow-paths"]):
        tally.run(f"rebuild, a link out dropped among the shards {' '.join(extra)}".strip(),
                  ["rebuild", "sharded.jsonl.manifest.json", "again.jsonl", *extra], base,
                  secret=SECRET)
    (shards / "part-1b.jsonl").unlink()
    (shards / "part-1b.jsonl").symlink_to(base / "gone.jsonl")
    tally.run("a dangling link among the shards", ["nonce", "shards", "o.jsonl"], base)
    tally.run("a dangling link matched by a glob", ["nonce", "shards/*.jsonl", "o.jsonl"], base)
    (shards / "part-1b.jsonl").unlink()
    # A folder of parts as --ray writes it (made here from one run's output) whose part is
    # a link out of the folder.
    parts = base / "parts"
    parts.mkdir()
    recorded = json.loads((base / "made.jsonl.manifest.json").read_text())
    data = (base / "made.jsonl").read_bytes()
    (parts / "part-00000.jsonl").symlink_to(secret)
    recorded["output"]["parts"] = [{"path": "part-00000.jsonl", "records": data.count(b"\n"),
                                    "bytes": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()}]
    (parts / "manifest.json").write_text(json.dumps(recorded))
    tally.run("verify a part folder whose part is a link out", ["verify", "parts"], base,
              secret=SECRET)


def _manifest_cases(tally: OutputsTally, base: Path) -> None:
    recorded = json.loads((base / "made.jsonl.manifest.json").read_text())
    deep = '{"schema": "promptkit.manifest/1", "steps": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (base / "deep.json").write_text(deep)
    tally.run("verify, a manifest nested 100,000 deep",
              ["verify", "made.jsonl", "--manifest", "deep.json"], base)
    tally.run("rebuild, a manifest nested 100,000 deep", ["rebuild", "deep.json", "a.jsonl"],
              base)
    (base / "in.jsonl.manifest.json").write_text(deep)
    tally.run("check IN, a deep manifest beside it",
              ["check", "in.jsonl", "--tokenizer", "cl100k_base"], base, code=0)
    tally.run("publish IN, a deep manifest beside it", ["publish", "in.jsonl", "pub"], base,
              code=0, new={"pub"})
    shutil.rmtree(base / "pub", ignore_errors=True)
    (base / "in.jsonl.manifest.json").unlink()
    crafted: dict[str, Any] = {
        "side_outputs null": {**recorded, "side_outputs": None},
        "generator null": {**recorded, "generator": None},
        "a NUL in the input's path": {**recorded, "inputs": [
            {**recorded["inputs"][0], "path": "in\x00.jsonl"}]},
        "a NUL in a filler file": {**recorded, "steps": [
            {"op": "fit", "params": {"tokens": "20", "tokenizer": "cl100k_base",
                                     "filler_file": "a\x00b"}}]},
    }
    for what, manifest in crafted.items():
        (base / "crafted.json").write_text(json.dumps(manifest))
        tally.run(f"rebuild, {what}", ["rebuild", "crafted.json", "a.jsonl"], base)
    subprocess.run([*PROMPTKIT, "synth", "prefix-test", "synth.jsonl", "--groups", "2",
                    "--group-size", "2", "--system-tokens", "40", "--seed", "5"], cwd=base,
                   env=tally.env(base.parent / "tmp"), check=True, capture_output=True)
    generated = json.loads((base / "synth.jsonl.manifest.json").read_text())
    generated["generator"]["params"].pop("filler_file")
    (base / "crafted.json").write_text(json.dumps(generated))
    tally.run("rebuild, generator.params without filler_file",
              ["rebuild", "crafted.json", "a.jsonl"], base, code=0,
              new={"a.jsonl", "a.jsonl.manifest.json"})
    for name in ("a.jsonl", "a.jsonl.manifest.json", "crafted.json"):
        (base / name).unlink(missing_ok=True)


def _leftover_cases(tally: OutputsTally, base: Path, texts: str) -> None:
    if os.geteuid() == 0:
        unreadable = base / "unreadable"
        unreadable.mkdir()
        for k in range(3):
            (unreadable / f"part-{k}.jsonl").write_text(texts)
        (unreadable / "part-1.jsonl").chmod(0)
        for workers in ("1", "2"):
            tally.run(f"an unreadable shard, {workers} worker(s)",
                      ["nonce", "unreadable", "o.jsonl", "--workers", workers], base,
                      prefix=NO_OVERRIDE)
    big = base.parent / "big.jsonl"
    make_input(big, 24)  # more than a pipe holds, and enough for workers
    for workers in ("1", "2"):
        for manifest in ([], ["--manifest", "m.json"]):
            _closed_stdout(tally, base, big, workers, manifest)
    tally.run("stats --tokenizer with tiktoken's cache not named", [
        "stats", "in.jsonl", "--tokenizer", "cl100k_base"], base, code=0,
        env={"TIKTOKEN_CACHE_DIR": None, "DATA_GYM_CACHE_DIR": None,
             "XDG_CACHE_HOME": str(base.parent / "user-cache")})
    # SIGKILL between moving the old manifest aside and renaming OUT; the next run into
    # the folder removes what it left.
    killed = base / "killed"
    killed.mkdir()
    out = killed / "o.jsonl"
    subprocess.run([*PROMPTKIT, "nonce", "in.jsonl", out], cwd=base,
                   env=tally.env(base.parent / "tmp"), check=True, capture_output=True)
    program = (f"import os, signal\nfrom promptkit import files\n"
               f"o = files.Outputs({str(out)!r}, {str(out) + '.manifest.json'!r})\n"
               f"o.stage({str(out) + '.manifest.json'!r}, '{{}}')\n"
               "o.commit(lambda: os.kill(os.getpid(), signal.SIGKILL))\n")
    subprocess.run([sys.executable, "-c", program], env=tally.env(base.parent / "tmp"),
                   capture_output=True)
    tally.run("the run after one killed mid-commit", ["nonce", base / "in.jsonl", "next.jsonl"],
              killed, code=0, then={"o.jsonl"}, new={"next.jsonl", "next.jsonl.manifest.json"})


def _closed_stdout(tally: OutputsTally, base: Path, big: Path, workers: str,
                   manifest: list[str]) -> None:
    """``promptkit nonce big - | head -1``: 141, nothing on stderr, nothing left."""
    tmp = base / ".drill-tmp"
    tmp.mkdir()
    listed = set(os.listdir(base)) - {tmp.name}
    proc = subprocess.Popen([*LIMIT, *PROMPTKIT, "nonce", str(big), "-", "--workers", workers,
                             *manifest], cwd=base, env=tally.env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    problems = tally.look(proc.returncode, "", err.decode(errors="replace"), 141, None)
    if err:
        problems.append(f"stderr: {err[-200:]!r}")
    tally.finish(" ".join(["nonce big -", *manifest, "--workers", workers, "| head -1"]), base,
                 tmp, listed, problems)


# ---------------------------------------------------------------- hostile sizes and shapes

#: The most memory a run on a bomb, a device or a bounded line may take.
BOMB_MB = 500
MB = 1 << 20


def bounds_drill(work: Path, long_mb: int) -> list[str]:
    """Decompression bombs (JSON lines and CSV), devices and huge files read whole,
    numbers past their bounds, inputs that once gave tracebacks and CSV shapes that once
    gave wrong output, each under the memory limit, with every bomb's and device's peak
    memory held under :data:`BOMB_MB`; then the time of one long line against as many
    bytes of short lines. Prints a line a case, the peaks and the totals; returns the
    failures."""
    from limited import bomb

    print(f"\nhostile sizes and shapes (each run under {' '.join(LIMIT)}; bombs and devices "
          f"under {BOMB_MB} MB):", flush=True)
    base = work / "bounds"
    base.mkdir()
    tally = OutputsTally(work)
    record = (json.dumps({"text": "the quick brown fox jumps over the lazy dog " * 45}) + "\n"
              ).encode()
    records_mb = record * (MB // len(record))
    for codec in ("zstd", "xz", "gzip"):
        bomb(base / f"records.jsonl.{codec}", codec, [(records_mb, 300)])
    bomb(base / "blank.jsonl.bz2", "bz2", [(record, 1), (b"\n" * MB, 600), (record, 1)])
    bomb(base / "spaces.jsonl.zst", "zstd", [(b'{"text": "x"}\n{"text": "', 1),
                                            (b" " * MB, 408), (b'"}\n', 1)])
    row = b"the quick brown fox " * 3200 + b",12\n"
    bomb(base / "rows.csv.zst", "zstd", [(b"prompt,n\n", 1), (row, 10_000)])
    bomb(base / "quote.csv.zst", "zstd", [(b'prompt,n\nfirst,1\n"', 1),
                                         (b"a" * 1023 + b"\n", 70 * 1024), (b'",2\n', 1)])
    bomb(base / "noline.csv.zst", "zstd", [(b"prompt,n\nfirst,1\n", 1), (b"a" * MB, 500)])
    (base / "in.jsonl").write_text("".join(
        json.dumps({"text": f"Tell me about item {i}, please."}) + "\n" for i in range(20)))
    with (base / "big-filler.txt").open("wb") as f:
        for _ in range(80):
            f.write(b"lorem ipsum " * (MB // 12))
    (base / "zero.env").write_text("MODEL=m\nURL=http://127.0.0.1:9\nINPUT_FILE=/dev/zero\n")
    setup = {"cwd": base, "env": tally.env(work / "tmp"), "check": True, "capture_output": True}
    subprocess.run([*PROMPTKIT, "nonce", "in.jsonl", "made.jsonl", "--seed", "1"], **setup)
    subprocess.run([*PROMPTKIT, "fit", "in.jsonl", "fit.jsonl", "--tokens", "40", "--tokenizer",
                    "cl100k_base", "--seed", "1"], **setup)
    tok = ["--tokenizer", "cl100k_base"]
    pad = ["pad", "in.jsonl", "o.jsonl", "--tokens", "64", *tok, "--to", "openai"]
    out_new = {"o.jsonl", "o.jsonl.manifest.json"}

    def case(name: str, args: list[str], code: int = 1, bounded: bool = True,
             new: set[str] | frozenset[str] = frozenset()) -> None:
        tally.run(name, args, base, code=code, new=new, max_mb=BOMB_MB if bounded else None)
        for made in new:
            (base / made).unlink(missing_ok=True)

    # Bombs: read through, or one line, in bounded memory.
    for codec in ("zstd", "xz", "gzip"):
        case(f"{codec} bomb (300 MB of records), stats", ["stats", f"records.jsonl.{codec}",
                                                           "--json"], code=0)
    case("zstd bomb, nonce --workers 2", ["nonce", "records.jsonl.zstd", "o.jsonl", "--workers",
                                          "2", "--seed", "1"], code=0, new=out_new)
    case("bz2 bomb (600 MB of blank lines), stats", ["stats", "blank.jsonl.bz2"], code=0)
    case("zstd bomb, a line over 400 MiB", ["stats", "spaces.jsonl.zst"])
    case("csv.zst bomb (640 MB of rows), stats", ["stats", "rows.csv.zst", "--json"], code=0)
    case("csv.zst bomb, nonce", ["nonce", "rows.csv.zst", "o.jsonl", "--seed", "1"], code=0,
         new=out_new)
    case("csv.zst bomb, a quote never closed", ["stats", "quote.csv.zst"])
    case("csv.zst bomb, no line end", ["stats", "noline.csv.zst"])
    # Files read whole: a device, or a file past the bound.
    case("verify --manifest /dev/zero", ["verify", "made.jsonl", "--manifest", "/dev/zero"])
    case("rebuild /dev/zero", ["rebuild", "/dev/zero", "o.jsonl"])
    case("pad --filler-file /dev/zero", [*pad, "--system-prompt", "Hi.", "--filler-file",
                                         "/dev/zero"])
    case("pad --system-prompt-file /dev/zero", [*pad, "--system-prompt-file", "/dev/zero"])
    case("pad --filler-file of 80 MB", [*pad, "--system-prompt", "Hi.", "--filler-file",
                                        "big-filler.txt"])
    case("bench INPUT_FILE=/dev/zero", ["bench", "--dry-run", "--env-file", "zero.env"])
    # Numbers past their bounds: a usage error (2), or one line from a crafted manifest.
    huge = str(2**64)
    case("fit --tokens 2**64", ["fit", "in.jsonl", "o.jsonl", "--tokens", huge, *tok], code=2)
    case("pad --tokens 2**64", [*pad[:4], huge, *pad[5:], "--system-prompt", "Hi."], code=2)
    case("nonce --copies 2**64", ["nonce", "in.jsonl", "o.jsonl", "--copies", huge], code=2)
    fitted = json.loads((base / "fit.jsonl.manifest.json").read_text())
    fitted["steps"][0]["params"]["tokens"] = 2**64
    (base / "crafted.json").write_text(json.dumps(fitted))
    case("rebuild, a manifest's fit tokens 2**64", ["rebuild", "crafted.json", "o.jsonl"])
    copied = json.loads((base / "made.jsonl.manifest.json").read_text())
    copied["steps"][0]["params"]["copies"] = 2**64
    (base / "crafted.json").write_text(json.dumps(copied))
    case("rebuild, a manifest's copies 2**64", ["rebuild", "crafted.json", "o.jsonl"])
    # What gave tracebacks.
    inputs = {
        "wide.jsonl": '{"input_length": 4294967296, "output_length": 5}',
        "wider.jsonl": '{"input_length": 9223372036854775808, "output_length": 5, '
                       '"hash_ids": [1]}',
        "deep.jsonl": '{"text": "hi", "meta": ' + "[" * 1000 + "]" * 1000 + "}",
        "deep500.jsonl": '{"text": "hi", "meta": ' + '{"a":' * 500 + "1" + "}" * 500 + "}",
    }
    for name, line in inputs.items():
        (base / name).write_text(line + "\n")
    case("stats, input_length 2**32", ["stats", "wide.jsonl"], bounded=False)
    case("check, input_length 2**63 with hash_ids", ["check", "wider.jsonl"], bounded=False)
    for command in (["nonce", "deep.jsonl", "-"], ["stats", "deep.jsonl"],
                    ["turns", *tok, "deep.jsonl", "-"]):
        case(f"{command[0]}, JSON 1,000 deep", command, bounded=False)
    case("nonce --at salt, JSON 500 deep", ["nonce", "--at", "salt", "deep500.jsonl", "-"],
         bounded=False)
    shards = base / "parquet"
    shards.mkdir()
    subprocess.run([*PROMPTKIT, "nonce", "in.jsonl", "parquet/a.parquet", "--to", "parquet",
                    "--manifest", "a.manifest.json"], **setup)
    (base / "a.manifest.json").unlink()
    whole = (shards / "a.parquet").read_bytes()
    (shards / "b.parquet").write_bytes(whole[:len(whole) // 2])
    case("a truncated parquet shard", ["stats", "parquet"], bounded=False)
    # CSV shapes that gave wrong output or many lines.
    azure = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
    csvs = {
        "shifted.csv": azure + "2023-11-16 18:15:46,5,38,1\n",
        "big.csv": azure + "2023-11-16 18:15:47.0,3,1e308\n",
        "trailing.csv": azure.replace("\n", ",\n").replace("GeneratedTokens,", "GeneratedTokens"),
        "quote.csv": azure + '2023-11-16 18:15:47.0,"3,10\n',
    }
    for name, text in csvs.items():
        (base / name).write_text(text)
    (base / "trace.csv.gz").write_bytes(gzip.compress(azure.encode()))
    case("CSV, a row of 4 fields under 3", ["pipe", "read", "shifted.csv", "write", "-"],
         bounded=False)
    case("CSV, a row of 4 fields, --skip-invalid", ["pipe", "read", "--skip-invalid",
                                                    "shifted.csv", "write", "-"], code=0,
         bounded=False)
    case("CSV, a length of 1e308", ["pipe", "read", "big.csv", "write", "-"], bounded=False)
    case("CSV, trailing commas", ["pipe", "read", "trailing.csv", "write", "-"], code=0,
         bounded=False)
    case("CSV, gzip", ["pipe", "read", "trace.csv.gz", "write", "-"], code=0, bounded=False)
    case("CSV, a quote never closed", ["pipe", "read", "quote.csv", "write", "-"],
         bounded=False)

    print("peak memory (MB) and seconds of the bounded cases:")
    for name, peak, seconds in tally.peaks:
        print(f"  {peak:6.0f} MB {seconds:6.1f} s  {name}")
    ratio = _long_line_ratio(tally, base, long_mb)
    summary = ", ".join(f"{tally.counts[k]} {k}" for k in
                        ("tracebacks", "leftovers", f"over {BOMB_MB} MB"))
    print(f"{tally.cases} cases: {summary}; {len(tally.failures)} failed; long line / short "
          f"lines: {ratio:.2f}x")
    for failure in tally.failures:
        print("  " + failure)
    return tally.failures


#: The long line's runs: parsing 400 MB of JSON at once takes more address space than
#: :data:`LIMIT` (what ``scripts/bench_long_line.py`` gives it).
LONG_LIMIT = ["prlimit", f"--as={8 << 30}"]


def _long_line_ratio(tally: OutputsTally, base: Path, megabytes: int) -> float:
    """``stats`` of one record of ``megabytes`` MB against as many bytes of records of
    about a kilobyte (the best of two runs each, under :data:`LONG_LIMIT`): their time
    ratio (a long line joined again chunk by chunk cost time quadratic in its length)."""
    size = megabytes * 1_000_000
    words = b"the quick brown fox jumps over the lazy dog "
    long, short = base / "long.jsonl", base / "short.jsonl"
    with long.open("wb") as f:
        f.write(b'{"text": "')
        for _ in range((size - 13) // len(words)):
            f.write(words)
        f.write(b'"}\n')
    one = json.dumps({"text": (words * 22).decode()}).encode() + b"\n"
    with short.open("wb") as f:
        for _ in range(size // len(one)):
            f.write(one)
    seconds: dict[str, float] = {}
    for path in (long, short):
        best = []
        for _ in range(2):
            tmp = base / ".drill-tmp"
            tmp.mkdir()
            code, _, err, peak, took = measured([*LONG_LIMIT, *PROMPTKIT, "stats", path.name],
                                                base, tally.env(tmp))
            shutil.rmtree(tmp)
            if code != 0 or "Traceback" in err:
                tally.failures.append(f"stats {path.name}: exit {code}: {err.strip()[-200:]!r}")
            best.append(took)
        seconds[path.name] = min(best)
        print(f"  stats {path.name} ({path.stat().st_size / 1e6:.0f} MB): {min(best):.1f} s, "
              f"peak {peak:.0f} MB", flush=True)
    long.unlink()
    short.unlink()
    return seconds["long.jsonl"] / seconds["short.jsonl"]


if __name__ == "__main__":
    sys.exit(main())
