"""What the operations share: filler words (faker's English words, or a file's, seeded),
and the padded prompts of groups (``pad`` and ``synth`` make the same ones).

A padded prompt is ``[group label] base [separator] filler``, exactly N tokens (see
:mod:`promptkit.text.exact`).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from promptkit.core.errors import PadError
from promptkit.core.progress import Progress
from promptkit.core.tokenizers import Tokenizer, cached_tokenizer
from promptkit.io.files import read_whole
from promptkit.text.exact import exact_text


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


def filler_readable(filler_file: str | None) -> None:
    """Read a filler file's words, so a missing or empty one fails before anything is read."""
    if filler_file is not None:
        next(filler_words(0, filler_file))
