"""Predict the prefix-cache hit rate a file will cause, before anyone spends GPU time.

The records become the requests AIPerf sends, in its order (warmup first,
wrapping around the file when it runs out; lines sharing a session in a row),
and those are replayed through a simulation of the server's prefix cache
(:mod:`promptkit.text.cachesim`, behind :class:`Engine`). What is simulated is what the
server sees: the tokens of the rendered chat template (``--chat-template``), or
the raw texts, under ``--tokenizer``, with the system prompt AIPerf adds
(``--system-prompt-file``). A ``multi_turn`` conversation is one request a
turn, each with the history: earlier turns and, after each, the server's reply
(as long as its ``output_length``). A reply's text is unknown: the point
prediction takes it to come back as generated, the low end of the range takes
none of its blocks to hit. Hits within a conversation (its own history) are
reported apart from hits across conversations. Hash-id traces are checked on
their ids, one id a block.

The report also says how many tokens the chat template puts before the first
content, and whether those alone fill a block: then every request hits that
block whatever a text nonce does, and only ``cache_salt`` reaches zero.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from promptkit.core.errors import (
    BadOptionError,
    CheckError,
    InvalidRecordError,
    OptionNeededError,
    PromptkitError,
    Skipping,
)
from promptkit.core.limits import MAX_RECORDS, MAX_TOKENS
from promptkit.core.progress import tracked
from promptkit.core.records import Message, Record, content_texts
from promptkit.core.tokenizers import Tokenizer
from promptkit.formats.aiperf import (
    blocks_problem,
    fixed_schedule,
    hoisted_system,
    sends_tools,
    turn_tools,
)
from promptkit.io.files import read_whole
from promptkit.ops.base import (
    Step,
    Where,
    checked,
    flag,
    integer,
    number,
    one_of,
    text,
    tokenizer_loads,
)
from promptkit.text import cachebust
from promptkit.text.cachesim import Runs, SglangCache, VllmCache, mixed
from promptkit.text.templates import (
    PROBE,
    TEMPLATES,
    Conversation,
    Renderer,
    TemplateError,
    Tools,
    request_tools,
    text_of,
)

ENGINES = ("vllm", "sglang")
#: Leading tokens compared to find where a record first differs from all before it.
PREFIX_WINDOW = 256
HASH_BLOCK_SIZE = 512
TEXT_BLOCK_SIZE = 16
#: Candidate reply stand-ins: a word a token, repeated.
_FILLER_UNITS = (" the", " and", " of", " a", " to", " x", "x", " ")



# ---------------------------------------------------------------- requests


@dataclass
class _Turn:
    """One request a benchmark client sends: the conversation of its prompt and the
    tools it sends (``text``: the prompt its template renders; under ``none``, the
    conversation's texts are tokenized one at a time), its salt and how many tokens the
    server generates for it (``None``: not known)."""

    chat: Conversation
    tools: Tools
    salt: str | None
    reply_tokens: int | None
    text: str | None = None


class Prompts:
    """Turns records into what the server's cache sees: the requests AIPerf sends for
    each, as token ids (rendered by :mod:`promptkit.text.templates`)."""

    def __init__(self, tokenizer: Tokenizer | None, template: str, tokenizer_spec: str | None,
                 system_prompt: str | None = None, reply_tokens: int | None = None,
                 sends_extra: bool = True, cache_bust: str = "none"):
        if template not in TEMPLATES:
            raise CheckError(f"unknown chat template {template!r}; choose from "
                             f"{', '.join(TEMPLATES)}")
        self.tokenizer = tokenizer
        self.sends_extra = sends_extra
        self.template = template
        self.system_prompt = system_prompt
        self.reply_tokens = reply_tokens
        self.cache_bust = cache_bust
        self._fillers: dict[int, str] = {}
        self.renderer = (None if template == "none"
                         else Renderer(template, tokenizer, tokenizer_spec))

    def turns(self, record: Record, limit: int | None = None,
              marker: str | None = None) -> list[_Turn]:
        """The requests AIPerf sends for ``record``: one with its messages verbatim, or,
        for a ``multi_turn`` conversation, one a turn carrying the history (every
        earlier turn and a reply of the server's length after each); the first
        ``limit`` of them when given; with AIPerf's ``--cache-bust`` ``marker`` where
        it puts it. Each is rendered here: a request the template refuses raises (a
        :class:`~promptkit.text.templates.TemplateError` naming its line)."""
        salt = _salt(record.extra) if self.sends_extra else None
        tools = turn_tools(record)
        messages, system = record.messages, self.system_prompt
        if marker is not None:
            messages, system = cachebust.bust(messages, self.cache_bust, marker, record.layout,
                                              system)
        if record.layout != "multi_turn":
            reply = (record.output_length if record.output_length is not None
                     else self.reply_tokens)
            return [self._rendered(record, _Turn(self._with_system(self.chat(messages), system),
                                                 request_tools(tools), salt, reply))]
        messages = list(messages)
        history: Conversation = []
        if hoisted_system(record):  # AIPerf sends it as every turn's system prompt
            history, messages = self.chat(messages[:1]), messages[1:]
        out: list[_Turn] = []
        for i, message in enumerate(messages):
            history += self.chat([message])
            extra = message.fields.get("extra")
            reply = message.fields.get("output_length")
            if reply is None and i == 0:
                reply = record.output_length
            reply = reply if isinstance(reply, int) else self.reply_tokens
            own = _salt(extra) if self.sends_extra and isinstance(extra, dict) else None
            out.append(self._rendered(record, _Turn(self._with_system(list(history), system),
                                                    request_tools(turn_tools(record, message)),
                                                    own or salt, reply)))
            if len(out) == limit:
                break
            if i + 1 < len(messages):
                if reply is None:
                    raise InvalidRecordError(
                        f"turn {i + 1} has no output_length: the server's reply, which AIPerf "
                        "sends in the next turn's history, has unknown length; give "
                        "--reply-tokens N (the replies' length)", lineno=record.lineno)
                history.append({"role": "assistant", "content": self._content(self.filler(reply))})
        return out

    def _rendered(self, record: Record, turn: _Turn) -> _Turn:
        if self.renderer is not None:
            try:
                turn.text = self.renderer.text(turn.chat, turn.tools)
            except TemplateError as exc:
                raise TemplateError(exc.problem, lineno=record.lineno) from None
        return turn

    def chat(self, messages: Iterable[Message]) -> Conversation:
        """Messages as the server reads them (:func:`promptkit.text.templates.conversation`);
        under ``none``, every text a message of its own (tokenized on its own)."""
        if self.template == "none":
            return [{"role": m.role or "user", "content": text} for m in messages
                    for text in content_texts(m.content)]
        assert self.renderer is not None
        return self.renderer.conversation(messages)

    def _with_system(self, chat: Conversation, system: str | None) -> Conversation:
        """AIPerf's ``--system-prompt-file`` (``system``): a system message first, or
        joined to the start of the one there is."""
        if system is None:
            return chat
        if chat and chat[0]["role"] == "system":
            text = text_of(chat[0]["content"])
            joined = f"{system}\n\n{text}" if text else system
            return [{**chat[0], "content": self._content(joined)}, *chat[1:]]
        return [{"role": "system", "content": self._content(system)}, *chat]

    def _content(self, text: str) -> Any:
        return self.renderer.content(text) if self.renderer is not None else text

    def filler(self, n: int) -> str:
        """A text of exactly ``n`` tokens on its own (the stand-in for a reply): a common
        word repeated, the first one the tokenizer keeps one token a repetition."""
        if n not in self._fillers:
            assert self.tokenizer is not None
            for unit in _FILLER_UNITS:
                if len(self.tokenizer.encode(unit * n)) == n:
                    self._fillers[n] = unit * n
                    break
            else:
                raise CheckError(f"no stand-in text of {n} tokens for a reply under this "
                                 "tokenizer")
        return self._fillers[n]

    def whole(self, record: Record) -> _Turn:
        """One prompt of all of ``record``'s messages (a conversation's turns without the
        server's replies: how ``stats`` counts a record), with its tools."""
        return self._rendered(record, _Turn(self.chat(record.messages),
                                            request_tools(turn_tools(record)), None, None))

    def tokens(self, turns: list[_Turn]) -> list[list[int]]:
        """The prompt tokens of each request (tokenized as one batch, on threads)."""
        assert self.tokenizer is not None
        if self.renderer is None:  # each text on its own, the tokens one after another
            encoded = iter(self.tokenizer.encode_batch(
                [m["content"] for turn in turns for m in turn.chat]))
            return [[i for _ in turn.chat for i in next(encoded)] for turn in turns]
        return self.renderer.encode([turn.text or "" for turn in turns])

    def header_tokens(self, record: Record) -> tuple[int, bool]:
        """Tokens the template puts before the first content of ``record``'s first
        request (the roles matter: Qwen2.5 adds its default system prompt only when
        there is none), and whether its tools are among them (the template renders them
        before that content)."""
        if self.renderer is None:
            return 0, False
        first = self.turns(record, limit=1)[0]
        chat = [{"role": m["role"], "content": self._content("x")} for m in first.chat] or [
            {"role": "user", "content": self._content("x")}]
        chat[0]["content"] = self._content(PROBE)
        header = self.renderer.tokens_before(chat, first.tools, PROBE) or 0
        bare = self.renderer.tokens_before(chat, None, PROBE) if first.tools else header
        return header, header != bare


class IdPrompts:
    """The tokens a server is sent for the records of a hash-id trace, as AIPerf 0.13
    makes them (``aiperf.dataset.loader``; run here), as :class:`~promptkit.text.cachesim.Runs`
    of symbols: equal exactly where AIPerf's tokens are.

    - A hash id is a block of ``block_size`` tokens, the same ones wherever it is; a
      record's last id is a partial block when its ``input_length`` ends inside it. A
      record longer than its ids' blocks ends with tokens of its own (made once, when
      AIPerf loads the file: a record sent again sends them again).
    - A turn of a session (lines sharing a ``session_id``, a Bailian trace's
      ``parent_chat_id`` chains) is sent as AIPerf sends any conversation's: after the
      earlier turns, each followed by the server's reply to it (``output_length``
      tokens, which a reply sent back keeps), even where a line's ids already hold that
      history, as a Bailian line's do.
    - With a chat template (``renderer``), its tokens go around each message, as it
      renders the conversation (found by rendering it with markers for the contents:
      AIPerf's blocks begin with the tokenizer's BOS or EOS token, so no content merges
      into the template's text).
    """

    #: What each kind of content's seed is mixed with: a hash id's, a record's own
    #: tokens', a reply's.
    _ID, _OWN, _REPLY = 0x2545F4914F6CDD1D, 0x5851F42D4C957F2D, 0x14057B7EF767814F

    def __init__(self, block_size: int, renderer: Renderer | None = None):
        self.block_size = block_size
        self.renderer = renderer
        self._pieces: dict[int, list[Runs]] = {}

    def content(self, part: _Part) -> Runs:
        """The tokens of a record's own prompt."""
        size, ids, kind = self.block_size, part.ids, self._ID
        last = min(part.length - (len(ids) - 1) * size, size)
        runs = [(mixed(i ^ kind), 0, size) for i in ids[:-1]]
        runs.append((mixed(ids[-1] ^ kind), 0, last))
        tail = part.length - (len(ids) - 1) * size - last
        if tail > 0:
            runs.append((mixed(part.index ^ self._OWN), 0, tail))
        return Runs.joined(runs, part.length)

    def reply(self, session: Any, turn: int, length: int) -> Runs:
        """The tokens of the server's reply to a session's ``turn``."""
        digest = hashlib.blake2b(repr((session, turn)).encode(), digest_size=8).digest()
        return Runs([(mixed(int.from_bytes(digest) ^ self._REPLY), 0, length)])

    def pieces(self, turns: int) -> list[Runs]:
        """The template's tokens before, between and after the messages of a
        conversation of ``turns`` user turns and the replies between them (none without
        a template)."""
        if turns not in self._pieces:
            renderer = self.renderer
            if renderer is None:
                self._pieces[turns] = [Runs()] * (2 * turns)
            else:
                marks = [f"{PROBE}{i}{PROBE}" for i in range(2 * turns - 1)]
                chat = [{"role": "assistant" if i % 2 else "user",
                         "content": renderer.content(mark)} for i, mark in enumerate(marks)]
                text = renderer.text(chat, None)
                parts = []
                for mark in marks:
                    head, found, text = text.partition(mark)
                    if not found:
                        raise TemplateError("the chat template leaves out a message's content")
                    parts.append(head)
                parts.append(text)
                self._pieces[turns] = [Runs([(tuple(t),)]) for t in renderer.encode(parts)]
        return self._pieces[turns]

    def tokens(self, parts: list[_Part], session: Any) -> list[Runs]:
        """The tokens of each request AIPerf sends for the turns ``parts`` of a session,
        in order: each after the earlier turns and their replies."""
        out: list[Runs] = []
        sent: list[Runs] = []
        for i, part in enumerate(parts):
            if i:
                before = parts[i - 1].reply_tokens
                if before is None:
                    raise InvalidRecordError(
                        "the line before it in its session has no output_length: the "
                        "server's reply, which AIPerf sends in this turn's history, has "
                        "unknown length; give --reply-tokens N (the replies' length)",
                        lineno=part.lineno)
                sent.append(self.reply(session, i - 1, before))
            sent.append(self.content(part))
            if self.renderer is None:  # (no template: the contents one after another)
                out.append(sent[0] if i == 0 else out[-1] + sent[-2] + sent[-1])
                continue
            runs = []
            for piece, content in zip(self.pieces(i + 1), [*sent, None], strict=True):
                runs += piece.runs if content is None else piece.runs + content.runs
            out.append(Runs(runs))
        return out


def _salt(extra: dict[str, Any] | None) -> str | None:
    salt = (extra or {}).get("cache_salt")
    return None if salt is None else str(salt)


# ---------------------------------------------------------------- engines


class Engine:
    """One interface over the cache simulations of :mod:`promptkit.text.cachesim`: a request's
    keys in, its hit *tokens* out, whatever the engine.

    A request is its prompt's key (:meth:`key`), how many tokens the server generates
    for it, and the keys of those tokens where a later turn sends them back
    (:meth:`reply_key`): a server caches generated tokens too, so they take cache
    space, and the next turn of a conversation can hit them. Tokens are token ids, or
    the :class:`~promptkit.text.cachesim.Runs` :class:`IdPrompts` makes of a hash-id trace.
    """

    def __init__(self, name: str, block_size: int, capacity_tokens: int | None,
                 num_gpu_blocks: int | None = None):
        if name not in ENGINES:
            raise CheckError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
        if num_gpu_blocks is not None and (name != "vllm" or capacity_tokens is not None):
            raise CheckError("--num-gpu-blocks is vLLM's block count: give it for --engine "
                             "vllm, instead of --capacity-tokens")
        self.block_size = block_size
        self.bounded = capacity_tokens is not None
        self.vllm: VllmCache | None = None
        self.sglang: SglangCache | None = None
        if name == "vllm":
            self.vllm = VllmCache(block_size, capacity_tokens, num_gpu_blocks)
        else:
            self.sglang = SglangCache(capacity_tokens)
        self._unknown = itertools.count(1)

    def key(self, tokens: Any, salt: str | None) -> Any:
        """What the engine knows a prompt by: chained block hashes (vLLM), the tokens
        (SGLang)."""
        if self.vllm is not None:
            return array("Q", self.vllm.block_hashes(tokens, salt))
        return tokens.tokens() if isinstance(tokens, Runs) else array("I", tokens)

    def reply_key(self, prompt: Any, generated: Any, salt: str | None, key: Any) -> Any:
        """The keys of generated tokens whose ids are known, after ``prompt``'s key."""
        if self.vllm is not None:
            return array("Q", self.vllm.block_hashes(prompt + generated, salt)[len(key):])
        return generated.tokens() if isinstance(generated, Runs) else array("I", generated)

    def busted(self, key: Any, at: int, instance: Any) -> list[Any]:
        """A key whose part from token ``at`` on is ``instance``'s own (what a
        ``--cache-bust`` marker there does: every block from the one it starts in
        differs from another instance's, and equals the same instance's)."""
        start = at if self.sglang is not None else at // self.block_size
        return [*key[:start], *((instance, k) for k in key[start:])]

    def request(self, key: Any, length: int, salt: str | None, reply_tokens: int | None,
                reply: Any = None) -> int:
        """Send a prompt of ``length`` tokens; its hit tokens. The server then generates
        ``reply_tokens`` (``None``: unknown), whose keys are ``reply`` when known."""
        if self.vllm is not None:
            blocks = list(key) + list(reply) if reply is not None else key
            return self.vllm.request_blocks(blocks, length, reply_tokens)
        assert self.sglang is not None
        if reply is None and reply_tokens and self.bounded:  # unknown tokens: their room
            reply = [-next(self._unknown) for _ in range(reply_tokens - 1)]
        return self.sglang.request(list(key) + list(reply) if reply else key, salt,
                                   length=length)


# ---------------------------------------------------------------- the check


@dataclass
class CheckOptions:
    engine: str = "vllm"
    block_size: int | None = None  # default: 16, or 512 for hash-id traces
    capacity_tokens: int | None = None
    chat_template: str = "none"
    requests: int | None = None
    warmup: int = 0
    num_gpu_blocks: int | None = None  # vLLM's block pool, instead of capacity_tokens
    system_prompt: str | None = None  # what AIPerf's --system-prompt(-file) adds
    sends_extra: bool = True  # False: AIPerf drops the records' extra (cache_salt), as for openai
    reply_tokens: int | None = None  # tokens generated where a request has no output_length
    #: A hash-id trace's tokens an id: AIPerf's --isl-block-size (from the file's
    #: manifest, else the format's own: 16 for bailian_trace), else 512.
    hash_block_size: int | None = None
    #: AIPerf's --fixed-schedule (True) or --no-fixed-schedule (False); None: its own
    #: choice, a fixed schedule for a trace (``aiperf_type``) whose first line is timed.
    fixed_schedule: bool | None = None
    aiperf_type: str | None = None  # the --custom-dataset-type AIPerf loads the file as
    cache_bust: str = "none"  # AIPerf's --cache-bust (see promptkit.text.cachebust)


@dataclass
class _Request:
    """What one request is to the cache: its prompt's key, length and salt, and the
    keys of its reply (``reply``: as the next turn sends it back, when known)."""

    key: Any
    length: int
    salt: str | None
    reply_tokens: int | None = None
    reply: Any = None
    #: ``--cache-bust``: the tokens an instance of the request shares with every other
    #: (its marker's digest comes next: from there its blocks are its own), and the
    #: request as a warmup request sends it (warmup isolation's marker in it).
    bust_at: int | None = None
    warmup: _Request | None = None
    #: A hash-id record's own prompt tokens (its ``input_length``), where AIPerf sends
    #: it after earlier turns of its session (``None``: the prompt is its own).
    own: int | None = None


@dataclass
class _Part:
    """A hash-id record as a turn of its session: its ids and prompt length, its index
    (the seed of its own tokens), the length of the server's reply to it, its salt and
    its ``turn`` (a Bailian line's: AIPerf sends a session's turns in that order)."""

    ids: list[int]
    length: int
    index: int
    reply_tokens: int | None
    salt: str | None
    turn: int | None = None
    lineno: int | None = None


@dataclass
class Unit:
    """What one record is to the run: the session AIPerf puts it in (``None``: one of
    its own; lines sharing a session_id are one, sent in a row), and its requests (a
    hash-id record in a session: its ``part``, the requests made once its session is
    whole)."""

    session: Any
    requests: list[_Request]
    salt_not_sent: bool = False  # it has a cache_salt AIPerf does not send
    tools: bool = False  # a request of it sends tools
    timestamp: Any = None  # when its first request is sent (a fixed schedule's order)
    lineno: int | None = None
    part: _Part | None = None


@dataclass
class Report:
    options: CheckOptions
    block_size: int
    records: int = 0
    conversations: int = 0
    hash_ids: bool = False
    header_tokens: int | None = None
    header_tools: bool = False  # the first request's tools are among the header tokens
    markers: cachebust.Markers | None = None  # --cache-bust's, when per instance with text
    busted: int = 0  # profiled requests with a per-instance --cache-bust marker
    salted: int = 0  # records with a cache_salt
    salts_not_sent: int = 0  # records whose cache_salt AIPerf does not send
    tools: int = 0  # records a request of which sends tools
    hits: array = field(default_factory=lambda: array("q"))
    hits_low: array = field(default_factory=lambda: array("q"))
    within: array = field(default_factory=lambda: array("q"))
    lengths: array = field(default_factory=lambda: array("q"))
    record_of: array = field(default_factory=lambda: array("q"))  # 0-based, a request
    turn_of: array = field(default_factory=lambda: array("q"))
    #: The conversation instance of each profiled request: the run's conversations
    #: numbered as they are sent (a conversation sent again is another).
    instance_of: array = field(default_factory=lambda: array("q"))
    first_difference: array = field(default_factory=lambda: array("q"))
    prefixes: Counter[bytes] = field(default_factory=Counter)
    replies_known: bool = True  # every reply a later turn sends back has known tokens
    one_pass: int = 0  # the requests one pass over the file sends
    repeats: int = 0  # profiled requests that send a request sent before
    copies: int = 1  # the most times a request is sent (warmup and profiled)
    fixed_schedule: bool = False  # AIPerf replays the file on its fixed schedule
    id_block: int | None = None  # a hash-id trace's tokens an id
    #: Profiled requests of hash-id records sent after earlier turns of their session:
    #: how many, their records' own prompt tokens, and the tokens sent.
    with_history: int = 0
    own_tokens: int = 0
    history_tokens: int = 0

    def repeating(self) -> int:
        """Profiled requests that send a prompt already sent: AIPerf wraps around the
        file once warmup and profiled requests outnumber one pass over it."""
        return self.repeats

    def per_request(self) -> Iterator[dict[str, Any]]:
        """One row a profiled request: which record (1-based) and turn it sent, which
        of the run's conversations it is part of (1-based, warmup's counted; a
        conversation sent again is another), its prompt and hit tokens (the low end of
        the range, and the part from its own conversation), and where that record first
        differs from every earlier one."""
        unit = "first_differing_block" if self.hash_ids else "first_differing_token"
        for i, (hit, length) in enumerate(zip(self.hits, self.lengths, strict=True)):
            record = self.record_of[i]
            row = {"request": i + 1, "record": record + 1, "turn": self.turn_of[i] + 1,
                   "conversation": self.instance_of[i] + 1,
                   "prompt_tokens": length, "hit_tokens": hit, "hit_tokens_low": self.hits_low[i],
                   "hit_tokens_within_conversation": self.within[i],
                   unit: self.first_difference[record]}
            yield row

    def summary(self) -> dict[str, Any]:
        import numpy as np

        hits = np.frombuffer(self.hits, dtype=np.int64)
        low = np.frombuffer(self.hits_low, dtype=np.int64)
        within = np.frombuffer(self.within, dtype=np.int64)
        lengths = np.frombuffer(self.lengths, dtype=np.int64)
        prompt_tokens = int(lengths.sum())

        def rate(tokens: int) -> float:
            return round(tokens / prompt_tokens, 6) if prompt_tokens else 0.0

        hit_tokens = int(hits.sum())
        within_tokens = int(within.sum())
        bounds = sorted((rate(int(low.sum())), rate(hit_tokens)))
        out: dict[str, Any] = {
            "engine": self.options.engine,
            "block_size": self.block_size,
            "capacity_tokens": self.options.capacity_tokens,
            "num_gpu_blocks": self.options.num_gpu_blocks,
            "chat_template": (None if self.hash_ids and self.options.chat_template == "none"
                              else self.options.chat_template),
            **({"hash_block_size": self.id_block} if self.id_block is not None else {}),
            "records": self.records,
            "conversations": self.conversations,
            "requests": len(hits),
            "warmup": self.options.warmup,
            "fixed_schedule": self.fixed_schedule,
            "requests_per_pass": self.one_pass,
            "requests_repeating_a_prompt": self.repeating(),
            "prompt_tokens": prompt_tokens,
            "hit_tokens": hit_tokens,
            "hit_rate": rate(hit_tokens),
            "hit_rate_range": bounds,
            "hit_tokens_range": sorted((int(low.sum()), hit_tokens)),
            "cross_conversation_hit_tokens": hit_tokens - within_tokens,
            "cross_conversation_hit_rate": rate(hit_tokens - within_tokens),
            "within_conversation_hit_tokens": within_tokens,
            "within_conversation_hit_rate": rate(within_tokens),
            "requests_with_hits": int(np.count_nonzero(hits)),
            "hit_tokens_per_request": _figures(hits),
        }
        if self.first_difference:
            diff = np.frombuffer(self.first_difference, dtype=np.int64)
            unit = "block" if self.hash_ids else "token"
            out[f"first_differing_{unit}"] = {**_figures(diff), "window": PREFIX_WINDOW}
        shared = [n for n in self.prefixes.values() if n > 1]
        out["first_block"] = {
            "distinct": len(self.prefixes),
            "shared_by_most": max(self.prefixes.values(), default=0),
            "records_sharing_one": sum(shared),
            "records_per_shared_block": [n for _, n in self.prefixes.most_common(10) if n > 1],
        }
        if self.repeating() and not self.fixed_schedule:  # (a fixed schedule sends every line)
            out["copies_for_distinct_prompts"] = self.copies
        if self.with_history:
            out["requests_with_history"] = self.with_history
            out["warning_history"] = (
                f"{self.with_history} requests are later turns of a session, which AIPerf "
                "sends after the earlier turns and the server's replies to them: "
                f"{self.history_tokens} prompt tokens where their lines state "
                f"{self.own_tokens}" + (
                    " (a Bailian line's hash ids hold its history already: AIPerf 0.13 sends "
                    "it twice)" if self.options.aiperf_type == "bailian_trace" else ""))
        if self.salts_not_sent:
            out["salts_not_sent"] = self.salts_not_sent
            out["warning_salts"] = (
                f"{self.salts_not_sent} records have a cache_salt that AIPerf does not send "
                "from this format (it loads OpenAI lines as mooncake_trace and sends only "
                "'messages' and 'tools'): predicted without it; write the file --to "
                "mooncake_trace, single_turn or multi_turn to send it")
        mode = self.options.cache_bust
        if mode != "none":
            out["cache_bust"] = _cache_bust_figures(self, mode, prompt_tokens)
        out.update(template_figures(self.header_tokens, self.block_size, self.salted,
                                    self.records, self.tools, self.options.chat_template,
                                    self.header_tools))
        return out


def _cache_bust_figures(report: Report, mode: str, prompt_tokens: int) -> dict[str, Any]:
    """What a report says of AIPerf's ``--cache-bust``: the mode, the argument, and
    with per-instance markers in text, their token counts (a marker's digest is the
    run's own: the prompt tokens are predicted with AIPerf's estimate, and range as
    256 sample digests do, and a token more either way a request, for a marker that
    merges with the text beside it otherwise than the sample)."""
    out: dict[str, Any] = {"mode": mode, "aiperf_args": ["--cache-bust",
                                                         cachebust.aiperf_name(mode)]}
    markers = report.markers
    if markers is not None:
        n = report.busted
        out["marker_tokens"] = {"estimate": markers.estimate, "min": markers.low,
                                "max": markers.high}
        out["requests_with_a_marker"] = n
        out["prompt_tokens_range"] = [
            prompt_tokens - n * (markers.estimate - markers.low + 1),
            prompt_tokens + n * (markers.high - markers.estimate + 1)]
    return out


def template_figures(header: int | None, block_size: int, salted: int, records: int,
                     tools: int, template: str, header_tools: bool = False) -> dict[str, Any]:
    """What a report says of the chat template: the tokens it puts before the first
    content (the tools it renders there among them), whether they fill a block, and the
    warnings: a block every request hits whatever a text nonce does; tools the check
    cannot see under ``none``."""
    out: dict[str, Any] = {}
    if tools:
        out["records_with_tools"] = tools
        if template == "none":
            out["warning_tools"] = (
                f"{tools} records send tools, which the server renders through its chat "
                "template, before the user's text; --chat-template none leaves them out of "
                "the prediction: give the server's template (hf with its tokenizer folder, "
                "or llama3.1, qwen2.5, chatml)")
    if header is None:
        return out
    fills = header >= block_size
    out["template_header_tokens"] = header
    out["template_header_fills_a_block"] = fills
    if fills and salted < records:
        which, who = (("shared tokens before the first content", "every request") if not
                      header_tools else
                      ("tokens before the first content of a request with the first record's "
                       "tools", "every request sending the same tools"))
        out["warning"] = (
            f"the chat template puts {header} {which}, a full block of {block_size}: {who} "
            "hits it whatever a text nonce does; use 'nonce --at salt' (cache_salt) or "
            "disable prefix caching on the server")
    return out


def _figures(values: Any) -> dict[str, Any]:
    import numpy as np

    if not len(values):
        return {"min": 0, "mean": 0.0, "p50": 0, "p90": 0, "max": 0}
    p50, p90 = np.percentile(values, [50, 90], method="nearest")
    return {"min": int(values.min()), "mean": round(float(values.mean()), 2),
            "p50": int(p50), "p90": int(p90), "max": int(values.max())}


def check_records(records: Iterable[Record], *, options: CheckOptions,
                  tokenizer: Tokenizer | None = None,
                  tokenizer_spec: str | None = None,
                  skipping: Skipping | None = None) -> Report:
    """Replay ``records`` through the simulated cache; the report of the profiled run.

    A record that cannot be sent as it is (no text; a hash-id record among text
    records; a conversation whose replies have no length) is an
    :class:`InvalidRecordError`, or left out of the prediction and listed in
    ``skipping`` when it skips."""
    iterator = iter(records)
    first = next(iterator, None)
    if first is None:
        raise CheckError("no records to check")
    setup = Setup(first, options, tokenizer, tokenizer_spec, skipping)
    return setup.replay(setup.entries(_chain(first, iterator)))


class Setup:
    """What a check needs before its records: the kind of file (text or hash ids), the
    block size, the tokenizer and template, and an empty report."""

    def __init__(self, first: Record, options: CheckOptions, tokenizer: Tokenizer | None,
                 tokenizer_spec: str | None, skipping: Skipping | None = None):
        self.skipping = skipping if skipping is not None else Skipping()
        if options.block_size is not None and options.block_size < 1:
            raise CheckError(f"block size must be at least 1, not {options.block_size}")
        self.options = options
        self.hash_ids = not first.messages
        #: The tokens AIPerf makes of a hash id; the server's block: one id, unless told.
        self.id_block = options.hash_block_size or HASH_BLOCK_SIZE
        self.block_size = options.block_size or (
            self.id_block if self.hash_ids else TEXT_BLOCK_SIZE)
        self.report = Report(options, self.block_size, hash_ids=self.hash_ids)
        self.fixed_schedule = fixed_schedule(options.aiperf_type, first.timestamp is not None,
                                             options.fixed_schedule)
        if self.fixed_schedule:
            if first.timestamp is None:
                raise InvalidRecordError(
                    "--fixed-schedule: the first line has no timestamp, which AIPerf's fixed "
                    "schedule needs (it refuses the run)", lineno=first.lineno)
            if options.requests is not None:
                raise BadOptionError(
                    f"--requests {options.requests}: AIPerf replays this file on its fixed "
                    "schedule (every line once, in timestamp order) and ignores "
                    "--request-count; leave --requests out, or predict a run in file order "
                    "with --no-fixed-schedule")
        self.report.fixed_schedule = self.fixed_schedule
        self.prompts: Prompts | None = None
        self.ids: IdPrompts | None = None
        if self.hash_ids and options.system_prompt is not None:
            raise CheckError("a system prompt AIPerf adds cannot be checked on a hash-id "
                             "trace (its prompts are made up at run time)")
        if self.hash_ids:
            renderer = None
            if options.chat_template != "none":
                if tokenizer is None:
                    raise OptionNeededError(
                        f"--chat-template {options.chat_template} on a hash-id trace needs "
                        "--tokenizer: the template's own tokens are counted under it")
                renderer = Renderer(options.chat_template, tokenizer, tokenizer_spec)
            self.ids = IdPrompts(self.id_block, renderer)
            self.report.id_block = self.id_block
            if renderer is not None:
                self.report.header_tokens = len(self.ids.pieces(1)[0])
        else:
            if tokenizer is None:
                raise OptionNeededError(
                    "text records need --tokenizer (what the server tokenizes with): a "
                    "tiktoken encoding (cl100k_base), a tokenizer folder or tokenizer.json "
                    "file, or hf:OWNER/NAME from the local Hugging Face cache")
            self.prompts = Prompts(tokenizer, options.chat_template, tokenizer_spec,
                                   options.system_prompt, options.reply_tokens,
                                   options.sends_extra, options.cache_bust)
            self.report.header_tokens, self.report.header_tools = (
                self.prompts.header_tokens(first) if options.chat_template != "none"
                else (0, False))
        #: ``--cache-bust``: the markers sent in AIPerf's place (a per-instance mode with
        #: text), and the marker warmup requests carry (warmup isolation, with a warmup).
        self.markers: cachebust.Markers | None = None
        self.warmup_marker: str | None = None
        mode = options.cache_bust
        if cachebust.per_instance(mode) and tokenizer is not None and not self.hash_ids:
            self.markers = cachebust.markers(mode, tokenizer.encode)
            self.report.markers = self.markers
        elif cachebust.in_warmup(mode) and options.warmup:
            self.warmup_marker = cachebust.WARMUP_MARKER
        self.engine = self._engine()  # keys only: the replay makes its own caches

    def _engine(self) -> Engine:
        return Engine(self.options.engine, self.block_size, self.options.capacity_tokens,
                      self.options.num_gpu_blocks)

    def entries(self, records: Iterable[Record]) -> Iterator[tuple[Unit, bytes]]:
        """What each record is to the cache, and its leading tokens (the part of a check
        that needs no order: worker processes can do it chunk by chunk)."""
        reject = self.skipping.reject
        for batch in _batches(iter(records)):
            if self.ids is not None:
                for record in batch:
                    try:
                        entry = self._ids_entry(record)
                    except InvalidRecordError as exc:
                        reject(exc)
                        continue
                    yield self._unsent(record, *entry)
                continue
            assert self.prompts is not None
            kept, turns = [], []
            # The requests as sent: with --cache-bust, with its marker; to tell what two
            # instances share, with another one; as warmup requests, with warmup's.
            markers = self.markers
            variants = ([markers.sample, markers.other] if markers is not None
                        else [None, self.warmup_marker] if self.warmup_marker else [None])
            for record in batch:
                try:
                    if not record.messages:
                        raise InvalidRecordError("a hash-id record after text records",
                                                 lineno=record.lineno)
                    turns.append([self.prompts.turns(record, marker=m) for m in variants])
                except InvalidRecordError as exc:
                    reject(exc)
                    continue
                kept.append(record)
            tokens = iter(self.prompts.tokens([t for ts in turns for v in ts for t in v]))
            for record, its_turns in zip(kept, turns, strict=True):
                its_tokens = [[next(tokens) for _ in v] for v in its_turns]
                try:
                    entry = self._text_entry(record, its_turns[0], its_tokens[0])
                    if markers is not None:
                        for request, toks, other in zip(entry[0].requests, its_tokens[0],
                                                        its_tokens[1], strict=True):
                            request.bust_at = _common(toks, other)
                    elif len(variants) > 1:
                        warm = self._text_entry(record, its_turns[1], its_tokens[1])
                        for request, warmup in zip(entry[0].requests, warm[0].requests,
                                                   strict=True):
                            request.warmup = warmup
                except InvalidRecordError as exc:
                    reject(exc)
                    continue
                yield self._unsent(record, *entry)

    def _unsent(self, record: Record, unit: Unit, lead: bytes) -> tuple[Unit, bytes]:
        unit.tools = sends_tools(record)
        if not self.options.sends_extra:
            unit.salt_not_sent = _salt(record.extra) is not None or any(
                isinstance(m.fields.get("extra"), dict) and _salt(m.fields["extra"])
                for m in record.messages)
        return unit, lead

    def entry_list(self, records: Iterable[Record]
                   ) -> tuple[list[tuple[Unit, bytes]], list[str]]:
        """:meth:`entries` of a worker process's chunk, as a list to send back with the
        lines it skipped."""
        self.skipping.skipped = []
        return list(self.entries(records)), self.skipping.skipped

    def _ids_entry(self, record: Record) -> tuple[Unit, bytes]:
        """A hash-id record's part; its request too when it is a conversation of its own
        (a record in a session is sent after the session's earlier turns: see
        :meth:`replay`)."""
        if record.messages:
            raise InvalidRecordError("a text record after hash-id records",
                                     lineno=record.lineno)
        if record.hash_ids is None or record.input_length is None:
            raise InvalidRecordError("a record with no text and no hash ids",
                                     lineno=record.lineno)
        problem = blocks_problem(record.hash_ids, record.input_length, self.id_block)
        if problem is not None:
            raise InvalidRecordError(problem, lineno=record.lineno)
        turn = record.fields.get("turn") if record.layout == "bailian_trace" else None
        part = _Part(record.hash_ids, record.input_length,
                     record.index if record.index is not None else record.lineno or 0,
                     record.output_length if record.output_length is not None
                     else self.options.reply_tokens,
                     _salt(record.extra) if self.options.sends_extra else None,
                     turn, record.lineno)
        session = None if record.session_id is None else ("session", record.session_id)
        unit = Unit(session, [], timestamp=record.timestamp, lineno=record.lineno, part=part)
        if session is None:
            assert self.ids is not None
            unit.requests = self._id_busted(
                self._requests([part.salt], [part.reply_tokens], self.ids.tokens([part], None),
                               record.lineno), part.length)
        return unit, array("q", record.hash_ids[:PREFIX_WINDOW]).tobytes()

    def _text_entry(self, record: Record, turns: list[_Turn],
                    tokens: list[list[int]]) -> tuple[Unit, bytes]:
        requests = self._requests([t.salt for t in turns], [t.reply_tokens for t in turns],
                                  tokens, record.lineno)
        lead = array("I", tokens[0][:PREFIX_WINDOW]).tobytes()
        session = (None if record.layout == "multi_turn" or record.session_id is None
                   else ("session", record.session_id))
        return (Unit(session, requests, timestamp=record.timestamp, lineno=record.lineno),
                lead)

    def _requests(self, salts: list[str | None], replies: list[int | None], tokens: list[Any],
                  lineno: int | None) -> list[_Request]:
        """The requests of a conversation's turns (``tokens``: each turn's prompt, with the
        history), and the keys of each reply where the next turn sends it back."""
        requests = []
        for i, toks in enumerate(tokens):
            if not toks:
                raise InvalidRecordError("a record with no text", lineno=lineno)
            salt, reply = salts[i], replies[i]
            request = _Request(self.engine.key(toks, salt), len(toks), salt, reply)
            if i + 1 < len(tokens) and reply:  # the reply, as sent back next
                after = tokens[i + 1]
                if after[:len(toks)] == toks:
                    generated = after[len(toks):len(toks) + reply - 1]
                    request.reply = self.engine.reply_key(toks, generated, salt, request.key)
            requests.append(request)
        return requests

    def _session_requests(self, units: list[Unit], session: Any) -> list[_Request]:
        """The request of each record of a session of hash-id records (in the order
        AIPerf sends them), each after the earlier turns and their replies."""
        assert self.ids is not None
        parts = [u.part for u in units if u.part is not None]
        requests = self._requests([p.salt for p in parts], [p.reply_tokens for p in parts],
                                  self.ids.tokens(parts, session), units[0].lineno)
        for request, part in zip(requests[1:], parts[1:], strict=True):
            request.own = part.length
        return self._id_busted(requests, parts[0].length)

    def _id_busted(self, requests: list[_Request], first: int) -> list[_Request]:
        """A hash-id conversation's requests with what ``--cache-bust`` does to them
        (``first``: its first turn's prompt tokens). AIPerf's marker goes into the first
        turn's text (a hash-id trace has no system message), which later turns send
        again: at its start (after the template's tokens before it), or after it
        (``*-suffix``). Its tokens are not counted: the prompts are AIPerf's own."""
        mode = self.options.cache_bust
        assert self.ids is not None
        head = len(self.ids.pieces(1)[0])  # the template's tokens before the first turn
        for request in requests:
            if cachebust.per_instance(mode):
                request.bust_at = head + (first if mode.endswith("suffix") else 0)
            elif cachebust.in_warmup(mode) and self.options.warmup:
                reply = (None if request.reply is None
                         else self.engine.busted(request.reply, 0, "warmup"))
                request.warmup = _Request(self.engine.busted(request.key, head, "warmup"),
                                          request.length, request.salt, request.reply_tokens,
                                          reply)
        return requests

    def replay(self, pairs: Iterable[tuple[Unit, bytes]]) -> Report:
        """The records in order, then the run a client makes of them: sessions in the
        order they first appear, each session's requests in a row, one at a time. On a
        fixed schedule, the warmup goes so too, then every session once, in the order
        of its first line's timestamp (as AIPerf 0.13 sends them at concurrency 1)."""
        report, options = self.report, self.options
        units: dict[Any, list[tuple[int, Unit]]] = {}  # each session's records, in order
        earlier: list[bytes] = []  # leading tokens (or ids) of every record so far, sorted
        unit = 8 if self.hash_ids else 4
        for index, (entry, lead) in enumerate(pairs):
            report.records += 1
            salt = entry.part.salt if entry.part is not None else entry.requests[0].salt
            report.salted += salt is not None
            report.salts_not_sent += entry.salt_not_sent
            report.tools += entry.tools
            report.first_difference.append(_first_difference(earlier, lead, unit))
            report.prefixes[lead[:unit if self.hash_ids else unit * self.block_size]] += 1
            key = ("record", index) if entry.session is None else entry.session
            units.setdefault(key, []).append((index, entry))
        sessions: dict[Any, list[tuple[int, int, _Request]]] = {}
        firsts: list[Unit] = []  # each session's first record
        for key, its in units.items():
            if its[0][1].part is not None and its[0][1].session is not None:
                # In AIPerf's order: a Bailian trace's turns (else the file's).
                its.sort(key=lambda item: item[1].part.turn or 0)  # type: ignore[union-attr]
                made = self._session_requests([u for _, u in its], key)
                its = [(i, Unit(u.session, [r], lineno=u.lineno, timestamp=u.timestamp))
                       for (i, u), r in zip(its, made, strict=True)]
            firsts.append(its[0][1])
            requests: list[tuple[int, int, _Request]] = []
            sessions[key] = requests
            for index, entry in its:
                start = len(requests)  # a turn is counted in its conversation
                requests += [(index, start + t, r) for t, r in enumerate(entry.requests)]
        units.clear()
        report.conversations = len(sessions)
        flat = [(s, item) for s, items in enumerate(sessions.values()) for item in items]
        if not flat:
            raise CheckError("no records to check")
        total, sent = self._sent(list(map(len, sessions.values())), firsts)
        report.one_pass = len(flat)
        report.copies = 1
        any_reply = any(r.reply is not None for _, (_, _, r) in flat)
        together = any(len(items) > 1 for items in sessions.values())
        report.replies_known = all(r.reply is not None or not r.reply_tokens
                                   for items in sessions.values() for _, _, r in items[:-1])
        point, low, own = self._engine(), self._engine(), self._engine()
        own_session: Any = None
        times = Counter[int]()  # how often each request was sent
        instances: dict[Any, int] = {}
        for n, (instance, i) in enumerate(tracked(sent, "simulating the cache", total=total,
                                                  unit="requests")):
            session, (record, turn, r) = flat[i]
            times[i] += 1
            if n >= options.warmup and times[i] > 1:
                report.repeats += 1
            r = self._as_sent(r, n < options.warmup, instance)
            instances.setdefault(instance, len(instances))
            hit = point.request(r.key, r.length, r.salt, r.reply_tokens, r.reply)
            hit_low = (low.request(r.key, r.length, r.salt, r.reply_tokens) if any_reply
                       else hit)
            within = 0
            if together:  # what the session's own earlier requests alone would give
                if instance != own_session:
                    own, own_session = self._engine(), instance
                within = min(own.request(r.key, r.length, r.salt, r.reply_tokens, r.reply),
                             hit)
            report.copies = max(report.copies, times[i])
            if n >= options.warmup:
                if r.own is not None:
                    report.with_history += 1
                    report.own_tokens += r.own
                    report.history_tokens += r.length
                report.busted += r.bust_at is not None
                report.hits.append(hit)
                report.hits_low.append(hit_low)
                report.within.append(within)
                report.lengths.append(r.length)
                report.record_of.append(record)
                report.turn_of.append(turn)
                report.instance_of.append(instances.setdefault(instance, len(instances)))
        return report

    def _as_sent(self, request: _Request, warmup: bool, instance: Any) -> _Request:
        """A request as AIPerf sends it in the run: a warmup request with warmup
        isolation's marker; with a per-instance ``--cache-bust`` marker, its own to the
        conversation's instance (the pass over the file and the conversation)."""
        if warmup and request.warmup is not None:
            return request.warmup
        if request.bust_at is None:
            return request
        reply = (None if request.reply is None
                 else self.engine.busted(request.reply, 0, instance))
        return _Request(self.engine.busted(request.key, request.bust_at, instance),
                        request.length, request.salt, request.reply_tokens, reply,
                        request.bust_at)

    def _sent(self, sizes: list[int], firsts: list[Unit]
              ) -> tuple[int, Iterator[tuple[Any, int]]]:
        """How many requests are sent, and each one's ``(instance, position)``: the
        conversation instance it belongs to (a conversation sent again is another) and
        its place in the sessions' requests one after another (``sizes``: a session's
        requests).

        As AIPerf 0.13 draws conversations at concurrency 1: in order, wrapping
        around, each one's requests in a row. The warmup draws the next conversation
        as it starts one, unless that start was its last request; a conversation it
        left unfinished is not continued: the profiled requests begin with the next
        conversation it did not draw (measured with the real ``aiperf profile``: a
        warmup of 2 over conversations of 2 turns sends the first, and profiling
        begins with the third)."""
        options = self.options
        one_pass = sum(sizes)
        starts = list(itertools.accumulate(sizes, initial=0))

        def drawn(first: int, count: int) -> Iterator[tuple[Any, int]]:
            """``count`` requests of the conversations drawn from the ``first`` on."""
            draw = first
            while count > 0:
                s = draw % len(sizes)
                for i in range(starts[s], min(starts[s + 1], starts[s] + count)):
                    yield draw, i
                count -= sizes[s]
                draw += 1

        warmup = list(drawn(0, options.warmup))
        started = len({instance for instance, _ in warmup})
        last_started = bool(warmup) and warmup[-1][1] in starts
        first_profiled = started + (bool(warmup) and not last_started)
        if not self.fixed_schedule:  # the file in order, wrapping around
            requests = one_pass if options.requests is None else options.requests
            return options.warmup + requests, itertools.chain(
                warmup, drawn(first_profiled, requests))
        for unit in firsts:
            if unit.timestamp is None:
                raise InvalidRecordError(
                    "no timestamp on the first line of a conversation: AIPerf's fixed "
                    "schedule fails the run on it", lineno=unit.lineno)
        by_time = sorted(range(len(sizes)), key=lambda s: firsts[s].timestamp)
        scheduled = ((("schedule", s), i) for s in by_time
                     for i in range(starts[s], starts[s + 1]))
        return options.warmup + one_pass, itertools.chain(warmup, scheduled)


def _chain(first: Record, rest: Iterator[Record]) -> Iterator[Record]:
    yield first
    yield from rest


def _batches(records: Iterator[Record], size: int = 1024) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _common(a: list[int], b: list[int]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _first_difference(earlier: list[bytes], lead: bytes, unit: int) -> int:
    """How many leading ``unit``-byte items ``lead`` shares with the earlier record that
    shares most (then ``lead`` joins ``earlier``, which is kept sorted: the string
    sharing the longest prefix with ``lead`` is one of its two neighbours)."""
    at = bisect.bisect_left(earlier, lead)
    best = 0
    for neighbour in earlier[max(at - 1, 0):at + 1]:
        best = max(best, _common_bytes(neighbour, lead) // unit)
    earlier.insert(at, lead)
    return best


def _common_bytes(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


# ---------------------------------------------------------------- check as a step


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``check`` step of ``params`` (a ``pipe`` stage): every parameter checked, the
    tokenizer loaded and the system prompt file read before anything is read."""
    checked("check", params, {
        "tokenizer": text(), "chat_template": one_of(TEMPLATES), "engine": one_of(ENGINES),
        "block_size": integer(1, MAX_TOKENS), "hash_block_size": integer(1, MAX_TOKENS),
        "capacity_tokens": integer(1), "num_gpu_blocks": integer(2),
        "requests": integer(1, MAX_RECORDS),
        "warmup": integer(0, MAX_RECORDS, optional=False), "fixed_schedule": flag(),
        "cache_bust": one_of(cachebust.MODES),
        "reply_tokens": integer(1, MAX_TOKENS), "system_prompt_file": text(),
        "max_hit_rate": number(0, 1), "max_total_hit_rate": number(0, 1)})
    if params.get("num_gpu_blocks") is not None:
        if params.get("capacity_tokens") is not None:
            raise PromptkitError("check: give capacity_tokens or num_gpu_blocks, not both")
        if params.get("engine", "vllm") != "vllm":
            raise PromptkitError("check: num_gpu_blocks is vLLM's block count (engine vllm)")
    tokenizer_loads(params.get("tokenizer"))
    if params.get("system_prompt_file") is not None:
        read_prompt(params["system_prompt_file"], "--system-prompt-file")
    return Step("check", params)


def check_step(step: Any, records: Iterable[Record]) -> Iterator[Record]:
    """Pass the records on; at the end, put the predicted cache hits in ``step.info``."""
    from promptkit.core.tokenizers import cached_tokenizer
    from promptkit.provenance.manifest import skipped_section

    params = dict(step.params)
    spec = params.pop("tokenizer", None)
    limit = params.pop("max_hit_rate", None)
    total_limit = params.pop("max_total_hit_rate", None)
    prompt_file = params.pop("system_prompt_file", None)
    if prompt_file is not None:
        params["system_prompt"] = read_prompt(prompt_file, "--system-prompt-file")
    seen: list[Record] = []

    def tee() -> Iterator[Record]:
        for record in records:
            seen.append(_snapshot(record))
            yield record

    yield from tee()
    # The records are written as they pass: one the check cannot send is left out of
    # the prediction only (listed in the summary's "skipped").
    skipping = Skipping(step.skip_invalid, step.op)
    report = check_records(tracked(seen, "checking"), options=CheckOptions(**params),
                           tokenizer=cached_tokenizer(spec) if spec else None,
                           tokenizer_spec=spec, skipping=skipping)
    step.info["summary"] = summary = report.summary()
    if skipping.skipped:
        summary["skipped"] = skipped_section(skipping.skipped)
    problem = hit_rate_problem(summary, limit, total_limit)
    if problem is not None:  # before anything is written
        raise PromptkitError(f"{problem}; nothing written")


def _snapshot(record: Record) -> Record:
    """A copy of what a check needs, safe from later stages changing the record: the
    messages (with each turn's own fields: output_length, extra), the session, the reply
    length and the layout (a multi_turn conversation is a request a turn)."""
    return Record(messages=[Message(m.role, m.content, dict(m.fields))
                            for m in record.messages],
                  session_id=record.session_id, timestamp=record.timestamp,
                  output_length=record.output_length,
                  extra=dict(record.extra) if record.extra else None,
                  input_length=record.input_length, hash_ids=record.hash_ids,
                  layout=record.layout, lineno=record.lineno)


def hit_rate_problem(summary: dict[str, Any], max_hit_rate: float | None,
                     max_total_hit_rate: float | None) -> str | None:
    """What a ``check`` report breaks of its guards: ``--max-hit-rate`` on the hits
    across conversations (what a nonce must remove), ``--max-total-hit-rate`` on all
    hits (the top of the predicted range); ``None`` when it breaks none."""
    cross = summary["cross_conversation_hit_rate"]
    if max_hit_rate is not None and cross > max_hit_rate:
        return (f"predicted hit rate across conversations {cross:.2%} is above "
                f"--max-hit-rate {max_hit_rate:.2%}")
    total = summary["hit_rate_range"][1]
    if max_total_hit_rate is not None and total > max_total_hit_rate:
        return (f"predicted total hit rate {total:.2%} is above --max-total-hit-rate "
                f"{max_total_hit_rate:.2%}")
    return None


def read_prompt(path: str, what: str) -> str:
    """The text of a system prompt file; a missing, unreadable or empty one raises."""
    try:
        text = read_whole(path, "system prompt file").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptkitError(f"{what} {path}: {getattr(exc, 'strerror', None) or exc}"
                             ) from None
    except PromptkitError as exc:  # a device, or a file far larger than a prompt
        raise PromptkitError(f"{what} {exc}") from None
    if not text.strip():
        raise PromptkitError(f"{what} {path}: empty (AIPerf refuses an empty system prompt)")
    return text
