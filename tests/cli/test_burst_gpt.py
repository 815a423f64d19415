"""BurstGPT traces written as AIPerf 0.13 loads them (``burst_gpt_trace``: a CSV), held
to its own loader (``tests/aiperf_tool.py``).

The input has the public trace's shape (github.com/HPMLL/BurstGPT, ``BurstGPT_1.csv``:
``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``, timestamps in
seconds, whole and not).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiperf_tool
import pytest
from helpers import write_jsonl

BURST = ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
         "5,ChatGPT,472,18,490,Conversation log\n"
         "45,ChatGPT,1087,252,1339,Conversation log\n"
         "118.5,GPT-4,417,276,693,API log\n"
         "118.75,ChatGPT,1,9,10,Conversation log\n")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizer_dir import build_tokenizer_dir

    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "bpe")


def test_a_burstgpt_csv_is_written_as_aiperf_loads_it(tmp_path, run, tokenizer):
    source = tmp_path / "BurstGPT_1.csv"
    source.write_text(BURST, encoding="utf-8")
    out = tmp_path / "burst.csv"
    result = run("pipe", "read", source, "write", "--to", "burst_gpt_trace", out)
    assert result.exit_code == 0, result.stderr
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == BURST.splitlines()[0]  # every column kept
    assert text.splitlines()[3] == "113.5,GPT-4,417,276,693,API log"  # from the first row's
    sessions = aiperf_tool.load_dataset("burst_gpt_trace", out, tokenizer)
    rows = [line.split(",") for line in BURST.splitlines()[1:]]
    assert [[(t["timestamp"], t["input_length"], t["output_length"]) for t in s]
            for s in sessions] == [[((float(r[0]) - 5) * 1000, int(r[2]), int(r[3]))]
                                   for r in rows]
    made = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    assert made["aiperf"]["args"] == ["--input-file", str(out), "--custom-dataset-type",
                                      "burst_gpt_trace", "--fixed-schedule"]
    again = tmp_path / "again.csv"
    assert run("pipe", "read", out, "write", "--to", "burst_gpt_trace", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_lengths_of_a_mooncake_trace_become_rows(tmp_path, run, tokenizer):
    rows = [{"timestamp": 0, "input_length": 40, "output_length": 5},
            {"timestamp": 1250, "input_length": 90, "output_length": 7}]
    out = tmp_path / "burst.csv"
    result = run("pipe", "read", write_jsonl(tmp_path / "t.jsonl", rows), "write", "--to",
                 "burst_gpt_trace", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_text(encoding="utf-8") == ("Timestamp,Request tokens,Response tokens\n"
                                               "0,40,5\n1.25,90,7\n")
    [[first], [second]] = aiperf_tool.load_dataset("burst_gpt_trace", out, tokenizer)
    assert (second["timestamp"], second["input_length"]) == (1250, 90)


@pytest.mark.parametrize(("row", "problem"), [
    ({"input_length": 40, "hash_ids": [1, 2]}, "no place for hash ids"),
    ({"session_id": "a", "input_length": 40}, "no place for a session"),
    ({"text_input": "hello"}, "no place for a prompt's text"),
])
def test_what_a_burstgpt_row_cannot_hold_is_refused(tmp_path, run, row, problem):
    source = write_jsonl(tmp_path / "t.jsonl", [{"timestamp": 0, "output_length": 4, **row}])
    out = tmp_path / "burst.csv"
    result = run("pipe", "read", source, "write", "--to", "burst_gpt_trace", out)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:1: cannot write as "
                                    "burst_gpt_trace:"), result.stderr
    assert problem in result.stderr and not out.exists()
