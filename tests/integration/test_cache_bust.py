"""``check --cache-bust`` predicts what the real AIPerf sends with its ``--cache-bust``.

The real ``aiperf profile`` sends each file, with each mode, to a real local HTTP
server (``tests/openai_server.py``) that runs a prefix cache of its own, written
apart from promptkit's: vLLM's rules over the tokens of each message's text, one
after another (what ``check --chat-template none`` counts). The server answers with
the very reply text ``check`` stands in for a reply (a word a token), so a
conversation's history is the same tokens on both sides. AIPerf's markers hold a
digest random for a run: the hit tokens must be ``check``'s exactly, and the prompt
tokens inside the range ``check`` gives for them.

Where AIPerf puts its markers (which message, which requests share one) is pinned by
comparing the request bodies AIPerf sent with the requests ``check`` builds.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
from helpers import write_jsonl
from openai_server import OpenAIServer
from test_aiperf_profile import aiperf_env, run_in_group
from tokenizer_dir import build_tokenizer_dir

from promptkit.core.tokenizers import load_tokenizer
from promptkit.text.prompts import Prompts

pytestmark = pytest.mark.aiperf

REPLY = 3  # every conversation turn's output_length: the server's reply, in tokens


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tokenizer, the reply text check stands in for a reply of REPLY tokens, and
    three files: shared system prompts in OpenAI messages (synth prefix-test),
    multi_turn conversations whose system turn AIPerf hoists, and single_turn lines
    AIPerf gives a system prompt file."""
    from click.testing import CliRunner

    from promptkit.cli import cli

    root = tmp_path_factory.mktemp("cache-bust")
    tok = build_tokenizer_dir(root / "tok")
    prompts = Prompts(load_tokenizer(str(tok)), "none", None)
    runner = CliRunner()
    groups = root / "groups.jsonl"
    made = runner.invoke(cli, ["synth", "prefix-test", str(groups), "--groups", "3",
                               "--group-size", "2", "--system-tokens", "80", "--tokenizer",
                               str(tok), "--seed", "3"])
    assert made.exit_code == 0, made.stderr
    sessions = write_jsonl(root / "sessions.jsonl", [
        {"session_id": f"s{i}", "turns": [
            {"role": "system", "text": "You answer questions about the weather, briefly."},
            {"text": f"Is it raining in city number {i} today?", "output_length": REPLY},
            {"text": "And tomorrow morning?", "output_length": REPLY}]} for i in range(3)])
    single = write_jsonl(root / "single.jsonl", [
        {"text": f"Question {i}: what is the capital of country {i}?"} for i in range(3)])
    system = root / "system.txt"
    system.write_text("You are a careful assistant who answers in one sentence.\n",
                      encoding="utf-8")
    return {"tok": tok, "reply": prompts.filler(REPLY), "root": root,
            "groups": (groups, "mooncake_trace"), "sessions": (sessions, "multi_turn"),
            "single": (single, "single_turn"), "system": system}


def aiperf(work: dict[str, Any], server: OpenAIServer, path: Path, kind: str, requests: int,
           warmup: int, extra: list[str]) -> None:
    run = Path(tempfile.mkdtemp(prefix="aiperf-cb-"))
    try:
        (run / "logs").mkdir()
        command = [
            str(aiperf_tool.executable()), "profile", "--model", "test-model",
            "--url", server.url, "--endpoint-type", "chat", "--input-file", str(path),
            "--custom-dataset-type", kind, "--dataset-sampling-strategy", "sequential",
            "--request-count", str(requests), "--concurrency", "1",
            "--tokenizer", str(work["tok"]), "--artifact-dir", str(run / "artifacts"),
            "--ui", "none", "--no-gpu-telemetry", "--no-server-metrics",
            "--extra-inputs", f"max_completion_tokens:{REPLY}", *extra]
        if warmup:
            command += ["--warmup-request-count", str(warmup)]
        returncode = run_in_group(command, run / "logs", aiperf_env(run / "tmp"), run)
        assert returncode == 0, (run / "logs" / "stderr.txt").read_text()[-3000:]
    finally:
        shutil.rmtree(run, ignore_errors=True)


def check(run, work: dict[str, Any], path: Path, mode: str, requests: int, warmup: int,
          extra: list[str], *more: str | Path) -> dict[str, Any]:
    result = run("check", path, "--tokenizer", work["tok"], "--json", "--no-manifest",
                 "--cache-bust", mode, "--requests", str(requests), "--warmup", str(warmup),
                 *extra, *more)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# (file, AIPerf's spelling of the mode, requests, warmup, with the system prompt file)
CASES = [
    ("groups", "none", 8, 2, False),
    ("groups", "system_prefix", 8, 2, False),
    ("groups", "system_suffix", 8, 0, False),
    ("groups", "first_turn_prefix", 9, 3, False),
    ("groups", "first_turn_suffix", 8, 0, False),
    ("groups", "warmup_isolation_system", 6, 3, False),
    ("sessions", "first_turn_prefix", 8, 1, False),
    ("sessions", "system_prefix", 6, 0, False),
    ("sessions", "warmup_isolation_first_turn", 6, 2, False),
    ("single", "system_prefix", 5, 1, True),
    ("single", "first_turn_suffix", 5, 1, True),
]
RID = re.compile(r"\[rid:[0-9a-f]{12}\]")


@pytest.mark.parametrize("name,mode,requests,warmup,system", CASES,
                         ids=[f"{c[0]}-{c[1]}-w{c[3]}" for c in CASES])
def test_check_predicts_what_aiperfs_markers_leave(run, work: dict[str, Any], name: str,
                                                   mode: str, requests: int, warmup: int,
                                                   system: bool) -> None:
    """The profiled requests' hit tokens exactly, their prompt tokens inside check's
    range (exactly, where no marker with a digest is sent); and which requests share
    a marker: a conversation instance's requests (one pass over the file), no others."""
    path, kind = work[name]
    extra = ["--system-prompt-file", str(work["system"])] if system else []
    with OpenAIServer(model="test-model", tokenizer=work["tok"], block_size=16,
                      completion=work["reply"]) as server:
        aiperf(work, server, path, kind, requests, warmup, ["--cache-bust", mode, *extra])
        profiled = server.cache_records()[warmup:]
        bodies = server.chat_requests()[warmup:]
    per_request = work["root"] / f"{name}-{mode}-w{warmup}.jsonl"
    report = check(run, work, path, mode, requests, warmup, extra, "--per-request",
                   per_request)
    assert len(profiled) == report["requests"] == requests
    hits = sum(r.cached_tokens for r in profiled)
    queries = sum(r.prompt_tokens for r in profiled)
    assert hits == report["hit_tokens"], report
    digests = [next(iter(RID.findall(json.dumps(b["messages"]))), "") for b in bodies]
    if mode == "none" or mode.startswith("warmup_"):
        assert queries == report["prompt_tokens"], report
        assert not any(digests)
        return
    low, high = report["cache_bust"]["prompt_tokens_range"]
    assert low <= queries <= high, (queries, report["cache_bust"])
    instances = [json.loads(line)["conversation"]
                 for line in per_request.read_text().splitlines()]
    assert all(digests)
    pairs = range(len(instances))
    assert ({(a, b) for a in pairs for b in pairs if digests[a] == digests[b]}
            == {(a, b) for a in pairs for b in pairs if instances[a] == instances[b]})


@pytest.mark.parametrize("warmup", [1, 2, 3])
def test_profiled_turns_follow_the_warmup_as_aiperf_draws_conversations(
        run, work: dict[str, Any], warmup: int) -> None:
    """After a warmup, AIPerf goes on with the next conversation the warmup did not
    draw (a conversation the warmup left unfinished is not continued); check replays
    the same turns in the same order."""
    path, kind = work["sessions"]
    with OpenAIServer(model="test-model", completion=work["reply"]) as server:
        aiperf(work, server, path, kind, 6, warmup, [])
        bodies = server.chat_requests()[warmup:]
    per_request = work["root"] / f"order-{warmup}.jsonl"
    check(run, work, path, "none", 6, warmup, [], "--per-request", per_request)
    firsts = [json.loads(line)["turns"][1]["text"] for line in path.read_text().splitlines()]
    sent = [(firsts.index(next(m["content"] for m in b["messages"] if m["role"] == "user")) + 1,
             sum(m["role"] == "user" for m in b["messages"])) for b in bodies]
    rows = [json.loads(line) for line in per_request.read_text().splitlines()]
    assert sent == [(row["record"], row["turn"]) for row in rows]
