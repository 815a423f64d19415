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
import tempfile
from datetime import UTC, datetime
from typing import Any

from .errors import ManifestError

SCHEMA = "promptkit.manifest/1"
SUFFIX = ".manifest.json"


def default_path(output: str) -> str:
    return output + SUFFIX


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_facts(path: str) -> tuple[str, int]:
    """``(sha256, records)`` of a JSONL file: its bytes' hash and its non-blank lines."""
    digest = hashlib.sha256()
    records = 0
    tail = b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                records += sum(1 for line in lines if line.strip())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    if tail.strip():
        records += 1
    return digest.hexdigest(), records


def write(path: str, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically (temporary file, then rename); ``-`` is stdout."""
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_text(path, text)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def writable(path: str) -> None:
    """Raise one line unless ``path`` can be written: its folder must exist. Checked
    before a run starts, so a bad side-file path costs nothing and leaves nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ManifestError(f"{path}: folder {folder} does not exist")


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    writable(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        put_in_place(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def put_in_place(tmp: str, path: str, mode: int = 0o666) -> None:
    """Rename a finished temporary file (or folder) to ``path``, with the mode a new
    file would have (``mkstemp`` makes 0600), so an atomic write looks like any other."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, mode & ~umask)
    os.replace(tmp, path)


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


def verify(path: str, manifest_path: str | None = None) -> list[str]:
    """The differences between ``path`` and its manifest (empty when it matches)."""
    manifest = read(manifest_path or default_path(path))
    expected = manifest["output"]
    if expected["format"] in ("parquet", "hf-dir"):
        from .datasets_io import table_facts  # only tables need pyarrow

        sha256, records = table_facts(path, expected["format"])
    else:
        sha256, records = file_facts(path)
    problems = []
    if sha256 != expected["sha256"]:
        problems.append(f"sha256 is {sha256}, manifest says {expected['sha256']}")
    if records != expected["records"]:
        problems.append(f"{records} records, manifest says {expected['records']}")
    return problems
