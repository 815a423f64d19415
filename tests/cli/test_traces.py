"""Request traces of lengths only (Azure LLM inference traces, BurstGPT, JSONL with
length fields) become AIPerf ``mooncake_trace`` files.

The fixtures are written here in the published shapes, with made-up values: the
exact headers and the exact spelling of each trace's timestamps (Azure 2023: a
date-time with 7 fractional digits and no zone; Azure 2024: 6 digits and
``+00:00``; BurstGPT: seconds from the trace's start).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import aiperf_tool
import datasets
import pytest
from helpers import read_jsonl, write_jsonl

from promptkit.core.errors import InvalidRecordError
from promptkit.formats.table import Timeline

datasets.disable_progress_bars()

AZURE_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:50.9951690,879,55
2023-11-16 18:15:51.3910170,91,16
"""
AZURE_2023_WRITTEN = [
    {"timestamp": 0, "input_length": 374, "output_length": 44},
    {"timestamp": 4315, "input_length": 396, "output_length": 109},  # 4314.579 ms
    {"timestamp": 4315, "input_length": 879, "output_length": 55},
    {"timestamp": 4710, "input_length": 91, "output_length": 16},  # 4710.427 ms
]

AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-12 00:00:00.001163+00:00,1020,3
2024-05-12 00:00:01+00:00,4302,12
2024-05-12 00:00:01.002663+00:00,215,390
"""
AZURE_2024_WRITTEN = [
    {"timestamp": 0, "input_length": 1020, "output_length": 3},
    {"timestamp": 999, "input_length": 4302, "output_length": 12},  # 998.837 ms
    {"timestamp": 1002, "input_length": 215, "output_length": 390},  # 1001.5 ms, half up
]

BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,ChatGPT,1087,230,1317,Conversation log
118,GPT-4,417,276,693,API log
"""
BURSTGPT_WRITTEN = [  # the columns the mapping does not use are kept, as fields
    {"timestamp": 0, "input_length": 472, "output_length": 18, "Model": "ChatGPT",
     "Total tokens": 490, "Log Type": "Conversation log"},
    {"timestamp": 40000, "input_length": 1087, "output_length": 230, "Model": "ChatGPT",
     "Total tokens": 1317, "Log Type": "Conversation log"},
    {"timestamp": 113000, "input_length": 417, "output_length": 276, "Model": "GPT-4",
     "Total tokens": 693, "Log Type": "API log"},
]

JSONL_TRACE = [
    {"timestamp": 27000, "input_tokens": 120, "output_tokens": 30, "user": "a"},
    {"timestamp": 27250.4, "input_tokens": 80, "output_tokens": 12, "user": "b"},
    {"timestamp": 30000, "input_tokens": 64, "output_tokens": 7, "user": "a"},
]
JSONL_OPTIONS = ["--input-length-column", "input_tokens", "--output-length-column",
                 "output_tokens", "--timestamp-column", "timestamp"]
JSONL_WRITTEN = [  # other keys ("user") are kept, as fields
    {"timestamp": 0, "input_length": 120, "output_length": 30, "user": "a"},
    {"timestamp": 250, "input_length": 80, "output_length": 12, "user": "b"},
    {"timestamp": 3000, "input_length": 64, "output_length": 7, "user": "a"},
]


def strictly_mooncake(path: Path) -> list[dict]:
    """The lines of ``path``, each valid for AIPerf's MooncakeTrace model. Columns the
    mapping does not use ride along as fields AIPerf keeps aside (``model_extra``) and
    never sends; nothing lands in a request (``extra``)."""
    rows = read_jsonl(path)
    for row, model in zip(rows, aiperf_tool.validate("MooncakeTrace", rows), strict=True):
        assert model.values["extra"] is None, row
        assert set(model.model_extra or {}) <= set(row) - {"timestamp", "input_length",
                                                         "output_length", "hash_ids"}
        assert isinstance(row["timestamp"], int)
    return rows


def manifest_of(path: Path) -> dict:
    return json.loads(Path(f"{path}.manifest.json").read_text())


@pytest.mark.parametrize(("name", "text", "written", "mapping"), [
    ("AzureLLMInferenceTrace_conv.csv", AZURE_2023, AZURE_2023_WRITTEN,
     {"layout": "lengths", "input_length": "ContextTokens", "output_length": "GeneratedTokens",
      "timestamp": "TIMESTAMP", "timestamp_unit": "ms"}),
    ("AzureLLMInferenceTrace_code_1week.csv", AZURE_2024, AZURE_2024_WRITTEN,
     {"layout": "lengths", "input_length": "ContextTokens", "output_length": "GeneratedTokens",
      "timestamp": "TIMESTAMP", "timestamp_unit": "ms"}),
    ("BurstGPT_1.csv", BURSTGPT, BURSTGPT_WRITTEN,
     {"layout": "lengths", "input_length": "Request tokens", "output_length": "Response tokens",
      "timestamp": "Timestamp", "timestamp_unit": "s"}),
])
def test_a_published_trace_becomes_a_mooncake_trace_as_it_is(name, text, written, mapping,
                                                              tmp_path, run):
    trace = tmp_path / name
    trace.write_text(text)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", trace, "write", "--to", "mooncake_trace", out)
    assert result.exit_code == 0, result.stderr
    assert strictly_mooncake(out) == written
    [source] = manifest_of(out)["inputs"]
    assert source["dataset"] == {"options": {}, "mapping": mapping,
                                 "sha256_of": "the file's bytes"}
    assert source["sha256"] == hashlib.sha256(trace.read_bytes()).hexdigest()
    assert source["records"] == len(written)
    assert manifest_of(out)["aiperf"]["custom_dataset_type"] == "mooncake_trace"
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_records_of_equal_lengths_are_distinct_prompts(tmp_path, run):
    # AIPerf makes a prompt of random tokens for each record with only an input length,
    # so each is a prompt of its own until AIPerf wraps around the file.
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     + "".join(f"2023-11-16 18:15:4{i}.0000000,100,10\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", trace, "write", out)
    assert result.exit_code == 0, result.stderr
    assert "wrote 5 records (5 distinct) as mooncake_trace" in result.stderr
    assert manifest_of(out)["aiperf"]["distinct_records"] == 5


def test_a_trace_of_lengths_is_written_as_mooncake_trace_unless_told(tmp_path, run):
    trace = tmp_path / "BurstGPT_1.csv"
    trace.write_text(BURSTGPT)
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", trace, "write", out).exit_code == 0
    assert manifest_of(out)["output"]["format"] == "mooncake_trace"
    assert read_jsonl(out) == BURSTGPT_WRITTEN


@pytest.mark.parametrize("fmt", ["single_turn", "multi_turn", "openai", "sharegpt", "prompt"])
def test_formats_with_text_refuse_a_trace_of_lengths_in_one_line(fmt, tmp_path, run):
    trace = tmp_path / "trace.csv"
    trace.write_text(AZURE_2023)
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = run("pipe", "read", trace, "write", "--to", fmt, out)
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: "
                             f"{trace}:1: cannot write as {fmt}: record has no text (only "
                             f"input_length/hash_ids); {fmt} cannot hold it, only "
                             "mooncake_trace can\n")
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "trace.csv"]


def test_a_jsonl_trace_is_mapped_by_the_column_options(tmp_path, run):
    trace = write_jsonl(tmp_path / "trace.jsonl", JSONL_TRACE)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", *JSONL_OPTIONS, trace, "write", out)
    assert result.exit_code == 0, result.stderr
    assert strictly_mooncake(out) == JSONL_WRITTEN  # other keys ("user") are kept
    [source] = manifest_of(out)["inputs"]
    assert source["format"] == "jsonl"
    assert source["dataset"] == {
        "options": {"input_length_column": "input_tokens",
                    "output_length_column": "output_tokens", "timestamp_column": "timestamp"},
        "mapping": {"layout": "lengths", "input_length": "input_tokens",
                    "output_length": "output_tokens", "timestamp": "timestamp",
                    "timestamp_unit": "ms"}}
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{out}.manifest.json", again)
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == out.read_bytes()


def test_a_jsonl_trace_reads_from_stdin_and_in_seconds(tmp_path, run):
    lines = "".join(json.dumps(row) + "\n" for row in [
        {"ts": 1700000000.5, "in": 10}, {"ts": 1700000001.25, "in": 20}])
    result = run("pipe", "read", "--input-length-column", "in", "--timestamp-column", "ts",
                 "--timestamp-unit", "s", "-", "write", "-", input=lines)
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"timestamp": 0, "input_length": 10}, {"timestamp": 750, "input_length": 20}]


def test_without_options_a_jsonl_trace_is_an_error_that_names_the_options(tmp_path, run):
    trace = write_jsonl(tmp_path / "trace.jsonl", JSONL_TRACE)
    result = run("pipe", "read", trace, "write", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {trace}:1: cannot tell the format from the keys")
    assert result.stderr.rstrip().endswith("or map its keys with --text-column or "
                                           "--input-length-column")


def test_the_options_name_columns_of_a_dataset(tmp_path, run):
    path = tmp_path / "trace.parquet"
    datasets.Dataset.from_list([
        {"t": "2025-01-01T00:00:00Z", "prompt_len": 10, "gen_len": 5},
        {"t": "2025-01-01T00:00:02.5Z", "prompt_len": 11, "gen_len": 6},
    ]).to_parquet(path)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--input-length-column", "prompt_len", "--output-length-column",
                 "gen_len", "--timestamp-column", "t", path, "write", out)
    assert result.exit_code == 0, result.stderr
    assert strictly_mooncake(out) == [
        {"timestamp": 0, "input_length": 10, "output_length": 5},
        {"timestamp": 2500, "input_length": 11, "output_length": 6}]


def test_every_command_that_reads_records_takes_the_options(tmp_path, run):
    trace = write_jsonl(tmp_path / "trace.jsonl", JSONL_TRACE)
    result = run("stats", trace, "--json", *JSONL_OPTIONS)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["records"] == 3 and report["prompt_tokens"]["total"] == 264
    nonced = tmp_path / "nonced.jsonl"
    result = run("nonce", trace, nonced, "--seed", "1", *JSONL_OPTIONS)
    assert result.exit_code == 0, result.stderr
    rows = strictly_mooncake(nonced)
    assert [r["timestamp"] for r in rows] == [0, 250, 3000]
    assert len({r["hash_ids"][0] for r in rows}) == 3  # a fresh first block each


def test_a_timestamp_column_times_a_dataset_of_texts(tmp_path, run):
    path = tmp_path / "d.csv"
    path.write_text("prompt,sent\nHello,2025-03-01 10:00:00\nAgain,2025-03-01 10:00:01.2\n")
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--timestamp-column", "sent", path, "write", "--to",
                 "single_turn", out)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == [{"timestamp": 0, "role": "user", "text": "Hello"},
                               {"timestamp": 1200, "role": "user", "text": "Again"}]


BAD_ROWS = {  # a row after a good first row: its cells, the column named, the problem
    "negative length": ("2023-11-16 18:15:50.0,-3,10", "ContextTokens",
                        "is -3, not a positive integer"),
    "fractional length": ("2023-11-16 18:15:50.0,3,2.5", "GeneratedTokens",
                          "is 2.5, not a positive integer"),
    "zero output": ("2023-11-16 18:15:50.0,3,0", "GeneratedTokens",
                    "is 0, not a positive integer"),
    "empty length": ("2023-11-16 18:15:50.0,,10", "ContextTokens",
                     "is empty (null), not a positive integer"),
    "unparseable timestamp": ("16/11/2023 18:15,3,10", "TIMESTAMP",
                              "is '16/11/2023 18:15', not a time"),
    "out of time order": ("2023-11-16 18:15:40.0,3,10", "TIMESTAMP",
                          "is '2023-11-16 18:15:40.0', earlier than the record before it "
                          "('2023-11-16 18:15:46.6805900'); a trace must be in time order"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_value_is_one_line_naming_file_row_and_column(case, tmp_path, run):
    cells, column, problem = BAD_ROWS[case]
    trace = tmp_path / "trace.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     f"2023-11-16 18:15:46.6805900,374,44\n{cells}\n"
                     "2023-11-16 18:15:51.0,91,16\n")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    result = run("pipe", "read", trace, "write", out)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {trace}:2: column {column!r} {problem}")
    assert len(result.stderr.splitlines()) == 1
    assert out.read_text() == "precious\n"

    result = run("pipe", "read", "--skip-invalid", trace, "write", out)
    assert result.exit_code == 0, result.stderr
    assert [r["input_length"] for r in strictly_mooncake(out)] == [374, 91]
    skipped = manifest_of(out)["skipped"]
    assert skipped["count"] == 1 and skipped["lines"][0].startswith(f"2: column {column!r} ")


def test_a_bad_jsonl_value_names_the_line(tmp_path, run):
    trace = write_jsonl(tmp_path / "trace.jsonl", [
        JSONL_TRACE[0], {"timestamp": 27100, "input_tokens": "many", "output_tokens": 3}])
    result = run("pipe", "read", *JSONL_OPTIONS, trace, "write", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: "
                             f"{trace}:2: column 'input_tokens' is 'many', not a positive "
                             "integer\n")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("args", "code", "problem"), [
    (["--from", "single_turn", "--input-length-column", "input_tokens"], 2,
     "--from single_turn reads lines as that format; --input-length-column maps them by "
     "columns: give one"),
    (["--input-length-column", "input_tokens", "--text-column", "user"], 2,
     "a record has a text or an input length, not both: give --input-length-column without "
     "--text-column, --messages-column and --system-column"),
    (["--input-length-column", "input_tokens", "--timestamp-unit", "s"], 2,
     "--timestamp-unit: no timestamp column; name it with --timestamp-column"),
    (["--input-length-column", "tokens"], 1, "no column 'tokens'; the columns are "
                                             "timestamp, input_tokens, output_tokens, user"),
    (["--split", "test", "--input-length-column", "input_tokens"], 2,
     "a JSONL input; --split is for datasets (parquet, dataset folders, hf:OWNER/NAME)"),
])
def test_options_that_do_not_fit_are_one_line(args, code, problem, tmp_path, run):
    """Options that do not go together are usage errors (exit 2, Click's usage lines
    and one error line); a column the file lacks is bad input (exit 1, one line)."""
    trace = write_jsonl(tmp_path / "trace.jsonl", JSONL_TRACE)
    result = run("pipe", "read", *args, trace, "write", tmp_path / "out.jsonl")
    assert result.exit_code == code
    if code == 1:
        assert result.stderr == f"promptkit: {trace}: {problem}\n"
    else:
        assert result.stderr.splitlines()[-1] == f"Error: {trace}: {problem}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.jsonl"]


def test_the_text_options_read_jsonl_too(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"body": "B1", "n": 4}, {"body": "B2", "n": 5}])
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", "--text-column", "body", "--output-length-column", "n", source,
                 "write", "--to", "single_turn", out)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(out) == [{"role": "user", "text": "B1", "output_length": 4},
                               {"role": "user", "text": "B2", "output_length": 5}]


# ---------------------------------------------------------------- timestamps


def times(values: list, unit: str = "ms") -> list[int]:
    clock = Timeline(unit)
    return [clock.place(value, "t") for value in values]


def test_timestamps_are_milliseconds_from_the_first_rounded_half_up():
    assert times(["2023-11-16 18:15:46.6805900", "2023-11-16 18:15:46.6810900",
                  "2023-11-16 18:15:46.6815899"]) == [0, 1, 1]
    assert times(["2024-05-12T00:00:00Z", "2024-05-12 02:00:00.0005+02:00"]) == [0, 1]
    # Every fractional digit counts: 0.4993 ms is 0, though 6 digits would make it 0.500.
    assert times(["2023-11-16 18:15:46.0000009", "2023-11-16 18:15:46.0005002",
                  "2023-11-16 18:15:46.00150000001Z"]) == [0, 0, 1]
    assert times([1000, 1000, 1000.5, 2000.49]) == [0, 0, 1, 1000]  # 0.5 ms rounds up
    assert times([5, "45", 118.25], "s") == [0, 40000, 113250]
    assert times([10**15, 10**15 + 1500], "us") == [0, 2]
    assert times([0, 2_500_000], "ns") == [0, 3]


def test_a_zone_is_taken_into_account_and_no_zone_is_utc():
    assert times(["2024-05-12 00:00:00", "2024-05-12 01:00:00+01:00",
                  "2024-05-12T00:00:01.5"]) == [0, 0, 1500]


@pytest.mark.parametrize(("values", "problem"), [
    (["2024-05-12 00:00:00", 5], "is 5, a number, but the first record's is a date-time"),
    ([5, "2024-05-12 00:00:00"], "a date-time, but the first record's is a number"),
    ([5, 4], "is 4, earlier than the record before it (5)"),
    ([None], "is empty (null), not a time"),
    ([float("nan")], "is empty (null), not a time"),
    ([True], "is True, not a time"),
    ([0, "1e40"], "is '1e40', too far from the first record's"),
])
def test_bad_timestamps_are_refused(values, problem):
    with pytest.raises(InvalidRecordError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        times(values)


def test_a_refused_timestamp_leaves_the_clock_as_it_was():
    clock = Timeline("ms")
    assert clock.place(10, "t") == 0
    with pytest.raises(InvalidRecordError):
        clock.place(5, "t")
    assert clock.place(10, "t") == 0  # compared with the last record kept, 10
    assert clock.place(12, "t") == 2


def test_dataset_map_refuses_a_trace_s_timestamps_and_takes_its_lengths():
    from promptkit import DatasetMap, Step, nonce_params
    from promptkit.core.errors import PromptkitError

    batch = {"TIMESTAMP": ["2023-11-16 18:15:46.6805900"], "ContextTokens": [374],
             "GeneratedTokens": [44]}
    with pytest.raises(PromptkitError, match="read it with the promptkit command line"):
        DatasetMap([Step("nonce", nonce_params(seed=1))])(batch, [0])
    untimed = {k: v for k, v in batch.items() if k != "TIMESTAMP"}
    rows = DatasetMap([Step("nonce", nonce_params(seed=1))])(untimed, [0])
    assert rows["input_length"] == [374] and rows["output_length"] == [44]
    assert rows["timestamp"] == [None] and len(rows["hash_ids"][0]) == 1


@pytest.mark.parametrize("args", [["--limit", "2"], []])
def test_a_csv_read_in_part_is_closed_at_once(args, tmp_path, run):
    import gc
    import warnings

    trace = tmp_path / "trace.csv"
    trace.write_text(AZURE_2023 if args else AZURE_2023 + "2023-11-16 18:15:52.0,-1,5\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = run("pipe", "read", *args, trace, "write", tmp_path / "out.jsonl")
        gc.collect()
    assert result.exit_code == (0 if args else 1), result.stderr
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
