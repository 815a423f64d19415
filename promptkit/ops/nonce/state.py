"""What a nonce run is made of: the nonce of each record (:class:`NonceMaker`, a pure
function of the seed and the record's index), the sessions a run has seen
(:class:`Sessions`), and what the run remembers across records (:class:`NonceState`)."""

from __future__ import annotations

import hashlib
import time
from array import array
from base64 import b32encode
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from promptkit.core.errors import Skipping
from promptkit.core.figures import token_figures
from promptkit.text.templates import (
    TEMPLATES,
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
            out["tokens_before_nonce"] = {
                "chat_template": self.template, "records": len(self.ahead),
                **({"tokens": token_figures(self.ahead)} if self.ahead else {}),
                "records_with_a_block_before": sum(n >= BLOCK for n in self.ahead),
                "block_size": BLOCK, "refused_by_the_template": self.refused}
        if self.tokenizer is None:
            return out
        before: dict[str, Any] = {"tokenizer": self.tokenizer, "records": len(self.tokens_before)}
        if self.tokens_before:
            before["prompt_tokens"] = token_figures(self.tokens_before)
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


