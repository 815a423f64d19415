"""A progress bar on stderr for long runs: bytes read, records, rate and ETA.

Shown only when stderr is a terminal and the input is a file (its size gives the
ETA); ``promptkit --quiet`` turns it off. Data never goes near it: stdout stays
for records.
"""

from __future__ import annotations

import os
import sys
from typing import Any


class Progress:
    """Counts the bytes and records a run has read, on a tqdm bar when shown."""

    def __init__(self, path: str, *, enabled: bool = True):
        self.bar: Any = None
        if not enabled or not sys.stderr.isatty() or not os.path.isfile(path):
            return
        import shutil

        from tqdm import tqdm

        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            width = 0
        self.bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True,
                        unit_divisor=1024, file=sys.stderr, leave=False, mininterval=0.5,
                        desc=os.path.basename(path),
                        ncols=width or shutil.get_terminal_size().columns)

    def advance(self, nbytes: int, records: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{records:,} records", refresh=False)
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
