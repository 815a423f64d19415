"""Errors a user can cause. The CLI turns each into one line and exit code 1."""

from __future__ import annotations

from typing import Any


class PromptkitError(Exception):
    """Base class for every error promptkit reports to a user."""


class InvalidRecordError(PromptkitError):
    """A record (one line of a file) is not valid: bad JSON, bad UTF-8, wrong shape.

    Carries the file and line so the message reads ``FILE:LINE: problem``, in the
    manner of ``jsonlines.InvalidLineError``.
    """

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
        return InvalidRecordError(self.problem, path, self.lineno)


class ConversionError(InvalidRecordError):
    """A record cannot be written in the target format without losing data."""


class ManifestError(PromptkitError):
    """A manifest is missing, unreadable, or does not match its file."""
