"""Hugging Face datasets in and out: a record source and table sinks.

:class:`DatasetSource` reads ``hf:OWNER/NAME`` (through ``datasets`` and its local
cache), a ``save_to_disk`` folder, a dataset repository folder, or parquet /
arrow / CSV files (CSV with promptkit's own strict reader, compressed or not: see
:mod:`promptkit.io.csvfiles`), row by row (streaming, or memory-mapped Arrow): memory
stays flat however large the dataset. Columns become records by
:func:`promptkit.formats.table.find_mapping`; the columns it does not use are
kept as the records' fields. (A JSON array is read like JSON lines, by
``jsonl.Source``, unless dataset options ask for ``datasets``.)

:class:`TableSink` writes records as a parquet file or a ``save_to_disk`` folder
(:data:`promptkit.formats.table.COLUMNS`), atomically like the JSONL sink.
Dataset scripts (remote code) are never run: ``datasets`` no longer runs them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from promptkit.core import leftovers
from promptkit.core.errors import InvalidRecordError, ManifestError, PromptkitError
from promptkit.core.records import Record
from promptkit.formats import FORMATS, Format
from promptkit.formats.table import Mapping, Timeline, arrow_schema, batch_records, find_mapping
from promptkit.io.csvfiles import CsvRows, Numbered, delimiter_of, typed
from promptkit.io.files import (
    first_line,
    fsync_file,
    os_error,
    put_in_place,
    remove_quietly,
    replace_folder,
)
from promptkit.io.hashing import combined_sha256, file_sha256, hash_file
from promptkit.io.sink import Encoder, Written, refuse_overwrite

#: File suffixes read through ``datasets``' packaged builders (when shuffled); CSV files
#: are read by :mod:`promptkit.io.csvfiles`.
BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
#: Rows in one Arrow batch read from a dataset (memory stays bounded by it; the output
#: does not depend on it).
BATCH_ROWS = 2048
#: Bytes read from a parquet file at a time: a column chunk is read a piece at a time,
#: not whole (a row group of 100,000 rows held its columns' pages at once).
READ_BUFFER = 1 << 20
#: Rows in one written parquet row group.
ROW_GROUP = 1000
#: Rows kept in memory to shuffle a streamed dataset (a dataset on disk is shuffled whole).
SHUFFLE_BUFFER = 10_000

#: What a manifest names as the format of a dataset input.
DATASET_FORMAT = Format("dataset", FORMATS["openai"].parse, FORMATS["openai"].dump, None,
                        "a Hugging Face dataset", True)


@dataclass
class DatasetOptions:
    """How a dataset is read; all of it goes into the manifest, to read it again."""

    config: str | None = None
    split: str | None = None
    revision: str | None = None
    text_column: str | None = None
    system_column: str | None = None
    messages_column: str | None = None
    output_length_column: str | None = None
    input_length_column: str | None = None
    timestamp_column: str | None = None
    timestamp_unit: str | None = None
    limit: int | None = None
    shuffle_seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def columns(self) -> dict[str, Any]:
        """The column mapping options, as :func:`find_mapping` takes them."""
        return {key.removesuffix("_column"): getattr(self, key) for key in COLUMN_OPTIONS}


#: The options that map columns to records (the others choose the rows).
COLUMN_OPTIONS = ("text_column", "system_column", "messages_column", "output_length_column",
                  "input_length_column", "timestamp_column", "timestamp_unit")


def default_output(mapping: Mapping) -> str:
    """The format records of ``mapping`` are written in when no --to is given:
    mooncake_trace, which holds any conversation, a trace of lengths, and the columns the
    mapping does not use (kept as fields; AIPerf loads it as it is, where openai would
    send every field to the server)."""
    return "mooncake_trace"


def is_dataset(path: str) -> bool:
    """Whether ``path`` is read as a dataset (else it is JSONL, or a JSON array read as
    JSONL is: see :class:`promptkit.io.jsonl.Source`): a CSV file compressed too."""
    if path.startswith("hf:") or os.path.isdir(path):
        return True
    return os.path.splitext(path)[1].lower() in BUILDERS or delimiter_of(path) is not None


def is_json_array(path: str) -> bool:
    """Whether the file at ``path`` (plain) holds a JSON array, by its first bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"[")
    except OSError:
        return False


class DatasetSource:
    """Records of a Hugging Face dataset, with the same surface as ``jsonl.Source``."""

    format = DATASET_FORMAT
    #: The rows in the stream before this file's (one shard of many, see
    #: :mod:`promptkit.io.shards`): added to each record's line number and index.
    base = 0

    def __init__(self, path: str, options: DatasetOptions | None = None, *,
                 skip_invalid: bool = False):
        self.path = path
        self.options = options or DatasetOptions()
        self.skip_invalid = skip_invalid
        self.count = 0
        self.skipped: list[str] = []
        self.before_read = None
        self.split = self.options.split or "train"
        self.name = path if self.options.split is None else f"{path}[{self.split}]"
        self.revision: str | None = None
        self._parquet_files: list[str] = []  # the data files of a repository folder
        #: The local files the rows are read from, which the input's sha256 is of; ``None``
        #: for a hub dataset, whose rows are hashed as they are read.
        self._data_files: list[str] | None = None
        self._files_digest: _FilesDigest | None = None
        self._rows_digest = hashlib.sha256()  # of the rows read, one orjson line each (hub)
        self._done = False  # every row read
        self._expected: int | None = None  # the rows there are, when known (progress)
        self._csv: CsvRows | None = None  # a CSV file's rows
        self._batches = self._open()
        try:
            first = next((b for b in self._batches if _unnumbered(b).num_rows), None)
        except PromptkitError:
            self.close()
            raise
        except Exception as exc:  # a data file datasets cannot parse
            raise PromptkitError(f"{self.name}: {first_line(exc)}") from None
        if first is None and self._csv is not None:  # a header and no rows
            columns = self._csv.columns
        elif first is None:
            raise PromptkitError(f"{self.name}: empty dataset: no records")
        else:
            columns = list(_unnumbered(first).schema.names)
        self._first: Any = first
        try:
            self.mapping: Mapping = find_mapping(columns, **self.options.columns())
        except PromptkitError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None

    @property
    def sha256(self) -> Any:
        """The input's sha256 (an object with ``hexdigest()``): of its data files' bytes
        (one file: the file's own sha256; more: the sha256 of their sha256s, one a line,
        as for shards), or, for a hub dataset, of the rows read, one orjson line each."""
        if self._data_files is None:
            return self._rows_digest
        if self._files_digest is None:
            self._files_digest = _FilesDigest(self._data_files)
        return self._files_digest

    @property
    def default_output(self) -> str:
        return default_output(self.mapping)

    @property
    def records_read(self) -> int:
        return self.count

    def expected_records(self) -> int | None:
        """For progress: the rows the dataset holds, when its files or metadata say."""
        return self._expected

    def expected_rows(self) -> int | None:
        """The rows the dataset holds (``--limit`` applied), when its files or metadata
        say."""
        return self._expected

    def data_size(self) -> int | None:
        """The bytes of the local files the rows are read from (``None``: a hub dataset)."""
        if self._data_files is None:
            return None
        return sum(os.path.getsize(f) for f in self._data_files)

    def describe(self) -> dict[str, Any]:
        """The manifest's account of the input, beyond path, records and sha256."""
        out: dict[str, Any] = {"options": self.options.as_dict(),
                               "mapping": self.mapping.as_dict()}
        files = self._data_files
        if files is None:
            out["sha256_of"] = "the rows read, one orjson line each"
        elif files == [self.path]:
            out["sha256_of"] = "the file's bytes"
        else:
            out["sha256_of"] = ("its data files' bytes (combined: the sha256 of their "
                                "sha256s, one a line)")
            out["data_files"] = [_named(f, self.path) for f in files]
        if self.revision:
            out["revision"] = self.revision
        return out

    def close(self) -> None:
        """Stop reading. A streamed file whose reading stopped before its end (an error,
        ``--limit``) may hold its open file in a reference cycle inside ``datasets``,
        whose reader never closes it: collect it now, so the file is closed here."""
        if self._csv is not None:
            self._csv.close()
        close = getattr(self._batches, "close", None)
        if close is not None and (not self._done or self.options.limit is not None):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)  # datasets' unclosed file
                close()
                gc.collect()

    # ------------------------------------------------------------ opening

    def _open(self) -> Iterator[Any]:
        """The rows as Arrow batches (``RecordBatch`` or ``Table``), in order, ``--limit``
        applied; reading errors are one line."""
        try:
            o = self.options
            delimiter = None if self.path.startswith("hf:") else delimiter_of(self.path)
            if delimiter is not None:
                if not os.path.isfile(self.path):
                    raise PromptkitError(f"{self.path}: no such file")
                self._data_files = [self.path]
                self._csv = CsvRows(self.path, self.name, delimiter,
                                    skip_invalid=self.skip_invalid, skipped=self.skipped,
                                    batch_rows=BATCH_ROWS)
                if o.shuffle_seed is None:
                    return _first_rows(self._csv.batches(), o.limit)
            plain_file = os.path.splitext(self.path)[1].lower() in (".parquet", ".arrow")
            if self._csv is not None:
                dataset = _rows_dataset(self._csv)
            elif not (plain_file and o.shuffle_seed is None):
                dataset = self._load()
            elif not os.path.isfile(self.path):
                raise PromptkitError(f"{self.path}: no such file")
            else:
                dataset = None  # read with pyarrow alone
            if plain_file:
                self._data_files = [self.path]
            self._expected = _rows_in(self.path, dataset, self._parquet_files)
            if self._expected is not None and o.limit is not None:
                self._expected = min(self._expected, o.limit)
            if o.shuffle_seed is None:
                batches = _local_batches(self.path, dataset, self._parquet_files)
                if batches is not None:  # Arrow batches straight from the files: flat memory
                    return _first_rows(batches, o.limit)
            if o.shuffle_seed is not None:
                if hasattr(dataset, "select"):  # on disk: shuffled whole
                    dataset = dataset.shuffle(seed=o.shuffle_seed)
                else:
                    dataset = dataset.shuffle(seed=o.shuffle_seed, buffer_size=SHUFFLE_BUFFER,
                                              max_buffer_input_shards=1)
            if o.limit is not None:
                if hasattr(dataset, "select"):
                    dataset = dataset.select(range(min(o.limit, len(dataset))))
                else:
                    dataset = dataset.take(o.limit)
            batches = dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
            return map(typed, batches) if self._csv is not None else batches
        except PromptkitError:
            raise
        except Exception as exc:  # datasets raises many kinds; each is one line here
            raise PromptkitError(f"{self.name}: {first_line(exc)}") from None

    def _load(self) -> Any:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        o = self.options
        path = self.path
        if path.startswith("hf:"):
            return self._load_hub(path[3:])
        if not os.path.exists(path):
            raise PromptkitError(f"{path}: no such file or folder")
        if os.path.isdir(path):
            if any(os.path.exists(os.path.join(path, f))
                   for f in ("state.json", "dataset_dict.json")):
                loaded = datasets.load_from_disk(path)
                if isinstance(loaded, datasets.DatasetDict):
                    if self.split not in loaded:
                        raise PromptkitError(f"{self.name}: no split {self.split!r}; the splits "
                                             f"are {', '.join(loaded)}")
                    loaded = loaded[self.split]
                elif o.split is not None and o.split != "train":
                    raise PromptkitError(f"{self.name}: a save_to_disk folder of one split; "
                                         "leave out --split")
                self._data_files = [f["filename"] for f in loaded.cache_files]
                return loaded
            dataset = datasets.load_dataset(path, o.config, split=self.split,
                                            revision=o.revision, streaming=True)
            builder = datasets.load_dataset_builder(path, o.config, revision=o.revision)
            files = (builder.config.data_files or {}).get(self.split)
            if builder.name == "parquet" and files:
                self._parquet_files = list(files)
            self._data_files = [str(f) for f in files or []]
            return dataset
        builder = BUILDERS.get(os.path.splitext(path)[1].lower(), "json")
        self._data_files = [path]
        return datasets.load_dataset(builder, data_files=path, split="train", streaming=True)

    def _load_hub(self, repo_id: str) -> Any:
        """A hub dataset: streamed when the Hub answers, else from ``datasets``' cache."""
        import datasets

        o = self.options
        try:
            dataset = datasets.load_dataset(repo_id, o.config, split=self.split,
                                            revision=o.revision, streaming=True)
        except ConnectionError:
            pass
        else:
            self.revision = _commit_of(repo_id, o.revision)
            return dataset
        try:  # offline: a dataset an earlier (non-streaming) load_dataset prepared
            return datasets.load_dataset(repo_id, o.config, split=self.split,
                                         revision=o.revision)
        except Exception:
            raise PromptkitError(
                f"{self.name}: not in the local cache and the Hugging Face Hub cannot be "
                f"reached; load it once while online (python -c \"import datasets; "
                f"datasets.load_dataset('{repo_id}')\") or point HF_HOME at a cache that has it"
            ) from None

    # ------------------------------------------------------------ reading

    def batches(self) -> Iterator[tuple[int, Any]]:
        """``(row number of its first row, batch)`` of the rows, as Arrow batches in order
        (row numbers from 1, in this dataset); a hub dataset's rows are hashed as they
        pass. A batch that cannot be read is one line naming the row it would begin. (A
        CSV file's batches come numbered: a bad row left out keeps its number.)"""
        batches = self._batches
        first: Any = self._first
        self._first = None
        hashing = self._data_files is None
        update = self._rows_digest.update
        release = _memory_pool().release_unused
        row_no = 1
        while True:
            if first is not None:
                batch, first = first, None
            else:
                release()  # (Arrow's allocator keeps what it freed: RSS grew with the file)
                try:
                    batch = next(batches)
                except StopIteration:
                    self._done = True
                    return
                except PromptkitError:
                    raise
                except Exception as exc:
                    raise PromptkitError(f"{self.name}:{row_no}: {first_line(exc)}") from None
            if batch.__class__ is Numbered:
                row_no, batch = batch
            if not batch.num_rows:
                continue
            if hashing:
                for row in batch.to_pylist():
                    update(orjson.dumps(row, default=repr, option=orjson.OPT_APPEND_NEWLINE))
            yield row_no, batch
            row_no += batch.num_rows

    def row_batches(self) -> Iterator[tuple[str, int, int, Any]]:
        """``(name, base, row number, batch)`` of :meth:`batches` (as for many shards:
        see :meth:`promptkit.io.shards.ShardedSource.row_batches`)."""
        for row_no, batch in self.batches():
            yield self.name, self.base, row_no, batch

    def records(self, *, allow_empty: bool = False) -> Iterator[Record]:
        """The records, in row order (``allow_empty``: as ``jsonl.Source`` takes it; a
        dataset with no rows is refused when opened)."""
        mapping = self.mapping
        clock = Timeline(mapping.timestamp_unit) if mapping.timestamp_unit else None
        base = self.base
        for first, batch in self.batches():
            for row_no, made in enumerate(batch_records(batch, mapping, clock), start=first):
                if made.__class__ is not Record:
                    assert isinstance(made, InvalidRecordError)
                    if not (self.skip_invalid or made.always_skipped):
                        raise InvalidRecordError(made.problem, self.name, row_no) from None
                    self.skipped.append(f"{row_no}: {made.problem}")
                    continue
                assert isinstance(made, Record)
                made.lineno = row_no + base
                made.index = row_no + base - 1
                self.count += 1
                yield made


class _FilesDigest:
    """The sha256 of a dataset's data files (see :attr:`DatasetSource.sha256`), computed
    when first asked for."""

    def __init__(self, files: list[str]):
        self.files = files
        self._hex: str | None = None

    def hexdigest(self) -> str:
        if self._hex is None:
            digests = [file_sha256(f)[0] for f in self.files]
            self._hex = digests[0] if len(digests) == 1 else combined_sha256(digests)
        return self._hex


def _named(file: str, folder: str) -> str:
    """A data file as the manifest names it: from the dataset's folder when inside it."""
    if os.path.isdir(folder):
        inside = os.path.relpath(os.path.realpath(file), os.path.realpath(folder))
        if not inside.startswith(os.pardir):
            return inside
    return file


def _memory_pool() -> Any:
    import pyarrow as pa

    return pa.default_memory_pool()


def _first_rows(batches: Iterator[Any], limit: int | None) -> Iterator[Any]:
    """The batches (or :class:`~promptkit.io.csvfiles.Numbered` batches) up to ``limit`` rows
    in all (the last one cut), or all of them."""
    if limit is None:
        yield from batches
        return
    left = limit
    if left <= 0:
        return
    for item in batches:
        batch = _unnumbered(item)
        if batch.num_rows > left:
            batch = batch.slice(0, left)
            item = Numbered(item.first, batch) if item.__class__ is Numbered else batch
        left -= batch.num_rows
        yield item
        if left <= 0:
            return


def _unnumbered(item: Any) -> Any:
    """The batch of a batch or of a :class:`~promptkit.io.csvfiles.Numbered` one."""
    return item.batch if item.__class__ is Numbered else item


def _rows_dataset(rows: CsvRows) -> Any:
    """A CSV file's rows as a streamed ``datasets`` dataset, to be shuffled as one is:
    its cells all texts (an empty one ``""``), typed afterwards by
    :func:`~promptkit.io.csvfiles.typed` as an unshuffled batch is (a shuffle mixes rows of
    every batch, and ``datasets`` wants one type a column); bad rows raised or left out
    as they are read. (Made from its examples: ``IterableDataset.from_generator`` pickles
    the generator to fingerprint it, and a file being read cannot be pickled.)"""
    from datasets.iterable_dataset import ExamplesIterable, IterableDataset

    def examples() -> Iterator[tuple[int, Any]]:
        for first, batch in rows.batches(typed=False):
            yield from enumerate(batch.to_pylist(), start=first)

    return IterableDataset(ExamplesIterable(examples, {}))


def _rows_in(path: str, dataset: Any, parquet_files: list[str]) -> int | None:
    """The rows of a dataset as its files' metadata or ``datasets``' info tell them
    (nothing is read but parquet footers), for progress; ``None`` when unknown."""
    try:
        if dataset is None or parquet_files:
            files = parquet_files or [path]
            if all(f.lower().endswith(".parquet") for f in files):
                import pyarrow.parquet as pq

                return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            return None
        if hasattr(dataset, "num_rows"):  # loaded (save_to_disk, or from the cache)
            return int(dataset.num_rows)
        splits = getattr(dataset.info, "splits", None) or {}
        split = splits.get(dataset.split) if getattr(dataset, "split", None) else None
        return int(split.num_examples) if split and split.num_examples else None
    except Exception:  # metadata that cannot be read: the rows are read anyway
        return None


def _local_batches(path: str, dataset: Any, parquet_files: list[str]) -> Iterator[Any] | None:
    """Arrow record batches read straight from local data files, when there are such.

    ``datasets``' own streaming of local parquet holds on to memory as it goes
    (measured: peak RSS doubles for 4x the rows), so local parquet and Arrow
    files are read here, a batch at a time, with no read-ahead and column chunks
    read :data:`READ_BUFFER` at a time.
    """
    import pyarrow.parquet as pq

    if path.startswith("hf:"):
        return None
    suffix = os.path.splitext(path)[1].lower()
    if parquet_files:
        files, kind = parquet_files, "parquet"
    elif suffix == ".parquet":
        files, kind = [path], "parquet"
    elif suffix == ".arrow":
        files, kind = [path], "arrow"
    elif hasattr(dataset, "cache_files") and getattr(dataset, "_indices", None) is None:
        files, kind = [f["filename"] for f in dataset.cache_files], "arrow"
    else:
        return None
    if not files:
        return None

    def batches() -> Iterator[Any]:
        for file in files:
            if kind == "parquet":
                reader = pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER)
                yield from reader.iter_batches(batch_size=BATCH_ROWS)
            else:
                yield from _arrow_batches(file)

    return batches()


def _arrow_batches(file: str) -> Iterator[Any]:
    import pyarrow as pa

    with pa.OSFile(file) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:  # the random-access file format, not a stream
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
            return
        yield from reader


def _commit_of(repo_id: str, revision: str | None) -> str | None:
    """The commit a hub dataset's revision points at now (for the manifest), if known."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo_id, revision=revision, timeout=10).sha
    except Exception:  # the manifest then names the revision as given
        return None


# ---------------------------------------------------------------- writing


class TableSink(Written):
    """Records as a parquet file or a ``save_to_disk`` folder, written atomically.

    Same surface as ``sink.Sink``. The sha256 is that of the parquet file, or of
    the folder's Arrow data files in name order.
    """

    def __init__(self, path: str, fmt: Format, *, skip_invalid: bool = False,
                 inputs: Iterable[str] = ()):
        import pyarrow.parquet as pq

        if path == "-":
            raise PromptkitError(f"{fmt.name} output cannot go to stdout; name a file")
        refuse_overwrite(path, inputs)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise PromptkitError(f"{path}: folder {folder} does not exist")
        if fmt.name == "parquet" and os.path.isdir(path):
            raise PromptkitError(f"{path}: is a folder")
        if fmt.name == "hf-dir" and os.path.exists(path):
            if not os.path.isdir(path):
                raise PromptkitError(f"{path}: exists and is not a folder")
            if os.listdir(path) and not is_saved_dataset(path):
                raise PromptkitError(f"{path}: a folder that is not a saved dataset; "
                                     "promptkit replaces only those")
        self.path = path
        self.name = path
        self.format = fmt
        self.skip_invalid = skip_invalid
        self.encoder = Encoder(fmt, skip_invalid=skip_invalid)  # rows, keys, counts, tap
        self.encoder.as_rows = True
        self.sha256 = hashlib.sha256()
        try:
            self._scratch = tempfile.mkdtemp(prefix=leftovers.temp_prefix(path),
                                             suffix=leftovers.TEMP_SUFFIX, dir=folder)
        except OSError as exc:
            raise os_error(exc, path) from None
        leftovers.claim(self._scratch)
        self._parquet = os.path.join(self._scratch, "data.parquet")
        self._schema = arrow_schema()
        try:
            self._writer = pq.ParquetWriter(self._parquet, self._schema)
        except OSError as exc:
            remove_quietly(self._scratch)
            raise os_error(exc, path) from None
        self._rows: list[dict[str, Any]] = []

    def write_all(self, records: Iterable[Record]) -> None:
        try:
            for row in self.encoder.encode_all(records):
                self._rows.append(row)
                if len(self._rows) >= ROW_GROUP:
                    self._write_rows()
        except OSError as exc:  # pyarrow's IO errors are OSErrors: no space left
            raise os_error(exc, self.path) from None

    def _write_rows(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows.clear()

    def flush(self) -> None:
        """Finish the file (called once, before the manifest is made)."""
        try:
            self._flush()
        except OSError as exc:
            raise os_error(exc, self.path) from None

    def finish(self) -> None:
        self.flush()

    def _flush(self) -> None:
        if self._writer is None:
            return
        self._write_rows()
        self._writer.close()
        self._writer = None
        if self.format.name == "parquet":
            hash_file(self._parquet, self.sha256)
            return
        import datasets

        datasets.disable_progress_bars()
        folder = os.path.join(self._scratch, "dataset")
        loaded = datasets.Dataset.from_parquet(self._parquet,
                                               cache_dir=os.path.join(self._scratch, "cache"))
        loaded.save_to_disk(folder)
        del loaded
        for name in sorted(os.listdir(folder)):
            if name.endswith(".arrow"):
                hash_file(os.path.join(folder, name), self.sha256)

    def commit(self) -> None:
        self.flush()
        if self.format.name == "parquet":
            put_in_place(self._parquet, self.path)
        else:
            made = os.path.join(self._scratch, "dataset")
            try:
                for name in os.listdir(made):
                    fsync_file(os.path.join(made, name))
            except OSError as exc:
                raise os_error(exc, self.path) from None
            replace_folder(made, self.path)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def abort(self) -> None:
        """Remove the scratch folder; never raises (an error is already on its way)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        shutil.rmtree(self._scratch, ignore_errors=True)


def is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a folder ``save_to_disk`` wrote (as ``--to hf-dir`` does)."""
    return all(os.path.isfile(os.path.join(path, name))
               for name in ("dataset_info.json", "state.json"))


def table_facts(path: str, fmt: str) -> tuple[str, int]:
    """``(sha256, rows)`` of a written table, hashed as :class:`TableSink` hashes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise ManifestError(f"{path}: no such file or folder")
    digest = hashlib.sha256()
    try:
        if fmt == "parquet":
            hash_file(path, digest)
            return digest.hexdigest(), pq.ParquetFile(path).metadata.num_rows
        rows = 0
        for name in sorted(os.listdir(path)):
            if name.endswith(".arrow"):
                file = os.path.join(path, name)
                hash_file(file, digest)
                with pa.memory_map(file) as source:
                    rows += pa.ipc.open_stream(source).read_all().num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{path}: not a readable {fmt}: {first_line(exc)}") from None
    return digest.hexdigest(), rows

