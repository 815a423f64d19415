"""``check``'s options, its engine simulations behind one interface, and its report:
the figures a check of a file comes to."""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from promptkit.core.errors import (
    CheckError,
)
from promptkit.text import cachebust
from promptkit.text.cachesim import Runs, SglangCache, VllmCache
from promptkit.text.prompts import Part

ENGINES = ("vllm", "sglang")
#: Leading tokens compared to find where a record first differs from all before it.
PREFIX_WINDOW = 256
HASH_BLOCK_SIZE = 512
TEXT_BLOCK_SIZE = 16


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
        self._unknown = 0  # generated tokens so far whose ids are unknown

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
            reply = list(range(-self._unknown - 1, -self._unknown - reply_tokens, -1))
            self._unknown += reply_tokens - 1
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
class Request:
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
    warmup: Request | None = None
    #: A hash-id record's own prompt tokens (its ``input_length``), where AIPerf sends
    #: it after earlier turns of its session (``None``: the prompt is its own).
    own: int | None = None


@dataclass
class Unit:
    """What one record is to the run: the session AIPerf puts it in (``None``: one of
    its own; lines sharing a session_id are one, sent in a row), and its requests (a
    hash-id record in a session: its ``part``, the requests made once its session is
    whole)."""

    session: Any
    requests: list[Request]
    salt_not_sent: bool = False  # it has a cache_salt AIPerf does not send
    tools: bool = False  # a request of it sends tools
    timestamp: Any = None  # when its first request is sent (a fixed schedule's order)
    lineno: int | None = None
    part: Part | None = None


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
    #: Each record's first block (its leading tokens or ids), as a 64-bit digest: what
    #: tells records that share one (8 bytes a record, where the blocks took 100).
    first_blocks: array = field(default_factory=lambda: array("Q"))
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
            "hit_tokens_per_request": figures(hits),
        }
        if self.first_difference:
            diff = np.frombuffer(self.first_difference, dtype=np.int64)
            unit = "block" if self.hash_ids else "token"
            out[f"first_differing_{unit}"] = {**figures(diff), "window": PREFIX_WINDOW}
        counts = np.unique(np.frombuffer(self.first_blocks, dtype=np.uint64),
                           return_counts=True)[1]
        counts[::-1].sort()  # most shared first
        out["first_block"] = {
            "distinct": len(counts),
            "shared_by_most": int(counts[0]) if len(counts) else 0,
            "records_sharing_one": int(counts[counts > 1].sum()),
            "records_per_shared_block": [int(n) for n in counts[:10] if n > 1],
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


def figures(values: Any) -> dict[str, Any]:
    import numpy as np

    if not len(values):
        return {"min": 0, "mean": 0.0, "p50": 0, "p90": 0, "max": 0}
    p50, p90 = np.percentile(values, [50, 90], method="nearest")
    return {"min": int(values.min()), "mean": round(float(values.mean()), 2),
            "p50": int(p50), "p90": int(p90), "max": int(values.max())}


