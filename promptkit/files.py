"""Writing files atomically: a temporary file beside the target, renamed into place.

A leaf module (errors only). A failed or interrupted write leaves no partial file
and never damages the file it was to replace.
"""

from __future__ import annotations

import os
import tempfile

from .errors import PromptkitError


def writable(path: str) -> None:
    """Raise one line unless ``path`` can be written: its folder must exist. Checked
    before a run starts, so a bad side-file path costs nothing and leaves nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PromptkitError(f"{path}: folder {folder} does not exist")


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    writable(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        put_in_place(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def put_in_place(tmp: str, path: str, mode: int = 0o666) -> None:
    """Rename a finished temporary file (or folder) to ``path``, with the mode a new
    file would have (``mkstemp`` makes 0600), so an atomic write looks like any other."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, mode & ~umask)
    os.replace(tmp, path)
