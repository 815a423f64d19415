"""The global parts of promptkit's commands as distributed Ray Data operations.

Record-wise work (tokenizing, hashing blocks) needs no order and maps chunk by chunk;
three computations look at the whole stream. Here each is a few shuffles over a
:class:`ray.data.Dataset`, so the driver holds only small results (a count a bucket,
a value histogram), never every record or block:

- :func:`number_blocks`: ``hash-trace``'s ids, numbered by first appearance in stream
  order, the same ids :class:`promptkit.ops.hashtrace.HashIds` gives on one machine;
- :func:`unbounded_check`: ``check``'s report for an unbounded vLLM cache, where a
  block hits exactly when its chained hash first appeared at an earlier request (the
  same first-appearance computation); :func:`sequence_reason` says when a check
  needs the requests in sequence instead (a bounded cache, sessions, wrap-around);
- :func:`merge_stats`: ``stats``' figures from per-chunk partial statistics
  (:func:`stats_rows`), exact: counts, totals, and percentiles taken from a
  distributed histogram of the values (its size is the number of distinct values).

The row builders (:func:`hash_trace_rows`, :func:`check_rows`, :func:`stats_rows`)
turn a chunk of records into the rows these functions take, with promptkit's own
single-machine code, so a Ray task maps a chunk of records to rows with them.

How a first appearance is found without the driver seeing the blocks: the rows are
exploded to one row a block occurrence ``(key, index, position)``; they are
partitioned by a hash of the key, so every occurrence of a key meets in one task,
which takes the earliest and attaches it to each occurrence (a shuffle join done in
pyarrow). Numbering needs global ranks: the distinct first appearances are bucketed
by ranges of record index, each bucket counted (the driver sums the counts to
offsets: one number a bucket), then each bucket ranks its own. A last shuffle by
record index puts every record's blocks back together in order.

Limits: all occurrences of one key meet in one task, so a block shared by N records
costs that task N rows (about 40 bytes each); a record's position must fit in 32
bits and its index in 31.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from promptkit.core.records import Record
from promptkit.ops.check import PREFIX_WINDOW, CheckOptions, Setup, Unit, template_figures
from promptkit.ops.hashtrace import DIGEST, hashed_records
from promptkit.ops.stats import Stats, collect

if TYPE_CHECKING:
    from ray.data import Dataset

#: Bits of a block's position in the order key ``index << POSITION_BITS | position``.
POSITION_BITS = 32
#: The percentiles ``stats`` reports, and those of ``check``'s figures.
STATS_PERCENTILES = (50, 90, 99)


class NeedsSequence(Exception):
    """The check needs the requests in sequence (one node): the reason is the message."""


# ---------------------------------------------------------------- row builders


def hash_trace_rows(records: Iterable[Record], *, tokenizer: str, block_size: int,
                    rate: float | None = None, first_index: int = 0,
                    skip_invalid: bool = False) -> Iterator[dict[str, Any]]:
    """``hash-trace``'s rows of a chunk of records: ``{"index", "blocks", "record"}``,
    ``blocks`` the chained block digests (``bytes`` of 16, the last block partial) that
    :func:`number_blocks` numbers, ``record`` the hash-id record (ids not yet set:
    ``record.hash_ids = ids`` after numbering). ``index`` is the record's own index, or
    ``first_index`` plus its position in the chunk. A record with no text raises
    :class:`~promptkit.core.errors.InvalidRecordError` (or is left out with
    ``skip_invalid``), as on one machine."""
    from promptkit.core.errors import Skipping

    position = first_index
    indexed = []
    for record in records:
        if record.index is None:
            record.index = position
        position += 1
        indexed.append(record)
    for record, digests in hashed_records(indexed, tokenizer=tokenizer, block_size=block_size,
                                          rate=rate, threads=1,
                                          skipping=Skipping(skip_invalid, "hash_trace")):
        yield {"index": record.index,
               "blocks": [digests[i:i + DIGEST] for i in range(0, len(digests), DIGEST)],
               "record": record}


class _IndexedSetup(Setup):
    """A check's :class:`~promptkit.ops.check.Setup` that keeps each entry's record index."""

    def _unsent(self, record: Record, unit: Unit, lead: bytes) -> tuple[Unit, bytes]:
        unit, lead = super()._unsent(record, unit, lead)
        unit.index = record.index  # type: ignore[attr-defined]
        return unit, lead


def check_setup(first: Record, options: CheckOptions, tokenizer: Any = None,
                tokenizer_spec: str | None = None, skip_invalid: bool = False) -> Setup:
    """The :class:`~promptkit.ops.check.Setup` :func:`check_rows` takes, from the stream's
    first record (as :func:`promptkit.ops.check.check_records` makes it)."""
    from promptkit.core.errors import Skipping

    return _IndexedSetup(first, options, tokenizer, tokenizer_spec,
                         Skipping(skip_invalid, "check"))


def check_rows(records: Iterable[Record], setup: Setup) -> Iterator[dict[str, Any]]:
    """``check``'s rows of a chunk of records (each with its ``index``), for
    :func:`unbounded_check`: ``index``; ``blocks``, the keys of the request's full
    blocks as the simulated vLLM cache knows them (``bytes``); ``length`` (prompt
    tokens); ``lead``, chained digests of the first 1, 2 ... leading tokens (or ids,
    up to :data:`~promptkit.ops.check.PREFIX_WINDOW`), whose earlier appearances give the
    first differing token; ``first``, the record's first block as ``check`` counts
    shared first blocks; ``salted``, ``salt_not_sent``, ``tools``; ``single`` (false for a turn of
    a session or a multi-turn conversation, which need the sequence).
    ``setup`` is :func:`check_setup`'s."""
    unit_bytes = 8 if setup.hash_ids else 4
    head = unit_bytes if setup.hash_ids else unit_bytes * setup.block_size
    for unit, lead in setup.entries(records):
        if unit.requests:
            request = unit.requests[0]
            blocks, length, salt = request.key, request.length, request.salt
        else:  # a hash-id line of a session: sent after its earlier turns (in sequence)
            assert unit.part is not None
            blocks, length, salt = [], unit.part.length, unit.part.salt
        yield {"index": unit.index,  # type: ignore[attr-defined]
               "blocks": [int(key).to_bytes(8, "big") for key in blocks],
               "length": length,
               "lead": _prefix_digests(lead, unit_bytes),
               "first": lead[:head],
               "salted": salt is not None,
               "salt_not_sent": unit.salt_not_sent, "tools": unit.tools,
               "single": unit.session is None and len(unit.requests) == 1}


def _prefix_digests(lead: bytes, unit: int) -> list[bytes]:
    """A digest of each leading run of ``unit``-byte items of ``lead``: two records
    share the first k items exactly when their k-th digests are equal."""
    out = []
    parent = b""
    for start in range(0, len(lead) - unit + 1, unit):
        parent = hashlib.blake2b(parent + lead[start:start + unit], digest_size=DIGEST).digest()
        out.append(parent)
    return out


def stats_rows(records: Iterable[Record], *, tokenizer: str | None, chat_template: str = "none",
               first_index: int = 0) -> dict[str, Any]:
    """``stats``' row of a chunk of records: the chunk's :class:`~promptkit.ops.stats.Stats`
    (counted by :func:`promptkit.ops.stats.collect`, one thread), flattened for
    :func:`merge_stats`. ``first_index`` orders the chunks (the index of its first
    record): shared system prompts tie-break on first appearance, and the first lines
    with no text are listed in order."""
    from promptkit.core.tokenizers import cached_tokenizer

    stats = collect(records, cached_tokenizer(tokenizer) if tokenizer else None, threads=1,
                    chat_template=chat_template, tokenizer_spec=tokenizer)
    return stats_row(stats, first_index)


def stats_row(stats: Stats, first_index: int) -> dict[str, Any]:
    """A :class:`~promptkit.ops.stats.Stats` as a row of :func:`merge_stats`."""
    return {"first_index": first_index, "records": stats.records, "requests": stats.requests,
            "turns": stats.turns, "unsessioned": stats.unsessioned, "stated": stats.stated,
            "no_text": stats.no_text, "no_text_lines": list(stats.no_text_lines),
            "tokens": list(stats.tokens), "sessions": sorted(stats.sessions),
            "first_tokens": sorted(stats.first_tokens),
            "systems": [{"key": key, "count": p.count, "preview": p.preview,
                         "tokens": p.tokens, "order": (first_index << POSITION_BITS) + i}
                        for i, (key, p) in enumerate(stats.system_prompts.items())]}


# ---------------------------------------------------------------- shuffles


def _partitions(ds: Dataset, partitions: int | None) -> int:
    return max(1, partitions if partitions is not None else ds.num_blocks())


def _part_of(keys: pa.ChunkedArray | pa.Array, parts: int) -> np.ndarray:
    """A partition of each key, the same in every task (not Python's salted hash)."""
    if pa.types.is_integer(keys.type):
        return np.asarray(keys.to_numpy(zero_copy_only=False), dtype=np.int64) % parts
    return np.fromiter((zlib.crc32(k) % parts for k in keys.to_pylist()), dtype=np.int64,
                       count=len(keys))


def _conform(t: pa.Table, fields: list[tuple[str, pa.DataType]]) -> pa.Table:
    """``t`` with exactly ``fields``, in that order (nulls where it has no such column):
    the tables of a union must share one schema."""
    return pa.table({name: t.column(name).cast(kind) if name in t.column_names
                     else pa.nulls(t.num_rows, kind) for name, kind in fields})


def _explode(table: pa.Table, columns: list[str], order: bool = False) -> pa.Table:
    """One row a list item of ``columns``: ``col`` (which column), ``key``, ``index``,
    ``pos`` (its place in the list) and, with ``order``, ``index << 32 | pos``."""
    index = table.column("index").to_numpy().astype(np.int64)
    out = []
    for col, name in enumerate(columns):
        lists = table.column(name).combine_chunks()
        values = pc.list_flatten(lists)
        parents = pc.list_parent_indices(lists).to_numpy()
        lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(len(values), dtype=np.int64) - starts[parents]
        if len(pos) and (pos.max() >= 1 << POSITION_BITS or index.max() >= 1 << 31):
            raise ValueError("a record of 2**32 blocks or more, or an index of 2**31 or "
                             "more: beyond the order key")
        columns_out = {"col": np.full(len(values), col, dtype=np.int8), "key": values,
                       "index": index[parents], "pos": pos}
        if order:
            columns_out["order"] = (index[parents] << POSITION_BITS) | pos
        out.append(pa.table(columns_out))
    return pa.concat_tables(out)


def _with_firsts(occurrences: Dataset, value: str, parts: int) -> Dataset:
    """Each occurrence ``(col, key, ...)`` with ``first``: the least ``value`` of its
    ``(col, key)``, all occurrences of a key meeting in one task."""

    def add_part(t: pa.Table) -> pa.Table:
        return t.append_column("part", pa.array(_part_of(t.column("key"), parts)))

    def attach(t: pa.Table) -> pa.Table:
        t = t.drop_columns(["part"])
        firsts = t.group_by(["col", "key"], use_threads=False).aggregate([(value, "min")])
        firsts = firsts.rename_columns({f"{value}_min": "first"})
        return t.join(firsts, keys=["col", "key"], join_type="inner", use_threads=False)

    return (occurrences.map_batches(add_part, batch_format="pyarrow")
            .groupby("part", num_partitions=parts)
            .map_groups(attach, batch_format="pyarrow"))


def _lists_by_index(rows: Dataset, markers: Dataset, value: str, parts: int) -> Dataset:
    """``{"index", value: list}`` a record: ``rows`` ``(index, pos, value)`` put back in
    position order; ``markers`` ``(index)`` has every record, so a record of no rows
    gets an empty list."""

    fields = [("index", pa.int64()), ("pos", pa.int64()), (value, pa.int64())]

    def tag(t: pa.Table) -> pa.Table:
        t = _conform(t, fields)
        index = t.column("index").to_numpy()
        return t.append_column("part", pa.array(np.asarray(index, dtype=np.int64) % parts))

    def assemble(t: pa.Table) -> pa.Table:
        is_marker = pc.is_null(t.column("pos")).to_numpy(zero_copy_only=False)
        index = t.column("index").to_numpy()
        records = np.unique(index[is_marker])
        items = t.filter(pa.array(~is_marker)).sort_by([("index", "ascending"),
                                                         ("pos", "ascending")])
        counts = np.searchsorted(items.column("index").to_numpy(), records, side="right")
        offsets = np.concatenate([[0], counts]).astype(np.int32)
        values = items.column(value).combine_chunks()
        return pa.table({"index": records,
                         value: pa.ListArray.from_arrays(pa.array(offsets), values)})

    marks = markers.map_batches(lambda t: t.select(["index"]), batch_format="pyarrow")
    return (rows.map_batches(tag, batch_format="pyarrow")
            .union(marks.map_batches(tag, batch_format="pyarrow"))
            .groupby("part", num_partitions=parts)
            .map_groups(assemble, batch_format="pyarrow"))


# ---------------------------------------------------------------- hash-trace ids


def number_blocks(ds: Dataset, *, partitions: int | None = None) -> Dataset:
    """Number blocks by first appearance in stream order: ``hash-trace``'s ids.

    ``ds``: one row a record, ``{"index": int, "blocks": list}`` (any order, any number
    of blocks, none included; blocks are keys of one Arrow type, such as the 16-byte
    chained digests of :func:`hash_trace_rows`). Returns one row a record, ``{"index",
    "hash_ids": list[int]}`` (in no particular order), where a block's id is the
    number of distinct blocks that first appeared before it in (index, position)
    order: what :class:`promptkit.ops.hashtrace.HashIds` gives reading the records in index
    order. ``ds`` is materialized once (in the cluster's object store) and read twice;
    ``partitions`` is the shuffles' width (default: ``ds``'s blocks)."""
    base = ds.select_columns(["index", "blocks"]).materialize()
    parts = _partitions(base, partitions)
    occurrences = base.map_batches(lambda t: _explode(t, ["blocks"], order=True),
                                   batch_format="pyarrow")
    attached = _with_firsts(occurrences, "order", parts).materialize()
    firsts = attached.map_batches(
        lambda t: t.filter(pc.equal(t.column("order"), t.column("first")))
        .select(["col", "key", "first"]), batch_format="pyarrow")
    top = base.max("index")
    span = (top if top is not None else 0) // parts + 1

    def bucket(t: pa.Table) -> pa.Table:
        first = t.column("first").to_numpy()
        return t.append_column("bucket", pa.array((first >> POSITION_BITS) // span))

    bucketed = firsts.map_batches(bucket, batch_format="pyarrow").materialize()
    counts = {row["bucket"]: row["count()"]
              for row in bucketed.groupby("bucket", num_partitions=parts).count().take_all()}
    offsets, total = {}, 0
    for b in sorted(counts):
        offsets[b] = total
        total += counts[b]

    def rank(t: pa.Table) -> pa.Table:
        t = t.sort_by("first")
        start = offsets[int(t.column("bucket")[0].as_py())]
        return pa.table({"col": t.column("col"), "key": t.column("key"),
                         "id": np.arange(start, start + t.num_rows, dtype=np.int64)})

    ids = bucketed.groupby("bucket", num_partitions=parts).map_groups(
        rank, batch_format="pyarrow")
    # every occurrence with its key's id: the first appearances carry it to the rest
    key_type = base.schema().base_schema.field("blocks").type.value_type
    fields = [("col", pa.int8()), ("key", key_type), ("index", pa.int64()),
              ("pos", pa.int64()), ("id", pa.int64())]
    merged = occurrences.map_batches(lambda t: _conform(t, fields), batch_format="pyarrow"
                                     ).union(ids.map_batches(lambda t: _conform(t, fields),
                                                             batch_format="pyarrow"))
    with_ids = _with_ids(merged, parts)
    return _lists_by_index(with_ids, base, "id", parts).rename_columns({"id": "hash_ids"})


def _with_ids(merged: Dataset, parts: int) -> Dataset:
    """Occurrences ``(col, key, index, pos)`` and ids ``(col, key, id)``, one table:
    the occurrences with their key's id."""

    def add_part(t: pa.Table) -> pa.Table:
        return t.append_column("part", pa.array(_part_of(t.column("key"), parts)))

    def attach(t: pa.Table) -> pa.Table:
        is_id = pc.is_null(t.column("index")).to_numpy(zero_copy_only=False)
        ids = t.filter(pa.array(is_id)).select(["col", "key", "id"])
        occ = t.filter(pa.array(~is_id)).select(["col", "key", "index", "pos"])
        return occ.join(ids, keys=["col", "key"], join_type="inner",
                        use_threads=False).select(["index", "pos", "id"])

    return (merged.map_batches(add_part, batch_format="pyarrow")
            .groupby("part", num_partitions=parts)
            .map_groups(attach, batch_format="pyarrow"))


# ---------------------------------------------------------------- check, unbounded


def sequence_reason(options: CheckOptions) -> str | None:
    """Why a check with ``options`` needs the requests in sequence on one node (a cache
    that evicts, requests that wrap around or are cut short, warmup, SGLang's
    token-level tree), or ``None`` when :func:`unbounded_check` computes it. A file of
    sessions or conversations also needs the sequence: :func:`unbounded_check` raises
    :class:`NeedsSequence` when it meets one."""
    if options.engine != "vllm":
        return "the sglang engine's radix cache is simulated in sequence"
    if options.capacity_tokens is not None or options.num_gpu_blocks is not None:
        return "a bounded cache (LRU) depends on the order of every request"
    if options.warmup or options.requests is not None:
        return "--warmup and --requests change which requests are sent"
    return None


def leading_seen(ds: Dataset, columns: list[str], *, partitions: int | None = None
                 ) -> Dataset:
    """For each record and each list column of ``columns``, how many of its leading
    keys first appeared at an earlier record: ``ds`` rows ``{"index", COLUMN: list,
    ...}`` -> rows ``{"index", "seen_COLUMN": int, ...}``, one a record.

    For an unbounded cache this is a request's leading run of cached blocks: a block is
    cached exactly when its key was sent by an earlier request."""
    base = ds.select_columns(["index", *columns]).materialize()
    parts = _partitions(base, partitions)
    occurrences = base.map_batches(lambda t: _explode(t, columns), batch_format="pyarrow")
    attached = _with_firsts(occurrences, "index", parts)

    def flag(t: pa.Table) -> pa.Table:
        seen = pc.less(t.column("first"), t.column("index"))
        return pa.table({"index": t.column("index"), "pos": t.column("pos"),
                         "col": t.column("col"), "seen": seen})

    flags = attached.map_batches(flag, batch_format="pyarrow")

    fields = [("index", pa.int64()), ("pos", pa.int64()), ("col", pa.int8()),
              ("seen", pa.bool_())]

    def tag(t: pa.Table) -> pa.Table:
        t = _conform(t, fields)
        index = t.column("index").to_numpy()
        return t.append_column("part", pa.array(np.asarray(index, dtype=np.int64) % parts))

    def runs(t: pa.Table) -> pa.Table:
        is_marker = pc.is_null(t.column("pos")).to_numpy(zero_copy_only=False)
        records = np.unique(t.column("index").to_numpy()[is_marker])
        out: dict[str, Any] = {"index": records}
        items = t.filter(pa.array(~is_marker))
        for col, name in enumerate(columns):
            mine = items.filter(pc.equal(items.column("col"), col))
            index = mine.column("index").to_numpy()
            pos = mine.column("pos").to_numpy()
            seen = mine.column("seen").to_numpy(zero_copy_only=False)
            # a record's run: the position of its first unseen key (or its length)
            lengths = np.zeros(len(records), dtype=np.int64)
            where = np.searchsorted(records, index)
            np.add.at(lengths, where, 1)
            first_unseen = lengths.copy()
            unseen = ~seen
            np.minimum.at(first_unseen, where[unseen], pos[unseen])
            out[f"seen_{name}"] = first_unseen
        return pa.table(out)

    marks = base.map_batches(lambda t: t.select(["index"]), batch_format="pyarrow")
    return (flags.map_batches(tag, batch_format="pyarrow")
            .union(marks.map_batches(tag, batch_format="pyarrow"))
            .groupby("part", num_partitions=parts)
            .map_groups(runs, batch_format="pyarrow"))


def unbounded_check(ds: Dataset, setup: Setup, *, partitions: int | None = None
                    ) -> dict[str, Any]:
    """``check``'s report (:meth:`promptkit.ops.check.Report.summary`'s dict, the same
    keys and figures) for an unbounded vLLM cache, from :func:`check_rows`' rows.

    A request of L tokens hits its leading blocks whose keys an earlier request sent,
    at most ``(L - 1) // block_size`` of them (the last token never hits), as
    :class:`promptkit.text.cachesim.VllmCache` counts without a capacity. The first differing
    token is the most leading tokens a record shares with an earlier one: its leading
    prefix digests seen earlier. Raises :class:`NeedsSequence` when
    :func:`sequence_reason` gives a reason or a row is a turn of a session."""
    from ray.data.aggregate import Count, Max, Sum

    reason = sequence_reason(setup.options)
    if reason is not None:
        raise NeedsSequence(reason)
    base = ds.materialize()
    parts = _partitions(base, partitions)
    block_size = setup.block_size
    runs = leading_seen(base, ["blocks", "lead"], partitions=parts)
    scalars = base.select_columns(["index", "length", "first", "salted", "salt_not_sent",
                                   "tools", "single"])
    per_record = _join_on_index(
        scalars, runs, parts,
        [("index", pa.int64()), ("length", pa.int64()), ("first", pa.binary()),
         ("salted", pa.bool_()), ("salt_not_sent", pa.bool_()), ("tools", pa.bool_()),
         ("single", pa.bool_())],
        [("index", pa.int64()), ("seen_blocks", pa.int64()), ("seen_lead", pa.int64())]
    ).materialize()

    def figures(t: pa.Table) -> pa.Table:
        length = t.column("length").to_numpy().astype(np.int64)
        can_hit = np.where(length > 0, (length - 1) // block_size, 0)
        hits = np.minimum(t.column("seen_blocks").to_numpy(), can_hit) * block_size
        return pa.table({"hits": hits, "length": length,
                         "has_hit": (hits > 0).astype(np.int64),
                         "first_difference": t.column("seen_lead"),
                         "salted": pc.cast(t.column("salted"), pa.int64()),
                         "salt_not_sent": pc.cast(t.column("salt_not_sent"), pa.int64()),
                         "tools": pc.cast(t.column("tools"), pa.int64()),
                         "multi": pc.cast(pc.invert(t.column("single")), pa.int64())})

    table = per_record.map_batches(figures, batch_format="pyarrow").materialize()
    totals = table.aggregate(Count(), Sum("length"), Sum("hits"), Sum("has_hit"),
                             Sum("salted"), Sum("salt_not_sent"), Sum("tools"),
                             Sum("multi"))
    if totals["sum(multi)"]:
        raise NeedsSequence("sessions and conversations are sent in their own order")
    records = totals["count()"]
    if not records:
        from promptkit.core.errors import CheckError

        raise CheckError("no records to check")
    hits_hist = histogram(table, "hits", parts)
    diff_hist = histogram(table, "first_difference", parts)
    prefixes = per_record.select_columns(["first"]).groupby(
        "first", num_partitions=parts).count().materialize()
    prompt_tokens, hit_tokens = totals["sum(length)"], totals["sum(hits)"]

    def rate(tokens: int) -> float:
        return round(tokens / prompt_tokens, 6) if prompt_tokens else 0.0

    options = setup.options
    out: dict[str, Any] = {
        "engine": options.engine, "block_size": block_size,
        "capacity_tokens": options.capacity_tokens, "num_gpu_blocks": options.num_gpu_blocks,
        "chat_template": (None if setup.hash_ids and options.chat_template == "none"
                          else options.chat_template),
        **({"hash_block_size": setup.id_block} if setup.hash_ids else {}),
        "records": records, "conversations": records, "requests": records,
        "warmup": options.warmup, "fixed_schedule": setup.fixed_schedule,
        "requests_per_pass": records,
        "requests_repeating_a_prompt": 0, "prompt_tokens": prompt_tokens,
        "hit_tokens": hit_tokens, "hit_rate": rate(hit_tokens),
        "hit_rate_range": [rate(hit_tokens)] * 2, "hit_tokens_range": [hit_tokens] * 2,
        "cross_conversation_hit_tokens": hit_tokens,
        "cross_conversation_hit_rate": rate(hit_tokens),
        "within_conversation_hit_tokens": 0, "within_conversation_hit_rate": 0.0,
        "requests_with_hits": totals["sum(has_hit)"],
        "hit_tokens_per_request": histogram_figures(hits_hist),
    }
    unit = "block" if setup.hash_ids else "token"
    out[f"first_differing_{unit}"] = {**histogram_figures(diff_hist), "window": PREFIX_WINDOW}
    shares = prefixes.aggregate(Count(), Max("count()"))
    shared = prefixes.map_batches(  # (a pyarrow filter: Ray warns of a row-wise one)
        lambda t: t.filter(pc.greater(t.column("count()"), 1)), batch_format="pyarrow")
    top = shared.sort("count()", descending=True).limit(10).take_all()
    out["first_block"] = {
        "distinct": shares["count()"],
        "shared_by_most": shares["max(count())"] or 0,
        "records_sharing_one": shared.sum("count()") or 0,
        "records_per_shared_block": [row["count()"] for row in top],
    }
    salts_not_sent, salted = totals["sum(salt_not_sent)"], totals["sum(salted)"]
    if salts_not_sent:
        from promptkit.ops.check import Report

        report = Report(options, block_size, records=records, salts_not_sent=salts_not_sent)
        out.update({k: v for k, v in report.summary().items()
                    if k in ("salts_not_sent", "warning_salts")})
    out.update(template_figures(setup.report.header_tokens, block_size, salted, records,
                                totals["sum(tools)"], options.chat_template,
                                setup.report.header_tools))
    return out


def _join_on_index(left: Dataset, right: Dataset, parts: int,
                   left_fields: list[tuple[str, pa.DataType]],
                   right_fields: list[tuple[str, pa.DataType]]) -> Dataset:
    """``left`` and ``right`` (one row a record each, of these fields; ``index`` first
    in both) as one row a record, joined on ``index`` in a shuffle by index."""
    fields = left_fields + right_fields[1:] + [("side", pa.int8())]
    left_names = [name for name, _ in left_fields]
    right_names = [name for name, _ in right_fields]

    def tag(side: int) -> Any:
        def add(t: pa.Table) -> pa.Table:
            t = _conform(t.append_column("side", pa.array(np.full(t.num_rows, side, np.int8))),
                         fields)
            index = np.asarray(t.column("index").to_numpy(), dtype=np.int64)
            return t.append_column("part", pa.array(index % parts))
        return add

    def join(t: pa.Table) -> pa.Table:
        side = t.column("side").to_numpy()
        a = t.filter(pa.array(side == 0)).select(left_names)
        b = t.filter(pa.array(side == 1)).select(right_names)
        return a.join(b, keys="index", join_type="inner", use_threads=False)

    return (left.map_batches(tag(0), batch_format="pyarrow")
            .union(right.map_batches(tag(1), batch_format="pyarrow"))
            .groupby("part", num_partitions=parts)
            .map_groups(join, batch_format="pyarrow"))


# ---------------------------------------------------------------- histograms, stats


def distinct_count(ds: Dataset, column: str, partitions: int | None = None) -> int:
    """How many distinct values an integer column holds: a distributed group-by, the
    driver getting one number."""
    return int(ds.select_columns([column]).groupby(
        column, num_partitions=_partitions(ds, partitions)).count().count())


def histogram(ds: Dataset, column: str, partitions: int | None = None
              ) -> list[tuple[int, int]]:
    """``(value, count)`` of each distinct value of an integer column, sorted: a
    distributed count, the driver holding one pair a distinct value."""
    rows = ds.select_columns([column]).groupby(
        column, num_partitions=_partitions(ds, partitions)).count().take_all()
    return sorted((int(row[column]), int(row["count()"])) for row in rows)


def nearest_rank(n: int, q: float) -> int:
    """The 0-based rank ``numpy.percentile(values, q, method="nearest")`` takes of
    ``n`` sorted values (numpy rounds ``(n - 1) * q / 100`` half to even)."""
    return int(np.around((n - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100)))


def histogram_figures(hist: list[tuple[int, int]], percentiles: Iterable[float] = (50, 90)
                      ) -> dict[str, Any]:
    """``check``'s ``min, mean, p50, p90, max`` (or the given percentiles) of the values
    a histogram counts, exactly as numpy computes them over the values."""
    n = sum(count for _, count in hist)
    if not n:
        return {"min": 0, "mean": 0.0, **{f"p{q:g}": 0 for q in percentiles}, "max": 0}
    total = sum(value * count for value, count in hist)
    out: dict[str, Any] = {"min": hist[0][0], "mean": round(total / n, 2)}
    out.update({f"p{q:g}": _at_rank(hist, nearest_rank(n, q)) for q in percentiles})
    out["max"] = hist[-1][0]
    return out


def _at_rank(hist: list[tuple[int, int]], rank: int) -> int:
    seen = 0
    for value, count in hist:
        seen += count
        if rank < seen:
            return value
    raise IndexError(rank)


def merge_stats(ds: Dataset, *, partitions: int | None = None) -> dict[str, Any]:
    """``stats``' figures (:meth:`promptkit.ops.stats.Stats.summary`'s dict, the same keys
    and figures) of :func:`stats_rows`' rows, one a chunk, merged as distributed
    aggregates: sums; distinct sessions and first tokens counted by a shuffle; prompt
    tokens' percentiles exact, from a distributed histogram of the counts; shared
    system prompts counted by their sha256 and ordered by count, then first
    appearance."""
    from ray.data.aggregate import Count, Max, Min, Sum

    base = ds.materialize()
    parts = _partitions(base, partitions)
    totals = base.aggregate(Sum("records"), Sum("requests"), Sum("turns"),
                            Sum("unsessioned"), Sum("stated"), Sum("no_text"))

    kinds = {"tokens": pa.int64(), "sessions": pa.string(), "first_tokens": pa.int64()}

    def explode(column: str, name: str) -> Dataset:
        def flat(t: pa.Table) -> pa.Table:  # (a list of only empty lists is of nulls)
            values = pc.list_flatten(t.column(column).combine_chunks())
            return pa.table({name: values.cast(kinds[column])})
        return base.map_batches(flat, batch_format="pyarrow")

    def distinct(column: str) -> int:
        return explode(column, "value").groupby(
            "value", num_partitions=parts).count().count()

    records = int(totals["sum(records)"] or 0)
    out: dict[str, Any] = {
        "records": records,
        "conversations": distinct("sessions") + int(totals["sum(unsessioned)"] or 0),
        "requests": int(totals["sum(requests)"] or 0),
        "turns": int(totals["sum(turns)"] or 0),
    }
    tokens = histogram(explode("tokens", "tokens").materialize(), "tokens", parts)
    stated = int(totals["sum(stated)"] or 0)
    if tokens:
        figures = histogram_figures(tokens, STATS_PERCENTILES)
        out["prompt_tokens"] = {"total": sum(v * c for v, c in tokens), **figures}
        n = sum(c for _, c in tokens)
        if n > stated:
            out["distinct_first_tokens"] = distinct("first_tokens")
    if stated:
        out["prompt_tokens_stated"] = stated
    no_text = int(totals["sum(no_text)"] or 0)
    if no_text:
        lines = (base.map_batches(lambda t: t.filter(pc.greater(t.column("no_text"), 0)),
                                  batch_format="pyarrow")
                 .select_columns(["first_index", "no_text_lines"])
                 .sort("first_index").limit(5).take_all())
        out["no_prompt_text"] = {"records": no_text, "lines": [
            line for row in lines for line in row["no_text_lines"]][:5]}

    fields = [("key", pa.string()), ("count", pa.int64()), ("preview", pa.string()),
              ("tokens", pa.int64()), ("order", pa.int64())]

    def systems(t: pa.Table) -> pa.Table:
        values = pc.list_flatten(t.column("systems").combine_chunks())
        if not len(values) or pa.types.is_null(values.type):
            return pa.table({name: pa.array([], kind) for name, kind in fields})
        return _conform(pa.Table.from_struct_array(values), fields)

    exploded = base.map_batches(systems, batch_format="pyarrow")
    shared = exploded.groupby("key", num_partitions=parts).aggregate(
        Sum("count", alias_name="count"), Min("order", alias_name="order"),
        Max("tokens", alias_name="tokens"), Max("preview", alias_name="preview")).materialize()
    counts = shared.aggregate(Count(), Sum("count")) or {"count()": 0, "sum(count)": 0}
    top = (shared.map_batches(lambda t: t.append_column("neg", pc.negate(t.column("count"))),
                              batch_format="pyarrow")
           .sort(["neg", "order"]).limit(10).take_all())
    out["system_prompts"] = {
        "distinct": counts["count()"],
        "records_with_one": int(counts["sum(count)"] or 0),
        "most_shared": [{"records": row["count"], "tokens": row["tokens"], "sha256": row["key"],
                         "starts": row["preview"]} for row in top],
    }
    return out


__all__ = ["NeedsSequence", "check_rows", "check_setup", "hash_trace_rows", "histogram",
           "histogram_figures", "leading_seen", "merge_stats", "nearest_rank",
           "number_blocks", "sequence_reason", "stats_row", "stats_rows",
           "unbounded_check"]
