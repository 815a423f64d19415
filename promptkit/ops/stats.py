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

from promptkit.core.figures import token_figures
from promptkit.core.records import USER_ROLES, Record, first_text, message_texts
from promptkit.core.tokenizers import Tokenizer
from promptkit.formats.aiperf import requests_of
from promptkit.text.prompts import Prompts

#: Records tokenized together (a progress line moves a batch at a time; measured: 512
#: as fast as 4096).
BATCH = 512


@dataclass
class SharedPrompt:
    count: int
    preview: str
    tokens: int | None = None


#: Lines of records with no prompt text kept to name in a message.
NO_TEXT_LINES = 5


@dataclass
class Stats:
    records: int = 0
    #: What AIPerf sends in one pass over the file: one a record, one a multi_turn turn.
    requests: int = 0
    #: User messages (a multi_turn turn; a hash-id record is one).
    turns: int = 0
    sessions: set[str] = field(default_factory=set)
    unsessioned: int = 0
    tokens: array = field(default_factory=lambda: array("I"))
    #: Records whose token count is their own ``input_length`` (a hash-id trace).
    stated: int = 0
    #: Records with messages but no text in them, and the first of their lines.
    no_text: int = 0
    no_text_lines: list[int] = field(default_factory=list)
    #: By the sha256 of the prompt's text.
    system_prompts: dict[str, SharedPrompt] = field(default_factory=dict)
    first_tokens: set[int] = field(default_factory=set)

    def merge(self, later: Stats) -> None:
        """Add the statistics of records that came after these."""
        self.records += later.records
        self.requests += later.requests
        self.turns += later.turns
        self.sessions |= later.sessions
        self.unsessioned += later.unsessioned
        self.tokens.extend(later.tokens)
        self.stated += later.stated
        self.no_text += later.no_text
        self.no_text_lines = (self.no_text_lines + later.no_text_lines)[:NO_TEXT_LINES]
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
            "requests": self.requests,
            "turns": self.turns,
        }
        if self.tokens:
            out["prompt_tokens"] = token_figures(self.tokens)
            if len(self.tokens) > self.stated:  # some were tokenized
                out["distinct_first_tokens"] = len(self.first_tokens)
        if self.stated:
            out["prompt_tokens_stated"] = self.stated
        if self.no_text:
            out["no_prompt_text"] = {"records": self.no_text, "lines": self.no_text_lines}
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
            threads: int | None = None, batch: int = BATCH, chat_template: str = "none",
            tokenizer_spec: str | None = None) -> Stats:
    """The statistics of ``records`` (token figures only with a tokenizer, or where a
    hash-id record states its length)."""
    tap = Tap(tokenizer, threads=threads, batch=batch, chat_template=chat_template,
              tokenizer_spec=tokenizer_spec)
    for record in records:
        tap.add(record)
    return tap.finish()


class Tap:
    """Counts records one at a time (e.g. as a writer writes them), tokenizing them
    in batches. A record must not change after it is added.

    A record's prompt tokens are those of the one prompt its messages make under
    ``chat_template``, as ``check`` makes it (``none``: every text tokenized on its
    own, the tokens one after another); a multi_turn conversation counts its turns as
    one prompt, without the server's replies."""

    def __init__(self, tokenizer: Tokenizer | None, *, threads: int | None = None,
                 batch: int = BATCH, chat_template: str = "none",
                 tokenizer_spec: str | None = None):
        self.stats = Stats()
        self.tokenizer = tokenizer
        self.threads = threads or os.cpu_count() or 1
        self.batch = batch
        self.pending: list[Record] = []
        self.prompts: Any = None
        if tokenizer is not None and chat_template != "none":

            self.prompts = Prompts(tokenizer, chat_template, tokenizer_spec)

    def add(self, record: Record) -> None:
        _count(self.stats, record)
        if not record.messages:
            if record.input_length is not None:  # a hash-id trace states it
                self.stats.tokens.append(record.input_length)
                self.stats.stated += 1
            return
        if not any(message_texts(record)):
            self.stats.no_text += 1
            if len(self.stats.no_text_lines) < NO_TEXT_LINES and record.lineno is not None:
                self.stats.no_text_lines.append(record.lineno)
            return
        if self.tokenizer is None:
            return
        self.pending.append(record)
        if len(self.pending) >= self.batch:
            self.finish()

    def finish(self) -> Stats:
        """Tokenize what is pending; return the statistics so far."""
        if self.pending:
            assert self.tokenizer is not None
            _tokenize(self.stats, self.pending, self.tokenizer, self.threads, self.prompts)
            self.pending = []
        return self.stats


def _count(stats: Stats, record: Record) -> None:
    stats.records += 1
    stats.requests += requests_of(record)
    stats.turns += (sum(m.role in USER_ROLES for m in record.messages) if record.messages
                    else 1)
    if record.session_id is None or record.layout == "multi_turn":
        stats.unsessioned += 1  # a multi_turn line is a conversation of its own
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


#: Characters of a record's first text tokenized for its first token.
FIRST_TOKEN_CHARS = 256


def _tokenize(stats: Stats, records: list[Record], tokenizer: Tokenizer, threads: int,
              prompts: Any = None) -> None:
    """Each record's prompt tokens (``prompts``: a :class:`~promptkit.ops.check.Prompts`
    rendering a chat template; else every text on its own), its first token (that of
    its first text) and the tokens of each system prompt not counted yet (on its own)."""
    texts: list[str] = []
    spans: list[tuple[int, int]] = []  # where a record's texts are in ``texts``
    firsts: list[int] = []  # where its first text is
    systems: dict[str, int] = {}  # a system prompt not counted yet: where its text is
    for record in records:
        parts = message_texts(record)
        lead = next(i for i, t in enumerate(parts) if t)
        if prompts is None:
            spans.append((len(texts), len(parts)))
            firsts.append(len(texts) + lead)
            texts.extend(parts)
        else:  # its first token only: the start of its first text is enough
            firsts.append(len(texts))
            texts.append(parts[lead][:FIRST_TOKEN_CHARS])
        head = record.messages[0]
        if head.role == "system":
            system = first_text(head.content) or ""
            key = hashlib.sha256(system.encode()).hexdigest()
            if stats.system_prompts[key].tokens is None and key not in systems:
                systems[key] = len(texts)
                texts.append(system)
    encoded = tokenizer.encode_batch(texts, threads)
    if prompts is not None:
        rendered = prompts.tokens([prompts.whole(r) for r in records])
        stats.tokens.extend(len(ids) for ids in rendered)
    else:
        stats.tokens.extend(sum(len(x) for x in encoded[start:start + n]) for start, n in spans)
    stats.first_tokens.update(encoded[at][0] for at in firsts if encoded[at])
    for key, at in systems.items():
        stats.system_prompts[key].tokens = len(encoded[at])


def stats_of(records: Iterable[Record], tokenizer: str | None,
             chat_template: str = "none") -> Stats:
    """The statistics of ``records`` in one thread (a worker process's share)."""
    from promptkit.core.tokenizers import cached_tokenizer

    return collect(records, cached_tokenizer(tokenizer) if tokenizer else None, threads=1,
                   chat_template=chat_template, tokenizer_spec=tokenizer)
