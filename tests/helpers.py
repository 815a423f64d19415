"""Helpers the tests share: JSONL files in and out, the Mooncake traces, the scripts."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MOONCAKE = ROOT / "data" / "mooncake"
_UNPACKED: dict[str, Path] = {}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def mooncake_trace(name: str) -> Path:
    """A Mooncake trace the repository ships (``data/mooncake``), unpacked once a session."""
    if name not in _UNPACKED:
        path = Path(tempfile.mkdtemp(prefix="mooncake-")) / f"{name}_trace.jsonl"
        with gzip.open(MOONCAKE / f"{name}_trace.jsonl.gz", "rb") as f, path.open("wb") as out:
            shutil.copyfileobj(f, out)
        _UNPACKED[name] = path
    return _UNPACKED[name]


def load_script(name: str) -> ModuleType:
    """``scripts/NAME.py`` as a module, loaded once a session (the scripts are not a
    package)."""
    key = f"promptkit_scripts_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
