"""The real ``aiperf profile`` sends what ``promptkit turns`` wrote, in all three modes.

AIPerf loads each output with the arguments of its manifest and sends it to a real
OpenAI-compatible HTTP server on 127.0.0.1 (``tests/openai_server.py``), which
records every request body. The tests assert the messages AIPerf sent, the tools,
and that each request asks for exactly its recorded reply's length
(``max_completion_tokens`` = ``output_length``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl
from test_aiperf_profile import aiperf_tmpdir, openai_server, run_aiperf  # noqa: F401
from test_turns import SHAREGPT, TOOL_CALLS
from tokenizer_dir import build_tokenizer_dir

SAMPLE = Path(__file__).resolve().parents[2] / "prompts" / "sharegpt-sample.json"


def make(run, tmp_path: Path, source: Path, mode: str) -> tuple[Path, list[dict]]:
    out = tmp_path / f"{mode}.jsonl"
    result = run("turns", source, out, "--mode", mode, "--tokenizer", "cl100k_base")
    assert result.exit_code == 0, result.stderr
    return out, read_jsonl(out)


@pytest.mark.parametrize("mode", ["first", "history"])
def test_one_request_a_conversation(mode, run, tmp_path, openai_server, aiperf_tmpdir):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", SHAREGPT + TOOL_CALLS)
    path, rows = make(run, tmp_path, source, mode)
    bodies = run_aiperf(tmp_path, openai_server, aiperf_tmpdir, path, len(rows),
                        build_tokenizer_dir(tmp_path / "tokenizer"))
    assert [b["messages"] for b in bodies] == [r["messages"] for r in rows]
    assert [b["max_completion_tokens"] for b in bodies] == [r["output_length"] for r in rows]
    assert [b.get("tools") for b in bodies] == [r.get("tools") for r in rows]
    assert bodies[-1]["tools"][0]["function"]["name"] == "generate_password"


def test_each_mode_sends_a_session_a_conversation(run, tmp_path, openai_server,  # noqa: F811
                                                  aiperf_tmpdir):  # noqa: F811
    path, rows = make(run, tmp_path, SAMPLE, "each")
    turns = [turn for row in rows for turn in row["turns"] if turn.get("role") != "system"]
    bodies = run_aiperf(tmp_path, openai_server, aiperf_tmpdir, path, len(turns),
                        build_tokenizer_dir(tmp_path / "tokenizer"))
    assert [b["messages"][-1]["content"] for b in bodies] == [t["text"] for t in turns]
    assert [b["max_completion_tokens"] for b in bodies] == [t["output_length"] for t in turns]
    # Later turns carry the history: the earlier user turns and the server's replies.
    sent = 0
    for row in rows:
        users = [t for t in row["turns"] if t.get("role") != "system"]
        system = [t for t in row["turns"] if t.get("role") == "system"]
        for k in range(len(users)):
            messages = bodies[sent + k]["messages"]
            assert [m["role"] for m in messages] == (
                ["system"] * len(system) + ["user", "assistant"] * k + ["user"])
            assert [m["content"] for m in messages if m["role"] == "user"] == [
                t["text"] for t in users[:k + 1]]
        sent += len(users)
    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    assert manifest["aiperf"]["custom_dataset_type"] == "multi_turn"
