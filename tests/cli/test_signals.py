"""Signals sent to real promptkit processes mid-run: nothing is left behind.

Each test starts ``python -m promptkit nonce --tokenizer cl100k_base`` on a file
large enough to be processed in worker processes (and to take seconds), waits
until it is writing, signals it, and then looks at what is left: the exit code,
stderr, the output folder, a private temp folder and the processes of its session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from limited import hear_signals, processes

from promptkit.core import leftovers
from promptkit.runner import workers as parallel

OLD = b"the previous output\n"


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JSONL file a little over the size that runs in workers."""
    path = tmp_path_factory.mktemp("input") / "big.jsonl"
    line = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)
    with open(path, "w") as f:
        i = 0
        while f.tell() < parallel.MIN_PARALLEL_BYTES + (4 << 20):
            f.write(json.dumps({"text": f"{i}: {line}", "output_length": 32}) + "\n")
            i += 1
    return path


def living(pids: set[int] | None = None, group: int | None = None) -> set[int]:
    """Of ``pids`` (or the processes of ``group``), those alive (zombies are dead)."""
    return {pid for pid, _, pgid, _, state in processes()
            if state not in ("Z", "X")
            and (pid in pids if pids is not None else pgid == group)}


def until(condition, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


class Run:
    """A promptkit run in its own session, writing OUT beside an older OUT."""

    def __init__(self, tmp_path: Path, source: Path, workers: int):
        self.folder = tmp_path / "out"
        self.folder.mkdir()
        self.scratch = tmp_path / "tmp"  # the run's private TMPDIR
        self.scratch.mkdir()
        self.out = self.folder / "prompts.jsonl"
        self.out.write_bytes(OLD)
        self.env = {**os.environ, "TMPDIR": str(self.scratch),
                    "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptkit", "nonce", "--tokenizer", "cl100k_base",
             "--seed", "1", str(source), str(self.out), "--workers", str(workers)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            start_new_session=True, preexec_fn=hear_signals)
        self.workers: set[int] = set()
        mid_run = until(lambda: self.writing(workers))
        assert mid_run, self.proc.communicate()
        if workers > 1:
            self.workers = {pid for pid, ppid, _, _, _ in processes() if ppid == self.proc.pid}
            assert len(self.workers) == workers

    def writing(self, workers: int) -> bool:
        assert self.proc.poll() is None, self.proc.communicate()
        temp = [p for p in os.listdir(self.folder) if p.endswith(leftovers.TEMP_SUFFIX)]
        if not temp:
            return False
        if workers == 1:
            return True
        children = [pid for pid, ppid, _, _, _ in processes() if ppid == self.proc.pid]
        scratch = [p for p in os.listdir(self.scratch) if p.startswith("promptkit-")]
        return len(children) == workers and bool(scratch)

    def signal(self, signum: int) -> tuple[int, str]:
        if signum == signal.SIGINT:  # Ctrl-C: the whole foreground process group
            os.killpg(self.proc.pid, signum)
        else:  # kill, timeout, a CI cancel: the process alone
            os.kill(self.proc.pid, signum)
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err.decode()

    def left(self) -> tuple[list[str], list[str]]:
        """What is there besides the old OUT, and in the private temp folder."""
        return (sorted(set(os.listdir(self.folder)) - {self.out.name}),
                sorted(os.listdir(self.scratch)))


CLEAN = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signum", CLEAN, ids=lambda s: signal.Signals(s).name)
def test_a_signal_ends_the_run_with_one_line_and_nothing_left(
        signum, workers, big_input, tmp_path):
    ends_cleanly(Run(tmp_path, big_input, workers), signum)


def ends_cleanly(run: Run, signum: int) -> None:
    """Signal ``run`` well into its work: one line, its exit code, the old OUT untouched,
    nothing left in its folders, no process of it alive."""
    time.sleep(0.2)  # well into the work
    code, err = run.signal(signum)
    name = signal.Signals(signum).name
    assert (code, err) == (128 + signum,
                           f"promptkit: interrupted ({name}); unfinished output removed\n")
    assert run.out.read_bytes() == OLD
    assert run.left() == ([], [])
    assert until(lambda: not living(group=run.proc.pid), timeout=5)
    assert not living(run.workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_leaves_no_worker_and_the_next_run_removes_its_files(
        workers, big_input, tmp_path):
    run = Run(tmp_path, big_input, workers)
    time.sleep(0.2)
    code, err = run.signal(signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert err == ""
    # The workers die with their parent, though nobody told them.
    assert until(lambda: not living(run.workers), timeout=5)
    assert until(lambda: not living(group=run.proc.pid), timeout=5)
    assert run.out.read_bytes() == OLD
    beside, scratch = run.left()
    # The temporary output and the (no longer held) lock on writing OUT.
    assert [name.rsplit(".", 1)[1] for name in beside] == ["promptkit-tmp", "promptkit-lock"]
    assert len(scratch) == (1 if workers > 1 else 0)

    another_run(run, tmp_path)
    assert run.left() == (["other.jsonl", "other.jsonl.manifest.json"], [])
    assert run.out.read_bytes() == OLD


def another_run(run: Run, tmp_path: Path) -> None:
    """A small run into the same folder and TMPDIR as ``run`` (which sweeps leftovers)."""
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "hello"}\n')
    nxt = subprocess.run([sys.executable, "-m", "promptkit", "nonce", str(small),
                          str(run.folder / "other.jsonl")],
                         capture_output=True, env=run.env)
    assert nxt.returncode == 0, nxt.stderr


def test_a_run_leaves_the_files_of_a_live_run_alone(big_input, tmp_path):
    run = Run(tmp_path, big_input, 2)
    another_run(run, tmp_path)
    out, err = run.proc.communicate(timeout=120)
    assert run.proc.returncode == 0, err
    assert run.out.read_bytes() != OLD
    assert run.left() == (["other.jsonl", "other.jsonl.manifest.json",
                           "prompts.jsonl.manifest.json"], [])


def test_sweep_removes_a_dead_owners_files_only(tmp_path):
    """Real files named for a process that has ended, for a live one, for another host,
    and a dead owner's file that a live process holds locked."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(done.stdout)
    host = leftovers.owner().split("-")[0]
    live = os.getpid()
    names = {
        "dead": f".a.jsonl.pk{host}-{dead}-abc123{leftovers.TEMP_SUFFIX}",
        "live": f".b.jsonl.pk{host}-{live}-abc123{leftovers.TEMP_SUFFIX}",
        "elsewhere": f".c.jsonl.pk000000-{dead}-abc123{leftovers.TEMP_SUFFIX}",
        "locked": f".d.jsonl.pk{host}-{dead}-xyz789{leftovers.TEMP_SUFFIX}",
        "unnamed": f".e.jsonl.abc123{leftovers.TEMP_SUFFIX}",  # an older promptkit's
        "dead folder": f".f.parquet.pk{host}-{dead}-abc123{leftovers.TEMP_SUFFIX}",
        "free lock": ".g.jsonl.promptkit-lock",  # a killed run's lock on writing OUT
    }
    for key, name in names.items():
        if key.endswith("folder"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "data.parquet").write_bytes(b"x")
        else:
            (tmp_path / name).write_bytes(b"x")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(tmp_path / names["locked"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        removed = leftovers.sweep_beside(str(tmp_path / "out.jsonl"))
    finally:
        holder.communicate("")
    assert sorted(removed) == sorted(str(tmp_path / names[k])
                                     for k in ("dead", "dead folder", "free lock"))
    assert sorted(os.listdir(tmp_path)) == sorted(
        names[k] for k in ("live", "elsewhere", "locked", "unnamed"))


def test_sigterm_ends_stats_and_its_workers(big_input, tmp_path):
    """Commands that only read (stats, check) run workers too: they end with the run."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "TIKTOKEN_CACHE_DIR": str(tmp_path / "tk")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptkit", "stats", "--tokenizer", "cl100k_base",
         str(big_input), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    workers: set[int] = set()

    def started() -> bool:
        assert proc.poll() is None, proc.communicate()
        workers.update(pid for pid, ppid, _, _, _ in processes() if ppid == proc.pid)
        return len(workers) == 2

    assert until(started)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err.decode()) == (
        143, b"", "promptkit: interrupted (SIGTERM); unfinished output removed\n")
    assert until(lambda: not living(workers), timeout=5)
    assert sorted(os.listdir(tmp_path)) == ["tk"]
