"""``promptkit verify`` and ``promptkit rebuild``: a file (or a folder of parts written
with ``--ray``) checked against its manifest, and re-made from it."""

from __future__ import annotations

import os
from typing import Any

from promptkit.provenance import manifest
from promptkit.provenance.describe import verify_output
from promptkit.provenance.parts import MANIFEST, is_part_folder, verify_folder
from promptkit.provenance.rebuild import rebuild as rebuild_file


def verify(path: str, manifest_path: str | None = None) -> dict[str, Any]:
    """``promptkit verify FILE``: ``problems`` (none when the file matches) and the
    ``manifest`` it was checked against (default: FILE.manifest.json; a folder of parts:
    FOLDER/manifest.json, each part and the parts together)."""
    if is_part_folder(path, manifest_path):
        return {"problems": verify_folder(path, manifest_path),
                "manifest": manifest_path or os.path.join(path, MANIFEST)}
    return {"problems": verify_output(path, manifest_path),
            "manifest": manifest_path or manifest.default_path(path)}


def rebuild(manifest_path: str, output_path: str, *, input_path: str | None = None,
            allow_paths: bool = False, workers: int | None = None, ray: str | None = None,
            argv: list[str] | None = None) -> dict[str, Any]:
    """``promptkit rebuild MANIFEST OUT``: the file re-made byte for byte (raises when it
    differs); returns its manifest (see :func:`promptkit.provenance.rebuild.rebuild`)."""
    on_cluster = None
    if ray is not None:
        from promptkit.ray.commands import on_cluster as ray_runner  # (numpy: on demand)

        on_cluster = ray_runner(ray)
    return rebuild_file(manifest_path, output_path, input_path=input_path, argv=argv,
                        workers=workers, allow_paths=allow_paths, on_cluster=on_cluster)
