"""Outputs that are not files: a device, a FIFO or a socket named as OUT, --manifest,
--per-request, --plot or a side file is refused with one line and left as it was (a
rename into place would replace it: as root, /dev/null itself); ``-`` is stdout.

The nodes are real ones made in the test's folder (a character device needs root, as
the test machines run; without it the test fails and says why); the real /dev/null is
never touched.
"""

from __future__ import annotations

import os

import pytest
from helpers import write_jsonl
from limited import make_node, node_state

TEXTS = [{"text": f"Tell me about item {i}, please."} for i in range(6)]


KINDS = ["device", "fifo", "socket", "link"]
WHAT = {"device": "a character device", "fifo": "a FIFO", "socket": "a socket",
        "link": "a character device"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "args"), [
    ("OUT", ["nonce", "IN", "NODE"]),
    ("OUT parquet", ["nonce", "IN", "NODE", "--to", "parquet"]),
    ("--manifest", ["nonce", "IN", "OUT", "--manifest", "NODE"]),
    ("--manifest with OUT -", ["nonce", "IN", "-", "--manifest", "NODE"]),
    ("side file", ["pad", "IN", "OUT", "--tokens", "40", "--tokenizer", "cl100k_base",
                   "--system-prompt", "Be brief.", "--into", "file"]),
    ("--per-request", ["check", "IN", "--tokenizer", "cl100k_base", "--per-request", "NODE"]),
    ("check --plot", ["check", "IN", "--tokenizer", "cl100k_base", "--plot", "NODE"]),
    ("stats --plot", ["stats", "IN", "--tokenizer", "cl100k_base", "--plot", "NODE"]),
    ("rebuild OUT", ["rebuild", "MANIFEST", "NODE"]),
    ("synth OUT", ["synth", "prefix-test", "NODE", "--groups", "2", "--group-size", "2"]),
])
def test_an_output_that_is_not_a_file_is_refused_and_kept(name, args, kind, tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    if "MANIFEST" in args:
        assert run("nonce", source, tmp_path / "made.jsonl", "--seed", "1").exit_code == 0
    out = tmp_path / "out.jsonl"
    node = make_node(tmp_path / f"node-{kind}", kind)
    if name == "side file":  # pad --into file writes OUT.system.txt
        node.rename(tmp_path / "out.jsonl.system.txt")
        node = tmp_path / "out.jsonl.system.txt"
    before = node_state(node)
    listed = sorted(os.listdir(tmp_path))
    values = {"IN": source, "OUT": out, "NODE": node,
              "MANIFEST": tmp_path / "made.jsonl.manifest.json"}
    result = run(*[values.get(a, a) for a in args])
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stderr == (f"promptkit: {node}: is {WHAT[kind]}, not a regular file: "
                             "promptkit writes files and will not replace it (- writes to "
                             "stdout)\n")
    assert node_state(node) == before
    if kind == "link":
        assert node.is_symlink()
    assert sorted(os.listdir(tmp_path)) == listed  # no OUT, lock or temporary file


def test_publish_and_ray_out_that_are_devices_are_refused(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    node = make_node(tmp_path / "node-device", "device")
    before = node_state(node)
    for args in (["publish", source, node], ["nonce", source, node, "--ray", "local"]):
        result = run(*args)
        assert result.exit_code == 1, result.stderr
        assert result.stderr == f"promptkit: {node}: exists and is not a folder" + (
            "\n" if args[0] == "publish" else " (--ray writes a folder of parts)\n")
        assert node_state(node) == before


def test_dash_still_means_stdout(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    result = run("nonce", source, "-", "--seed", "1", "--manifest", tmp_path / "m.json")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(TEXTS)
    assert (tmp_path / "m.json").is_file()
    result = run("nonce", source, tmp_path / "out.jsonl", "--seed", "1", "--manifest", "-")
    assert result.exit_code == 0, result.stderr
    assert '"schema": "promptkit.manifest/1"' in result.stdout


@pytest.mark.parametrize("args", [
    ["check", "IN", "--tokenizer", "cl100k_base", "--per-request", "-"],
    ["check", "IN", "--tokenizer", "cl100k_base", "--plot", "-"],
    ["stats", "IN", "--tokenizer", "cl100k_base", "--plot", "-"],
])
def test_a_file_beside_the_report_is_not_stdout(args, tmp_path, run, monkeypatch):
    """stdout carries the report: ``-`` there would be a file named ``-``."""
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    monkeypatch.chdir(tmp_path)
    result = run(*[source if a == "IN" else a for a in args])
    assert result.exit_code == 2
    option = args[-2]
    assert f"{option} -: stdout carries the report; name a file" in result.stderr
    assert not (tmp_path / "-").exists()
