"""Texts of exactly N tokens under a tokenizer: a head, then filler words until the
whole encodes to exactly the target (:func:`exact_text`), and the longest prefix of a text
within a target (:func:`prefix_end`). BPE merges at the joins make a token count not
simply additive, so every candidate is checked by encoding the whole text: the result is
exact by construction, not by estimate. ``pad``, ``fit``, ``synth`` and ``nonce``
(``--keep-tokens``) all make their exact texts here.
"""

from __future__ import annotations

from collections.abc import Iterator

from promptkit.core.errors import PadError
from promptkit.core.tokenizers import Tokenizer

SEPARATOR = "\n\n"
#: Tokens left to fill one small unit at a time, each step verified.
SLACK = 8
#: Short texts that usually add exactly one token; tried in turn at the end.
UNITS = (" a", " the", " and", " of", ".", ",", " I", " x", "a", "x", " ", "\n")


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


def prefix_end(text: str, ids: list[int], target: int, tokenizer: Tokenizer) -> int:
    """The end of a longest prefix of ``text`` that is at most ``target`` tokens.

    Decoding the first ``target`` ids gives a close guess (a cut inside a UTF-8
    character decodes to U+FFFD, dropped); normalizing tokenizers can make it
    inexact, so it is only where an exponential and then binary search starts.
    """

    def fits(end: int) -> bool:
        return len(tokenizer.encode(text[:end])) <= target

    guess = min(len(tokenizer.decode(ids[:target]).rstrip("\ufffd")), len(text))
    step = 1
    if fits(guess):  # grow until it no longer fits
        low, high = guess, len(text)
        while low + step < high and fits(low + step):
            low += step
            step *= 2
        high = min(low + step, high)
    else:  # shrink until it fits (the empty prefix always does)
        low, high = guess, guess
        while low > 0 and not fits(low):
            high = low
            low = max(low - step, 0)
            step *= 2
    while high - low > 1:  # invariant: fits(low), not fits(high)
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
