"""AIPerf as promptkit's child process: a process group of its own that dies with
promptkit, the terminal's foreground handed to it, promptkit's signals passed on, and
how a run that did not finish is told from one that did."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from promptkit.core import interrupts
from promptkit.core.errors import PromptkitError, SettingError
from promptkit.core.redact import redacted

#: Seconds AIPerf has to end after the first signal promptkit passes on to it (with
#: SIGINT it cancels the run and writes what it has, in about a second), before SIGKILL.
STOP_GRACE = 30.0
#: AIPerf's note that its results are written; ``was_cancelled`` after a SIGINT.
RESULTS_READY = ".aiperf_results_ready.json"


def check_program(command: list[str]) -> None:
    """AIPerf's program exists and can be run (else a bad setting, before any reset)."""
    if shutil.which(command[0]) is None:
        raise SettingError(f"AIPERF: {redacted(command[:1])[0]}: no such program, or not "
                           "executable")


def _foreground_terminal() -> int | None:
    """stdin, when it is a terminal whose foreground is this process's group."""
    try:
        fd = sys.stdin.fileno()
        return fd if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp() else None
    except (OSError, ValueError, AttributeError):
        return None


def _hand_terminal(terminal: int, group: int) -> None:
    """Make ``group`` the terminal's foreground (from the background too: SIGTTOU held)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(terminal, group)
    except OSError:
        pass  # the terminal is gone (a hangup)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _aiperf_preexec(terminal: int | None) -> Callable[[], None]:
    """What AIPerf's process does before it is executed: a process group of its own (its
    services join it), the terminal's foreground when promptkit had it (AIPerf's
    dashboard reads the keyboard; Ctrl-C and Ctrl-Z reach AIPerf alone), and death
    with promptkit (SIGKILL when promptkit ends, however it ends)."""
    dies = interrupts.dies_with_this_process()

    def preexec() -> None:
        os.setpgid(0, 0)
        if terminal is not None:
            _hand_terminal(terminal, os.getpgrp())
        dies()

    return preexec


def _signal_group(group: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _wait(proc: subprocess.Popen[bytes], terminal: int | None) -> int:
    """AIPerf's exit code (negative: the signal it died of). Stopped at the terminal
    (Ctrl-Z), it stops promptkit's job too: the shell gets the terminal back, and
    ``fg`` resumes both."""
    while True:
        _, status = os.waitpid(proc.pid, os.WUNTRACED if terminal is not None else 0)
        if terminal is not None and os.WIFSTOPPED(status):
            _hand_terminal(terminal, os.getpgrp())
            _signal_group(os.getpgrp(), signal.SIGTSTP)  # stops here until fg
            _hand_terminal(terminal, proc.pid)
            _signal_group(proc.pid, signal.SIGCONT)
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode


def run_aiperf(command: list[str], env: Mapping[str, str]) -> tuple[int, int | None]:
    """Run AIPerf: ``(its exit code, the signal promptkit got meanwhile or None)``.

    AIPerf runs in a process group of its own and dies with promptkit, even with one
    killed by SIGKILL (see :func:`_aiperf_preexec`). SIGINT, SIGTERM and SIGHUP sent
    to promptkit are passed on to AIPerf's group (a second one, or ``STOP_GRACE``
    seconds without an end, send SIGKILL), and promptkit waits for it to end."""
    received: list[int] = []
    sent: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    deadline: threading.Timer | None = None

    def pass_on() -> None:
        nonlocal deadline
        while proc is not None and len(sent) < len(received):
            sent.append(signal.SIGKILL if sent else received[0])
            _signal_group(proc.pid, sent[-1])
            if deadline is None:
                deadline = threading.Timer(STOP_GRACE, _signal_group,
                                           (proc.pid, signal.SIGKILL))
                deadline.daemon = True
                deadline.start()

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        pass_on()

    main = threading.current_thread() is threading.main_thread()  # (signals: main only)
    before = {each: signal.signal(each, stop) for each in interrupts.SIGNALS
              if main and signal.getsignal(each) is not signal.SIG_IGN}
    terminal = _foreground_terminal()
    try:
        try:
            proc = subprocess.Popen(command, env=dict(env), preexec_fn=_aiperf_preexec(terminal))
        except (OSError, subprocess.SubprocessError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise PromptkitError(f"AIPERF: {redacted(command[:1])[0]}: cannot start it: "
                                 f"{why.lower()}") from None
        pass_on()  # a signal that came while it started
        return _wait(proc, terminal), received[0] if received else None
    finally:
        for each, handler in before.items():
            signal.signal(each, handler)
        if deadline is not None:
            deadline.cancel()
        if terminal is not None:
            _hand_terminal(terminal, os.getpgrp())


def unfinished_run(code: int, stopped_by: int | None, artifact_dir: Path,
                   started: float) -> tuple[str, int] | None:
    """Why the run did not finish, and promptkit's exit code (128 + the signal), or None
    for a run AIPerf finished: promptkit got a signal, AIPerf died of one, or AIPerf
    cancelled its run (a Ctrl-C at the terminal reaches AIPerf alone; it then writes
    what it has and exits 0, saying ``was_cancelled``)."""
    if stopped_by is not None:
        return f"interrupted ({signal.Signals(stopped_by).name})", 128 + stopped_by
    if code < 0:
        return f"AIPerf died of {signal.Signals(-code).name}", 128 - code
    ready = artifact_dir / RESULTS_READY
    try:
        cancelled = (ready.stat().st_mtime >= started - 1
                     and json.loads(ready.read_text(encoding="utf-8")).get("was_cancelled"))
    except (OSError, ValueError, AttributeError):
        cancelled = False
    if cancelled is True:
        return "AIPerf cancelled its run (SIGINT)", 128 + signal.SIGINT
    return None
