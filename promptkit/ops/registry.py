"""Every operation a step can name, in one table: its module, the function that runs it
over records, the class of what it remembers across records, and the words a progress
line says of it. Adding an operation is a module in :mod:`promptkit.ops` with a
``make_step`` and a row here.

This module sits above the operations (it knows them all; they know only
:mod:`promptkit.ops.base`): a step is made here, from its parameters, by its operation's
own ``make_step``. The command line, ``pipe``, the Python API and ``rebuild`` all go
through :func:`make`, so a step rebuilt from a manifest is the step that made the file.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any, NamedTuple

from promptkit.core.errors import PromptkitError
from promptkit.core.records import Record
from promptkit.ops.base import Step, Where


class Operation(NamedTuple):
    module: str
    #: Its function over records (``(records, **params, state=...)``); ``check``'s takes
    #: the step itself (``(step, records)``).
    function: str
    #: The class of its state (``None``: it remembers only the records it left out).
    state: str | None
    #: What a progress line says a pass of it does (empty: nothing to say).
    label: str


OPERATIONS = {
    "nonce": Operation("nonce", "add_nonces", "NonceState", "adding nonces"),
    "pad": Operation("pad", "pad_records", "PadState", "padding"),
    "fit": Operation("fit", "fit_records", None, "fitting"),
    "hash_trace": Operation("hashtrace", "hash_trace_records", None, "hashing blocks"),
    "turns": Operation("turns", "make_requests", "TurnsState", "making requests"),
    "check": Operation("check", "check_step", None, ""),
}
OPS = tuple(OPERATIONS)
#: Operations that keep a state across records (every one but ``check``).
STATEFUL = frozenset(OPS) - {"check"}
#: Stages that see every record in order, so a run with one stays in one process.
ORDERED = frozenset({"check", "hash_trace"})


def _module(op: str) -> Any:
    return importlib.import_module(f"promptkit.ops.{OPERATIONS[op].module}")


def _over_records(function: Any, step: Step, records: Iterable[Record],
                  state: Any) -> Iterator[Record]:
    if state is None:
        return function(records, **step.params)
    return function(records, **step.params, state=state)


def _with_step(function: Any, step: Step, records: Iterable[Record],
               state: Any) -> Iterator[Record]:
    return function(step, records)


def make(op: str, params: Any, where: Where | None = None) -> Step:
    """The step of operation ``op`` with ``params``, made by the operation's own
    ``make_step``; a bad operation or parameter raises naming it."""
    if op not in OPERATIONS:
        raise PromptkitError(f"unknown operation {op!r} (one of {', '.join(OPS)})")
    module, entry = _module(op), OPERATIONS[op]
    step: Step = module.make_step(params, where or Where())
    function = getattr(module, entry.function)
    step.operation = partial(_with_step if op == "check" else _over_records, function)
    step.state_class = getattr(module, entry.state) if entry.state else None
    step.made = True
    return step


def pass_label(steps: list[Step]) -> str:
    """The progress line's label of a run of ``steps``: what they do, in order."""
    labels = [label for label in dict.fromkeys(OPERATIONS[step.op].label
                                               if step.op in OPERATIONS else step.op
                                               for step in steps) if label]
    return ", ".join(labels) if labels else "copying"
