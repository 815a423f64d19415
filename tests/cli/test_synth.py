"""promptkit synth prefix-test: G groups x S requests sharing exact system prompts."""

from __future__ import annotations

import json
from pathlib import Path

import aiperf_tool
import pytest
from helpers import read_jsonl

from promptkit.formats import FORMATS, READ_ONLY

ECHO = "Please echo the following word: "


def system_and_task(row: dict) -> tuple[str, str]:
    messages = row["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    return messages[0]["content"], messages[1]["content"]


def test_the_default_workload(tmp_path, run, cl100k):
    out = tmp_path / "pt.jsonl"
    result = run("synth", "prefix-test", out, "--seed", "7")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 16 * 8
    pairs = [system_and_task(row) for row in rows]
    systems = [s for s, _ in pairs]
    assert systems[:16] * 8 == systems  # interleaved: groups in turn
    assert len(set(systems)) == 16
    assert all(len(cl100k.encode_ordinary(s)) == 320 for s in set(systems))
    assert 1800 <= len(systems[0].encode()) <= 2600  # "about 2 KB of text"
    assert len({cl100k.encode_ordinary(s)[0] for s in set(systems)}) == 16
    words = {}
    for system, task in pairs:
        assert task.startswith(ECHO) and task[len(ECHO):].isalnum()
        words.setdefault(system, set()).add(task[len(ECHO):])
    assert all(len(w) == 1 for w in words.values())  # one word per group
    assert len({w for ws in words.values() for w in ws}) == 16  # a distinct word per group
    aiperf_tool.validate("MooncakeTrace", rows)

    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["inputs"] == []
    generator = manifest["generator"]
    assert generator["name"] == "prefix-test"
    assert generator["params"]["seed"] == 7 and generator["params"]["system_tokens"] == 320
    assert [g["tokens"] for g in generator["info"]["groups"]] == [320] * 16
    assert [g["word"] for g in generator["info"]["groups"]] == [
        task[len(ECHO):] for _, task in pairs[:16]]
    assert manifest["token_stats"]["system_prompts"]["distinct"] == 16
    assert manifest["aiperf"]["custom_dataset_type"] == "mooncake_trace"
    assert manifest["aiperf"]["distinct_records"] == 16


def test_same_seed_same_bytes_and_rebuild(tmp_path, run):
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    for path, seed in ((a, "3"), (b, "3"), (c, "4")):
        assert run("synth", "prefix-test", path, "--seed", seed, "--groups", "3").exit_code == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{a}.manifest.json", again)
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == a.read_bytes()
    assert run("verify", a).exit_code == 0


def test_grouped_order_exact_under_a_local_tokenizer(tmp_path, run, tokenizers):
    tok = tokenizers["local_bpe"]
    out = tmp_path / "pt.jsonl"
    result = run("synth", "prefix-test", out, "--groups", "3", "--group-size", "4",
                 "--system-tokens", "4096", "--tokenizer", tok.name, "--order", "grouped",
                 "--output-tokens", "8", "--seed", "1")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    systems = [system_and_task(row)[0] for row in rows]
    assert systems == [systems[0]] * 4 + [systems[4]] * 4 + [systems[8]] * 4
    assert len(set(systems)) == 3
    assert all(len(tok.encode(s)) == 4096 for s in systems)
    assert {row["output_length"] for row in rows} == {8}


AIPERF_MODELS = {"single_turn": "SingleTurn", "multi_turn": "MultiTurn",
                 "random_pool": "RandomPool", "mooncake_trace": "MooncakeTrace"}


#: Formats with no place for a prompt's text (lengths and hash ids, BurstGPT's
#: columns), and one promptkit only reads.
TEXTLESS = ("bailian_trace", "burst_gpt_trace")


@pytest.mark.parametrize("fmt", TEXTLESS)
def test_a_format_without_text_is_refused_in_one_line(fmt, tmp_path, run):
    out = tmp_path / "pt.jsonl"
    result = run("synth", "prefix-test", out, "--groups", "2", "--group-size", "2",
                 "--system-tokens", "50", "--to", fmt, "--seed", "2")
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: cannot write as {fmt}: {fmt} has no place for a "
                             f"prompt's text{result.stderr.split('text', 1)[1]}")
    assert len(result.stderr.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in (*TEXTLESS, *READ_ONLY)])
def test_every_format_holds_the_workload(fmt, tmp_path, run, cl100k):
    out = tmp_path / "pt.jsonl"
    result = run("synth", "prefix-test", out, "--groups", "2", "--group-size", "2",
                 "--system-tokens", "50", "--to", fmt, "--seed", "2")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 4
    if fmt in AIPERF_MODELS:
        aiperf_tool.validate(AIPERF_MODELS[fmt], rows)
    # read back in its own format: the same 2 prompts of exactly 50 tokens
    stats = run("stats", out, "--from", fmt, "--tokenizer", "cl100k_base", "--json")
    assert stats.exit_code == 0, stats.stderr
    summary = json.loads(stats.stdout)
    assert summary["records"] == 4
    if FORMATS[fmt].holds_system:
        assert [p["tokens"] for p in summary["system_prompts"]["most_shared"]] == [50, 50]
    else:  # the prompt, a blank line and the task, as one text
        for row in rows:
            text = json.dumps(row)
            assert ECHO in text
        texts = [r.get("text") or r.get("prompt") or r["texts"][0] for r in rows]
        prompts = {t.rsplit("\n\n", 1)[0] for t in texts}
        assert len(prompts) == 2
        assert all(len(cl100k.encode_ordinary(p)) == 50 for p in prompts)


@pytest.mark.parametrize(("args", "problem", "code"), [
    (["--system-tokens", "5"], "more than the target 5", 1),
    (["--tokenizer", "nope"], "unknown tokenizer 'nope'", 1),
    (["--filler-file", "/nowhere/words.txt"], "/nowhere/words.txt", 1),
    (["--groups", "0"], "--groups", 2),
    (["--system-tokens", "-3"], "--system-tokens", 2),
])
def test_bad_options_write_nothing(args, problem, code, tmp_path, run):
    result = run("synth", "prefix-test", tmp_path / "pt.jsonl", *args)
    assert result.exit_code == code, result.stderr
    assert problem in result.stderr
    if code == 1:
        assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
