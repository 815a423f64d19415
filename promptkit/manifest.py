"""Manifests: how a file was made, enough to reproduce it byte for byte and verify it.

``OUT.manifest.json`` holds the promptkit version, the UTC time, the command line,
each input and the output (path, format, records, sha256), every step with all
its parameters (seed included), and the AIPerf arguments that load the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .errors import ManifestError, PromptkitError, skip_reason
from .files import write_text

SCHEMA = "promptkit.manifest/1"
SUFFIX = ".manifest.json"


def default_path(output: str) -> str:
    return output + SUFFIX


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def named_file(value: str, described: str) -> str | None:
    """A file a manifest names (a ``--system-prompt-file``): as written, else next to
    the file the manifest describes (a folder copied elsewhere); ``None`` if neither."""
    beside = os.path.join(os.path.dirname(described), os.path.basename(value))
    return next((p for p in (value, beside) if os.path.isfile(p)), None)


def file_facts(path: str) -> tuple[str, int]:
    """``(sha256, records)`` of a JSONL file: its bytes' hash and its non-blank lines
    (the decompressed lines of a compressed file)."""
    from .compression import read_file

    digest = hashlib.sha256()
    records = 0
    tail = b""
    try:
        for chunk in read_file(path, digest.update):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            records += sum(1 for line in lines if line.strip())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except PromptkitError as exc:  # corrupt or truncated compressed data
        raise ManifestError(str(exc)) from None
    if tail.strip():
        records += 1
    return digest.hexdigest(), records


def skipped_section(lines: list[str], limit: int = 100) -> dict[str, Any]:
    """The ``skipped`` section of a manifest (or report): how many records were left
    out, how many for each reason (commonest first), and the first ``limit`` lines."""
    counts: dict[str, int] = {}
    for line in lines:
        reason = skip_reason(line)
        counts[reason] = counts.get(reason, 0) + 1
    by_reason = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    return {"count": len(lines), "by_reason": by_reason, "lines": lines[:limit]}


def dumps(manifest: dict[str, Any]) -> str:
    """A manifest's text, as it is written."""
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"


def write(path: str, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically (temporary file, then rename); ``-`` is stdout."""
    text = dumps(manifest)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(path, text)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a valid manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{path}: not a promptkit manifest (schema {SCHEMA!r} expected)")
    return manifest


def verify(path: str, manifest_path: str | None = None,
           facts: Callable[[str, str], tuple[str, int]] | None = None) -> list[str]:
    """The differences between ``path`` and its manifest (empty when it matches).

    ``facts(path, format)`` gives the file's sha256 and record count as it was hashed
    when written (default: a JSONL file's bytes and lines; tables hash otherwise).
    """
    manifest = read(manifest_path or default_path(path))
    expected = manifest["output"]
    if facts is None:
        sha256, records = file_facts(path)
    else:
        sha256, records = facts(path, expected["format"])
    problems = []
    if sha256 != expected["sha256"]:
        problems.append(f"sha256 is {sha256}, manifest says {expected['sha256']}")
    if records != expected["records"]:
        problems.append(f"{records} records, manifest says {expected['records']}")
    return problems
