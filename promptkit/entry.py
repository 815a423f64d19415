"""The console entry point (``promptkit``, ``python -m promptkit``).

It hears a Ctrl-C from its first line, before the command line and everything it uses
are imported (a third of a second, more on a busy machine): a SIGINT then ends the run
with its one line and 130, not a ``KeyboardInterrupt`` traceback (nothing has been
written by then). Until :func:`promptkit.core.interrupts.install` has run, a SIGINT is
only noted (``_signal``, built into Python, takes no import), and acted on right after.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (built into CPython, no stub)
import sys

#: The signals that came before the handlers were installed.
_early: list[int] = []


def _note(signum: int, frame: object) -> None:
    _early.append(signum)


def main() -> None:
    if _signal.getsignal(_signal.SIGINT) is not _signal.SIG_IGN:  # (ignored stays ignored)
        _signal.signal(_signal.SIGINT, _note)
    from promptkit.core import interrupts

    interrupts.install()
    try:
        if _early:
            raise interrupts.Interrupted(_early[0])
        from promptkit.cli import main as command_line
    except interrupts.Interrupted as exc:
        interrupts.report(exc)
        sys.exit(exc.exit_code)
    command_line()
