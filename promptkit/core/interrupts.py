"""Ending on SIGINT, SIGTERM and SIGHUP as cleanly as on an error, and workers that end
with the process that started them.

A leaf module (the standard library and :mod:`promptkit.core.leftovers`), quick to import:
the command line installs its handlers first thing (:mod:`promptkit.entry`).

- :func:`install` (the command line only) turns SIGTERM and SIGHUP, like SIGINT, into
  :class:`Interrupted`, a ``KeyboardInterrupt``: it unwinds the run through the same
  ``except``/``finally`` blocks an error does, so temporary files and scratch chunks
  are removed and worker pools ended. Further signals are then ignored, so that
  cleaning up is not itself interrupted; a run that has not ended ``GRACE`` seconds
  later removes what it was writing and exits at once. ``timeout`` and CI cancellation send SIGTERM;
  a closed terminal sends SIGHUP.
- :func:`stdout_closed` ends a run whose stdout's reader has gone (``| head``) quietly,
  once it has unwound the same way.
- :func:`pool_starting` and :func:`worker_started` bracket the start of worker
  processes: workers ignore SIGINT (a Ctrl-C reaches the whole process group; the
  parent ends them), die on SIGTERM without a traceback, and die with their parent
  even when it is killed with SIGKILL (``PR_SET_PDEATHSIG`` on Linux, else a thread
  that watches the parent); :func:`dies_with_this_process` does the same for a
  program started with ``subprocess`` (``promptkit bench``'s AIPerf).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

TYPE_CHECKING = False  # (not typing's: see the module's first lines)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, NoReturn

#: The signals that end a run cleanly (those the platform has).
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is the shell's 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: Seconds the run has to clean up and end after a signal, before it is ended at once.
GRACE = 3.0
_reported = False


def message(signum: int) -> str:
    return (f"promptkit: interrupted ({signal.Signals(signum).name}); "
            "unfinished output removed")


def report(exc: Interrupted) -> None:
    """Print the one line an interrupted run ends with."""
    global _reported
    if not _reported:
        _reported = True
        print(message(exc.signum), file=sys.stderr, flush=True)


def _stop(signum: int, frame: Any) -> None:
    for each in SIGNALS:  # clean up undisturbed; SIGKILL still ends it
        signal.signal(each, signal.SIG_IGN)
    threading.Thread(target=_deadline, args=(signum,), daemon=True,
                     name="promptkit-deadline").start()
    raise Interrupted(signum)


def _deadline(signum: int) -> None:
    """End the process if it has not ended ``GRACE`` seconds after the signal.

    An exception raised at an arbitrary point can leave a library's threads waiting
    for each other (measured: tiktoken's thread pool, joined during the unwinding,
    never ends). Then remove what this process was writing and exit at once.
    """
    from promptkit.core import leftovers

    time.sleep(GRACE)
    leftovers.remove_mine()
    if not _reported:
        with contextlib.suppress(OSError, ValueError):
            os.write(2, (message(signum) + "\n").encode())
    os._exit(128 + signum)


#: SIGPIPE's number (13 on Linux): the exit code of a closed stdout is 128 + it.
SIGPIPE = getattr(signal, "SIGPIPE", 13)


def stdout_closed() -> NoReturn:
    """End quietly once stdout's reader has gone (``promptkit ... | head``), after the run
    has unwound as on an error (its temporary files and scratch folder removed): exit
    128 + SIGPIPE, as a process SIGPIPE ends, with nothing on stderr. Stdout is pointed
    at the null device first, so that flushing it at exit raises nothing more."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    sys.exit(128 + SIGPIPE)


def install() -> None:
    """Raise :class:`Interrupted` on SIGINT, SIGTERM and SIGHUP (in the main thread).

    A signal already ignored when the process started (``nohup`` ignores SIGHUP, a
    shell's background job SIGINT) stays ignored.
    """
    for each in SIGNALS:
        if signal.getsignal(each) is not signal.SIG_IGN:
            signal.signal(each, _stop)


# ---------------------------------------------------------------- worker processes

#: The pid of the process that starts workers (read in the forked worker).
_parent: int | None = None


@contextlib.contextmanager
def pool_starting() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while worker processes are forked.

    A worker then cannot die of a Ctrl-C (with a traceback) before
    :func:`worker_started` sets it to ignore one; the parent gets what was held as
    soon as the workers are started. Threads started here (a pool's) keep the
    signals held, so signals reach the main thread, which handles them.
    """
    global _parent
    _parent = os.getpid()
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def worker_started() -> None:
    """In a worker, first thing: ignore SIGINT, die quietly of SIGTERM and SIGHUP, and
    die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for each in SIGNALS:
        if each != signal.SIGINT:
            signal.signal(each, signal.SIG_DFL)
    if hasattr(signal, "SIGPIPE"):  # (the parent hears a closed stdout, not its workers)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    parent = _parent if _parent is not None else os.getppid()
    if not _die_with_parent():
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                         name="promptkit-parent-watch").start()
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)


def _prctl() -> Any:
    """libc's ``prctl`` (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> bool:
    """Ask Linux to send this process SIGKILL when its parent ends (True if it will)."""
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0


def dies_with_this_process() -> Callable[[], None]:
    """What a program started with ``subprocess`` runs before it is executed
    (``preexec_fn``) so that it does not outlive this process, even one killed with
    SIGKILL: Linux sends it SIGKILL when this process ends (``PR_SET_PDEATHSIG``, kept
    across exec), and it exits at once if this process has already ended. libc is
    looked up here, so the child only calls it. (Elsewhere than on Linux: nothing.)"""
    prctl, parent = _prctl(), os.getpid()

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # ended before the above took effect
                os._exit(1)

    return preexec


def _watch_parent(parent: int, every: float = 0.5) -> None:
    """End this process once ``parent`` is no longer its parent (where prctl is not
    there)."""
    stop = threading.Event()
    while not stop.wait(every):
        if os.getppid() != parent:
            os._exit(1)
