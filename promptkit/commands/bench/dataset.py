"""The input file of ``promptkit bench`` as AIPerf will load it: its manifest's AIPerf
arguments, or its format detected and its distinct prompts counted (a ``multi_turn``
conversation is one request a turn), and whether its first line has a timestamp."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from promptkit.core.errors import InvalidRecordError, PromptkitError
from promptkit.io import files
from promptkit.io.jsonl import Source
from promptkit.io.keys import prompt_key
from promptkit.provenance import manifest


def readable_file(path: str) -> str:
    """INPUT_FILE once it is known to be a file this process can read (else exit 1:
    synthetic prompts are for INPUT_FILE unset, never a stand-in for a bad path)."""
    if os.path.isdir(path):
        raise PromptkitError(f"INPUT_FILE={path}: a folder, not a prompt file")
    kind = files.special_kind(path)
    if kind is not None:  # (/dev/zero has no end: read, it took all the memory there is)
        raise PromptkitError(f"INPUT_FILE={path}: {kind}, not a prompt file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        raise PromptkitError(f"INPUT_FILE={path}: {why}; unset INPUT_FILE for AIPerf's "
                             "synthetic prompts") from None
    return path


@dataclass
class Dataset:
    path: str
    custom_dataset_type: str
    args: list[str]
    distinct_records: int
    source: str  # "manifest" or "detected"
    warnings: list[str] = field(default_factory=list)
    #: multi_turn: the turns of the distinct conversations, which AIPerf sends one
    #: request each and counts so for --request-count and --warmup-request-count.
    distinct_turns: int | None = None
    requests_per_pass: int = 0  # every line's requests (a multi_turn line: one a turn)
    timed: bool = False  # its first line has a timestamp (a fixed schedule needs one)

    @property
    def distinct_requests(self) -> int:
        """The requests AIPerf can send from the file before it resends a prompt."""
        return self.distinct_records if self.distinct_turns is None else self.distinct_turns

    def describe(self) -> str:
        if self.distinct_turns is None:
            return f"{self.distinct_records} distinct records"
        return (f"{self.distinct_turns} distinct requests (the turns of "
                f"{self.distinct_records} distinct conversations)")


def _manifest_args(args: list[str], input_file: str) -> list[str]:
    """The manifest's AIPerf arguments for this file: ``--input-file`` replaced by the
    absolute path; a ``--system-prompt-file`` found next to the file when its
    recorded path does not resolve from here."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if arg == "--input-file":
            i += 2
            continue
        if arg == "--system-prompt-file" and value is not None:
            found = manifest.named_file(value, input_file)
            if found is None:
                beside = os.path.join(os.path.dirname(input_file), os.path.basename(value))
                raise PromptkitError(f"{input_file}: the manifest's --system-prompt-file "
                                     f"{value} is missing (looked here and at {beside})")
            out += [arg, os.path.abspath(found)]
            i += 2
            continue
        out.append(arg)
        i += 1
    return ["--input-file", input_file, *out]


class Scan(NamedTuple):
    aiperf_type: str  # AIPerf's --custom-dataset-type
    distinct: int  # distinct prompts, counted as a manifest counts them
    distinct_turns: int  # the turns of the distinct ones (a conversation has several)
    requests: int  # the requests of every line (one a turn)
    timed: bool  # the first line has a timestamp


def scan_file(path: str, *, first_only: bool = False) -> Scan:
    """What AIPerf makes of a file: its format detected as every promptkit command
    detects it, every record read (a bad one is ``FILE:LINE: problem``); with
    ``first_only``, the first record only (the counts are then of it alone)."""
    source = Source(path)
    turns: dict[int, int] = {}
    requests = 0
    timed = False
    try:
        fmt = source.format
        if fmt.aiperf_type is None:
            raise PromptkitError(f"{source.name}: AIPerf does not load {fmt.name} files; "
                                 f"convert first: promptkit pipe read {path} write --to "
                                 "single_turn OUT")
        for record in source.records():
            if not requests:
                timed = record.timestamp is not None
            turns[prompt_key(record)] = len(record.messages) or 1
            requests += len(record.messages) or 1
            if first_only:
                break
    except InvalidRecordError as exc:
        raise (exc.located(source.name) if exc.path is None else exc) from None
    finally:
        source.close()
    if not turns:
        raise PromptkitError(f"{source.name}: empty file: no records")
    return Scan(fmt.aiperf_type, len(turns), sum(turns.values()), requests, timed)


def load_dataset(path: str) -> Dataset:
    path = os.path.abspath(path)
    manifest_path = manifest.default_path(path)
    warnings: list[str] = []
    if os.path.isfile(manifest_path):
        made = manifest.read(manifest_path)
        sha256, _ = manifest.file_facts(path)
        aiperf = made.get("aiperf") or {}
        if sha256 != made.get("output", {}).get("sha256"):
            warnings.append(f"{manifest_path} does not match {path} (sha256 differs): "
                            "ignored; the format is detected and distinct prompts counted")
        elif not aiperf.get("custom_dataset_type"):
            raise PromptkitError(
                f"{path}: {aiperf.get('note') or 'AIPerf does not load this format'}")
        else:
            dataset = Dataset(path, aiperf["custom_dataset_type"],
                              _manifest_args(list(aiperf.get("args", [])), path),
                              int(aiperf["distinct_records"]), "manifest")
            multi_turn = dataset.custom_dataset_type == "multi_turn"
            scan = scan_file(path, first_only=not multi_turn)  # the manifest counts records
            if multi_turn:
                dataset.distinct_turns = scan.distinct_turns
            dataset.requests_per_pass = (scan.requests if multi_turn
                                         else int(made["output"]["records"]))
            dataset.timed = scan.timed
            return dataset
    scan = scan_file(path)
    return Dataset(path, scan.aiperf_type,
                   ["--input-file", path, "--custom-dataset-type", scan.aiperf_type],
                   scan.distinct, "detected", warnings,
                   scan.distinct_turns if scan.aiperf_type == "multi_turn" else None,
                   scan.requests, scan.timed)
