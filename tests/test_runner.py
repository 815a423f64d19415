"""``scripts/run_aiperf.py``: the real ``aiperf profile``, configured by a ``.env`` file.

The runner runs as a user runs it (a subprocess, ``--env-file``) and starts the
real AIPerf (0.13, ``python -m aiperf``), which sends its requests to the local
OpenAI-compatible server (``tests/openai_server.py``, with its vLLM-rule prefix
cache and the ``/reset_prefix_cache`` and ``/flush_cache`` endpoints). The
server records every request in arrival order, so the tests see what AIPerf
sent and whether the cache reset came first. Offline and hermetic as in
``tests/test_aiperf_profile.py``: a local tokenizer folder, AIPerf's temp files
in a folder the test deletes, ``--ui none --no-gpu-telemetry
--no-server-metrics`` through ``AIPERF_ARGS``, and none of the runner's
settings inherited from the developer's environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import test_aiperf_profile
from openai_server import OpenAIServer
from test_aiperf_profile import (
    AIPERF_TIMEOUT_S,
    EXAMPLE,
    aiperf_env,
    error_lines,
    read_texts,
    run_in_group,
    tail,
)
from tokenizer_dir import build_tokenizer_dir

aiperf_tmpdir = test_aiperf_profile.aiperf_tmpdir  # the shared AIPerf temp-folder fixture

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "scripts" / "run_aiperf.py"
CHAT_EXAMPLE = ROOT / "prompts" / "chat.jsonl.example"
QUIET_AIPERF = "--ui none --no-gpu-telemetry --no-server-metrics"


def load_runner() -> Any:
    spec = importlib.util.spec_from_file_location("run_aiperf", RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


runner = load_runner()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("runner") / "tokenizer")


@pytest.fixture
def cache_server(tokenizer_dir: Path) -> Any:
    with OpenAIServer(model="test-model", tokenizer=tokenizer_dir) as server:
        yield server


def promptkit(*args: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                   capture_output=True, cwd=cwd)


def nonced(tmp_path: Path) -> Path:
    """The shipped example (20 records), nonce'd: 20 distinct prompts, with a manifest."""
    path = tmp_path / "bench.jsonl"
    promptkit("nonce", EXAMPLE, path, "--seed", "7")
    return path


def write_env(path: Path, **settings: Any) -> Path:
    """A .env file: one KEY=VALUE line a setting, single-quoted."""
    lines = ["# written by tests/test_runner.py"]
    lines += [f"{key}='{value}'" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def base_settings(server: OpenAIServer, tokenizer: Path, artifacts: Path) -> dict[str, Any]:
    return {
        "MODEL": "test-model",
        "URL": server.url,
        "ENDPOINT_TYPE": "chat",
        "CONCURRENCY": 1,
        "TOKENIZER": tokenizer,
        "ARTIFACT_DIR": artifacts,
        "AIPERF": f"{sys.executable} -m aiperf",
        "AIPERF_ARGS": QUIET_AIPERF,
    }


def runner_env(tmpdir: Path, **overrides: str) -> dict[str, str]:
    """AIPerf's test environment with none of the runner's settings, plus ``overrides``."""
    env = {k: v for k, v in aiperf_env(tmpdir).items() if k not in runner.SETTINGS}
    env.update(overrides)
    return env


def run_runner(tmp_path: Path, tmpdir: Path, env_file: Path, *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python scripts/run_aiperf.py --env-file ENV ARGS`` in ``tmp_path``; AIPerf and
    every process it starts are ended if it overruns."""
    logs = tmp_path / f"runner-logs-{time.monotonic_ns()}"
    logs.mkdir()
    command = [sys.executable, str(RUNNER), "--env-file", str(env_file), *args]
    started = time.monotonic()
    returncode = run_in_group(command, logs, env if env is not None else runner_env(tmpdir),
                              tmp_path)
    assert returncode is not None, (f"runner timed out after {AIPERF_TIMEOUT_S}s\n"
                                    f"{tail(logs / 'stderr.txt')}")
    print(f"run_aiperf.py {' '.join(args)} took {time.monotonic() - started:.1f}s")
    return subprocess.CompletedProcess(
        command, returncode,
        (logs / "stdout.txt").read_text(encoding="utf-8", errors="replace"),
        (logs / "stderr.txt").read_text(encoding="utf-8", errors="replace"))


def explain(result: subprocess.CompletedProcess[str], server: OpenAIServer,
            artifacts: Path) -> str:
    received = [f"  {r.method} {r.path}" for r in server.recorded()]
    return "\n".join([
        f"exit code {result.returncode}",
        f"server received {len(received)} request(s):", *received[:40],
        "--- stderr (tail)", "\n".join(result.stderr.splitlines()[-40:]),
        "--- error lines", error_lines(artifacts / "logs" / "aiperf.log"),
    ])


def paths(server: OpenAIServer) -> list[str]:
    return [r.path for r in server.recorded()]


def condition(artifacts: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((artifacts / "cache_condition.json").read_text())
    return data


def profiled_count(artifacts: Path) -> float:
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    return summary["request_count"]["avg"]  # type: ignore[no-any-return]


def post_chat(server: OpenAIServer, text: str) -> None:
    body = {"model": "test-model", "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(server.url + "/v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


# -- with the real aiperf -------------------------------------------------------


def test_a_nonced_file_is_sent_exactly_after_the_cache_is_cleared(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """2 warmup requests, REQUEST_COUNT unset (the 18 records left): the server gets
    the file's 20 prompts once each, in order, after the vLLM reset that empties
    the cache a request filled before the run."""
    path = nonced(tmp_path)
    texts = read_texts(path)
    post_chat(cache_server, texts[2])  # the first profiled prompt, cached before the run
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         STREAMING="true", WARMUP_REQUEST_COUNT=2, INPUT_FILE="bench.jsonl",
                         RESET_CACHE="vllm")
    result = run_runner(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    assert "REQUEST_COUNT unset: 18" in result.stderr, why

    assert paths(cache_server) == ["/v1/chat/completions", "/reset_prefix_cache",
                                   *["/v1/chat/completions"] * 20], why
    bodies = cache_server.chat_requests()[1:]
    assert [b["messages"] for b in bodies] == [[{"role": "user", "content": t}] for t in texts]
    assert all(b["stream"] is True for b in bodies)
    # The reset emptied the cache: no request hit, the pre-cached prompt included.
    records = cache_server.cache_records()
    assert len(records) == 20 and all(r.cached_tokens == 0 for r in records), records
    assert profiled_count(artifacts) == 18

    cond = condition(artifacts)
    assert cond["reset_cache"] == "vllm"
    assert cond["action"] == f"POST {cache_server.url}/reset_prefix_cache"
    assert cond["status"] == 200 and cond["aiperf_exit_code"] == 0
    assert cond["dataset"] == {"input_file": str(path), "custom_dataset_type": "single_turn",
                               "from": "manifest", "distinct_records": 20, "repeats": False}
    assert (cond["warmup_request_count"], cond["request_count"]) == (2, 18)
    assert cond["aiperf_command"][3:] == [
        "profile", "--model", "test-model", "--url", cache_server.url,
        "--endpoint-type", "chat", "--streaming",
        "--input-file", str(path), "--custom-dataset-type", "single_turn",
        "--concurrency", "1", "--request-count", "18", "--warmup-request-count", "2",
        "--tokenizer", str(tokenizer_dir), "--artifact-dir", str(artifacts),
        *shlex.split(QUIET_AIPERF)]


def test_a_file_too_small_stops_unless_repeats_are_allowed(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    path = nonced(tmp_path)
    texts = read_texts(path)
    artifacts = tmp_path / "artifacts"
    env_file = write_env(tmp_path / ".env", **base_settings(cache_server, tokenizer_dir, artifacts),
                         REQUEST_COUNT=20, WARMUP_REQUEST_COUNT=5, INPUT_FILE=path,
                         RESET_CACHE="aiperf")

    stopped = run_runner(tmp_path, aiperf_tmpdir, env_file)
    assert stopped.returncode == 1
    assert stopped.stdout == ""
    assert stopped.stderr == (
        f"run_aiperf: WARMUP_REQUEST_COUNT + REQUEST_COUNT = 5 + 20 = 25 requests, but {path} "
        "has only 20 distinct records: AIPerf would wrap around and resend prompts that hit "
        "the prefix cache. Lower the counts, make more records (promptkit nonce --copies N), "
        "or pass --allow-repeats (ALLOW_REPEATS=true)\n")
    assert cache_server.recorded() == []  # no reset, no aiperf
    assert not artifacts.exists()

    allowed = run_runner(tmp_path, aiperf_tmpdir, env_file, "--allow-repeats")
    why = explain(allowed, cache_server, artifacts)
    assert allowed.returncode == 0, why
    assert ("run_aiperf: warning: 25 requests from 20 distinct records: 5 resend a prompt "
            "and may hit the prefix cache (--allow-repeats)") in allowed.stderr
    # AIPerf's own reset (--reset-kv-cache) came before every request.
    assert paths(cache_server) == ["/reset_prefix_cache", *["/v1/chat/completions"] * 25], why
    sent = [b["messages"][0]["content"] for b in cache_server.chat_requests()]
    assert sent == texts + texts[:5]  # AIPerf wrapped around the file
    hits = [r.cached_tokens > 0 for r in cache_server.cache_records()]
    assert hits == [False] * 20 + [True] * 5  # and the repeats hit the cache
    cond = condition(artifacts)
    assert cond["reset_cache"] == "aiperf" and "--reset-kv-cache" in cond["aiperf_command"]
    assert cond["dataset"]["repeats"] is True and cond["aiperf_exit_code"] == 0


def test_synthetic_mode_warns_and_runs(
    tmp_path: Path, cache_server: OpenAIServer, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """INPUT_FILE names a missing file: AIPerf's synthetic prompts, two warnings;
    RESET_CACHE=sglang posts /flush_cache first."""
    artifacts = tmp_path / "artifacts"
    settings = base_settings(cache_server, tokenizer_dir, artifacts)
    settings["AIPERF_ARGS"] += " --synthetic-input-tokens-mean 64 --output-tokens-mean 8"
    env_file = write_env(tmp_path / ".env", **settings, REQUEST_COUNT=3,
                         INPUT_FILE="missing.jsonl", RESET_CACHE="sglang")
    result = run_runner(tmp_path, aiperf_tmpdir, env_file)
    why = explain(result, cache_server, artifacts)
    assert result.returncode == 0, why
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith("run_aiperf: warning:")]
    assert warnings == [
        "run_aiperf: warning: INPUT_FILE=missing.jsonl: no such file; using AIPerf's "
        "synthetic prompts",
        "run_aiperf: warning: synthetic mode: AIPerf's synthetic prompts are much alike, so "
        "the server's prefix cache may serve parts of them and flatter the results; use a "
        "nonce'd file (promptkit nonce) for a cold-cache run",
    ]
    assert paths(cache_server) == ["/flush_cache", *["/v1/chat/completions"] * 3], why
    assert profiled_count(artifacts) == 3
    cond = condition(artifacts)
    assert cond["dataset"] == {"synthetic": True}
    assert cond["action"] == f"POST {cache_server.url}/flush_cache" and cond["status"] == 200
    assert "--input-file" not in cond["aiperf_command"]


def test_extra_inputs_arrive_in_request_bodies_with_json_types(
    tmp_path: Path, aiperf_tmpdir: Path, tokenizer_dir: Path
) -> None:
    """A chat file without a manifest (its type detected: openai lines load as
    mooncake_trace); EXTRA_INPUTS values of every JSON type reach the server."""
    path = tmp_path / "chat.jsonl"
    shutil.copy(CHAT_EXAMPLE, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    extra = ('disable_prompt_cache:true,enable_prefix_caching:false,top_k:5,'
             'temperature:0.5,min_p:1e-3,priority:-2,user:"bench, run",tag:plain,'
             'stop:["END","1"],logit_bias:{"42":-1},seed:null')
    expected = {"disable_prompt_cache": True, "enable_prefix_caching": False, "top_k": 5,
                "temperature": 0.5, "min_p": 0.001, "priority": -2, "user": "bench, run",
                "tag": "plain", "stop": ["END", "1"], "logit_bias": {"42": -1}, "seed": None}
    artifacts = tmp_path / "artifacts"
    with OpenAIServer(model="test-model") as server:
        env_file = write_env(tmp_path / ".env", **base_settings(server, tokenizer_dir, artifacts),
                             REQUEST_COUNT=len(rows), INPUT_FILE=path, EXTRA_INPUTS=extra)
        result = run_runner(tmp_path, aiperf_tmpdir, env_file)
        why = explain(result, server, artifacts)
        assert result.returncode == 0, why
        bodies = server.chat_requests()
    assert [b["messages"] for b in bodies] == [row["messages"] for row in rows], why
    for body in bodies:
        got = {key: body.get(key, "<missing>") for key in expected}
        assert got == expected
        for key, value in expected.items():  # True == 1 in Python: compare the types too
            assert type(got[key]) is type(value), (key, got[key])
    cond = condition(artifacts)
    assert cond["reset_cache"] == "none"
    assert cond["dataset"]["from"] == "detected"
    assert cond["dataset"]["custom_dataset_type"] == "mooncake_trace"
    assert cond["dataset"]["distinct_records"] == len(rows)


# -- fast: no aiperf run ----------------------------------------------------------


def test_dry_run_prints_the_exact_command_and_touches_nothing(
    tmp_path: Path, tokenizer_dir: Path, aiperf_tmpdir: Path
) -> None:
    """The environment overrides the file (CONCURRENCY); a relative tokenizer folder
    becomes absolute; a promptkit pad --into file manifest brings its system prompt
    file, found next to the input though the manifest names it relative to
    another folder."""
    made = tmp_path / "made"
    made.mkdir()
    shutil.copytree(tokenizer_dir, tmp_path / "tok")
    promptkit("pad", EXAMPLE, "padded.jsonl", "--tokens", "48", "--tokenizer", tokenizer_dir,
              "--system-prompt", "You are helpful.", "--into", "file", "--seed", "7", cwd=made)
    path = made / "padded.jsonl"
    artifacts = tmp_path / "artifacts"
    env_file = write_env(
        tmp_path / "bench.env", MODEL="org/model", URL="http://127.0.0.1:9",
        STREAMING="yes", CONCURRENCY=1, REQUEST_COUNT=12, WARMUP_REQUEST_COUNT=4,
        TOKENIZER="tok", ARTIFACT_DIR=artifacts, INPUT_FILE=path, RESET_CACHE="vllm",
        EXTRA_INPUTS="ignore_eos:true,min_tokens:8,stop:[\"x\"]", AIPERF="aiperf")
    result = run_runner(tmp_path, aiperf_tmpdir, env_file, "--dry-run",
                        env=runner_env(aiperf_tmpdir, CONCURRENCY="3"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == shlex.join([
        "aiperf", "profile", "--model", "org/model", "--url", "http://127.0.0.1:9",
        "--endpoint-type", "chat", "--streaming",
        "--input-file", str(path), "--custom-dataset-type", "single_turn",
        "--system-prompt-file", f"{path}.system.txt",
        "--concurrency", "3", "--request-count", "12", "--warmup-request-count", "4",
        "--tokenizer", str(tmp_path / "tok"), "--artifact-dir", str(artifacts),
        "--extra-inputs", "ignore_eos:true", "--extra-inputs", "min_tokens:8",
        "--extra-inputs", '{"stop": ["x"]}',
    ]) + "\n"
    assert result.stderr.splitlines() == [
        f"run_aiperf: CONCURRENCY from the environment ('3') overrides {env_file}",
        "run_aiperf: dry run: would clear the prefix cache first: "
        "POST http://127.0.0.1:9/reset_prefix_cache",
    ]
    assert not artifacts.exists()


def test_a_stale_manifest_is_ignored_and_the_file_read(tmp_path: Path) -> None:
    path = nonced(tmp_path)
    with path.open("a", encoding="utf-8") as f:
        f.write(path.read_text(encoding="utf-8").splitlines()[0] + "\n")  # a repeat
    dataset = runner.load_dataset(str(path))
    assert (dataset.source, dataset.custom_dataset_type, dataset.distinct_records) == (
        "detected", "single_turn", 20)
    assert "does not match" in dataset.warnings[0]


def test_env_example_documents_every_setting_and_dry_runs(
    tmp_path: Path, aiperf_tmpdir: Path
) -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    for key in runner.SETTINGS:
        assert f"\n{key}=" in text or f"\n#{key}=" in text, key
    result = run_runner(tmp_path, aiperf_tmpdir, ROOT / ".env.example", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert " profile --model meta-llama/Llama-3.1-8B-Instruct " in result.stdout
    assert "--extra-inputs ignore_eos:true" in result.stdout
    assert "synthetic mode" in result.stderr  # bench.jsonl is not in tmp_path


@pytest.mark.parametrize(("line", "value"), [
    ("A=plain", "plain"),
    ("export A = spaced out  ", "spaced out"),
    ("A=x # a comment", "x"),
    ("A=x#not-a-comment", "x#not-a-comment"),
    ("A='single # kept' # comment", "single # kept"),
    ('A="tab\\there \\"q\\""', 'tab\there "q"'),
    ("A=", ""),
    ('A=stop:"x",n:1', 'stop:"x",n:1'),
])
def test_env_file_values(line: str, value: str) -> None:
    assert runner.parse_env(f"# comment\n\n{line}\n") == {"A": value}


@pytest.mark.parametrize("text", ["no equals sign", "A='unterminated", 'A="x" trailing'])
def test_env_file_errors_name_the_line(text: str) -> None:
    with pytest.raises(runner.ConfigError, match=r"^\.env:2: "):
        runner.parse_env(f"OK=1\n{text}\n")


def test_extra_inputs_become_typed_arguments() -> None:
    # Commas inside quotes and brackets do not split; spaces around items are dropped.
    assert runner.parse_extra_inputs(' k:"a,b", l:[1,2], m:{"n":[3,4]},') == [
        ("k", "a,b"), ("l", [1, 2]), ("m", {"n": [3, 4]})]
    assert runner.parse_extra_inputs('{"a": true, "b": "x"}') == [("a", True), ("b", "x")]
    typed = runner.parse_extra_inputs('a:true,b:1,c:0.5,d:x,e:"quoted",f:[1,"2"],j:null')
    assert typed == [("a", True), ("b", 1), ("c", 0.5), ("d", "x"), ("e", "quoted"),
                     ("f", [1, "2"]), ("j", None)]
    assert runner.extra_input_args(typed) == [
        "--extra-inputs", "a:true", "--extra-inputs", "b:1", "--extra-inputs", "c:0.5",
        "--extra-inputs", "d:x", "--extra-inputs", "e:quoted",
        "--extra-inputs", '{"f": [1, "2"]}', "--extra-inputs", '{"j": null}']
    with pytest.raises(runner.ConfigError, match="'b' is not key:value"):
        runner.parse_extra_inputs("a:1,b")
    with pytest.raises(runner.ConfigError, match="'a' given twice"):
        runner.parse_extra_inputs("a:1,a:2")


@pytest.mark.parametrize("value", ['"1"', '"true"', '"NULL"', '"-2.5"'])
def test_strings_aiperf_would_retype_are_refused(value: str, tmp_path: Path) -> None:
    """AIPerf 0.13 coerces every string value of --extra-inputs ("1" -> 1), in
    key:value and JSON form: the runner says so instead of sending another type."""
    env_file = write_env(tmp_path / ".env", MODEL="m", EXTRA_INPUTS=f"s:{value}")
    env = {k: v for k, v in os.environ.items() if k not in runner.SETTINGS}
    result = subprocess.run([sys.executable, str(RUNNER), "--env-file", str(env_file),
                             "--dry-run"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        f"run_aiperf: EXTRA_INPUTS: s: the string {value} would not reach the server as a "
        "string")


def test_the_record_on_disk_hides_an_api_key() -> None:
    assert runner.redacted(["aiperf", "profile", "--api-key", "sk-1", "--api-key=sk-2",
                            "--model", "m"]) == [
        "aiperf", "profile", "--api-key", "***", "--api-key=***", "--model", "m"]
