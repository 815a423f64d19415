"""The global parts as distributed Ray Data operations, on a real two-node cluster:
hash-trace's ids, check's unbounded report and stats' figures equal the single-machine
CLI's, whatever the order and split of the rows."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import shared_prefix_texts

import promptkit.ray as promptkit_ray
from promptkit.api import read_records
from promptkit.cli import cli
from promptkit.core.tokenizers import cached_tokenizer
from promptkit.ops.check import CheckOptions
from promptkit.ops.hashtrace import HashIds
from promptkit.ray import aggregate as g

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")
PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
BLOCKS = 8  # rows fed in at least this many blocks


@pytest.fixture(scope="module")
def cluster(ray_cluster: Any) -> Iterator[Any]:
    """Connected as the command line connects (promptkit.ray.connect: Ray Data
    configured as promptkit runs it)."""
    with promptkit_ray.connect(ray_cluster.address):
        yield ray_cluster


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A single_turn file from the repository's real prompts, with what makes the global
    parts hard: many records sharing long prefixes (several system prompts, exact
    repeats), cache salts, one huge record, short records under one block."""
    rng = random.Random(15)
    texts = shared_prefix_texts(160, heads=4, head_prompts=6, share=0.5, repeats=0.1)
    lines = []
    for text in texts:
        line: dict[str, Any] = {"text": text}
        if rng.random() < 0.15:
            line["extra"] = {"cache_salt": f"s{rng.randint(1, 3)}"}
        lines.append(line)
    lines.insert(70, {"text": " ".join(texts * 4)})  # one huge record
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def records(path: Path) -> list[Any]:
    out = list(read_records(str(path)))
    for i, record in enumerate(out):
        if record.index is None:
            record.index = i
    return out


def dataset(rows: list[dict[str, Any]], seed: int = 0) -> Any:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return ray.data.from_items(rows, override_num_blocks=BLOCKS)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def test_number_blocks_equals_hash_trace(cluster: Any, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    run("hash-trace", str(corpus), str(out), "--tokenizer", "cl100k_base", "--block-size", "16")
    expected = [json.loads(line)["hash_ids"] for line in out.read_text().splitlines()]
    rows = [{"index": row["index"], "blocks": row["blocks"]}
            for chunk in chunks(records(corpus), 23)
            for row in g.hash_trace_rows(chunk, tokenizer="cl100k_base", block_size=16)]
    ds = dataset(rows)
    assert ds.num_blocks() >= BLOCKS
    got = {row["index"]: list(row["hash_ids"]) for row in g.number_blocks(ds).take_all()}
    assert [got[i] for i in range(len(expected))] == expected
    assert max(map(len, expected)) > 100  # the huge record is there


def test_number_blocks_property_cases(cluster: Any) -> None:
    """Shared prefixes, blocks that recur at other positions, records with no blocks,
    one huge record: the ids of HashIds reading in index order, for any row order."""
    rng = random.Random(7)
    vocabulary = [bytes([i]) * 16 for i in range(40)]
    rows = []
    for index in range(300):
        if index % 17 == 0:
            blocks: list[bytes] = []
        elif index == 150:
            blocks = [rng.choice(vocabulary) + i.to_bytes(4) for i in range(5000)]
        else:
            blocks = [rng.choice(vocabulary[:rng.randint(1, 40)])
                      for _ in range(rng.randint(1, 12))]
        rows.append({"index": index, "blocks": blocks})
    ids = HashIds()  # its numbering, block by block (the huge record's keys are longer)
    expected = [[ids.ids.setdefault(b, len(ids.ids)) for b in row["blocks"]] for row in rows]
    got = {row["index"]: list(row["hash_ids"])
           for row in g.number_blocks(dataset(rows, seed=3), partitions=5).take_all()}
    assert [got[i] for i in range(len(rows))] == expected
    assert got[0] == [] and got[17] == []


def check_json(path: Path, *args: str) -> dict[str, Any]:
    summary = json.loads(run("check", str(path), "--json", *args))
    for key in ("input", "tokenizer", "skipped", "aiperf_args", "wrote"):
        summary.pop(key)
    return summary


def test_unbounded_check_equals_check(cluster: Any, corpus: Path) -> None:
    expected = check_json(corpus, "--tokenizer", "cl100k_base")
    assert 0 < expected["hit_rate"] < 1 and expected["first_block"]["records_sharing_one"]
    recs = records(corpus)
    options = CheckOptions()
    setup = g.check_setup(recs[0], options, cached_tokenizer("cl100k_base"), "cl100k_base")
    rows = [row for chunk in chunks(recs, 19) for row in g.check_rows(chunk, setup)]
    assert g.unbounded_check(dataset(rows, seed=1), setup) == expected


def test_unbounded_check_of_a_hash_trace(cluster: Any, corpus: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    run("hash-trace", str(corpus), str(trace), "--tokenizer", "cl100k_base",
        "--block-size", "16")
    expected = check_json(trace, "--block-size", "16")
    recs = records(trace)
    setup = g.check_setup(recs[0], CheckOptions(block_size=16, hash_block_size=16))
    rows = [row for chunk in chunks(recs, 31) for row in g.check_rows(chunk, setup)]
    assert g.unbounded_check(dataset(rows, seed=2), setup) == expected


def test_a_bounded_cache_needs_the_sequence() -> None:
    assert g.sequence_reason(CheckOptions()) is None
    assert "bounded" in (g.sequence_reason(CheckOptions(capacity_tokens=4096)) or "")
    assert g.sequence_reason(CheckOptions(num_gpu_blocks=100)) is not None
    assert g.sequence_reason(CheckOptions(warmup=3)) is not None
    assert g.sequence_reason(CheckOptions(engine="sglang")) is not None


def test_merge_stats_equals_stats(cluster: Any, corpus: Path, tmp_path: Path) -> None:
    chat = tmp_path / "chat.jsonl"  # system prompts shared, sessions, and the corpus
    lines = [json.loads(line) for line in (PROMPTS / "chat.jsonl.example").read_text().splitlines()]
    rng = random.Random(3)
    more = [{"messages": [{"role": "system", "content": f"You are assistant {rng.randint(1, 4)}."},
                          {"role": "user", "content": f"Question {i}?"}]}
            for i in range(60)]
    chat.write_text("".join(json.dumps(x) + "\n" for x in lines + more + lines))
    for path in (corpus, chat):
        expected = json.loads(run("stats", str(path), "--json", "--tokenizer", "cl100k_base"))
        recs = records(path)
        rows = [g.stats_rows(chunk, tokenizer="cl100k_base", first_index=chunk[0].index)
                for chunk in chunks(recs, 9)]
        got = g.merge_stats(dataset(rows, seed=4))
        assert got == {k: v for k, v in expected.items() if k in got}
        assert set(expected) - set(got) <= {"input", "tokenizer", "chat_template", "skipped",
                                            "warnings", "wrote"}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 11, 99, 100, 101, 1000, 1001])
def test_nearest_rank_is_numpys(n: int) -> None:
    values = np.arange(n) * 3
    for q in (50, 90, 99):
        assert values[g.nearest_rank(n, q)] == np.percentile(values, q, method="nearest")
