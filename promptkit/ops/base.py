"""Steps: one operation with all its parameters, made the same way wherever it comes from.

A step is made from its parameters by its operation's own ``make_step`` (in the
operation's module): it checks every parameter, does the work the step needs
before the records flow (load the tokenizer, read a filler file, a first pass
over the input for ``pad``'s groups) and sets what the step adds to a run (side
files, AIPerf arguments, the output format it is made for). The command line,
``pipe``, the Python API and ``rebuild`` all go through :func:`make`, so a step
rebuilt from a manifest is the step that made the file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from promptkit.core.errors import PromptkitError, Skipping
from promptkit.core.records import Record


class NoState(Skipping):
    """The state of an operation that remembers nothing across records but the records
    it left out (``--skip-invalid``)."""

    def overlaps(self, later: NoState) -> bool:
        return False

    def update(self, later: NoState) -> None:
        self.skipped += later.skipped


@dataclass(frozen=True)
class Where:
    """What a step is made for: the run's input and output (and how the input is read)."""

    input: str | None = None
    output: str | None = None
    from_format: str | None = None
    dataset: dict[str, Any] | None = None
    #: The distinct system prompts that begin the input's records, by a first pass over
    #: it (given by :mod:`promptkit.runner.pipeline`, which reads inputs); ``None``: unknown.
    system_prompts: Callable[[], list[str]] | None = field(default=None, compare=False)


@dataclass
class Step:
    """One operation with all its parameters (as recorded in the manifest).

    Make one with :func:`promptkit.ops.registry.make` (``promptkit.run`` makes the steps
    it is given that are not made yet). ``info`` is written to the manifest beside the
    parameters (what the step made, e.g. each padded prompt's token count and sha256);
    ``side_files`` are written next to the output on success (path -> text);
    ``aiperf_args`` join the manifest's AIPerf arguments.
    """

    op: str
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    side_files: dict[str, str] = field(default_factory=dict)
    aiperf_args: list[str] = field(default_factory=list)
    #: Called with the number of records read, before anything is written (it raises
    #: when the step cannot work with that many: ``pad --groups`` above the records).
    on_count: Callable[[int], None] | None = None
    #: Set by :func:`run` for ``--skip-invalid``: every state is a
    #: :class:`~promptkit.core.errors.Skipping`, which then leaves out the records its
    #: operation rejects and lists them (``"LINE: OP: problem"``) for the manifest.
    skip_invalid: bool = False
    #: The state :meth:`new_state` last made in this process: after a run, what the
    #: operation remembered of every record (a parallel run's chunks merge into it).
    #: A state's ``report()`` joins ``info``; its ``skipped`` joins the manifest's.
    state: Any = field(default=None, repr=False, compare=False)
    #: The output format the step's records are made for, when no ``--to`` names one.
    output_format: str | None = None
    #: Whether :func:`~promptkit.ops.registry.make` made it (checked its parameters, did
    #: its work before a run, and set what it runs: ``operation`` and ``state_class``).
    made: bool = field(default=False, repr=False, compare=False)
    #: Runs the operation: ``operation(step, records, state)``.
    operation: Callable[[Step, Iterable[Record], Any], Iterator[Record]] | None = field(
        default=None, repr=False, compare=False)
    #: The class of what the operation remembers across records (``None``: nothing).
    state_class: type | None = field(default=None, repr=False, compare=False)

    def apply(self, records: Iterable[Record], state: Any = None) -> Iterator[Record]:
        """The operation over ``records``; ``state`` carries what it remembers across
        records (see :class:`~promptkit.ops.nonce.NonceState`), for runs in chunks."""
        operation = self._made().operation
        assert operation is not None
        return operation(self, records, state)

    def new_state(self) -> Any:
        kind = self._made().state_class
        self.state = kind() if kind else NoState()
        if isinstance(self.state, Skipping):  # (turns drops records by design, not as errors)
            self.state.skip_invalid = self.skip_invalid
            self.state.op = self.op
        return self.state

    def _made(self) -> Step:
        if self.operation is None:
            raise PromptkitError(f"the {self.op} step is not made: make it with "
                                 "promptkit.ops.registry.make (promptkit.run does)")
        return self

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "params": self.params}
        info = {**self.info, **(self.state.report() if hasattr(self.state, "report") else {})}
        if info:
            out["info"] = info
        return out


# ---------------------------------------------------------------- checking parameters


class Param(NamedTuple):
    """One parameter a step takes: whether a value is right, what a right one is, and
    whether it must be given."""

    ok: Callable[[Any], bool]
    wants: str
    required: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None, *, optional: bool = True,
            required: bool = False) -> Param:
    wants = ("an integer" if low is None else f"an integer of at least {low}"
             if high is None else f"an integer from {low} to {high:,}")
    return Param(lambda v: (v is None and optional)
                 or (_is_int(v) and (low is None or v >= low) and (high is None or v <= high)),
                 wants, required)


def text(*, optional: bool = True, required: bool = False) -> Param:
    return Param(lambda v: (v is None and optional) or isinstance(v, str), "a string", required)


def flag() -> Param:
    return Param(lambda v: isinstance(v, bool), "true or false")


def number(low: float, high: float | None = None, *, low_open: bool = False) -> Param:
    def ok(v: Any) -> bool:
        if v is None:
            return True
        if not isinstance(v, int | float) or isinstance(v, bool):
            return False
        above = v > low if low_open else v >= low
        return above and (high is None or v <= high)

    return Param(ok, f"a number from {low}" + (f" to {high}" if high is not None else ""))


def one_of(choices: Iterable[str], *, optional: bool = False, required: bool = False) -> Param:
    options = tuple(choices)
    return Param(lambda v: (v is None and optional) or v in options,
                 "one of " + ", ".join(options), required)


def checked(op: str, params: Any, spec: dict[str, Param]) -> dict[str, Any]:
    """``params`` when every one is a parameter of ``op`` with a right value and none
    that must be given is missing; else a :class:`PromptkitError` naming the first
    wrong one."""
    if not isinstance(params, dict):
        raise PromptkitError(f"{op}: params is {type(params).__name__}, not an object")
    for name, value in params.items():
        if name not in spec:
            raise PromptkitError(f"{op}: unknown parameter {name!r}")
        if not spec[name].ok(value):
            raise PromptkitError(f"{op}: {name} is {value!r}, not {spec[name].wants}")
    for name, param in spec.items():
        if param.required and name not in params:
            raise PromptkitError(f"{op}: parameter {name!r} missing")
    return params


def tokenizer_loads(spec: str | None) -> None:
    """Load the tokenizer a step names, so a bad name fails before anything is read."""
    if spec is not None:
        from promptkit.core.tokenizers import cached_tokenizer

        cached_tokenizer(spec)
