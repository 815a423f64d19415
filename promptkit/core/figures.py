"""Figures of a list of token counts, as every report and manifest gives them: total, min,
mean, p50, p90, p99 and max (percentiles by the nearest rank)."""

from __future__ import annotations

from array import array
from typing import Any


def token_figures(tokens: array) -> dict[str, Any]:
    """The figures of ``tokens`` (an ``array("I")`` of counts; not empty)."""
    import numpy as np  # (loaded when figures are asked for: numpy takes a moment)

    counts = np.frombuffer(tokens, dtype=np.uint32)
    p50, p90, p99 = np.percentile(counts, [50, 90, 99], method="nearest")
    return {
        "total": int(counts.sum(dtype=np.int64)),
        "min": int(counts.min()),
        "mean": round(float(counts.mean()), 2),
        "p50": int(p50),
        "p90": int(p90),
        "p99": int(p99),
        "max": int(counts.max()),
    }
