"""promptkit fit: every user text exactly N tokens, under real tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit.ops.fit import fit_text
from promptkit.ops.padding import filler_words

texts = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
    # long natural-looking texts, so cutting is exercised as often as filling
    st.lists(st.sampled_from(["the", "cat", "sat", "naïve", "東京", "🙂", "\n", "x1", "  ",
                              "don't", "3.14", "!!"]), max_size=600).map(" ".join),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, target=st.integers(1, 700), seed=st.integers(0, 2**32),
       which=st.sampled_from(["cl100k_base", "local_bpe"]))
def test_a_fitted_text_has_exactly_its_target(text, target, seed, which, tokenizers):
    tok = tokenizers[which]
    fitted = fit_text(text, target, tok, filler_words(seed))
    assert len(tok.encode(fitted)) == target
    if len(tok.encode(text)) <= target:
        assert fitted.startswith(text)  # filled out: the text is all there
    else:
        assert len(fitted) < len(text) + 64  # cut: no long tail of filler


@pytest.mark.parametrize("which", ["cl100k_base", "local_bpe"])
def test_long_texts_cut_and_fill_exactly(which, tokenizers):
    tok = tokenizers[which]
    long = "Summarize the following report. " + "The committee met on Tuesday. " * 3000
    for target in (1, 2048, 8192, 40000):
        fitted = fit_text(long, target, tok, filler_words(3))
        assert len(tok.encode(fitted)) == target
    cut = fit_text(long, 2048, tok, filler_words(3))
    assert long.startswith(cut[:-40])  # a cut keeps the start of the text


def rows(n: int) -> list[dict]:
    return [{"text": f"Question {i}: " + "why is the sky blue? " * (i % 7)} for i in range(n)]


def test_fit_a_file_to_a_fixed_length(tmp_path, run, cl100k):
    source = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    result = run("fit", source, out, "--tokens", "24", "--tokenizer", "cl100k_base", "--seed", "4")
    assert result.exit_code == 0, result.stderr
    fitted = read_jsonl(out)
    assert [len(cl100k.encode_ordinary(r["text"])) for r in fitted] == [24] * 30
    for before, after in zip(rows(30), fitted, strict=True):
        assert after["text"][:10] == before["text"][:10]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["steps"] == [{"op": "fit", "params": {
        "tokens": 24, "tokenizer": "cl100k_base", "seed": 4, "filler_file": None}}]
    stats = manifest["token_stats"]
    assert stats["tokenizer"] == "cl100k_base"
    assert stats["prompt_tokens"]["min"] == stats["prompt_tokens"]["max"] == 24
    assert stats["prompt_tokens"]["total"] == 24 * 30


def test_a_range_is_drawn_per_record_from_the_seed(tmp_path, run, cl100k):
    source = write_jsonl(tmp_path / "in.jsonl", rows(200))
    lengths = {}
    for seed in ("1", "1", "2"):
        out = tmp_path / f"out{seed}.jsonl"
        assert run("fit", source, out, "--tokens", "10,60", "--tokenizer", "cl100k_base",
                   "--seed", seed).exit_code == 0
        lengths.setdefault(seed, []).append(
            [len(cl100k.encode_ordinary(r["text"])) for r in read_jsonl(out)])
    first, again = lengths["1"]
    assert first == again
    assert first != lengths["2"][0]
    assert min(first) >= 10 and max(first) <= 60 and len(set(first)) > 30


def test_a_column_gives_each_record_its_own_length(tmp_path, run, tokenizers):
    tok_dir = tokenizers["local_bpe"].name
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "hello " * 50}], "want": n}
        for n in (3, 17, 90)])
    out = tmp_path / "out.jsonl"
    result = run("fit", source, out, "--tokens", "want", "--tokenizer", tok_dir, "--seed", "1")
    assert result.exit_code == 0, result.stderr
    tok = tokenizers["local_bpe"]
    for row, n in zip(read_jsonl(out), (3, 17, 90), strict=True):
        assert row["messages"][0]["content"] == "Be brief."  # only user text is fitted
        assert len(tok.encode(row["messages"][1]["content"])) == n
        assert row["want"] == n


def test_every_user_turn_and_text_parts(tmp_path, run, cl100k):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"session_id": "a", "turns": [{"text": "first"}, {"texts": ["second turn"]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]},
    ])
    out = tmp_path / "out.jsonl"
    assert run("fit", source, out, "--from", "multi_turn", "--tokens", "12", "--tokenizer",
               "cl100k_base", "--skip-invalid").exit_code == 0
    [conversation] = read_jsonl(out)  # the OpenAI line is not multi_turn: skipped
    texts = [conversation["turns"][0]["text"], conversation["turns"][1]["texts"][0]]
    assert [len(cl100k.encode_ordinary(t)) for t in texts] == [12, 12]
    chat = tmp_path / "chat.jsonl"
    write_jsonl(chat, read_jsonl(source)[1:])
    out2 = tmp_path / "out2.jsonl"
    assert run("fit", chat, out2, "--tokens", "9", "--tokenizer", "cl100k_base").exit_code == 0
    [row] = read_jsonl(out2)
    parts = row["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}
    assert len(cl100k.encode_ordinary(parts[0]["text"])) == 9


def test_fit_then_nonce_and_rebuild(tmp_path, run, cl100k):
    source = write_jsonl(tmp_path / "in.jsonl", rows(12))
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", source, "fit", "--tokens", "40", "--tokenizer", "cl100k_base",
               "--seed", "3", "nonce", "--seed", "5", "write", out).exit_code == 0
    texts = [r["text"] for r in read_jsonl(out)]
    assert len(set(texts)) == 12
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    # the nonce is counted too: the statistics are those of the written file
    counts = [len(cl100k.encode_ordinary(t)) for t in texts]
    assert min(counts) > 40
    figures = manifest["token_stats"]["prompt_tokens"]
    assert (figures["min"], figures["max"], figures["total"]) == (
        min(counts), max(counts), sum(counts))
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(("rows_", "args", "problem"), [
    ([{"text": "a", "n": 3}, {"text": "b"}], ["--tokens", "n"],
     ":2: no 'n' to take the token count from"),
    ([{"text": "a", "n": "x"}], ["--tokens", "n"], ":1: 'n' is 'x', not a positive integer"),
    ([{"text": "a"}, {"input_length": 5, "hash_ids": [1]}], ["--tokens", "4", "--from",
     "mooncake_trace"], ":1: mooncake_trace:"),
    ([{"input_length": 5, "hash_ids": [1]}], ["--tokens", "4"],
     ":1: a record with only input_length/hash_ids has no text to fit"),
    ([{"text": "a"}], ["--tokens", "4", "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
    ([{"text": "a"}], ["--tokens", "4", "--filler-file", "/nowhere/w.txt"], "/nowhere/w.txt"),
])
def test_bad_fit_input_is_one_line_exit_1_nothing_written(rows_, args, problem, tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", rows_)
    (tmp_path / "out.jsonl").write_text("old\n")
    full = args if "--tokenizer" in args else [*args, "--tokenizer", "cl100k_base"]
    result = run("fit", source, tmp_path / "out.jsonl", *full)
    assert result.exit_code == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and problem in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]
    assert (tmp_path / "out.jsonl").read_text() == "old\n"


def test_a_pipe_stage_error_is_one_line_too(tmp_path, run, single_turn):
    result = run("pipe", "read", single_turn, "fit", "--tokens", "5", "--tokenizer", "nope",
                 "write", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith("promptkit: unknown tokenizer 'nope'")
    assert len(result.stderr.splitlines()) == 1
