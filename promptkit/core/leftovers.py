"""Temporary files that name their owner, and removing those a killed run left behind.

A leaf module (standard library only).

A run killed with SIGKILL (or by a power cut) cannot remove its temporary output
beside OUT or its scratch folder of chunks in the temp folder. Their names therefore
carry the owner: a short hash of the host name and the pid. A later run removes
those whose owner is on this host and no longer alive, and that no process holds a
lock on (a live owner's output file is locked, which also guards runs in other pid
namespaces of one machine). Anything else, and every file another tool or an older
promptkit made, is left alone. A pid the system has since given to another process
keeps its files (they are removed once that process ends): never too much removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: the owner's pid is all there is to go by
    fcntl = None  # type: ignore[assignment]

#: The suffix of temporary output beside OUT.
TEMP_SUFFIX = ".promptkit-tmp"
#: The start of a scratch folder's name, in the temp folder.
SCRATCH_PREFIX = "promptkit-"

#: Temporary output beside OUT, ``.OUT.pk<host>-<pid>-<random>[.old].promptkit-tmp``
#: (``.old``: an old manifest or folder moved aside while the new one is renamed).
_TEMP = re.compile(r"\..+\.pk([0-9a-f]{6})-(\d+)-[^.]+(?:\.old)?" + re.escape(TEMP_SUFFIX))
#: A lock file beside OUT (``files.Lock``): anyone's, removed when no one holds it.
_LOCK = re.compile(r"\..+\.promptkit-lock")
_SCRATCH = re.compile(re.escape(SCRATCH_PREFIX) + r"([0-9a-f]{6})-(\d+)-[^.]+")


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def owner() -> str:
    """This process, as temporary names carry it: host hash and pid."""
    return f"{_host()}-{os.getpid()}"


def temp_prefix(path: str) -> str:
    """The ``mkstemp``/``mkdtemp`` prefix of temporary output for ``path`` (with
    suffix :data:`TEMP_SUFFIX`), beside it."""
    return f".{os.path.basename(path)}.pk{owner()}-"


def scratch_prefix() -> str:
    """The prefix of a scratch folder in the temp folder."""
    return f"{SCRATCH_PREFIX}{owner()}-"


@contextlib.contextmanager
def scratch_folder() -> Iterator[str]:
    """A new scratch folder in the temp folder, locked while in use, removed after."""
    with tempfile.TemporaryDirectory(prefix=scratch_prefix()) as folder:
        fd = os.open(folder, os.O_RDONLY)
        try:
            claim(folder, fd)
            yield folder
        finally:
            os.close(fd)


#: What this process made and has not finished with, for :func:`remove_mine`.
_mine: set[str] = set()


def claim(path: str, fd: int | None = None) -> None:
    """Note ``path`` as this process's temporary file or folder (locked, given its
    open ``fd``), to be removed by :func:`remove_mine` if it is still there."""
    _mine.add(path)
    if fd is not None:
        lock(fd)


def disclaim(path: str) -> None:
    """No longer :func:`remove_mine`'s to remove (``path`` is released, and another process
    may make a file of that name)."""
    _mine.discard(path)


def remove_mine() -> None:
    """Remove what this process claimed and has not renamed or removed (a last resort
    when the process must end at once)."""
    for path in list(_mine):
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
        _mine.discard(path)


def lock(fd: int) -> None:
    """Mark the open file ``fd`` as in use: :func:`sweep` never removes a locked file.
    The lock ends with the last process holding the file open."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (someone else's counts)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is not ours
        return True
    return True


def _stale(match: re.Match[str] | None) -> bool:
    return (match is not None and match.group(1) == _host()
            and int(match.group(2)) != os.getpid() and not alive(int(match.group(2))))


def _remove(path: str) -> bool:
    """Remove ``path`` (a file or folder) unless some process holds a lock on it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # in use
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep(folder: str, pattern: re.Pattern[str]) -> list[str]:
    """Remove the entries of ``folder`` matching ``pattern`` whose owner is dead: the
    paths removed."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        if _stale(pattern.fullmatch(name)) and _remove(path):
            removed.append(path)
    return removed


def sweep_beside(path: str) -> list[str]:
    """Remove temporary output that dead runs left in the folder of ``path``, and lock
    files no one holds (a run killed with SIGKILL cannot remove its own)."""
    folder = os.path.dirname(os.path.abspath(path))
    removed = sweep(folder, _TEMP)
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if _LOCK.fullmatch(name) and _remove(os.path.join(folder, name)):
                removed.append(os.path.join(folder, name))
    return removed


def sweep_for(path: str) -> list[str]:
    """Before writing ``path``: remove what dead runs left beside it and in the temp
    folder."""
    return sweep_beside(path) + sweep_scratch()


def sweep_scratch(folder: str | None = None) -> list[str]:
    """Remove scratch folders that dead runs left in the temp folder (or ``folder``)."""
    return sweep(folder or tempfile.gettempdir(), _SCRATCH)
