"""The three writers of :mod:`promptkit.runner.writers` hold one contract: for the same
records, the encoder (every record encoded), the splicer (input lines with a nonce
inserted) and the lane (lines straight from Arrow columns) write the same bytes and count
the same distinct prompts.

The splicer and the encoder are also compared run by run in ``test_splice.py``, the lane
and the record way in ``test_arrow_batches.py``; here all of them take the same prompts.
"""

from __future__ import annotations

import dataclasses

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit.core.errors import InvalidRecordError
from promptkit.core.limits import MAX_TOKENS
from promptkit.formats.table import find_mapping
from promptkit.ops.nonce import nonce_params
from promptkit.ops.registry import make
from promptkit.runner import batches, writers
from promptkit.runner import workers as parallel

START = "2026-01-01T00:00:00Z"
#: The nonces both the splicer and the lane take: at the start of the one user text.
NONCES = st.fixed_dictionaries({
    "kind": st.sampled_from(["uuid", "timestamp", "random"]),
    "at": st.sampled_from(["start", "user", "every-turn"]),
    "template": st.sampled_from(["{nonce}\n", "[{nonce}] ", "\"{nonce}\"\\", "{nonce}"]),
    "length": st.integers(1, 20), "seed": st.integers(0, 2**63 - 1)})


def distinct(keys: bytes) -> int:
    return len(set(memoryview(keys).cast("q")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.text(max_size=30), min_size=1, max_size=25), nonce=NONCES,
       first=st.integers(1, 10**6), batch=st.integers(1, 9))
def test_the_three_writers_write_the_same_bytes(texts, nonce, first, batch):
    steps = [make("nonce", nonce_params(**nonce, start_time=START))]
    lines = b"".join(orjson.dumps({"role": "user", "text": text},
                                  option=orjson.OPT_APPEND_NEWLINE) for text in texts)
    job = parallel.Job("in.jsonl", "", "single_turn", "single_turn", steps, False, "in.jsonl")
    encoded = parallel.process_chunk(job, lines, first)
    splice = writers.plan(steps, "single_turn", "single_turn")
    assert splice is not None
    spliced = parallel.process_chunk(dataclasses.replace(job, splice=splice), lines, first)

    table = pa.table({"prompt": pa.array(texts, pa.string())})
    mapping = find_mapping(table.column_names, text="prompt")
    lane = writers.Lane.for_run(mapping, steps, "single_turn", None)
    assert lane is not None
    rows = dataclasses.replace(job, in_format="dataset")

    def from_rows(lane: writers.Lane | None) -> parallel.ChunkResult:
        return batches.process_rows(batches.RowsJob(rows, mapping, lane), batches.Chunk(
            "d.parquet", 0, first, table.to_batches(max_chunksize=batch)))

    laned, records = from_rows(lane), from_rows(None)
    assert spliced.data == encoded.data == laned.data == records.data
    assert spliced.written == encoded.written == laned.written == len(texts)
    assert distinct(spliced.keys) == distinct(encoded.keys) == distinct(laned.keys)
    assert laned.keys == records.keys
    # Each writer made the lines itself (else this would hold for one that never does).
    splicer = writers.Splicer(splice, "single_turn", steps[0].new_state(), hash)
    assert all(splicer.splice(line, first - 1 + i) is not None
               for i, line in enumerate(lines.splitlines()))
    assert lane.chunk(table.to_batches(max_chunksize=batch), first - 1,
                      parallel.job_encoder(rows)) is not None


@pytest.mark.parametrize("length", [0, MAX_TOKENS + 1])
def test_an_output_length_the_reader_refuses_is_refused_by_the_splicer_too(length):
    """A line the splicer took as it is although the reader refuses it: an
    ``output_length`` beyond :data:`~promptkit.core.limits.MAX_TOKENS` was once written."""
    steps = [make("nonce", nonce_params(seed=7, start_time=START))]
    line = orjson.dumps({"text": "", "output_length": length}) + b"\n"
    job = parallel.Job("in.jsonl", "", "single_turn", "single_turn", steps, False, "in.jsonl")
    errors = []
    for splice in (None, writers.plan(steps, "single_turn", "single_turn")):
        with pytest.raises(InvalidRecordError) as caught:
            parallel.process_chunk(dataclasses.replace(job, splice=splice), line, 1)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "output_length" in errors[0]
