"""promptkit: prepare prompt datasets for LLM serving benchmarks.

Every command is a function with the command line's defaults (the manifest at
OUT.manifest.json, a random seed recorded when none is given, ``ray="ADDRESS"`` for
``--ray``); each returns the manifest or the report ``--json`` prints::

    import promptkit

    promptkit.nonce("in.jsonl", "out.jsonl", seed=7)
    report = promptkit.check("out.jsonl", tokenizer="cl100k_base")

The operations are generators over canonical records::

    from promptkit import read_records, add_nonces, write_records

    records = read_records("in.jsonl")
    write_records("out.jsonl", add_nonces(records, kind="uuid", seed=7))

The names below are imported when first used: ``import promptkit`` itself is quick,
so the command line hears a Ctrl-C from its first moments (see :mod:`promptkit.entry`).
"""

from __future__ import annotations

from promptkit.core.version import VERSION as __version__

TYPE_CHECKING = False  # (not typing's: importing typing takes the first moments too)

#: Each public name and the module it comes from.
_PUBLIC = {
    "DatasetMap": "api", "read_records": "api", "write_records": "api",
    "ConversionError": "core.errors", "InvalidRecordError": "core.errors",
    "ManifestError": "core.errors",
    "PromptkitError": "core.errors",
    "fit_records": "ops.fit",
    "FORMATS": "formats", "detect": "formats",
    "add_nonces": "ops.nonce", "nonce_params": "ops.nonce",
    "pad_records": "ops.pad",
    "run": "runner.pipeline",
    "Message": "core.records", "Record": "core.records",
    "Step": "ops.base",
    # the commands (promptkit.commands)
    "nonce": "commands.transform", "pad": "commands.transform", "fit": "commands.transform",
    "turns": "commands.transform", "hash_trace": "commands.transform",
    "pipe": "commands.transform",
    "nonce_step": "commands.steps", "pad_step": "commands.steps", "fit_step": "commands.steps",
    "turns_step": "commands.steps", "hash_trace_step": "commands.steps",
    "check_step": "commands.steps",
    "stats": "commands.stats",
    "check": "commands.check", "hit_rate_failure": "commands.check",
    "prefix_test": "commands.synth",
    "verify": "commands.verify", "rebuild": "commands.verify",
    "publish": "commands.publish",
    "bench": "commands.bench",
}

__all__ = [
    "ConversionError",
    "DatasetMap",
    "FORMATS",
    "InvalidRecordError",
    "ManifestError",
    "Message",
    "PromptkitError",
    "Record",
    "Step",
    "__version__",
    "add_nonces",
    "bench",
    "check",
    "check_step",
    "detect",
    "fit",
    "fit_records",
    "fit_step",
    "hash_trace",
    "hash_trace_step",
    "hit_rate_failure",
    "nonce",
    "nonce_params",
    "nonce_step",
    "pad",
    "pad_records",
    "pad_step",
    "pipe",
    "prefix_test",
    "publish",
    "read_records",
    "rebuild",
    "run",
    "stats",
    "turns",
    "turns_step",
    "verify",
    "write_records",
]

if TYPE_CHECKING:
    from typing import Any

    from promptkit.api import DatasetMap, read_records, write_records
    from promptkit.commands.bench import bench
    from promptkit.commands.check import check, hit_rate_failure
    from promptkit.commands.publish import publish
    from promptkit.commands.stats import stats
    from promptkit.commands.steps import (
        check_step,
        fit_step,
        hash_trace_step,
        nonce_step,
        pad_step,
        turns_step,
    )
    from promptkit.commands.synth import prefix_test
    from promptkit.commands.transform import fit, hash_trace, nonce, pad, pipe, turns
    from promptkit.commands.verify import rebuild, verify
    from promptkit.core.errors import (
        ConversionError,
        InvalidRecordError,
        ManifestError,
        PromptkitError,
    )
    from promptkit.core.records import Message, Record
    from promptkit.formats import FORMATS, detect
    from promptkit.ops.base import Step
    from promptkit.ops.fit import fit_records
    from promptkit.ops.nonce import add_nonces, nonce_params
    from promptkit.ops.pad import pad_records
    from promptkit.runner.pipeline import run


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'promptkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # found at once from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
