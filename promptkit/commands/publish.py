"""Publish records as a Hugging Face dataset repository folder, and push it to the Hub.

A benchmark's prompts are worth sharing where datasets are looked for, with the
provenance that makes them trustworthy and the file AIPerf loads as it is.
:func:`publish` makes a folder that is a dataset repository as it stands::

    README.md                            dataset card: YAML metadata, and how the data was made
    data/train-00000-of-00001.parquet    the records in promptkit's table columns, in order,
                                         in shards of at most --max-shard-size
    aiperf/prompts.jsonl                 the same records as AIPerf loads them
    aiperf/prompts.jsonl.manifest.json   its manifest, the history of the input, and the
                                         sha256 of every other published file

The card's ``configs`` point the ``default`` config's ``train`` split at
``data/train-*.parquet`` only, so ``datasets.load_dataset(FOLDER)`` reads the
shards and never the JSONL. The folder is built beside OUT_DIR and renamed into
place at the end: on any error nothing is left behind and an existing OUT_DIR is
untouched. Everything streams (the JSONL is read back a row group at a time).

:func:`push` uploads the folder with ``huggingface_hub``; the token is the one
``huggingface_hub`` finds (``HF_TOKEN`` or a login) and is never written or shown.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from typing import Any

import orjson

from promptkit.core import leftovers
from promptkit.core.errors import BadOptionError, InvalidRecordError, PromptkitError
from promptkit.core.records import Record
from promptkit.core.version import VERSION
from promptkit.formats import FORMATS
from promptkit.formats.aiperf import first_turn
from promptkit.formats.table import COLUMNS, arrow_schema, to_row
from promptkit.io.files import (
    STDIO,
    Lock,
    fsync_file,
    os_error,
    read_whole,
    replace_folder,
    write_text,
)
from promptkit.io.hashing import file_sha256
from promptkit.provenance import manifest
from promptkit.runner import pipeline

#: ``--to`` choices: the line formats AIPerf loads as they are.
AIPERF_FORMATS = tuple(name for name, fmt in FORMATS.items() if fmt.aiperf_type)
#: The default: it holds every record a table row can hold (text, or input_length and
#: hash_ids; schedule, session and extra fields), whatever the input's format.
DEFAULT_FORMAT = "mooncake_trace"
#: promptkit cannot know the input's license; the Hub's id for that is "unknown".
DEFAULT_LICENSE = "unknown"
DEFAULT_SHARD_SIZE = "500MB"
DEFAULT_SHARD_BYTES = 500 * 10**6
#: Where things go inside the published folder.
DATA_DIR = "data"
AIPERF_FILE = "aiperf/prompts.jsonl"
MANIFEST_FILE = AIPERF_FILE + manifest.SUFFIX
SPLIT = "train"
TAGS = ["benchmark", "llm-serving", "aiperf", "promptkit"]

#: Rows in one parquet row group, at most (as ``--to parquet`` writes).
ROW_GROUP = 1000
#: Bytes of one row group, at most (estimated as their JSON): smaller for small shards.
ROW_GROUP_BYTES = 64 << 20
#: Bytes a shard keeps free for its footer, and more for each row group's metadata.
FOOTER_BYTES = 4096
FOOTER_BYTES_PER_GROUP = 1024

#: The Hub's size buckets (``size_categories``), as upper bounds.
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                   (100_000_000, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``500MB`` (powers of 1000), ``64MiB`` (of 1024) or ``1000``."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = found.group(2).upper() if found else ""
    if not found or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 500MB, 64MiB, 200KB or 100000)")
    size = int(float(found.group(1)) * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{text!r}: a shard holds at least one byte")
    return size


def size_category(records: int) -> str:
    """The Hub's ``size_categories`` bucket of a number of records."""
    for bound, name in SIZE_CATEGORIES:
        if records < bound:
            return name
    return "n>1T"


def publish(input_path: str, out_dir: str, *, from_format: str | None = None,
            to_format: str = DEFAULT_FORMAT, skip_invalid: bool = False,
            workers: int | None = None, dataset: dict[str, Any] | None = None,
            license: str = DEFAULT_LICENSE, max_shard_size: int = DEFAULT_SHARD_BYTES,
            pretty_name: str | None = None, repo_id: str | None = None,
            overwrite: bool = False, argv: list[str] | None = None,
            keep_replies: bool = False) -> dict[str, Any]:
    """Make ``out_dir`` a dataset repository folder of the records of ``input_path``.

    Returns the manifest (also written to ``out_dir/aiperf/prompts.jsonl.manifest.json``).
    ``repo_id`` (where it will be pushed) only names the dataset in the card;
    ``keep_replies``: as :func:`promptkit.runner.pipeline.run` takes it.
    """
    if to_format not in AIPERF_FORMATS:
        raise PromptkitError(f"{to_format}: AIPerf does not load this format; "
                             f"publish as one of {', '.join(AIPERF_FORMATS)}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        raise BadOptionError(f"--license {license!r}: not a Hugging Face license id "
                             "(e.g. apache-2.0, mit, cc-by-4.0, other, unknown)")
    target = _check_target(input_path, out_dir, overwrite)
    with Lock(target):
        return _publish_locked(target, input_path, out_dir, from_format=from_format,
                               to_format=to_format, skip_invalid=skip_invalid,
                               workers=workers, dataset=dataset, license=license,
                               max_shard_size=max_shard_size, pretty_name=pretty_name,
                               repo_id=repo_id, overwrite=overwrite, argv=argv,
                               keep_replies=keep_replies)


def _publish_locked(target: str, input_path: str, out_dir: str, *, from_format: str | None,
                    to_format: str, skip_invalid: bool, workers: int | None,
                    dataset: dict[str, Any] | None, license: str, max_shard_size: int,
                    pretty_name: str | None, repo_id: str | None, overwrite: bool,
                    argv: list[str] | None, keep_replies: bool = False) -> dict[str, Any]:
    parent = os.path.dirname(target)
    try:
        build = tempfile.mkdtemp(prefix=leftovers.temp_prefix(target),
                                 suffix=leftovers.TEMP_SUFFIX, dir=parent)
    except OSError as exc:
        raise os_error(exc, out_dir) from None
    leftovers.claim(build)  # a later run removes it if this one is killed
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(build, 0o777 & ~umask)  # mkdtemp's 0700 would be the folder's mode
        result = _build(build, input_path, from_format=from_format, to_format=to_format,
                        skip_invalid=skip_invalid, workers=workers, dataset=dataset,
                        license=license, max_shard_size=max_shard_size,
                        pretty_name=pretty_name or (repo_id or "").rpartition("/")[2]
                        or os.path.basename(target), repo_id=repo_id, argv=argv,
                        keep_replies=keep_replies)
        _check_target(input_path, out_dir, overwrite)  # still free to take
        for root, _, names in os.walk(build):  # every file on disk before the rename
            for name in names:
                fsync_file(os.path.join(root, name))
        replace_folder(build, target)
    except OSError as exc:  # no space left while building: name OUT_DIR, not the build
        shutil.rmtree(build, ignore_errors=True)
        raise os_error(exc, out_dir) from None
    except PromptkitError as exc:
        shutil.rmtree(build, ignore_errors=True)
        if type(exc) is PromptkitError and build in str(exc):  # a file of the build: name
            raise PromptkitError(str(exc).replace(build, out_dir.rstrip("/"))) from None
        raise
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return result


def _check_target(input_path: str, out_dir: str, overwrite: bool) -> str:
    """The absolute OUT_DIR, after checking that it may be (re)made."""
    if out_dir == STDIO:
        raise PromptkitError("OUT_DIR is a folder; it cannot be stdout")
    target = os.path.abspath(out_dir)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise PromptkitError(f"{out_dir}: folder {parent} does not exist")
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise PromptkitError(f"{out_dir}: exists and is not a folder")
        if os.listdir(target) and not overwrite:
            raise PromptkitError(f"{out_dir}: exists and is not empty; "
                                 "--overwrite replaces it")
        if os.listdir(target) and not is_publish_folder(target):
            raise PromptkitError(f"{out_dir}: not a folder 'publish' made (no "
                                 f"{MANIFEST_FILE}); --overwrite replaces only those")
    if input_path != STDIO and not input_path.startswith("hf:") and os.path.exists(input_path):
        source = os.path.realpath(input_path)
        if os.path.commonpath([source, os.path.realpath(target)]) == os.path.realpath(target):
            raise PromptkitError(f"{out_dir}: holds the input {input_path}; "
                                 "publish to another folder")
    return target


def is_publish_folder(folder: str) -> bool:
    """Whether ``folder`` is one :func:`publish` made: its manifest is a promptkit
    manifest with a ``published`` section."""
    try:
        return "published" in manifest.read(os.path.join(folder, MANIFEST_FILE))
    except PromptkitError:
        return False


def _build(folder: str, input_path: str, *, from_format: str | None, to_format: str,
           skip_invalid: bool, workers: int | None, dataset: dict[str, Any] | None,
           license: str, max_shard_size: int, pretty_name: str, repo_id: str | None,
           argv: list[str] | None, keep_replies: bool = False) -> dict[str, Any]:
    os.makedirs(os.path.join(folder, os.path.dirname(AIPERF_FILE)))
    os.makedirs(os.path.join(folder, DATA_DIR))
    jsonl = os.path.join(folder, AIPERF_FILE)
    result = pipeline.run(input_path, jsonl, [], from_format=from_format, to_format=to_format,
                          skip_invalid=skip_invalid, argv=argv, workers=workers,
                          dataset=dataset, keep_replies=keep_replies)
    # The manifest names files by their place in the published folder.
    result["output"]["path"] = AIPERF_FILE
    aiperf = result["aiperf"]
    aiperf["args"] = [AIPERF_FILE if arg == jsonl else arg for arg in aiperf["args"]]
    history, warnings = _history(input_path, result["inputs"][0])
    aiperf["args"] += _side_files(history, folder, warnings)
    result["warnings"] += warnings

    shards, arrow_bytes = _write_shards(jsonl, to_format, os.path.join(folder, DATA_DIR),
                                        max_shard_size, display=result["inputs"][0]["path"])
    if history:
        result["history"] = history
    result["published"] = {
        "license": license,
        "repo_id": repo_id,
        "max_shard_size": max_shard_size,
        "config": {"config_name": "default", "split": SPLIT,
                   "data_files": f"{DATA_DIR}/{SPLIT}-*.parquet", "columns": list(COLUMNS)},
        "files": [],
    }
    jsonl_entry = _file_entry(folder, AIPERF_FILE, result["output"]["records"])
    card = dataset_card(result, [*shards, jsonl_entry], arrow_bytes, pretty_name)
    write_text(os.path.join(folder, "README.md"), card)
    result["published"]["files"] = [
        _file_entry(folder, "README.md", None), jsonl_entry, *shards,
        *[_file_entry(folder, path, None) for path in _other_files(folder, shards)]]
    manifest.write(os.path.join(folder, MANIFEST_FILE), result)
    return result


def _other_files(folder: str, shards: list[dict[str, Any]]) -> list[str]:
    """Files besides the card, the JSONL, its manifest and the shards (side files)."""
    known = {"README.md", AIPERF_FILE, MANIFEST_FILE, *(s["path"] for s in shards)}
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if path not in known:
                found.append(path)
    return sorted(found)


def _file_entry(folder: str, path: str, records: int | None) -> dict[str, Any]:
    sha256, size = file_sha256(os.path.join(folder, path))
    entry: dict[str, Any] = {"path": path, "sha256": sha256, "bytes": size}
    if records is not None:
        entry["records"] = records
    return entry


# ---------------------------------------------------------------- the input's own history


def _history(input_path: str, read: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifests that made the input, oldest first (its own ``IN.manifest.json``,
    and the history that one carries), when what was read still matches it.

    ``read`` is the run's account of its input: for a JSONL file, the sha256 of the
    very bytes read; a dataset is checked as ``promptkit verify`` checks it."""
    if input_path == STDIO or input_path.startswith("hf:"):
        return [], []
    path = manifest.default_path(input_path.rstrip("/\\"))
    if not os.path.isfile(path):
        return [], []
    try:
        recorded = manifest.read(path)
        if "dataset" in read:
            problems = pipeline.verify_output(input_path.rstrip("/\\"), path)
        elif read["sha256"] != recorded["output"]["sha256"]:
            problems = [f"sha256 is {read['sha256']}, manifest says "
                        f"{recorded['output']['sha256']}"]
        else:
            problems = []
    except PromptkitError as exc:
        return [], [f"{path} is left out of the history: {exc}"]
    except (KeyError, TypeError):
        return [], [f"{path} is left out of the history: it names no output"]
    if problems:
        return [], [f"{path} is left out of the history: the input does not match it ("
                    + "; ".join(problems) + ")"]
    earlier = recorded.pop("history", [])
    recorded.pop("published", None)
    return [*earlier, {"manifest": path, **recorded}], []


def _side_files(history: list[dict[str, Any]], folder: str, warnings: list[str]) -> list[str]:
    """AIPerf arguments that name side files of the input (``pad --into file``): each
    file is published under ``aiperf/`` and the argument names that copy."""
    if not history:
        return []
    made = history[-1]
    standard = {"--input-file", "--custom-dataset-type"}
    args = list(made.get("aiperf", {}).get("args", []))
    sides = {s["path"]: s["sha256"] for s in made.get("side_outputs", [])}
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        i += 1 if value is None else 2
        if arg in standard:
            continue
        if value is not None and value in sides:
            if not os.path.isfile(value) or manifest.text_sha256(
                    _read_text(value)) != sides[value]:
                warnings.append(f"{value} (for AIPerf's {arg}) is missing or changed since "
                                f"{made['manifest']}; it is not published")
                continue
            name = f"{os.path.dirname(AIPERF_FILE)}/{os.path.basename(value)}"
            shutil.copyfile(value, os.path.join(folder, name))
            value = name
        out += [arg] if value is None else [arg, value]
    return out


def _read_text(path: str) -> str:
    return read_whole(path, "side file").decode("utf-8")


# ---------------------------------------------------------------- parquet shards


class _Shards:
    """Row groups into parquet files of at most ``limit`` bytes each (a file with a
    single row group that is larger than ``limit`` holds just that row group)."""

    def __init__(self, folder: str, limit: int):
        self.folder = folder
        self.limit = limit
        self.schema = arrow_schema()
        self.files: list[dict[str, Any]] = []  # path, records
        self.arrow_bytes = 0  # the rows' in-memory Arrow size (the card's num_bytes)
        self._sink: Any = None
        self._writer: Any = None
        self._groups = 0  # in the open file
        self._estimated = 0  # estimated (JSON) bytes written, all files
        self._written = 0  # bytes those row groups took, all files

    def _ratio(self) -> float:
        """File bytes per estimated byte, as measured so far (1 before the first group)."""
        return self._written / self._estimated if self._estimated else 1.0

    def add(self, rows: list[dict[str, Any]], estimated: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is not None:
            projected = (self._sink.tell() + estimated * self._ratio() + FOOTER_BYTES
                         + FOOTER_BYTES_PER_GROUP * (self._groups + 1))
            if projected > self.limit:
                self.close()
        if self._writer is None:
            path = os.path.join(self.folder, f".part-{len(self.files):05d}.parquet")
            self._sink = pa.OSFile(path, "wb")
            self._writer = pq.ParquetWriter(self._sink, self.schema)
            self.files.append({"path": path, "records": 0})
            self._groups = 0
        table = pa.Table.from_pylist(rows, schema=self.schema)
        before = self._sink.tell()
        self._writer.write_table(table, row_group_size=len(rows))
        self._written += self._sink.tell() - before
        self._estimated += estimated
        self._groups += 1
        self.arrow_bytes += table.nbytes
        self.files[-1]["records"] += len(rows)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def finish(self) -> list[dict[str, Any]]:
        """Close the last file and name them all ``train-NNNNN-of-NNNNN.parquet``."""
        if not self.files:  # no records: one empty shard keeps the split loadable
            self.add([], 0)
        self.close()
        named = []
        for i, shard in enumerate(self.files):
            name = f"{SPLIT}-{i:05d}-of-{len(self.files):05d}.parquet"
            os.replace(shard["path"], os.path.join(self.folder, name))
            named.append(_file_entry(os.path.dirname(self.folder), f"{DATA_DIR}/{name}",
                                     shard["records"]))
        return named


def _write_shards(jsonl: str, fmt: str, folder: str, limit: int, display: str
                  ) -> tuple[list[dict[str, Any]], int]:
    """The records of the written JSONL as parquet shards, in order, a row group at a
    time; returns the shards (path, sha256, bytes, records) and the rows' Arrow size."""
    from promptkit.api import read_records
    from promptkit.core.progress import tracked

    shards = _Shards(folder, limit)
    group_bytes = max(1, min(limit // 8, ROW_GROUP_BYTES))
    rows: list[dict[str, Any]] = []
    estimated = 0
    try:
        for number, record in enumerate(tracked(read_records(jsonl, fmt),
                                                "writing parquet shards"), start=1):
            try:
                row = to_row(_as_table_record(record, fmt), "a published dataset")
            except InvalidRecordError as exc:
                raise InvalidRecordError(
                    f"record {number}: {exc.problem} (a dataset holds promptkit's table "
                    f"columns: {', '.join(COLUMNS)})", display) from None
            size = len(orjson.dumps(row))
            if rows and (len(rows) >= ROW_GROUP or estimated + size > group_bytes):
                shards.add(rows, estimated)
                rows, estimated = [], 0
            rows.append(row)
            estimated += size
        if rows:
            shards.add(rows, estimated)
        return shards.finish(), shards.arrow_bytes
    finally:
        shards.close()


def _as_table_record(record: Record, fmt: str) -> Record:
    """A record read back from a ``multi_turn`` line in the shape it had before
    ``dump_multi_turn`` wrote it: a line's own timing and length go on its first turn
    and its ``extra`` on every turn; here they return to the record, where the table
    has columns for them. (Per-turn values that differ have no column: an error.)"""
    if fmt != "multi_turn" or not record.messages:
        return record
    sent = record.messages[first_turn(record.messages):]  # (a system prompt is no turn)
    first = sent[0].fields
    for attr in ("timestamp", "delay", "output_length"):
        if attr in first and getattr(record, attr) is None:
            setattr(record, attr, first.pop(attr))
    extras = [m.fields.get("extra") for m in sent]
    if record.extra is None and extras[0] is not None and all(e == extras[0] for e in extras):
        record.extra = extras[0]
        for message in sent:
            del message.fields["extra"]
    return record


# ---------------------------------------------------------------- the dataset card


def card_metadata(result: dict[str, Any], files: list[dict[str, Any]], arrow_bytes: int,
                  pretty_name: str) -> Any:
    """The card's YAML metadata, as ``huggingface_hub.DatasetCardData``: license, task,
    size, tags, the ``default`` config (the shards only) and the split's features and
    sizes, as ``datasets`` writes them."""
    import datasets
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCardData

    records = result["output"]["records"]
    data = DatasetCardData(
        license=result["published"]["license"],
        pretty_name=pretty_name,
        task_categories=["text-generation"],
        size_categories=[size_category(records)],
        tags=TAGS,
        configs=[{"config_name": "default",
                  "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*.parquet"}]}],
    )
    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=arrow_bytes, num_examples=records))
    info = DatasetInfo(features=datasets.Features.from_arrow_schema(arrow_schema()),
                       splits=splits, dataset_size=arrow_bytes,
                       download_size=sum(f["bytes"] for f in files
                                         if f["path"].startswith(f"{DATA_DIR}/")))
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data


def dataset_card(result: dict[str, Any], files: list[dict[str, Any]], arrow_bytes: int,
                 pretty_name: str) -> str:
    """README.md of the published folder: YAML metadata, then how the data was made.
    ``files`` are the shards and the JSONL (path, records, bytes, sha256)."""
    data = card_metadata(result, files, arrow_bytes, pretty_name)
    return f"---\n{data.to_yaml()}\n---\n\n{card_body(result, files, pretty_name)}"


def card_body(result: dict[str, Any], files: list[dict[str, Any]], pretty_name: str) -> str:
    out = result["output"]
    aiperf = result["aiperf"]
    repo_id = result["published"]["repo_id"]
    where = repo_id or "path/to/this/folder"
    lines = [
        f"# {pretty_name}",
        "",
        f"{out['records']} prompts for LLM serving benchmarks ({aiperf['distinct_records']} "
        f"distinct), published with promptkit "
        f"{VERSION} on {result['created']}.",
        "",
        "## Use",
        "",
        f"The `default` config's `{SPLIT}` split is `{DATA_DIR}/{SPLIT}-*.parquet`, one row a "
        "request, in the order of the source:",
        "",
        "```python",
        "import datasets",
        "",
        f'rows = datasets.load_dataset("{where}", split="{SPLIT}")',
        "```",
        "",
        "| column | type | holds |",
        "| --- | --- | --- |",
        "| `messages` | list of {role, content} | the conversation (empty for a trace "
        "of `input_length` and `hash_ids`) |",
        "| `session_id` | string | the conversation a line continues |",
        "| `timestamp`, `delay` | float64 | when to send it, in ms |",
        "| `output_length` | int64 | tokens to generate |",
        "| `input_length`, `hash_ids` | int64, list of int64 | a prompt given by its length "
        "and prefix blocks |",
        "| `extra` | string | a JSON object merged into the request (e.g. `cache_salt`) |",
        "",
        f"`{AIPERF_FILE}` holds the same records as `{out['format']}` lines, the file "
        "[AIPerf](https://pypi.org/project/aiperf/) loads as it is (run from this folder):",
        "",
    ]
    if aiperf.get("custom_dataset_type"):
        args = " ".join(shlex.quote(a) for a in aiperf["args"])
        lines += ["```bash", "aiperf profile --model MODEL --url URL --endpoint-type chat \\",
                  f"  {args}", "```", ""]
    lines += [aiperf["note"], "", "## How the data was made", ""]
    history = result.get("history", [])
    for number, made in enumerate([*history, result], start=1):
        title = "This publication" if made is result else f"`{made['manifest']}`"
        lines += [f"### {number}. {title}", "", *_describe_run(made), ""]
    if not history:
        lines += ["The input has no promptkit manifest of its own, so what came before this "
                  "publication is not recorded here.", ""]
    lines += [f"`{MANIFEST_FILE}` holds all of this as JSON, with the sha256 of every file; "
              f"`promptkit verify {AIPERF_FILE}` checks the JSONL against it.", "",
              "## Files", "", "| file | records | bytes | sha256 |", "| --- | --- | --- | --- |"]
    for entry in files:
        lines.append(f"| `{entry['path']}` | {entry['records']} | {entry['bytes']} | "
                     f"`{entry['sha256']}` |")
    lines += ["", f"License: `{result['published']['license']}`.", ""]
    return "\n".join(lines)


def _describe_run(made: dict[str, Any]) -> list[str]:
    """Markdown lines of one manifest: command, inputs, steps, output, token figures."""
    lines = [f"- command: `{shlex.join(made.get('argv', []))}` ({made.get('created', '?')}, "
             f"promptkit {made.get('promptkit_version', '?')})"]
    for source in made.get("inputs", []):
        lines.append(f"- input: `{source['path']}` ({source['format']}, {source['records']} "
                     f"records, sha256 `{source['sha256']}`)")
        if source.get("dataset"):
            lines.append(f"  - dataset: {_inline(source['dataset'])}")
    if made.get("generator"):
        generator = made["generator"]
        lines.append(f"- generated by `{generator['name']}`: {_inline(generator['params'])}")
    for step in made.get("steps", []):
        lines.append(f"- step `{step['op']}`: {_inline(step['params'])}")
        if step.get("info"):
            lines.append(f"  - made: {_inline(step['info'])}")
    if not made.get("steps") and not made.get("generator"):
        lines.append("- steps: none (the records as read)")
    out = made["output"]
    lines.append(f"- output: `{out['path']}` ({out['format']}, {out['records']} records, "
                 f"sha256 `{out['sha256']}`)")
    if made.get("skipped", {}).get("count"):
        reasons = "; ".join(f"{count} for {reason}" for reason, count
                            in made["skipped"].get("by_reason", {}).items())
        lines.append(f"- skipped: {made['skipped']['count']} invalid records"
                     + (f" ({reasons})" if reasons else ""))
    stats = made.get("token_stats")
    if stats:
        tokens = stats.get("prompt_tokens") or {}
        figures = ", ".join(f"{k} {v}" for k, v in tokens.items())
        lines.append(f"- prompt tokens under `{stats.get('tokenizer')}`: {figures}; distinct "
                     f"first tokens {stats.get('distinct_first_tokens')}; distinct system "
                     f"prompts {stats.get('system_prompts', {}).get('distinct')}")
    if made.get("aiperf", {}).get("args"):
        lines.append(f"- AIPerf arguments: `{shlex.join(made['aiperf']['args'])}`")
    for warning in made.get("warnings", []):
        lines.append(f"- warning: {warning}")
    return lines


def _inline(values: Any) -> str:
    """Parameters as compact JSON, in backticks (a long value is cut)."""
    text = orjson.dumps(values).decode()
    if len(text) > 2000:
        text = text[:2000] + "…"
    return f"`{text}`"


# ---------------------------------------------------------------- pushing to the Hub


def hub_token() -> str:
    """The token ``huggingface_hub`` would send (``HF_TOKEN`` or a login); raises if none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PromptkitError("--push: no Hugging Face token: set HF_TOKEN or run "
                             "'hf auth login'")
    return token


def repo_id_problem(repo_id: str) -> str | None:
    """What is wrong with ``repo_id`` as a Hub repository id (``OWNER/NAME``), if anything."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return _one_line(str(exc))
    return None


def push(out_dir: str, repo_id: str, *, private: bool = False) -> str:
    """Upload the published folder ``out_dir`` to the dataset repository ``repo_id``
    (created if missing); return the commit's URL. Errors are one line, token-free."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars

    token = hub_token()
    disable_progress_bars()
    api = HfApi()
    try:
        # private=None: a new repository gets its owner's default visibility.
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True,
                        private=True if private else None)
        commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=out_dir,
                                   commit_message="Publish prompts with promptkit")
    except Exception as exc:
        problem = _hub_problem(exc, api.endpoint).replace(token, "<token>")
        raise PromptkitError(
            f"--push {repo_id}: {problem}; the dataset stays in {out_dir} (push it again "
            f"with: hf upload {repo_id} {out_dir} --repo-type dataset)") from None
    return str(commit.commit_url)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The connection errors of the HTTP client huggingface_hub uses: httpx2 from
    huggingface_hub 2, httpx before (only one of them may be installed)."""
    import importlib

    errors = []
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(errors)


def _hub_problem(exc: Exception, endpoint: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return f"{endpoint} refused the token (HTTP 401)"
        detail = _one_line(exc.server_message or "") or _one_line(str(exc))
        return f"{endpoint} answered HTTP {status}: {detail}"
    if isinstance(exc, _transport_errors()):
        return f"cannot reach {endpoint} ({_one_line(str(exc)) or type(exc).__name__})"
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
