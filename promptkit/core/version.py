"""promptkit's version, as its manifests and dataset cards record it (the one place it is
written; ``pyproject.toml`` repeats it for the package index)."""

VERSION = "0.1.0"
