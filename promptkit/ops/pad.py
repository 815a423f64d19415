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
import itertools
import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from promptkit.core.errors import InvalidRecordError, PadError, PromptkitError, Skipping
from promptkit.core.limits import MAX_GROUPS, MAX_TOKENS
from promptkit.core.progress import Progress
from promptkit.core.records import Message, Record, first_text, prepend_text
from promptkit.core.tokenizers import Tokenizer, cached_tokenizer
from promptkit.core.words import counted
from promptkit.io.files import read_whole
from promptkit.ops.base import Step, Where, checked, filler_readable, integer, one_of, text

SEPARATOR = "\n\n"
#: Tokens left to fill one small unit at a time, each step verified.
SLACK = 8
#: Short texts that usually add exactly one token; tried in turn at the end.
UNITS = (" a", " the", " and", " of", ".", ",", " I", " x", "a", "x", " ", "\n")



def filler_words(seed: int, filler_file: str | None = None) -> Iterator[str]:
    """An endless, seeded stream of filler words: faker's English word list drawn
    at random, or the words of ``filler_file`` in order, over and over."""
    if filler_file is not None:
        yield from itertools.cycle(_file_words(filler_file))
        return
    words = faker_words()
    rng = random.Random(seed)
    while True:
        yield from rng.choices(words, k=256)


@lru_cache(maxsize=1)
def faker_words() -> tuple[str, ...]:
    """faker's en_US word list (its lorem provider), loaded once per process."""
    from faker import Faker

    return tuple(Faker("en_US").get_words_list())


@lru_cache(maxsize=8)
def _file_words(filler_file: str) -> tuple[str, ...]:
    try:
        words = tuple(read_whole(filler_file, "filler file").decode("utf-8").split())
    except OSError as exc:
        raise PadError(f"{filler_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PadError(f"{filler_file}: not UTF-8 text") from None
    if not words:
        raise PadError(f"{filler_file}: no words in it")
    return words


def exact_text(head: str, target: int, tokenizer: Tokenizer, words: Iterator[str],
               separator: str = SEPARATOR) -> str:
    """``head``, then ``separator`` and filler from ``words``, encoding to exactly
    ``target`` tokens (the separator is left out when it would not fit)."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    have = count(head)
    if have > target:
        raise PadError(f"the base text is {have} tokens, more than the target {target}")
    if have == target:
        return head
    text = head
    if head and separator and not head[-1].isspace():
        joined = count(head + separator)
        if joined <= target:
            text, have = head + separator, joined
    first = not text or text[-1].isspace()  # no space needed before the first word
    while target - have > SLACK:  # bulk: words until close, then one exact recount
        need = target - have - SLACK
        batch: list[str] = []
        for word in words:
            batch.append(word if first and not batch else " " + word)
            if len(batch) >= need:
                break
        first = False
        # Each word's own token count, to stop near the target (a word is often
        # several tokens under a small vocabulary).
        sizes = _word_sizes(tokenizer, batch)
        total = taken = 0
        while taken < len(sizes) and total + sizes[taken] <= need:
            total += sizes[taken]
            taken += 1
        text += "".join(batch[: max(taken, 1)])
        have = count(text)
        while have > target - 1 and " " in text[len(head):]:  # overshoot: drop words
            text = text[: text.rindex(" ")]
            have = count(text)
    while have != target:  # fine: one verified unit at a time
        if have > target:
            cut = text.rfind(" ", len(head))
            if cut <= len(head):
                raise PadError(f"cannot reach exactly {target} tokens from this base")
            text = text[:cut]
            have = count(text)
            continue
        word = " " + next(words)
        longer = count(text + word)
        if longer <= target:  # a filler word that still fits
            text, have = text + word, longer
            continue
        for unit in UNITS:  # else the smallest steps
            if count(text + unit) == have + 1:
                text += unit
                have += 1
                break
        else:
            raise PadError(f"cannot reach exactly {target} tokens from this base")
    return text


#: Token counts of filler words, per tokenizer: filler comes from a small vocabulary.
_SIZES: dict[str, dict[str, int]] = {}
_SIZES_LIMIT = 200_000


def _word_sizes(tokenizer: Tokenizer, words: list[str]) -> list[int]:
    known = _SIZES.setdefault(tokenizer.name, {})
    missing = list(dict.fromkeys(w for w in words if w not in known))
    if missing:
        if len(known) > _SIZES_LIMIT:
            known.clear()
        known.update(zip(missing, map(len, tokenizer.encode_batch(missing)), strict=True))
    return [known[w] for w in words]


def group_labels(groups: int, tokenizer: Tokenizer) -> list[str]:
    """``groups`` labels whose texts begin with distinct first tokens."""
    if groups == 1:
        return [""]
    labels: list[str] = []
    seen: set[int] = set()
    for i in itertools.count(1):
        label = f"{_ordinal(i)}."
        first = tokenizer.encode(label)[0]
        if first not in seen:
            seen.add(first)
            labels.append(label + " ")
            if len(labels) == groups:
                return labels
    raise AssertionError("unreachable")


def _ordinal(i: int) -> str:
    """A distinct word-like label: A, B, ..., Z, AA, AB, ... (then numbers)."""
    letters = ""
    while i:
        i, rest = divmod(i - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


@dataclass(frozen=True)
class PadSpec:
    tokens: int
    tokenizer: str
    groups: int
    seed: int
    system_prompt: str | None
    filler_file: str | None


@lru_cache(maxsize=4096)
def padded(spec: PadSpec, base: str, group: int) -> str:
    """The padded prompt of ``group`` for ``base`` (cached: each is made once)."""
    tokenizer = cached_tokenizer(spec.tokenizer)
    label = group_labels(spec.groups, tokenizer)[group]
    seed = int.from_bytes(hashlib.blake2b(f"{spec.seed}:{group}".encode(), digest_size=8).digest())
    return exact_text(label + base, spec.tokens, tokenizer, filler_words(seed, spec.filler_file))


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


def describe_groups(spec: PadSpec, bases: Sequence[str]) -> list[dict[str, Any]]:
    """Token count and sha256 of each group's prompt, for the manifest. Records' own
    prompts (no ``spec.system_prompt``) that cannot be padded are left out: the run
    names their records (or skips them)."""
    tokenizer = cached_tokenizer(spec.tokenizer)
    out = []
    with Progress("padding system prompts", total=len(bases) * spec.groups,
                  unit="prompts") as progress:
        for base in bases:
            for group in range(spec.groups):
                try:
                    prompt = padded(spec, base, group)
                except PadError:
                    if spec.system_prompt is not None:
                        raise
                    continue
                finally:
                    progress.advance()
                out.append({
                    "group": group,
                    "tokens": len(tokenizer.encode(prompt)),
                    "sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                    "starts": prompt[:40],
                })
    return out


INTO = ("system", "text", "file")


def make_step(params: Any, where: Where | None = None) -> Step:
    """The ``pad`` step of ``params`` for a run from ``where.input`` to ``where.output``
    (a :class:`~promptkit.ops.base.Where`): each group's prompt described in ``info``
    (the records' own system prompts found by a first pass over a file input), and
    for ``into="file"`` the prompt as ``OUT.system.txt`` with the AIPerf argument that
    sends it."""
    from promptkit.ops.nonce import new_seed

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

    step.check = enough_records
    return step
