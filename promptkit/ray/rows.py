"""Rows of a ``ray.data.Dataset`` as promptkit records and back (for :func:`promptkit.ray.apply`).

Runs in Ray worker processes: nothing here touches the driver's state.
"""

from __future__ import annotations

from typing import Any

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.core.records import Record
from promptkit.formats import detect_many, get_format, writer
from promptkit.ops.base import Step


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    """A row as its line would be: Arrow gives every row every column of the block, a
    field the row lacked as null; those are left out (a line without them)."""
    return {key: value for key, value in row.items() if value is not None and key != "index"}


def detect(ds: Any) -> str:
    """The line format of the first rows of ``ds``."""
    head = [_fields(row) for row in ds.take(20)]
    if not head:
        raise PromptkitError("promptkit.ray.apply: the dataset has no rows")
    return detect_many(head)


def with_index(ds: Any) -> Any:
    """``ds`` with an ``index`` column: each row's position in ``ds``. The row counts
    of its blocks (known once it is materialized, without reading a row on the driver)
    give each block's first index; every block is then numbered by its own task."""
    materialized = ds.materialize()
    splits = materialized.split(max(1, materialized.num_blocks()))
    numbered = []
    first = 0
    for part in splits:
        rows = part.count()
        if rows:
            numbered.append(part.repartition(1).map_batches(
                _numbered, batch_format="pyarrow", batch_size=None,
                fn_kwargs={"first": first}))
        first += rows
    if not numbered:
        return materialized
    return numbered[0].union(*numbered[1:]) if len(numbered) > 1 else numbered[0]


def _numbered(batch: Any, first: int) -> Any:
    import pyarrow as pa

    return batch.append_column("index", pa.array(range(first, first + batch.num_rows),
                                                 type=pa.int64()))


def apply_batch(batch: Any, steps: list[Step], in_format: str, out_format: str,
                keep_replies: bool = False) -> Any:
    """The rows of ``batch`` through ``steps``: records in, the output format's rows out,
    each with its ``index``."""
    import pyarrow as pa

    parse = get_format(in_format).parse
    dump = writer(get_format(out_format), keep_replies=keep_replies)
    records: list[Record] = []
    for row in batch.to_pylist():
        index = row.get("index")
        try:
            record = parse(_fields(row))
        except InvalidRecordError as exc:
            raise PromptkitError(f"row with index {index}: {in_format}: {exc.problem}") from None
        record.index = index
        record.lineno = None if index is None else index + 1
        records.append(record)
    out: Any = records
    for step in steps:
        out = step.apply(out, step.new_state())
    rows = []
    for record in out:
        try:
            rows.append({**dump(record), "index": record.index})
        except InvalidRecordError as exc:
            raise PromptkitError(f"row with index {record.index}: cannot write as "
                                 f"{out_format}: {exc.problem}") from None
    return pa.Table.from_pylist(rows)
