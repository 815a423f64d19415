"""``promptkit verify`` and ``promptkit rebuild``: a file (or a folder of parts written
with ``--ray``) checked against its manifest, and re-made from it."""

from __future__ import annotations

import json
import os
from typing import Any

from promptkit.core.errors import PromptkitError
from promptkit.io.files import read_whole
from promptkit.provenance import manifest
from promptkit.provenance.describe import verify_output
from promptkit.provenance.rebuild import rebuild as rebuild_file


def verify(path: str, manifest_path: str | None = None) -> dict[str, Any]:
    """``promptkit verify FILE``: ``problems`` (none when the file matches) and the
    ``manifest`` it was checked against (default: FILE.manifest.json; a folder of parts:
    FOLDER/manifest.json, each part and the parts together)."""
    from promptkit.ray.run import MANIFEST, verify_folder  # (parts of --ray: for start-up)

    if os.path.isdir(path) and _is_part_folder(manifest_path or os.path.join(path, MANIFEST)):
        return {"problems": verify_folder(path, manifest_path),
                "manifest": manifest_path or os.path.join(path, MANIFEST)}
    return {"problems": verify_output(path, manifest_path),
            "manifest": manifest_path or manifest.default_path(path)}


def _is_part_folder(manifest_path: str) -> bool:
    """Whether a folder is one of parts (``--ray``), by its manifest: a saved dataset
    (``--to hf-dir``) is a folder too, with its manifest beside it."""
    try:
        return "parts" in json.loads(read_whole(manifest_path, "manifest")).get("output", {})
    except (OSError, ValueError, AttributeError, PromptkitError):
        return False
    except RecursionError:  # nested too deeply: reading it as the folder's says so
        return True


def rebuild(manifest_path: str, output_path: str, *, input_path: str | None = None,
            allow_paths: bool = False, workers: int | None = None, ray: str | None = None,
            argv: list[str] | None = None) -> dict[str, Any]:
    """``promptkit rebuild MANIFEST OUT``: the file re-made byte for byte (raises when it
    differs); returns its manifest (see :func:`promptkit.provenance.rebuild.rebuild`)."""
    return rebuild_file(manifest_path, output_path, input_path=input_path, argv=argv,
                        workers=workers, allow_paths=allow_paths, ray_address=ray)
