"""Keys of prompts, to count the distinct prompts a file holds.

:func:`prompt_key` is a 64-bit key of what a server sees first (the prompt, hash ids and
``cache_salt``); :func:`stable_prompt_key` is the same in every process (for counts
merged across machines). :class:`KeyBuckets` holds many keys on disk, so a distinct
count of 100 million records sorts a 64th of them at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import orjson

from promptkit.core.records import Record
from promptkit.io.files import STDIO
from promptkit.io.jsoncodec import dumps_exact


def distinct_sorted(keys: Any) -> int:
    """How many distinct values a sorted numpy array holds."""
    return int(len(keys) and 1 + (keys[1:] != keys[:-1]).sum())


class KeyBuckets:
    """Prompt keys in 64 unnamed temporary files (gone when closed, or when the process
    ends however it ends), one for each value of a key's top 6 bits: a distinct count
    then sorts one bucket at a time, so memory holds a 64th of the keys."""

    BITS = 6

    def __init__(self, beside: str) -> None:
        import tempfile

        folder = os.path.dirname(os.path.abspath(beside)) if beside != STDIO else None
        try:
            self.files = [tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (count closes)
                          for _ in range(1 << self.BITS)]
        except OSError:  # a folder one may not write temporary files in: the default one
            self.files = [tempfile.TemporaryFile()  # noqa: SIM115 (count closes them)
                          for _ in range(1 << self.BITS)]

    def _split(self, keys: Any) -> list[Any]:
        import numpy as np

        values = np.frombuffer(keys, dtype=np.int64)
        buckets = (values.view(np.uint64) >> np.uint64(64 - self.BITS)).astype(np.intp)
        order = np.argsort(buckets, kind="stable")
        ends = np.cumsum(np.bincount(buckets, minlength=1 << self.BITS))
        ordered = values[order]
        return np.split(ordered, ends[:-1])

    def add(self, keys: Any) -> None:
        for f, part in zip(self.files, self._split(keys), strict=True):
            if len(part):
                f.write(part.tobytes())

    def count(self, rest: Any) -> int:
        """The distinct keys in the files and in ``rest`` (the keys still in memory);
        the files are closed."""
        import numpy as np

        total = 0
        for f, part in zip(self.files, self._split(rest), strict=True):
            f.seek(0)
            keys = np.concatenate([np.frombuffer(f.read(), dtype=np.int64), part])
            f.close()
            total += distinct_sorted(np.sort(keys))
        return total


def prompt_key(record: Record) -> int:
    """A 64-bit key of what the server sees first: the prompt, hash ids and salt (a
    record with only an input length is a prompt of its own).

    Python's hash of a string is salted per process: keys agree within a process and
    its forks (``--workers``), not across processes started apart (Ray workers: those
    use :func:`stable_prompt_key`)."""
    return hash(key_parts(record))


def stable_prompt_key(record: Record) -> int:
    """:func:`prompt_key`'s key made the same in every process (blake2b of the parts'
    repr, 64 bits): for distinct counts merged from processes that are not forks of
    one another."""
    return stable_key(key_parts(record))


def stable_key(parts: tuple[Any, ...]) -> int:
    """The key of a prompt's parts (see :func:`stable_prompt_key`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def salt_of(extra: dict[str, Any] | None) -> Any:
    """A request's ``cache_salt``, for a key: as it is (a string, as servers take it), or
    any other JSON value as its text (a list or an object cannot be hashed)."""
    salt = extra.get("cache_salt") if extra else None
    if salt is None or salt.__class__ is str:
        return salt
    return json.dumps(salt, sort_keys=True)


def key_parts(record: Record) -> tuple[Any, ...]:
    extra = record.extra
    salt = salt_of(extra)
    messages = record.messages
    if len(messages) == 1 and messages[0].content.__class__ is str:
        return (messages[0].role, messages[0].content, salt)
    if not messages and not record.hash_ids:
        # Only a length: AIPerf makes a prompt of random tokens for each such record.
        return ("synthetic", record.index if record.index is not None else id(record))
    parts: list[Any] = [record.input_length, salt]
    if record.hash_ids:
        parts.append(tuple(record.hash_ids))
    for m in messages:
        content = m.content
        parts.append(m.role)
        if isinstance(content, str):
            parts.append(content)
        else:
            try:
                parts.append(orjson.dumps(content))
            except TypeError:  # an integer beyond 64 bits
                parts.append(dumps_exact(content))
    return tuple(parts)
