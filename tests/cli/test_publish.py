"""promptkit publish: a folder that is a Hugging Face dataset repository, and --push.

Everything here is real: the CLI, ``datasets.load_dataset`` reading the folder,
``huggingface_hub``'s card parser and its upload client, AIPerf's loader models.
The one boundary replaced is the Hugging Face Hub itself: :class:`FakeHub`, a
real HTTP server on 127.0.0.1 that answers the four calls ``huggingface_hub``
1.33 makes for ``create_repo`` + ``upload_folder`` (``POST /api/repos/create``,
``POST /api/validate-yaml``, ``POST /api/datasets/{repo}/preupload/{rev}`` and
``POST /api/datasets/{repo}/commit/{rev}``), found in ``hf_api.py``,
``_upload_pipeline.py`` and ``_commit_api.py``. It answers ``uploadMode:
regular`` for every file, so each file's bytes arrive inlined (base64) in the
commit. ``HF_ENDPOINT`` is read when ``huggingface_hub`` is imported, so those
runs are subprocesses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
from helpers import ROOT, read_jsonl, write_jsonl

from promptkit.api import read_records
from promptkit.commands.publish import parse_size, size_category
from promptkit.formats.table import to_row

PROMPTS = ROOT / "prompts"
TOKEN = "hf_test_secret_0123456789abcdefXYZ"
SHARD = re.compile(r"train-(\d{5})-of-(\d{5})\.parquet")


def load_rows(folder: Path, cache: Path) -> list[dict[str, Any]]:
    """The train split as ``datasets`` reads the published folder."""
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(str(folder), split="train", cache_dir=str(cache)).to_list()


def rows_of(path: Path) -> list[dict[str, Any]]:
    """promptkit's table rows of a JSONL file's records, in order."""
    return [to_row(record) for record in read_records(str(path))]


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def published_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "aiperf" / "prompts.jsonl.manifest.json").read_text())


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if "promptkit-tmp" in p.name]


# ---------------------------------------------------------------- the folder


@pytest.mark.parametrize("name", ["chat.jsonl.example", "trace.jsonl.example"])
def test_round_trip_through_load_dataset(name, tmp_path, run):
    source = tmp_path / name
    shutil.copy(PROMPTS / name, source)
    out = tmp_path / "published"
    result = run("publish", source, out)
    assert result.exit_code == 0, result.stderr
    assert load_rows(out, tmp_path / "cache") == rows_of(source)
    assert sorted(folder_files(out)) == [
        "README.md", "aiperf/prompts.jsonl", "aiperf/prompts.jsonl.manifest.json",
        "data/train-00000-of-00001.parquet"]
    # the AIPerf file holds the same records, and its manifest lists every other file
    assert rows_of(out / "aiperf" / "prompts.jsonl") == rows_of(source)
    aiperf_tool.validate("MooncakeTrace", read_jsonl(out / "aiperf" / "prompts.jsonl"))
    manifest = published_manifest(out)
    listed = {f["path"]: f["sha256"] for f in manifest["published"]["files"]}
    files = folder_files(out)
    del files["aiperf/prompts.jsonl.manifest.json"]
    assert listed == {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    assert manifest["output"]["path"] == "aiperf/prompts.jsonl"
    assert manifest["aiperf"]["args"] == ["--input-file", "aiperf/prompts.jsonl",
                                          "--custom-dataset-type", "mooncake_trace"]
    assert str(tmp_path) not in json.dumps(manifest["output"])  # no build folder named
    assert run("verify", out / "aiperf" / "prompts.jsonl").exit_code == 0
    assert no_leftovers(tmp_path)


def test_a_nonced_file_card_and_history(tmp_path, run):
    from huggingface_hub import DatasetCard

    source = tmp_path / "chat.jsonl"
    shutil.copy(PROMPTS / "chat.jsonl.example", source)
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", source, nonced, "--seed", "7", "--at", "user").exit_code == 0
    out = tmp_path / "published"
    result = run("publish", nonced, out, "--license", "apache-2.0", "--pretty-name", "Kyoto")
    assert result.exit_code == 0, result.stderr
    assert load_rows(out, tmp_path / "cache") == rows_of(nonced)

    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.size_categories == ["n<1K"]
    assert card.data.task_categories == ["text-generation"]
    assert {"benchmark", "aiperf", "promptkit"} <= set(card.data.tags)
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"}]}]
    assert card.data.dataset_info["splits"] == [
        {"name": "train", "num_bytes": card.data.dataset_info["dataset_size"],
         "num_examples": 6}]
    text = card.text
    assert f"promptkit nonce {source} {nonced} --seed 7 --at user" in text
    assert "step `nonce`" in text and '"seed":7' in text and '"at":"user"' in text
    assert "--input-file aiperf/prompts.jsonl --custom-dataset-type mooncake_trace" in text
    assert "### 2. This publication" in text

    manifest = published_manifest(out)
    (made,) = manifest["history"]
    assert made["manifest"] == f"{nonced}.manifest.json"
    assert made["steps"][0]["params"]["seed"] == 7
    assert manifest["inputs"][0]["sha256"] == made["output"]["sha256"]


def test_a_file_that_no_longer_matches_its_manifest_has_no_history(tmp_path, run):
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", PROMPTS / "trace.jsonl.example", nonced, "--seed", "1").exit_code == 0
    with nonced.open("a") as f:
        f.write('{"text": "added later"}\n')
    result = run("publish", nonced, tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert "left out of the history" in result.stderr
    assert "history" not in published_manifest(tmp_path / "out")


def test_small_shards_stay_under_the_bound_and_keep_the_order(tmp_path, run):
    import pyarrow.parquet as pq

    many = tmp_path / "many.jsonl"
    assert run("nonce", PROMPTS / "trace.jsonl.example", many, "--copies", "60",
               "--seed", "3").exit_code == 0
    out = tmp_path / "published"
    result = run("publish", many, out, "--max-shard-size", "40KB")
    assert result.exit_code == 0, result.stderr
    shards = sorted((out / "data").iterdir())
    assert len(shards) >= 3
    for i, shard in enumerate(shards):
        number, total = SHARD.fullmatch(shard.name).groups()
        assert (int(number), int(total)) == (i, len(shards))
        meta = pq.ParquetFile(shard).metadata
        largest_group = max(
            sum(meta.row_group(g).column(c).total_compressed_size
                for c in range(meta.num_columns))
            for g in range(meta.num_row_groups))
        assert shard.stat().st_size <= 40_000 + largest_group
    assert load_rows(out, tmp_path / "cache") == rows_of(many)
    listed = [f for f in published_manifest(out)["published"]["files"]
              if f["path"].startswith("data/")]
    assert sum(f["records"] for f in listed) == 1200


def test_a_dataset_input_with_dataset_options(tmp_path, run):
    out = tmp_path / "published"
    result = run("publish", PROMPTS / "alpaca-sample.parquet", out, "--limit", "5",
                 "--shuffle", "--seed", "4", "--to", "openai", "--keep-replies")
    assert result.exit_code == 0, result.stderr
    rows = load_rows(out, tmp_path / "cache")
    assert len(rows) == 5
    assert rows == rows_of(out / "aiperf" / "prompts.jsonl")
    dataset = published_manifest(out)["inputs"][0]["dataset"]
    assert dataset["options"] == {"limit": 5, "shuffle_seed": 4}


AIPERF_MODELS = {"single_turn": "SingleTurn", "multi_turn": "MultiTurn",
                 "random_pool": "RandomPool", "mooncake_trace": "MooncakeTrace",
                 "openai": "MooncakeTrace"}


@pytest.mark.parametrize("fmt", list(AIPERF_MODELS))
def test_the_aiperf_file_validates_with_aiperf(fmt, tmp_path, run):
    source = PROMPTS / ("chat.jsonl.example" if fmt == "openai" else "trace.jsonl.example")
    if fmt == "random_pool":  # a pool has no output lengths
        source = write_jsonl(tmp_path / "pool.jsonl",
                             [{"text": row["text"]} for row in read_jsonl(source)])
    out = tmp_path / "published"
    result = run("publish", source, out, "--to", fmt)
    assert result.exit_code == 0, result.stderr
    assert load_rows(out, tmp_path / "cache") == rows_of(source)
    lines = read_jsonl(out / "aiperf" / "prompts.jsonl")
    assert lines
    aiperf_tool.validate(AIPERF_MODELS[fmt], lines)
    assert published_manifest(out)["aiperf"]["custom_dataset_type"] == (
        "mooncake_trace" if fmt == "openai" else fmt)


def test_sizes_and_size_categories():
    assert [parse_size(s) for s in ("200KB", "1MB", "64MiB", "1000", "1.5GB")] == [
        200_000, 1_000_000, 64 << 20, 1000, 1_500_000_000]
    for bad in ("", "12XB", "-5MB", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 999_999, 10**6, 10**13)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "n>1T"]


# ---------------------------------------------------------------- refusing, and atomicity


def test_a_non_empty_out_dir_is_refused_unless_overwrite(tmp_path, run):
    out = tmp_path / "published"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("publish", PROMPTS / "trace.jsonl.example", out)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("promptkit: "
                                     f"{out}: exists and is not empty; --overwrite replaces it")
    assert folder_files(out) == {"keep.txt": b"mine"}
    # --overwrite replaces only a folder 'publish' made, never someone's other folder.
    result = run("publish", PROMPTS / "trace.jsonl.example", out, "--overwrite")
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {out}: not a folder 'publish' made (no "
                             "aiperf/prompts.jsonl.manifest.json); --overwrite replaces only "
                             "those\n")
    assert folder_files(out) == {"keep.txt": b"mine"}
    published = tmp_path / "again"
    assert run("publish", PROMPTS / "trace.jsonl.example", published).exit_code == 0
    (published / "keep.txt").write_text("mine")
    result = run("publish", PROMPTS / "trace.jsonl.example", published, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert "keep.txt" not in folder_files(published)
    assert no_leftovers(tmp_path)


def test_a_failure_after_the_jsonl_leaves_nothing_behind(tmp_path, run):
    # A field the table has no column for: the JSONL is written, the shards fail.
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"text": "b", "id": 7}])
    out = tmp_path / "published"
    assert run("publish", PROMPTS / "trace.jsonl.example", out).exit_code == 0
    before = folder_files(out)
    result = run("publish", source, out, "--overwrite")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"promptkit: {source}: record 2: ") and "'id'" in result.stderr
    assert folder_files(out) == before
    assert no_leftovers(tmp_path)
    assert run("publish", source, tmp_path / "new").exit_code == 1
    assert not (tmp_path / "new").exists() and no_leftovers(tmp_path)


# ---------------------------------------------------------------- --push, against a stand-in Hub


class FakeHub(ThreadingHTTPServer):
    """The stand-in for the Hugging Face Hub (see the module docstring)."""

    def __init__(self, refuse_token: bool = False):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.refuse_token = refuse_token
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub = self.server
        hub.requests.append({"method": self.command, "path": self.path,
                             "authorization": self.headers.get("Authorization"), "body": body})
        path = self.path.split("?")[0]
        if hub.refuse_token:
            return self._answer(401, {"error": "Invalid credentials in Authorization header"})
        if self.command != "POST":
            return self._answer(404, {"error": f"not in the stand-in: {path}"})
        if path == "/api/repos/create":
            given = json.loads(body)
            repo = f"{given['organization']}/{given['name']}"
            return self._answer(200, {"url": f"{hub.url}/datasets/{repo}"})
        if path == "/api/validate-yaml":
            return self._answer(200, {"errors": [], "warnings": []})
        found = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(preupload|commit)/main", path)
        if found and found[2] == "preupload":
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                      "oid": None} for f in json.loads(body)["files"]]
            return self._answer(200, {"files": files})
        if found:
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    assert value["encoding"] == "base64"
                    hub.files[value["path"]] = base64.b64decode(value["content"])
            return self._answer(200, {"commitUrl": f"{hub.url}/datasets/{found[1]}/commit/c0ffee",
                                      "commitOid": "c0ffee"})
        return self._answer(404, {"error": f"not in the stand-in: {path}"})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """``hub`` answering on its port for the ``with`` block."""
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.shutdown()
        hub.server_close()
        thread.join()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with serve(FakeHub()) as running:
        yield running


def promptkit(args: list[str | Path], cwd: Path, endpoint: str,
              token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """``promptkit ARGS`` in a subprocess whose huggingface_hub talks to ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": endpoint, "HF_HOME": str(cwd / "hf-home"),
                "HF_HUB_DISABLE_TELEMETRY": "1"})
    if token is not None:
        env["HF_TOKEN"] = token
    script = Path(sys.executable).with_name("promptkit")
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_push_uploads_every_file_with_the_token_and_shows_it_nowhere(tmp_path, hub):
    out = tmp_path / "published"
    result = promptkit(["publish", PROMPTS / "chat.jsonl.example", out,
                        "--push", "me/prompts", "--private"], tmp_path, hub.url)
    assert result.returncode == 0, result.stderr
    assert hub.files == folder_files(out)  # every file, byte for byte
    assert [(r["method"], r["path"].split("?")[0]) for r in hub.requests] == [
        ("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
        ("POST", "/api/datasets/me/prompts/preupload/main"),
        ("POST", "/api/datasets/me/prompts/commit/main")]
    assert json.loads(hub.requests[0]["body"]) == {
        "name": "prompts", "organization": "me", "visibility": "private", "type": "dataset"}
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert f"pushed {out} to {hub.url}/datasets/me/prompts/commit/c0ffee" in result.stderr
    assert 'load_dataset("me/prompts", split="train")' in (out / "README.md").read_text()
    for data in [*folder_files(out).values(), result.stdout.encode(), result.stderr.encode()]:
        assert TOKEN.encode() not in data


def test_push_to_an_unreachable_hub_is_one_line_and_keeps_the_folder(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "published"
    result = promptkit(["publish", PROMPTS / "trace.jsonl.example", out, "--push", "me/p"],
                       tmp_path, f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"promptkit: --push me/p: cannot reach http://127.0.0.1:{port}")
    assert f"the dataset stays in {out}" in error
    assert result.stderr.count("\n") == 2  # the 'published' line, then the error
    assert (out / "README.md").is_file() and (out / "aiperf" / "prompts.jsonl").is_file()
    assert TOKEN not in result.stderr + result.stdout


def test_push_with_a_refused_token(tmp_path):
    with serve(FakeHub(refuse_token=True)) as hub:
        result = promptkit(["publish", PROMPTS / "trace.jsonl.example", tmp_path / "out",
                            "--push", "me/p"], tmp_path, hub.url)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"promptkit: --push me/p: {hub.url} refused the token (HTTP 401); the dataset stays in")
    assert TOKEN not in result.stderr + result.stdout


def test_push_without_a_token_fails_before_anything_is_made(tmp_path, hub):
    result = promptkit(["publish", PROMPTS / "trace.jsonl.example", tmp_path / "out",
                        "--push", "me/p"], tmp_path, hub.url, token=None)
    assert result.returncode == 1
    assert result.stderr == ("promptkit: --push: no Hugging Face token: set HF_TOKEN or run "
                             "'hf auth login'\n")
    assert not (tmp_path / "out").exists() and hub.requests == []
