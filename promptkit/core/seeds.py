"""Seeds of runs: an unseeded run gets one at random, recorded in its manifest, so the
run can be made again byte for byte."""

from __future__ import annotations

import secrets


def new_seed() -> int:
    """A seed for an unseeded run (recorded in the manifest, so the run is reproducible)."""
    return secrets.randbits(63)
