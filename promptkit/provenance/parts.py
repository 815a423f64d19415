"""The folder of parts ``--ray`` writes, and how it is checked: no Ray needed to read it.

A folder of parts is one output cut into files: ``OUT/part-00000.jsonl``,
``OUT/part-00001.jsonl`` ... whose concatenation is the bytes the same command writes
without ``--ray``, and ``OUT/manifest.json``, whose ``output.parts`` lists each part
(``path``, ``records``, ``bytes``, ``sha256``) and ``output.sha256`` and
``output.records`` describe the concatenation.

It is made in a staging folder beside OUT (:func:`make_staging`; each part written
under a temporary name and renamed, :func:`write_part`), checked against what its
writers reported (:func:`hash_parts`), then given its manifest and renamed into place
whole (:func:`put_folder`): the parts and their manifest appear together, or not at all.
:func:`verify_folder` checks one against its manifest; ``rebuild`` re-makes one
(:mod:`promptkit.provenance.rebuild`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

from promptkit.core import leftovers
from promptkit.core.errors import PromptkitError
from promptkit.io import files
from promptkit.io.files import STDIO
from promptkit.io.hashing import LineCount, hash_file
from promptkit.provenance import manifest

#: The manifest of a part folder, inside it (so the folder is one unit: renamed into
#: place whole, copied or uploaded whole).
MANIFEST = "manifest.json"
PART = "part-{:05d}.jsonl"


def is_part_folder(path: str, manifest_path: str | None = None) -> bool:
    """Whether ``path`` is a folder of parts, by its manifest (``manifest_path``, else
    ``path/manifest.json``): a saved dataset (``--to hf-dir``) is a folder too, with its
    manifest beside it."""
    if not os.path.isdir(path):
        return False
    try:
        recorded = json.loads(files.read_whole(manifest_path or os.path.join(path, MANIFEST),
                                               "manifest"))
        return "parts" in recorded.get("output", {})
    except (OSError, ValueError, AttributeError, PromptkitError):
        return False
    except RecursionError:  # nested too deeply: reading it as the folder's says so
        return True


def check_output(output_path: str, input_path: str) -> None:
    """OUT of a folder of parts; refused before any work when it is stdin/stdout, the
    input, a file, or a folder promptkit did not make."""
    if output_path == STDIO:
        raise PromptkitError("--ray writes a folder of parts: name OUT (a folder), not -")
    files.refuse_clashes([(output_path, "OUT")], [input_path])
    folder = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(folder):
        raise PromptkitError(f"{output_path}: folder {folder} does not exist")
    if os.path.lexists(output_path):
        if not os.path.isdir(output_path):
            raise PromptkitError(f"{output_path}: exists and is not a folder (--ray writes a "
                                 "folder of parts)")
        if os.listdir(output_path) and not os.path.isfile(
                os.path.join(output_path, MANIFEST)):
            raise PromptkitError(f"{output_path}: a folder that is not empty and holds no "
                                 f"{MANIFEST}: not replaced")


def make_staging(output_path: str) -> str:
    """A temporary folder beside OUT for the parts, claimed by this process (a later run
    sweeps it if this one dies)."""
    try:
        staging = tempfile.mkdtemp(prefix=leftovers.temp_prefix(output_path),
                                   suffix=files.TMP_SUFFIX,
                                   dir=os.path.dirname(os.path.abspath(output_path)))
    except OSError as exc:
        raise files.os_error(exc, output_path) from None
    leftovers.claim(staging)
    return staging


def write_part(path: str, data: bytes) -> str:
    """Write a part under a temporary name and rename it (a task run again by Ray
    writes the same bytes over it); its sha256."""
    tmp = f"{path}.{os.getpid()}{files.TMP_SUFFIX}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def hash_parts(folder: str, parts: list[dict[str, Any]], digest: Any) -> None:
    """Stream the parts in order into ``digest`` (their concatenation), checking each
    against the sha256 its writer reported."""
    for part in parts:
        own = hashlib.sha256()
        hash_file(os.path.join(folder, part["path"]), own, digest)
        if own.hexdigest() != part["sha256"]:
            raise PromptkitError(f"{part['path']}: its bytes changed after its task wrote them")


def put_folder(staging: str, output_path: str, result: dict[str, Any]) -> None:
    """Write the manifest into the staging folder and rename the folder to OUT (an
    earlier part folder there is replaced; nothing is left on failure)."""
    for name in os.listdir(staging):  # a part a worker killed mid-write left (run again)
        if name.endswith(files.TMP_SUFFIX):
            files.remove_quietly(os.path.join(staging, name))
    manifest.write(os.path.join(staging, MANIFEST), result)
    files.replace_folder(staging, output_path)


def verify_folder(path: str, manifest_path: str | None = None) -> list[str]:
    """The differences between a part folder and its manifest (``OUT/manifest.json``):
    each part's sha256 and records, no part missing or extra, and the sha256 and records
    of their concatenation. Only the parts the manifest lists are read, and none that is
    a link out of the folder or not a file."""
    recorded = manifest.read(manifest_path or os.path.join(path, MANIFEST))
    parts = recorded["output"].get("parts")
    if not isinstance(parts, list):
        return [f"{path} is a folder, and its manifest describes one file, not parts"]
    problems = []
    found = sorted(name for name in os.listdir(path)
                   if name.startswith("part-") and name.endswith(".jsonl"))
    extra = sorted(set(found) - {part["path"] for part in parts})
    if extra:
        problems.append(f"{', '.join(extra)} not in the manifest")
    whole = hashlib.sha256()
    records = 0
    folder = os.path.realpath(path)
    for part in parts:
        name = part["path"]  # a file name (manifest.read checked it)
        file = os.path.join(path, name)
        if not os.path.exists(file):
            problems.append(f"{name} is a link to nothing" if os.path.lexists(file)
                            else f"{name} is missing")
            continue
        real = os.path.realpath(file)
        if os.path.commonpath([real, folder]) != folder:
            problems.append(f"{name} is a link out of the folder: not read")
            continue
        if not os.path.isfile(real):
            problems.append(f"{name} is not a file: not read")
            continue
        own, counted = hashlib.sha256(), LineCount()
        hash_file(file, own, whole, counted)
        lines = counted.lines
        records += lines
        if own.hexdigest() != part["sha256"]:
            problems.append(f"{name}: sha256 is {own.hexdigest()}, manifest says "
                            f"{part['sha256']}")
        if lines != part["records"]:
            problems.append(f"{name}: {lines} records, manifest says {part['records']}")
    if not problems and whole.hexdigest() != recorded["output"]["sha256"]:
        problems.append(f"the parts together: sha256 is {whole.hexdigest()}, manifest says "
                        f"{recorded['output']['sha256']}")
    if not problems and records != recorded["output"]["records"]:
        problems.append(f"the parts together: {records} records, manifest says "
                        f"{recorded['output']['records']}")
    return problems


__all__ = ["MANIFEST", "PART", "check_output", "hash_parts", "is_part_folder", "make_staging",
           "put_folder", "verify_folder", "write_part"]
