"""Alibaba's Bailian traces (``bailian_trace``): read, written, converted, checked and
nonce'd as AIPerf 0.13 loads them (its own models and loaders, ``tests/aiperf_tool.py``).

``prompts/bailian-trace-sample.jsonl`` has the public traces' shape
(``qwen-bailian-usagetraces-anon``: ``chat_id``, ``parent_chat_id``, ``timestamp`` in
seconds, ``input_length``, ``output_length``, ``type``, ``turn``, ``hash_ids`` of 16
tokens) with made-up values: four sessions, three of them beginning with the same two
blocks (a shared system prompt), each later turn's ids holding its history (the
earlier input and output, as the public traces' do).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
from helpers import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "prompts" / "bailian-trace-sample.jsonl"
BLOCK = 16


def sample_rows() -> list[dict[str, Any]]:
    return read_jsonl(SAMPLE)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizer_dir import build_tokenizer_dir

    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "bpe")


def manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(f"{path}.manifest.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the format


def test_a_bailian_trace_is_detected_and_written_back_as_it_was(tmp_path, run):
    listed = run("formats")
    assert "bailian_trace" in listed.stdout
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", SAMPLE, "write", out)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == sample_rows()  # timestamps in seconds, to the digit
    made = manifest(out)
    assert made["inputs"][0]["format"] == made["output"]["format"] == "bailian_trace"
    assert made["aiperf"]["args"][2:] == ["--custom-dataset-type", "bailian_trace",
                                          "--isl-block-size", "16"]
    aiperf_tool.strict("BailianTrace", read_jsonl(out))


def test_stats_counts_sessions_and_turns(run):
    result = run("stats", SAMPLE, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["input"]["format"] == "bailian_trace"
    assert (report["records"], report["conversations"], report["turns"],
            report["requests"]) == (8, 4, 8, 8)
    assert report["prompt_tokens"]["total"] == sum(r["input_length"] for r in sample_rows())


def test_sessions_follow_parent_chat_id_as_aiperf_groups_them(tmp_path, run, tokenizer):
    """Written as mooncake_trace, each line names its session (its first line's chat_id,
    as AIPerf names it); AIPerf's own loaders make the same sessions of both files, with
    every field they use: timestamps (ms), lengths and ids."""
    mooncake = tmp_path / "trace.jsonl"
    result = run("pipe", "read", SAMPLE, "write", "--to", "mooncake_trace", mooncake)
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(mooncake)
    assert [r["session_id"] for r in rows] == ["4717", "5233", "6102", "4717", "7009", "5233",
                                               "4717", "7009"]
    assert "type" not in rows[0] and rows[0]["request_type"] == "text"
    assert manifest(mooncake)["aiperf"]["args"][-2:] == ["--isl-block-size", "16"]
    aiperf_tool.validate("MooncakeTrace", rows)
    bailian = aiperf_tool.load_dataset("bailian_trace", SAMPLE, tokenizer)
    moon = aiperf_tool.load_dataset("mooncake_trace", mooncake, tokenizer, block_size=BLOCK)

    def used(sessions: list[list[dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
        return [[(round(t["timestamp"], 6), t["input_length"], t["output_length"],
                  t["hash_ids"]) for t in turns] for turns in sessions]

    assert used(moon) == used(bailian)
    assert [len(turns) for turns in bailian] == [3, 2, 1, 2]
    back = tmp_path / "back.jsonl"
    result = run("pipe", "read", mooncake, "write", "--to", "bailian_trace", back)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(back) == sample_rows()


def test_lines_of_another_format_get_chat_ids_chained_by_session(tmp_path, run, tokenizer):
    rows = [{"session_id": "a", "timestamp": 1000, "input_length": 40, "output_length": 5,
             "hash_ids": [1, 2, 3]},
            {"timestamp": 1500, "input_length": 20, "output_length": 5, "hash_ids": [9, 8]},
            {"session_id": "a", "timestamp": 2000, "input_length": 60, "output_length": 5,
             "hash_ids": [1, 2, 4, 5]}]
    source = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "b.jsonl"
    result = run("pipe", "read", source, "write", "--to", "bailian_trace", out)
    assert result.exit_code == 0, result.stderr
    written = read_jsonl(out)
    assert [(r["chat_id"], r["parent_chat_id"], r["turn"], r["timestamp"]) for r in written] == [
        (1, -1, 1, 1), (2, -1, 1, 1.5), (3, 1, 2, 2)]
    aiperf_tool.strict("BailianTrace", written)
    sessions = aiperf_tool.load_dataset("bailian_trace", out, tokenizer)
    assert [[t["hash_ids"] for t in s] for s in sessions] == [[[1, 2, 3], [1, 2, 4, 5]],
                                                              [[9, 8]]]


@pytest.mark.parametrize(("lines", "problem"), [
    ([{"chat_id": 2, "parent_chat_id": 1}, {"chat_id": 1}],
     "2: bailian_trace: chat_id 1 is the parent_chat_id of line 1, read before it"),
    ([{"chat_id": 1}, {"chat_id": 1, "parent_chat_id": -1}],
     "2: bailian_trace: chat_id 1 again: a chat_id names one line"),
    ([{"chat_id": 1, "timestamp": "0.5"}], "1: bailian_trace: 'timestamp' must be a number"),
    ([{"chat_id": 1, "output_length": 0}], "1: bailian_trace: 'output_length' is 0"),
])
def test_a_chain_promptkit_cannot_follow_is_one_line(tmp_path, run, lines, problem):
    base = {"parent_chat_id": -1, "timestamp": 0.5, "input_length": 20, "output_length": 4,
            "type": "text", "turn": 1, "hash_ids": [1, 2]}
    source = write_jsonl(tmp_path / "t.jsonl", [{**base, **line} for line in lines])
    result = run("check", source)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:{problem}"), result.stderr


def test_a_line_whose_parent_is_not_in_the_file_begins_a_session(tmp_path, run):
    """As AIPerf takes it: the walk up the chain stops at a parent it does not have."""
    rows = [{"chat_id": 7, "parent_chat_id": 3, "timestamp": 1.0, "input_length": 20,
             "output_length": 4, "type": "text", "turn": 2, "hash_ids": [1, 2]},
            {"chat_id": 8, "parent_chat_id": 7, "timestamp": 2.0, "input_length": 40,
             "output_length": 4, "type": "text", "turn": 3, "hash_ids": [1, 2, 5]}]
    source = write_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "m.jsonl"
    assert run("pipe", "read", source, "write", "--to", "mooncake_trace", out).exit_code == 0
    assert [r["session_id"] for r in read_jsonl(out)] == ["7", "7"]


def test_copies_of_a_bailian_line_are_refused_not_merged(tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("nonce", SAMPLE, out, "--seed", "1", "--copies", "2")
    assert result.exit_code == 1
    assert "chat_id 4717 is written twice" in result.stderr
    assert not out.exists()


# ---------------------------------------------------------------- what check predicts


def aiperf_requests(rows: list[dict[str, Any]]) -> list[tuple[int, list[Any], list[Any]]]:
    """What AIPerf 0.13 sends for a Bailian trace, worked out here on its own rules (its
    loader, ``BailianTraceDatasetLoader``; its fixed schedule at concurrency 1): sessions
    by ``parent_chat_id``, in the order of their first turn's timestamp, their turns by
    ``turn``, each sent after the earlier turns and the replies to them. A token is
    ``("id", X, j)``, the j-th of hash id X's 16, or ``("reply", session, turn, j)``.
    Each request: ``(session, its tokens, the tokens of its reply)``."""
    roots: dict[int, int] = {}
    sessions: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        parent = row["parent_chat_id"]
        roots[row["chat_id"]] = row["chat_id"] if parent == -1 else roots[parent]
        sessions[roots[row["chat_id"]]].append(row)
    out = []
    for root, turns in sorted(sessions.items(), key=lambda item: item[1][0]["timestamp"]):
        history: list[Any] = []
        for k, row in enumerate(sorted(turns, key=lambda r: r["turn"])):
            ids, length = row["hash_ids"], row["input_length"]
            content = [("id", x, j) for i, x in enumerate(ids)
                       for j in range(min(BLOCK, length - i * BLOCK))]
            reply = [("reply", root, k, j) for j in range(row["output_length"])]
            out.append((root, history + content, reply))
            history = history + content + reply
    return out


def counted(requests: list[tuple[int, list[Any], list[Any]]], block: int
            ) -> tuple[int, int, int]:
    """Hit tokens (all, and those a session's own earlier requests give) and prompt
    tokens, by the rule: a block hits when its whole chain of tokens was cached before;
    the last prompt token is always computed; after a request, the full blocks of its
    prompt and of the tokens it generated (all but the last, never fed back) are cached."""
    seen: set[tuple[Any, ...]] = set()
    own: dict[int, set[tuple[Any, ...]]] = defaultdict(set)
    hits = within = prompt = 0
    for session, tokens, reply in requests:
        prompt += len(tokens)
        can_hit = (len(tokens) - 1) // block
        for cache, mine in ((seen, False), (own[session], True)):
            n = 0
            while n < can_hit and tuple(tokens[:(n + 1) * block]) in cache:
                n += 1
            within += n * block * mine
            hits += n * block * (not mine)
        computed = tokens + reply[:-1]
        for cache in (seen, own[session]):
            cache.update(tuple(computed[:(b + 1) * block])
                         for b in range(len(computed) // block))
    return hits, within, prompt


def check_report(run, path: Path, *args: str) -> dict[str, Any]:
    result = run("check", path, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("block", [16, 32])
def test_check_predicts_what_aiperf_sends_and_a_nonce_keeps_only_the_history(tmp_path, run,
                                                                            block):
    """Sessions share their first two blocks: hits across sessions; each later turn hits
    its own history. After nonce, every session begins with a block of its own: no hit
    across sessions, the hits within them unchanged. Both, counted here on their own,
    are check's figures, at the server's block of 16 (one id) and of 32."""
    nonced = tmp_path / "nonced.jsonl"
    made = run("nonce", SAMPLE, nonced, "--seed", "5")
    assert made.exit_code == 0, made.stderr
    figures = {}
    for name, path in (("before", SAMPLE), ("after", nonced)):
        report = check_report(run, path, "--block-size", str(block))
        hits, within, prompt = counted(aiperf_requests(read_jsonl(path)), block)
        assert (report["hit_tokens"], report["within_conversation_hit_tokens"],
                report["prompt_tokens"]) == (hits, within, prompt), (name, report)
        assert report["hash_block_size"] == BLOCK and report["block_size"] == block
        assert report["fixed_schedule"] and report["conversations"] == 4
        figures[name] = report
    before, after = figures["before"], figures["after"]
    assert before["cross_conversation_hit_tokens"] > 0
    assert after["cross_conversation_hit_tokens"] == 0
    assert after["within_conversation_hit_tokens"] == before["within_conversation_hit_tokens"] > 0
    assert after["prompt_tokens"] == before["prompt_tokens"]


def test_nonce_gives_each_session_one_fresh_first_block(tmp_path, run):
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", SAMPLE, nonced, "--seed", "5").exit_code == 0
    rows, original = read_jsonl(nonced), sample_rows()
    firsts: dict[int, set[int]] = defaultdict(set)
    roots: dict[int, int] = {}
    for row, was in zip(rows, original, strict=True):
        assert row["hash_ids"][1:] == was["hash_ids"][1:]
        assert {k: v for k, v in row.items() if k != "hash_ids"} == {
            k: v for k, v in was.items() if k != "hash_ids"}
        root = roots[row["chat_id"]] = (row["chat_id"] if row["parent_chat_id"] == -1
                                        else roots[row["parent_chat_id"]])
        firsts[root].add(row["hash_ids"][0])
    assert all(len(ids) == 1 for ids in firsts.values())
    assert len(set.union(*firsts.values())) == 4  # one a session, none shared
    aiperf_tool.strict("BailianTrace", rows)


def test_check_warns_that_aiperf_sends_a_bailian_history_twice(run):
    report = check_report(run, SAMPLE)
    assert report["requests_with_history"] == 4
    later = [r for r in sample_rows() if r["turn"] > 1]
    assert f"where their lines state {sum(r['input_length'] for r in later)}" in (
        report["warning_history"])
    result = run("check", SAMPLE)
    assert "AIPerf 0.13 sends it twice" in result.stderr


def test_check_sends_a_session_in_aiperfs_turn_order(tmp_path, run, tokenizer):
    """Two branches of one session (two turn-2 lines with the same parent, and a turn 3
    of the first, read before the second): AIPerf sorts the session by turn."""
    base = {"timestamp": 1.0, "output_length": 4, "type": "text"}
    rows = [{**base, "chat_id": 1, "parent_chat_id": -1, "turn": 1, "input_length": 20,
             "hash_ids": [1, 2]},
            {**base, "chat_id": 2, "parent_chat_id": 1, "turn": 2, "input_length": 40,
             "hash_ids": [1, 2, 3]},
            {**base, "chat_id": 3, "parent_chat_id": 2, "turn": 3, "input_length": 60,
             "hash_ids": [1, 2, 3, 4]},
            {**base, "chat_id": 4, "parent_chat_id": 1, "turn": 2, "input_length": 40,
             "hash_ids": [1, 2, 5]}]
    source = write_jsonl(tmp_path / "t.jsonl", rows)
    per_request = tmp_path / "requests.jsonl"
    check_report(run, source, "--per-request", per_request)
    sent = [rows[r["record"] - 1]["chat_id"] for r in read_jsonl(per_request)]
    [session] = aiperf_tool.load_dataset("bailian_trace", source, tokenizer)
    assert sent == [t["chat_id"] for t in session] == [1, 2, 4, 3]


def test_a_chat_template_on_a_hash_id_trace_needs_the_tokenizer(run, tokenizer):
    result = run("check", SAMPLE, "--chat-template", "hf")
    assert result.exit_code == 2  # (an option missing: a usage error)
    assert "needs --tokenizer" in result.stderr
    bare = check_report(run, SAMPLE)
    templated = check_report(run, SAMPLE, "--chat-template", "hf", "--tokenizer", tokenizer)
    assert templated["template_header_tokens"] > 0
    assert templated["prompt_tokens"] > bare["prompt_tokens"]


@pytest.mark.parametrize("mode", ["first-turn-prefix", "first-turn-suffix", "system-prefix"])
def test_check_cache_bust_on_a_bailian_trace(run, mode):
    """AIPerf's --cache-bust marker goes into a session's first turn (a hash-id trace has
    no system message, so system-* modes put it there too), which later turns send again
    in their history: from the marker on, a session's tokens are its own. Counted here
    by tagging each token from the marker's place with its session (the reply too)."""
    rows = sample_rows()
    requests = aiperf_requests(rows)
    first: dict[int, int] = {}
    for session, tokens, _ in requests:
        first.setdefault(session, len(tokens))  # its first request: its first turn alone
    tagged = []
    for session, tokens, reply in requests:
        cut = first[session] if mode.endswith("suffix") else 0
        tagged.append((session, tokens[:cut] + [(t, session) for t in tokens[cut:]],
                       [(t, session) for t in reply]))
    report = check_report(run, SAMPLE, "--cache-bust", mode)
    hits, within, prompt = counted(tagged, BLOCK)
    assert (report["hit_tokens"], report["within_conversation_hit_tokens"],
            report["prompt_tokens"]) == (hits, within, prompt)
    plain = check_report(run, SAMPLE)
    assert report["within_conversation_hit_tokens"] == plain["within_conversation_hit_tokens"]
    if mode.endswith("prefix"):
        assert report["cross_conversation_hit_tokens"] == 0
    else:  # the shared blocks before the marker still hit
        assert 0 < report["cross_conversation_hit_tokens"] <= plain[
            "cross_conversation_hit_tokens"]
    assert report["cache_bust"]["aiperf_args"] == ["--cache-bust", mode.replace("-", "_")]
