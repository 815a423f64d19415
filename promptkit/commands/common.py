"""What every command does the same way: the default manifest path, the seed of
``--shuffle``, ``--ray``'s checks, and one line on stderr."""

from __future__ import annotations

import sys
from typing import Any

from promptkit.core.errors import BadOptionError
from promptkit.core.seeds import new_seed
from promptkit.io.files import STDIO
from promptkit.provenance import manifest
from promptkit.provenance.parts import MANIFEST


def say(line: str) -> None:
    """A line on stderr, as the CLI says it (``promptkit: LINE``)."""
    print(f"promptkit: {line}", file=sys.stderr, flush=True)


def manifest_path_for(output_path: str, manifest_path: str | None = None, *,
                      parts: bool = False) -> str | None:
    """Where a run's manifest goes: ``manifest_path`` when given, else OUT.manifest.json
    (none when OUT is stdout); OUT/manifest.json inside a folder of ``parts`` (``--ray``)."""
    if parts:
        return f"{output_path}/{MANIFEST}"
    if manifest_path is None and output_path != STDIO:
        return manifest.default_path(output_path)
    return manifest_path


def shuffled(dataset: dict[str, Any] | None, seed: int | None) -> dict[str, Any]:
    """Dataset options with ``shuffle`` turned into the seed that shuffles: ``seed``, or
    a new random one (recorded in the manifest)."""
    dataset = dict(dataset or {})
    if dataset.pop("shuffle", False):
        dataset["shuffle_seed"] = new_seed() if seed is None else seed
    return dataset


def ray_ready(address: str, manifest_path: str | None = None,
              dataset: dict[str, Any] | None = None) -> None:
    """``--ray``'s address, ``--manifest`` and dataset options checked, Ray importable."""
    from promptkit.ray import check_address, require  # (only for --ray, for start-up)

    check_address(address)
    if manifest_path is not None:
        raise BadOptionError("--ray writes its manifest into OUT (OUT/manifest.json): "
                             "--manifest is not taken with it")
    chosen = [key for key, value in (dataset or {}).items()
              if value is not None and value is not False]
    if chosen:
        raise BadOptionError(f"--ray reads JSONL files; --{chosen[0].replace('_', '-')} is "
                             "not taken with it")
    require()
