"""Run promptkit in a child process under a memory limit, and measure it; make
decompression bombs and device, FIFO and socket nodes.

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
from collections.abc import Callable
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

    return measure([*PROMPTKIT, *map(str, args)], timeout=timeout, stdin=stdin, cwd=cwd,
                   preexec_fn=limit)


def measure(command: list[str], *, timeout: float, stdin: bytes | None = None,
            cwd: str | Path | None = None, env: dict[str, str] | None = None,
            preexec_fn: Callable[[], None] | None = None) -> Ran:
    """Run ``command`` (its stdin ``stdin``, else empty), killed after ``timeout``
    seconds: what it printed, its exit code, its peak resident memory (``wait4``: the
    largest process of its tree) and its seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as given:
        if stdin is not None:
            given.write(stdin)
            given.seek(0)
        start = time.monotonic()
        proc = subprocess.Popen(command, stdin=given, stdout=out, stderr=err,
                                preexec_fn=preexec_fn, cwd=cwd, env=env)
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


def bomb(path: Path, codec: str, body: list[tuple[bytes, int]]) -> Path:
    """A file of one compressed stream of ``body`` (each ``(bytes, times)``), written a
    piece at a time: a few kilobytes that decompress to hundreds of megabytes."""
    import bz2
    import lzma
    import zlib

    import zstandard

    compressor = {"zstd": lambda: zstandard.ZstdCompressor(level=3).compressobj(),
                  "bz2": lambda: bz2.BZ2Compressor(9), "xz": lambda: lzma.LZMACompressor(),
                  "gzip": lambda: zlib.compressobj(9, wbits=31)}[codec]()
    with path.open("wb") as f:
        for data, times in body:
            for _ in range(times):
                f.write(compressor.compress(data))
        f.write(compressor.flush())
    return path


def make_node(path: Path, kind: str) -> Path:
    """A real node at ``path``: ``device`` (the same as /dev/null: character device
    1,3), ``fifo``, ``socket``, or ``link`` (a symlink to such a device, made beside it
    as ``PATH.dev``)."""
    import socket
    import stat

    if kind in ("device", "link"):
        target = path if kind == "device" else path.with_name(path.name + ".dev")
        try:
            os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            raise RuntimeError("making a character device needs root "
                               f"(euid {os.geteuid()})") from None
        if kind == "link":
            path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    return path


def node_state(path: Path) -> tuple[int, int, int]:
    """What must not change: the node's inode, type and device numbers (through a link)."""
    import stat

    st = os.stat(path)
    return st.st_ino, stat.S_IFMT(st.st_mode), st.st_rdev
