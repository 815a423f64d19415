"""``promptkit bench`` and the AIPerf it starts: AIPerf dies with it, a run that did not
finish is said so (exit 128 + the signal) and leaves no comparison and no
``cache_condition.json``, and AIPerf that cannot start is one line.

The real AIPerf (``tests/aiperf_tool.py``) against the local server
(``tests/openai_server.py``), slowed to half a second a request so that the run is
still going when the test acts: it sends bench SIGKILL, SIGTERM or SIGINT, kills
AIPerf itself, or presses Ctrl-C at a terminal (a pseudo-terminal, AIPerf's dashboard
UI in its foreground). bench runs in a session of its own; afterwards no process of
that session may be alive (AIPerf's services included).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
import test_aiperf_profile
import test_bench
from openai_server import OpenAIServer, Response
from test_bench import QUIET_AIPERF, nonced, runner_env, write_env

from promptkit.commands import bench

aiperf_tmpdir = test_aiperf_profile.aiperf_tmpdir  # the shared fixtures
tokenizer_dir = test_bench.tokenizer_dir

#: Seconds each request takes: a run of 200 requests lasts far longer than a test waits.
DELAY = 0.5
#: Seconds to wait for AIPerf to be profiling (it starts in 10 to 30 s here).
START_TIMEOUT = 150.0
#: Seconds the processes of a run may take to end after it did.
END_TIMEOUT = 10.0
INTERRUPTED = "the run did not finish; no comparison, no cache_condition.json"


class SlowServer(OpenAIServer):
    def handle(self, method: str, path: str, body: Any) -> Response:
        if path.endswith("/completions"):
            time.sleep(DELAY)
        return super().handle(method, path, body)


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    with SlowServer(model="test-model") as server:
        yield server


def settings_for(server: OpenAIServer, tmp_path: Path, tokenizer: Path,
                 **more: Any) -> Path:
    """A .env for 200 distinct requests that take 100 s: a run to interrupt."""
    path = nonced(tmp_path)
    many = tmp_path / "many.jsonl"
    subprocess.run([sys.executable, "-m", "promptkit", "nonce", str(path), str(many),
                    "--copies", "10", "--seed", "3"], check=True, capture_output=True)
    settings = {"MODEL": "test-model", "URL": server.url, "INPUT_FILE": many,
                "REQUEST_COUNT": 200, "TOKENIZER": tokenizer, "CHAT_TEMPLATE": "none",
                "ARTIFACT_DIR": tmp_path / "artifacts",
                "AIPERF": shlex.quote(str(aiperf_tool.executable())),
                "AIPERF_ARGS": QUIET_AIPERF}
    return write_env(tmp_path / "bench.env", **{**settings, **more})


def session_alive(sid: int) -> list[str]:
    """Living processes (not zombies) of session ``sid``: ``pid name``."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                alive.append(f"{entry} {stat[stat.index('(') + 1:stat.rindex(')')]}")
    return alive


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def wait_until(what: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.1)
    return what()


def session_ends(sid: int) -> None:
    """Every process of the session ends within END_TIMEOUT; whatever is left is killed
    (so a failing test leaves nothing running) and named."""
    if not wait_until(lambda: not session_alive(sid), END_TIMEOUT):
        left = session_alive(sid)
        for line in left:
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        pytest.fail(f"alive {END_TIMEOUT:g} s after the run ended: {left}")


@contextlib.contextmanager
def started(env_file: Path, tmp_path: Path, aiperf_tmp: Path,
            server: OpenAIServer) -> Iterator[subprocess.Popen[str]]:
    """``promptkit bench`` in a session of its own, once AIPerf is profiling."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptkit", "bench", "--env-file", str(env_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=runner_env(aiperf_tmp), cwd=tmp_path, start_new_session=True)
    try:
        if not wait_until(lambda: len(server.chat_requests()) >= 2 or proc.poll() is not None,
                          START_TIMEOUT):
            pytest.fail("AIPerf sent no request in time")
        assert proc.poll() is None, proc.communicate()
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        session_ends(proc.pid)


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def no_record(tmp_path: Path) -> None:
    assert not (tmp_path / "artifacts" / bench.CONDITION_FILE).exists()


def test_sigkill_of_bench_ends_aiperf_and_its_services(
        tmp_path: Path, slow_server: SlowServer, aiperf_tmpdir: Path,
        tokenizer_dir: Path) -> None:
    env_file = settings_for(slow_server, tmp_path, tokenizer_dir)
    with started(env_file, tmp_path, aiperf_tmpdir, slow_server) as proc:
        aiperf = children(proc.pid)
        assert aiperf, "no AIPerf under bench"
        proc.kill()
        code, _, _ = finished(proc)
        assert code == -signal.SIGKILL
        # AIPerf and every service it started (its own process group) end with bench.
        assert wait_until(lambda: not session_alive(proc.pid), END_TIMEOUT), \
            session_alive(proc.pid)
        sent = len(slow_server.chat_requests())
        time.sleep(2 * DELAY + 0.5)
        assert len(slow_server.chat_requests()) == sent  # nobody sends any more
    no_record(tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_bench_stops_aiperf_and_says_the_run_did_not_finish(
        signum: int, tmp_path: Path, slow_server: SlowServer, aiperf_tmpdir: Path,
        tokenizer_dir: Path) -> None:
    """SIGTERM and SIGHUP end AIPerf at once; SIGINT makes it cancel the run (it writes
    what it has). Either way bench exits 128 + the signal with one line, no comparison."""
    env_file = settings_for(slow_server, tmp_path, tokenizer_dir)
    with started(env_file, tmp_path, aiperf_tmpdir, slow_server) as proc:
        os.kill(proc.pid, signum)  # bench alone, as kill, timeout and CI do
        code, out, err = finished(proc)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert err.splitlines()[-1] == f"promptkit: interrupted ({name}): {INTERRUPTED}", err
    assert "prefix cache:" not in err and "Traceback" not in err
    no_record(tmp_path)


def test_aiperf_killed_by_a_signal_is_a_run_that_did_not_finish(
        tmp_path: Path, slow_server: SlowServer, aiperf_tmpdir: Path,
        tokenizer_dir: Path) -> None:
    env_file = settings_for(slow_server, tmp_path, tokenizer_dir)
    with started(env_file, tmp_path, aiperf_tmpdir, slow_server) as proc:
        (aiperf,) = children(proc.pid)
        os.kill(aiperf, signal.SIGKILL)
        code, out, err = finished(proc)
    assert code == 128 + signal.SIGKILL, err
    assert err.splitlines()[-1] == f"promptkit: AIPerf died of SIGKILL: {INTERRUPTED}", err
    assert "prefix cache:" not in err
    no_record(tmp_path)


def test_ctrl_c_at_a_terminal_reaches_aiperf_which_cancels(
        tmp_path: Path, slow_server: SlowServer, aiperf_tmpdir: Path,
        tokenizer_dir: Path) -> None:
    """bench from a terminal: AIPerf's dashboard (its default UI) gets the terminal's
    foreground (it reads the keyboard), so Ctrl-C reaches AIPerf, which cancels the run,
    writes what it has and exits 0; bench says the run did not finish and exits 130."""
    env_file = settings_for(slow_server, tmp_path, tokenizer_dir,
                            AIPERF_ARGS="--no-gpu-telemetry")  # the dashboard UI
    env = {**runner_env(aiperf_tmpdir), "TERM": "xterm"}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session whose controlling terminal is the pty
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "promptkit", "bench", "--env-file",
                                   str(env_file)], env)
    screen = bytearray()
    status = None
    try:
        end = time.monotonic() + START_TIMEOUT
        pressed = False
        while time.monotonic() < end and status is None:
            if select.select([terminal], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    screen += os.read(terminal, 1 << 16)
            if not pressed and len(slow_server.chat_requests()) >= 2:
                os.write(terminal, b"\x03")
                pressed = True
                end = time.monotonic() + 60
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(raw)
        assert pressed, "AIPerf sent no request in time"
        with contextlib.suppress(OSError):
            while select.select([terminal], [], [], 0.2)[0]:
                chunk = os.read(terminal, 1 << 16)
                if not chunk:
                    break
                screen += chunk
    finally:
        if status is None:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
        session_ends(pid)
    text = screen.decode("utf-8", "replace").replace("\r", "\n")
    lines = [line for line in text.splitlines() if line.startswith("promptkit:")]
    assert status == 128 + signal.SIGINT, text[-3000:]
    assert lines[-1] == (f"promptkit: AIPerf cancelled its run (SIGINT): {INTERRUPTED}")
    assert not any("prefix cache:" in line for line in lines)
    ready = json.loads((tmp_path / "artifacts" / bench.RESULTS_READY).read_text())
    assert ready["was_cancelled"] is True  # AIPerf's own account of it
    no_record(tmp_path)


def test_aiperf_that_cannot_start_is_one_line_and_nothing_is_done(
        tmp_path: Path, slow_server: SlowServer, aiperf_tmpdir: Path,
        tokenizer_dir: Path) -> None:
    """A program that does not exist is a bad setting (exit 2), found before the cache
    reset; one that exists but cannot be executed stops the run (exit 1). No record."""
    env_file = settings_for(slow_server, tmp_path, tokenizer_dir, RESET_CACHE="vllm",
                            AIPERF="/nonexistent/aiperf")
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             str(env_file)], capture_output=True, text=True,
                            env=runner_env(aiperf_tmpdir), cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        "promptkit: AIPERF: /nonexistent/aiperf: no such program, or not executable")
    assert "Traceback" not in result.stderr
    assert slow_server.recorded("/reset_prefix_cache") == []
    no_record(tmp_path)

    script = tmp_path / "not-a-program"
    script.write_text("aiperf profile\n", encoding="utf-8")  # no #! line: exec refuses it
    script.chmod(0o755)
    env_file = settings_for(slow_server, tmp_path, tokenizer_dir, AIPERF=script)
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             str(env_file)], capture_output=True, text=True,
                            env=runner_env(aiperf_tmpdir), cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1] == (
        f"promptkit: AIPERF: {script}: cannot start it: exec format error")
    assert "Traceback" not in result.stderr
    no_record(tmp_path)
