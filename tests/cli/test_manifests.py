"""Manifests as rebuild and verify meet them: a rebuild makes every step as the command
did (same output, side files and AIPerf arguments), a manifest from someone else reads
no file outside its own folder unless allowed, and a malformed one is one line naming
the bad field."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import write_jsonl

ROOT = Path(__file__).resolve().parents[2]

CHAT = [{"messages": [{"role": "system", "content": f"You help with topic {i % 3}."},
                      {"role": "user", "content": f"Question number {i}?"}]} for i in range(9)]
TEXTS = [{"text": f"Tell me about item {i}, please."} for i in range(9)]
LONG = [{"text": f"Tell me about item {i}, please. " + "Give every detail you know. " * 12}
        for i in range(9)]


def one_line(stderr: str) -> str:
    """The one line of an error, after its ``promptkit: `` prefix."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("promptkit: "), lines[0]
    return lines[0].removeprefix("promptkit: ")


def path_free(args: list[str]) -> list[str]:
    return [a if i == 0 or args[i - 1] not in ("--input-file", "--system-prompt-file")
            else "PATH" for i, a in enumerate(args)]


#: Every operation (and the generator), as a user runs it: (input rows, arguments).
COMMANDS = {
    "nonce": (TEXTS, ["nonce", "IN", "OUT", "--seed", "7", "--kind", "timestamp",
                      "--start-time", "2026-01-01T00:00:00Z", "--copies", "2"]),
    "nonce-keep-tokens": (LONG, ["nonce", "IN", "OUT", "--seed", "7", "--tokenizer",
                                  "cl100k_base", "--keep-tokens"]),
    "pad-into-file": (TEXTS, ["pad", "IN", "OUT", "--tokens", "64", "--tokenizer",
                              "cl100k_base", "--system-prompt", "Be brief.", "--into", "file",
                              "--seed", "3"]),
    "pad-own-prompts": (CHAT, ["pad", "IN", "OUT", "--tokens", "48", "--tokenizer",
                               "cl100k_base", "--groups", "2", "--seed", "3"]),
    "pad-into-text": (TEXTS, ["pad", "IN", "OUT", "--tokens", "40", "--tokenizer",
                              "cl100k_base", "--system-prompt", "Be brief.", "--into", "text",
                              "--filler-file", "FILLER"]),
    "fit": (TEXTS, ["fit", "IN", "OUT", "--tokens", "20,30", "--tokenizer", "cl100k_base",
                    "--filler-file", "FILLER"]),
    "turns": ("sharegpt", ["turns", "IN", "OUT", "--tokenizer", "cl100k_base", "--mode",
                           "each", "--max-turns", "2"]),
    "hash-trace": (CHAT, ["hash-trace", "IN", "OUT", "--tokenizer", "cl100k_base",
                          "--block-size", "8"]),
    "pipe": (CHAT, ["pipe", "read", "IN", "pad", "--tokens", "48", "--tokenizer",
                    "cl100k_base", "nonce", "--at", "user", "check", "--tokenizer",
                    "cl100k_base", "--system-prompt-file", "PROMPT", "write", "OUT"]),
    "synth": (None, ["synth", "prefix-test", "OUT", "--groups", "2", "--group-size", "3",
                     "--system-tokens", "40", "--filler-file", "FILLER", "--to",
                     "single_turn"]),
}


def made(folder: Path, name: str, run) -> Path:
    """The output of ``COMMANDS[name]`` run in ``folder`` (its manifest beside it)."""
    rows, args = COMMANDS[name]
    if rows == "sharegpt":
        source = folder / "in.json"
        shutil.copy(ROOT / "prompts" / "sharegpt-sample.json", source)
    elif rows is not None:
        source = write_jsonl(folder / "in.jsonl", rows)
    (folder / "filler.txt").write_text("alpha beta gamma delta epsilon zeta eta theta\n")
    (folder / "prompt.txt").write_text("You are a careful assistant.\n")
    out = folder / "out.jsonl"
    values = {"IN": source if rows is not None else None, "OUT": out,
              "FILLER": folder / "filler.txt", "PROMPT": folder / "prompt.txt"}
    result = run(*[values.get(a, a) for a in args])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_rebuild_makes_every_step_as_the_command_did(name, tmp_path, run):
    out = made(tmp_path, name, run)
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{out}.manifest.json", again)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[-1].endswith("identical to the file the manifest "
                                                   "describes")
    assert again.read_bytes() == out.read_bytes()
    first = json.loads(Path(f"{out}.manifest.json").read_text())
    second = json.loads(Path(f"{again}.manifest.json").read_text())
    for key in ("steps", "warnings", "token_stats", "skipped"):
        assert second.get(key) == first.get(key), key
    if name.startswith("pad"):  # each group's prompt, from the base or a first pass
        assert second["steps"][0]["info"]["groups"]
    assert path_free(second["aiperf"]["args"]) == path_free(first["aiperf"]["args"])
    assert [s["sha256"] for s in second["side_outputs"]] == [
        s["sha256"] for s in first["side_outputs"]]
    for side, again_side in zip(first["side_outputs"], second["side_outputs"], strict=True):
        assert Path(again_side["path"]).read_bytes() == Path(side["path"]).read_bytes()


def test_rebuild_of_pad_into_file_writes_the_system_prompt_file(tmp_path, run):
    out = made(tmp_path, "pad-into-file", run)
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    prompt = Path(f"{again}.system.txt")
    assert prompt.read_text() == Path(f"{out}.system.txt").read_text()
    args = json.loads(Path(f"{again}.manifest.json").read_text())["aiperf"]["args"]
    assert args[-2:] == ["--system-prompt-file", str(prompt)]


def test_the_api_makes_the_steps_it_is_given(tmp_path):
    import promptkit

    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "api.jsonl"
    result = promptkit.run(str(source), str(out), [promptkit.Step("pad", {
        "tokens": 64, "tokenizer": "cl100k_base", "system_prompt": "Be brief.",
        "into": "file", "seed": 3})])
    assert Path(f"{out}.system.txt").exists()
    assert result["aiperf"]["args"][-2:] == ["--system-prompt-file", f"{out}.system.txt"]
    with pytest.raises(promptkit.PromptkitError, match="pad: unknown parameter 'size'"):
        promptkit.run(str(source), str(tmp_path / "x.jsonl"),
                      [promptkit.Step("pad", {"tokens": 64, "tokenizer": "cl100k_base",
                                              "size": 1})])
    assert not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------- untrusted manifests


def crafted(folder: Path, name: str, change) -> Path:
    """A manifest made by ``COMMANDS[name]`` in ``folder``, then changed by ``change``."""
    out = made(folder, name, _runner())
    path = Path(f"{out}.manifest.json")
    manifest = json.loads(path.read_text())
    change(manifest)
    crafted_path = folder / "crafted.manifest.json"
    crafted_path.write_text(json.dumps(manifest))
    return crafted_path


def _runner():
    from click.testing import CliRunner

    from promptkit.cli import cli

    runner = CliRunner()
    return lambda *args: runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


OUTSIDE = "/etc/hostname"


@pytest.mark.parametrize(("name", "field", "change"), [
    ("nonce", "inputs[0].path", lambda m: m["inputs"][0].update(path=OUTSIDE)),
    ("nonce", "inputs[0].path", lambda m: m["inputs"][0].update(path="../../" + OUTSIDE)),
    ("nonce", "inputs[0].path", lambda m: m["inputs"][0].update(path="hf:someone/data")),
    ("pad-into-text", "steps[0].params.filler_file",
     lambda m: m["steps"][0]["params"].update(filler_file=OUTSIDE)),
    ("fit", "steps[0].params.filler_file",
     lambda m: m["steps"][0]["params"].update(filler_file=OUTSIDE)),
    ("pipe", "steps[2].params.system_prompt_file",
     lambda m: m["steps"][2]["params"].update(system_prompt_file=OUTSIDE)),
    ("synth", "generator.params.filler_file",
     lambda m: m["generator"]["params"].update(filler_file=OUTSIDE)),
])
def test_rebuild_reads_no_file_outside_the_manifests_folder(name, field, change, tmp_path,
                                                             run):
    manifest = crafted(tmp_path, name, change)
    again = tmp_path / "again.jsonl"
    result = run("rebuild", manifest, again)
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith(f"{manifest}: names files outside its folder, not read: {field} ")
    assert "--allow-paths" in line
    assert not again.exists() and not Path(f"{again}.manifest.json").exists()


def test_a_link_out_of_the_folder_is_outside(tmp_path, run):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = write_jsonl(elsewhere / "secret.jsonl", [{"text": "a private prompt"}])
    folder = tmp_path / "published"
    folder.mkdir()
    (folder / "link.jsonl").symlink_to(secret)
    manifest = crafted(folder, "nonce", lambda m: m["inputs"][0].update(
        path=str(folder / "link.jsonl")))
    result = run("rebuild", manifest, folder / "again.jsonl")
    assert result.exit_code == 1
    assert "inputs[0].path" in one_line(result.stderr)


def test_allow_paths_and_input_let_rebuild_read_outside(tmp_path, run):
    made_in = tmp_path / "made"
    made_in.mkdir()
    out = made(made_in, "nonce", run)
    published = tmp_path / "published"
    published.mkdir()
    manifest = published / "out.jsonl.manifest.json"
    shutil.copy(f"{out}.manifest.json", manifest)  # names made/in.jsonl: outside
    assert run("rebuild", manifest, published / "a.jsonl").exit_code == 1
    result = run("rebuild", manifest, published / "a.jsonl", "--allow-paths")
    assert result.exit_code == 0, result.stderr
    assert (published / "a.jsonl").read_bytes() == out.read_bytes()
    result = run("rebuild", manifest, published / "b.jsonl", "--input", made_in / "in.jsonl")
    assert result.exit_code == 0, result.stderr
    assert (published / "b.jsonl").read_bytes() == out.read_bytes()


def test_a_manifest_beside_its_input_rebuilds_from_anywhere(tmp_path, run, monkeypatch):
    out = made(tmp_path, "pad-into-text", run)  # names its input and filler in tmp_path
    monkeypatch.chdir(tmp_path)
    assert run("rebuild", f"{out}.manifest.json", "again.jsonl").exit_code == 0
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


# ---------------------------------------------------------------- malformed manifests


def _del(*keys: str):
    def change(m):
        for key in keys[:-1]:
            m = m[key]
        del m[keys[-1]]
    return change


@pytest.mark.parametrize(("change", "says"), [
    (_del("output", "sha256"), "output.sha256 is missing"),
    (lambda m: m["output"].update(records="4"), "output.records is '4', not a record count"),
    (lambda m: m.update(inputs={}), "inputs is {}, not a list"),
    (lambda m: m["inputs"][0].update(sha256="xyz"), "inputs[0].sha256 is 'xyz', not a sha256"),
    (lambda m: m["steps"][0].update(op="shuffle"), "steps[0].op is 'shuffle', not one of"),
    (lambda m: m["steps"][0].update(params=[]), "steps[0].params is [], not an object"),
    (_del("skipped"), "skipped.count is None, not a record count"),
    (lambda m: m["aiperf"].update(args="--x"), "aiperf.args is '--x', not a list of strings"),
    (lambda m: m.update(side_outputs=None), "side_outputs is None, not a list"),
    (lambda m: m.update(side_outputs=[{"path": "x"}]),
     "side_outputs[0].sha256 is None, not a sha256"),
    (lambda m: m.update(generator=None), "generator is None, not an object"),
    (lambda m: m["inputs"][0].update(path="in\x00.jsonl"),
     "inputs[0].path is 'in\\x00.jsonl', not a path"),
    (lambda m: m["output"].update(path="out\x00.jsonl"),
     "output.path is 'out\\x00.jsonl', not a path"),
    (lambda m: m["output"].update(parts=[{"path": "../x.jsonl", "records": 1, "bytes": 1,
                                          "sha256": "0" * 64}]),
     "output.parts[0].path is '../x.jsonl', not a file name in the folder"),
])
def test_verify_and_rebuild_name_the_bad_field(change, says, tmp_path, run):
    manifest = crafted(tmp_path, "nonce", change)
    out = tmp_path / "out.jsonl"
    for command in (("verify", out, "--manifest", manifest),
                    ("rebuild", manifest, tmp_path / "again.jsonl")):
        result = run(*command)
        assert result.exit_code == 1
        assert one_line(result.stderr).startswith(f"{manifest}: not a valid manifest: {says}")
    assert not (tmp_path / "again.jsonl").exists()


@pytest.mark.parametrize(("name", "change", "field"), [
    ("synth", lambda m: m["generator"]["params"].update(filler_file="a\x00b"),
     "generator.params.filler_file"),
    ("fit", lambda m: m["steps"][0]["params"].update(filler_file="a\x00b"),
     "steps[0].params.filler_file"),
])
def test_a_path_holding_nul_is_no_path(name, change, field, tmp_path, run):
    manifest = crafted(tmp_path, name, change)
    result = run("rebuild", manifest, tmp_path / "again.jsonl")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (f"{manifest}: not a valid manifest: {field} is "
                                       "'a\\x00b', not a path")


def test_a_generator_parameter_left_out_is_its_default(tmp_path, run):
    # Made with a filler file: without it, the same generator makes other prompts.
    manifest = crafted(tmp_path, "synth", lambda m: m["generator"]["params"].pop("filler_file"))
    result = run("rebuild", manifest, tmp_path / "again.jsonl")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(f"{tmp_path / 'again.jsonl'}: rebuilt file "
                                              "differs from the manifest")
    # Made without one: the default is what it was made with.
    out = tmp_path / "plain.jsonl"
    assert run("synth", "prefix-test", out, "--groups", "2", "--group-size", "2",
               "--system-tokens", "40", "--seed", "5").exit_code == 0
    recorded = json.loads(Path(f"{out}.manifest.json").read_text())
    assert recorded["generator"]["params"].pop("filler_file") is None
    manifest.write_text(json.dumps(recorded))
    result = run("rebuild", manifest, tmp_path / "again.jsonl")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()


def part_folder(tmp_path: Path, run) -> Path:
    """A folder of two parts and its manifest, as ``--ray`` writes them (made from one
    run's output here, without a cluster)."""
    import hashlib

    out = made(tmp_path, "nonce", run)
    recorded = json.loads(Path(f"{out}.manifest.json").read_text())
    lines = out.read_bytes().splitlines(keepends=True)
    folder = tmp_path / "parts"
    folder.mkdir()
    recorded["output"]["parts"] = []
    for i, data in enumerate((b"".join(lines[:4]), b"".join(lines[4:]))):
        (folder / f"part-{i:05d}.jsonl").write_bytes(data)
        recorded["output"]["parts"].append({
            "path": f"part-{i:05d}.jsonl", "records": data.count(b"\n"), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "manifest.json").write_text(json.dumps(recorded))
    result = run("verify", folder)
    assert result.exit_code == 0, result.stderr
    return folder


@pytest.mark.parametrize(("link", "says"), [
    ("out", "part-00000.jsonl is a link out of the folder: not read"),
    ("nothing", "part-00000.jsonl is a link to nothing"),
    ("inside", None),
])
def test_verify_reads_no_part_through_a_link_out_of_its_folder(link, says, tmp_path, run):
    import hashlib

    folder = part_folder(tmp_path, run)
    part = folder / "part-00000.jsonl"
    secret = (tmp_path / "secret.jsonl") if link != "inside" else folder / ".kept.jsonl"
    secret.write_bytes(part.read_bytes() if link == "inside" else b"a private line\n")
    part.unlink()
    part.symlink_to(secret if link != "nothing" else tmp_path / "gone.jsonl")
    result = run("verify", folder)
    if says is None:
        assert result.exit_code == 0, result.stderr
        return
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"{folder}: does not match its manifest: {says}"
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in result.stderr


DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_manifest_is_one_line(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "out.jsonl"
    assert run("nonce", source, out).exit_code == 0
    deep = tmp_path / "deep.manifest.json"
    deep.write_text('{"schema": "promptkit.manifest/1", "steps": ' + DEEP + "}")
    said = f"{deep}: not a valid manifest: JSON nested too deeply"
    for command in (("verify", out, "--manifest", deep), ("rebuild", deep, tmp_path / "a.jsonl")):
        result = run(*command)
        assert result.exit_code == 1
        assert one_line(result.stderr) == said
    parts = tmp_path / "parts"
    parts.mkdir()
    shutil.copy(deep, parts / "manifest.json")
    result = run("verify", parts)
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"{parts / 'manifest.json'}: not a valid manifest: JSON " \
        "nested too deeply"
    # Beside an input, a manifest check and publish read for what made it: not used.
    shutil.copy(deep, f"{source}.manifest.json")
    result = run("check", source, "--tokenizer", "cl100k_base")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    result = run("publish", source, tmp_path / "published")
    assert result.exit_code == 0, result.stderr
    assert f"{source}.manifest.json: not a valid manifest: JSON nested too deeply" in \
        result.stderr


def test_a_manifest_of_another_schema_version_says_so(tmp_path, run):
    manifest = crafted(tmp_path, "nonce", lambda m: m.update(schema="promptkit.manifest/2"))
    result = run("verify", tmp_path / "out.jsonl", "--manifest", manifest)
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"{manifest}: schema 'promptkit.manifest/2': this promptkit reads "
        "'promptkit.manifest/1' (another promptkit version wrote it)")


@pytest.mark.parametrize(("name", "change", "says"), [
    ("pipe", lambda m: m["steps"][2]["params"].update(per_request="x.jsonl"),
     "steps[2]: check: unknown parameter 'per_request'"),
    ("nonce", lambda m: m["steps"][0]["params"].update(size=3),
     "steps[0]: nonce: unknown parameter 'size'"),
    ("nonce", lambda m: m["steps"][0]["params"].update(copies=0),
     "steps[0]: nonce: copies is 0, not an integer from 1 to 1,000,000"),
    ("nonce", lambda m: m["steps"][0]["params"].update(template="no marker"),
     "steps[0]: nonce: template 'no marker' does not contain {nonce}"),
    ("pad-into-file", lambda m: m["steps"][0]["params"].update(tokens="64"),
     "steps[0]: pad: tokens is '64', not an integer from 1 to 16,777,216"),
    ("pad-into-file", lambda m: m["steps"][0]["params"].pop("tokenizer"),
     "steps[0]: pad: parameter 'tokenizer' missing"),
    ("turns", lambda m: m["steps"][0]["params"].update(mode="all"),
     "steps[0]: turns: mode is 'all', not one of first, each, history"),
    ("hash-trace", lambda m: m["steps"][0]["params"].update(tokenizer="no-such-encoding"),
     "steps[0]: unknown tokenizer 'no-such-encoding'"),
    ("synth", lambda m: m["generator"]["params"].update(colour="red"),
     "generator.params: prefix-test: unknown parameter 'colour'"),
    ("nonce", lambda m: m["inputs"][0].update(dataset={"options": {"rows": 3}}),
     "inputs[0].dataset.options: unknown option 'rows'"),
])
def test_rebuild_names_the_bad_step_parameter(name, change, says, tmp_path, run):
    manifest = crafted(tmp_path, name, change)
    again = tmp_path / "again.jsonl"
    result = run("rebuild", manifest, again)
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith(f"{manifest}: {says}"), line
    assert not again.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("again")]


@pytest.mark.parametrize(("change", "says"), [
    (lambda m: m["side_outputs"][0].update(sha256="0" * 64), "rebuilt side files differ"),
    (lambda m: m["aiperf"].update(args=m["aiperf"]["args"][:-2]),
     "rebuilt AIPerf arguments differ"),
])
def test_rebuild_fails_when_side_files_or_aiperf_arguments_differ(change, says, tmp_path, run):
    manifest = crafted(tmp_path, "pad-into-file", change)
    result = run("rebuild", manifest, tmp_path / "again.jsonl")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(f"{tmp_path / 'again.jsonl'}: {says} from the "
                                              "manifest")
    assert not [p for p in os.listdir(tmp_path) if p.startswith("again")]  # nothing put in place


def test_check_reads_no_system_prompt_file_a_manifest_names_elsewhere(tmp_path, run):
    out = made(tmp_path, "pad-into-file", run)
    recorded = Path(f"{out}.manifest.json")
    manifest = json.loads(recorded.read_text())
    manifest["aiperf"]["args"][-1] = OUTSIDE
    recorded.write_text(json.dumps(manifest))
    result = run("check", out, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"{recorded}: --system-prompt-file {OUTSIDE}: no such file in {tmp_path} (a "
        "manifest's files are read from its file's folder only); give --system-prompt-file "
        "or --no-manifest")
    assert run("check", out, "--tokenizer", "cl100k_base", "--no-manifest").exit_code == 0


def test_pad_into_file_needs_an_out_file_in_a_pipe_too(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    result = run("pipe", "read", source, "pad", "--tokens", "64", "--tokenizer", "cl100k_base",
                 "--system-prompt", "Be brief.", "--into", "file", "write", "-")
    assert result.exit_code == 2
    assert ("pad --into file writes OUT.system.txt beside OUT, and 'write -' is stdout"
            in result.stderr)
    assert result.stdout == ""
