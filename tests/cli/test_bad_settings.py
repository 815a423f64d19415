"""Bad settings, bad records and bad options: each is one line and the right exit code.

``promptkit bench`` runs as a user runs it (``python -m promptkit bench``, a
subprocess, none of the runner's settings inherited from the developer's
environment); the data commands through Click's runner.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import write_jsonl

from promptkit.commands import bench

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "prompts" / "trace.jsonl.example"


def run_bench(cwd: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in bench.SETTINGS}
    env.update(settings)
    return subprocess.run([sys.executable, "-m", "promptkit", "bench", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- bench settings


@pytest.mark.parametrize(("key", "value", "message"), [
    ("URL", "http://[::1", "URL='http://[::1': not a URL (Invalid IPv6 URL)"),
    ("URL", "http://127.0.0.1:abc", "URL='http://127.0.0.1:abc': not a URL (Port could not "
     "be cast to integer value as 'abc')"),
    ("URL", "http://127.0.0.1:70000", "URL='http://127.0.0.1:70000': not a URL (Port out "
     "of range 0-65535)"),
    ("URL", "ftp://host", "URL='ftp://host': not an http:// or https:// URL"),
    ("URL", "http://", "URL='http://': no host"),
    ("URL", "http://user:hunter22@[::1", "URL='http://***@[::1': not a URL (Invalid "
     "IPv6 URL)"),
    *[("RESET_TIMEOUT", value, f"RESET_TIMEOUT='{value}': not a number of seconds above 0 "
       "and at most 86400") for value in ("-1", "0", "nan", "inf", "1e400", "soon", "1e9")],
])
def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path, key: str, value: str,
                                             message: str) -> None:
    result = run_bench(tmp_path, "--dry-run", MODEL="m", REQUEST_COUNT="2",
                       RESET_CACHE="vllm", **{key: value})
    assert (result.returncode, result.stdout) == (2, "")
    assert last_line(result) == f"promptkit: {message}"
    assert "hunter22" not in result.stderr


def test_settings_that_cannot_be_used_exit_2(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("", encoding="utf-8")
    for key, value, message in [
        ("AIPERF", 'aiperf "x', "AIPERF: No closing quotation"),
        ("ARTIFACT_DIR", "afile", "ARTIFACT_DIR=afile: a file, not a folder"),
    ]:
        result = run_bench(tmp_path, "--dry-run", MODEL="m", REQUEST_COUNT="2", **{key: value})
        assert (result.returncode, result.stdout) == (2, "")
        assert last_line(result) == f"promptkit: {message}"
    result = run_bench(tmp_path, MODEL="m", REQUEST_COUNT="2", AIPERF="true",
                       ARTIFACT_DIR="afile/run")  # found only when it is made: exit 1
    assert (result.returncode, result.stdout) == (1, "")
    assert last_line(result) == "promptkit: ARTIFACT_DIR=afile/run: not a directory"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://host.example/v2",
                                 "localhost:8000", "http://[::1]:8000"])
def test_good_urls_pass(tmp_path: Path, url: str) -> None:
    result = run_bench(tmp_path, "--dry-run", MODEL="m", REQUEST_COUNT="2", URL=url,
                       RESET_TIMEOUT="0.5")
    assert result.returncode == 0, result.stderr
    assert f" --url {shlex.quote(url)} " in result.stdout


def test_input_file_that_is_no_file_stops_the_run(tmp_path: Path) -> None:
    """Synthetic prompts only when INPUT_FILE is unset: a folder or a missing path is
    an error (exit 1), never a silent switch to another workload."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    result = run_bench(tmp_path, "--dry-run", MODEL="m", INPUT_FILE=str(folder))
    assert (result.returncode, result.stdout) == (1, "")
    assert last_line(result) == f"promptkit: INPUT_FILE={folder}: a folder, not a prompt file"
    assert "synthetic" not in result.stderr
    result = run_bench(tmp_path, "--dry-run", MODEL="m", INPUT_FILE="bench.jsonl")
    assert (result.returncode, result.stdout) == (1, "")
    assert last_line(result) == ("promptkit: INPUT_FILE=bench.jsonl: no such file or "
                                 "directory; unset INPUT_FILE for AIPerf's synthetic prompts")
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    result = run_bench(tmp_path, "--dry-run", MODEL="m", INPUT_FILE=str(dangling))
    assert result.returncode == 1 and "no such file" in last_line(result)
    result = run_bench(tmp_path, "--dry-run", MODEL="m", REQUEST_COUNT="2", INPUT_FILE="")
    assert result.returncode == 0, result.stderr
    assert "synthetic mode" in result.stderr


SECRETS = ("sk-live-1", "sk-live-2", "tok-abc", "bearer-xyz", "hunter22", "hf_secret",
           "field-secret")


def test_secrets_are_hidden_in_what_is_printed_and_written_but_passed_to_aiperf(
        tmp_path: Path) -> None:
    """The AIPerf command is a program that records the arguments it gets: the real
    secrets; the dry-run line, the messages and cache_condition.json hold ***."""
    got = tmp_path / "argv.json"
    program = (f"{shlex.quote(sys.executable)} -c 'import json, sys; "
               f"json.dump(sys.argv[1:], open({json.dumps(str(got))}, \"w\"))'")
    args = ('--api-key sk-live-1 --api-key=sk-live-2 --header "Authorization: Bearer '
            'bearer-xyz" X-Trace:7 -H x-api-key:tok-abc --ui none')
    hook = f"HF_TOKEN=hf_secret {shlex.quote(sys.executable)} -c pass"
    settings = dict(MODEL="m", REQUEST_COUNT="2", URL="http://user:hunter22@127.0.0.1:9",
                    AIPERF=program, AIPERF_ARGS=args, RESET_CACHE=f"command:{hook}",
                    EXTRA_INPUTS='{"api_key": "field-secret", "top_k": 5}',
                    ARTIFACT_DIR=str(tmp_path / "artifacts"))
    dry = run_bench(tmp_path, "--dry-run", **settings)
    assert dry.returncode == 0, dry.stderr
    shown = shlex.split(dry.stdout)
    assert shown[shown.index("--url") + 1] == "http://***@127.0.0.1:9"
    assert shown[shown.index("--header"):shown.index("--ui")] == [
        "--header", "Authorization: ***", "X-Trace:7", "-H", "x-api-key:***"]
    assert shown[shown.index("--api-key"):][:3] == ["--api-key", "***", "--api-key=***"]
    extra = shown.index("--extra-inputs")
    assert shown[extra:extra + 4] == ["--extra-inputs", "api_key:***", "--extra-inputs",
                                      "top_k:5"]
    assert "HF_TOKEN=***" in dry.stderr
    for secret in SECRETS:
        assert secret not in dry.stdout + dry.stderr, secret
    assert not got.exists()

    run = run_bench(tmp_path, **settings)
    assert run.returncode == 0, run.stderr
    passed = json.loads(got.read_text(encoding="utf-8"))
    assert passed[passed.index("--url") + 1] == "http://user:hunter22@127.0.0.1:9"
    assert passed[passed.index("--header"):passed.index("--ui")] == [
        "--header", "Authorization: Bearer bearer-xyz", "X-Trace:7", "-H", "x-api-key:tok-abc"]
    assert passed[
        passed.index("--api-key"):][:3] == ["--api-key", "sk-live-1", "--api-key=sk-live-2"]
    assert "api_key:field-secret" in passed
    written = (tmp_path / "artifacts" / bench.CONDITION_FILE).read_text(encoding="utf-8")
    condition = json.loads(written)
    assert condition["aiperf_command"] == shown
    assert condition["url"] == "http://***@127.0.0.1:9"
    assert condition["action"].startswith("command: HF_TOKEN=*** ")
    for secret in SECRETS:
        assert secret not in written + run.stdout + run.stderr, secret


def test_an_overriding_setting_is_shown_without_its_secret(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL=m\nURL=http://localhost:8000\n", encoding="utf-8")
    result = run_bench(tmp_path, "--dry-run", REQUEST_COUNT="2",
                       URL="http://admin:hunter22@localhost:8001")
    assert result.returncode == 0, result.stderr
    assert ("promptkit: URL from the environment ('http://***@localhost:8001') "
            "overrides .env") in result.stderr
    assert "hunter22" not in result.stdout + result.stderr


def test_redaction_leaves_other_arguments_alone() -> None:
    command = ["aiperf", "profile", "--tokenizer", "t", "--prompt-input-tokens-block-size",
               "64", "--reset-kv-cache", "--output-tokens-mean", "8", "--extra-inputs",
               "max_tokens:8", "--header", "X-Request-Id:1"]
    assert bench.redacted(command) == command
    assert bench.redacted(["--hf-token", "x", "--token=y", "MY_KEY=z", "TOKENIZER=t"]) == [
        "--hf-token", "***", "--token=***", "MY_KEY=***", "TOKENIZER=t"]


# ---------------------------------------------------------------- usage errors: exit 2

FIT_ACCEPTS = ("(it takes a whole number N from 1 to 16,777,216, a range LOW,HIGH with "
               "1 <= LOW <= HIGH within it, or a column name)")

NEEDS_TOKENIZER = ("text records need --tokenizer (what the server tokenizes with): a "
                   "tiktoken encoding (cl100k_base), a tokenizer folder or tokenizer.json "
                   "file, or hf:OWNER/NAME from the local Hugging Face cache")


@pytest.mark.parametrize(("args", "message"), [
    (["fit", "IN", "OUT", "--tokenizer", "cl100k_base", "--tokens", "1024,128"],
     f"Invalid value for '--tokens': '1024,128' needs 1 <= LOW <= HIGH {FIT_ACCEPTS}"),
    (["fit", "IN", "OUT", "--tokenizer", "cl100k_base", "--tokens", "0"],
     f"Invalid value for '--tokens': '0' is not a positive integer {FIT_ACCEPTS}"),
    (["fit", "IN", "OUT", "--tokenizer", "cl100k_base", "--tokens", "2 tokens"],
     "Invalid value for '--tokens': '2 tokens' is not a number, a range LOW,HIGH or a "
     f"column {FIT_ACCEPTS}"),
    (["fit", "IN", "OUT", "--tokenizer", "cl100k_base", "--tokens", "1,2,3"],
     "Invalid value for '--tokens': '1,2,3' is not a range LOW,HIGH of positive integers "
     f"{FIT_ACCEPTS}"),
    (["pipe", "read", "IN", "fit", "--tokenizer", "cl100k_base", "--tokens", "9,3", "write",
      "OUT"], f"Invalid value for '--tokens': '9,3' needs 1 <= LOW <= HIGH {FIT_ACCEPTS}"),
    (["pad", "IN", "OUT", "--tokenizer", "cl100k_base", "--tokens", "abc"],
     "Invalid value for '--tokens': 'abc' is not a valid integer range."),
    (["pad", "IN", "OUT", "--tokenizer", "cl100k_base", "--tokens", "0"],
     "Invalid value for '--tokens': 0 is not in the range 1<=x<=16777216."),
    (["check", "IN", "--tokenizer", "cl100k_base", "--block-size", "0"],
     "Invalid value for '--block-size': 0 is not in the range 1<=x<=16777216."),
    (["hash-trace", "IN", "OUT", "--tokenizer", "cl100k_base", "--block-size", "0"],
     "Invalid value for '--block-size': 0 is not in the range 1<=x<=16777216."),
    (["check", "IN"], NEEDS_TOKENIZER),
    (["check", "IN", "--workers", "2"], NEEDS_TOKENIZER),
    (["pipe", "read", "IN", "check", "write", "OUT"], NEEDS_TOKENIZER),
])
def test_bad_options_are_usage_errors_exit_2(tmp_path: Path, run, args: list[str],
                                             message: str) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"prompt {i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    given = [str(source) if a == "IN" else str(out) if a == "OUT" else a for a in args]
    result = run(*given)
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"Error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_fit_column_is_still_taken(tmp_path: Path, run) -> None:
    """A --tokens that names a column passes the option check; a record without it is
    bad input, one line naming it (exit 1)."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "a", "n": 3}, {"text": "b"}])
    result = run("fit", source, tmp_path / "out.jsonl", "--tokenizer", "cl100k_base",
                 "--tokens", "n")
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {source}:2: no 'n' to take the token count from\n"


# ---------------------------------------------------------------- JSON error positions


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_json_error_names_file_line_and_column_only(tmp_path: Path, run,
                                                      workers: str) -> None:
    """orjson sees one line at a time: its "line 1" would contradict the file's line."""
    path = tmp_path / "x.jsonl"
    good = b'{"text": "prompt"}\n'
    path.write_bytes(good * 50000 + '{"é": 1,, }\n'.encode() + good)
    result = run("stats", path, "--workers", workers)
    assert result.exit_code == 1
    # orjson's own words (they vary by version), then the column in characters.
    said = orjson_says('{"é": 1,, }'.encode())
    assert result.stderr == (f"promptkit: {path}:50001: invalid JSON: {said} at column 9 "
                             "(',')\n")
    path.write_bytes(good + b'{"text": tru}\n')
    result = run("stats", path)
    said = orjson_says(b'{"text": tru}')
    assert result.stderr == (f"promptkit: {path}:2: invalid JSON: {said} at column 10 "
                             "('t')\n")
    path.write_bytes(good + b'{"text": "a"\n')
    result = run("stats", path)
    assert result.stderr == f"promptkit: {path}:2: invalid JSON: unexpected end of data\n"


def orjson_says(line: bytes) -> str:
    """orjson's message for ``line``, without its position."""
    with pytest.raises(orjson.JSONDecodeError) as error:
        orjson.loads(line)
    return error.value.msg


# ---------------------------------------------------------------- hash-id records

GOOD_IDS = {"input_length": 700, "hash_ids": [7, 8]}


@pytest.mark.parametrize(("line", "problem"), [
    ('{"input_length": 5, "hash_ids": []}',
     "mooncake_trace: 'hash_ids' is empty: give one id a block of the prompt, or leave it out"),
    ('{"input_length": 5, "hash_ids": [1, -2]}',
     "mooncake_trace: 'hash_ids' holds -2: ids are whole numbers from 0 to 2^63-1"),
    ('{"input_length": 5, "hash_ids": [9223372036854775808]}',
     "mooncake_trace: 'hash_ids' holds 9223372036854775808: ids are whole numbers from 0 to "
     "2^63-1"),
    ('{"input_length": 5, "hash_ids": [18446744073709551616]}',
     "mooncake_trace: 'hash_ids' holds 18446744073709551616: ids are whole numbers from 0 to "
     "2^63-1"),
    ('{"input_length": 2, "hash_ids": [1, 2, 3]}',
     "mooncake_trace: 3 hash ids for input_length 2: more blocks than tokens"),
])
@pytest.mark.parametrize("command", [["check", "IN"], ["publish", "IN", "OUT"],
                                     ["nonce", "IN", "OUT"], ["stats", "IN"]])
def test_bad_hash_ids_are_one_line_naming_file_and_line(tmp_path: Path, run, line: str,
                                                        problem: str,
                                                        command: list[str]) -> None:
    source = tmp_path / "trace.jsonl"
    source.write_text(json.dumps(GOOD_IDS) + "\n" + line + "\n", encoding="utf-8")
    out = tmp_path / ("published" if command[0] == "publish" else "out.jsonl")
    result = run(*[str(source) if a == "IN" else str(out) if a == "OUT" else a
                   for a in command])
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {source}:2: {problem}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.jsonl"]


def test_more_hash_ids_than_the_block_size_allows(tmp_path: Path, run) -> None:
    """n ids are n blocks, the last partial: input_length must be above (n - 1) blocks,
    at the tokens a hash id stands for (512 for mooncake_trace unless --hash-block-size
    says otherwise)."""
    source = tmp_path / "trace.jsonl"
    rows = [GOOD_IDS, {"input_length": 1024, "hash_ids": [7, 8, 9]},
            {"input_length": 1025, "hash_ids": [7, 8, 9]}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run("check", source)
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: "
                             f"{source}:2: 3 hash ids for input_length 1024: at block size "
                             "512 that length is at most 2 blocks\n")
    result = run("check", source, "--hash-block-size", "256", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == 3
    result = run("check", source, "--hash-block-size", "1024")
    assert result.stderr == ("promptkit: "
                             f"{source}:1: 2 hash ids for input_length 700: at block size "
                             "1024 that length is at most 1 block\n")
    result = run("check", source, "--skip-invalid", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] == 2
    assert report["skipped"]["lines"] == [
        "2: check: 3 hash ids for input_length 1024: at block size 512 that length is at "
        "most 2 blocks"]


# ---------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize(("line", "key"), [
    ('{"text": "a", "text": "b"}', "text"),
    ('{"text": "Q: a", "text": "b"}', "text"),  # a colon in a text
    ('{"text" : "a", "text": "b"}', "text"),  # a key spaced from its colon
    ('{"text": "say \\"x\\": 1", "output_length": 2, "output_length": 3}', "output_length"),
    ('{"messages": [{"role": "user", "content": "a", "content": "b"}]}', "content"),
    ('{"text": "a", "extra": {"cache_salt": "s", "cache_salt": "t"}}', "cache_salt"),
    ('{"text": "a", "extra": {"k": {"n": 1, "n": 2}}}', "n"),
    ('{"text": "a", "\\u00e9": 1, "é": 2}', "é"),  # the same key, written two ways
])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_key_twice_in_an_object_is_bad_input(tmp_path: Path, run, line: str, key: str,
                                               workers: str) -> None:
    source = tmp_path / "in.jsonl"
    good = '{"text": "fine: \\"ok\\": yes"}\n'
    source.write_text(good * 3 + line + "\n" + good, encoding="utf-8")
    result = run("nonce", source, tmp_path / "out.jsonl", "--workers", workers)
    assert result.exit_code == 1
    assert result.stderr == ('promptkit: '
                             f'{source}:4: invalid JSON: the key "{key}" appears twice in '
                             "one object (readers keep one or the other)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    result = run("nonce", source, tmp_path / "out.jsonl", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 4


@pytest.mark.parametrize("line", [
    '{"text": "a: b", "session_id": "s:1"}',
    '{"text": "{\\"a\\": 1, \\"a\\": 2}"}',  # a duplicate inside a text is text
    '{"text" : "spaced", "output_length" :\t3}',
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},'
    ' {"role": "user", "content": "c"}]}',
])
def test_keys_that_only_look_alike_are_fine(tmp_path: Path, run, line: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(line + "\n", encoding="utf-8")
    result = run("stats", source)
    assert result.exit_code == 0, result.stderr


def test_a_key_twice_in_a_json_array_item_names_the_item(tmp_path: Path, run) -> None:
    """A JSON array file: the item number stands for the line, as in every message."""
    source = tmp_path / "in.json"
    source.write_text('[{"text": "a: \\"b\\": c"},\n {"text": "x", "text": "y"},\n'
                      ' {"text": "z"}]\n', encoding="utf-8")
    result = run("stats", source)
    assert result.exit_code == 1
    assert result.stderr == ('promptkit: '
                             f'{source}:2: invalid JSON: the key "text" appears twice in '
                             "one object (readers keep one or the other)\n")
    source.write_text('[{"text": "a: \\"b\\": c", "extra": {"k": 1}},\n {"text": "z"}]\n',
                      encoding="utf-8")
    result = run("stats", source)
    assert result.exit_code == 0, result.stderr


def test_check_takes_the_block_size_of_a_hash_trace_from_its_manifest(tmp_path: Path,
                                                                      run) -> None:
    """hash-trace --block-size 16 records AIPerf's --prompt-input-tokens-block-size 16 in
    the manifest: check reads the ids at 16 tokens each, as AIPerf will."""
    trace = tmp_path / "trace.jsonl"
    made = run("hash-trace", ROOT / "prompts" / "chat.jsonl.example", trace, "--tokenizer",
               "cl100k_base", "--block-size", "16")
    assert made.exit_code == 0, made.stderr
    result = run("check", trace, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["block_size"] == 16
    first = json.loads(trace.read_text(encoding="utf-8").splitlines()[0])
    assert len(first["hash_ids"]) > 1
    result = run("check", trace, "--no-manifest")
    assert result.exit_code == 1
    assert result.stderr == (
        f"promptkit: {trace}:1: {len(first['hash_ids'])} hash ids for input_length "
        f"{first['input_length']}: at block size 512 that length is at most 1 block\n")
    result = run("check", trace, "--block-size", "8", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["block_size"] == 8


def test_bench_predicts_a_hash_trace_at_its_aiperf_block_size(tmp_path: Path, run) -> None:
    """The manifest's --prompt-input-tokens-block-size goes to AIPerf and to the
    prediction alike (under the chat template bench takes from the tokenizer, which the
    server renders around the prompts AIPerf makes of the ids)."""
    from tokenizer_dir import build_tokenizer_dir

    tokenizer = build_tokenizer_dir(tmp_path / "tok")
    trace = tmp_path / "trace.jsonl"
    made = run("hash-trace", ROOT / "prompts" / "chat.jsonl.example", trace, "--tokenizer",
               tokenizer, "--block-size", "16")
    assert made.exit_code == 0, made.stderr
    result = run_bench(tmp_path, "--dry-run", MODEL="m", INPUT_FILE=str(trace),
                       TOKENIZER=str(tokenizer))
    assert result.returncode == 0, result.stderr
    assert " --prompt-input-tokens-block-size 16 " in result.stdout
    assert "block size 16)" in result.stderr
    summary = run("check", trace, "--json", "--tokenizer", tokenizer, "--chat-template", "hf")
    rate = json.loads(summary.stdout)["hit_rate"]
    assert f"predicted prefix-cache hit rate {100 * rate:.2f}%" in result.stderr
