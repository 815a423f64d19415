"""End to end: the real ``aiperf profile`` sends exactly the prompts of promptkit files.

``promptkit nonce`` turns the shipped example into a single_turn file; the
manifest's AIPerf arguments load it into the real AIPerf CLI (a subprocess: the
``aiperf`` of its own virtualenv, ``tests/aiperf_tool.py``), which
sends it to a real OpenAI-compatible HTTP server on 127.0.0.1 (standard
library, ``tests/openai_server.py``). The server records every request body;
the test asserts that the chat requests carry the file's ``text`` values,
one request per line, in file order, and that AIPerf exits 0. The same holds
for the ``synth prefix-test`` workload (system prompt and task per request).

Everything is offline: the tokenizer AIPerf needs is a tiny BPE model trained
in a temporary folder (``tests/tokenizer_dir.py``), passed as an absolute
path. ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` must not be set for the
subprocess: with them AIPerf treats the path as a Hub repository id and fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiperf_tool
import pytest
from openai_server import OpenAIServer
from tokenizer_dir import build_tokenizer_dir

EXAMPLE = Path(__file__).resolve().parents[2] / "prompts" / "trace.jsonl.example"


def make_input(tmp_path: Path) -> Path:
    """The shipped example, nonce'd by promptkit as a user would: the file AIPerf loads."""
    path = tmp_path / "prompts.jsonl"
    subprocess.run([sys.executable, "-m", "promptkit", "nonce", str(EXAMPLE), str(path),
                    "--seed", "7"], check=True, capture_output=True)
    return path


def aiperf_args_from_manifest(path: Path) -> list[str]:
    manifest = json.loads(Path(f"{path}.manifest.json").read_text(encoding="utf-8"))
    return manifest["aiperf"]["args"]  # type: ignore[no-any-return]


AIPERF_TIMEOUT_S = 120
TAIL_LINES = 60
# Variables that make AIPerf treat a local tokenizer path as a Hub repo id.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def read_texts(path: Path) -> list[str]:
    """The ``text`` of every line of a single_turn JSONL file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


def aiperf_command(
    *, url: str, input_file: Path, count: int, tokenizer: Path, artifacts: Path, streaming: bool
) -> list[str]:
    command = [
        str(aiperf_tool.executable()), "profile",
        "--model", "test-model",
        "--url", url,
        "--endpoint-type", "chat",
        *aiperf_args_from_manifest(input_file),
        # single_turn's default already; stated because the test relies on it.
        "--dataset-sampling-strategy", "sequential",
        "--request-count", str(count),
        "--concurrency", "1",
        "--tokenizer", str(tokenizer),
        "--artifact-dir", str(artifacts),
        "--ui", "none",               # no Textual dashboard / progress bars
        "--no-gpu-telemetry",         # else it probes DCGM on localhost:9400/9401
        "--no-server-metrics",        # else it scrapes GET /metrics all run long
    ]  # fmt: skip
    # No --warmup-request-count: no warmup is the default (0 is rejected), and
    # warmup requests would reuse the file's entries. No --wait-for-model-timeout:
    # its readiness probe sends an extra chat request ("Lo", max_tokens 1).
    if streaming:
        command.append("--streaming")
    return command


def aiperf_env(tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    # AIPerf leaves aiperf_mmap_* and ZMQ IPC folders in the temp dir; keep
    # them in a folder the test deletes (short path: IPC socket names are
    # limited to about 100 characters).
    env["TMPDIR"] = str(tmpdir)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "160"
    return env


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End AIPerf and every service process it started (its own session).

    A no-op when the run ended cleanly and left nothing behind; otherwise
    SIGTERM, up to 10 s for a graceful exit, then SIGKILL for what is left.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_in_group(command: list[str], logs: Path, env: dict[str, str], cwd: Path) -> int | None:
    """Run ``command`` in a process group of its own, output in ``logs/stdout.txt`` and
    ``logs/stderr.txt``; its exit code, or None when it overran AIPERF_TIMEOUT_S. The
    group (AIPerf and every service it starts) is ended either way."""
    with (logs / "stdout.txt").open("wb") as out, (logs / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, cwd=cwd, start_new_session=True)
        try:
            return proc.wait(timeout=AIPERF_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None
        finally:
            kill_group(proc)


def tail(path: Path, n: int = TAIL_LINES) -> str:
    if not path.exists():
        return f"<{path.name} missing>"
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


def error_lines(*paths: Path, limit: int = 40) -> str:
    """Log lines that name an error, from AIPerf's output and log file."""
    found = [
        line
        for path in paths
        if path.exists()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
        if any(word in line for word in (" ERROR ", " CRITICAL ", "Traceback", "Error:"))
    ]
    return "\n".join(dict.fromkeys(found[:limit])) or "<none>"


def child_crash_logs(tmpdir: Path) -> str:
    """Non-empty ``aiperf_child_*_stderr.log`` files: service tracebacks."""
    parts = [
        f"--- {p.name}\n{tail(p)}"
        for p in sorted(tmpdir.glob("aiperf_child_*_stderr.log"))
        if p.stat().st_size
    ]
    return "\n".join(parts)


def diagnostics(
    command: list[str],
    returncode: int | None,
    logs: Path,
    artifacts: Path,
    tmpdir: Path,
    server: OpenAIServer,
) -> str:
    received = [
        f"  {r.method} {r.path} {json.dumps(r.body)[:200] if r.body is not None else ''}"
        for r in server.recorded()
    ]
    return "\n".join(
        [
            f"aiperf exit code: {returncode}",
            "command: " + " ".join(command),
            f"server received {len(received)} request(s):",
            *received,
            f"--- aiperf stdout (last {TAIL_LINES} lines)",
            tail(logs / "stdout.txt"),
            f"--- aiperf stderr (last {TAIL_LINES} lines)",
            tail(logs / "stderr.txt"),
            "--- error lines (stdout, stderr, artifacts/logs/aiperf.log)",
            error_lines(
                logs / "stdout.txt", logs / "stderr.txt", artifacts / "logs" / "aiperf.log"
            ),
            child_crash_logs(tmpdir),
        ]
    )


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(model="test-model") as server:
        yield server


@pytest.fixture
def aiperf_tmpdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="aiperf-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_aiperf(tmp_path: Path, server: OpenAIServer, aiperf_tmpdir: Path, input_file: Path,
               count: int, tokenizer: Path, streaming: bool = False) -> list[dict]:
    """Run the real ``aiperf profile`` on ``input_file``; the chat request bodies it sent."""
    artifacts = tmp_path / "artifacts"
    command = aiperf_command(
        url=server.url,
        input_file=input_file,
        count=count,
        tokenizer=tokenizer,
        artifacts=artifacts,
        streaming=streaming,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    returncode = run_in_group(command, logs, aiperf_env(aiperf_tmpdir), tmp_path)
    elapsed = time.monotonic() - started

    def explain() -> str:
        return diagnostics(command, returncode, logs, artifacts, aiperf_tmpdir, server)

    assert returncode is not None, f"aiperf timed out after {AIPERF_TIMEOUT_S}s\n{explain()}"
    assert returncode == 0, explain()
    bodies = server.chat_requests()
    assert len(bodies) == count, explain()
    for body in bodies:
        assert body["model"] == "test-model"
        assert bool(body.get("stream")) is streaming
    assert server.completion_requests() == [], explain()
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text(encoding="utf-8"))
    assert summary["request_count"]["avg"] == count, explain()
    assert not summary.get("error_summary"), explain()
    print(f"aiperf profile ({'streaming' if streaming else 'plain'}) took {elapsed:.1f}s")
    return bodies


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_aiperf_sends_exactly_the_file_prompts(
    tmp_path: Path, openai_server: OpenAIServer, aiperf_tmpdir: Path, streaming: bool
) -> None:
    tokenizer = build_tokenizer_dir(tmp_path / "tokenizer")
    input_file = make_input(tmp_path)
    expected = read_texts(input_file)
    assert len(expected) == len(set(expected)) == 20, "prompts must be distinct"
    originals = read_texts(EXAMPLE)
    assert [text.split("\n", 1)[1] for text in expected] == originals

    bodies = run_aiperf(tmp_path, openai_server, aiperf_tmpdir, input_file, len(expected),
                        tokenizer, streaming)
    assert [body["messages"][0]["content"] for body in bodies] == expected
    for body in bodies:
        assert [m["role"] for m in body["messages"]] == ["user"]


def test_aiperf_sends_the_prefix_test_workload_as_written(
    tmp_path: Path, openai_server: OpenAIServer, aiperf_tmpdir: Path
) -> None:
    """synth prefix-test's default format loads in AIPerf as it is: every request
    carries its group's exact system prompt and echo task, in file order."""
    tokenizer = build_tokenizer_dir(tmp_path / "tokenizer")
    path = tmp_path / "prefix-test.jsonl"
    subprocess.run([sys.executable, "-m", "promptkit", "synth", "prefix-test", str(path),
                    "--groups", "4", "--group-size", "3", "--system-tokens", "64",
                    "--tokenizer", str(tokenizer), "--seed", "5"],
                   check=True, capture_output=True)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    bodies = run_aiperf(tmp_path, openai_server, aiperf_tmpdir, path, len(rows), tokenizer)
    assert [body["messages"] for body in bodies] == [row["messages"] for row in rows]
    assert len({body["messages"][0]["content"] for body in bodies}) == 4
