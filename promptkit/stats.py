"""Statistics of a dataset: records, conversations, turns, prompt tokens, shared prompts.

Keeps aggregates, not records: a token count per record (4 bytes), one entry per
distinct system prompt and per distinct first token. Texts are tokenized in
batches, on several threads (tiktoken and Hugging Face tokenizers both release
the GIL for a batch).
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .records import Record, first_text, message_texts
from .tokenizers import Tokenizer

BATCH = 4096


@dataclass
class SharedPrompt:
    count: int
    preview: str
    tokens: int | None = None


@dataclass
class Stats:
    records: int = 0
    turns: int = 0
    sessions: set[str] = field(default_factory=set)
    unsessioned: int = 0
    tokens: array = field(default_factory=lambda: array("I"))
    #: By the sha256 of the prompt's text.
    system_prompts: dict[str, SharedPrompt] = field(default_factory=dict)
    first_tokens: set[int] = field(default_factory=set)

    def merge(self, later: Stats) -> None:
        """Add the statistics of records that came after these."""
        self.records += later.records
        self.turns += later.turns
        self.sessions |= later.sessions
        self.unsessioned += later.unsessioned
        self.tokens.extend(later.tokens)
        self.first_tokens |= later.first_tokens
        for key, shared in later.system_prompts.items():
            mine = self.system_prompts.get(key)
            if mine is None:
                self.system_prompts[key] = shared
            else:
                mine.count += shared.count
                if mine.tokens is None:
                    mine.tokens = shared.tokens

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "records": self.records,
            "conversations": len(self.sessions) + self.unsessioned,
            "turns": self.turns,
        }
        if self.tokens:
            import numpy as np

            counts = np.frombuffer(self.tokens, dtype=np.uint32)
            p50, p90, p99 = np.percentile(counts, [50, 90, 99], method="nearest")
            out["prompt_tokens"] = {
                "total": int(counts.sum(dtype=np.int64)),
                "min": int(counts.min()),
                "mean": round(float(counts.mean()), 2),
                "p50": int(p50),
                "p90": int(p90),
                "p99": int(p99),
                "max": int(counts.max()),
            }
            out["distinct_first_tokens"] = len(self.first_tokens)
        shared = sorted(self.system_prompts.items(), key=lambda item: -item[1].count)
        out["system_prompts"] = {
            "distinct": len(shared),
            "records_with_one": sum(p.count for _, p in shared),
            "most_shared": [
                {"records": p.count, "tokens": p.tokens, "sha256": key, "starts": p.preview}
                for key, p in shared[:10]
            ],
        }
        return out


def collect(records: Iterable[Record], tokenizer: Tokenizer | None = None, *,
            threads: int | None = None, batch: int = BATCH) -> Stats:
    """The statistics of ``records`` (token figures only with a tokenizer)."""
    tap = Tap(tokenizer, threads=threads, batch=batch)
    for record in records:
        tap.add(record)
    return tap.finish()


class Tap:
    """Counts records one at a time (e.g. as a writer writes them), tokenizing them
    in batches. A record must not change after it is added."""

    def __init__(self, tokenizer: Tokenizer | None, *, threads: int | None = None,
                 batch: int = BATCH):
        self.stats = Stats()
        self.tokenizer = tokenizer
        self.threads = threads or os.cpu_count() or 1
        self.batch = batch
        self.pending: list[Record] = []

    def add(self, record: Record) -> None:
        _count(self.stats, record)
        if self.tokenizer is None:
            if not record.messages and record.input_length is not None:
                self.stats.tokens.append(record.input_length)  # a hash-id trace states it
            return
        self.pending.append(record)
        if len(self.pending) >= self.batch:
            self.finish()

    def finish(self) -> Stats:
        """Tokenize what is pending; return the statistics so far."""
        if self.pending:
            assert self.tokenizer is not None
            _tokenize(self.stats, self.pending, self.tokenizer, self.threads)
            self.pending = []
        return self.stats


def _count(stats: Stats, record: Record) -> None:
    stats.records += 1
    stats.turns += len(record.messages)
    if record.session_id is None:
        stats.unsessioned += 1
    else:
        stats.sessions.add(record.session_id)
    if record.messages and record.messages[0].role == "system":
        text = first_text(record.messages[0].content) or ""
        key = hashlib.sha256(text.encode()).hexdigest()
        shared = stats.system_prompts.get(key)
        if shared is None:
            stats.system_prompts[key] = SharedPrompt(1, text[:60])
        else:
            shared.count += 1


def _tokenize(stats: Stats, records: list[Record], tokenizer: Tokenizer, threads: int) -> None:
    texts: list[str] = []
    spans: list[tuple[int, int]] = []
    for record in records:
        parts = message_texts(record)
        spans.append((len(texts), len(parts)))
        texts.extend(parts)
    encoded = tokenizer.encode_batch(texts, threads) if texts else []
    for record, (start, n) in zip(records, spans, strict=True):
        if not record.messages:
            stats.tokens.append(record.input_length or 0)
            continue
        ids = encoded[start:start + n]
        stats.tokens.append(sum(len(x) for x in ids))
        first = next((x[0] for x in ids if x), None)
        if first is not None:
            stats.first_tokens.add(first)
        head = record.messages[0]
        if head.role == "system":
            shared = stats.system_prompts[
                hashlib.sha256((first_text(head.content) or "").encode()).hexdigest()]
            if shared.tokens is None:
                shared.tokens = len(encoded[start]) if n else 0



def stats_of(records: Iterable[Record], tokenizer: str | None) -> Stats:
    """The statistics of ``records`` in one thread (a worker process's share)."""
    from .tokenizers import cached_tokenizer

    return collect(records, cached_tokenizer(tokenizer) if tokenizer else None, threads=1)
