"""Nonces: make every request's prompt unique from its first token on.

A record's nonce depends only on ``(seed, kind, record index)`` (and, for
``every-turn``, the message's position), never on a shared RNG's position, so
sharded or parallel runs produce the same bytes as a sequential one.

Every kind puts its per-record part first, so that prompts differ at their
first tokens: a date-first timestamp would make all records share a dozen
tokens, nearly a whole 16-token cache block.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from array import array
from base64 import b32encode
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from promptkit.core.errors import InvalidRecordError, PromptkitError, Skipping
from promptkit.core.limits import MAX_COPIES, MAX_NONCE_LENGTH
from promptkit.core.records import (
    USER_ROLES,
    Message,
    Record,
    content_texts,
    message_texts,
    prepend_text,
)
from promptkit.core.tokenizers import Tokenizer, cached_tokenizer
from promptkit.core.words import counted
from promptkit.formats.aiperf import first_request, sends_tools
from promptkit.ops.base import Step, Where, checked, flag, integer, one_of, text, tokenizer_loads
from promptkit.ops.fit import _prefix_end
from promptkit.ops.pad import PadError, exact_text, filler_words
from promptkit.ops.stats import Stats
from promptkit.text.templates import (
    PROBE,
    TEMPLATES,
    Renderer,
    TemplateError,
    hf_template,
    request_tools,
    text_of,
)

KINDS = ("uuid", "timestamp", "random")
POSITIONS = ("start", "system", "user", "every-turn", "salt")
DEFAULT_TEMPLATE = "{nonce}\n"
DEFAULT_RANDOM_LENGTH = 16
DEFAULT_TIME_STEP_US = 1000
#: Tokens before a nonce that fill a cache block at vLLM's default block size: requests
#: that share them share that block, whatever the nonce after them.
BLOCK = 16
#: Chat templates a nonce run can count the tokens before its nonces under.
NONCE_TEMPLATES = TEMPLATES[1:]
#: Fresh first hash ids start here: above every id a real trace uses (they are
#: small, remapped integers) and below 2**53, so any JSON reader keeps them exact.
HASH_ID_BASE = 1 << 52


def new_seed() -> int:
    """A seed for an unseeded run (recorded in the manifest, so the run is reproducible)."""
    return secrets.randbits(63)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> int:
    """An ISO 8601 time as integer microseconds since the epoch (UTC if no zone given)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


#: RFC 4122 variant nibble (10xx) for each hex digit.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


class NonceMaker:
    """Makes the nonce string of ``(index, sub)`` for one kind, seed and settings."""

    def __init__(
        self,
        kind: str,
        seed: int,
        *,
        length: int = DEFAULT_RANDOM_LENGTH,
        start_time: str | None = None,
        time_step_us: int = DEFAULT_TIME_STEP_US,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown nonce kind {kind!r}; choose from {', '.join(KINDS)}")
        if length < 1:
            raise ValueError("nonce length must be at least 1")
        self.kind = kind
        self.seed = seed
        self.length = length
        self._prefix = f"{seed}:{kind}:".encode()
        self._start_us = parse_time(start_time) if start_time else 0
        self._step_us = time_step_us
        self._last_second = -1
        self._second_text = ""
        self.make = getattr(self, "_" + kind)

    def _digest(self, index: int, sub: int, size: int) -> bytes:
        key = b"%s%d:%d" % (self._prefix, index, sub)
        if size <= 64:
            return hashlib.blake2b(key, digest_size=size).digest()
        return hashlib.shake_256(key).digest(size)

    def _uuid(self, index: int, sub: int = 0) -> str:
        h = hashlib.blake2b(b"%s%d:%d" % (self._prefix, index, sub), digest_size=16).hexdigest()
        # (Concatenated: a quarter faster than an f-string, measured.)
        return (h[:8] + "-" + h[8:12] + "-4" + h[13:16] + "-" + _VARIANT[h[16]] + h[17:20] + "-"
                + h[20:])

    def make_many(self, first: int, count: int) -> list[str]:
        """The nonces of indices ``first`` to ``first + count - 1``: what ``make`` gives
        each, the uuid kind made a batch at a time (its hashes fed the same bytes, its
        version and variant bits set and its hex digits placed for all at once: about
        a third of the time)."""
        if self.kind != "uuid" or count < 1:
            return [self.make(i) for i in range(first, first + count)]
        import numpy as np

        start = hashlib.blake2b(self._prefix, digest_size=16)
        digests = []
        for index in range(first, first + count):
            h = start.copy()
            h.update(b"%d:0" % index)
            digests.append(h.digest())
        raw = np.frombuffer(b"".join(digests), np.uint8).reshape(count, 16).copy()
        raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # the version digit: 4
        raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the variant digit: 8, 9, a or b
        digits = np.frombuffer(raw.tobytes().hex().encode(), np.uint8).reshape(count, 32)
        out = np.full((count, 36), ord("-"), np.uint8)
        for to, of in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
            width = 12 if to == 24 else 8 if to == 0 else 4
            out[:, to:to + width] = digits[:, of:of + width]
        text = out.tobytes().decode("ascii")
        return [text[i:i + 36] for i in range(0, 36 * count, 36)]

    def _random(self, index: int, sub: int = 0) -> str:
        raw = self._digest(index, sub, (self.length * 5 + 7) // 8)
        return b32encode(raw).decode("ascii").lower()[: self.length]

    def _timestamp(self, index: int, sub: int = 0) -> str:
        moment = self._start_us + index * self._step_us
        second, micro = divmod(moment, 1_000_000)
        if second != self._last_second:
            self._last_second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        suffix = f"{sub}" if sub else ""
        return f"{index:06d}{suffix}@{self._second_text}.{micro:06d}Z"

    def first_hash_id(self, index: int) -> int:
        offset = int.from_bytes(hashlib.blake2b(self._prefix + b"hash_ids", digest_size=8).digest())
        return HASH_ID_BASE + (offset + index) % HASH_ID_BASE


class Sessions:
    """A set of session ids whose memory stays small as it grows: the newest ids in a
    set, the older ones as 16-byte blake2b digests in a sorted array (16 bytes a
    conversation instead of about 100 for a string in a set; a file may begin millions).

    Two ids with one digest would count as one conversation: for 128-bit digests that
    is as likely as two different files with one sha256 half, which no manifest
    guards against either."""

    #: Ids kept as strings before the older ones become digests.
    RECENT = 1 << 14

    def __init__(self) -> None:
        self.recent: set[str] = set()
        self.old: Any = None  # a sorted numpy array of 16-byte digests, once there are any

    @staticmethod
    def _digests(ids: Iterable[str]) -> Any:
        import numpy as np

        packed = bytearray()
        for i in ids:
            packed += hashlib.blake2b(i.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return np.frombuffer(bytes(packed), dtype="S16")

    def _in_old(self, digests: Any) -> Any:
        """Which of ``digests`` (an array) the older ids hold."""
        import numpy as np

        if self.old is None or not len(self.old) or not len(digests):
            return np.zeros(len(digests), dtype=bool)
        at = np.minimum(self.old.searchsorted(digests), len(self.old) - 1)
        return self.old[at] == digests

    def __contains__(self, session: object) -> bool:
        if session in self.recent:
            return True
        if self.old is None or not isinstance(session, str):
            return False
        return bool(self._in_old(self._digests([session]))[0])

    def __len__(self) -> int:
        if self.old is None or not self.recent:
            return len(self.recent) + (len(self.old) if self.old is not None else 0)
        # An id may be in both (added again once older): count it once.
        return len(self.old) + int((~self._in_old(self._digests(self.recent))).sum())

    def add(self, session: str) -> None:
        self.recent.add(session)
        if len(self.recent) >= self.RECENT:
            self._merge(self._digests(self.recent))
            self.recent = set()

    def _merge(self, digests: Any) -> None:
        """Put ``digests`` among the older ones, sorted, each once: one new array (the
        merge's only copy of the older ones)."""
        import numpy as np

        new = np.unique(digests)
        if self.old is None:
            self.old = new
            return
        new = new[~self._in_old(new)]
        self.old = np.insert(self.old, self.old.searchsorted(new), new)

    def discard(self, session: str) -> None:
        self.recent.discard(session)
        if self.old is not None:
            self.old = self.old[self.old != self._digests([session])[0]]

    def isdisjoint(self, other: Iterable[str] | Sessions) -> bool:
        if not isinstance(other, Sessions):
            return not any(session in self for session in other)
        if not self.recent.isdisjoint(other.recent):
            return False
        # Each side's strings against the other's digests, and digests against digests.
        if self.old is not None and other.recent and self._in_old(
                self._digests(other.recent)).any():
            return False
        if other.old is None:
            return True
        return not (self._in_old(other.old).any()
                    or self.recent and other._in_old(self._digests(self.recent)).any())

    def update(self, other: Sessions) -> None:
        if other.old is not None:
            self._merge(other.old)
        for session in other.recent:
            self.add(session)

    def __ior__(self, other: Sessions) -> Sessions:
        self.update(other)
        return self


@dataclass
class NonceState(Skipping):
    """What a nonce run remembers across records: the conversations already begun.

    Only records with a ``session_id`` touch it. Runs over chunks of a file in
    parallel each start with an empty state, and their states are merged in order.
    A record left out (``skip_invalid``) begins no conversation: a later line of it
    is then its first, and gets the nonce.
    """

    started: Sessions = field(default_factory=Sessions)  # sessions whose first line was seen
    #: Sessions whose user turn has a nonce.
    user_done: Sessions = field(default_factory=Sessions)
    salts: dict[str, str] = field(default_factory=dict)
    #: A hash-id session's fresh first ids: (session, the first id it replaces) -> fresh.
    first_ids: dict[tuple[str, int], int] = field(default_factory=dict)
    #: The nonce text of each session whose lines AIPerf sends as they are (see
    #: :func:`sent_whole`), for its later lines.
    nonces: dict[str, str] = field(default_factory=dict)
    #: Sessions whose first line (as this state saw it) was left out: a chunk run on its
    #: own may have left out a line that continued a conversation begun earlier.
    left_out: set[str] = field(default_factory=set)
    #: With a tokenizer: its name, and each record's prompt tokens before its nonce (one
    #: entry a record passed on: the manifest's figures from before the step).
    tokenizer: str | None = None
    tokens_before: array = field(default_factory=lambda: array("I"))
    #: Records written that send tools, and of them those whose nonce went into a user
    #: message's text: every common chat template renders the tools before it.
    tools: int = 0
    after_tools: int = 0
    #: With a chat template: its name, each record's prompt tokens (its first request's,
    #: rendered) before its nonce, the records the template refuses, and the tokens a
    #: nonce at the start of a system message would have before it in a record that sends
    #: tools (the fix a warning names, when it is one).
    template: str | None = None
    ahead: array = field(default_factory=lambda: array("I"))
    refused: int = 0
    system_ahead: int | None = None
    #: ``--skip-invalid`` (set by the pipeline): a record the nonce cannot go into (no user
    #: message for ``--at user``, too short to give up the nonce's tokens) is left out and
    #: listed in ``skipped`` (``"LINE: problem"``), not an error (see :class:`Skipping`).
    skip_invalid: bool = False
    skipped: list[str] = field(default_factory=list)
    op: str = ""

    def overlaps(self, later: NonceState) -> bool:
        """Whether ``later`` (a chunk run on its own) continued a session begun here, or
        left out a line that may have (one that continues a conversation is no error)."""
        return not (self.started.isdisjoint(later.started)
                    and self.started.isdisjoint(later.left_out))

    def update(self, later: NonceState) -> None:
        self.started |= later.started
        self.user_done |= later.user_done
        self.salts.update(later.salts)
        self.first_ids.update(later.first_ids)
        self.nonces.update(later.nonces)
        self.tokenizer = self.tokenizer or later.tokenizer
        self.tokens_before.extend(later.tokens_before)
        self.tools += later.tools
        self.after_tools += later.after_tools
        self.template = self.template or later.template
        self.ahead.extend(later.ahead)
        self.refused += later.refused
        if self.system_ahead is None:
            self.system_ahead = later.system_ahead
        self.skipped += later.skipped

    def forget(self, sessions: Iterable[str | None]) -> None:
        """Undo the conversations a record left out had begun."""
        for session in sessions:
            if session is not None:
                self.left_out.add(session)
                self.started.discard(session)
                self.user_done.discard(session)
                self.salts.pop(session, None)
                self.nonces.pop(session, None)
                for key in [k for k in self.first_ids if k[0] == session]:
                    del self.first_ids[key]

    def report(self) -> dict[str, Any]:
        """What the manifest records beside the step's parameters: with a tokenizer, the
        prompt-token figures of the records before their nonces (the output's
        ``token_stats`` are the figures after); the records that send tools, and where
        their nonces went; with a chat template, the tokens before each nonce."""
        out: dict[str, Any] = {}
        if self.tools:
            out["tools"] = {"records": self.tools, "nonce_after_tools": self.after_tools}
        if self.template is not None:
            figures = Stats(records=len(self.ahead), tokens=self.ahead).summary()
            out["tokens_before_nonce"] = {
                "chat_template": self.template, "records": len(self.ahead),
                **({"tokens": figures["prompt_tokens"]} if "prompt_tokens" in figures else {}),
                "records_with_a_block_before": sum(n >= BLOCK for n in self.ahead),
                "block_size": BLOCK, "refused_by_the_template": self.refused}
        if self.tokenizer is None:
            return out
        summary = Stats(records=len(self.tokens_before), tokens=self.tokens_before).summary()
        before = {"tokenizer": self.tokenizer, "records": summary["records"]}
        if "prompt_tokens" in summary:
            before["prompt_tokens"] = summary["prompt_tokens"]
        return {"token_stats_before": before, **out}

    def warning(self, at: str) -> str | None:
        """One line on nonces that come after tokens requests share (the tools, a
        template's header), with the fix; ``None`` when none do."""
        if self.template is not None:
            full = sum(n >= BLOCK for n in self.ahead)
            if not full:
                return None
            name = ("the tokenizer's own chat template" if self.template == "hf"
                    else f"the {self.template} template")
            why = ("its header and the tools it renders before the user's text" if self.tools
                   else "its header")
            text = (f"in {full} of {len(self.ahead)} records the nonce comes after at least one "
                    f"full {BLOCK}-token cache block of the prompt {name} renders "
                    f"({min(self.ahead)}-{max(self.ahead)} tokens before it: {why}); requests "
                    "that share those tokens share those blocks (promptkit check predicts the "
                    "hits); use --at salt (a cache_salt, which vLLM puts into the first "
                    "block's hash)")
            if at != "system" and self.system_ahead is not None and self.system_ahead < BLOCK:
                text += (f", or --at system ({name} renders the system message first: "
                         f"{self.system_ahead} tokens before the nonce)")
            return text
        if not self.after_tools:
            return None
        return (f"{self.after_tools} of {self.tools} records send tools and their nonce is in "
                "a user message's text: chat templates render the tools before it (Qwen 2.5 "
                "and Hermes in a system turn, Llama 3.1 inside the first user message), so "
                "requests with the same tools share their first cache blocks whatever the "
                "nonce; use --at salt (a cache_salt), or --at system for templates that render "
                "the system message first (qwen2.5, llama3.1); give --tokenizer and "
                "--chat-template to count the tokens before each nonce")


def add_nonces(
    records: Iterable[Record],
    *,
    kind: str = "uuid",
    seed: int,
    at: str = "start",
    template: str = DEFAULT_TEMPLATE,
    length: int = DEFAULT_RANDOM_LENGTH,
    start_time: str | None = None,
    time_step_us: int = DEFAULT_TIME_STEP_US,
    copies: int = 1,
    first_index: int = 0,
    tokenizer: str | None = None,
    keep_tokens: bool = False,
    chat_template: str | None = None,
    state: NonceState | None = None,
) -> Iterator[Record]:
    """Give every record a unique nonce (``copies`` distinct nonce'd copies of each).

    - ``at="start"``: before the first token of the conversation, whatever its role.
    - ``at="system"``: at the start of the system message (one is created if absent).
    - ``at="user"``: at the start of the first user message (a shared system prompt
      stays shared).
    - ``at="every-turn"``: the start, and every later user message.
    - ``at="salt"``: no text change; a unique ``cache_salt`` in the request ``extra``.

    Records without text (``input_length``/``hash_ids``) get a fresh, unique first
    hash id instead, one a session (see :func:`first_id`). Records continuing a
    conversation (a later line with a ``session_id`` seen before) keep the nonce of the
    conversation's first line: a line AIPerf sends after the history is left as it is;
    a line it sends as it is, history included (:func:`sent_whole`), gets that nonce
    where the first line got it (but with ``every-turn``, whose nonces are a line's
    own).
    Record ``i`` (its ``index``, the line number less one for a file; else its
    position counted from ``first_index``) gets the nonces of indices
    ``i * copies + c``. So a shard of records gets the same nonces as a sequential
    run over all of them.

    With ``tokenizer``, each record's prompt tokens under it before the nonce (the sum
    over its message texts, as ``stats`` counts them) go into ``state.tokens_before``.
    With ``chat_template`` too, the tokens of each record's first request, rendered as
    the server renders it (tools included), that come before its nonce go into
    ``state.ahead`` (see :meth:`NonceState.warning`). Whatever the options, the records
    that send tools, and those whose nonce went into a user message's text (after the
    tools, in every common template), are counted in ``state``.
    With ``keep_tokens`` too, the nonce's tokens are taken back out of the end of the
    last user message's last text (a nonce at its start stays whole), cut as ``fit``
    cuts, so the record has exactly as many tokens as before. A ``cache_salt`` or a fresh
    hash id costs no prompt tokens.

    A record the nonce cannot go into (no user message for ``at="user"``, a hash-id
    record for ``user`` or ``system``, a last user text too short to give up the nonce's
    tokens) is an :class:`InvalidRecordError`, or, with ``state.skip_invalid``, left out
    with all its copies and listed in ``state.skipped``.

    Records are modified in place (copies beyond the first are new records).
    """
    if keep_tokens and tokenizer is None:
        raise ValueError("keep_tokens needs a tokenizer")
    if chat_template and tokenizer is None:
        raise ValueError("chat_template needs a tokenizer")
    state = state if state is not None else NonceState()
    options: dict[str, Any] = {
        "kind": kind, "seed": seed, "at": at, "template": template, "length": length,
        "start_time": start_time, "time_step_us": time_step_us, "copies": copies,
    }
    if tokenizer is None:
        yield from _nonced(records, first_index=first_index, state=state, **options)
    else:
        yield from _counted(records, tokenizer, keep_tokens, first_index, state, options,
                            chat_template)


def _nonced(
    records: Iterable[Record],
    *,
    kind: str,
    seed: int,
    at: str,
    template: str,
    length: int,
    start_time: str | None,
    time_step_us: int,
    copies: int,
    first_index: int,
    state: NonceState,
) -> Iterator[Record]:
    """:func:`add_nonces` without a tokenizer."""
    if at not in POSITIONS:
        raise ValueError(f"unknown position {at!r}; choose from {', '.join(POSITIONS)}")
    if "{nonce}" not in template:
        raise ValueError("the template must contain {nonce}")
    if copies < 1:
        raise ValueError("copies must be at least 1")
    maker = NonceMaker(kind, seed, length=length, start_time=start_time,
                       time_step_us=time_step_us)
    before, _, after = template.partition("{nonce}")
    make = maker.make
    started = state.started

    if copies == 1 and at == "start":  # the common case, kept lean
        for position, record in enumerate(records, start=first_index):
            session = record.session_id
            if session is not None and session in started and record.messages:
                if session in state.nonces and sent_whole(record):
                    message = record.messages[0]
                    message.content = prepend_text(message.content, state.nonces[session])
                yield record
                continue
            index = record.index if record.index is not None else position
            if record.messages:
                message = record.messages[0]
                nonce = before + make(index) + after
                content = message.content
                message.content = (
                    nonce + content if content.__class__ is str else prepend_text(content, nonce)
                )
                if session is not None and sent_whole(record):
                    state.nonces[session] = nonce
                if (record.extra is not None or record.layout == "multi_turn") \
                        and sends_tools(record):
                    state.tools += 1
                    state.after_tools += message.role != "system"
            else:
                try:
                    _nonce_hash_ids(record, maker, index, at, state)
                except InvalidRecordError as exc:
                    state.reject(exc)
                    continue
            if session is not None:
                started.add(session)
            yield record
        return

    for position, source in enumerate(records, start=first_index):
        base = source.index if source.index is not None else position
        # Copies are taken before the first one is changed.
        batch = [source, *(copy_record(source) for _ in range(copies - 1))]
        begins = source.session_id is not None and source.session_id not in started
        try:
            _nonce_copies(batch, base, copies, at, make, before, after, maker, state)
        except InvalidRecordError as exc:  # none of its copies is written
            if begins:
                state.forget({source.session_id, *(r.session_id for r in batch)})
            state.reject(exc)
            continue
        yield from batch


def _nonce_copies(batch: list[Record], base: int, copies: int, at: str,
                  make: Callable[..., str], before: str, after: str, maker: NonceMaker,
                  state: NonceState) -> None:
    """Put the nonces into the copies of one record (all of them, or raise)."""
    started, user_done, salts = state.started, state.user_done, state.salts
    for c, record in enumerate(batch):
        index = base * copies + c
        if copies > 1:
            record.index = index
        if c and record.session_id is not None:
            record.session_id = f"{record.session_id}#{c}"
        session = record.session_id
        continuing = session is not None and session in started
        if session is not None:
            started.add(session)
        if record.messages and at != "salt" and sends_tools(record):
            state.tools += 1
            state.after_tools += not continuing and (
                at == "user" or at != "system" and record.messages[0].role != "system")

        if at == "salt":  # one salt a conversation: its lines may reuse each other's cache
            if session is None:
                salt = make(index)
            elif continuing:
                salt = salts[session]
            else:
                salt = salts[session] = make(index)
            record.extra = {**(record.extra or {}), "cache_salt": salt}
        elif not record.messages:
            _nonce_hash_ids(record, maker, index, at, state)
        elif at == "start":
            nonce = _session_nonce(record, continuing, state, before + make(index) + after)
            if nonce is not None:
                message = record.messages[0]
                message.content = prepend_text(message.content, nonce)
        elif at == "every-turn":
            for i, message in enumerate(record.messages):
                if i == 0 or message.role in USER_ROLES:
                    message.content = prepend_text(
                        message.content, before + make(index, i) + after
                    )
        elif at == "user":
            if session is None or session not in user_done:
                target = _first_user(record, required=not continuing)
                if target is not None:
                    nonce = before + make(index) + after
                    target.content = prepend_text(target.content, nonce)
                    if session is not None:
                        user_done.add(session)
                        if sent_whole(record):
                            state.nonces[session] = nonce
            elif session in state.nonces and sent_whole(record):
                target = _first_user(record, required=False)
                if target is not None:
                    target.content = prepend_text(target.content, state.nonces[session])
        else:  # system
            nonce = _session_nonce(record, continuing, state, before + make(index) + after)
            if nonce is None:
                continue
            head = record.messages[0]
            if head.role == "system":
                head.content = prepend_text(head.content, nonce)
            else:
                record.messages.insert(0, Message("system", nonce.rstrip()))


def _counted(records: Iterable[Record], tokenizer: str, keep_tokens: bool, first_index: int,
             state: NonceState, options: dict[str, Any],
             chat_template: str | None = None) -> Iterator[Record]:
    """:func:`add_nonces` with a tokenizer: one record at a time (nonces are
    index-addressed, so this gives the nonces of one run over all of them); with a chat
    template, each record's tokens before its nonce are counted too."""
    encoder = cached_tokenizer(tokenizer)
    state.tokenizer = encoder.name
    copies, seed = options["copies"], options["seed"]
    renderer = Renderer(chat_template, encoder, tokenizer) if chat_template else None
    state.template = chat_template
    maker = NonceMaker(options["kind"], seed, length=options["length"],
                       start_time=options["start_time"], time_step_us=options["time_step_us"])
    counts: dict[str, int] = {}  # a record's texts' tokens: most texts are the same after

    def count(text: str) -> int:
        known = counts.get(text)
        if known is None:
            known = counts[text] = len(encoder.encode(text))
        return known

    for position, record in enumerate(records, start=first_index):
        counts.clear()
        tokens = _prompt_tokens(record, count)
        base = record.index if record.index is not None else position
        user = _last_user(record)
        own = _last_text(user.content) if user is not None else None
        session = record.session_id
        begins = session is not None and session not in state.started
        batch = list(_nonced([record], first_index=position, state=state, **options))
        if keep_tokens:
            try:
                for c, out in enumerate(batch):
                    draw = hashlib.blake2b(f"{seed}:{base * copies + c}".encode(),
                                           digest_size=8).digest()
                    _give_back(out, tokens, own, count, encoder,
                               filler_words(int.from_bytes(draw)))
            except InvalidRecordError as exc:
                if begins:
                    state.forget({session, *(out.session_id for out in batch)})
                state.reject(exc)
                continue
        for c, out in enumerate(batch):
            state.tokens_before.append(tokens)
            if renderer is not None and options["at"] != "salt" and out.messages:
                _count_ahead(out, maker.make(base * copies + c), renderer, state)
            yield out


def _count_ahead(record: Record, nonce: str, renderer: Renderer, state: NonceState) -> None:
    """Count the tokens of ``record``'s first request, rendered, before its ``nonce`` (a
    record whose first request does not hold it, a line continuing a conversation, is
    not counted); and, once, those a nonce at the start of a system message would have
    before it in a record that sends tools."""
    messages, tools = first_request(record)
    try:
        sent = request_tools(tools)
        ahead = renderer.tokens_before(renderer.conversation(messages), sent, nonce)
        if ahead is None:
            return
        state.ahead.append(ahead)
        if sent and state.system_ahead is None:
            chat = renderer.conversation(messages)
            if chat[0]["role"] == "system":
                chat[0] = {**chat[0],
                           "content": renderer.content(PROBE + text_of(chat[0]["content"]))}
            else:
                chat.insert(0, {"role": "system", "content": renderer.content(PROBE)})
            state.system_ahead = renderer.tokens_before(chat, sent, PROBE)
    except TemplateError:
        state.refused += 1


def _prompt_tokens(record: Record, count: Callable[[str], int]) -> int:
    """A record's prompt tokens as ``stats`` counts them (a hash-id record: its
    ``input_length``)."""
    if not record.messages:
        return record.input_length or 0
    return sum(count(text) for text in message_texts(record))


def _give_back(record: Record, tokens: int, own: str | None, count: Callable[[str], int],
               encoder: Tokenizer, words: Iterator[str]) -> None:
    """Cut the end of the last user message's last text so that ``record`` has
    ``tokens`` prompt tokens again; ``own`` is that text before the nonce."""
    if not record.messages:
        return
    give = _prompt_tokens(record, count) - tokens
    if give == 0:
        return
    user = _last_user(record)
    text = _last_text(user.content) if user is not None else None
    if user is None or text is None:
        raise InvalidRecordError(f"no user text to give up {counted(give, 'token')} for the nonce "
                                 "(--keep-tokens)", lineno=record.lineno)
    own = own or ""
    kept = len(text) - len(own) if text.endswith(own) else len(text)  # the nonce stays whole
    ids = encoder.encode(text)
    target = len(ids) - give
    end = _prefix_end(text, ids, target, encoder) if target > 0 else 0
    cut = None
    if end > kept:  # else nothing of the text itself would be left
        with contextlib.suppress(PadError):  # no exact count from this cut (rare)
            cut = exact_text(text[:end], target, encoder, words, separator="")
    if cut is None:
        raise InvalidRecordError(
            f"too short to give up {counted(give, 'token')} for the nonce (its last user text has "
            f"{count(own)}; --keep-tokens)", lineno=record.lineno)
    user.content = _with_last_text(user.content, cut)


def _last_user(record: Record) -> Message | None:
    for message in reversed(record.messages):
        if message.role in USER_ROLES:
            return message
    return None


def _last_text(content: Any) -> str | None:
    """The last of a content's texts, in the order they are counted."""
    texts = content_texts(content)
    return texts[-1] if texts else None


def _with_last_text(content: Any, text: str) -> Any:
    """``content`` with its last text (see :func:`_last_text`) replaced by ``text``."""
    if isinstance(content, str):
        return text
    parts = list(content)
    for i in range(len(parts) - 1, -1, -1):
        part = parts[i]
        if isinstance(part, str):
            parts[i] = text
            return parts
        if isinstance(part, dict):
            if isinstance(part.get("text"), str):
                parts[i] = {**part, "text": text}
                return parts
            contents = part.get("contents")
            if isinstance(contents, list):
                where = [j for j, t in enumerate(contents) if isinstance(t, str)]
                if where:
                    contents = list(contents)
                    contents[where[-1]] = text
                    parts[i] = {**part, "contents": contents}
                    return parts
    raise AssertionError("no text to replace")


def sent_whole(record: Record) -> bool:
    """Whether AIPerf sends a record's messages as they are, a later line of a session
    holding its history (OpenAI lines, a ``mooncake_trace`` line's ``messages`` or
    ``payload``: its loader's ``message_array_with_responses``), not after the earlier
    lines and the server's replies."""
    layout = record.layout or ""
    return layout == "openai" or layout.startswith(("mooncake_trace:messages",
                                                     "mooncake_trace:payload"))


def _session_nonce(record: Record, continuing: bool, state: NonceState,
                   fresh: str) -> str | None:
    """The nonce a record gets at its start (or its system message's): ``fresh`` for a
    session's first line (kept for its later lines when they are sent whole), the
    session's for a later line sent whole, none for another later line."""
    session = record.session_id
    if not continuing:
        if session is not None and sent_whole(record):
            state.nonces[session] = fresh
        return fresh
    return state.nonces.get(session) if sent_whole(record) else None  # type: ignore[arg-type]


def _first_user(record: Record, *, required: bool) -> Message | None:
    for message in record.messages:
        if message.role in USER_ROLES:
            return message
    if required:
        raise InvalidRecordError("no user message to put the nonce in (use --at start)",
                                 lineno=record.lineno)
    return None


def _nonce_hash_ids(record: Record, maker: NonceMaker, index: int, at: str,
                    state: NonceState) -> None:
    if at not in ("start", "every-turn"):
        raise InvalidRecordError(
            f"a record with only input_length/hash_ids has no {at} message; "
            "use --at start (a fresh first hash id) or --at salt",
            lineno=record.lineno,
        )
    ids = record.hash_ids
    if not ids:
        record.hash_ids = [maker.first_hash_id(index)]  # AIPerf then synthesizes a unique block
        return
    if max(ids) >= HASH_ID_BASE:
        raise InvalidRecordError(f"hash ids of {HASH_ID_BASE} or more are not supported",
                                 lineno=record.lineno)
    record.hash_ids = [first_id(state, maker, record.session_id, ids[0], index), *ids[1:]]


def first_id(state: NonceState, maker: NonceMaker, session: str | None, first: int,
             index: int) -> int:
    """The fresh first hash id of record ``index``, whose first id is ``first``: its own
    (a record with no session), else its session's: every line of a session whose ids
    begin with ``first`` gets the one made for the first of them, so the session's turns
    still share their history's blocks, and no other session shares any (a line of it
    beginning with another id gets another: a hash id is one block of one size)."""
    if session is None:
        return maker.first_hash_id(index)
    key = (session, first)
    fresh = state.first_ids.get(key)
    if fresh is None:
        fresh = state.first_ids[key] = maker.first_hash_id(index)
    return fresh


def copy_record(record: Record) -> Record:
    """A copy that shares no mutable state a transform changes with ``record``."""
    return Record(
        messages=[Message(m.role, m.content, dict(m.fields)) for m in record.messages],
        session_id=record.session_id,
        timestamp=record.timestamp,
        delay=record.delay,
        output_length=record.output_length,
        extra=dict(record.extra) if record.extra is not None else None,
        input_length=record.input_length,
        hash_ids=list(record.hash_ids) if record.hash_ids is not None else None,
        fields=dict(record.fields),
        layout=record.layout,
        lineno=record.lineno,
        index=record.index,
    )


def nonce_params(**params: Any) -> dict[str, Any]:
    """All parameters of a nonce step, defaults filled in (for manifests)."""
    full = {
        "kind": "uuid", "at": "start", "template": DEFAULT_TEMPLATE,
        "length": DEFAULT_RANDOM_LENGTH, "start_time": None,
        "time_step_us": DEFAULT_TIME_STEP_US, "copies": 1, "first_index": 0,
    }
    full.update(params)
    for key in ("tokenizer", "keep_tokens", "chat_template"):  # only when used: plain
        # runs keep their shape
        if not full.get(key, True):
            del full[key]
    if full.get("seed") is None:
        full["seed"] = new_seed()
    if full["kind"] == "timestamp" and full["start_time"] is None:
        full["start_time"] = now_iso()
    return full


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``nonce`` step of ``params`` (defaults filled in, an unseeded one given a
    seed), every parameter checked and the tokenizer loaded before anything is read."""
    checked("nonce", params, {
        "kind": one_of(KINDS), "seed": integer(), "at": one_of(POSITIONS),
        "template": text(optional=False), "length": integer(1, MAX_NONCE_LENGTH, optional=False),
        "start_time": text(), "time_step_us": integer(1, optional=False),
        "copies": integer(1, MAX_COPIES, optional=False),
        "first_index": integer(0, optional=False),
        "tokenizer": text(), "keep_tokens": flag(),
        "chat_template": one_of(NONCE_TEMPLATES, optional=True)})
    full = nonce_params(**params)
    if "{nonce}" not in full["template"]:
        raise PromptkitError(f"nonce: template {full['template']!r} does not contain {{nonce}}")
    if full.get("keep_tokens") and full.get("tokenizer") is None:
        raise PromptkitError("nonce: keep_tokens needs a tokenizer (the tokens it keeps are "
                             "counted under it)")
    if full.get("chat_template") and full.get("tokenizer") is None:
        raise PromptkitError("nonce: chat_template needs a tokenizer (the tokens before each "
                             "nonce are counted under it)")
    if full["start_time"] is not None:
        try:
            parse_time(full["start_time"])
        except ValueError as exc:
            raise PromptkitError(f"nonce: start_time: {exc}") from None
    tokenizer_loads(full.get("tokenizer"))
    if full.get("chat_template") == "hf":
        hf_template(full["tokenizer"])
    return Step("nonce", full)
