"""A check's run over the records: each record becomes its requests, in the order AIPerf
sends them, and each request goes through the cache simulation (:class:`Setup`)."""

from __future__ import annotations

import bisect
import copy
import hashlib
import itertools
import os
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from promptkit.core.errors import (
    BadOptionError,
    CheckError,
    InvalidRecordError,
    OptionNeededError,
    Skipping,
)
from promptkit.core.progress import tracked
from promptkit.core.records import Record
from promptkit.core.tokenizers import Tokenizer
from promptkit.formats.aiperf import (
    blocks_problem,
    fixed_schedule,
    sends_tools,
)
from promptkit.ops.check.report import (
    HASH_BLOCK_SIZE,
    PREFIX_WINDOW,
    TEXT_BLOCK_SIZE,
    CheckOptions,
    Engine,
    Report,
    Request,
    Unit,
)
from promptkit.text import cachebust
from promptkit.text.prompts import IdPrompts, Part, Prompts, Turn, salt_of
from promptkit.text.templates import (
    Renderer,
)


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
            unit.salt_not_sent = salt_of(record.extra) is not None or any(
                isinstance(m.fields.get("extra"), dict) and salt_of(m.fields["extra"])
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
        part = Part(record.hash_ids, record.input_length,
                     record.index if record.index is not None else record.lineno or 0,
                     record.output_length if record.output_length is not None
                     else self.options.reply_tokens,
                     salt_of(record.extra) if self.options.sends_extra else None,
                     turn, record.lineno)
        session = None if record.session_id is None else ("session", record.session_id)
        unit = Unit(session, [], timestamp=record.timestamp, lineno=record.lineno, part=part)
        if session is None:
            assert self.ids is not None
            unit.requests = self._id_busted(
                self._requests([part.salt], [part.reply_tokens], self.ids.tokens([part], None),
                               record.lineno), part.length)
        return unit, array("q", record.hash_ids[:PREFIX_WINDOW]).tobytes()

    def _text_entry(self, record: Record, turns: list[Turn],
                    tokens: list[list[int]]) -> tuple[Unit, bytes]:
        requests = self._requests([t.salt for t in turns], [t.reply_tokens for t in turns],
                                  tokens, record.lineno)
        lead = array("I", tokens[0][:PREFIX_WINDOW]).tobytes()
        session = (None if record.layout == "multi_turn" or record.session_id is None
                   else ("session", record.session_id))
        return (Unit(session, requests, timestamp=record.timestamp, lineno=record.lineno),
                lead)

    def _requests(self, salts: list[str | None], replies: list[int | None], tokens: list[Any],
                  lineno: int | None) -> list[Request]:
        """The requests of a conversation's turns (``tokens``: each turn's prompt, with the
        history), and the keys of each reply where the next turn sends it back."""
        requests = []
        for i, toks in enumerate(tokens):
            if not toks:
                raise InvalidRecordError("a record with no text", lineno=lineno)
            salt, reply = salts[i], replies[i]
            request = Request(self.engine.key(toks, salt), len(toks), salt, reply)
            if i + 1 < len(tokens) and reply:  # the reply, as sent back next
                after = tokens[i + 1]
                if after[:len(toks)] == toks:
                    generated = after[len(toks):len(toks) + reply - 1]
                    request.reply = self.engine.reply_key(toks, generated, salt, request.key)
            requests.append(request)
        return requests

    def _session_requests(self, units: list[Unit], session: Any) -> list[Request]:
        """The request of each record of a session of hash-id records (in the order
        AIPerf sends them), each after the earlier turns and their replies."""
        assert self.ids is not None
        parts = [u.part for u in units if u.part is not None]
        requests = self._requests([p.salt for p in parts], [p.reply_tokens for p in parts],
                                  self.ids.tokens(parts, session), units[0].lineno)
        for request, part in zip(requests[1:], parts[1:], strict=True):
            request.own = part.length
        return self._id_busted(requests, parts[0].length)

    def _id_busted(self, requests: list[Request], first: int) -> list[Request]:
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
                request.warmup = Request(self.engine.busted(request.key, head, "warmup"),
                                          request.length, request.salt, request.reply_tokens,
                                          reply)
        return requests

    def replay(self, pairs: Iterable[tuple[Unit, bytes]]) -> Report:
        """The records in order, then the run a client makes of them: sessions in the
        order they first appear, each session's requests in a row, one at a time. On a
        fixed schedule, the warmup goes so too, then every session once, in the order
        of its first line's timestamp (as AIPerf 0.13 sends them at concurrency 1)."""
        report, options = self.report, self.options
        # One pass over the file in order (no warmup, no wrap-around, no schedule): a
        # record of its own is sent as it comes, while no session has begun (a session
        # is sent whole, from its first record on, so what follows it waits).
        sender = (_Sender(self) if not options.warmup and options.requests is None
                  and not self.fixed_schedule and self.engine.vllm is not None else None)
        units: dict[Any, list[tuple[int, Unit]]] = {}  # each session's records, in order
        unit = 8 if self.hash_ids else 4  # bytes a token (an id) of a lead
        earlier = Leads(unit)  # every record's so far
        try:
            for index, (entry, lead) in enumerate(pairs):
                report.records += 1
                salt = entry.part.salt if entry.part is not None else entry.requests[0].salt
                report.salted += salt is not None
                report.salts_not_sent += entry.salt_not_sent
                report.tools += entry.tools
                report.first_difference.append(earlier.first_difference(lead))
                report.first_blocks.append(int.from_bytes(hashlib.blake2b(
                    lead[:unit if self.hash_ids else unit * self.block_size],
                    digest_size=8).digest()))
                if sender is not None and entry.session is None and not units:
                    sender.conversation([(index, t, r) for t, r in enumerate(entry.requests)])
                    continue
                key = ("record", index) if entry.session is None else entry.session
                units.setdefault(key, []).append((index, entry))
        finally:
            earlier.close()
        sessions: dict[Any, list[tuple[int, int, Request]]] = {}
        firsts: list[Unit] = []  # each session's first record
        for key, its in units.items():
            if its[0][1].part is not None and its[0][1].session is not None:
                # In AIPerf's order: a Bailian trace's turns (else the file's).
                its.sort(key=lambda item: item[1].part.turn or 0)  # type: ignore[union-attr]
                made = self._session_requests([u for _, u in its], key)
                its = [(i, Unit(u.session, [r], lineno=u.lineno, timestamp=u.timestamp))
                       for (i, u), r in zip(its, made, strict=True)]
            firsts.append(its[0][1])
            requests: list[tuple[int, int, Request]] = []
            sessions[key] = requests
            for index, entry in its:
                start = len(requests)  # a turn is counted in its conversation
                requests += [(index, start + t, r) for t, r in enumerate(entry.requests)]
        units.clear()
        if sender is not None:
            for items in sessions.values():
                sender.conversation(items)
            if not report.lengths:
                raise CheckError("no records to check")
            report.conversations = sender.instances
            report.one_pass = len(report.lengths)
            return report
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
                _profiled(report, r, (hit, hit_low, within), record, turn,
                          instances.setdefault(instance, len(instances)))
        return report

    def _as_sent(self, request: Request, warmup: bool, instance: Any) -> Request:
        """A request as AIPerf sends it in the run: a warmup request with warmup
        isolation's marker; with a per-instance ``--cache-bust`` marker, its own to the
        conversation's instance (the pass over the file and the conversation)."""
        if warmup and request.warmup is not None:
            return request.warmup
        if request.bust_at is None:
            return request
        reply = (None if request.reply is None
                 else self.engine.busted(request.reply, 0, instance))
        return Request(self.engine.busted(request.key, request.bust_at, instance),
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


class _Sender:
    """One pass over a file's conversations, in order, each once (a run with no warmup
    and no wrap-around): each request goes through the simulated cache as it comes,
    nothing kept but the report's figures. The low end of the range takes no reply's
    blocks to hit: the same cache as the point prediction until a request sends a reply
    back, a copy of it from there."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.point = setup._engine()
        self.low: Engine | None = None
        self.instances = 0  # conversations sent

    def conversation(self, items: list[tuple[int, int, Request]]) -> None:
        """Send a conversation's requests (``(record, turn, request)``), in a row."""
        setup, report, point = self.setup, self.setup.report, self.point
        instance = self.instances
        self.instances += 1
        own = setup._engine() if len(items) > 1 else None  # hits from its own requests
        for n, (record, turn, request) in enumerate(items):
            if n + 1 < len(items) and request.reply is None and request.reply_tokens:
                report.replies_known = False
            r = setup._as_sent(request, False, instance)
            if r.reply is not None and self.low is None:
                self.low = copy.deepcopy(point)
            hit = point.request(r.key, r.length, r.salt, r.reply_tokens, r.reply)
            hit_low = (hit if self.low is None
                       else self.low.request(r.key, r.length, r.salt, r.reply_tokens))
            within = (0 if own is None else
                      min(own.request(r.key, r.length, r.salt, r.reply_tokens, r.reply), hit))
            _profiled(report, r, (hit, hit_low, within), record, turn, instance)


def _profiled(report: Report, r: Request, hits: tuple[int, int, int], record: int, turn: int,
              instance: int) -> None:
    """A profiled request into the report: its hit tokens (the point prediction, the low
    end, its conversation's own), what it sent, and which record, turn and conversation
    instance it is."""
    if r.own is not None:
        report.with_history += 1
        report.own_tokens += r.own
        report.history_tokens += r.length
    report.busted += r.bust_at is not None
    report.hits.append(hits[0])
    report.hits_low.append(hits[1])
    report.within.append(hits[2])
    report.lengths.append(r.length)
    report.record_of.append(record)
    report.turn_of.append(turn)
    report.instance_of.append(instance)


#: Items a lead is kept by (see :class:`Leads`).
_STEP = 16


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


class Leads:
    """The leading items (tokens, or ids) of every record so far, to tell how many a new
    one shares with the earlier record that shares most: exactly, at a few bytes a
    record in memory.

    Kept sorted (the one sharing the longest prefix with a new lead is one of its two
    neighbours there), each lead only through the :data:`_STEP` items in which it first
    differed from all before it: all a later record that differs there needs of it. The
    whole lead goes to a temporary file, read back only for a later record that runs
    past the end of the part kept, which is then one of its prefixes of a whole number
    of steps (such parts are named in ``cut``; no two alike: a later record with the
    same part shares a step more). A lead that is a prefix of an earlier one (a
    duplicate) is not kept: the earlier one shares as much with anything."""

    def __init__(self, unit: int):
        self.unit = unit  # bytes an item
        self.step = _STEP * unit
        self.kept: list[bytes] = []  # sorted
        self.cut: dict[bytes, int] = {}  # a part kept -> its whole lead's place in the file
        self.file: Any = None  # the whole leads, opened when the first is cut
        self.written = 0  # bytes in the file
        self.pending = bytearray()  # bytes to write after them

    def first_difference(self, lead: bytes) -> int:
        """How many leading items ``lead`` shares with the earlier record that shares
        most; then ``lead`` joins the earlier ones."""
        kept = self.kept
        at = bisect.bisect_left(kept, lead)
        best = max((_common_bytes(near, lead) for near in kept[max(at - 1, 0):at + 1]),
                   default=0)
        for end in range(self.step, min(best, len(lead)) + 1, self.step):
            place = self.cut.get(lead[:end])  # an earlier lead that runs on past its part
            if place is not None:
                best = max(best, _common_bytes(self._whole(place), lead))
        best -= best % self.unit
        if best == len(lead):  # a prefix of an earlier lead
            return best // self.unit
        keep = (best // self.step + 1) * self.step
        if keep < len(lead):
            part = lead[:keep]  # (one object in both places)
            self.cut[part] = (self.written + len(self.pending)) << 16 | len(lead)
            self.pending += lead
            if len(self.pending) >= 1 << 20:
                self._flush()
            lead = part
        kept.insert(bisect.bisect_left(kept, lead), lead)
        return best // self.unit

    def _whole(self, place: int) -> bytes:
        self._flush()
        return os.pread(self.file.fileno(), place & 0xFFFF, place >> 16)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def _flush(self) -> None:
        if self.file is None:
            try:
                self.file = tempfile.TemporaryFile(prefix="promptkit-check-")  # noqa: SIM115 (closed by close())
            except OSError as exc:
                raise CheckError(f"no temporary file for the records' leading tokens in "
                                 f"{tempfile.gettempdir()} (set TMPDIR): {exc}") from None
        self.file.write(self.pending)
        self.file.flush()
        self.written += len(self.pending)
        self.pending.clear()


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


