"""``hash-trace``, ``check`` and ``stats`` with ``--ray`` on a real two-node cluster: the
same bytes, manifest figures and reports as without ``--ray``, on one file and on a
folder of shards (one gzipped), cut into many chunks by a small
``PROMPTKIT_RAY_CHUNK_BYTES``; a check that needs the requests in order runs on one node
and says so."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import shared_prefix_texts

from promptkit.cli import cli

pytestmark = pytest.mark.ray

pytest.importorskip("ray")
CHUNK = 1500
SHARDS = 9


@pytest.fixture(scope="module")
def cluster(ray_cluster: Any) -> Any:
    return ray_cluster


def corpus_lines() -> list[str]:
    """Text records from the repository's prompts: shared heads, exact repeats (so
    fewer distinct prompts than records), cache salts, records under one block."""
    texts = shared_prefix_texts(120, heads=3, head_prompts=3, share=0.4, repeats=0.2)
    lines = []
    for i, text in enumerate(texts):
        line: dict[str, Any] = {"text": text}
        if i % 9 == 4:
            line["extra"] = {"cache_salt": f"s{i % 2}"}
        lines.append(json.dumps(line) + "\n")
    return lines


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One JSONL file of many chunks, and the same lines as a folder of SHARDS shards,
    one gzipped."""
    lines = corpus_lines()
    folder = tmp_path_factory.mktemp("inputs")
    path = folder / "corpus.jsonl"
    path.write_text("".join(lines))
    assert path.stat().st_size > 8 * CHUNK
    shards = folder / "shards"
    shards.mkdir()
    size = len(lines) // SHARDS + 1
    for i in range(SHARDS):
        text = "".join(lines[i * size:(i + 1) * size]).encode()
        if i == 3:
            (shards / f"part-{i:02d}.jsonl.gz").write_bytes(gzip.compress(text))
        else:
            (shards / f"part-{i:02d}.jsonl").write_bytes(text)
    return {"file": path, "shards": shards}


@pytest.fixture(params=["file", "shards"])
def corpus(request: pytest.FixtureRequest, inputs: dict[str, Path]) -> Path:
    return inputs[request.param]


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False,
                              env={"PROMPTKIT_RAY_CHUNK_BYTES": str(CHUNK)})


def ok(*args: str | Path) -> Any:
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    return result


def parts(folder: Path) -> bytes:
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("part-"))
    return b"".join((folder / name).read_bytes() for name in names)


def test_hash_trace(cluster: Any, corpus: Path, tmp_path: Path) -> None:
    tail = ["--tokenizer", "cl100k_base", "--block-size", "16"]
    plain = tmp_path / "plain.jsonl"
    ok("hash-trace", corpus, plain, *tail)
    folder = tmp_path / "parts"
    ok("hash-trace", corpus, folder, *tail, "--ray", cluster.address)
    assert parts(folder) == plain.read_bytes()
    made = json.loads((folder / "manifest.json").read_text())
    local = json.loads((tmp_path / "plain.jsonl.manifest.json").read_text())
    assert made["ray"]["chunks"] >= 8
    records = made["inputs"][0]["records"]
    assert made["aiperf"]["distinct_records"] == local["aiperf"]["distinct_records"] < records
    assert made["token_stats"] == local["token_stats"]
    assert made["token_stats"]["records"] == records
    assert made["output"]["sha256"] == local["output"]["sha256"]


def report(result: Any) -> dict[str, Any]:
    return {k: v for k, v in json.loads(result.stdout).items() if k != "ray"}


def test_check_unbounded(cluster: Any, corpus: Path) -> None:
    args = ["check", corpus, "--tokenizer", "cl100k_base", "--json"]
    plain = report(ok(*args))
    on_ray = ok(*args, "--ray", cluster.address)
    assert on_ray.stderr == ""
    ray_section = json.loads(on_ray.stdout)["ray"]
    assert ray_section["chunks"] >= 8 and ray_section["nodes"] == 2
    assert report(on_ray) == plain
    assert 0 < plain["hit_rate"] < 1 and plain["first_block"]["records_sharing_one"]


def test_check_text_and_max_hit_rate(cluster: Any, inputs: dict[str, Path]) -> None:
    args = ["check", inputs["file"], "--tokenizer", "cl100k_base", "--max-hit-rate", "0.01"]
    plain = invoke(*args)
    on_ray = invoke(*args, "--ray", cluster.address)
    assert plain.exit_code == on_ray.exit_code == 1
    assert on_ray.stdout == plain.stdout and on_ray.stderr == plain.stderr
    assert "above --max-hit-rate" in on_ray.stderr


def test_check_in_sequence_runs_on_one_node(cluster: Any, corpus: Path) -> None:
    args = ["check", corpus, "--tokenizer", "cl100k_base", "--json", "--capacity-tokens", "600"]
    plain = report(ok(*args))
    on_ray = ok(*args, "--ray", cluster.address)
    assert on_ray.stderr == ("promptkit: check: a bounded cache (LRU) depends on the order "
                             "of every request: ran on one node\n")
    assert report(on_ray) == plain


def test_check_of_sessions_runs_on_one_node(cluster: Any, tmp_path: Path) -> None:
    path = tmp_path / "sessions.jsonl"
    lines = []
    for i in range(60):
        row: dict[str, Any] = {"messages": [{"role": "user", "content": f"Question {i % 7} "
                                             + "word " * (i % 30)}]}
        if i % 5 == 0:
            row["session_id"] = f"s{i % 3}"
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))
    args = ["check", path, "--tokenizer", "cl100k_base", "--json"]
    plain = report(ok(*args))
    on_ray = ok(*args, "--ray", cluster.address)
    assert on_ray.stderr == ("promptkit: check: sessions and conversations are sent in their "
                             "own order: ran on one node\n")
    assert report(on_ray) == plain


def test_check_of_a_timed_trace_runs_on_one_node(cluster: Any, tmp_path: Path) -> None:
    """AIPerf replays it on its fixed schedule, in timestamp order: a sequence."""
    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps({"timestamp": (7 * i) % 30, "output_length": 4,
                                        "text_input": f"Question {i % 7} " + "word " * i})
                            + "\n" for i in range(30)))
    args = ["check", path, "--tokenizer", "cl100k_base", "--json"]
    plain = report(ok(*args))
    assert plain["fixed_schedule"] is True
    on_ray = ok(*args, "--ray", cluster.address)
    assert on_ray.stderr == ("promptkit: check: AIPerf's fixed schedule sends the "
                             "conversations in the order of their timestamps: ran on one "
                             "node\n")
    assert report(on_ray) == plain


def test_stats(cluster: Any, corpus: Path) -> None:
    args = ["stats", corpus, "--tokenizer", "cl100k_base", "--json"]
    plain = report(ok(*args))
    on_ray = ok(*args, "--ray", cluster.address)
    assert json.loads(on_ray.stdout)["ray"]["chunks"] >= 8
    assert report(on_ray) == plain
    assert plain["prompt_tokens"]["p99"] > plain["prompt_tokens"]["p50"]


def test_stats_text(cluster: Any, inputs: dict[str, Path]) -> None:
    text = ["stats", inputs["shards"], "--tokenizer", "cl100k_base"]
    assert ok(*text, "--ray", cluster.address).stdout == ok(*text).stdout


def test_plot_with_ray_is_a_usage_error(inputs: dict[str, Path], tmp_path: Path) -> None:
    for command in ("check", "stats"):
        result = invoke(command, inputs["file"], "--tokenizer", "cl100k_base", "--plot",
                        tmp_path / "x.png", "--ray", "local")
        assert result.exit_code == 2 and "run it without --ray" in result.stderr
