"""Hugging Face datasets in and out, with the real ``datasets`` library.

The Hub itself cannot be reached from here. Where a test needs a hub dataset
"once cached", it builds that cache locally, in the layout an earlier online
``load_dataset`` leaves (named in that test as the one stand-in for the Hub).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import read_jsonl, write_jsonl

from promptkit import DatasetMap, Step, nonce_params

datasets.disable_progress_bars()

PROMPTKIT = [sys.executable, "-m", "promptkit"]
ROWS = [{"prompt": f"Question {i}: what is {i} + {i}?", "n": i + 1} for i in range(12)]


def texts(path: Path) -> list[str]:
    """The user text of every line of an openai/single_turn file."""
    out = []
    for row in read_jsonl(path):
        out.append(row["text"] if "text" in row else row["messages"][-1]["content"])
    return out


def source_of(kind: str, folder: Path) -> tuple[str, list[str]]:
    """A dataset of ROWS stored as ``kind``: its path and extra options."""
    ds = datasets.Dataset.from_list(ROWS)
    if kind == "parquet":
        ds.to_parquet(folder / "d.parquet")
        return str(folder / "d.parquet"), []
    if kind == "csv":
        ds.to_csv(folder / "d.csv", index=False)
        return str(folder / "d.csv"), []
    if kind == "json-array":
        (folder / "d.json").write_text(json.dumps(ROWS))
        return str(folder / "d.json"), []
    if kind == "arrow":
        ds.save_to_disk(folder / "saved")
        [arrow] = (folder / "saved").glob("*.arrow")
        return str(arrow), []
    if kind == "save_to_disk":
        ds.save_to_disk(folder / "saved")
        return str(folder / "saved"), []
    if kind == "dataset_dict":
        datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                              "test": ds}).save_to_disk(folder / "dd")
        return str(folder / "dd"), ["--split", "test"]
    if kind == "repo_folder":  # a dataset repository with two configs
        repo = folder / "repo"
        (repo / "main").mkdir(parents=True)
        (repo / "other").mkdir()
        ds.to_parquet(repo / "main" / "train.parquet")
        datasets.Dataset.from_list(ROWS[:2]).to_parquet(repo / "other" / "train.parquet")
        (repo / "README.md").write_text(
            "---\nconfigs:\n- config_name: main\n  data_files: main/*.parquet\n"
            "- config_name: other\n  data_files: other/*.parquet\n---\n# test\n")
        return str(repo), ["--config", "main"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parquet", "csv", "arrow", "save_to_disk", "dataset_dict",
                                  "repo_folder"])
def test_every_dataset_source_reads_the_same_records(kind, tmp_path, run):
    path, options = source_of(kind, tmp_path)
    out = tmp_path / "out.jsonl"
    result = run("nonce", path, out, "--seed", "3", *options)
    assert result.exit_code == 0, result.stderr
    assert [t.split("\n", 1)[1] for t in texts(out)] == [r["prompt"] for r in ROWS]
    # The column the mapping does not use is kept, as a JSONL line's unknown field is.
    assert [row["n"] for row in read_jsonl(out)] == [r["n"] for r in ROWS]
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    [source] = manifest["inputs"]
    assert source["format"] == "dataset" and source["records"] == 12
    assert source["dataset"]["mapping"] == {"layout": "text", "text": "prompt"}
    # The default for a dataset: it holds any conversation and keeps unknown fields.
    assert manifest["output"]["format"] == "mooncake_trace"
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_a_column_that_has_no_place_in_the_output_format_is_refused(tmp_path, run):
    path, _ = source_of("parquet", tmp_path)
    for fmt, name in (("openai", "out.jsonl"), ("parquet", "out.parquet")):
        result = run("nonce", path, tmp_path / name, "--to", fmt)
        assert result.exit_code == 1
        assert result.stderr.startswith("promptkit: "
                                        f"{path}:1: cannot write as {fmt}: {fmt} has no place "
                                        "for field 'n'")
        assert not (tmp_path / name).exists()


def test_a_json_array_reads_as_its_lines_and_dataset_options_read_it_as_a_dataset(tmp_path,
                                                                                    run):
    path, _ = source_of("json-array", tmp_path)
    out = tmp_path / "out.jsonl"
    assert run("nonce", path, out, "--seed", "3", "--to", "prompt").exit_code == 0
    written = read_jsonl(out)  # every field kept, each prompt nonce'd
    assert [row["prompt"].split("\n", 1)[1] for row in written] == [r["prompt"] for r in ROWS]
    assert [{**row, "prompt": r["prompt"]} for row, r in zip(written, ROWS, strict=True)] == ROWS
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == manifest["output"]["format"] == "prompt"
    limited = tmp_path / "limited.jsonl"  # --limit reads the first records, as lines
    assert run("nonce", path, limited, "--seed", "3", "--limit", "5", "--to",
               "prompt").exit_code == 0
    manifest = json.loads(Path(f"{limited}.manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == "prompt" and manifest["inputs"][0]["limit"] == 5
    assert limited.read_text().splitlines() == out.read_text().splitlines()[:5]
    shuffled = tmp_path / "shuffled.jsonl"  # --shuffle reads it as a dataset
    assert run("nonce", path, shuffled, "--seed", "3", "--shuffle").exit_code == 0
    manifest = json.loads(Path(f"{shuffled}.manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == "dataset"
    assert sorted(row["n"] for row in read_jsonl(shuffled)) == [r["n"] for r in ROWS]


def texts_of(path: Path) -> list[str]:
    return [row["prompt"] for row in read_jsonl(path)]


@pytest.mark.parametrize(("row", "args", "messages"), [
    ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}, [],
     [("system", "S"), ("user", "U")]),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
                        {"from": "human", "value": "again"}]}, [],
     [("user", "hi"), ("assistant", "yo"), ("user", "again")]),
    ({"instruction": "Translate.", "input": "chat", "output": "cat"}, [],
     [("user", "Translate.\n\nchat"), ("assistant", "cat")]),
    ({"instruction": "Say hi.", "input": "", "output": "hi"}, [],
     [("user", "Say hi."), ("assistant", "hi")]),
    ({"instruction": "And now?", "input": "", "output": "Done.", "system": "Be terse.",
      "history": [["First?", "Yes."]]}, [],
     [("system", "Be terse."), ("user", "First?"), ("assistant", "Yes."), ("user", "And now?"),
      ("assistant", "Done.")]),
    ({"question": "Why?", "answer": "Because."}, [], [("user", "Why?")]),
    ({"text": "plain"}, [], [("user", "plain")]),
    ({"body": "B", "persona": "P"}, ["--text-column", "body", "--system-column", "persona"],
     [("system", "P"), ("user", "B")]),
    ({"chat": [{"role": "user", "content": "C"}], "prompt": "not this"},
     ["--messages-column", "chat"], [("user", "C")]),
])
def test_columns_are_recognised_or_named(row, args, messages, tmp_path, run):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([row, row]).to_parquet(path)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", *args, path, "write", "--keep-replies", out)
    assert result.exit_code == 0, result.stderr
    used = {"messages", "conversations", "instruction", "input", "output", "system",
            "history", "question", "text", "body", "persona", "chat"}
    for written in read_jsonl(out):
        assert [(m["role"], m["content"]) for m in written["messages"]] == messages
        # Every column the mapping does not use is kept, as it is.
        assert written == {"messages": written["messages"],
                           **{k: v for k, v in row.items() if k not in used}}


def test_output_length_column_and_single_turn(tmp_path, run):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(path)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--output-length-column", "n", path, "write", "--to",
                 "single_turn", out)
    assert result.exit_code == 0, result.stderr
    assert [r["output_length"] for r in read_jsonl(out)] == [r["n"] for r in ROWS]


def test_limit_and_shuffle_are_reproducible(tmp_path, run):
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(path)
    orders = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / f"{name}.jsonl"
        result = run("nonce", path, out, "--shuffle", "--seed", seed, "--limit", "8")
        assert result.exit_code == 0, result.stderr
        orders[name] = [t.split("\n", 1)[1] for t in texts(out)]
    assert orders["a"] == orders["b"] != orders["c"]
    assert len(orders["a"]) == 8 and len(set(orders["a"])) == 8
    assert orders["a"] != [r["prompt"] for r in ROWS[:8]]
    manifest = json.loads((tmp_path / "a.jsonl.manifest.json").read_text())
    assert manifest["inputs"][0]["dataset"]["options"] == {"limit": 8, "shuffle_seed": 5}
    again = tmp_path / "again.jsonl"
    assert run("rebuild", tmp_path / "a.jsonl.manifest.json", again).exit_code == 0
    assert again.read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_a_broken_data_file_is_one_line(tmp_path, run):
    path = tmp_path / "d.csv"
    path.write_text('prompt,n\n"p0,1\n')
    result = run("nonce", path, tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert result.stderr == f"promptkit: {path}:1: not CSV: unexpected end of data\n"
    assert not (tmp_path / "out.jsonl").exists()


def test_parquet_and_hf_dir_outputs_round_trip(tmp_path, run, single_turn):
    for fmt, name in (("parquet", "out.parquet"), ("hf-dir", "out_dir")):
        out = tmp_path / name
        result = run("nonce", single_turn, out, "--to", fmt, "--seed", "4")
        assert result.exit_code == 0, result.stderr
        assert run("verify", out).exit_code == 0
        back = tmp_path / f"{name}.jsonl"
        assert run("pipe", "read", out, "write", "--to", "single_turn", back).exit_code == 0
        direct = tmp_path / "direct.jsonl"
        assert run("nonce", single_turn, direct, "--seed", "4").exit_code == 0
        assert read_jsonl(back) == read_jsonl(direct)  # every field survives the table
    loaded = datasets.load_from_disk(str(tmp_path / "out_dir"))
    assert loaded.num_rows == 4
    again = tmp_path / "again_dir"
    assert run("rebuild", tmp_path / "out_dir.manifest.json", again).exit_code == 0


def test_content_parts_cannot_be_written_as_a_table(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"texts": ["a", "b"]}])
    result = run("nonce", source, tmp_path / "out.parquet", "--to", "parquet")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("promptkit: "
                                     f"{source}:1: cannot write as parquet: parquet has no "
                                     "place for content parts (only text content)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_dataset_map_with_two_processes_equals_the_cli(tmp_path, run):
    path = tmp_path / "d.parquet"  # promptkit's parquet has no place for other columns
    datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in ROWS] * 20).to_parquet(path)
    out = tmp_path / "cli.parquet"
    assert run("nonce", path, out, "--to", "parquet", "--seed", "9").exit_code == 0
    cli_rows = datasets.load_dataset("parquet", data_files=str(out), split="train").to_list()

    dataset = datasets.load_dataset("parquet", data_files=str(path), split="train")
    mapped = dataset.map(DatasetMap([Step("nonce", nonce_params(seed=9))]), batched=True,
                         batch_size=32, with_indices=True, num_proc=2,
                         remove_columns=dataset.column_names)
    assert mapped.to_list() == cli_rows
    assert len({row["messages"][0]["content"] for row in cli_rows}) == 240


def hub_cache(folder: Path, repo: str, rows: list[dict]) -> Path:
    """Stand-in for the Hub: the datasets cache an earlier online load_dataset(repo) leaves,
    built here from a local parquet file (the Hub is unreachable from this machine)."""
    import glob
    import shutil

    data = folder / "data.parquet"
    datasets.Dataset.from_list(rows).to_parquet(data)
    build = folder / "build"
    datasets.load_dataset("parquet", data_files=str(data), cache_dir=str(build))
    owner, name = repo.split("/")
    [made] = glob.glob(str(build / "parquet" / "*"))
    cache = folder / "cache"
    target = cache / f"{owner}___{name}" / "default"
    target.parent.mkdir(parents=True)
    shutil.move(made, target)
    [arrow] = target.glob("*/*/parquet-train.arrow")
    arrow.rename(arrow.with_name(f"{name}-train.arrow"))
    return cache


def test_a_cached_hub_dataset_reads_offline_and_an_uncached_one_is_one_line(tmp_path):
    cache = hub_cache(tmp_path, "someone/tiny", ROWS[:5])
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out.jsonl"
    done = subprocess.run([*PROMPTKIT, "nonce", "hf:someone/tiny", str(out), "--seed", "2"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [t.split("\n", 1)[1] for t in texts(out)] == [r["prompt"] for r in ROWS[:5]]
    assert json.loads(Path(f"{out}.manifest.json").read_text())["inputs"][0]["path"] == (
        "hf:someone/tiny")
    missing = subprocess.run([*PROMPTKIT, "nonce", "hf:someone/absent", str(tmp_path / "x.jsonl")],
                             env=env, capture_output=True, text=True)
    assert missing.returncode == 1
    [line] = missing.stderr.splitlines()
    assert line.startswith("promptkit: hf:someone/absent: not in the local cache and the "
                           "Hugging Face Hub cannot be reached")
    assert not (tmp_path / "x.jsonl").exists()


def bad_sources(folder: Path) -> dict[str, tuple[str, list[str], str]]:
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(folder / "ok.parquet")
    nulls = datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": None}])
    nulls.to_parquet(folder / "null.parquet")
    datasets.Dataset.from_list([{"prompt": 1}]).to_parquet(folder / "int.parquet")
    datasets.Dataset.from_list([{"id": 1, "score": 2.0}]).to_parquet(folder / "nocol.parquet")
    datasets.Dataset.from_list([{"prompt": "x"}]).select([]).to_parquet(folder / "empty.parquet")
    datasets.DatasetDict({"train": ds}).save_to_disk(folder / "dd")
    ok = str(folder / "ok.parquet")
    scripted = folder / "scripted"
    scripted.mkdir()
    (scripted / "scripted.py").write_text("raise SystemExit('remote code ran')\n")
    return {
        "dataset script": (str(scripted), [], "Dataset scripts are no longer supported"),
        "missing column": (ok, ["--text-column", "body"], "no column 'body'; the columns are "
                                                           "prompt, n"),
        "null text": (str(folder / "null.parquet"), [],
                      ":2: column 'prompt' is empty (null), not text"),
        "non-text column": (str(folder / "int.parquet"), [], ":1: column 'prompt' is int 1, "
                                                            "not text"),
        "unmappable": (str(folder / "nocol.parquet"), [],
                       "cannot tell which column holds the prompt; the columns are id, score"),
        "empty": (str(folder / "empty.parquet"), [], "empty dataset: no records"),
        "no split": (str(folder / "dd"), ["--split", "validation"],
                     "no split 'validation'; the splits are train"),
        "no such file": (str(folder / "nowhere.parquet"), [], "no such file"),
    }


def test_bad_datasets_are_one_line_exit_1_nothing_written(tmp_path, run):
    (tmp_path / "src").mkdir()
    for case, (path, args, problem) in bad_sources(tmp_path / "src").items():
        out = tmp_path / "out.jsonl"
        result = run("nonce", path, out, *args)
        assert result.exit_code == 1, (case, result.stderr)
        assert len(result.stderr.splitlines()) == 1, (case, result.stderr)
        assert problem in result.stderr, (case, result.stderr)
        assert result.stderr.startswith(f"promptkit: {path}"), (case, result.stderr)
        assert not out.exists(), case


def test_a_dataset_option_on_jsonl_is_a_usage_error(tmp_path, run):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    result = run("nonce", path, tmp_path / "out.jsonl", "--split", "test")
    assert result.exit_code == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"Error: {path}: a JSONL input; --split is for datasets (parquet, dataset folders, "
        "hf:OWNER/NAME)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]


def test_a_bad_config_names_the_dataset(tmp_path, run):
    path, _ = source_of("repo_folder", tmp_path)
    result = run("stats", path, "--config", "nope")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {path}: ") and "nope" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_rebuild_reads_a_hub_dataset_at_the_commit_it_was_read_at():
    from promptkit.provenance.rebuild import _same_rows

    recorded = {"options": {"revision": "main", "limit": 3}, "revision": "0a1b2c"}
    assert _same_rows(recorded) == {"revision": "0a1b2c", "limit": 3}
    assert _same_rows({"options": {"split": "test"}}) == {"split": "test"}


def test_a_sharegpt_dataset_keeps_its_columns_and_leaves_out_empty_values(tmp_path, run):
    """ShareGPT's shape as parquet, with an id, a source and per-turn weights (as some
    ShareGPT derivatives have): the turns' struct has every key in every turn."""
    rows = [
        {"id": "a1", "source": "sharegpt", "conversations": [
            {"from": "human", "value": "Weather in Paris?", "weight": None},
            {"from": "gpt", "value": "18 degrees.", "weight": 1.0},
            {"from": "human", "value": "And tomorrow?", "weight": None},
            {"from": "gpt", "value": "Rain.", "weight": 0.0}]},
        {"id": "a2", "source": None, "conversations": [
            {"from": "human", "value": "Hi", "weight": None},
            {"from": "gpt", "value": "Hello", "weight": None}]},
    ]
    path = tmp_path / "sharegpt.parquet"
    datasets.Dataset.from_list(rows).to_parquet(path)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", path, "write", "--keep-replies", out)
    assert result.exit_code == 0, result.stderr
    first, second = read_jsonl(out)
    assert first["id"] == "a1" and first["source"] == "sharegpt"
    assert [m.get("weight") for m in first["messages"]] == [None, 1.0, None, 0.0]
    assert [set(m) for m in first["messages"]] == [
        {"role", "content"}, {"role", "content", "weight"}, {"role", "content"},
        {"role", "content", "weight"}]
    assert second == {"messages": [{"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello"}], "id": "a2"}
