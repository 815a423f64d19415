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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from promptkit.core.errors import InvalidRecordError, PadError, PromptkitError
from promptkit.core.limits import MAX_COPIES, MAX_NONCE_LENGTH
from promptkit.core.records import (
    USER_ROLES,
    Message,
    Record,
    content_texts,
    message_texts,
    prepend_text,
)
from promptkit.core.seeds import new_seed
from promptkit.core.tokenizers import Tokenizer, cached_tokenizer
from promptkit.core.words import counted
from promptkit.formats.aiperf import first_request, sends_tools
from promptkit.ops.base import Step, Where, checked, flag, integer, one_of, text, tokenizer_loads
from promptkit.ops.nonce.state import (
    DEFAULT_RANDOM_LENGTH,
    DEFAULT_TEMPLATE,
    DEFAULT_TIME_STEP_US,
    HASH_ID_BASE,
    KINDS,
    NONCE_TEMPLATES,
    POSITIONS,
    NonceMaker,
    NonceState,
    Sessions,
    now_iso,
    parse_time,
)
from promptkit.ops.padding import filler_words
from promptkit.text.exact import exact_text, prefix_end
from promptkit.text.templates import (
    PROBE,
    Renderer,
    TemplateError,
    hf_template,
    request_tools,
    text_of,
)

__all__ = ["DEFAULT_RANDOM_LENGTH", "DEFAULT_TIME_STEP_US", "HASH_ID_BASE", "KINDS",
           "NONCE_TEMPLATES", "POSITIONS", "NonceMaker", "NonceState", "Sessions",
           "add_nonces", "copy_record", "first_id", "make_step", "nonce_params", "now_iso",
           "parse_time", "sent_whole"]


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
    end = prefix_end(text, ids, target, encoder) if target > 0 else 0
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
