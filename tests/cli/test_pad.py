"""promptkit pad: shared system prompts of exactly N tokens, under real tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit.core.errors import PadError
from promptkit.ops.padding import filler_words
from promptkit.text.exact import exact_text

bases = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=bases, extra=st.integers(0, 3000), seed=st.integers(0, 2**32),
       which=st.sampled_from(["cl100k_base", "local_bpe"]))
def test_a_pad_hits_its_target_exactly(base, extra, seed, which, tokenizers):
    tok = tokenizers[which]
    target = len(tok.encode(base)) + extra
    text = exact_text(base, target, tok, filler_words(seed))
    assert len(tok.encode(text)) == target
    assert text.startswith(base)


@pytest.mark.parametrize("which", ["cl100k_base", "local_bpe"])
@pytest.mark.parametrize("target", [4096, 32768, 131072])
def test_long_targets_are_exact_too(which, target, tokenizers):
    tok = tokenizers[which]
    text = exact_text("You are a helpful assistant.", target, tok, filler_words(7))
    assert len(tok.encode(text)) == target


def test_a_target_below_the_base_is_an_error(tokenizers):
    with pytest.raises(PadError, match="more than the target 2"):
        exact_text("a base of several tokens", 2, tokenizers["cl100k_base"], filler_words(1))


def test_filler_from_a_file(tmp_path, tokenizers):
    words = tmp_path / "words.txt"
    words.write_text("alpha beta gamma\ndelta")
    text = exact_text("Base.", 40, tokenizers["cl100k_base"], filler_words(0, str(words)))
    assert set(text.removeprefix("Base.").split()) <= {"alpha", "beta", "gamma", "delta"}


def chat_rows(n: int, system: str | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"question {i}"}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        rows.append({"messages": messages})
    return rows


def test_groups_are_exact_and_differ_at_their_first_token(tmp_path, run, cl100k):
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(8))
    out = tmp_path / "out.jsonl"
    result = run("pad", source, out, "--tokens", "300", "--tokenizer", "cl100k_base",
                 "--system-prompt", "You are terse.", "--groups", "4", "--seed", "2")
    assert result.exit_code == 0, result.stderr
    prompts = [row["messages"][0]["content"] for row in read_jsonl(out)]
    assert all(row["messages"][0]["role"] == "system" for row in read_jsonl(out))
    assert prompts[:4] == prompts[4:]  # round-robin
    assert len(set(prompts)) == 4
    assert all(len(cl100k.encode_ordinary(p)) == 300 for p in prompts)
    assert len({cl100k.encode_ordinary(p)[0] for p in prompts[:4]}) == 4
    info = json.loads(Path(f"{out}.manifest.json").read_text())["steps"][0]["info"]["groups"]
    assert [g["tokens"] for g in info] == [300] * 4
    import hashlib
    assert [g["sha256"] for g in info] == [hashlib.sha256(p.encode()).hexdigest()
                                           for p in prompts[:4]]


def test_group_by_a_field_keeps_equal_values_together(tmp_path, run):
    rows = [{"text": f"q{i}", "session_id": f"s{i % 3}"} for i in range(12)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert run("pad", source, out, "--tokens", "64", "--tokenizer", "cl100k_base",
               "--system-prompt", "Hi.", "--groups", "2", "--group-by", "session_id",
               "--into", "text", "--to", "single_turn").exit_code == 0
    by_session: dict[str, set[str]] = {}
    for row in read_jsonl(out):
        by_session.setdefault(row["session_id"], set()).add(row["text"].split("\n\n")[0][:2])
    assert all(len(v) == 1 for v in by_session.values())


def test_records_own_system_prompt_is_padded(tmp_path, run, cl100k):
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3, system="Be kind."))
    out = tmp_path / "out.jsonl"
    assert run("pad", source, out, "--tokens", "50", "--tokenizer", "cl100k_base").exit_code == 0
    for row in read_jsonl(out):
        assert row["messages"][0]["content"].startswith("Be kind.")
        assert len(cl100k.encode_ordinary(row["messages"][0]["content"])) == 50
        assert row["messages"][1]["content"].startswith("question")


def test_single_turn_into_text_and_into_file(tmp_path, run, cl100k, single_turn):
    text_out = tmp_path / "text.jsonl"
    assert run("pad", single_turn, text_out, "--tokens", "40", "--tokenizer", "cl100k_base",
               "--system-prompt", "Shared.", "--into", "text").exit_code == 0
    for row, original in zip(read_jsonl(text_out), read_jsonl(single_turn), strict=True):
        prompt, _, rest = row["text"].rpartition("\n\n")
        assert rest == original["text"] and len(cl100k.encode_ordinary(prompt)) == 40
    file_out = tmp_path / "file.jsonl"
    result = run("pad", single_turn, file_out, "--tokens", "40", "--tokenizer", "cl100k_base",
                 "--system-prompt", "Shared.", "--into", "file")
    assert result.exit_code == 0
    assert result.stderr.splitlines()[1:] == [  # after the line naming OUT and its manifest
        f"promptkit: wrote {file_out}.system.txt (AIPerf: --system-prompt-file "
        f"{file_out}.system.txt)"]
    assert read_jsonl(file_out) == read_jsonl(single_turn)
    system = Path(f"{file_out}.system.txt").read_text()
    assert len(cl100k.encode_ordinary(system)) == 40
    manifest = json.loads(Path(f"{file_out}.manifest.json").read_text())
    assert manifest["aiperf"]["args"][-2:] == ["--system-prompt-file", f"{file_out}.system.txt"]


def test_single_turn_cannot_hold_a_system_message(single_turn, tmp_path, run):
    result = run("pad", single_turn, tmp_path / "o.jsonl", "--tokens", "40", "--tokenizer",
                 "cl100k_base", "--system-prompt", "S.")
    assert result.exit_code == 1 and "system message" in result.stderr


def test_pad_then_nonce_at_user_keeps_the_prompt_shared(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(5))
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", source, "pad", "--tokens", "100", "--tokenizer", "cl100k_base",
               "--system-prompt", "S.", "--seed", "1", "nonce", "--at", "user", "--seed", "2",
               "write", out).exit_code == 0
    rows = read_jsonl(out)
    assert len({r["messages"][0]["content"] for r in rows}) == 1
    assert len({r["messages"][1]["content"] for r in rows}) == 5
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(("args", "problem"), [
    (["--tokens", "3", "--system-prompt", "a base that is longer than three tokens"],
     "more than the target 3"),
    (["--tokens", "50", "--system-prompt-file", "/nowhere/prompt.txt"], "/nowhere/prompt.txt"),
    (["--tokens", "50", "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
    (["--tokens", "50", "--groups", "9"], "--groups 9 is more than the 4 records"),
])
def test_bad_pad_input_is_one_line_exit_1_nothing_written(args, problem, tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(4))
    full = [*args]
    if "--tokenizer" not in full:
        full += ["--tokenizer", "cl100k_base"]
    if "--system-prompt" not in full and "--system-prompt-file" not in full:
        full += ["--system-prompt", "S."]
    result = run("pad", source, tmp_path / "out.jsonl", *full)
    assert result.exit_code == 1, result.stderr
    assert len(result.stderr.splitlines()) == 1 and problem in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("fmt", ["openai", "sharegpt", "multi_turn", "mooncake_trace"])
def test_formats_with_messages_get_a_system_message(fmt, tmp_path, run, cl100k):
    import aiperf_tool

    from promptkit.api import read_records

    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(4))
    out = tmp_path / "out.jsonl"
    result = run("pad", source, out, "--tokens", "77", "--tokenizer", "cl100k_base",
                 "--system-prompt", "You are exact.", "--groups", "2", "--to", fmt,
                 "--seed", "3")
    assert result.exit_code == 0, result.stderr
    records = list(read_records(str(out), fmt))
    for i, record in enumerate(records):
        assert [m.role for m in record.messages] == ["system", "user"]
        assert len(cl100k.encode_ordinary(record.messages[0].content)) == 77
        assert record.messages[1].content == f"question {i}"
    if fmt in ("multi_turn", "mooncake_trace"):
        model = "MultiTurn" if fmt == "multi_turn" else "MooncakeTrace"
        aiperf_tool.validate(model, read_jsonl(out))
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    groups = {g["sha256"] for g in manifest["steps"][0]["info"]["groups"]}
    written = manifest["token_stats"]["system_prompts"]["most_shared"]
    assert {p["sha256"] for p in written} == groups and len(groups) == 2
    assert [p["tokens"] for p in written] == [77, 77]


def test_own_prompts_from_stdin_are_listed_in_token_stats(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", chat_rows(3, system="Be kind."))
    result = run("pad", "-", "-", "--tokens", "30", "--tokenizer", "cl100k_base",
                 "--manifest", tmp_path / "m.json", input=source.read_text())
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "m.json").read_text())
    info = manifest["steps"][0]["info"]  # no groups: the prompts were not known before
    assert info == {"own_system_prompts": {"records": 3, "distinct": 1}}
    [prompt] = manifest["token_stats"]["system_prompts"]["most_shared"]
    assert prompt["records"] == 3 and prompt["tokens"] == 30


# ---------------------------------------------------------------- padding that shares nothing


def support_chats(n: int) -> list[dict]:
    """Chat requests as a support bot logs them: one system prompt, a question each."""
    return [{"messages": [
        {"role": "system", "content": "You are a support agent for Acme Cloud. Answer "
                                      "briefly and politely."},
        {"role": "user", "content": f"My VM vm-{i:04d} does not boot after the last "
                                    "update. What should I do?"}]} for i in range(n)]


TRAP = ("pad: the records' own system prompts are nearly all distinct (200 distinct in 200 "
        "records), so the padded prompts are too and hardly any request shares one with "
        "another")
ADVICE = ("put a nonce into each record's own system prompt: pad first, then 'nonce --at "
          "user', which keeps the padded prompt shared and every user turn unique")
PAD = ["--tokens", "48", "--tokenizer", "cl100k_base", "--seed", "2"]


def distinct_system_prompts(run, path: Path) -> int:
    result = run("stats", path, "--json")
    assert result.exit_code == 0, result.stderr
    return int(json.loads(result.stdout)["system_prompts"]["distinct"])


def test_nonce_then_pad_warns_and_says_to_pad_first(tmp_path, run):
    source = write_jsonl(tmp_path / "chats.jsonl", support_chats(200))
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", source, nonced, "--seed", "1").exit_code == 0
    padded = tmp_path / "padded.jsonl"
    result = run("pad", nonced, padded, *PAD)
    assert result.exit_code == 0, result.stderr
    assert distinct_system_prompts(run, padded) == 200  # the trap: 200 "shared" prompts
    manifest = json.loads(Path(f"{padded}.manifest.json").read_text())
    assert manifest["warnings"] == [
        f"{TRAP}; {nonced}.manifest.json says the input was made by 'nonce --at start', "
        f"which {ADVICE}"]
    assert f"promptkit: warning: {manifest['warnings'][0]}\n" in result.stderr
    assert manifest["steps"][0]["info"]["own_system_prompts"] == {"records": 200,
                                                                  "distinct": 200}

    padded_first = tmp_path / "padded-first.jsonl"  # the advice, followed
    assert run("pad", source, padded_first, *PAD).exit_code == 0
    done = tmp_path / "done.jsonl"
    result = run("nonce", padded_first, done, "--at", "user", "--seed", "1")
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert json.loads(Path(f"{padded_first}.manifest.json").read_text())["warnings"] == []
    assert distinct_system_prompts(run, done) == 1
    assert len({r["messages"][1]["content"] for r in read_jsonl(done)}) == 200


def test_the_same_warning_in_a_pipe_and_for_every_number_of_workers(small_chunks, tmp_path,
                                                                     run):
    source = write_jsonl(tmp_path / "chats.jsonl", support_chats(200))
    warnings = set()
    for workers in ("1", "2", "4"):
        out = tmp_path / f"out{workers}.jsonl"
        result = run("pipe", "read", "--workers", workers, source, "nonce", "--at", "system",
                     "--seed", "1", "pad", *PAD, "write", out)
        assert result.exit_code == 0, result.stderr
        warnings.add(tuple(json.loads(Path(f"{out}.manifest.json").read_text())["warnings"]))
    assert small_chunks == [2, 4]
    assert warnings == {(f"{TRAP}; an earlier stage of this pipe, 'nonce --at system', "
                         f"{ADVICE}",)}


def test_without_a_matching_manifest_the_warning_gives_no_advice(tmp_path, run):
    source = write_jsonl(tmp_path / "chats.jsonl", support_chats(200))
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", source, nonced, "--seed", "1").exit_code == 0
    with nonced.open("a") as f:  # changed since: its manifest no longer describes it
        f.write(json.dumps(support_chats(1)[0]) + "\n")
    result = run("pad", nonced, tmp_path / "padded.jsonl", *PAD)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("promptkit: warning: ") == 1
    assert ("pad: the records' own system prompts are nearly all distinct (201 distinct in "
            "201 records), so the padded prompts are too and hardly any request shares one "
            "with another\n") in result.stderr


@pytest.mark.parametrize(("prompts", "warns"), [
    (["same"] * 200, False),
    ([f"p{i}" for i in range(16)], False),  # few: a small file of its own prompts
    ([f"p{i}" for i in range(17)], True),
    ([f"p{i % 17}" for i in range(34)], False),  # each shared by two records
    ([f"p{i % 17}" for i in range(33)], True),
])
def test_the_warning_rule(prompts, warns):
    """More than 16 distinct prompts, and more than half as many as the records."""
    from promptkit.core.records import Message, Record
    from promptkit.ops.pad import PadState, pad_records

    state = PadState()
    records = [Record(messages=[Message("system", p), Message("user", "q")]) for p in prompts]
    assert len(list(pad_records(records, tokens=12, tokenizer="cl100k_base",
                                state=state))) == len(prompts)
    assert state.nearly_all_distinct() is warns
