"""Exact input lengths: make every user text of a record exactly N tokens.

A text longer than N is cut to its longest prefix of at most N tokens (the start
is kept, so a nonce already there survives); a text shorter than N, or a prefix
that falls short because BPE merges do not split where the cut is, is extended
with seeded filler words by :func:`promptkit.ops.pad.exact_text`, which checks every
candidate by encoding it whole. The result is exact by construction.

N is one number, a uniform range ``(low, high)`` drawn per record from the seed
and the record's index (so a chunked run equals a sequential one), or the name of
a column holding each record's own target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from promptkit.core.errors import (
    InvalidRecordError,
    OptionNeededError,
    PadError,
    PromptkitError,
    Skipping,
)
from promptkit.core.limits import MAX_TOKENS
from promptkit.core.records import USER_ROLES, Record
from promptkit.core.seeds import new_seed
from promptkit.core.tokenizers import Tokenizer, cached_tokenizer
from promptkit.ops.base import (
    Param,
    Step,
    Where,
    checked,
    integer,
    text,
    tokenizer_loads,
)
from promptkit.ops.padding import filler_readable, filler_words
from promptkit.text.exact import exact_text, prefix_end

#: Record attributes a column target may name (others come from fields, then extra).
_ATTRS = ("input_length", "output_length")


def parse_tokens(spec: str) -> int | list[int] | str:
    """``--tokens``: ``N``, ``LOW,HIGH`` (inclusive) or a column name."""
    spec = spec.strip()
    if "," in spec:
        parts = spec.split(",")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise PromptkitError(f"--tokens: {spec!r} is not a range LOW,HIGH of positive integers")
        low, high = (int(p) for p in parts)
        if low < 1 or high < low:
            raise PromptkitError(f"--tokens: {spec!r} needs 1 <= LOW <= HIGH")
        if high > MAX_TOKENS:
            raise PromptkitError(f"--tokens: {spec!r} goes beyond {MAX_TOKENS:,} tokens")
        return [low, high]
    if spec.lstrip("+-").isdigit():
        if int(spec) < 1:
            raise PromptkitError(f"--tokens: {spec!r} is not a positive integer")
        if int(spec) > MAX_TOKENS:
            raise PromptkitError(f"--tokens: {spec!r} is more than {MAX_TOKENS:,} tokens")
        return int(spec)
    if not spec.isidentifier():
        raise PromptkitError(f"--tokens: {spec!r} is not a number, a range LOW,HIGH or a column")
    return spec


def _column_of(record: Record, column: str) -> Any:
    """The value of ``column`` in ``record`` (an attribute, a field, or in extra)."""
    if column in _ATTRS:
        return getattr(record, column)
    if column in record.fields:
        return record.fields[column]
    return (record.extra or {}).get(column)


def target_of(record: Record, index: int, tokens: int | list[int] | str, seed: int) -> int:
    """The token count ``record`` is fitted to."""
    if isinstance(tokens, int):
        return tokens
    if isinstance(tokens, list):
        low, high = tokens
        draw = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
        return low + int.from_bytes(draw) % (high - low + 1)
    value = _column_of(record, tokens)
    if value is None:
        raise InvalidRecordError(f"no {tokens!r} to take the token count from",
                                 lineno=record.lineno)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRecordError(f"{tokens!r} is {value!r}, not a positive integer",
                                 lineno=record.lineno)
    if value > MAX_TOKENS:
        raise InvalidRecordError(f"{tokens!r} is {value}, more than {MAX_TOKENS:,} tokens",
                                 lineno=record.lineno)
    return value


def fit_text(text: str, target: int, tokenizer: Tokenizer, words: Iterator[str]) -> str:
    """``text`` cut or extended to exactly ``target`` tokens."""
    ids = tokenizer.encode(text)
    if len(ids) == target:
        return text
    if len(ids) < target:
        return exact_text(text, target, tokenizer, words)
    head = text[:prefix_end(text, ids, target, tokenizer)]
    return exact_text(head, target, tokenizer, words, separator="")


def fit_records(
    records: Iterable[Record],
    *,
    tokens: int | list[int] | str,
    tokenizer: str,
    seed: int = 0,
    filler_file: str | None = None,
    first_index: int = 0,
    state: Any = None,
) -> Iterator[Record]:
    """Make every user text of each record exactly its target number of tokens.

    A message whose content is a list of parts must hold exactly one text part,
    which is the one fitted. Records without text (``input_length``/``hash_ids``
    only) are an error: AIPerf makes the text of those itself. A record that cannot be
    fitted is an :class:`InvalidRecordError`, or, when ``state`` (a
    :class:`~promptkit.core.errors.Skipping`) skips invalid records, left out and listed there.
    """
    encoder = cached_tokenizer(tokenizer)
    skipping = state if state is not None else Skipping()
    for position, record in enumerate(records, start=first_index):
        index = record.index if record.index is not None else position
        if (isinstance(tokens, str) and index == 0 and not skipping.skip_invalid
                and _column_of(record, tokens) is None):
            raise OptionNeededError(
                f"--tokens {tokens}: the first record has no column {tokens!r}; --tokens "
                "takes a number N, a range LOW,HIGH or the name of a column holding each "
                "record's own count")
        try:
            _fit_record(record, index, tokens, seed, encoder, filler_file)
        except InvalidRecordError as exc:
            skipping.reject(exc)
            continue
        yield record


def _fit_record(record: Record, index: int, tokens: int | list[int] | str, seed: int,
                encoder: Tokenizer, filler_file: str | None) -> None:
    target = target_of(record, index, tokens, seed)
    users = [m for m in record.messages if m.role in USER_ROLES]
    if not users:
        raise InvalidRecordError(
            "no user text to fit" if record.messages else
            "a record with only input_length/hash_ids has no text to fit",
            lineno=record.lineno)
    for turn, message in enumerate(users):
        draw = hashlib.blake2b(f"{seed}:{index}:{turn}".encode(), digest_size=8).digest()
        words = filler_words(int.from_bytes(draw), filler_file)
        try:
            message.content = _fit_content(message.content, target, encoder, words)
        except PadError as exc:
            raise InvalidRecordError(str(exc), lineno=record.lineno) from None


def _fit_content(content: Any, target: int, tokenizer: Tokenizer, words: Iterator[str]) -> Any:
    if isinstance(content, str) or content is None:
        return fit_text(content or "", target, tokenizer, words)
    texts = [i for i, part in enumerate(content) if isinstance(part, str) or (
        isinstance(part, dict) and isinstance(part.get("text"), str))]
    if len(texts) != 1:
        raise PadError(f"a message with {len(texts)} text parts; fit needs exactly one")
    parts = list(content)
    part = parts[texts[0]]
    if isinstance(part, str):
        parts[texts[0]] = fit_text(part, target, tokenizer, words)
    else:
        parts[texts[0]] = {**part, "text": fit_text(part["text"], target, tokenizer, words)}
    return parts


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``fit`` step of ``params`` (an unseeded one given a seed), every parameter
    checked, the tokenizer loaded and the filler file read before anything is read."""
    def target(value: Any) -> bool:
        if isinstance(value, str):
            return value.isidentifier()
        if isinstance(value, list):
            return (len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in value)
                    and 1 <= value[0] <= value[1] <= MAX_TOKENS)
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_TOKENS

    checked("fit", params, {
        "tokens": Param(target, f"an integer from 1 to {MAX_TOKENS:,}, a range [LOW, HIGH] "
                                "within it or a column name", required=True),
        "tokenizer": text(optional=False, required=True), "seed": integer(),
        "filler_file": text(), "first_index": integer(0, optional=False)})
    params = dict(params)
    if params.get("seed") is None:
        params["seed"] = new_seed()
    tokenizer_loads(params["tokenizer"])
    filler_readable(params.get("filler_file"))
    return Step("fit", params)
