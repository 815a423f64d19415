"""AIPerf's fixed schedule, as ``check`` predicts it and ``bench`` runs it.

AIPerf 0.13 replays a file on its fixed schedule by itself when it loads it as a
trace (``mooncake_trace``; not ``single_turn``, ``multi_turn`` or
``random_pool``) and the first line has a ``timestamp``
(``aiperf/config/flags/_converter_profiling.py``, ``_maybe_auto_promote_trace``);
``--fixed-schedule`` asks for it on any file whose first line has one,
``--no-fixed-schedule`` turns the promotion off. On a fixed schedule it sends
every line once and ignores ``--request-count`` (``aiperf/timing/phase/runner.py``
sets the phase's count to the dataset's turns); the conversations go in the
order of their first line's timestamp, ties in file order
(``aiperf/timing/strategies/fixed_schedule.py`` sorts them), each conversation's
lines in a row at concurrency 1; a warmup (``--warmup-request-count``) first
sends the first requests in file order (each conversation's lines in a row). A
conversation whose first line has no timestamp fails the run.

The order tests run the real ``aiperf profile`` against the local server that
records every request (``tests/openai_server.py``), and hold ``check``'s
per-request prediction to what arrived.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
import test_aiperf_profile
from helpers import read_jsonl, write_jsonl
from openai_server import OpenAIServer
from test_aiperf_profile import aiperf_env, run_in_group, tail
from test_bench import (
    base_settings,
    comparison,
    condition,
    explain,
    rate,
    run_bench,
    served,
    write_env,
)
from tokenizer_dir import build_tokenizer_dir

aiperf_tmpdir = test_aiperf_profile.aiperf_tmpdir  # the shared AIPerf temp-folder fixture

#: A trace of three conversations whose lines are out of time order: c (at 50), a (at
#: 100, and again at 400), b (at 150 and 200).
SESSIONS = [
    {"session_id": "a", "timestamp": 100, "text_input": "alpha one at one hundred"},
    {"session_id": "b", "timestamp": 150, "text_input": "bravo one at one fifty"},
    {"session_id": "a", "timestamp": 400, "text_input": "alpha two at four hundred"},
    {"session_id": "b", "timestamp": 200, "text_input": "bravo two at two hundred"},
    {"session_id": "c", "timestamp": 50, "text_input": "charlie one at fifty"},
]
#: Lines of one request each, two of them at the same time.
LINES = [
    {"timestamp": 300, "text": "line one at three hundred"},
    {"timestamp": 100, "text": "line two at one hundred"},
    {"timestamp": 200, "text": "line three at two hundred"},
    {"timestamp": 200, "text": "line four also at two hundred"},
]


def mooncake(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as mooncake_trace lines (a ``text`` becomes ``text_input``)."""
    return write_jsonl(path, [{"text_input": text_of(row), "output_length": 2,
                               **{k: v for k, v in row.items() if k not in ("text", "text_input")}}
                              for row in rows])


def single_turn(path: Path, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as single_turn lines (a ``text_input`` becomes ``text``)."""
    return write_jsonl(path, [{"text": text_of(row), "output_length": 2,
                               **{k: v for k, v in row.items() if k not in ("text", "text_input")}}
                              for row in rows])


def text_of(row: dict[str, Any]) -> str:
    return str(row["text_input"] if "text_input" in row else row["text"])


def predicted_texts(run: Any, path: Path, tmp_path: Path, *args: str) -> list[str]:
    """The text of each profiled request check predicts, in order (its own line's:
    the last message of a request that carries its conversation's history)."""
    rows = tmp_path / "per-request.jsonl"
    result = run("check", path, "--tokenizer", "cl100k_base", "--per-request", rows, *args)
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(path)
    return [text_of(lines[row["record"] - 1]) for row in read_jsonl(rows)]


def check_report(run: Any, path: Path, *args: str) -> dict[str, Any]:
    result = run("check", path, "--tokenizer", "cl100k_base", "--json", *args)
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


# -- check ---------------------------------------------------------------------------


def test_a_timed_trace_is_predicted_every_line_once_in_timestamp_order(tmp_path, run):
    path = mooncake(tmp_path / "trace.jsonl", LINES)
    assert predicted_texts(run, path, tmp_path) == [
        "line two at one hundred", "line three at two hundred",
        "line four also at two hundred", "line one at three hundred"]
    report = check_report(run, path)
    assert report["fixed_schedule"] is True
    assert (report["requests"], report["requests_per_pass"]) == (4, 4)
    shown = run("check", path, "--tokenizer", "cl100k_base")
    assert ("  schedule               AIPerf's fixed schedule: every line once, the "
            "conversations in the order of their timestamps") in shown.stdout.splitlines()


def test_requests_conflict_with_a_fixed_schedule(tmp_path, run):
    """AIPerf would ignore --request-count: a prediction of 2 requests is refused."""
    path = mooncake(tmp_path / "trace.jsonl", LINES)
    result = run("check", path, "--tokenizer", "cl100k_base", "--requests", "2")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "Error: --requests 2: AIPerf replays this file on its fixed schedule (every line "
        "once, in timestamp order) and ignores --request-count; leave --requests out, or "
        "predict a run in file order with --no-fixed-schedule")


def test_no_fixed_schedule_predicts_the_file_in_order(tmp_path, run):
    path = mooncake(tmp_path / "trace.jsonl", LINES)
    texts = [row["text"] for row in LINES]
    assert predicted_texts(run, path, tmp_path, "--no-fixed-schedule", "--requests", "6") == [
        *texts, *texts[:2]]
    report = check_report(run, path, "--no-fixed-schedule")
    assert report["fixed_schedule"] is False
    assert "  schedule" not in run("check", path, "--tokenizer", "cl100k_base",
                                   "--no-fixed-schedule").stdout


def test_single_turn_is_timed_only_when_asked(tmp_path, run):
    """AIPerf does not promote single_turn by itself; --fixed-schedule does."""
    path = single_turn(tmp_path / "st.jsonl", LINES)
    texts = [row["text"] for row in LINES]
    assert predicted_texts(run, path, tmp_path) == texts
    assert predicted_texts(run, path, tmp_path, "--fixed-schedule") == [
        texts[1], texts[2], texts[3], texts[0]]


def test_conversations_go_by_their_first_line_and_in_a_row(tmp_path, run):
    path = mooncake(tmp_path / "sessions.jsonl", SESSIONS)
    rows = tmp_path / "rows.jsonl"
    result = run("check", path, "--tokenizer", "cl100k_base", "--per-request", rows)
    assert result.exit_code == 0, result.stderr
    # c, then a (its second line, at 400, straight after its first), then b.
    assert [(row["record"], row["turn"]) for row in read_jsonl(rows)] == [
        (5, 1), (1, 1), (3, 2), (2, 1), (4, 2)]


def test_a_warmup_goes_first_in_file_order_and_is_sent_again(tmp_path, run):
    path = mooncake(tmp_path / "sessions.jsonl", SESSIONS)
    report = check_report(run, path, "--warmup", "3")
    assert (report["warmup"], report["requests"]) == (3, 5)
    assert report["requests_repeating_a_prompt"] == 3  # a's two lines and b's first
    assert "copies_for_distinct_prompts" not in report  # more copies would be sent too
    shown = run("check", path, "--tokenizer", "cl100k_base", "--warmup", "3")
    assert ("  repeated prompts       3 requests resend a warmup prompt: the fixed "
            "schedule sends every line after the warmup") in shown.stdout.splitlines()


def test_a_run_aiperf_refuses_is_refused(tmp_path, run):
    later = mooncake(tmp_path / "later.jsonl", [LINES[0], {"text_input": "no time"}])
    result = run("check", later, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr == (
        f"promptkit: {later}:2: no timestamp on the first line of a conversation: AIPerf's "
        "fixed schedule fails the run on it\n")
    assert run("check", later, "--tokenizer", "cl100k_base",
               "--no-fixed-schedule").exit_code == 0
    untimed = single_turn(tmp_path / "untimed.jsonl", [{"text": "a"}, {"text": "b"}])
    result = run("check", untimed, "--tokenizer", "cl100k_base", "--fixed-schedule")
    assert result.exit_code == 1
    assert result.stderr == (
        f"promptkit: {untimed}:1: --fixed-schedule: the first line has no timestamp, which "
        "AIPerf's fixed schedule needs (it refuses the run)\n")


def test_a_pipe_predicts_the_fixed_schedule_it_is_told_of(tmp_path, run):
    """A pipe's check cannot see the format its output is written in: --fixed-schedule
    tells it (the timestamps pass through to it)."""
    path = mooncake(tmp_path / "trace.jsonl", LINES)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", path, "check", "--tokenizer", "cl100k_base",
                 "--fixed-schedule", "--warmup", "1", "write", out)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    summary = next(step for step in manifest["steps"] if step["op"] == "check")["info"]["summary"]
    assert summary["fixed_schedule"] is True
    assert (summary["requests"], summary["requests_repeating_a_prompt"]) == (4, 1)
    refused = run("pipe", "read", path, "check", "--tokenizer", "cl100k_base",
                  "--fixed-schedule", "--requests", "2", "write", tmp_path / "out2.jsonl")
    assert refused.exit_code == 2
    assert not (tmp_path / "out2.jsonl").exists()


# -- the real AIPerf -----------------------------------------------------------------


def aiperf_sent(tmp_path: Path, tmpdir: Path, path: Path, kind: str, *args: str) -> list[str]:
    """The real ``aiperf profile`` on ``path``: the last message of every chat request
    the server received, in order."""
    tokenizer = build_tokenizer_dir(tmp_path / "tokenizer")
    logs = tmp_path / "logs"
    logs.mkdir()
    with OpenAIServer(model="test-model") as server:
        command = [str(aiperf_tool.executable()), "profile", "--model", "test-model",
                   "--url", server.url, "--endpoint-type", "chat", "--input-file", str(path),
                   "--custom-dataset-type", kind, "--concurrency", "1",
                   "--tokenizer", str(tokenizer), "--artifact-dir", str(tmp_path / "art"),
                   "--ui", "none", "--no-gpu-telemetry", "--no-server-metrics", *args]
        returncode = run_in_group(command, logs, aiperf_env(tmpdir), tmp_path)
        bodies = server.chat_requests()
    assert returncode == 0, tail(logs / "stderr.txt")
    return [body["messages"][-1]["content"] for body in bodies]


@pytest.mark.parametrize(("name", "rows", "kind", "aiperf_args", "check_args"), [
    # --request-count ignored; the warmup first, in file order (a's two lines).
    ("trace", SESSIONS, "mooncake_trace", ["--request-count", "2",
                                           "--warmup-request-count", "2"], ["--warmup", "2"]),
    ("trace, no fixed schedule", SESSIONS, "mooncake_trace",
     ["--no-fixed-schedule", "--request-count", "3"], ["--no-fixed-schedule", "--requests", "3"]),
    ("single_turn", LINES, "single_turn", ["--request-count", "3"], ["--requests", "3"]),
    ("single_turn, fixed schedule", LINES, "single_turn", ["--fixed-schedule"],
     ["--fixed-schedule"]),
])
def test_check_predicts_what_aiperf_sends(name, rows, kind, aiperf_args, check_args, tmp_path,
                                          run, aiperf_tmpdir):
    path = (mooncake if kind == "mooncake_trace" else single_turn)(tmp_path / "in.jsonl", rows)
    sent = aiperf_sent(tmp_path, aiperf_tmpdir, path, kind, *aiperf_args)
    warmup = int(check_args[check_args.index("--warmup") + 1]) if "--warmup" in check_args else 0
    # The warmup: the file's first requests, each conversation's lines in a row.
    conversations: dict[Any, list[str]] = {}
    for i, row in enumerate(read_jsonl(path)):
        conversations.setdefault(row.get("session_id", i), []).append(text_of(row))
    assert sent[:warmup] == [text for texts in conversations.values() for text in texts][:warmup]
    assert sent[warmup:] == predicted_texts(run, path, tmp_path, *check_args)


# -- bench ---------------------------------------------------------------------------


def timed_trace(tmp_path: Path) -> Path:
    """LINES as a nonce'd mooncake_trace (with its manifest)."""
    made = mooncake(tmp_path / "made.jsonl", LINES)
    path = tmp_path / "trace.jsonl"
    subprocess.run([sys.executable, "-m", "promptkit", "nonce", made, path, "--seed", "7"],
                   check=True, capture_output=True)
    return path


def dry_settings(tmp_path: Path, path: Path, **settings: Any) -> Path:
    return write_env(tmp_path / ".env", MODEL="m", URL="http://127.0.0.1:9", INPUT_FILE=path,
                     TOKENIZER=build_tokenizer_dir(tmp_path / "tok"), CHAT_TEMPLATE="none",
                     ARTIFACT_DIR=tmp_path / "artifacts", AIPERF="aiperf", **settings)


def test_bench_says_the_schedule_and_passes_it(tmp_path, aiperf_tmpdir):
    path = timed_trace(tmp_path)
    result = run_bench(tmp_path, aiperf_tmpdir, dry_settings(tmp_path, path), "--dry-run")
    assert result.returncode == 0, result.stderr
    args = shlex.split(result.stdout)
    assert "--fixed-schedule" in args and "--request-count" not in args
    assert (f"promptkit: schedule: fixed (--fixed-schedule): every line of {path} once, 4 "
            "requests, the conversations in the order of their timestamps"
            ) in result.stderr.splitlines()
    assert "promptkit: predicted prefix-cache hit rate" in result.stderr

    ignored = run_bench(tmp_path, aiperf_tmpdir,
                        dry_settings(tmp_path, path, REQUEST_COUNT=2), "--dry-run")
    assert (ignored.returncode, ignored.stdout) == (2, "")
    assert ignored.stderr == (
        f"promptkit: REQUEST_COUNT=2: AIPerf replays {path} on its fixed schedule, every line "
        "once (4 requests), and ignores --request-count; unset REQUEST_COUNT, or set "
        "FIXED_SCHEDULE=false for 2 requests in file order\n")

    in_order = run_bench(tmp_path, aiperf_tmpdir, dry_settings(
        tmp_path, path, REQUEST_COUNT=2, FIXED_SCHEDULE="false"), "--dry-run")
    assert in_order.returncode == 0, in_order.stderr
    args = shlex.split(in_order.stdout)
    assert "--no-fixed-schedule" in args and args[args.index("--request-count") + 1] == "2"
    assert ("promptkit: schedule: 2 requests in file order (--no-fixed-schedule), its "
            "timestamps not used") in in_order.stderr.splitlines()

    # AIPerf's own flag in AIPERF_ARGS is the choice (and is not given twice).
    given = run_bench(tmp_path, aiperf_tmpdir, dry_settings(
        tmp_path, path, REQUEST_COUNT=2, AIPERF_ARGS="--no-fixed-schedule"), "--dry-run")
    assert given.returncode == 0, given.stderr
    assert shlex.split(given.stdout).count("--no-fixed-schedule") == 1
    clash = run_bench(tmp_path, aiperf_tmpdir, dry_settings(
        tmp_path, path, FIXED_SCHEDULE="true", AIPERF_ARGS="--no-fixed-schedule"), "--dry-run")
    assert (clash.returncode, clash.stderr) == (
        2, "promptkit: FIXED_SCHEDULE=true and AIPERF_ARGS's --no-fixed-schedule disagree\n")


def test_bench_refuses_what_aiperf_would_refuse_or_repeat(tmp_path, aiperf_tmpdir):
    path = timed_trace(tmp_path)
    warm = run_bench(tmp_path, aiperf_tmpdir,
                     dry_settings(tmp_path, path, WARMUP_REQUEST_COUNT=1), "--dry-run")
    assert warm.returncode == 1
    assert warm.stderr == (
        f"promptkit: 5 requests (1 warmup, then every line of {path} once on AIPerf's fixed "
        "schedule), but it has only 4 distinct records: 1 request would resend a prompt that "
        "hits the prefix cache. Set WARMUP_REQUEST_COUNT=0, make the lines distinct "
        "(promptkit nonce), or pass --allow-repeats (ALLOW_REPEATS=true)\n")
    untimed = single_turn(tmp_path / "untimed.jsonl", [{"text": "a"}, {"text": "b"}])
    refused = run_bench(tmp_path, aiperf_tmpdir,
                        dry_settings(tmp_path, untimed, FIXED_SCHEDULE="true"), "--dry-run")
    assert (refused.returncode, refused.stderr) == (
        2, f"promptkit: FIXED_SCHEDULE: the first line of {untimed} has no timestamp, which "
           "AIPerf's fixed schedule needs (it refuses the run)\n")


def test_bench_runs_a_timed_trace_on_its_schedule_as_predicted(tmp_path, aiperf_tmpdir):
    """The real run: every line once in timestamp order, the hits exactly as predicted."""
    path = timed_trace(tmp_path)
    tokenizer = build_tokenizer_dir(tmp_path / "tok")
    artifacts = tmp_path / "artifacts"
    with OpenAIServer(model="test-model", tokenizer=tokenizer) as server:
        env_file = write_env(tmp_path / ".env", **base_settings(server, tokenizer, artifacts),
                             INPUT_FILE=path, RESET_CACHE="vllm")
        result = run_bench(tmp_path, aiperf_tmpdir, env_file)
        why = explain(result, server, artifacts)
        sent = [body["messages"][-1]["content"] for body in server.chat_requests()]
        records = server.cache_records()
    assert result.returncode == 0, why
    lines = read_jsonl(path)
    assert sent == [lines[i]["text_input"] for i in (1, 2, 3, 0)], why
    cond = condition(artifacts)
    assert cond["fixed_schedule"] is True and "--fixed-schedule" in cond["aiperf_command"]
    hits, queries = served(records)
    block = cond["prefix_cache"]
    assert (block["predicted_hits"], block["predicted_queries"]) == (hits, queries)
    assert (block["measured_hits"], block["measured_queries"]) == (hits, queries)
    assert comparison(result.stderr).endswith(f", as predicted ({100 * rate(hits, queries):.2f}%)")
