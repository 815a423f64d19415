"""Worker processes give the same bytes as one process, whatever the number of workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import mooncake_trace, write_jsonl


def outputs(run, source: Path, tmp_path: Path, *args: str, command: str = "nonce"
            ) -> dict[int, tuple]:
    result = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"out{workers}.jsonl"
        res = run(command, source, out, "--workers", str(workers), *args)
        assert res.exit_code == 0, res.stderr
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
        result[workers] = (out.read_bytes(), manifest["inputs"], manifest["output"]["records"],
                           manifest["aiperf"]["distinct_records"], manifest["skipped"],
                           manifest.get("token_stats"))
    return result


def assert_same(results):
    assert results[1] == results[2] == results[4]


@pytest.mark.parametrize("at", ["start", "user", "every-turn", "salt"])
def test_workers_give_the_same_bytes(at, small_chunks, tmp_path, run):
    rows = []
    for i in range(400):
        row = {"text": f"prompt {i} " + "word " * (i % 17)}
        if i % 3 == 0:  # sessions spread over many lines, so they cross chunk boundaries
            row["session_id"] = f"s{i % 11}"
        rows.append(row)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    assert_same(outputs(run, source, tmp_path, "--seed", "5", "--at", at, "--copies", "2"))
    assert small_chunks == [2, 4]  # one worker runs in this process


def test_workers_on_a_mooncake_trace(small_chunks, tmp_path, run):
    assert_same(outputs(run, mooncake_trace("synthetic"), tmp_path, "--seed", "5"))


def test_workers_skip_the_same_invalid_lines(small_chunks, tmp_path, run):
    lines = [json.dumps({"text": f"p{i}"}) if i % 37 else "not json" for i in range(1, 300)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n\n")
    results = outputs(run, source, tmp_path, "--seed", "1", "--skip-invalid")
    assert_same(results)
    assert results[2][4]["count"] == 8


def test_workers_report_the_first_bad_line(small_chunks, tmp_path, run):
    lines = [json.dumps({"text": f"p{i}"}) for i in range(500)]
    lines[321] = '{"text": 1}'
    lines[400] = "broken"
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    messages = set()
    for workers in ("1", "2", "4"):
        result = run("nonce", source, tmp_path / "out.jsonl", "--workers", workers)
        assert result.exit_code == 1
        messages.add(result.stderr)
    assert messages == {f"promptkit: {source}:322: single_turn: 'text' must be a string, not int\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


@pytest.mark.parametrize("command", ["fit", "pad"])
def test_token_operations_and_their_statistics_match_for_every_worker_count(
        command, small_chunks, tmp_path, run):
    rows = [{"messages": [{"role": "user", "content": f"request {i} " + "data " * (i % 23)}],
             "session_id": f"s{i % 5}"} for i in range(300)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["--tokens", "10,50"] if command == "fit" else ["--tokens", "64", "--groups", "3",
                                                          "--system-prompt", "Shared."]
    results = outputs(run, source, tmp_path, *args, "--tokenizer", "cl100k_base", "--seed", "2",
                      command=command)
    assert_same(results)
    stats = results[2][5]
    assert stats["records"] == 300 and stats["conversations"] == 5
    if command == "pad":
        assert stats["system_prompts"]["distinct"] == 3
        assert [p["tokens"] for p in stats["system_prompts"]["most_shared"]] == [64] * 3
    assert small_chunks == [2, 4]


def test_stats_figures_are_the_same_for_every_worker_count(small_chunks, tmp_path, run):
    rows = []
    for i in range(500):
        row = {"messages": [{"role": "system", "content": f"system {i % 3}"},
                            {"role": "user", "content": f"question {i} " + "more " * (i % 13)}]}
        if i % 4 == 0:
            row["session_id"] = f"s{i % 7}"
        rows.append(row)
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    reports = []
    for workers in ("1", "2", "4"):
        result = run("stats", source, "--tokenizer", "cl100k_base", "--workers", workers,
                     "--json")
        assert result.exit_code == 0, result.stderr
        reports.append(json.loads(result.stdout))
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["records"] == 500 and reports[0]["system_prompts"]["distinct"] == 3


def test_hash_trace_is_the_same_bytes_for_every_worker_count(small_chunks, tmp_path, run):
    rows = [{"text": ("shared opening words " * (i % 5)) + f"request {i} " + "tail " * (i % 9),
             "timestamp": i * 10} for i in range(400)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    made = {}
    for workers in ("1", "2", "4"):
        out = tmp_path / f"trace{workers}.jsonl"
        result = run("hash-trace", source, out, "--tokenizer", "cl100k_base", "--block-size",
                     "4", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())
        made[workers] = (out.read_bytes(), manifest["inputs"], manifest["output"]["records"])
    assert made["1"] == made["2"] == made["4"]
    assert made["1"][2] == 400


def test_check_reports_the_same_for_every_worker_count(small_chunks, tmp_path, run):
    rows = [{"text": ("a shared system preamble " * (i % 4)) + f"question {i}"}
            for i in range(300)]
    rows += rows[:40]  # repeats hit
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    reports = []
    for workers in ("1", "2", "4"):
        result = run("check", source, "--tokenizer", "cl100k_base", "--block-size", "4",
                     "--workers", workers, "--requests", "400", "--json")
        assert result.exit_code == 0, result.stderr
        reports.append(json.loads(result.stdout))
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["records"] == 340 and reports[0]["hit_tokens"] > 0


def test_check_of_conversations_is_the_same_for_every_worker_count(small_chunks, tmp_path,
                                                                   run):
    rows = [{"session_id": f"s{i}", "turns": [
        {"text": f"conversation {i % 25} turn {t}: " + "more words " * (i % 7),
         "output_length": 5 + i % 3} for t in range(3)]} for i in range(150)]
    source = write_jsonl(tmp_path / "mt.jsonl", rows)
    reports = []
    for workers in ("1", "2", "4"):
        result = run("check", source, "--tokenizer", "cl100k_base", "--block-size", "4",
                     "--workers", workers, "--json")
        assert result.exit_code == 0, result.stderr
        reports.append(json.loads(result.stdout))
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["requests"] == 450
    assert reports[0]["cross_conversation_hit_tokens"] > 0  # conversations repeat
    assert reports[0]["within_conversation_hit_tokens"] > 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_keys_moved_to_bucket_files_count_the_same(workers, small_chunks, tmp_path, run,
                                                  monkeypatch):
    """Beyond a few keys in memory, the prompt keys go to bucket files; the distinct
    count is the one made in memory: repeats across the moves, every bucket, --ray keys
    aside (they are counted on the cluster)."""
    from promptkit.io import sink

    rows = [{"text": f"prompt {i % 700}", "session_id": f"s{i % 700}"} for i in range(3000)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    counts = []
    real = sink.KeyBuckets.add
    for kept in (1 << 30, 64):
        monkeypatch.setattr(sink, "KEPT_KEYS", kept)
        moved: list[int] = []
        monkeypatch.setattr(sink.KeyBuckets, "add",
                            lambda self, keys, moved=moved: moved.append(len(keys))
                            or real(self, keys))
        out = tmp_path / f"out-{kept}.jsonl"
        result = run("nonce", source, out, "--seed", "1", "--workers", workers)
        assert result.exit_code == 0, result.stderr
        assert bool(moved) == (kept == 64)
        counts.append(json.loads(Path(f"{out}.manifest.json").read_text())
                      ["aiperf"]["distinct_records"])
    # 700 conversations: each first line nonce'd (unique), each later line one of 700 prompts.
    assert counts == [1400, 1400]


def test_key_buckets_count_what_memory_counts(tmp_path):
    import numpy as np

    from promptkit.io.keys import KeyBuckets, distinct_sorted

    rng = np.random.default_rng(5)
    keys = rng.integers(-2**63, 2**63 - 1, 20_000, dtype=np.int64)
    keys = np.concatenate([keys, keys[:5_000], [-2**63, 2**63 - 1, 0, -1] * 3])
    rng.shuffle(keys)
    buckets = KeyBuckets(str(tmp_path / "out.jsonl"))
    for part in np.array_split(keys, 4)[:3]:
        buckets.add(part.tobytes())
    rest = np.array_split(keys, 4)[3]
    assert buckets.count(rest) == len(np.unique(keys)) == distinct_sorted(np.sort(keys))
    assert list(tmp_path.iterdir()) == []  # the bucket files have no names


def test_lines_are_joined_a_few_hundred_at_a_time():
    """What joined() gives is what one join gives, for every count around its groups."""
    from promptkit.io.sink import JOINED, joined

    for count in (0, 1, JOINED - 1, JOINED, JOINED + 1, 3 * JOINED + 7):
        lines = [b"%d\n" % i for i in range(count)]
        assert joined(iter(lines)) == b"".join(lines)
