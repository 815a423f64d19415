"""Exact padding: shared system prompts of exactly N tokens under a tokenizer.

A padded prompt is ``[group label] base [separator] filler``: the base text, then
seeded filler words (faker's English words, or the words of a file) until the
whole text encodes to exactly N tokens under the given tokenizer. BPE merges at
the joins make a token count not simply additive, so every candidate is checked
by encoding the whole text: the result is exact by construction, not by
estimate.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from promptkit.core.errors import InvalidRecordError, PadError, PromptkitError, Skipping
from promptkit.core.limits import MAX_GROUPS, MAX_TOKENS
from promptkit.core.records import Message, Record, first_text, prepend_text
from promptkit.core.seeds import new_seed
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.core.words import counted
from promptkit.ops.base import Step, Where, checked, integer, one_of, text
from promptkit.ops.padding import PadSpec, describe_groups, filler_readable, padded
from promptkit.text.exact import SEPARATOR


def group_of(record: Record, index: int, groups: int, group_by: str | None) -> int:
    if groups == 1:
        return 0
    if group_by is None:
        return index % groups
    value = getattr(record, group_by, None) if group_by in _ATTRS else record.fields.get(group_by)
    key = repr(value).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) % groups


_ATTRS = ("session_id", "timestamp", "delay", "output_length")


def pad_records(
    records: Iterable[Record],
    *,
    tokens: int,
    tokenizer: str,
    groups: int = 1,
    seed: int = 0,
    system_prompt: str | None = None,
    filler_file: str | None = None,
    into: str = "system",
    group_by: str | None = None,
    first_index: int = 0,
    state: Any = None,
) -> Iterator[Record]:
    """Give records a shared system prompt of exactly ``tokens`` tokens.

    The base is ``system_prompt`` or, when None, each record's own system message.
    ``into="system"`` writes it as the system message; ``"text"`` puts it before
    the first message's text with a blank line between; ``"file"`` leaves the
    records as they are (the prompt goes to a file AIPerf reads).
    """
    spec = PadSpec(tokens, tokenizer, groups, seed, system_prompt, filler_file)
    state = state if state is not None else PadState()
    for position, record in enumerate(records, start=first_index):
        if into == "file":
            yield record
            continue
        index = record.index if record.index is not None else position
        try:
            _pad_record(record, spec, into, group_of(record, index, groups, group_by), state)
        except InvalidRecordError as exc:
            state.reject(exc)
            continue
        yield record


def _pad_record(record: Record, spec: PadSpec, into: str, group: int, state: PadState) -> None:
    if not record.messages:
        raise InvalidRecordError("a record with only input_length/hash_ids has no text "
                                 "to pad", lineno=record.lineno)
    head = record.messages[0]
    own = head.role == "system"
    if spec.system_prompt is None:
        if not own:
            raise InvalidRecordError(
                "no system message to pad; give --system-prompt or --system-prompt-file",
                lineno=record.lineno)
        base = first_text(head.content) or ""
        try:
            prompt = padded(spec, base, group)
        except PadError as exc:  # this record's own prompt
            raise InvalidRecordError(f"its system message: {exc}", lineno=record.lineno
                                     ) from None
        # A hash every process agrees on (str's hash() differs from process to process),
        # so chunks' states from workers on other machines merge.
        state.own.append(int.from_bytes(hashlib.blake2b(base.encode(), digest_size=8).digest(),
                                        "little", signed=True))
    else:
        if own:
            raise InvalidRecordError(
                "the record has a system message of its own; leave out --system-prompt "
                "to pad it", lineno=record.lineno)
        prompt = padded(spec, spec.system_prompt, group)
    if into == "text":
        if own:
            if len(record.messages) == 1:
                raise InvalidRecordError("no message after the system message",
                                         lineno=record.lineno)
            record.messages.pop(0)
        target = record.messages[0]
        target.content = prepend_text(target.content, prompt + SEPARATOR)
    elif own:
        head.content = prompt
    else:
        record.messages.insert(0, Message("system", prompt))


#: ``pad`` warns when the records' own system prompts are nearly all distinct: more than
#: this many distinct prompts, and more than half as many as the records padded.
DISTINCT_PROMPTS_WARNING = 16


class PadState(Skipping):
    """What a pad run notes across records: the records it left out (see
    :class:`~promptkit.core.errors.Skipping`) and a 64-bit hash of each record's own system
    prompt, to tell whether those are shared at all."""

    def __init__(self, skip_invalid: bool = False, op: str = "") -> None:
        super().__init__(skip_invalid, op)
        self.own = array("q")

    def overlaps(self, later: PadState) -> bool:
        return False

    def update(self, later: PadState) -> None:
        self.skipped += later.skipped
        self.own.extend(later.own)

    def own_prompts(self) -> tuple[int, int]:
        """``(records, distinct prompts)`` of the records padded from their own prompt."""
        if not self.own:
            return 0, 0
        import numpy as np

        keys = np.frombuffer(self.own, dtype=np.int64).copy()
        keys.sort()
        return len(keys), int(1 + np.count_nonzero(keys[1:] != keys[:-1]))

    def nearly_all_distinct(self) -> bool:
        """Whether the own prompts are nearly all distinct (so padding shares nothing)."""
        records, distinct = self.own_prompts()
        return distinct > DISTINCT_PROMPTS_WARNING and 2 * distinct > records

    def report(self) -> dict[str, Any]:
        records, distinct = self.own_prompts()
        if not records:
            return {}
        return {"own_system_prompts": {"records": records, "distinct": distinct}}


INTO = ("system", "text", "file")


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``pad`` step of ``params`` for a run from ``where.input`` to ``where.output``
    (a :class:`~promptkit.ops.base.Where`): each group's prompt described in ``info``
    (the records' own system prompts found by a first pass over a file input), and
    for ``into="file"`` the prompt as ``OUT.system.txt`` with the AIPerf argument that
    sends it."""
    where = where or Where()
    checked("pad", params, {
        "tokens": integer(1, MAX_TOKENS, optional=False, required=True),
        "tokenizer": text(optional=False, required=True),
        "groups": integer(1, MAX_GROUPS, optional=False),
        "seed": integer(), "system_prompt": text(), "filler_file": text(),
        "into": one_of(INTO), "group_by": text(), "first_index": integer(0, optional=False)})
    defaults = {"tokens": None, "tokenizer": None, "groups": 1, "seed": None,
                "system_prompt": None, "filler_file": None, "into": "system", "group_by": None}
    params = {**{name: params.get(name, value) for name, value in defaults.items()}, **params}
    if params["seed"] is None:
        params["seed"] = new_seed()
    tokens, groups, system_prompt = params["tokens"], params["groups"], params["system_prompt"]
    if params["into"] == "file" and (system_prompt is None or groups != 1
                                     or where.output in (None, "-")):
        raise PromptkitError("pad: into 'file' needs a system_prompt, one group and an "
                             "output file")
    cached_tokenizer(params["tokenizer"])  # a bad name fails here, before anything is read
    filler_readable(params["filler_file"])
    spec = PadSpec(tokens, params["tokenizer"], groups, params["seed"], system_prompt,
                   params["filler_file"])
    if system_prompt is not None:
        bases = [system_prompt]
    elif where.input not in (None, "-") and where.system_prompts is not None:
        bases = where.system_prompts()  # a first pass finds the records' own prompts
    else:
        bases = []
    # From stdin the records' own prompts are not known before the run: the
    # manifest's token_stats lists the written ones (token count and sha256).
    step = Step("pad", params, info={"groups": describe_groups(spec, bases)} if bases else {})
    if params["into"] == "file":
        path = f"{where.output}.system.txt"
        step.side_files[path] = padded(spec, system_prompt or "", 0)
        step.aiperf_args += ["--system-prompt-file", path]

    def enough_records(count: int) -> None:
        if groups > count:
            raise PromptkitError(f"--groups {groups} is more than the "
                                 f"{counted(count, 'record')}")

    step.on_count = enough_records
    return step
