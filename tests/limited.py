"""Run promptkit in a child process under a memory limit, and measure it.

Hostile inputs (decompression bombs, ``/dev/zero``, a line of hundreds of megabytes)
are run this way only: under ``RLIMIT_AS`` (what ``prlimit --as`` sets) a run that
reads without bound fails in its own process, not on the machine, and its peak
resident memory is measured (``wait4``: the largest process of its tree).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROMPTKIT = [sys.executable, "-m", "promptkit"]


@dataclass
class Ran:
    code: int
    stdout: bytes
    stderr: str
    #: Peak resident memory of the run's largest process, in MB.
    peak_mb: float
    seconds: float
    timed_out: bool


def run_limited(*args: str | Path, memory: int = 1 << 30, timeout: float = 120,
                stdin: bytes | None = None, cwd: str | Path | None = None) -> Ran:
    """``promptkit ARGS...`` in a child process whose address space is at most ``memory``
    bytes, killed after ``timeout`` seconds."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as given:
        if stdin is not None:
            given.write(stdin)
            given.seek(0)
        start = time.monotonic()
        proc = subprocess.Popen([*PROMPTKIT, *map(str, args)], stdin=given, stdout=out,
                                stderr=err, preexec_fn=limit, cwd=cwd)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Ran(proc.returncode, out.read(), err.read().decode(errors="replace"),
                   usage.ru_maxrss / 1024, seconds, killed.is_set())
