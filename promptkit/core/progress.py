"""Progress of each pass over the data, on stderr: what the pass does, records so far, rate.

A pass (reading the input to collect its system prompts, padding, tokenizing for
statistics...) opens a :class:`Progress` with its label and a way to read its
count; a ticker thread reads the count every :data:`INTERVAL` seconds and redraws
one line, so the loops that do the work pay nothing per record, and the line
moves even while one slow record is being tokenized. With a total (known, or
estimated from the bytes read so far), the line has a bar, a percentage and the
time left.

Shown only when wanted (the command line wants it unless ``promptkit --quiet``;
the Python API when asked, ``promptkit.run(..., progress=True)``) and stderr is a
terminal. Nothing is ever written to stdout: it may carry the records.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds between two redraws of a pass's line.
INTERVAL = 0.2

_wanted = False
#: The passes shown now (a pass may run inside another: pad's first pass, made while
#: its run is being set up).
_live: list[Progress] = []


@contextlib.contextmanager
def wanted(flag: bool = True) -> Iterator[None]:
    """Show (or not) the progress of the passes run inside this block."""
    global _wanted
    before = _wanted
    _wanted = flag
    try:
        yield
    finally:
        _wanted = before


def want(flag: bool) -> None:
    """Show (or not) the progress of every pass from now on (the command line: unless
    ``--quiet``)."""
    global _wanted
    _wanted = flag


def is_wanted() -> bool:
    return _wanted


def shown() -> bool:
    """Whether a pass started now shows its progress: wanted, and stderr a terminal."""
    if not _wanted:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No ticker thread running inside this block (forking worker processes: a child
    must not inherit a lock a ticker holds)."""
    live = [p for p in _live if p._thread is not None]  # (the innermost pass only)
    for p in live:
        p._stop_ticking()
    try:
        yield
    finally:
        for p in live:
            if p.bar is not None:
                p._start_ticking()


Count = Callable[[], int]
Total = Callable[[], "int | None"]


class Progress:
    """One pass's line on stderr while it runs (nothing when not :func:`shown`).

    ``count`` reads how many records the pass has done (default: the count
    :meth:`advance` keeps); ``total`` is their number when known, or a function
    that tells it (or an estimate, or ``None``) as the pass goes. Use as a context
    manager, or :meth:`close` when done.
    """

    def __init__(self, label: str, count: Count | None = None, *,
                 total: int | Total | None = None, unit: str = "records",
                 enabled: bool = True):
        self.label = label
        self.done = 0
        self._count: Count = count if count is not None else (lambda: self.done)
        self._total: Total = total if callable(total) else (lambda: total)
        self.bar: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if not enabled or not shown():
            return
        from tqdm import tqdm

        class Bar(tqdm):
            monitor_interval = 0  # no tqdm monitor thread: the ticker redraws

        for outer in _live:  # a pass inside another takes over the line until it ends
            outer._stop_ticking()
        first = self._total()
        self.bar = Bar(total=first, unit=f" {unit}", unit_scale=False, file=sys.stderr,
                       desc=label, leave=False, mininterval=0, miniters=1, position=0,
                       ncols=_width(), nrows=24, bar_format=_LINE if first is None else _BAR)
        _live.append(self)
        self._start_ticking()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more records done (for a pass with no counter of its own)."""
        self.done += n

    def _start_ticking(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._tick, name="promptkit-progress",
                                        daemon=True)
        self._thread.start()

    def _stop_ticking(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _tick(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        with self._lock:
            bar = self.bar
            if bar is None:
                return
            try:
                n = self._count()
                total = self._total()
            except Exception:  # a counter read mid-change: the next tick reads it again
                return
            if final:
                total = n or None  # the pass is done: all of it
            elif total is not None and total < n:
                total = None  # an estimate already passed: no bar rather than a wrong one
            bar.ncols = _width()
            if total != bar.total:
                bar.total = total
                bar.bar_format = _LINE if total is None else _BAR
            if not bar.update(n - bar.n):
                bar.refresh()

    def close(self) -> None:
        """End the pass: its line shows the final count, then is cleared."""
        if self.bar is None:
            return
        self._stop_ticking()
        self._draw(final=True)
        with self._lock:
            self.bar.close()
            self.bar = None
        with contextlib.suppress(ValueError):
            _live.remove(self)
        if _live and _live[-1].bar is not None:  # the pass this one ran inside goes on
            _live[-1]._draw()
            _live[-1]._start_ticking()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _width() -> int:
    """The terminal's width (a terminal that tells none, such as a fresh pseudo-terminal:
    ``$COLUMNS``, else 80). (tqdm would draw nothing at all on such a terminal.)"""
    import shutil

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return columns or shutil.get_terminal_size().columns


def tracked(items: Iterable[T], label: str, *, total: int | None = None,
            unit: str = "records") -> Iterator[T]:
    """The items, in order, the pass over them shown as :class:`Progress` (of ``total``,
    or of ``len(items)`` when they have one), ended when the loop ends, however it ends."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with Progress(label, total=total, unit=unit) as progress:
        for item in items:
            yield item
            progress.done += 1


#: The line without a total, and with one (a bar, percentage, time left).
_LINE = "{desc}: {n:,}{unit} [{elapsed}, {rate_fmt}]"
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,}{unit} [{elapsed}<{remaining}, {rate_fmt}]"
