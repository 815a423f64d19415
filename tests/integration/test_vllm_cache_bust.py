"""On the real vLLM engine: ``check --cache-bust`` predicts AIPerf's own cache busting.

``synth prefix-test`` (4 groups of 4 requests sharing a system prompt) sent by the
real ``aiperf profile`` with its ``--cache-bust``, to vLLM 0.32 (CPU build, block
size 32; ``tests/vllm_engine.py``): the engine's hit tokens must be ``check``'s
exactly; its prompt tokens, which hold markers of a digest random for the run,
inside the range ``check`` gives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from vllm_engine import VllmServer, run_profile


@pytest.fixture(scope="module")
def groups(vllm_server: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bust") / "groups.jsonl"
    subprocess.run([sys.executable, "-m", "promptkit", "synth", "prefix-test", str(path),
                    "--groups", "4", "--group-size", "4", "--tokenizer",
                    str(vllm_server.tokenizer), "--seed", "3"], check=True, capture_output=True)
    return path


def check(server: VllmServer, path: Path, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "promptkit", "check", str(path), "--json", "--tokenizer",
         str(server.tokenizer), "--chat-template", "hf", "--block-size",
         str(server.block_size), "--cache-bust", mode], check=True, capture_output=True,
        text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["none", "system_prefix", "first_turn_prefix",
                                  "system_suffix"])
def test_cache_bust_is_predicted(vllm_server: VllmServer, groups: Path, mode: str) -> None:
    report = check(vllm_server, groups, mode)
    hits, queries, _ = run_profile(vllm_server, groups, requests=16,
                                   extra_args=["--cache-bust", mode])
    assert hits == report["hit_tokens"], report
    if mode == "none":
        assert queries == report["prompt_tokens"]
    else:
        low, high = report["cache_bust"]["prompt_tokens_range"]
        assert low <= queries <= high, (queries, report["cache_bust"])
    if mode == "system_prefix":
        assert hits == 0
    if mode == "first_turn_prefix":  # the shared system prompts come before the marker
        assert hits > 0
