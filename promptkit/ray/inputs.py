"""The input of a ``--ray`` run as chunks: one JSONL file, or many shards read as one stream.

Every pass that reads the bytes runs as Ray tasks; the driver only adds numbers up:

- a task a file: its sha256 and size, whether it is compressed and, for many shards,
  its places in the stream (:func:`promptkit.io.shards.positions`);
- the driver: each shard's first place (:func:`promptkit.io.shards.offsets`), the input's
  sha256 (:func:`promptkit.io.hashing.combined_sha256` for many);
- a task a cut of ``step`` bytes of each plain file: the cut moved to a line end and
  the lines before it counted; the driver adds them up into each chunk's first line
  and index. A compressed file cannot be cut at byte offsets: it is one chunk, read
  and decompressed streaming by one task.

The driver never reads the input's bytes: the sha256 the manifest gives the input
(:func:`promptkit.io.hashing.combined_sha256` of the shards', for many) comes from tasks.

Each chunk carries ``base``, the places in the stream before its shard, so a record's
index is ``base`` plus its line less one, and errors name the shard and its own line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from promptkit.core.errors import PromptkitError
from promptkit.io import compression, shards
from promptkit.io.files import STDIO
from promptkit.io.hashing import combined_sha256, file_sha256
from promptkit.io.jsonl import BOM

#: Read this many bytes at a time when looking for a line end or counting lines.
_READ = 1 << 20


@dataclass(frozen=True)
class Chunk:
    """One task's share of the input: ``size`` bytes of ``path`` from ``offset``
    (``size`` -1: the whole file, decompressed), whose first line is ``first_lineno``
    of that file and whose first record has index ``first_index`` in the stream."""

    number: int
    path: str
    offset: int
    size: int
    first_lineno: int
    first_index: int
    #: The places in the stream before ``path`` (one shard of many; 0 for one file).
    base: int = 0
    #: The shard as errors and skipped lines name it (one of many; "" for one file).
    name: str = ""


# ---------------------------------------------------------------- tasks (on the cluster)


def chunk_of(row: dict[str, Any]) -> Chunk:
    """The :class:`Chunk` a row of a Ray Data task describes."""
    return Chunk(int(row["number"]), str(row["path"]), int(row["offset"]), int(row["size"]),
                 int(row["first_lineno"]), int(row["first_index"]), int(row.get("base", 0)),
                 str(row.get("name", "") or ""))


def _line_start(f: Any, at: int, size: int) -> int:
    """Where the first line starting at or after byte ``at`` begins (``size``: none)."""
    if at == 0:
        return len(BOM) if os.pread(f.fileno(), len(BOM), 0) == BOM else 0
    position = at - 1  # a line begins at ``at`` when the byte before it ends one
    while position < size:
        block = os.pread(f.fileno(), _READ, position)
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(block)
    return size


def _bounds(row: dict[str, Any]) -> dict[str, Any]:
    """A cut's line-aligned start and end, and the lines between (a Ray Data task)."""
    path, size = row["path"], row["file_size"]
    with open(path, "rb") as f:
        start = _line_start(f, row["start"], size)
        end = _line_start(f, row["end"], size) if row["end"] < size else size
        lines = 0
        position = start
        while position < end:
            block = os.pread(f.fileno(), min(_READ, end - position), position)
            if not block:
                break
            lines += block.count(b"\n")
            position += len(block)
    return {"number": row["number"], "offset": start, "size": max(0, end - start),
            "lines": lines}

@dataclass
class Planned:
    """The chunks of an input and what the manifest says of it."""

    name: str
    chunks: list[Chunk]
    sha256: str
    #: Many shards: each ``{"path", "sha256", "size"}`` (``compression`` if any).
    shards: list[dict[str, Any]] | None = None
    #: Many shards: each shard's first place in the stream.
    bases: list[int] = field(default_factory=list)

    def locate(self, line: str) -> str:
        """A skipped line ``PLACE: problem`` as ``SHARD:LINE: problem`` (many shards)."""
        if not self.shards:
            return line
        head, sep, rest = line.partition(":")
        if not head.isdigit():
            return line
        place = int(head)
        import bisect

        i = max(0, bisect.bisect_right(self.bases, place - 1) - 1)
        return f"{self.shards[i]['path']}:{place - self.bases[i]}{sep}{rest}"


def paths_of(input_path: str) -> tuple[list[str], bool]:
    """The files ``--ray`` reads (many: a folder or glob of JSONL shards), refusing stdin,
    parquet shards and what is not a file."""
    if input_path == STDIO:
        raise PromptkitError("--ray reads files its tasks can open: name IN, not stdin")
    if shards.is_many(input_path):
        paths = shards.expand(input_path)
        if shards.kind_of(paths) != "jsonl":
            raise PromptkitError(f"{input_path}: --ray reads JSONL shards; parquet shards "
                                 "run without --ray")
        return paths, True
    if not os.path.isfile(input_path):
        raise PromptkitError(f"{input_path}: no such file" if not os.path.exists(input_path)
                             else f"{input_path}: not a file")
    return [input_path], False


def _file_facts(row: dict[str, Any]) -> dict[str, Any]:
    """A file's sha256, size, codec and (``count``) places in the stream: a Ray task."""
    path = row["path"]
    with open(path, "rb") as f:
        codec = compression.sniff(f.read(4096))
    sha256, size = file_sha256(path)
    return {"i": row["i"], "sha256": sha256, "size": size, "compression": codec or "",
            "lines": shards.positions(path) if row["count"] else 0}


def plan_input(ray: Any, input_path: str, step: int) -> Planned:
    """The chunks of ``input_path`` (one file, or many shards), planned on the cluster."""
    paths, many = paths_of(input_path)
    rows = [{"i": i, "path": os.path.abspath(p), "count": many} for i, p in enumerate(paths)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(_file_facts)
    facts = sorted(ds.take_all(), key=lambda r: r["i"])
    bases = shards.offsets([f["lines"] for f in facts]) if many else [0]
    cuts = [{"number": 0, "shard": i, "path": row["path"], "file_size": fact["size"],
             "start": start, "end": min(start + step, fact["size"])}
            for i, (row, fact) in enumerate(zip(rows, facts, strict=True))
            if not fact["compression"] for start in range(0, fact["size"], step)]
    for number, cut in enumerate(cuts):
        cut["number"] = number
    found: list[dict[str, Any]] = []
    if cuts:  # every plain file's cuts moved to line ends and counted, in one job
        found = sorted(ray.data.from_items(cuts, override_num_blocks=len(cuts))
                       .map(_bounds).take_all(), key=lambda r: r["number"])
    chunks: list[Chunk] = []
    for i, (row, fact, base) in enumerate(zip(rows, facts, bases, strict=True)):
        name = paths[i] if many else ""
        if fact["compression"]:
            chunks.append(Chunk(len(chunks), str(row["path"]), 0, -1, 1, base, base, name))
            continue
        lineno = 1
        for bound in (b for b, cut in zip(found, cuts, strict=True) if cut["shard"] == i):
            if bound["size"]:
                chunks.append(Chunk(len(chunks), str(row["path"]), bound["offset"], bound["size"],
                                    lineno, base + lineno - 1, base, name))
            lineno += bound["lines"]
    if not many:
        return Planned(input_path, chunks, facts[0]["sha256"])
    described = []
    for path, fact in zip(paths, facts, strict=True):
        entry: dict[str, Any] = {"path": path, "sha256": fact["sha256"], "size": fact["size"]}
        if fact["compression"]:
            entry["compression"] = fact["compression"]
        described.append(entry)
    return Planned(input_path, chunks, combined_sha256([f["sha256"] for f in facts]),
                   described, bases)


__all__ = ["Chunk", "Planned", "chunk_of", "paths_of", "plan_input"]
