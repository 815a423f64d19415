"""Text records into a hash-id trace: a trace's prefix-sharing structure without its text.

Each record becomes a ``mooncake_trace`` line: ``input_length`` (its tokens under
the tokenizer: the raw message texts, joined, as ``check --chat-template none``
counts them), ``output_length`` and ``timestamp`` when known (or timestamps at
``rate`` requests a second), and ``hash_ids``: one id a block of ``block_size``
tokens, the last one partial. A block's id depends on its tokens and on every
block before it (chained, as servers hash, with a record's ``cache_salt`` in the
first), remapped to small integers in order of first appearance. Two records
share leading ids exactly when they share those leading blocks, so
``check`` gives the text file and its hash trace the same hit rate. This is how
the Mooncake traces were released.

The ids are numbered in file order, so a run sees every record in order (one
process; tokenization is batched on threads).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from promptkit.core.errors import InvalidRecordError, Skipping
from promptkit.core.limits import MAX_TOKENS, MAX_WORKERS
from promptkit.core.records import Record, message_texts
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.ops.base import Step, Where, checked, integer, number, text, tokenizer_loads

BATCH = 1024


DIGEST = 16


def block_digests(tokens: list[int], block_size: int, salt: str | None) -> bytes:
    """The chained hash of each block of ``tokens`` (the last may be partial), joined."""
    data = array("I", tokens).tobytes()
    step = 4 * block_size
    parent = hashlib.blake2b((salt or "").encode(), digest_size=DIGEST).digest()
    out = []
    for start in range(0, len(data), step):
        parent = hashlib.blake2b(parent + data[start:start + step], digest_size=DIGEST).digest()
        out.append(parent)
    return b"".join(out)


class HashIds:
    """Chained block hashes, numbered in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}

    def number(self, digests: bytes) -> list[int]:
        ids = self.ids
        return [ids.setdefault(digests[i:i + DIGEST], len(ids))
                for i in range(0, len(digests), DIGEST)]


def hash_trace_records(
    records: Iterable[Record],
    *,
    tokenizer: str,
    block_size: int = 512,
    rate: float | None = None,
    threads: int | None = None,
    first_index: int = 0,
    state: Any = None,
) -> Iterator[Record]:
    """The hash-id record of each text record, in order (see the module docstring)."""
    if block_size < 1:
        raise ValueError("block size must be at least 1")
    numbering = HashIds()
    for record, digests in hashed_records(records, tokenizer=tokenizer, block_size=block_size,
                                          rate=rate, threads=threads, first_index=first_index,
                                          skipping=state):
        record.hash_ids = numbering.number(digests)
        yield record


def hashed_records(records: Iterable[Record], *, tokenizer: str, block_size: int,
                   rate: float | None, threads: int | None = None, first_index: int = 0,
                   skipping: Skipping | None = None) -> Iterator[tuple[Record, bytes]]:
    """Each record's hash-id record (ids not yet numbered) and its block digests: the
    work that needs no order, so worker processes can do it chunk by chunk. A record
    with no text is an error, or left out and listed in ``skipping`` when it skips."""
    encoder = cached_tokenizer(tokenizer)
    skipping = skipping if skipping is not None else Skipping()
    batch: list[Record] = []
    position = first_index

    def flush() -> Iterator[tuple[Record, bytes]]:
        nonlocal position
        # each text on its own, the tokens one after another (as check and stats count)
        parts = [message_texts(r) for r in batch]
        texts = [text for texts in parts for text in texts]
        flat = iter(encoder.encode_batch(texts, threads) if threads
                    else encoder.encode_batch(texts))
        encoded = [[i for _ in texts for i in next(flat)] for texts in parts]
        for record, tokens in zip(batch, encoded, strict=True):
            index = record.index if record.index is not None else position
            position += 1
            if not tokens:
                skipping.reject(InvalidRecordError("a record with no text to hash",
                                                   lineno=record.lineno))
                continue
            salt = (record.extra or {}).get("cache_salt")
            timestamp = record.timestamp
            if timestamp is None and rate is not None:
                timestamp = round(index * 1000 / rate)
            yield Record(
                session_id=record.session_id,
                timestamp=timestamp,
                delay=record.delay,
                output_length=record.output_length,
                extra=record.extra,
                input_length=len(tokens),
                lineno=record.lineno,
                index=record.index,
            ), block_digests(tokens, block_size, None if salt is None else str(salt))

    for record in records:
        if not record.messages:
            skipping.reject(InvalidRecordError(
                "a record with no text (already a hash-id record?)", lineno=record.lineno))
            continue
        batch.append(record)
        if len(batch) == BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def hashed_list(records: Iterable[Record], params: dict[str, Any], skip_invalid: bool = False
                ) -> tuple[list[tuple[Record, bytes]], list[str]]:
    """:func:`hashed_records` of a worker process's chunk, with a hash-trace step's
    parameters, in one thread, as a list to send back with the lines it skipped."""
    skipping = Skipping(skip_invalid, "hash_trace")
    return list(hashed_records(records, tokenizer=params["tokenizer"],
                               block_size=params["block_size"], rate=params.get("rate"),
                               threads=1, skipping=skipping)), skipping.skipped


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``hash_trace`` step of ``params``, the tokenizer loaded before anything is
    read; AIPerf is told the block size (a hash id is a prompt of that many tokens)."""
    checked("hash_trace", params, {
        "tokenizer": text(optional=False, required=True),
        "block_size": integer(1, MAX_TOKENS, optional=False), "rate": number(0, low_open=True),
        "threads": integer(1, MAX_WORKERS), "first_index": integer(0, optional=False)})
    tokenizer_loads(params["tokenizer"])
    # AIPerf makes a prompt of block_size tokens a hash id; it assumes 512.
    return Step("hash_trace", params, aiperf_args=[
        "--prompt-input-tokens-block-size", str(params.get("block_size", 512))])
