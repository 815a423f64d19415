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

from promptkit.core.errors import ManifestError, PromptkitError
from promptkit.core.words import counted
from promptkit.io.files import read_whole, write_text

SCHEMA = "promptkit.manifest/1"
SUFFIX = ".manifest.json"


def default_path(output: str) -> str:
    return output + SUFFIX


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def named_file(value: str, described: str) -> str | None:
    """A file a manifest names (a ``--system-prompt-file``): as written, else next to
    the file the manifest describes (a folder copied elsewhere); ``None`` if neither.

    A manifest may come from someone else: only a file in the described file's own
    folder counts (links resolved), never one elsewhere it names (``pad --into file``
    writes its file there)."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(described)))

    def inside(path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), folder]) == folder

    beside = os.path.join(os.path.dirname(described), os.path.basename(value))
    return next((p for p in (value, beside) if os.path.isfile(p) and inside(p)), None)


def file_facts(path: str) -> tuple[str, int]:
    """``(sha256, records)`` of a JSONL file: its bytes' hash and its non-blank lines
    (the decompressed lines of a compressed file)."""
    from promptkit.core.progress import Progress
    from promptkit.io.compression import read_file

    digest = hashlib.sha256()
    records = 0
    open_line = False  # the line not yet ended has more than white space
    try:
        with Progress("hashing", lambda: records):
            for chunk in read_file(path, digest.update):
                lines = chunk.split(b"\n")  # lines[0] goes on the line not yet ended
                if len(lines) == 1:
                    open_line = open_line or _filled(lines[0])
                    continue
                records += (open_line or _filled(lines[0])) + sum(map(_filled, lines[1:-1]))
                open_line = _filled(lines[-1])
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except PromptkitError as exc:  # corrupt or truncated compressed data
        raise ManifestError(str(exc)) from None
    return digest.hexdigest(), records + open_line


def _filled(line: bytes) -> bool:
    """Whether a line (or part of one) holds more than white space."""
    return bool(line) and not line.isspace()


def kept_replies(recorded: dict[str, Any]) -> bool:
    """Whether the file a manifest describes was written with ``--keep-replies``: as its
    ``output.keep_replies`` says, or, when it says nothing (a file made before promptkit
    refused recorded replies in requests), yes: it was written as the records came."""
    return bool(recorded["output"].get("keep_replies", True))


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
        manifest = json.loads(read_whole(path, "manifest"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except ManifestError:
        raise
    except PromptkitError as exc:  # a device, or a file far larger than a manifest
        raise ManifestError(str(exc)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not a valid manifest: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{path}: not a valid manifest: JSON nested too deeply") from None
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    if isinstance(schema, str) and schema.startswith("promptkit.manifest/") and schema != SCHEMA:
        raise ManifestError(f"{path}: schema {schema!r}: this promptkit reads {SCHEMA!r} "
                            "(another promptkit version wrote it)")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{path}: not a promptkit manifest (schema {SCHEMA!r} expected)")
    problem = malformed(manifest)
    if problem is not None:
        raise ManifestError(f"{path}: not a valid manifest: {problem}")
    return manifest


def _hex64(value: Any) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_path(value: Any) -> bool:
    """Whether a manifest's value can name a file: a string, not empty, without NUL."""
    return isinstance(value, str) and value != "" and "\x00" not in value


#: What each field ``verify`` and ``rebuild`` read must be: a test, and what it wants.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "path": (is_path, "a path"),
    "format": (lambda v: isinstance(v, str), "a format name"),
    "records": (_count, "a record count"),
    "sha256": (_hex64, "a sha256 (64 hex digits)"),
}


def _file_problem(name: str, entry: Any, optional: dict[str, tuple[Callable[[Any], bool], str]]
                  ) -> str | None:
    if not isinstance(entry, dict):
        return f"{name} is {entry!r}, not an object"
    for key, (ok, wants) in _FIELDS.items():
        if key not in entry:
            return f"{name}.{key} is missing"
        if not ok(entry[key]):
            return f"{name}.{key} is {entry[key]!r}, not {wants}"
    for key, (ok, wants) in optional.items():
        if key in entry and not ok(entry[key]):
            return f"{name}.{key} is {entry[key]!r}, not {wants}"
    return None


def _listed_problem(name: str, entry: Any,
                    wanted: tuple[tuple[str, tuple[Callable[[Any], bool], str]], ...]
                    ) -> str | None:
    """The first of ``wanted`` fields of one entry of a list (a shard, a part, a side
    file) that is missing or wrong, as :func:`malformed` says it."""
    if not isinstance(entry, dict):
        return f"{name} is {entry!r}, not an object"
    for key, (ok, wants) in wanted:
        if not ok(entry.get(key)):
            return f"{name}.{key} is {entry.get(key)!r}, not {wants}"
    return None


def malformed(manifest: dict[str, Any]) -> str | None:
    """The first field of a manifest (of schema :data:`SCHEMA`) that is missing or of the
    wrong kind, as ``field.path is VALUE, not WHAT``; ``None`` when it is well formed.

    Checked: what ``verify`` and ``rebuild`` read (the output's and inputs' path, format,
    records and sha256, and ``keep_replies``; the shards of an input and the parts of a
    folder; each step's ``op`` and ``params``; ``skipped.count``; the side outputs; the
    AIPerf ``args``; a generator's ``name`` and ``params``). A path holding NUL is no
    path. Each step's parameters are checked by its operation when ``rebuild`` makes
    the step (see :mod:`promptkit.ops.base`)."""
    from promptkit.ops.registry import OPS

    is_dict = (lambda v: isinstance(v, dict), "an object")
    problem = _file_problem("output", manifest.get("output"), {
        "compression": (lambda v: isinstance(v, str), "a codec name"),
        "content_sha256": (_hex64, "a sha256 (64 hex digits)"),
        "keep_replies": (lambda v: isinstance(v, bool), "true or false"),
        "parts": (lambda v: isinstance(v, list), "a list")})
    if problem is not None:
        return problem
    for j, part in enumerate(manifest["output"].get("parts") or []):  # a folder of parts
        problem = _listed_problem(f"output.parts[{j}]", part, (
            ("path", (lambda v: is_path(v) and os.path.basename(v) == v,
                      "a file name in the folder")),
            ("records", _FIELDS["records"]), ("bytes", (_count, "a size in bytes")),
            ("sha256", _FIELDS["sha256"])))
        if problem is not None:
            return problem
    inputs = manifest.get("inputs")
    if not isinstance(inputs, list):
        return f"inputs is {inputs!r}, not a list"
    for i, entry in enumerate(inputs):
        problem = _file_problem(f"inputs[{i}]", entry, {
            "dataset": is_dict,
            "limit": (lambda v: _count(v) and v >= 1, "a record count of at least 1")})
        if problem is not None:
            return problem
        dataset = entry.get("dataset")
        if dataset is not None and not isinstance(dataset.get("options"), dict):
            return f"inputs[{i}].dataset.options is {dataset.get('options')!r}, not an object"
        shards = entry.get("shards")  # an input of many files (promptkit.io.shards)
        if shards is not None and not isinstance(shards, list):
            return f"inputs[{i}].shards is {shards!r}, not a list"
        for j, shard in enumerate(shards or []):
            problem = _listed_problem(f"inputs[{i}].shards[{j}]", shard, (
                ("path", _FIELDS["path"]), ("sha256", _FIELDS["sha256"]),
                ("size", (_count, "a size in bytes"))))
            if problem is not None:
                return problem
    steps = manifest.get("steps")
    if not isinstance(steps, list):
        return f"steps is {steps!r}, not a list"
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            return f"steps[{i}] is {step!r}, not an object"
        if step.get("op") not in OPS:
            return f"steps[{i}].op is {step.get('op')!r}, not one of {', '.join(OPS)}"
        if not isinstance(step.get("params"), dict):
            return f"steps[{i}].params is {step.get('params')!r}, not an object"
    skipped = manifest.get("skipped")
    if not isinstance(skipped, dict) or not _count(skipped.get("count")):
        count = skipped.get("count") if isinstance(skipped, dict) else skipped
        return f"skipped.count is {count!r}, not a record count"
    aiperf = manifest.get("aiperf", {})
    args = aiperf.get("args", []) if isinstance(aiperf, dict) else None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return f"aiperf.args is {args!r}, not a list of strings"
    side_outputs = manifest.get("side_outputs", [])
    if not isinstance(side_outputs, list):
        return f"side_outputs is {side_outputs!r}, not a list"
    for j, side in enumerate(side_outputs):
        problem = _listed_problem(f"side_outputs[{j}]", side, (
            ("path", _FIELDS["path"]), ("sha256", _FIELDS["sha256"])))
        if problem is not None:
            return problem
    if "generator" in manifest:
        generator = manifest["generator"]
        if not isinstance(generator, dict):
            return f"generator is {generator!r}, not an object"
        if not isinstance(generator.get("name"), str):
            return f"generator.name is {generator.get('name')!r}, not a generator name"
        if not isinstance(generator.get("params"), dict):
            return f"generator.params is {generator.get('params')!r}, not an object"
    return None


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
        problems.append(f"{counted(records, 'record')}, manifest says {expected['records']}")
    return problems
