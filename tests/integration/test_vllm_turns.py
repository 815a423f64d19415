"""On the real vLLM engine: what ``promptkit turns`` makes of a ShareGPT file is sent by
the real ``aiperf profile`` and served as written, in all three modes.

The requests are made under the served model's own tokenizer, so each one's
``output_length`` is its recorded reply's length in the model's tokens. vLLM
(``ignore_eos``) then generates exactly that many tokens a request: its
``generation_tokens`` counter must equal the sum of the file's output lengths,
and every request must finish at its length. For the one-request modes, the
prompt tokens vLLM counted must equal what ``check`` predicts of the same file
under the model's chat template.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_jsonl
from vllm_engine import VllmServer, run_profile

SAMPLE = Path(__file__).resolve().parents[2] / "prompts" / "sharegpt-sample.json"


def promptkit(*args: str | Path) -> str:
    return subprocess.run([sys.executable, "-m", "promptkit", *map(str, args)], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("mode", ["first", "each", "history"])
def test_turns_output_is_served_as_written(mode: str, vllm_server: VllmServer,
                                           tmp_path: Path) -> None:
    path = tmp_path / f"{mode}.jsonl"
    promptkit("turns", SAMPLE, path, "--mode", mode, "--tokenizer", vllm_server.tokenizer)
    rows = read_jsonl(path)
    if mode == "each":
        lengths = [t["output_length"] for r in rows for t in r["turns"] if "output_length" in t]
    else:
        lengths = [r["output_length"] for r in rows]
    report = json.loads(promptkit("check", path, "--tokenizer", vllm_server.tokenizer,
                                  "--chat-template", "hf", "--block-size",
                                  str(vllm_server.block_size), "--json"))
    assert report["requests"] == len(lengths)
    _, queries, _ = run_profile(vllm_server, path, requests=len(lengths), output_tokens=None,
                                generated=sum(lengths))
    if mode != "each":  # the replies AIPerf sends back in later turns are the model's own
        assert queries == report["prompt_tokens"], report
