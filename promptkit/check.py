"""Predict the prefix-cache hit rate a file will cause, before anyone spends GPU time.

The records are replayed in the order a benchmark client sends them (warmup
first, wrapping around the file as AIPerf does when it runs out) through a
simulation of the server's prefix cache (:mod:`promptkit.cache`). What is
simulated is what the server sees: the tokens of the rendered chat template
(``--chat-template``), or the raw texts, under ``--tokenizer``. Hash-id traces
are checked on their ids, one id a block.

The report also says how many tokens the chat template puts before the first
content, and whether those alone fill a block: then every request hits that
block whatever a text nonce does, and only ``cache_salt`` reaches zero.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .cache import SglangCache, VllmCache
from .errors import InvalidRecordError, PromptkitError
from .records import Record, content_texts
from .tokenizers import Tokenizer

ENGINES = ("vllm", "sglang")
TEMPLATES = ("none", "llama3.1", "chatml", "qwen2.5", "hf")
#: Leading tokens compared to find where a record first differs from all before it.
PREFIX_WINDOW = 256
HASH_BLOCK_SIZE = 512
TEXT_BLOCK_SIZE = 16
_PROBE = "\u2063PROMPTKIT_PROBE\u2063"


class CheckError(PromptkitError):
    """A check that cannot run as asked (no text, a template the tokenizer lacks)."""


# ---------------------------------------------------------------- chat templates


def render(messages: list[tuple[str, str]], template: str) -> str:
    """The text a built-in chat template makes of ``(role, text)`` messages, with the
    generation prompt at the end (as servers render a chat request)."""
    if template == "none":
        return "".join(text for _, text in messages)
    if template == "llama3.1":
        system = ""
        if messages and messages[0][0] == "system":
            system, messages = messages[0][1], messages[1:]
        out = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
               "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
               f"{system}<|eot_id|>")
        for role, text in messages:
            out += f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>"
        return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    if template in ("chatml", "qwen2.5"):
        out = ""
        if template == "qwen2.5" and (not messages or messages[0][0] != "system"):
            out = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
                   "You are a helpful assistant.<|im_end|>\n")
        for role, text in messages:
            out += f"<|im_start|>{role}\n{text}<|im_end|>\n"
        return out + "<|im_start|>assistant\n"
    raise CheckError(f"unknown chat template {template!r}; choose from {', '.join(TEMPLATES)}")


class Prompts:
    """Turns records into what the server's cache sees: token ids and a salt."""

    def __init__(self, tokenizer: Tokenizer | None, template: str, tokenizer_spec: str | None):
        self.tokenizer = tokenizer
        self.template = template
        self.hf_template: Any = None
        if template == "hf":
            self.hf_template = _hf_chat_template(tokenizer_spec)

    def tokens(self, records: list[Record]) -> list[list[int]]:
        """The prompt tokens of each record (tokenized as one batch, on threads)."""
        assert self.tokenizer is not None
        chats = [[(m.role or "user", "".join(content_texts(m.content))) for m in r.messages]
                 for r in records]
        if self.hf_template is not None:
            out = []
            for messages in chats:
                ids = self.hf_template.apply_chat_template(
                    [{"role": r, "content": t} for r, t in messages], tokenize=True,
                    add_generation_prompt=True)
                out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
            return out
        return self.tokenizer.encode_batch([render(chat, self.template) for chat in chats])

    def header_tokens(self, record: Record) -> int:
        """Tokens the template puts before the first content of ``record`` (the roles
        matter: Qwen2.5 adds its default system prompt only when there is none)."""
        if self.tokenizer is None:
            return 0
        roles = [m.role or "user" for m in record.messages] or ["user"]
        chat = [(roles[0], _PROBE)] + [(role, "x") for role in roles[1:]]
        if self.hf_template is not None:
            text = str(self.hf_template.apply_chat_template(
                [{"role": r, "content": t} for r, t in chat], tokenize=False,
                add_generation_prompt=True))
        else:
            text = render(chat, self.template)
        return len(self.tokenizer.encode(text[:text.index(_PROBE)]))


def _hf_chat_template(spec: str | None) -> Any:
    import os

    if spec is None or not (os.path.isdir(spec) or spec.startswith("hf:")):
        raise CheckError("--chat-template hf needs a Hugging Face tokenizer (a folder or "
                         "hf:OWNER/NAME) with a chat template")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CheckError("--chat-template hf needs transformers: pip install transformers"
                         ) from None
    name = spec[3:] if spec.startswith("hf:") else spec
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:
        raise CheckError(f"{spec}: cannot load it with transformers ({type(exc).__name__})"
                         ) from None
    if not getattr(tok, "chat_template", None):
        raise CheckError(f"{spec}: the tokenizer has no chat template; choose a built-in "
                         f"one with --chat-template ({', '.join(TEMPLATES[:-1])})")
    return tok


# ---------------------------------------------------------------- the check


@dataclass
class CheckOptions:
    engine: str = "vllm"
    block_size: int | None = None  # default: 16, or 512 for hash-id traces
    capacity_tokens: int | None = None
    chat_template: str = "none"
    requests: int | None = None
    warmup: int = 0


@dataclass
class _Entry:
    """What one record is to the cache: its key (block hashes or tokens), length, salt."""

    key: Any
    length: int
    salt: str | None


@dataclass
class Report:
    options: CheckOptions
    block_size: int
    records: int = 0
    hash_ids: bool = False
    header_tokens: int | None = None
    salted: int = 0  # records with a cache_salt
    hits: array = field(default_factory=lambda: array("q"))
    lengths: array = field(default_factory=lambda: array("q"))
    first_difference: array = field(default_factory=lambda: array("q"))
    prefixes: Counter[bytes] = field(default_factory=Counter)

    def per_request(self) -> Iterator[dict[str, Any]]:
        """One row a profiled request: which record it sent (1-based), its prompt and
        hit tokens, and where that record first differs from every earlier record."""
        unit = "first_differing_block" if self.hash_ids else "first_differing_token"
        for i, (hit, length) in enumerate(zip(self.hits, self.lengths, strict=True)):
            record = (self.options.warmup + i) % self.records
            yield {"request": i + 1, "record": record + 1, "prompt_tokens": length,
                   "hit_tokens": hit, unit: self.first_difference[record]}

    def summary(self) -> dict[str, Any]:
        import numpy as np

        hits = np.frombuffer(self.hits, dtype=np.int64)
        lengths = np.frombuffer(self.lengths, dtype=np.int64)
        prompt_tokens = int(lengths.sum())
        hit_tokens = int(hits.sum())
        out: dict[str, Any] = {
            "engine": self.options.engine,
            "block_size": self.block_size,
            "capacity_tokens": self.options.capacity_tokens,
            "chat_template": None if self.hash_ids else self.options.chat_template,
            "records": self.records,
            "requests": len(hits),
            "warmup": self.options.warmup,
            "prompt_tokens": prompt_tokens,
            "hit_tokens": hit_tokens,
            "hit_rate": round(hit_tokens / prompt_tokens, 6) if prompt_tokens else 0.0,
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
        if self.header_tokens is not None:
            fills = self.header_tokens >= self.block_size
            out["template_header_tokens"] = self.header_tokens
            out["template_header_fills_a_block"] = fills
            if fills and self.salted < self.records:
                out["warning"] = (
                    f"the chat template puts {self.header_tokens} shared tokens before the "
                    f"first content, a full block of {self.block_size}: every request hits "
                    "it whatever a text nonce does; use 'nonce --at salt' (cache_salt) or "
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
                  tokenizer_spec: str | None = None) -> Report:
    """Replay ``records`` through the simulated cache; the report of the profiled run."""
    iterator = iter(records)
    first = next(iterator, None)
    if first is None:
        raise CheckError("no records to check")
    setup = Setup(first, options, tokenizer, tokenizer_spec)
    return setup.replay(setup.entries(_chain(first, iterator)))


class Setup:
    """What a check needs before its records: the kind of file (text or hash ids), the
    block size, the tokenizer and template, and an empty report."""

    def __init__(self, first: Record, options: CheckOptions, tokenizer: Tokenizer | None,
                 tokenizer_spec: str | None):
        if options.engine not in ENGINES:
            raise CheckError(f"unknown engine {options.engine!r}; choose from "
                             f"{', '.join(ENGINES)}")
        if options.block_size is not None and options.block_size < 1:
            raise CheckError(f"block size must be at least 1, not {options.block_size}")
        self.options = options
        self.hash_ids = not first.messages
        self.block_size = options.block_size or (
            HASH_BLOCK_SIZE if self.hash_ids else TEXT_BLOCK_SIZE)
        self.report = Report(options, self.block_size, hash_ids=self.hash_ids)
        self.prompts: Prompts | None = None
        if not self.hash_ids:
            if tokenizer is None:
                raise CheckError("text records need --tokenizer (what the server tokenizes "
                                 "with)")
            self.prompts = Prompts(tokenizer, options.chat_template, tokenizer_spec)
            self.report.header_tokens = (self.prompts.header_tokens(first)
                                         if options.chat_template != "none" else 0)
        self.cache: Any = (VllmCache(self.block_size, options.capacity_tokens)
                           if options.engine == "vllm" else SglangCache(options.capacity_tokens))

    def entries(self, records: Iterable[Record]) -> Iterator[tuple[_Entry, bytes]]:
        """What each record is to the cache, and its leading tokens (the part of a check
        that needs no order: worker processes can do it chunk by chunk)."""
        for batch in _batches(iter(records)):
            tokens = (self.prompts.tokens(_texts_only(batch)) if self.prompts is not None
                      else batch)
            for record, toks in zip(batch, tokens, strict=True):
                yield _entry(record, self.hash_ids, toks, self.cache)

    def entry_list(self, records: Iterable[Record]) -> list[tuple[_Entry, bytes]]:
        """:meth:`entries` of a worker process's chunk, as a list to send back."""
        return list(self.entries(records))

    def replay(self, pairs: Iterable[tuple[_Entry, bytes]]) -> Report:
        """The records in order, then the run a client makes of them."""
        report, options, cache = self.report, self.options, self.cache
        entries: list[_Entry] = []
        earlier: list[bytes] = []  # leading tokens (or ids) of every record so far, sorted
        unit = 8 if self.hash_ids else 4
        for entry, lead in pairs:
            entries.append(entry)
            report.records += 1
            report.salted += entry.salt is not None
            report.first_difference.append(_first_difference(earlier, lead, unit))
            report.prefixes[lead[:unit if self.hash_ids else unit * self.block_size]] += 1
        total = options.warmup + (len(entries) if options.requests is None
                                  else options.requests)
        for n in range(total):
            entry = entries[n % len(entries)]
            if options.engine == "vllm":
                hit = cache.request_blocks(entry.key, entry.length)
            else:
                hit = cache.request(entry.key, entry.salt)
            if n >= options.warmup:
                report.hits.append(hit)
                report.lengths.append(entry.length)
        return report


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


def _texts_only(batch: list[Record]) -> list[Record]:
    for record in batch:
        if not record.messages:
            raise InvalidRecordError("a hash-id record after text records",
                                     lineno=record.lineno)
    return batch


def _entry(record: Record, hash_ids: bool, tokens: Any, cache: Any) -> tuple[_Entry, bytes]:
    salt = (record.extra or {}).get("cache_salt")
    salt = None if salt is None else str(salt)
    if hash_ids:
        if record.messages:
            raise InvalidRecordError("a text record after hash-id records",
                                     lineno=record.lineno)
        if record.hash_ids is None or record.input_length is None:
            raise InvalidRecordError("a record with no text and no hash ids",
                                     lineno=record.lineno)
        ids = record.hash_ids
        key: Any = [(salt, i) for i in ids] if salt is not None else list(ids)
        lead = array("q", ids[:PREFIX_WINDOW]).tobytes()
        return _Entry(key, record.input_length, salt), lead
    if not tokens:
        raise InvalidRecordError("a record with no text", lineno=record.lineno)
    lead = array("I", tokens[:PREFIX_WINDOW]).tobytes()
    if isinstance(cache, VllmCache):
        key = array("Q", cache.block_hashes(tokens, salt))
    else:
        key = array("I", tokens)
    return _Entry(key, len(tokens), salt), lead


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
