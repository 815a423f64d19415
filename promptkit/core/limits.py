"""The most promptkit takes of anything a user (or a manifest) can make as large as
they like: one place for every upper bound, each far above any real use.

A leaf module. A value over a bound is an error of one line naming the bound; none of
these is a limit a real dataset or benchmark comes near.
"""

from __future__ import annotations

#: Tokens in one prompt or reply: a padding or fit target, a record's input or output
#: length (16,777,216: over any model's context window).
MAX_TOKENS = 1 << 24
#: Nonce'd copies of each record (``nonce --copies``).
MAX_COPIES = 1_000_000
#: Characters of a random nonce (``nonce --length``).
MAX_NONCE_LENGTH = 1024
#: Distinct padded prompts (``pad --groups``, ``synth --groups``): each is made, and
#: listed in the manifest.
MAX_GROUPS = 100_000
#: Records a run makes or replays: a generated workload's, or the requests a ``check``
#: replays (``--requests``, ``--warmup``).
MAX_RECORDS = 100_000_000
#: Bytes of one line (one record) of a JSONL file, or one item of a JSON array, once
#: decompressed: a line is held whole to be parsed, so memory follows the longest line
#: (a model's whole context is a few megabytes of text).
MAX_LINE = 400 << 20
#: Bytes of one row of a CSV file (its fields together, quoted line ends and all): the
#: reader holds a field as 4 bytes a character, so a CSV row is bounded lower than a
#: JSON line (64 MiB of text: millions of tokens, over any model's context window).
MAX_CSV_ROW = 64 << 20
#: Bytes of a file read whole: a manifest, a filler or system prompt file, a .env file.
MAX_WHOLE_FILE = 64 << 20
#: Levels of arrays and objects inside one another in a record (a real one has a few;
#: a tool's JSON schema a dozen or two).
MAX_DEPTH = 100
#: Worker processes, or threads, one run starts.
MAX_WORKERS = 256


def size_text(size: int) -> str:
    """``512 MiB``, ``64 KiB``: a bound in bytes as a person reads it."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size:,} bytes"
