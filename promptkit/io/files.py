"""Writing files: one discipline for every file promptkit writes; and reading a file
whole (:func:`read_whole`), with a bound.

A leaf module (errors, :mod:`promptkit.core.limits` and :mod:`promptkit.core.leftovers` only).
Every output (a sink's
OUT, its manifest, side files such as ``OUT.system.txt``, ``--per-request``, plots,
publish folders) is written to a temporary file in the target's own folder,
flushed to disk (``fsync``) and renamed into place only when everything a run writes is finished:

- the paths a run writes (OUT, its manifest, its side files) are checked before
  any work: each in an existing folder, none a folder, none the input, no two the
  same path, none a device, FIFO or socket (:func:`refuse_special`: a rename would
  replace the device itself, ``/dev/null`` included; ``-`` is stdout);
- :class:`Lock` makes a second run writing the same OUT at the same time stop at
  once, with one line;
- :meth:`Outputs.commit` puts them in place in an order that never shows a new
  OUT beside an old manifest: the old manifest is moved aside first (to a hidden
  temporary name, put back if OUT cannot be renamed), then OUT and the side files
  are renamed, then the manifest. A crash (power loss, ``kill -9``) between two
  renames leaves the old OUT or the new one *without* a manifest (``verify`` then
  says so), never OUT beside a manifest of another run;
- a failed write removes its temporary files and never raises over the error that
  stopped it; every ``OSError`` becomes one line naming the path and the reason
  (:func:`os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from typing import Any

from promptkit.core import leftovers
from promptkit.core.errors import PromptkitError
from promptkit.core.limits import MAX_WHOLE_FILE, size_text

#: The path that stands for stdin (reading) or stdout (writing).
STDIO = "-"
#: Bytes read or written at a time.
CHUNK = 1 << 20
#: The suffix of every temporary file or folder promptkit writes beside a target.
TMP_SUFFIX = ".promptkit-tmp"
LOCK_SUFFIX = ".promptkit-lock"


def display_name(path: str) -> str:
    """How messages name an input path (``-``: ``<stdin>``)."""
    return "<stdin>" if path == STDIO else path


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none): a
    library's message of many lines, cut to promptkit's one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def os_error(exc: OSError, path: str | None = None) -> PromptkitError:
    """One line for an ``OSError``: the path (``path``, else the one the error names)
    and what the errno means (``No space left on device``)."""
    name = path or exc.filename or "promptkit"
    code = exc.errno
    if not code:  # pyarrow's IO errors carry it in their text: "[errno 28] No space ..."
        found = re.search(r"\[errno (\d+)\]", str(exc))
        code = int(found.group(1)) if found else None
    reason = os.strerror(code) if code else (exc.strerror or str(exc))
    return PromptkitError(f"{name}: {reason}")


def read_whole(path: str, what: str, limit: int = MAX_WHOLE_FILE) -> bytes:
    """The bytes of a file read whole (a manifest, a filler or system prompt file, a
    .env file): at most ``limit`` of them, and never a device's (``/dev/zero`` has no
    end; a tape's would be consumed). A pipe (``<(cmd)``) is read up to ``limit``.

    ``what`` names the file's part (``manifest``, ``filler file``) in the one line
    raised for a device or a file over the limit; an ``OSError`` (no such file, no
    permission, a folder) is raised as ``open`` raises it, for the caller to word.
    """
    os.stat(path)  # (no such file: raised as open raises it)
    kind = special_kind(path)
    if kind is not None and kind != "a FIFO":
        raise PromptkitError(f"{path}: is {kind}, not a {what}")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PromptkitError(f"{path}: over {size_text(limit)}, more than a {what} can be; "
                             "is it the right file?")
    return data


def writable(path: str) -> None:
    """Raise one line unless ``path`` can be written: its folder must exist and it
    must be neither a folder nor a device, FIFO or socket. Checked before a run starts,
    so a bad path costs nothing and leaves nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PromptkitError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise PromptkitError(f"{path}: is a folder")
    refuse_special(path)


#: What a path that is not a regular file or folder is, by its ``stat`` mode.
_SPECIAL = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def special_kind(path: str) -> str | None:
    """What ``path`` (or what a link there points to) is when it is a device, a FIFO or a
    socket (``"a FIFO"``); ``None`` for a file, a folder or nothing there."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # not there (a dangling link too)
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def refuse_special(path: str) -> None:
    """Raise one line if ``path`` (or what a link there points to) is a device, a FIFO
    or a socket: promptkit writes a new file and renames it into place, which would
    replace the device itself (as root, ``/dev/null``). Output to stdout is ``-``."""
    what = special_kind(path)
    if what is not None:
        raise PromptkitError(f"{path}: is {what}, not a regular file: promptkit writes "
                             "files and will not replace it (- writes to stdout)")


def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (existing or not)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_clashes(targets: list[tuple[str, str]], inputs: Iterable[str] = ()) -> None:
    """Raise one line if two of ``targets`` (``(path, what it is)``) are the same path,
    or one of them is an input: a run writes each file once and reads none it writes."""
    paths = [(p, what) for p, what in targets if p != STDIO]
    for i, (path, what) in enumerate(paths):
        for source in inputs:
            if source != STDIO and os.path.exists(source) and same_file(path, source):
                raise PromptkitError(f"{path}: refusing to overwrite the input file"
                                     if what == "OUT" else
                                     f"{path}: {what} would overwrite the input file")
        for other, other_what in paths[:i]:
            if same_file(path, other):
                raise PromptkitError(f"{path}: {other_what} and {what} are the same file; "
                                     "name another")


def fsync_file(path: str) -> None:
    """Flush a finished file's bytes to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """Make the renames in ``folder`` durable (best effort: not every system can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str | None) -> None:
    """Remove a temporary file or folder; never raise (it runs while another error is
    on its way to the user, which must not be replaced by this one)."""
    if path is None:
        return
    import shutil

    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def temporary(path: str, suffix: str = TMP_SUFFIX) -> tuple[int, str]:
    """``mkstemp`` beside ``path``; an ``OSError`` (read-only folder, no permission)
    becomes one line naming ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=leftovers.temp_prefix(path), suffix=suffix,
                                   dir=folder)
    except OSError as exc:
        raise os_error(exc, path) from None
    leftovers.claim(tmp, fd)  # locked while in use: a later run's sweep leaves it
    return fd, tmp


def stage_text(path: str, text: str) -> str:
    """Write ``text`` to a temporary file beside ``path``, flushed to disk; return its
    name (rename it with :func:`put_in_place`). Nothing is left on failure."""
    writable(path)
    fd, tmp = temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        remove_quietly(tmp)
        raise os_error(exc, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return tmp


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (temporary file, fsync, then rename)."""
    tmp = stage_text(path, text)
    try:
        put_in_place(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def put_in_place(tmp: str, path: str, mode: int = 0o666) -> None:
    """Rename a finished temporary file (or folder) to ``path``, with the mode a new
    file would have (``mkstemp`` makes 0600), so an atomic write looks like any other."""
    refuse_special(path)  # (checked before the run; something may have taken its place)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, mode & ~umask)
        if not os.path.isdir(tmp):  # on disk before it has its name
            fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise os_error(exc, path) from None
    fsync_folder(os.path.dirname(os.path.abspath(path)))


def replace_folder(made: str, path: str, mode: int = 0o777) -> None:
    """Rename the finished folder ``made`` to ``path`` (with :func:`put_in_place`); a
    folder already at ``path`` is first moved aside (``made``'s name with ``.old``,
    which a later run sweeps if this one is killed), put back if the rename fails, and
    removed once the new folder is in place: ``path`` holds the old folder or the new
    one, never a mix (it is missing only between the two renames)."""
    old = None
    if os.path.isdir(path):
        old = made.removesuffix(TMP_SUFFIX) + ".old" + TMP_SUFFIX
        try:
            os.replace(path, old)
        except OSError as exc:
            raise os_error(exc, path) from None
    try:
        put_in_place(made, path, mode)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        raise
    remove_quietly(old)


class Lock:
    """An exclusive lock on writing ``path``: ``flock`` on a hidden lock file beside it
    (``.NAME.promptkit-lock``), removed when released. A second writer of the same
    path fails at once with one line instead of racing the first.

    Every writer of a file or folder takes it first (:class:`Outputs`, ``publish``,
    ``--ray``), so taking it is where what killed runs left beside ``path`` and in the
    temp folder is removed (see :mod:`promptkit.core.leftovers`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        self.lock_path = os.path.join(folder, f".{os.path.basename(path)}{LOCK_SUFFIX}")
        self._fd: int | None = None

    def acquire(self) -> Lock:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise os_error(exc, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise PromptkitError(f"{self.path}: another promptkit run is writing "
                                         "it; try again when it is done") from None
                raise os_error(exc, self.path) from None
            # The holder before us may have removed the file it locked: lock the one
            # that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                # Removed by a run that must end at once (see promptkit.core.interrupts).
                leftovers.claim(self.lock_path)
                try:
                    leftovers.sweep_for(self.path)
                except BaseException:
                    self.release()
                    raise
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)
        leftovers.disclaim(self.lock_path)  # (another run may make one there next)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Outputs:
    """The files one run writes beside OUT: its manifest and side files, staged as
    temporary files and put in place with OUT (see the module's guarantee).

    Made before any work: it checks the paths and takes the lock on OUT.
    """

    def __init__(self, output: str, manifest: str | None, side_files: Iterable[str] = (),
                 inputs: Iterable[str] = (), stale: Iterable[str] = ()) -> None:
        self.output = output
        self.manifest = manifest
        self.side_files = list(side_files)
        #: Files that describe the old OUT and would not describe the new one (its
        #: manifest at the default path when this run's goes elsewhere): removed with it.
        self.stale = [p for p in stale if p not in (manifest, STDIO)
                      and not any(same_file(p, i) for i in inputs if i != STDIO)]
        targets = [(output, "OUT"), *((p, "a side file") for p in self.side_files)]
        if manifest is not None:
            targets.append((manifest, "the manifest"))
        if output != STDIO and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            writable(output)  # its folder does not exist: say so of OUT first
        refuse_clashes(targets, inputs)
        for path, _ in targets:
            if path == STDIO:
                continue
            if path != output:
                writable(path)  # OUT is checked by its sink, which knows its format
            else:
                refuse_special(path)  # before its lock file is made beside it
        self._staged: list[tuple[str, str]] = []
        lock_on = output if output != STDIO else manifest
        self._lock = Lock(lock_on).acquire() if lock_on not in (None, STDIO) else None

    def stage(self, path: str, text: str) -> None:
        """Write a side file's text (or the manifest's) to its temporary file now."""
        self._staged.append((stage_text(path, text), path))

    def commit(self, put_output: Any) -> None:
        """Put everything in place: the old manifest goes first, then ``put_output()``
        renames OUT, then the side files, then the manifest."""
        manifest_tmp = [tmp for tmp, path in self._staged if path == self.manifest]
        described = [*([self.manifest] if manifest_tmp else []), *self.stale]
        aside: list[tuple[str, str]] = []
        try:
            for path in described:  # aside, not deleted: put back if OUT cannot be renamed
                if path is not None and os.path.isfile(path):
                    fd, old = temporary(path, ".old" + TMP_SUFFIX)
                    os.close(fd)
                    try:
                        os.replace(path, old)
                    except OSError as exc:
                        remove_quietly(old)
                        raise os_error(exc, path) from None
                    aside.append((old, path))
            put_output()
        except BaseException:
            for old, path in aside:
                with contextlib.suppress(OSError):
                    os.replace(old, path)
            raise
        for old, _ in aside:
            remove_quietly(old)
        for tmp, path in self._staged:
            if path != self.manifest:
                put_in_place(tmp, path)
        for tmp in manifest_tmp:
            put_in_place(tmp, self.manifest)  # type: ignore[arg-type]
        self._staged = []

    def abort(self) -> None:
        """Remove every staged file; never raises."""
        for tmp, _ in self._staged:
            remove_quietly(tmp)
        self._staged = []

    def release(self) -> None:
        self.abort()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
