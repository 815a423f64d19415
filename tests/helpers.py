"""Helpers the tests share: JSONL files in and out, the Mooncake traces, the scripts."""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
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


def shared_prefix_texts(count: int, *, heads: int, head_prompts: int, share: float,
                        repeats: float, seed: int = 15) -> list[str]:
    """``count`` texts made of the repository's real prompts, with what makes prefix
    caching and its global computations hard: ``heads`` long heads (``head_prompts``
    prompts each) that a ``share`` of the texts start with, exact repeats of a head (a
    ``repeats`` fraction: fewer distinct prompts than texts), a tenth under one block."""
    rng = random.Random(seed)
    prompts = ROOT / "prompts"
    texts = [json.loads(x)["text"]
             for x in (prompts / "trace.jsonl.example").read_text().splitlines()]
    texts += [m["content"] for line in (prompts / "chat.jsonl.example").read_text().splitlines()
              for m in json.loads(line)["messages"] if m["role"] == "user"]
    shared = [" ".join(rng.sample(texts, head_prompts)) for _ in range(heads)]
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < share:
            out.append(rng.choice(shared) + " " + rng.choice(texts))
        elif kind < share + repeats:
            out.append(rng.choice(shared))
        elif kind < share + repeats + 0.1:
            out.append(rng.choice(texts)[:rng.randint(1, 12)])
        else:
            out.append(rng.choice(texts))
    return out
