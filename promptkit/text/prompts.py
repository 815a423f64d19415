"""What a server's prefix cache sees of a record: the requests AIPerf sends for it, as
token ids under a chat template (:class:`Prompts`), or a hash-id trace's blocks
(:class:`IdPrompts`). ``check`` simulates a cache over them; ``stats`` counts them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from promptkit.core.errors import (
    CheckError,
    InvalidRecordError,
)
from promptkit.core.records import Message, Record, content_texts
from promptkit.core.tokenizers import Tokenizer
from promptkit.formats.aiperf import (
    hoisted_system,
    turn_tools,
)
from promptkit.text import cachebust
from promptkit.text.cachesim import Runs, mixed
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

#: Candidate reply stand-ins: a word a token, repeated.
FILLER_UNITS = (" the", " and", " of", " a", " to", " x", "x", " ")


# ---------------------------------------------------------------- requests


@dataclass
class Part:
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
class Turn:
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
              marker: str | None = None) -> list[Turn]:
        """The requests AIPerf sends for ``record``: one with its messages verbatim, or,
        for a ``multi_turn`` conversation, one a turn carrying the history (every
        earlier turn and a reply of the server's length after each); the first
        ``limit`` of them when given; with AIPerf's ``--cache-bust`` ``marker`` where
        it puts it. Each is rendered here: a request the template refuses raises (a
        :class:`~promptkit.text.templates.TemplateError` naming its line)."""
        salt = salt_of(record.extra) if self.sends_extra else None
        tools = turn_tools(record)
        messages, system = record.messages, self.system_prompt
        if marker is not None:
            messages, system = cachebust.bust(messages, self.cache_bust, marker, record.layout,
                                              system)
        if record.layout != "multi_turn":
            reply = (record.output_length if record.output_length is not None
                     else self.reply_tokens)
            return [self._rendered(record, Turn(self._with_system(self.chat(messages), system),
                                                 request_tools(tools), salt, reply))]
        messages = list(messages)
        history: Conversation = []
        if hoisted_system(record):  # AIPerf sends it as every turn's system prompt
            history, messages = self.chat(messages[:1]), messages[1:]
        out: list[Turn] = []
        for i, message in enumerate(messages):
            history += self.chat([message])
            extra = message.fields.get("extra")
            reply = message.fields.get("output_length")
            if reply is None and i == 0:
                reply = record.output_length
            reply = reply if isinstance(reply, int) else self.reply_tokens
            own = salt_of(extra) if self.sends_extra and isinstance(extra, dict) else None
            out.append(self._rendered(record, Turn(self._with_system(list(history), system),
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

    def _rendered(self, record: Record, turn: Turn) -> Turn:
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
            for unit in FILLER_UNITS:
                if len(self.tokenizer.encode(unit * n)) == n:
                    self._fillers[n] = unit * n
                    break
            else:
                raise CheckError(f"no stand-in text of {n} tokens for a reply under this "
                                 "tokenizer")
        return self._fillers[n]

    def whole(self, record: Record) -> Turn:
        """One prompt of all of ``record``'s messages (a conversation's turns without the
        server's replies: how ``stats`` counts a record), with its tools."""
        return self._rendered(record, Turn(self.chat(record.messages),
                                            request_tools(turn_tools(record)), None, None))

    def tokens(self, turns: list[Turn]) -> list[list[int]]:
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

    def content(self, part: Part) -> Runs:
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

    def tokens(self, parts: list[Part], session: Any) -> list[Runs]:
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


def salt_of(extra: dict[str, Any] | None) -> str | None:
    salt = (extra or {}).get("cache_salt")
    return None if salt is None else str(salt)

