"""Every command through the Python API (``promptkit.nonce``, ``promptkit.check``, ...)
does what the command line does with the same arguments: the same bytes written, the
same manifest (but for when it was made and the command line it records), the same
report. The CLI runs in one folder, the API in another, with the same relative paths."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import promptkit

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
#: What a manifest records of the run itself rather than of the data.
OF_THE_RUN = ("created", "argv")
#: When a dataset card says it was made.
CREATED = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """``cli`` and ``api`` folders holding the same inputs; ``into(name)`` enters one."""
    for name in ("cli", "api"):
        (tmp_path / name).mkdir()
        for sample in ("chat.jsonl.example", "trace.jsonl.example", "sharegpt-sample.json"):
            shutil.copy(PROMPTS / sample, tmp_path / name / sample)

    def into(name: str) -> Path:
        monkeypatch.chdir(tmp_path / name)
        return tmp_path / name

    into.root = tmp_path  # type: ignore[attr-defined]
    return into


def cli_then_api(folders, run, args, call):
    """Run ``promptkit ARGS`` in ``cli`` and ``call()`` in ``api``: (CLI result, value)."""
    folders("cli")
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    folders("api")
    return result, call()


def data(manifest: dict) -> dict:
    """A manifest but for what it records of the run itself (and the hash of a dataset
    card, which says when it was made)."""
    out = {key: value for key, value in manifest.items() if key not in OF_THE_RUN}
    if "published" in out:
        out["published"] = {**out["published"], "files": [
            f for f in out["published"]["files"] if f["path"] != "README.md"]}
    return out


def assert_same_files(root: Path) -> None:
    cli, api = root / "cli", root / "api"
    names = sorted(p.relative_to(cli) for p in cli.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(api) for p in api.rglob("*") if p.is_file())
    for name in names:
        made_by_cli, made_by_api = (cli / name).read_bytes(), (api / name).read_bytes()
        if name.name.endswith("manifest.json"):
            assert data(json.loads(made_by_cli)) == data(json.loads(made_by_api)), name
        elif name.name == "README.md":  # a dataset card
            assert CREATED.sub(b"", made_by_cli) == CREATED.sub(b"", made_by_api), name
        else:
            assert made_by_cli == made_by_api, name


def test_nonce(folders, run):
    _, manifest = cli_then_api(
        folders, run, ["nonce", "trace.jsonl.example", "out.jsonl", "--seed", "7", "--at", "user"],
        lambda: promptkit.nonce("trace.jsonl.example", "out.jsonl", seed=7, at="user"))
    assert manifest["output"]["path"] == "out.jsonl"
    assert Path("out.jsonl.manifest.json").exists()  # the CLI's default manifest path
    assert_same_files(folders.root)


def test_nonce_unseeded_records_a_seed(folders):
    folders("api")
    manifest = promptkit.nonce("trace.jsonl.example", "out.jsonl")
    assert isinstance(manifest["steps"][0]["params"]["seed"], int)


def test_pad_reads_the_system_prompt_file(folders, run):
    for name in ("cli", "api"):
        (folders.root / name / "system.txt").write_text("You are terse.", encoding="utf-8")
    cli_then_api(
        folders, run, ["pad", "chat.jsonl.example", "out.jsonl", "--tokens", "64",
                       "--tokenizer", "cl100k_base", "--system-prompt-file", "system.txt",
                       "--into", "file", "--seed", "3"],
        lambda: promptkit.pad("chat.jsonl.example", "out.jsonl", tokens=64,
                              tokenizer="cl100k_base", system_prompt_file="system.txt",
                              into="file", seed=3))
    assert (folders.root / "api" / "out.jsonl.system.txt").exists()
    assert_same_files(folders.root)


def test_fit(folders, run):
    cli_then_api(
        folders, run, ["fit", "trace.jsonl.example", "out.jsonl", "--tokens", "20,40",
                       "--tokenizer", "cl100k_base", "--seed", "5"],
        lambda: promptkit.fit("trace.jsonl.example", "out.jsonl", tokens="20,40",
                              tokenizer="cl100k_base", seed=5))
    assert_same_files(folders.root)


def test_turns(folders, run):
    cli_then_api(
        folders, run, ["turns", "sharegpt-sample.json", "out.jsonl", "--mode", "each",
                       "--tokenizer", "cl100k_base", "--max-turns", "2"],
        lambda: promptkit.turns("sharegpt-sample.json", "out.jsonl", mode="each",
                                tokenizer="cl100k_base", max_turns=2))
    assert_same_files(folders.root)


def test_hash_trace(folders, run):
    cli_then_api(
        folders, run, ["hash-trace", "chat.jsonl.example", "trace.jsonl", "--tokenizer",
                       "cl100k_base", "--block-size", "16", "--rate", "2"],
        lambda: promptkit.hash_trace("chat.jsonl.example", "trace.jsonl",
                                     tokenizer="cl100k_base", block_size=16, rate=2))
    assert_same_files(folders.root)


def test_pipe(folders, run):
    cli_then_api(
        folders, run, ["pipe", "read", "chat.jsonl.example", "pad", "--tokens", "64",
                       "--tokenizer", "cl100k_base", "--seed", "7", "nonce", "--at", "user",
                       "--seed", "8", "write", "--manifest", "run.manifest.json", "out.jsonl"],
        lambda: promptkit.pipe("chat.jsonl.example", "out.jsonl", [
            promptkit.pad_step(tokens=64, tokenizer="cl100k_base", seed=7),
            promptkit.nonce_step(at="user", seed=8)], manifest_path="run.manifest.json"))
    assert_same_files(folders.root)


def test_stats(folders, run):
    result, summary = cli_then_api(
        folders, run, ["stats", "chat.jsonl.example", "--tokenizer", "cl100k_base", "--json"],
        lambda: promptkit.stats("chat.jsonl.example", tokenizer="cl100k_base"))
    assert json.loads(result.stdout) == json.loads(json.dumps(summary))


def test_check(folders, run):
    result, report = cli_then_api(
        folders, run, ["check", "chat.jsonl.example", "--tokenizer", "cl100k_base",
                       "--requests", "12", "--json", "--per-request", "rows.jsonl"],
        lambda: promptkit.check("chat.jsonl.example", tokenizer="cl100k_base", requests=12,
                                per_request="rows.jsonl"))
    assert json.loads(result.stdout) == json.loads(json.dumps(report))
    assert_same_files(folders.root)


def test_check_fails_a_bound_as_the_cli_does(folders, run):
    folders("cli")
    result = run("check", "trace.jsonl.example", "--tokenizer", "cl100k_base",
                 "--requests", "40", "--max-hit-rate", "0")
    folders("api")
    report = promptkit.check("trace.jsonl.example", tokenizer="cl100k_base", requests=40)
    problem = promptkit.hit_rate_failure(report, 0, None)
    assert report["hit_rate"] > 0 and problem is not None
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"promptkit: {problem}"


def test_prefix_test(folders, run):
    cli_then_api(
        folders, run, ["synth", "prefix-test", "pt.jsonl", "--groups", "2", "--group-size", "3",
                       "--system-tokens", "40", "--seed", "7"],
        lambda: promptkit.prefix_test("pt.jsonl", groups=2, group_size=3, system_tokens=40,
                                      seed=7))
    assert_same_files(folders.root)


def test_verify_and_rebuild(folders, run):
    for name in ("cli", "api"):
        folders(name)
        promptkit.nonce("trace.jsonl.example", "out.jsonl", seed=7)
    cli_then_api(
        folders, run, ["rebuild", "out.jsonl.manifest.json", "again.jsonl"],
        lambda: promptkit.rebuild("out.jsonl.manifest.json", "again.jsonl"))
    assert_same_files(folders.root)
    assert promptkit.verify("again.jsonl") == {"problems": [],
                                               "manifest": "again.jsonl.manifest.json"}
    Path("again.jsonl").write_bytes(Path("again.jsonl").read_bytes()[:-1])
    checked = promptkit.verify("again.jsonl")
    folders("cli")
    shutil.copy(folders.root / "api" / "again.jsonl", "again.jsonl")
    result = run("verify", "again.jsonl")
    assert checked["problems"] and result.exit_code == 1
    assert result.stderr == ("promptkit: again.jsonl: does not match its manifest: "
                             + "; ".join(checked["problems"]) + "\n")


def test_publish(folders, run):
    cli_then_api(
        folders, run, ["publish", "trace.jsonl.example", "published"],
        lambda: promptkit.publish("trace.jsonl.example", "published", argv=[
            "promptkit", "publish", "trace.jsonl.example", "published"]))
    assert_same_files(folders.root)
