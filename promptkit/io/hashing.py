"""The sha256 of files, read once: every file promptkit hashes (inputs, shards, parts,
written tables, published files) is hashed here.

A leaf of :mod:`promptkit.io` (:mod:`promptkit.io.files` only).
"""

from __future__ import annotations

import hashlib
from typing import Any

from promptkit.io.files import CHUNK


def hash_file(path: str, *digests: Any) -> int:
    """Feed the bytes of the file at ``path`` to each of ``digests`` (anything with an
    ``update(bytes)``: a hashlib digest, or a counter of lines), :data:`CHUNK` bytes at
    a time; return the file's size."""
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            for digest in digests:
                digest.update(block)
            size += len(block)
    return size


class LineCount:
    """The newlines of the bytes given to :meth:`update` (beside a digest, in
    :func:`hash_file`)."""

    def __init__(self) -> None:
        self.lines = 0

    def update(self, block: bytes) -> None:
        self.lines += block.count(b"\n")


def file_sha256(path: str) -> tuple[str, int]:
    """``(sha256, size)`` of a file's bytes."""
    digest = hashlib.sha256()
    size = hash_file(path, digest)
    return digest.hexdigest(), size


def combined_sha256(digests: list[str]) -> str:
    """The sha256 of many files as one input: that of their own sha256s (hex), one a line,
    in order (so it is computed from the files' hashes alone, wherever each was hashed)."""
    return hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()
