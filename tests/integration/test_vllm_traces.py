"""On the real vLLM engine: a Bailian trace promptkit wrote, sent by the real ``aiperf
profile``, hits what ``check`` predicts.

AIPerf 0.13 makes each hash id 16 tokens of its own text (the same text wherever the id
is), replays the trace on its fixed schedule, and sends a session's later turn after
its earlier turns and the server's replies. vLLM 0.32 (CPU build, tiny random-weight
Llama, block size 32; ``tests/vllm_engine.py``) caches blocks of 32 tokens: two hash
ids a block. ``check`` is given the server's block (``--block-size 32``) and takes the
hash ids' 16 tokens from the file's manifest. The model is held to whole-word tokens
(``allowed_token_ids``), so its replies come back as the tokens it generated, as a
trained model's do, and each request generates its line's ``output_length``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_vllm_sessions import whole_word_replies
from vllm_engine import VllmServer, run_profile

SAMPLE = Path(__file__).resolve().parents[2] / "prompts" / "bailian-trace-sample.jsonl"


def promptkit(*args: str | Path) -> str:
    return subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("nonced", [False, True])
def test_a_bailian_trace_promptkit_wrote_hits_what_check_predicts(
        vllm_server: VllmServer, tmp_path: Path, nonced: bool) -> None:
    path = tmp_path / "bailian.jsonl"
    if nonced:
        promptkit("nonce", SAMPLE, path, "--seed", "4")
    else:
        promptkit("pipe", "read", SAMPLE, "write", path)
    made = json.loads(Path(f"{path}.manifest.json").read_text(encoding="utf-8"))
    assert made["aiperf"]["args"][2:] == ["--custom-dataset-type", "bailian_trace",
                                          "--isl-block-size", "16"]
    report: dict[str, Any] = json.loads(promptkit(
        "check", path, "--json", "--tokenizer", vllm_server.tokenizer, "--chat-template", "hf",
        "--block-size", str(vllm_server.block_size)))
    assert report["hash_block_size"] == 16 and report["fixed_schedule"]
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    hits, queries, _ = run_profile(vllm_server, path, requests=len(lines), output_tokens=None,
                                   generated=sum(r["output_length"] for r in lines),
                                   extra_args=whole_word_replies(vllm_server))
    assert (hits, queries) == (report["hit_tokens"], report["prompt_tokens"]), report
    assert report["within_conversation_hit_tokens"] > 0  # the history, sent again, hits
    if nonced:
        assert report["cross_conversation_hit_tokens"] == 0
