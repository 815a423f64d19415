"""Datasets read in Arrow batches: the same bytes as promptkit wrote before, for every
``--workers``, and the manifests made before still rebuild.

``tests/data/before-arrow`` holds files and manifests made by promptkit before datasets
were read in batches (``MADE.txt`` there says how): they stand for the manifests users
already have.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BEFORE = Path(__file__).parent / "data" / "before-arrow"
MANIFESTS = sorted(p.name for p in BEFORE.glob("*.jsonl.manifest.json"))


@pytest.fixture
def before(tmp_path, monkeypatch):
    """A copy of the files made before, as the working folder (the manifests name their
    inputs relative to it)."""
    folder = tmp_path / "before"
    shutil.copytree(BEFORE, folder)
    monkeypatch.chdir(folder)
    return folder


def test_the_fixture_has_every_kind_of_run():
    assert len(MANIFESTS) == 17


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_manifest_made_before_rebuilds_the_same_bytes(name, workers, before, run):
    made = name.removesuffix(".manifest.json")
    result = run("rebuild", name, "again.jsonl", "--workers", workers)
    assert result.exit_code == 0, result.stderr
    assert (before / "again.jsonl").read_bytes() == (before / made).read_bytes()
