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

from collections.abc import Iterable, Iterator
from typing import Any

from promptkit.core.errors import CheckError, PromptkitError, Skipping, skipped_section
from promptkit.core.limits import MAX_RECORDS, MAX_TOKENS
from promptkit.core.progress import tracked
from promptkit.core.records import Message, Record
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
from promptkit.ops.check.report import (
    ENGINES,
    HASH_BLOCK_SIZE,
    PREFIX_WINDOW,
    TEXT_BLOCK_SIZE,
    CheckOptions,
    Engine,
    Report,
    Unit,
    template_figures,
)
from promptkit.ops.check.setup import Setup, check_records
from promptkit.text import cachebust
from promptkit.text.templates import TEMPLATES

__all__ = ["ENGINES", "HASH_BLOCK_SIZE", "PREFIX_WINDOW", "TEMPLATES", "TEXT_BLOCK_SIZE",
           "CheckError", "CheckOptions", "Engine", "Report", "Setup", "Unit", "check_records",
           "check_step", "hit_rate_problem", "make_step", "read_prompt", "template_figures"]

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
