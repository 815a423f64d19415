"""Counts as a user reads them: "1 record", "2 records"."""

from __future__ import annotations

#: Nouns whose plural is not the singular with an s.
_IRREGULAR = {"entry": "entries", "reply": "replies", "prefix": "prefixes",
              "match": "matches"}


def plural(count: int, noun: str) -> str:
    """``noun`` as it goes with ``count``: singular for exactly 1 (or -1), else plural."""
    if abs(count) == 1:
        return noun
    return _IRREGULAR.get(noun, noun + "s")


def counted(count: int, noun: str) -> str:
    """``count`` and its ``noun``: ``counted(1, "record")`` is ``"1 record"``."""
    return f"{count} {plural(count, noun)}"
