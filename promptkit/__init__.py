"""promptkit: prepare prompt datasets for LLM serving benchmarks.

The operations are generators over canonical records, usable as a Python API::

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
}

__all__ = [
    "DatasetMap",
    "FORMATS",
    "ConversionError",
    "InvalidRecordError",
    "ManifestError",
    "Message",
    "PromptkitError",
    "Record",
    "Step",
    "__version__",
    "add_nonces",
    "detect",
    "fit_records",
    "nonce_params",
    "pad_records",
    "read_records",
    "run",
    "write_records",
]

if TYPE_CHECKING:
    from typing import Any

    from promptkit.api import DatasetMap, read_records, write_records
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
