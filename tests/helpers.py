"""Helpers the tests share: JSONL files in and out, the Mooncake sample traces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
SHARED_MOONCAKE = ROOT.parent / "shared" / "data" / "mooncake"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def mooncake_trace(name: str) -> Path:
    """A Mooncake trace: the full copy in ../shared when present, else the sample in tests/data."""
    full = SHARED_MOONCAKE / f"{name}_trace.jsonl"
    return full if full.exists() else DATA / f"mooncake_{name}_head.jsonl"
