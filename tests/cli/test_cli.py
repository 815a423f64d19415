"""The command line as a user meets it: bad input, stdin/stdout, the pipe chain,
manifests, verify and rebuild, help, streaming and interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import mooncake_trace, read_jsonl, write_jsonl

from promptkit.cli import cli

PROMPTKIT = [sys.executable, "-m", "promptkit"]


def one_line(stderr: str) -> str:
    """The one line of an error, after its ``promptkit: `` prefix."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("promptkit: "), lines[0]
    return lines[0].removeprefix("promptkit: ")


def test_nonce_writes_output_and_manifest(single_turn, tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("nonce", single_turn, out, "--seed", "7")
    assert result.exit_code == 0
    assert result.stdout == ""  # data goes to the file, the summary to stderr
    assert result.stderr.startswith("promptkit: wrote 4 records (4 distinct) as single_turn")
    rows = read_jsonl(out)
    assert [r["text"].split("\n", 1)[1] for r in rows[:3]] == [
        "What is the capital of Japan?", "Name three primes.", "Tell me a joke."]
    assert rows[3]["text"] == "Another one."  # continues session s1, whose start has a nonce
    assert rows[1]["output_length"] == 20 and rows[2]["extra"] == {"temperature": 0}

    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["argv"][:2] == ["promptkit", "nonce"]
    assert manifest["inputs"][0]["records"] == 4
    assert manifest["output"]["records"] == 4
    assert manifest["steps"] == [{"op": "nonce", "params": {
        "kind": "uuid", "at": "start", "template": "{nonce}\n", "length": 16,
        "start_time": None, "time_step_us": 1000, "copies": 1, "first_index": 0, "seed": 7}}]
    assert manifest["aiperf"]["custom_dataset_type"] == "single_turn"
    assert manifest["aiperf"]["args"] == ["--input-file", str(out), "--custom-dataset-type",
                                          "single_turn"]
    assert manifest["aiperf"]["distinct_records"] == 4
    import hashlib
    assert manifest["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["inputs"][0]["sha256"] == hashlib.sha256(single_turn.read_bytes()).hexdigest()


def test_same_seed_gives_identical_bytes_and_unseeded_runs_record_their_seed(
        single_turn, tmp_path, run):
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    run("nonce", single_turn, a, "--seed", "42")
    run("nonce", single_turn, b, "--seed", "42")
    assert a.read_bytes() == b.read_bytes()
    assert run("nonce", single_turn, c).exit_code == 0
    seed = json.loads(Path(f"{c}.manifest.json").read_text())["steps"][0]["params"]["seed"]
    assert isinstance(seed, int)
    again = tmp_path / "again.jsonl"
    run("nonce", single_turn, again, "--seed", str(seed))
    assert again.read_bytes() == c.read_bytes()


def test_manifest_and_input_rebuild_the_output_byte_for_byte(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"q{i}"} for i in range(100)])
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", source, "nonce", "--kind", "timestamp", "nonce", "--at",
               "salt", "--kind", "random", "--copies", "2", "write", out).exit_code == 0
    rebuilt = tmp_path / "rebuilt.jsonl"
    result = run("rebuild", f"{out}.manifest.json", rebuilt)
    assert result.exit_code == 0, result.stderr
    assert rebuilt.read_bytes() == out.read_bytes()
    assert run("verify", rebuilt).exit_code == 0


def test_rebuild_fails_when_the_input_changed(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    out = tmp_path / "out.jsonl"
    run("nonce", source, out, "--seed", "1")
    write_jsonl(source, [{"text": "b"}])
    result = run("rebuild", f"{out}.manifest.json", tmp_path / "again.jsonl")
    assert result.exit_code == 1
    assert "differs from the manifest" in one_line(result.stderr)


def test_verify_reports_what_differs(single_turn, tmp_path, run):
    out = tmp_path / "out.jsonl"
    run("nonce", single_turn, out, "--seed", "1")
    result = run("verify", out)
    assert result.exit_code == 0 and "OK" in result.stdout
    with out.open("a") as f:
        f.write('{"text": "sneaked in"}\n')
    result = run("verify", out)
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith(f"{out}: does not match its manifest: sha256 is ")
    assert "5 records, manifest says 4" in line
    assert one_line(run("verify", tmp_path / "none.jsonl").stderr).endswith("no such manifest")


def test_pipe_chain_runs_all_steps_with_one_manifest(single_turn, tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", single_turn, "nonce", "--kind", "uuid", "--seed", "1",
                 "nonce", "--at", "salt", "--seed", "2", "write", "--to", "mooncake_trace", out)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert [s["op"] for s in manifest["steps"]] == ["nonce", "nonce"]
    assert [s["params"]["at"] for s in manifest["steps"]] == ["start", "salt"]
    assert manifest["output"]["format"] == "mooncake_trace"
    rows = read_jsonl(out)
    assert all("cache_salt" in r["extra"] for r in rows)
    assert rows[0]["text_input"].endswith("\nWhat is the capital of Japan?")


@pytest.mark.parametrize("args", [
    ["pipe", "nonce", "write", "x"], ["pipe", "read", "x"], ["pipe", "read", "x", "read", "y",
                                                              "write", "z"]])
def test_pipe_needs_read_first_and_write_last(args, run):
    assert run(*args).exit_code == 2


def test_stdin_to_stdout_keeps_the_format(single_turn, tmp_path, run):
    result = run("nonce", "-", "-", "--seed", "5", input=single_turn.read_bytes())
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4 and rows[0]["text"].endswith("\nWhat is the capital of Japan?")
    assert result.stderr.startswith("promptkit: wrote 4 records")
    assert not list(tmp_path.glob("*.manifest.json"))


def test_stages_pipe_between_processes(single_turn, tmp_path):
    first = subprocess.run([*PROMPTKIT, "nonce", "-", "-", "--seed", "1"],
                           input=single_turn.read_bytes(), capture_output=True, check=True)
    second = subprocess.run([*PROMPTKIT, "nonce", "-", "-", "--at", "salt", "--seed", "2"],
                            input=first.stdout, capture_output=True, check=True)
    rows = [json.loads(line) for line in second.stdout.splitlines()]
    assert [r["text"] for r in rows] == [json.loads(x)["text"] for x in first.stdout.splitlines()]
    assert all("cache_salt" in r["extra"] for r in rows)


def test_records_stream_out_before_stdin_closes():
    with subprocess.Popen([*PROMPTKIT, "nonce", "-", "-", "--seed", "1"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        proc.stdin.write(b'{"text": "first"}\n')
        proc.stdin.flush()
        line = proc.stdout.readline()  # arrives while stdin is still open
        assert json.loads(line)["text"].endswith("\nfirst")
        proc.stdin.write(b'{"text": "second"}\n')
        proc.stdin.close()
        assert json.loads(proc.stdout.readline())["text"].endswith("\nsecond")
        assert proc.wait(timeout=30) == 0


def test_head_ends_the_pipe_quietly(tmp_path):
    source = write_jsonl(tmp_path / "big.jsonl", [{"text": f"prompt {i}"} for i in range(200_000)])
    result = subprocess.run(
        f"{sys.executable} -m promptkit nonce {source} - --seed 1 | head -n 2",
        shell=True, capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 2
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


# ---------------------------------------------------------------- bad input


BAD_FILES = {
    "invalid JSON": (b'{"text": "ok"}\n{"text": broken}\n', 2, "invalid JSON"),
    "invalid UTF-8": (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', 2, "invalid UTF-8"),
    "not an object": (b'{"text": "ok"}\n["a list"]\n', 2, "expected a JSON object, got list"),
    "wrong shape": (b'{"text": "ok"}\n{"text": 5}\n', 2, "single_turn: 'text' must be a string"),
    "unknown format": (b'{"question": "?"}\n', 1, "cannot tell the format from the keys"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_gives_one_line_exit_1_and_no_output(case, tmp_path, run):
    content, lineno, problem = BAD_FILES[case]
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "1")
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith(f"{source}:{lineno}: ") and problem in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_leaves_an_existing_output_untouched(case, tmp_path, run):
    source = tmp_path / "in.jsonl"
    source.write_bytes(BAD_FILES[case][0])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    assert run("nonce", source, out).exit_code == 1
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_empty_file(tmp_path, run):
    source = tmp_path / "empty.jsonl"
    source.write_text("\n\n")
    result = run("nonce", source, tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"{source}: empty file: no records"


def test_missing_input(tmp_path, run):
    result = run("nonce", tmp_path / "nope.jsonl", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"{tmp_path / 'nope.jsonl'}: no such file"


def test_output_onto_the_input_is_refused(single_turn, run):
    before = single_turn.read_bytes()
    result = run("nonce", single_turn, single_turn)
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"{single_turn}: refusing to overwrite the input file"
    assert single_turn.read_bytes() == before
    assert len(list(single_turn.parent.iterdir())) == 1


def test_unknown_format_name_is_a_usage_error(single_turn, tmp_path, run):
    result = run("nonce", single_turn, tmp_path / "o.jsonl", "--from", "csv")
    assert result.exit_code == 2


@pytest.mark.parametrize("args", [["--template", "no placeholder"], ["--copies", "0"],
                                  ["--start-time", "yesterday"], ["--kind", "guid"]])
def test_bad_options_are_usage_errors(args, single_turn, tmp_path, run):
    result = run("nonce", single_turn, tmp_path / "o.jsonl", *args)
    assert result.exit_code == 2
    assert not (tmp_path / "o.jsonl").exists()


def test_skip_invalid_skips_and_counts(tmp_path, run):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"text": "a"}\nnot json\n{"text": 5}\n{"text": "b"}\n')
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "1", "--skip-invalid")
    assert result.exit_code == 0
    assert len(read_jsonl(out)) == 2
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["skipped"]["count"] == 2
    assert [x.split(":")[0] for x in manifest["skipped"]["lines"]] == ["2", "3"]
    try:  # orjson's own words for the bad line: they vary by version
        orjson.loads(b"not json")
    except orjson.JSONDecodeError as error:
        said = f"invalid JSON: {error.msg}"
    assert manifest["skipped"]["by_reason"] == {
        said: 1, "single_turn: 'text' must be a string, not int": 1}
    assert (f"skipped 2 invalid records (first: line 2); commonest reason (1): {said}\n"
            in result.stderr)


def test_a_record_the_position_cannot_take_names_its_line(tmp_path, run):
    source = write_jsonl(tmp_path / "t.jsonl", [{"input_length": 5, "hash_ids": [1]}] * 2)
    result = run("nonce", source, tmp_path / "o.jsonl", "--at", "user")
    assert result.exit_code == 1
    assert one_line(result.stderr).startswith(f"{source}:1: a record with only input_length")


def test_system_nonce_in_single_turn_says_what_to_do(single_turn, tmp_path, run):
    result = run("nonce", single_turn, tmp_path / "o.jsonl", "--at", "system")
    assert result.exit_code == 1
    line = one_line(result.stderr)
    assert line.startswith(f"{single_turn}:1: cannot write as single_turn: ")
    assert "system message" in line and "--to multi_turn" in line


def test_salt_into_a_format_aiperf_does_not_send_warns(tmp_path, run):
    source = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    result = run("nonce", source, tmp_path / "o.jsonl", "--at", "salt")
    assert result.exit_code == 0
    assert "warning: cache_salt is written into openai lines" in result.stderr


def _slow_writer(path: Path, records: int) -> None:
    with path.open("w") as f:
        for i in range(records):
            f.write(json.dumps({"text": f"prompt number {i} " * 20}) + "\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_partial_output(sig, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    # A test run started in the background (cmd &) inherits SIGINT ignored; a user's
    # Ctrl-C reaches a foreground process, so give the child the default disposition.
    with subprocess.Popen([*PROMPTKIT, "nonce", "-", str(out), "--seed", "1"],
                          stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
                          ) as proc:
        for i in range(5000):  # records flow and reach the temporary file
            proc.stdin.write(json.dumps({"text": f"p{i}" * 50}).encode() + b"\n")
        proc.stdin.flush()
        deadline = time.time() + 30
        while not any(p.name.endswith(".promptkit-tmp") for p in tmp_path.iterdir()):
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        try:  # read stderr meanwhile: a full pipe must not be what holds the exit up
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            pytest.fail(f"still running 30 s after {sig!r}; stderr: {exc.stderr!r:.2000}")
    assert out.read_text() == "old\n"
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    if sig == signal.SIGINT:  # cleaned up on the way out
        assert leftovers == ["out.jsonl"]
    else:  # nothing can run after SIGKILL: a hidden temporary file (and the empty lock
        # file, which the next run takes over) may stay, never OUT
        assert all(name == "out.jsonl" or name.endswith((".promptkit-tmp", ".promptkit-lock"))
                   for name in leftovers)
    assert not (tmp_path / "out.jsonl.manifest.json").exists()


# ---------------------------------------------------------------- help


def test_every_command_has_help_with_an_example_and_is_in_the_readme(run):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = dict(cli.commands)
    commands.update({f"pipe {n}": c for n, c in cli.commands["pipe"].commands.items()})
    for name, command in commands.items():
        result = run(*name.split(), "--help")
        assert result.exit_code == 0
        assert command.help and command.help.strip(), name
        if " " not in name:
            assert "Example" in result.stdout, name
            assert f"promptkit {name}" in readme, name


# ---------------------------------------------------------------- the real Mooncake traces


@pytest.mark.parametrize("name", ["conversation", "synthetic"])
def test_mooncake_traces_nonce_to_valid_traces_with_unique_first_ids(name, tmp_path, run):
    import aiperf_tool

    source = mooncake_trace(name)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "9")
    assert result.exit_code == 0, result.stderr
    before, after = read_jsonl(source), read_jsonl(out)
    assert len(after) == len(before) > 100
    firsts = [row["hash_ids"][0] for row in after]
    assert len(set(firsts)) == len(firsts)
    assert not set(firsts) & {h for row in before for h in row["hash_ids"]}
    for old, new in zip(before, after, strict=True):
        assert new["hash_ids"][1:] == old["hash_ids"][1:]
        assert {k: v for k, v in new.items() if k != "hash_ids"} == {
            k: v for k, v in old.items() if k != "hash_ids"}
    aiperf_tool.validate("MooncakeTrace", after)
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["aiperf"]["custom_dataset_type"] == "mooncake_trace"
    assert manifest["aiperf"]["distinct_records"] == len(after)


def test_python_m_and_console_script_agree(single_turn, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    subprocess.run([*PROMPTKIT, "nonce", str(single_turn), str(a), "--seed", "3"], check=True,
                   capture_output=True)
    script = Path(sys.executable).with_name("promptkit")
    subprocess.run([str(script), "nonce", str(single_turn), str(b), "--seed", "3"], check=True,
                   capture_output=True, env={**os.environ})
    assert a.read_bytes() == b.read_bytes()


def test_manifest_can_go_to_stdout(single_turn, tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("nonce", single_turn, out, "--seed", "1", "--manifest", "-")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["output"]["records"] == 4
    assert not Path(f"{out}.manifest.json").exists()
    both = run("nonce", single_turn, "-", "--manifest", "-")
    assert both.exit_code == 1
    assert one_line(both.stderr) == "the output and the manifest cannot both go to stdout"


# ---------------------------------------------------------------- progress


def stderr_on_a_terminal(args: list[str], cwd: Path) -> str:
    """Run promptkit with stderr on a pseudo-terminal; what it showed there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([*PROMPTKIT, *args], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    proc.wait()
    os.close(leader)
    assert proc.returncode == 0, shown
    return shown.decode(errors="replace")


def test_a_progress_bar_on_a_terminal_and_not_with_quiet(tmp_path):
    rows = [{"text": f"prompt {i} " + "x" * 200} for i in range(30000)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    shown = stderr_on_a_terminal(["nonce", str(source), "out.jsonl", "--workers", "1"],
                                 tmp_path)
    assert "adding nonces:" in shown and "30,000/30,000 records" in shown
    quiet = stderr_on_a_terminal(["--quiet", "nonce", str(source), "out2.jsonl"], tmp_path)
    assert "records" not in quiet.split("promptkit: wrote")[0]
    assert "promptkit: wrote 30000 records" in quiet


@pytest.mark.parametrize("args", [
    ["nonce", "{src}", "{tmp}/out.jsonl", "--manifest", "/nowhere/m.json"],
    ["synth", "prefix-test", "{tmp}/out.jsonl", "--manifest", "/nowhere/m.json"],
    ["check", "{src}", "--tokenizer", "cl100k_base", "--per-request", "/nowhere/r.jsonl"],
    ["stats", "{src}", "--tokenizer", "cl100k_base", "--plot", "/nowhere/s.png"],
])
def test_a_side_file_in_a_missing_folder_is_one_line_and_nothing_is_written(
        args, tmp_path, run, single_turn):
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(*[a.format(src=single_turn, tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("promptkit: /nowhere/")
    assert line.endswith("folder /nowhere does not exist")
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before
