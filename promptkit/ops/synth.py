"""Workloads made from options alone: the classic prefix-cache test.

``prefix-test`` makes G groups of S requests. Every request of a group shares one
system prompt of exactly N tokens (a padded prompt, as ``pad`` makes them: the
groups' prompts differ at their first token, so groups never share a cached
block); the user turn is a short echo task with a word of its group's own. On a
server with prefix caching, the first request of a group misses and the other
S - 1 hit N tokens (less the last partial block), which is what the test shows.

A generator is a pure function of its parameters, so the manifest's parameters
re-make the file byte for byte.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator
from typing import Any

from promptkit.core.errors import PromptkitError
from promptkit.core.limits import MAX_GROUPS, MAX_RECORDS, MAX_TOKENS
from promptkit.core.records import Message, Record
from promptkit.ops.base import checked, integer, one_of, text, tokenizer_loads
from promptkit.ops.padding import PadSpec, describe_groups, faker_words, filler_readable, padded
from promptkit.text.exact import SEPARATOR

ECHO = "Please echo the following word: {word}"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Follow the user's instruction exactly."
#: About 2 KB of text under cl100k_base (faker's English words run ~6.5 bytes a token).
DEFAULT_SYSTEM_TOKENS = 320
ORDERS = ("interleaved", "grouped")


def echo_words(groups: int, seed: int) -> list[str]:
    """``groups`` distinct plain words, drawn with ``seed``."""
    pool = sorted({w for w in faker_words() if w.isalpha() and w.islower() and len(w) >= 3})
    rng = random.Random(seed)
    picked = rng.sample(pool, min(groups, len(pool)))
    rounds = 1
    while len(picked) < groups:  # more groups than words: numbered words
        picked += [f"{w}{rounds}" for w in rng.sample(pool, min(groups - len(picked), len(pool)))]
        rounds += 1
    return picked


def prefix_test(
    *,
    groups: int = 16,
    group_size: int = 8,
    system_tokens: int = DEFAULT_SYSTEM_TOKENS,
    tokenizer: str = "cl100k_base",
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    filler_file: str | None = None,
    seed: int = 0,
    order: str = "interleaved",
    output_tokens: int | None = None,
    into: str = "system",
) -> Iterator[Record]:
    """The records of a prefix-cache test, in the order a client should send them.

    ``order="interleaved"`` sends group 0, 1, ..., G-1, then again (a hit needs the
    cache to hold all G prompts); ``"grouped"`` sends each group's S requests in a
    row. ``into="text"`` puts the system prompt, a blank line, then the echo task in
    one user text, for formats without a system message.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}")
    spec = PadSpec(system_tokens, tokenizer, groups, seed, system_prompt, filler_file)
    words = echo_words(groups, seed)
    for index in range(groups * group_size):
        group = index % groups if order == "interleaved" else index // group_size
        prompt = padded(spec, system_prompt, group)
        task = ECHO.format(word=words[group])
        if into == "system":
            messages = [Message("system", prompt), Message("user", task)]
        else:
            messages = [Message("user", prompt + SEPARATOR + task)]
        yield Record(messages=messages, output_length=output_tokens, index=index)


def prefix_test_info(params: dict[str, Any]) -> dict[str, Any]:
    """What the manifest says the generator made: each group's prompt and word."""
    spec = PadSpec(params["system_tokens"], params["tokenizer"], params["groups"],
                   params["seed"], params["system_prompt"], params["filler_file"])
    groups = describe_groups(spec, [params["system_prompt"]])
    for group, word in zip(groups, echo_words(params["groups"], params["seed"]), strict=True):
        group["word"] = word
    return {"requests": params["groups"] * params["group_size"], "groups": groups}


#: Every generator a manifest can name: (records from params, manifest info from params).
GENERATORS: dict[str, tuple[Callable[..., Iterator[Record]], Callable[..., dict[str, Any]]]] = {
    "prefix-test": (prefix_test, prefix_test_info),
}


def checked_params(name: str, params: Any) -> dict[str, Any]:
    """A generator's parameters (as a manifest records them), each checked, with the
    default of each one left out; a wrong one raises naming it, before anything is
    made."""
    checked(name, params, {
        "groups": integer(1, MAX_GROUPS, optional=False, required=True),
        "group_size": integer(1, MAX_RECORDS, optional=False, required=True),
        "system_tokens": integer(1, MAX_TOKENS, optional=False, required=True),
        "tokenizer": text(optional=False, required=True),
        "system_prompt": text(optional=False, required=True), "filler_file": text(),
        "seed": integer(optional=False, required=True), "order": one_of(ORDERS),
        "output_tokens": integer(1, MAX_TOKENS), "into": one_of(("system", "text"))})
    if params["groups"] * params["group_size"] > MAX_RECORDS:
        raise PromptkitError(f"{name}: {params['groups']:,} groups of {params['group_size']:,} "
                             f"are more than {MAX_RECORDS:,} records")
    tokenizer_loads(params["tokenizer"])
    filler_readable(params.get("filler_file"))
    defaults = {key: p.default for key, p in inspect.signature(prefix_test).parameters.items()}
    return {**defaults, **params}
