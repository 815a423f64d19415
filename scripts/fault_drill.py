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

``--section bench`` (also run by default, after the above) drills ``promptkit bench``
(it needs the tests' helpers: the real AIPerf of ``tests/aiperf_tool.py`` and the
local server of ``tests/openai_server.py``):

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
- ``--ray 127.0.0.1:1``: one line, within 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
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
    """Living (not zombie) processes of session ``sid`` (in any of its process groups:
    bench's AIPerf has one of its own)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
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
    parser.add_argument("--section", choices=["all", "signals", "bench"], default="all",
                        help="the signal trials on nonce, the bench drill, or both")
    parser.add_argument("--bench-secrets", type=int, default=3,
                        help="random secrets put in every place (bench section)")
    args = parser.parse_args()
    if args.section == "bench":
        return 1 if bench_drill(args) else 0
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
    bench_failures = bench_drill(args) if args.section == "all" else 0
    return 1 if failures or bench_failures else 0


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
    from promptkit.bench import SETTINGS

    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    return {**env, **settings}


def bench_drill(args: argparse.Namespace) -> int:
    """The bench section: secrets, its AIPerf under signals, Ray's address. Prints a
    line a case that failed and a summary; the number of failed checks."""
    sys.path.insert(0, str(TESTS))
    work = Path(tempfile.mkdtemp(prefix="pk-bench-drill-"))
    failures: list[str] = []
    try:
        bench_secrets(work, args, failures)
        bench_signals(work, args, failures)
        ray_address(work, failures)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"bench drill: {len(failures)} failed")
    for failure in failures:
        print("  " + failure)
    return len(failures)


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
                problems.append("bench did not end in 90 s")
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
    infile = work / "one.jsonl"
    infile.write_text('{"text": "a"}\n', encoding="utf-8")
    began = time.monotonic()
    try:
        done = subprocess.run([*PROMPTKIT, "nonce", str(infile), str(work / "parts"),
                               "--ray", "127.0.0.1:1"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = None, (exc.stderr or b"").decode(errors="replace")
    took = time.monotonic() - began
    ok = (code == 1 and err.count("\n") == 1 and took <= 30
          and not (work / "parts").exists())
    print(f"--ray 127.0.0.1:1: exit {code} after {took:.1f} s, {err.count(chr(10))} lines: "
          f"{err.strip()[-200:]!r}: {'ok' if ok else 'FAIL'}", flush=True)
    if not ok:
        failures.append(f"--ray 127.0.0.1:1: exit {code} after {took:.1f} s: {err[-300:]!r}")


if __name__ == "__main__":
    sys.exit(main())
