"""Pictures of a check and of statistics, as PNG files (optional: matplotlib, the ``plot`` extra).

- :func:`check_plot`: hit tokens of each request over request order, and the
  cumulative hit rate, so caching that is off, on, or creeping in through
  repeats shows at a glance.
- :func:`stats_plot`: the prompt-length histogram, with the shared prefix (the
  most shared system prompt) marked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from promptkit.core.errors import PromptkitError
from promptkit.io.files import os_error, put_in_place, remove_quietly, temporary, writable

INSTALL = ("--plot needs matplotlib: pip install matplotlib (or pip install '.[plot]' "
           "in the promptkit folder)")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PromptkitError(INSTALL) from None
    return plt


def _save(fig: Any, path: str) -> None:
    """Write the PNG atomically: a temporary file beside ``path``, then a rename."""
    writable(path)
    fd, tmp = temporary(path)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110)
        put_in_place(tmp, path)
    except OSError as exc:  # no space left
        remove_quietly(tmp)
        raise os_error(exc, path) from None
    except BaseException:
        remove_quietly(tmp)
        raise


def check_plot(path: str, hits: Sequence[int], lengths: Sequence[int], title: str) -> None:
    import numpy as np

    plt = _pyplot()
    hit = np.asarray(hits, dtype=np.int64)
    length = np.asarray(lengths, dtype=np.int64)
    order = np.arange(1, len(hit) + 1)
    cumulative = np.cumsum(hit) / np.maximum(np.cumsum(length), 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.fill_between(order, length, step="mid", color="#d0d7de", label="prompt tokens")
    top.step(order, hit, where="mid", color="#cf222e", label="hit tokens")
    top.set_ylabel("tokens")
    top.legend(loc="upper right")
    top.set_title(title)
    bottom.plot(order, cumulative * 100, color="#0969da")
    bottom.set_ylabel("cumulative hit rate (%)")
    bottom.set_xlabel("request (in the order sent)")
    bottom.set_ylim(0, 100)
    if len(cumulative):
        bottom.annotate(f"{cumulative[-1]:.1%}", (order[-1], cumulative[-1] * 100),
                        ha="right", va="bottom")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def stats_plot(path: str, tokens: Sequence[int], shared_prefix: int | None, title: str) -> None:
    import numpy as np

    plt = _pyplot()
    counts = np.asarray(tokens, dtype=np.int64)
    if not len(counts):
        raise PromptkitError("--plot needs prompt token counts: give --tokenizer")
    fig, axis = plt.subplots(figsize=(9, 4.5))
    axis.hist(counts, bins=min(60, max(10, len(np.unique(counts)))), color="#0969da")
    if shared_prefix:
        axis.axvline(shared_prefix, color="#cf222e", linestyle="--",
                     label=f"shared prefix: {shared_prefix} tokens")
        axis.legend(loc="upper right")
    axis.set_xlabel("prompt tokens per record")
    axis.set_ylabel("records")
    from matplotlib.ticker import MaxNLocator

    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
