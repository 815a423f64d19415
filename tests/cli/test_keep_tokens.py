"""nonce --keep-tokens: the nonce's tokens come out of the end of the last user text, so
every prompt has exactly as many tokens as before, under real tokenizers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from promptkit import add_nonces
from promptkit.core.errors import InvalidRecordError
from promptkit.core.records import USER_ROLES, Message, Record, message_texts
from promptkit.ops.nonce import KINDS, NonceMaker, NonceState

START = "2026-11-24T00:00:00Z"

texts = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300),
    # natural-looking texts, long enough to give up a nonce's tokens most of the time
    st.lists(st.sampled_from(["the", "cat", "sat", "naïve", "東京", "🙂", "\n", "x1", "  ",
                              "don't", "3.14", "!!", "ÅÄÖ", "tab\t"]),
             min_size=20, max_size=400).map(" ".join),
)


def tokens_of(record: Record, tok) -> int:
    return sum(len(tok.encode(t)) for t in message_texts(record))


def last_user(record: Record) -> Message:
    return [m for m in record.messages if m.role in USER_ROLES][-1]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(system=st.one_of(st.none(), texts), turns=st.lists(texts, min_size=1, max_size=3),
       kind=st.sampled_from(KINDS), at=st.sampled_from(["start", "user", "every-turn", "system"]),
       which=st.sampled_from(["cl100k_base", "local_bpe"]), seed=st.integers(0, 2**32),
       index=st.integers(0, 10**6), copies=st.sampled_from([1, 2]))
def test_every_prompt_keeps_its_token_count(system, turns, kind, at, which, seed, index,
                                            copies, tokenizers):
    tok = tokenizers[which]
    messages = [Message("system", system)] if system is not None else []
    for i, turn in enumerate(turns):  # user, assistant, user, ...: the last is a user's
        messages.append(Message("assistant" if i % 2 else "user", turn))
    if messages[-1].role != "user":
        messages.append(Message("user", turns[-1]))
    original = [m.content for m in messages]
    record = Record(messages=[Message(m.role, m.content) for m in messages], index=index,
                    lineno=index + 1)
    before = tokens_of(record, tok)
    state = NonceState()
    try:
        out = list(add_nonces([record], kind=kind, seed=seed, at=at, start_time=START,
                              copies=copies, tokenizer=tok.name, keep_tokens=True, state=state))
    except InvalidRecordError as exc:  # only when the last user text cannot give enough
        event("too short")
        assert "too short to give up" in exc.problem and exc.lineno == index + 1
        own = len(tok.encode(original[-1]))
        give = int(exc.problem.split("give up ")[1].split()[0])
        assert own <= give + 8
        return
    event("kept")
    assert len(out) == copies
    assert list(state.tokens_before) == [before] * copies
    maker = NonceMaker(kind, seed, start_time=START)
    # The message (of the original ones) whose text the nonce starts; every-turn: see below.
    marked = {"start": 0, "system": 0 if system is not None else None,
              "user": int(system is not None)}.get(at)
    for c, nonced in enumerate(out):
        assert tokens_of(nonced, tok) == before
        n = index * copies + c

        def prefix(i: int, n: int = n) -> str:  # the nonce text message i got, if any
            if at == "every-turn" and (i == 0 or messages[i].role == "user"):
                return maker.make(n, i) + "\n"
            if i == marked:
                return maker.make(n) + "\n"
            return ""

        contents = [m.content for m in nonced.messages]
        if at == "system" and system is None:  # a system message was made for the nonce
            assert contents[0] == maker.make(n)
            contents = contents[1:]
        assert len(contents) == len(original)
        for i, (now, then) in enumerate(zip(contents[:-1], original[:-1], strict=True)):
            assert now == prefix(i) + then
        # The last user text: its nonce (if it got one) whole, then the start of its own
        # text, then at most a few tokens that make the count exact.
        last = contents[-1]
        assert last.startswith(prefix(len(contents) - 1))
        last = last[len(prefix(len(contents) - 1)):]
        common = os.path.commonprefix([last, original[-1]])
        assert common  # something of the text itself is left
        assert len(tok.encode(last[len(common):])) <= 8


@pytest.mark.parametrize("which", ["cl100k_base", "local_bpe"])
@pytest.mark.parametrize("at", ["start", "user", "every-turn", "system", "salt"])
def test_long_prompts_keep_their_count_at_every_position(which, at, tokenizers):
    tok = tokenizers[which]
    records = [Record(messages=[Message("system", "You are terse."),
                                Message("user", f"Question {i}: " + "why is the sky blue? " * 40)],
                      index=i) for i in range(20)]
    before = [tokens_of(r, tok) for r in records]
    for kind in KINDS:
        out = list(add_nonces([Record(messages=[Message(m.role, m.content) for m in r.messages],
                                      index=r.index) for r in records],
                              kind=kind, seed=3, at=at, start_time=START, tokenizer=tok.name,
                              keep_tokens=True))
        assert [tokens_of(r, tok) for r in out] == before
        if at == "salt":  # costs no prompt tokens: nothing is cut
            assert [r.messages[1].content for r in out] == [r.messages[1].content
                                                            for r in records]
        else:
            assert len({r.messages[-1].content[:40] for r in out}) == 20


def test_content_parts_give_up_tokens_from_their_last_text(tokenizers):
    tok = tokenizers["cl100k_base"]
    long = "Describe the picture in detail, please. " * 20
    records = [
        Record(messages=[Message("user", [{"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": long}])]),
        Record(messages=[Message(None, [{"name": "q", "contents": ["short", long]}])]),
        Record(messages=[Message("user", ["first part", long])]),
    ]
    before = [tokens_of(r, tok) for r in records]
    out = list(add_nonces(records, seed=1, tokenizer="cl100k_base", keep_tokens=True))
    assert [tokens_of(r, tok) for r in out] == before
    first, second, third = (r.messages[0].content for r in out)
    assert first[0]["type"] == "text" and first[1]["type"] == "image_url"  # nonce part first
    assert long.startswith(first[2]["text"][:-20]) and len(first[2]["text"]) < len(long)
    assert second[0]["contents"][0].endswith("\nshort")  # the nonce; the cut is at the end
    assert long.startswith(second[0]["contents"][1][:-20])
    assert third[0].endswith("\nfirst part") and long.startswith(third[1][:-20])


def test_salt_and_hash_ids_cost_no_tokens(tokenizers):
    state = NonceState()
    records = [Record(input_length=700, hash_ids=[1, 2]), Record(input_length=30)]
    out = list(add_nonces(records, seed=1, tokenizer="cl100k_base", keep_tokens=True,
                          state=state))
    assert [r.input_length for r in out] == [700, 30] and out[0].hash_ids[1:] == [2]
    assert list(state.tokens_before) == [700, 30]
    [salted] = add_nonces([Record(messages=[Message("user", "hi")])], seed=1, at="salt",
                          tokenizer="cl100k_base", keep_tokens=True)
    assert salted.messages[0].content == "hi" and "cache_salt" in salted.extra


def test_a_record_too_short_is_an_error_or_skipped_in_the_api():
    def short() -> Record:
        return Record(messages=[Message("user", "Hi there")], lineno=7)

    with pytest.raises(InvalidRecordError, match="too short to give up") as caught:
        list(add_nonces([short()], seed=1, tokenizer="cl100k_base", keep_tokens=True))
    assert caught.value.lineno == 7
    state = NonceState(skip_invalid=True)
    kept = Record(messages=[Message("user", "word " * 100)], lineno=8)
    out = list(add_nonces([short(), kept], seed=1, tokenizer="cl100k_base", keep_tokens=True,
                          state=state))
    assert [r.lineno for r in out] == [8]
    assert len(state.skipped) == 1 and state.skipped[0].startswith("7: too short")
    with pytest.raises(ValueError, match="keep_tokens needs a tokenizer"):
        list(add_nonces([kept], seed=1, keep_tokens=True))


# ---------------------------------------------------------------- through the command line


def rows(n: int) -> list[dict]:
    return [{"text": f"Question {i}: " + "why is the sky blue? " * (8 + i % 13),
             "output_length": 10 + i} for i in range(n)]


def manifest_of(out: Path) -> dict:
    return json.loads(Path(f"{out}.manifest.json").read_text())


@pytest.mark.parametrize("which", ["cl100k_base", "local_bpe"])
@pytest.mark.parametrize("args", [["--at", "start"], ["--kind", "timestamp", "--at", "user",
                                                      "--start-time", START],
                                  ["--kind", "random", "--copies", "3"]])
def test_the_manifest_has_the_same_figures_before_and_after(which, args, tmp_path, run,
                                                            tokenizers):
    tok = tokenizers[which]
    source = write_jsonl(tmp_path / "in.jsonl", rows(30))
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--tokenizer", tok.name, "--keep-tokens", "--seed", "5",
                 *args)
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(out)
    [step] = manifest["steps"]
    assert step["params"]["tokenizer"] == tok.name and step["params"]["keep_tokens"] is True
    before, after = step["info"]["token_stats_before"], manifest["token_stats"]
    assert before["prompt_tokens"] == after["prompt_tokens"]
    assert before["records"] == after["records"] == manifest["output"]["records"]
    copies = 3 if "--copies" in args else 1
    counts = [len(tok.encode(r["text"])) for r in rows(30)]
    assert [len(tok.encode(r["text"])) for r in read_jsonl(out)] == [
        n for n in counts for _ in range(copies)]
    assert before["prompt_tokens"]["total"] == sum(counts) * copies


def test_without_keep_tokens_the_manifest_shows_what_the_nonce_costs(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", rows(10))
    out = tmp_path / "out.jsonl"
    assert run("nonce", source, out, "--tokenizer", "cl100k_base", "--seed", "5").exit_code == 0
    manifest = manifest_of(out)
    before = manifest["steps"][0]["info"]["token_stats_before"]["prompt_tokens"]
    assert manifest["token_stats"]["prompt_tokens"]["total"] > before["total"]
    assert "keep_tokens" not in manifest["steps"][0]["params"]


def test_a_pipe_fits_then_nonces_to_exact_lengths(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", rows(12))
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "fit", "--tokens", "96", "--tokenizer", "cl100k_base",
                 "--seed", "1", "nonce", "--at", "user", "--tokenizer", "cl100k_base",
                 "--keep-tokens", "--seed", "2", "write", out)
    assert result.exit_code == 0, result.stderr
    stats = manifest_of(out)["token_stats"]["prompt_tokens"]
    assert stats["min"] == stats["max"] == 96


def test_a_record_too_short_names_its_line_or_is_skipped(tmp_path, run):
    data = rows(6)
    data[3] = {"text": "Hi."}
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--tokenizer", "cl100k_base", "--keep-tokens")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"promptkit: {source}:4: too short to give up ")
    assert not out.exists()

    result = run("nonce", source, out, "--tokenizer", "cl100k_base", "--keep-tokens",
                 "--skip-invalid", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert ("skipped 1 invalid record (first: line 4); commonest reason (1): nonce: too short "
            "to give up N tokens for the nonce (its last user text has N; --keep-tokens)"
            ) in result.stderr
    assert [r["output_length"] for r in read_jsonl(out)] == [10, 11, 12, 14, 15]
    manifest = manifest_of(out)
    assert manifest["skipped"]["count"] == 1 and manifest["skipped"]["lines"][0].startswith("4:")
    before = manifest["steps"][0]["info"]["token_stats_before"]
    assert before["prompt_tokens"] == manifest["token_stats"]["prompt_tokens"]
    assert before["records"] == 5

    rebuilt = tmp_path / "rebuilt.jsonl"  # the manifest re-makes it, skip included
    assert run("rebuild", f"{out}.manifest.json", rebuilt).exit_code == 0
    assert rebuilt.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("command", [["nonce"], ["pipe", "read"]])
def test_keep_tokens_without_a_tokenizer_is_a_usage_error(command, single_turn, tmp_path, run):
    out = tmp_path / "out.jsonl"
    if command == ["nonce"]:
        result = run("nonce", single_turn, out, "--keep-tokens")
    else:
        result = run("pipe", "read", single_turn, "nonce", "--keep-tokens", "write", out)
    assert result.exit_code == 2
    assert "--keep-tokens needs --tokenizer" in result.stderr
    assert not out.exists()


def test_an_unknown_tokenizer_is_one_line(single_turn, tmp_path, run):
    for args in (["nonce", single_turn, tmp_path / "o.jsonl", "--tokenizer", "nope"],
                 ["pipe", "read", single_turn, "nonce", "--tokenizer", "nope", "--keep-tokens",
                  "write", tmp_path / "o.jsonl"]):
        result = run(*args)
        assert result.exit_code == 1
        assert result.stderr.startswith("promptkit: unknown tokenizer 'nope'")
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("at", ["start", "user"])
def test_workers_give_the_same_bytes_skips_and_figures(at, small_chunks, tmp_path, run):
    data = []
    for i in range(240):
        row = {"text": f"Prompt {i}. " + "The quick brown fox jumps. " * (i % 9)}
        if i % 4 == 0:  # sessions over many lines, so they cross chunk boundaries
            row["session_id"] = f"s{i % 7}"
        data.append(row)
    source = write_jsonl(tmp_path / "in.jsonl", data)
    results = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"out{workers}.jsonl"
        res = run("nonce", source, out, "--workers", str(workers), "--tokenizer", "cl100k_base",
                  "--keep-tokens", "--skip-invalid", "--seed", "5", "--at", at)
        assert res.exit_code == 0, res.stderr
        manifest = manifest_of(out)
        results[workers] = (out.read_bytes(), manifest["skipped"], manifest["token_stats"],
                            manifest["steps"][0]["info"])
    assert small_chunks == [2, 4]  # one worker runs in this process
    assert results[1] == results[2] == results[4]
    _, skipped, after, info = results[2]
    assert skipped["count"] > 0  # the short prompts, in every chunk
    assert info["token_stats_before"]["prompt_tokens"] == after["prompt_tokens"]
