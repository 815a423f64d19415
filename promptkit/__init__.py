"""promptkit: prepare prompt datasets for LLM serving benchmarks.

The operations are generators over canonical records, usable as a Python API::

    from promptkit import read_records, add_nonces, write_records

    records = read_records("in.jsonl")
    write_records("out.jsonl", add_nonces(records, kind="uuid", seed=7))
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import DatasetMap, read_records, write_records  # noqa: E402
from .errors import ConversionError, InvalidRecordError, ManifestError, PromptkitError  # noqa: E402
from .fit import fit_records  # noqa: E402
from .formats import FORMATS, detect  # noqa: E402
from .nonce import add_nonces, nonce_params  # noqa: E402
from .pad import pad_records  # noqa: E402
from .pipeline import run  # noqa: E402
from .records import Message, Record  # noqa: E402
from .steps import Step  # noqa: E402

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
