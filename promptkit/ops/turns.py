"""Recorded conversations into benchmark requests (``promptkit turns``).

A recorded conversation (ShareGPT, alpaca, OpenAI messages with replies) holds the
replies a model once gave. A benchmark sends the prompts and lets the server make
its own replies, asking for as many tokens as the recorded reply had:

- ``first``: one request a conversation, the first user message (after any leading
  system message), ``output_length`` = tokens of the reply that followed it. This is
  what vLLM's and SGLang's benchmark scripts do with ShareGPT.
- ``each``: one AIPerf ``multi_turn`` session a conversation, a turn per user
  message, each turn's ``output_length`` = tokens of the reply that followed it; the
  recorded replies (and tool calls and results) are dropped: the server makes its own.
- ``history``: one request a conversation, everything up to the last user message
  as context (recorded replies kept there), ``output_length`` = tokens of the last
  reply.

Rules, the same in every mode: replies before the first user message are dropped,
and empty system messages, and exchanges (a user message and its reply) whose user
message or reply is empty; a conversation with no user message, whose first user
message has no reply, or whose every exchange is empty, is skipped; a conversation
ends before a user message with no reply (and, with the token bounds, before the
first request outside them). Token counts are the raw
texts' under the tokenizer (no chat template, as ``stats`` counts); a tool call
counts as its compact ``{"name", "arguments"}`` JSON. With a chat template, the prompt
bounds count a request as the server sees it: rendered through the template with the
conversation's tools, an earlier turn's reply (``each``) as the recorded one (the server
sends its own, as long). Everything skipped or cut is counted by reason in the manifest.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from promptkit.core.limits import MAX_TOKENS
from promptkit.core.records import REPLY_ROLES, USER_ROLES, Message, Record, content_texts, is_empty
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.core.words import counted
from promptkit.formats.aiperf import turn_tools
from promptkit.ops.base import Step, Where, checked, integer, one_of, text, tokenizer_loads
from promptkit.text.templates import TEMPLATES, Renderer, TemplateError, hf_template, request_tools

MODES = ("first", "each", "history")
#: The output format each mode's records are meant for (``--to`` overrides it).
DEFAULT_OUTPUT = {"first": "mooncake_trace", "each": "multi_turn", "history": "mooncake_trace"}


@dataclass
class TurnsState:
    """What a ``turns`` run counts, for the manifest: conversations in and out,
    requests made, and what was skipped or cut, by reason."""

    conversations: int = 0
    requests: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def overlaps(self, later: TurnsState) -> bool:
        return False

    def update(self, later: TurnsState) -> None:
        self.conversations += later.conversations
        self.requests += later.requests
        self.dropped.update(later.dropped)

    def report(self) -> dict[str, Any]:
        return {"conversations_read": self.conversations, "requests": self.requests,
                "dropped": dict(sorted(self.dropped.items()))}


@dataclass
class _Exchange:
    user: Message
    replies: list[Message]  # the reply: assistant messages, tool calls and results
    prompt_tokens: int = 0
    reply_tokens: int = 0


def make_requests(records: Iterable[Record], *, mode: str, tokenizer: str,
                  min_prompt_tokens: int | None = None, max_prompt_tokens: int | None = None,
                  min_output_tokens: int | None = None, max_output_tokens: int | None = None,
                  max_turns: int | None = None, chat_template: str | None = None,
                  state: TurnsState | None = None) -> Iterator[Record]:
    """The requests of each recorded conversation (see the module's rules)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    state = TurnsState() if state is None else state
    tok = cached_tokenizer(tokenizer)
    encode = tok.encode
    rendered = chat_template is not None and (min_prompt_tokens is not None
                                              or max_prompt_tokens is not None)
    renderer = Renderer(chat_template, tok, tokenizer) if rendered and chat_template else None

    def tokens(messages: Iterable[Message]) -> int:
        return sum(len(encode(text)) for m in messages for text in _texts(m))

    def prompt(messages: list[Message], tools: Any) -> int:
        """A request's prompt tokens: under the template, rendered with its tools."""
        assert renderer is not None
        text = renderer.text(renderer.conversation(_as_sent(m) for m in messages),
                             request_tools(tools))
        return len(renderer.encode([text])[0])

    def outside(exchange: _Exchange) -> str | None:
        """Why a request is outside the bounds, or None."""
        for value, low, high, what in (
                (exchange.prompt_tokens, min_prompt_tokens, max_prompt_tokens, "prompt"),
                (exchange.reply_tokens, min_output_tokens, max_output_tokens, "output")):
            if low is not None and value < low:
                return f"{what} tokens below --min-{what}-tokens"
            if high is not None and value > high:
                return f"{what} tokens above --max-{what}-tokens"
        return None

    dropped = state.dropped
    for record in records:
        state.conversations += 1
        system, exchanges, problems = _exchanges(record.messages)
        dropped.update(problems)
        if not exchanges:
            continue
        if mode == "first":
            del exchanges[1:]
        elif max_turns is not None and len(exchanges) > max_turns:
            dropped["dropped: turns beyond --max-turns"] += len(exchanges) - max_turns
            del exchanges[max_turns:]
        tools = turn_tools(record)
        try:
            kept = _kept(mode, system, exchanges, tools, tokens,
                         prompt if renderer is not None else None, outside, dropped)
        except TemplateError:
            dropped["skipped: the chat template refuses it (the server would)"] += 1
            continue
        if kept == 0:
            continue
        del exchanges[kept:]
        state.requests += len(exchanges) if mode == "each" else 1
        yield _request(record, system, exchanges, mode)


def _kept(mode: str, system: list[Message], exchanges: list[_Exchange], tools: Any,
          tokens: Callable[[Iterable[Message]], int],
          prompt: Callable[[list[Message], Any], int] | None,
          outside: Callable[[_Exchange], str | None], dropped: Counter[str]) -> int:
    """How many of a conversation's exchanges make requests within the bounds (``history``:
    the last one, with all before it, or none), counting each request's prompt tokens
    (``prompt``: rendered by the template; else the raw texts') and reply tokens."""
    if mode == "history":  # one request: the last exchange, with all before it
        last = exchanges[-1]
        sent = [*system, *(m for e in exchanges[:-1] for m in (e.user, *e.replies)), last.user]
        last.prompt_tokens = prompt(sent, tools) if prompt is not None else tokens(sent)
        last.reply_tokens = tokens(_reply(last.replies))
        reason = outside(last)
        if reason is not None:
            dropped[f"skipped: {reason}"] += 1
            return 0
        return len(exchanges)
    # each request: its user message after all that was sent before
    sent_tokens = tokens(system)
    history = list(system)
    kept = 0
    for exchange in exchanges:
        reply = _reply(exchange.replies)
        if prompt is not None:
            history.append(exchange.user)
            exchange.prompt_tokens = prompt(history, tools)
            history.append(Message("assistant", "\n".join(_texts(reply[0]))))
        else:
            exchange.prompt_tokens = sent_tokens + tokens([exchange.user])
        exchange.reply_tokens = tokens(reply)
        reason = outside(exchange)
        if reason is not None:
            dropped[f"{'cut' if kept else 'skipped'}: {reason}"] += 1
            break
        sent_tokens = exchange.prompt_tokens + exchange.reply_tokens
        kept += 1
    return kept


def _texts(message: Message) -> list[str]:
    texts = content_texts(message.content)
    for call in message.fields.get("tool_calls") or ():
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            texts.append(_call_text(call["function"]))
    return texts


def _call_text(function: dict[str, Any]) -> str:
    """A tool call as the model writes it: ``{"name": ..., "arguments": {...}}``."""
    arguments: Any = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            arguments = orjson.loads(arguments)
    return orjson.dumps({"name": function.get("name"), "arguments": arguments}).decode()


def _reply(replies: list[Message]) -> list[Message]:
    """What the model generated of a reply: its first assistant message."""
    return [next(m for m in replies if m.role in REPLY_ROLES)]


def _exchanges(messages: list[Message]) -> tuple[list[Message], list[_Exchange], list[str]]:
    """``(leading system messages, exchanges, problems)``: each user message with the
    messages that answer it, up to the first user message left unanswered; empty system
    messages, and exchanges whose user message or reply is empty, left out."""
    system = []
    problems = []
    i = 0
    while i < len(messages) and messages[i].role == "system":
        if is_empty(messages[i].content):
            problems.append("dropped: empty system messages")
        else:
            system.append(messages[i])
        i += 1
    start = i
    while i < len(messages) and messages[i].role not in USER_ROLES:
        i += 1
    if i == len(messages):
        return system, [], [*problems, "skipped: no user message"]
    if i > start:
        problems.append("dropped: replies before the first user message")
    exchanges: list[_Exchange] = []
    seen = False  # an exchange was read (kept or not)
    while i < len(messages):
        user = messages[i]
        i += 1
        replies = []
        while i < len(messages) and messages[i].role not in USER_ROLES:
            replies.append(messages[i])
            i += 1
        if not any(m.role in REPLY_ROLES for m in replies):
            problems.append("cut: a user message with no reply" if seen
                            else "skipped: the first user message has no reply")
            break
        seen = True
        reply = _reply(replies)[0]
        if is_empty(user.content):
            problems.append("dropped: exchanges whose user message is empty")
        elif is_empty(reply.content) and not reply.fields.get("tool_calls"):
            problems.append("dropped: exchanges whose reply is empty")
        else:
            exchanges.append(_Exchange(user, replies))
    if seen and not exchanges:
        problems.append("skipped: every exchange empty")
    return system, exchanges, problems


def _request(record: Record, system: list[Message], exchanges: list[_Exchange],
             mode: str) -> Record:
    """The record sent for a conversation's kept exchanges."""
    keep: dict[str, Any] = {
        "fields": dict(record.fields), "extra": record.extra, "lineno": record.lineno,
        "index": record.index, "session_id": record.session_id,
        "timestamp": record.timestamp, "delay": record.delay}
    if mode == "each":
        turns = [Message(m.role, m.content, dict(m.fields)) for m in system]
        for exchange in exchanges:
            user = exchange.user
            turns.append(Message(user.role or "user", user.content,
                                 {**user.fields, "output_length": exchange.reply_tokens}))
        return Record(messages=turns, layout="multi_turn", **keep)
    last = exchanges[-1]
    context = [_as_sent(m) for e in exchanges[:-1] for m in (e.user, *e.replies)]
    return Record(messages=[*system, *context, last.user], output_length=last.reply_tokens,
                  **keep)


def _as_sent(message: Message) -> Message:
    """A recorded reply under the role a chat server accepts for it."""
    if message.role in REPLY_ROLES and message.role != "assistant":
        return Message("assistant", message.content, message.fields)
    return message


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``turns`` step of ``params``: every parameter checked and the tokenizer loaded
    before anything is read; its records are made for the mode's format, and a run that
    makes no request at all fails (no recorded conversation in the input)."""
    from promptkit.core.errors import PromptkitError

    bounds = ("min_prompt_tokens", "max_prompt_tokens", "min_output_tokens",
              "max_output_tokens", "max_turns")
    checked("turns", params, {"mode": one_of(MODES, required=True),
                              "tokenizer": text(optional=False, required=True),
                              "chat_template": one_of(TEMPLATES[1:], optional=True),
                              **{name: integer(1, MAX_TOKENS) for name in bounds}})
    for low, high in (("min_prompt_tokens", "max_prompt_tokens"),
                      ("min_output_tokens", "max_output_tokens")):
        if params.get(low) is not None and params.get(high) is not None \
                and params[low] > params[high]:
            raise PromptkitError(f"turns: {low} is above {high}")
    tokenizer_loads(params["tokenizer"])
    if params.get("chat_template") == "hf":
        hf_template(params["tokenizer"])
    step = Step("turns", params, output_format=DEFAULT_OUTPUT[params["mode"]])

    def some_requests(records_read: int) -> None:
        """A run that made no request has found no recorded conversation."""
        if records_read and not step.state.requests:
            reasons = ", ".join(f"{n} {why}" for why, n in step.state.dropped.items())
            raise PromptkitError(f"turns: no requests from {counted(records_read, 'record')} "
                                 f"({reasons}); "
                                 "nothing written")

    step.on_count = some_requests
    return step
