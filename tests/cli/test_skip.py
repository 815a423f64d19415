"""--skip-invalid leaves out every record a command cannot take, and counts them by reason.

Unreadable lines, records the output format cannot hold, and records an operation
rejects (``nonce --at user`` with no user message, ``fit`` with no user text, ``pad``
on a record with a system message of its own, ``hash-trace`` on a record without
text, ``check`` on a record AIPerf could not send as it is): each is an error naming
its line, or, with ``--skip-invalid``, left out, listed in the manifest's (or
report's) ``skipped`` lines and counted in ``by_reason``; the same for every number of
workers, and ``rebuild`` re-makes the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl

from promptkit import add_nonces, fit_records
from promptkit.core.errors import InvalidRecordError, Skipping, skip_reason
from promptkit.core.records import Message, Record
from promptkit.ops.nonce import HASH_ID_BASE, NonceState

NO_USER = "nonce: no user message to put the nonce in (use --at start)"
NO_USER_TEXT = "fit: no user text to fit"
OWN_SYSTEM = ("pad: the record has a system message of its own; leave out --system-prompt "
              "to pad it")


def manifest_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.manifest.json").read_text())


def sharegpt_rows() -> list[dict]:
    """ShareGPT conversations as they come in public dumps: most start with the human
    turn, some lost it (only the model's reply, or a system prompt and a reply)."""
    rows = []
    for i in range(12):
        turns = [{"from": "human", "value": f"How do I sort a list of {i} numbers in Python?"},
                 {"from": "gpt", "value": "Use sorted(numbers), or numbers.sort() in place."}]
        if i % 4 == 1:
            turns = turns[1:]  # the human turn was removed
        elif i % 4 == 3:
            turns = [{"from": "system", "value": "You are a coding assistant."}, turns[1]]
        rows.append({"id": f"conv-{i}", "conversations": turns})
    return rows


@pytest.fixture
def converted(tmp_path, run) -> Path:
    """The ShareGPT rows converted to chat messages (mooncake_trace, which keeps their
    ids) by promptkit itself, their recorded replies kept (so are they below)."""
    source = write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt_rows())
    out = tmp_path / "chat.jsonl"
    result = run("pipe", "read", source, "write", "--to", "mooncake_trace", "--keep-replies",
                 out)
    assert result.exit_code == 0, result.stderr
    return out


def test_the_reason_leaves_out_what_is_particular_to_a_record():
    assert skip_reason("12: invalid JSON: unexpected character: line 1 column 7 (char 6)") \
        == "invalid JSON: unexpected character"
    assert skip_reason("3: nonce: too short to give up 12 tokens for the nonce (its last "
                       "user text has 3; --keep-tokens)") == (
        "nonce: too short to give up N tokens for the nonce (its last user text has N; "
        "--keep-tokens)")
    assert skip_reason("None: fit: no user text to fit") == NO_USER_TEXT


def test_nonce_at_user_on_records_without_a_user_message(converted, tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("nonce", converted, out, "--at", "user", "--seed", "1", "--keep-replies")
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {converted}:2: no user message to put the nonce in "
                             "(use --at start)\n")
    assert not out.exists()

    result = run("nonce", converted, out, "--at", "user", "--seed", "1", "--skip-invalid",
                 "--keep-replies")
    assert result.exit_code == 0, result.stderr
    assert [r["id"] for r in read_jsonl(out)] == [f"conv-{i}" for i in range(12) if i % 2 == 0]
    skipped = manifest_of(out)["skipped"]
    assert skipped == {"count": 6, "by_reason": {NO_USER: 6},
                       "lines": [f"{n}: {NO_USER}" for n in (2, 4, 6, 8, 10, 12)]}
    assert (f"promptkit: skipped 6 invalid records (first: line 2); commonest reason (6): "
            f"{NO_USER}\n") in result.stderr
    rebuilt = tmp_path / "rebuilt.jsonl"
    assert run("rebuild", f"{out}.manifest.json", rebuilt).exit_code == 0
    assert rebuilt.read_bytes() == out.read_bytes()


def test_fit_on_records_without_user_text(converted, tmp_path, run):
    out = tmp_path / "out.jsonl"
    args = ["--tokens", "24", "--tokenizer", "cl100k_base", "--seed", "2", "--keep-replies"]
    result = run("fit", converted, out, *args)
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {converted}:2: no user text to fit\n"
    result = run("fit", converted, out, *args, "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(out)) == 6
    manifest = manifest_of(out)
    assert manifest["skipped"]["by_reason"] == {NO_USER_TEXT: 6}
    assert manifest["token_stats"]["records"] == 6


def test_pad_on_records_with_a_system_message_of_their_own(converted, tmp_path, run):
    out = tmp_path / "out.jsonl"
    args = ["--tokens", "40", "--tokenizer", "cl100k_base", "--system-prompt",
            "You answer questions about Python.", "--seed", "3", "--keep-replies"]
    result = run("pad", converted, out, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("promptkit: "
                                    f"{converted}:4: the record has a system message of its own")
    result = run("pad", converted, out, *args, "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 9 and {r["messages"][0]["role"] for r in rows} == {"system"}
    assert manifest_of(out)["skipped"]["by_reason"] == {OWN_SYSTEM: 3}


def test_pad_names_the_line_of_an_own_prompt_longer_than_the_target(tmp_path, run):
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Question {i}?"}]} for i in range(5)]
    rows[2]["messages"][0]["content"] = "You are a careful assistant. " * 8
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["--tokens", "20", "--tokenizer", "cl100k_base", "--seed", "4"]
    result = run("pad", source, out, *args)
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: "
                             f"{source}:3: its system message: the base text is 49 tokens, "
                             "more than the target 20\n")
    assert not out.exists()
    result = run("pad", source, out, *args, "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(out)) == 4
    manifest = manifest_of(out)
    assert manifest["skipped"]["by_reason"] == {
        "pad: its system message: the base text is N tokens, more than the target N": 1}
    assert [g["tokens"] for g in manifest["steps"][0]["info"]["groups"]] == [20]


def mixed_rows() -> list[str]:
    """OpenAI chat lines as exported from a chat log, with what goes wrong in real ones:
    a truncated line, a conversation that lost its user turn, a system message."""
    lines = []
    for i in range(150):
        messages = [{"role": "user", "content": f"Summarize ticket #{i}: the printer on "
                     f"floor {i % 7} jams on every second page."}]
        if i % 10 == 3:
            messages = [{"role": "assistant", "content": "How can I help you today?"}]
        elif i % 10 == 7:
            messages.insert(0, {"role": "system", "content": "You are a support agent."})
        line = json.dumps({"messages": messages, "temperature": 0.2})
        if i % 25 == 24:
            line = line[: len(line) // 2]  # cut off when the log was rotated
        lines.append(line)
    return lines


REASONS = {
    "fit: no user text to fit": 15,
    "cannot write as single_turn: single_turn has no place for a conversation of N messages; "
    "it has a system message; write it --to multi_turn, openai or mooncake_trace": 15,
    "invalid JSON: unexpected end of data": 6,
}


def test_a_pipe_skips_for_every_stage_the_same_for_every_number_of_workers(
        small_chunks, tmp_path, run):
    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(mixed_rows()) + "\n")
    results = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"out{workers}.jsonl"
        result = run("pipe", "read", "--skip-invalid", "--workers", str(workers), source,
                     "fit", "--tokens", "32", "--tokenizer", "cl100k_base", "--seed", "5",
                     "nonce", "--at", "user", "--seed", "6",
                     "write", "--to", "single_turn", out)
        assert result.exit_code == 0, result.stderr
        manifest = manifest_of(out)
        results[workers] = (out.read_bytes(), manifest["skipped"],
                            manifest["output"]["records"])
        assert ("promptkit: skipped 36 invalid records (first: line 4); commonest reason "
                "(15): cannot write as single_turn") in result.stderr
    assert small_chunks == [2, 4]
    assert results[1] == results[2] == results[4]
    _, skipped, written = results[1]
    assert skipped["count"] == 36 and skipped["by_reason"] == REASONS
    lines = [int(line.split(":")[0]) for line in skipped["lines"]]
    assert lines == sorted(lines) and lines[:3] == [4, 8, 14]
    assert written == 150 - 36
    rebuilt = tmp_path / "rebuilt.jsonl"
    assert run("rebuild", f"{tmp_path / 'out2.jsonl'}.manifest.json", rebuilt).exit_code == 0
    assert rebuilt.read_bytes() == results[2][0]


def test_a_conversation_whose_first_line_is_skipped_begins_at_its_next(tmp_path, run):
    """AIPerf sends the conversation from its first line written: that one gets the nonce."""
    long = "Plan a week in Lisbon with museums, food markets and a day trip to Sintra. " * 3
    source = write_jsonl(tmp_path / "sessions.jsonl", [
        {"session_id": "a", "text": "Hi."},  # too short to give up the nonce's tokens
        {"session_id": "a", "text": long},
        {"session_id": "a", "text": long},
    ])
    for copies in ("1", "2"):
        out = tmp_path / f"out{copies}.jsonl"
        result = run("nonce", source, out, "--seed", "1", "--copies", copies, "--skip-invalid",
                     "--tokenizer", "cl100k_base", "--keep-tokens")
        assert result.exit_code == 0, result.stderr
        nonced = [not r["text"].startswith("Plan") for r in read_jsonl(out)]
        assert nonced == [True] * int(copies) + [False] * int(copies)  # line 2 begins it now
        assert list(manifest_of(out)["skipped"]["by_reason"]) == [
            "nonce: too short to give up N tokens for the nonce (its last user text has N; "
            "--keep-tokens)"]
    out = tmp_path / "trace.jsonl"  # the lean path too (a hash-id record, no tokenizer)
    source = write_jsonl(tmp_path / "ids.jsonl", [
        {"session_id": "a", "input_length": 40, "hash_ids": [HASH_ID_BASE + 5]},
        {"session_id": "a", "input_length": 30, "hash_ids": [7, 8]}])
    assert run("nonce", source, out, "--seed", "1", "--skip-invalid").exit_code == 0
    [row] = read_jsonl(out)
    assert row["hash_ids"][0] >= HASH_ID_BASE
    assert manifest_of(out)["skipped"]["by_reason"] == {
        "nonce: hash ids of N or more are not supported": 1}


def test_hash_trace_skips_records_without_text(small_chunks, tmp_path, run):
    rows = []
    for i in range(120):
        row: dict = {"text_input": f"Explain topic {i} in one paragraph.", "output_length": 50}
        if i % 9 == 4:
            row = {"input_length": 300, "hash_ids": [i], "output_length": 50}
        elif i % 9 == 6:
            row["text_input"] = ""
        rows.append(row)
    source = write_jsonl(tmp_path / "trace.jsonl", rows)
    result = run("hash-trace", source, tmp_path / "x.jsonl", "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: "
                             f"{source}:5: a record with no text (already a hash-id record?)\n")
    seen = set()
    for workers in ("1", "2"):
        out = tmp_path / f"hashed{workers}.jsonl"
        result = run("hash-trace", source, out, "--tokenizer", "cl100k_base", "--block-size",
                     "4", "--skip-invalid", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        skipped = manifest_of(out)["skipped"]
        seen.add((out.read_bytes(), json.dumps(skipped)))
    assert len(seen) == 1
    hash_ids, empty = sum(i % 9 == 4 for i in range(120)), sum(i % 9 == 6 for i in range(120))
    assert skipped["by_reason"] == {
        "hash_trace: a record with no text (already a hash-id record?)": hash_ids,
        "hash_trace: a record with no text to hash": empty}
    assert len(read_jsonl(out)) == 120 - hash_ids - empty


def conversations(tmp_path: Path) -> Path:
    """multi_turn conversations; some lost their replies' lengths, one line is cut off."""
    lines = []
    for i in range(60):
        turns = [{"text": f"Plan a trip to city {i}.", "output_length": 40},
                 {"text": "Make it cheaper."}]
        if i % 6 == 2:
            del turns[0]["output_length"]
        lines.append(json.dumps({"session_id": f"c{i}", "turns": turns}))
    lines[0] = lines[0][:20]
    source = tmp_path / "conv.jsonl"
    source.write_text("\n".join(lines) + "\n")
    return source


CHECK_REASON = ("check: turn N has no output_length: the server's reply, which AIPerf sends "
                "in the next turn's history, has unknown length; give --reply-tokens N (the "
                "replies' length)")


def test_check_skips_what_it_cannot_send_for_every_number_of_workers(
        small_chunks, tmp_path, run):
    source = conversations(tmp_path)
    result = run("check", source, "--tokenizer", "cl100k_base")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:1: invalid JSON")
    reports = []
    for workers in ("1", "2", "4"):
        result = run("check", source, "--tokenizer", "cl100k_base", "--skip-invalid",
                     "--json", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        reports.append(report)
        assert ("promptkit: skipped 11 invalid records (first: line 1); commonest reason "
                f"(10): {CHECK_REASON}\n") in result.stderr
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["skipped"]["by_reason"] == {
        CHECK_REASON: 10, "invalid JSON: unexpected end of data": 1}
    assert reports[0]["records"] == 49


def test_a_check_stage_leaves_what_it_cannot_send_out_of_its_prediction(tmp_path, run):
    source = conversations(tmp_path)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--skip-invalid", source, "check", "--tokenizer",
                 "cl100k_base", "write", out)
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(out)
    assert manifest["output"]["records"] == 59  # written: only the unreadable line is gone
    assert manifest["skipped"]["count"] == 1
    summary = manifest["steps"][0]["info"]["summary"]
    assert summary["records"] == 49
    assert summary["skipped"]["by_reason"] == {CHECK_REASON: 10}


def test_stats_counts_skipped_lines_by_reason(small_chunks, tmp_path, run):
    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(mixed_rows()) + "\n")
    summaries = []
    for workers in ("1", "2"):
        result = run("stats", source, "--skip-invalid", "--json", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        summaries.append(json.loads(result.stdout))
    assert summaries[0] == summaries[1]
    summary = summaries[0]
    assert summary["records"] == 144
    assert summary["skipped"]["by_reason"] == {"invalid JSON: unexpected end of data": 6}
    assert result.stderr == ("promptkit: skipped 6 invalid records (first: line 25); "
                             "commonest reason (6): invalid JSON: unexpected end of data\n")


def test_the_operations_raise_or_skip_in_the_python_api():
    def records() -> list[Record]:
        return [Record(messages=[Message("assistant", "Hello!")], lineno=1),
                Record(messages=[Message("user", "Hi")], lineno=2)]

    with pytest.raises(InvalidRecordError, match="no user message"):
        list(add_nonces(records(), seed=1, at="user"))
    state = NonceState(skip_invalid=True)
    assert [r.lineno for r in add_nonces(records(), seed=1, at="user", state=state)] == [2]
    assert state.skipped == ["1: no user message to put the nonce in (use --at start)"]
    with pytest.raises(InvalidRecordError, match="no user text"):
        list(fit_records(records(), tokens=8, tokenizer="cl100k_base"))
    skipping = Skipping(skip_invalid=True, op="fit")
    fitted = list(fit_records(records(), tokens=8, tokenizer="cl100k_base", state=skipping))
    assert [r.lineno for r in fitted] == [2] and skipping.skipped == [f"1: {NO_USER_TEXT}"]


def test_a_published_card_gives_the_reasons(tmp_path, run):
    source = tmp_path / "chat.jsonl"
    source.write_text("\n".join(mixed_rows()) + "\n")
    nonced = tmp_path / "nonced.jsonl"
    result = run("nonce", source, nonced, "--at", "user", "--seed", "1", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "published"
    result = run("publish", nonced, folder)
    assert result.exit_code == 0, result.stderr
    card = (folder / "README.md").read_text()
    assert (f"- skipped: 21 invalid records (15 for {NO_USER}; 6 for invalid JSON: unexpected "
            "end of data)") in card
