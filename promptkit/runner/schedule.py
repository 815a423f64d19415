"""The one ordered scheduler: chunks handed to workers as they come, a bounded window of
them in flight, their results taken in input order.

A worker is anything that returns a future-like for a chunk: a forked process of a
``multiprocessing`` pool (:mod:`promptkit.runner.workers` for JSON lines,
:mod:`promptkit.runner.batches` for Arrow batches) or a Ray task (:mod:`promptkit.ray.run`).
:func:`in_order` submits and takes results in order; :func:`carried` adds what a run of
steps needs on top: the steps' states of everything before the next chunk, and a chunk
done again, in order, with those states, when its result cannot stand on its own (it
continued a conversation an earlier chunk began, or failed where such a line may be no
error). Steps are index-addressed, so every other chunk's result is the one a single
pass would make.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

from promptkit.core.errors import InvalidRecordError

T = TypeVar("T")
R = TypeVar("R")


def _get(future: Any) -> Any:
    """The result of a ``multiprocessing`` future (its error raised here)."""
    return future.get()


def in_order(items: Iterable[T], submit: Callable[[int, T], Any], *, window: int,
             get: Callable[[Any], Any] = _get,
             cancel: Callable[[list[Any]], None] | None = None
             ) -> Generator[tuple[T, Callable[[], Any]], None, None]:
    """``(item, outcome)`` of each item in input order, ``outcome()`` its result (or its
    error, raised); ``submit(number, item)`` hands item ``number`` (from 0) to a worker
    and returns its future, ``get(future)`` waits for the result.

    At most ``window`` items are in flight: item ``n`` is submitted once item
    ``n - window`` was taken (the caller has used its outcome by the time it asks for the
    next), so ``n % window`` names a slot of shared memory no other item in flight uses.
    When the caller stops early (an error), ``cancel`` gets the futures still in flight.
    """
    pending: deque[tuple[T, Any]] = deque()
    try:
        for number, item in enumerate(items):
            pending.append((item, submit(number, item)))
            if len(pending) >= window:
                item, future = pending.popleft()
                yield item, functools.partial(get, future)
        while pending:
            item, future = pending.popleft()
            yield item, functools.partial(get, future)
    finally:
        if pending and cancel is not None:
            cancel([future for _, future in pending])


def carried(outcomes: Iterable[tuple[T, Callable[[], Any]]], states: list[Any],
            redo: Callable[[T, list[Any]], R], *,
            states_of: Callable[[Any], list[Any] | None] = lambda result: result.states,
            discard: Callable[[Any], None] | None = None) -> Iterator[tuple[T, R, bool]]:
    """``(item, result, redone)`` of each outcome of :func:`in_order`, in order, with
    ``states`` (the steps' states, one a step) carried from chunk to chunk.

    A result stands when its chunk began from nothing anyone before it began
    (``states_of(result)``: the states the chunk ended with, done on its own; ``None``
    for a chunk that failed): its states then join ``states``. Otherwise (and when
    ``outcome()`` raised an :class:`InvalidRecordError`: a line continuing a conversation
    begun earlier is no error in order) the chunk is done again, ``redo(item, states)``,
    with the states of everything before it (``discard`` gets the result thrown away);
    ``states`` then become those it ended with (an error it still has is ``redo``'s to
    raise)."""
    for item, outcome in outcomes:
        try:
            result: Any = outcome()
        except InvalidRecordError:  # a line continuing a conversation begun earlier?
            result = None  # the chunk in order says (or raises it again)
        later = None if result is None else states_of(result)
        if later is None or any(s.overlaps(r) for s, r in zip(states, later, strict=True)):
            if result is not None and discard is not None:
                discard(result)
            redone = redo(item, states)
            states[:] = list(states_of(redone) or states)
            yield item, redone, True
            continue
        for state, other in zip(states, later, strict=True):
            state.update(other)
        yield item, result, False
