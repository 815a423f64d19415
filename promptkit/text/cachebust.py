"""AIPerf 0.13's ``--cache-bust``: where its marker goes in a request, and what it costs.

AIPerf can make requests miss the prefix cache by itself, at run time
(``aiperf/timing/strategies/cache_bust.py``, ``aiperf/workers/worker.py``; checked
against the requests the real ``aiperf profile`` sends):

- ``system-prefix`` / ``system-suffix``: a marker ``[rid:<12 hex>]\\n\\n`` before (or
  ``\\n\\n[rid:<12 hex>]`` after) the text of the request's system message: the
  ``--system-prompt-file`` prompt when there is one, else the conversation's own
  first message when it is a system message, else the first user message.
- ``first-turn-prefix`` / ``first-turn-suffix``: the same marker in the first user
  message, which later turns of a conversation send again in their history.
- The digest is new for each conversation *instance*: a conversation sent again
  (AIPerf wraps around the file) gets a new one; warmup and profiling share a
  conversation's marker when a conversation spans both.
- ``warmup-isolation-system`` / ``warmup-isolation-first-turn``: ``[warmup]\\n\\n``
  before that text in warmup requests only (profiling requests carry no marker).

A message whose content is a string gains the marker in it; an OpenAI message whose
content is a list of parts gains a part of its own (the marker without its blank
line); an AIPerf turn's first text gains it.

The digest is random for a run, so a marker's token count is not known before it:
``check`` sends a marker of AIPerf's own estimate (``estimate_marker_token_cost``: the
mean over eight sample markers) and says how far 256 sample digests range.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from promptkit.core.records import USER_ROLES, Message

MODES = ("none", "system-prefix", "system-suffix", "first-turn-prefix", "first-turn-suffix",
         "warmup-isolation-system", "warmup-isolation-first-turn")
WARMUP_MARKER = "[warmup]\n\n"
#: Layouts whose messages AIPerf sends as they are (OpenAI messages): a list content
#: gains the marker as a part of its own.
RAW_LAYOUTS = frozenset({"openai", "mooncake_trace:messages"})
_DIGEST = 12
_SAMPLES = 256


def mode_of(name: str) -> str:
    """A mode as promptkit spells it (AIPerf's ``first_turn_prefix`` is
    ``first-turn-prefix``); raises ValueError for one AIPerf does not have."""
    mode = name.strip().lower().replace("_", "-")
    if mode not in MODES:
        raise ValueError(f"unknown --cache-bust mode {name!r}; one of {', '.join(MODES)}")
    return mode


def aiperf_name(mode: str) -> str:
    """The mode as AIPerf's ``--cache-bust`` takes it."""
    return mode.replace("-", "_")


def per_instance(mode: str) -> bool:
    """Whether the mode puts a digest unique to a conversation instance in its requests."""
    return mode != "none" and not mode.startswith("warmup-")


def in_warmup(mode: str) -> bool:
    """Whether the mode marks warmup requests only."""
    return mode.startswith("warmup-")


def _prefix(mode: str) -> bool:
    return not mode.endswith("-suffix")


def rid_marker(digest: str, mode: str) -> str:
    return f"[rid:{digest}]\n\n" if _prefix(mode) else f"\n\n[rid:{digest}]"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]


@dataclass(frozen=True)
class Markers:
    """The markers a prediction sends in AIPerf's place: ``sample``, a marker of the
    estimate's token count whose digest starts with a digit, and ``other``, one whose
    digest starts with a letter (what two instances share is what these two share);
    the token counts: AIPerf's estimate, and the least and most of 256 samples."""

    sample: str
    other: str
    estimate: int
    low: int
    high: int


def markers(mode: str, encode: Callable[[str], list[int]]) -> Markers:
    """The markers of ``mode`` (a per-instance one) under ``encode``."""
    count = lambda marker: len(encode(marker))  # noqa: E731
    # AIPerf's estimate_marker_token_cost: eight markers of benchmark "estimator".
    estimate = round(sum(count(rid_marker(_digest(f"estimator:{i}:{i}:estimator-{i}"), mode))
                         for i in range(8)) / 8)
    samples = [rid_marker(_digest(f"promptkit:{k}"), mode) for k in range(_SAMPLES)]
    counts = [count(m) for m in samples]
    digit = [m for m, n in zip(samples, counts, strict=True)
             if _rid(m)[0].isdigit() and n == estimate]
    letter = [m for m in samples if _rid(m)[0].isalpha()]
    sample = digit[0] if digit else next(m for m in samples if _rid(m)[0].isdigit())
    return Markers(sample, letter[0], estimate, min(counts), max(counts))


def _rid(marker: str) -> str:
    return marker.partition("[rid:")[2]


def bust(messages: Iterable[Message], mode: str, marker: str, layout: str | None,
         system_prompt: str | None) -> tuple[list[Message], str | None]:
    """A request's messages and ``--system-prompt-file`` prompt with ``marker`` where
    AIPerf puts it in ``mode`` (copies; the messages given are not changed)."""
    messages = list(messages)
    prefix = _prefix(mode)
    if mode.endswith("system") or mode.startswith("system-"):
        if system_prompt is not None:
            return messages, (marker + system_prompt if prefix else system_prompt + marker)
        if messages and messages[0].role == "system":
            messages[0] = _marked(messages[0], marker, prefix, layout in RAW_LAYOUTS)
            return messages, system_prompt
    for i, message in enumerate(messages):
        if message.role in USER_ROLES:
            messages[i] = _marked(message, marker, prefix, layout in RAW_LAYOUTS)
            break
    return messages, system_prompt


def _marked(message: Message, marker: str, prefix: bool, raw: bool) -> Message:
    content: Any = message.content
    if content is None or isinstance(content, str):
        text = content or ""
        content = marker + text if prefix else text + marker
    elif raw:
        part = {"type": "text", "text": marker.strip()}
        content = [part, *content] if prefix else [*content, part]
    else:  # an AIPerf turn's texts: the first one gains it
        content = list(content)
        for i, item in enumerate(content):
            if isinstance(item, str):
                content[i] = marker + item if prefix else item + marker
                break
            if isinstance(item, dict) and isinstance(item.get("contents"), list) \
                    and item["contents"] and isinstance(item["contents"][0], str):
                first = item["contents"][0]
                content[i] = {**item, "contents": [marker + first if prefix else first + marker,
                                                   *item["contents"][1:]]}
                break
    return Message(message.role, content, message.fields)
