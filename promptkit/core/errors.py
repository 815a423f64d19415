"""Every error a user can cause, in one place. The CLI turns each into one line: exit
code 1, or 2 for what is a usage error (``BadOptionError``, ``SettingError``)."""

from __future__ import annotations

import re
from typing import Any


class PromptkitError(Exception):
    """Base class for every error promptkit reports to a user."""


class InvalidRecordError(PromptkitError):
    """A record (one line of a file) is not valid: bad JSON, bad UTF-8, wrong shape.

    Carries the file and line so the message reads ``FILE:LINE: problem``, in the
    manner of ``jsonlines.InvalidLineError``.
    """

    #: Left out and counted even without ``--skip-invalid`` (see :class:`EmptyRecordError`).
    always_skipped = False

    def __init__(self, message: str, path: str | None = None, lineno: int | None = None):
        self.problem = message
        self.path = path
        self.lineno = lineno
        super().__init__(self._format())

    def _format(self) -> str:
        if self.path is None:
            return self.problem
        if self.lineno is None:
            return f"{self.path}: {self.problem}"
        return f"{self.path}:{self.lineno}: {self.problem}"

    def __reduce__(self) -> tuple[Any, ...]:  # keep the parts across processes
        return (self.__class__, (self.problem, self.path, self.lineno))

    def located(self, path: str) -> InvalidRecordError:
        """The same error, naming ``path`` as the file (for errors raised without one)."""
        return type(self)(self.problem, path, self.lineno)


class EmptyRecordError(InvalidRecordError):
    """A line that holds nothing to send (a ShareGPT conversation with no turns, which
    real ShareGPT dumps have): every command leaves it out and counts it, as it leaves
    out a blank line, with or without ``--skip-invalid``."""

    always_skipped = True


class FormatUnknownError(InvalidRecordError):
    """A file's first records fit no format (their keys are no format's)."""


class ConversionError(InvalidRecordError):
    """A record cannot be written in the target format without losing data."""


class BadOptionError(PromptkitError):
    """Options that do not go together, or do not fit the input (found below the command
    line): a usage error, exit 2, as a bad option is."""


class OptionNeededError(BadOptionError):
    """An option the input turned out to need (known once its first record is read):
    a usage error, exit 2, as a bad option is."""


class CheckError(PromptkitError):
    """A check that cannot run as asked (no text, a template the tokenizer lacks)."""


class PadError(PromptkitError):
    """A target the base cannot meet (shorter than the base, or unreachable)."""


class SettingError(PromptkitError):
    """A bad setting of 'promptkit bench' or the runner: exit 2."""


class TokenizerError(PromptkitError):
    """A tokenizer that cannot be found or loaded."""


class ManifestError(PromptkitError):
    """A manifest is missing, unreadable, or does not match its file."""


class Skipping:
    """What an operation does with a record it cannot take: raise its
    :class:`InvalidRecordError` (the default), or, with ``skip_invalid`` (``--skip-invalid``),
    leave the record out and list it in ``skipped`` as ``"LINE: OP: problem"``.

    Every operation's state is one (see :mod:`promptkit.runner.pipeline`), so a chunked or
    parallel run merges the skipped lines of its chunks as it merges the rest.
    """

    def __init__(self, skip_invalid: bool = False, op: str = "") -> None:
        self.skip_invalid = skip_invalid
        self.op = op
        self.skipped: list[str] = []

    def reject(self, exc: InvalidRecordError) -> None:
        """Raise ``exc``, or note the record it names as skipped."""
        if not (self.skip_invalid or exc.always_skipped):
            raise exc
        self.skipped.append(f"{exc.lineno}: {self.op}: {exc.problem}" if self.op
                            else f"{exc.lineno}: {exc.problem}")


#: What differs from record to record in a problem's text: a JSON error's position, numbers.
_POSITION = re.compile(r":? line \d+ column \d+ \(char \d+\)| at column \d+(?: \(.*\))?$")
_NUMBER = re.compile(r"\d+")


def skip_reason(skipped: str) -> str:
    """The reason a skipped line (``"LINE: problem"``) is counted under: its problem
    without what is particular to the record (a JSON error's position, numbers, which
    become ``N``), so records with the same problem share one reason."""
    head, _, problem = skipped.partition(": ")
    # ``SHARD:LINE: problem`` when the input is many files (see promptkit.io.shards).
    if not head.isdigit() and head != "None" and not head.rpartition(":")[2].isdigit():
        problem = skipped
    return _NUMBER.sub("N", _POSITION.sub("", problem))


def skipped_section(lines: list[str], limit: int = 100) -> dict[str, Any]:
    """The ``skipped`` section of a manifest (or report): how many records were left
    out, how many for each reason (commonest first), and the first ``limit`` lines."""
    counts: dict[str, int] = {}
    for line in lines:
        reason = skip_reason(line)
        counts[reason] = counts.get(reason, 0) + 1
    by_reason = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return {"count": len(lines), "by_reason": by_reason, "lines": lines[:limit]}
