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
import signal
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
    return measure([*PROMPTKIT, *map(str, args)], timeout=timeout, stdin=stdin, cwd=cwd,
                   memory=memory)


def measure(command: list[str], *, timeout: float, stdin: bytes | None = None,
            cwd: str | Path | None = None, env: dict[str, str] | None = None,
            memory: int | None = None) -> Ran:
    """Run ``command`` (its stdin ``stdin``, else empty; its address space at most
    ``memory`` bytes), killed after ``timeout`` seconds: what it printed, its exit code,
    its peak resident memory and its seconds.

    The peak is ``wait4``'s, of the command's largest process, taken by a small
    process of this module that starts it (``python limited.py``): a process forked
    from this one (the test session, hundreds of megabytes after many tests) would
    count this one's resident memory as its own until it runs the command."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryFile() as given, tempfile.NamedTemporaryFile() as report:
        if stdin is not None:
            given.write(stdin)
            given.seek(0)
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, __file__, report.name, str(memory or 0),
                                 *command], stdin=given, stdout=out, stderr=err, cwd=cwd,
                                env=env, start_new_session=True)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            code = proc.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - start
        peak = float(report.read().decode() or 0)
        out.seek(0)
        err.seek(0)
        return Ran(code, out.read(), err.read().decode(errors="replace"), peak, seconds,
                   killed.is_set())


def _start(report: str, memory: int, command: list[str]) -> None:
    """(``python limited.py REPORT MEMORY COMMAND...``) Run ``command`` under the memory
    limit, write its peak resident memory in MB to ``REPORT``, and end as it ended."""
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(report, "w") as f:
        f.write(str(usage.ru_maxrss / 1024))
    if os.WIFSIGNALED(status):  # ended by a signal: so does this process
        number = os.WTERMSIG(status)
        if number not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    sys.exit(os.waitstatus_to_exitcode(status))


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




def hear_signals() -> None:
    """In the child: hear SIGINT and SIGHUP even if this runs where they are ignored (a
    shell's background job ignores SIGINT, ``nohup`` SIGHUP), since an ignored signal
    stays ignored across exec (and promptkit keeps it so, as it should)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def processes() -> list[tuple[int, int, int, int, str]]:
    """``(pid, parent pid, process group, session, state)`` of every process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out.append((int(entry), int(fields[1]), int(fields[2]), int(fields[3]), fields[0]))
    return out


if __name__ == "__main__":
    _start(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
