"""Manifests of runs: what a run made, described for its manifest, and a written file
checked against its manifest.

:func:`describe` turns a finished run (its input, sink and steps) into the manifest
``run`` writes: the input and output with their sha256 and record counts, every step
with its parameters and what it made, the skipped records, the AIPerf section and the
warnings. :func:`verify_output` checks a file against its manifest. Re-making a file
from its manifest is :mod:`promptkit.provenance.rebuild`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from promptkit.core.errors import PromptkitError, skipped_section
from promptkit.core.version import VERSION
from promptkit.core.words import counted
from promptkit.formats import FORMATS, TABLE_FORMATS, default_output
from promptkit.formats.aiperf import HASH_BLOCK_FLAGS, block_size_in
from promptkit.io import compression
from promptkit.io.datasets import TableSink
from promptkit.io.files import STDIO, display_name
from promptkit.io.sink import Sink
from promptkit.ops.base import Step
from promptkit.ops.pad import PadState
from promptkit.provenance import manifest


def describe(inputs: list[dict[str, Any]], skipped_reading: list[str], sink: Sink | TableSink,
             steps: list[Step], argv: list[str] | None,
             generator: dict[str, Any] | None = None,
             name_lines: Callable[[list[str]], list[str]] | None = None) -> dict[str, Any]:
    """The manifest of a finished run. ``name_lines`` turns the skipped records' lines,
    once sorted, into what the manifest lists (a sharded input's ``SHARD:LINE``).

    A run that wrote no record is refused (a file with no request is no benchmark):
    every record skipped says why; nothing is put in place."""
    out_format = sink.format
    skipped = sorted(skipped_reading + sink.skipped
                     + [line for step in steps for line in getattr(step.state, "skipped", [])],
                     key=_line_of)
    if name_lines is not None:
        skipped = name_lines(skipped)
    if not sink.records_written:
        raise PromptkitError(_nothing_written(inputs[0]["path"] if inputs else sink.name,
                                              inputs[0]["records"] if inputs else 0, skipped))
    distinct = sink.distinct_records()
    return {
        "schema": manifest.SCHEMA,
        "promptkit_version": VERSION,
        "created": manifest.now_utc(),
        "argv": list(argv if argv is not None else sys.argv),
        "inputs": inputs,
        **({"generator": generator} if generator is not None else {}),
        "output": {
            "path": sink.name,
            "format": out_format.name,
            "records": sink.records_written,
            "sha256": sink.sha256.hexdigest(),
            **compressed_output(sink),
            "writer": sink.writer,
            # Recorded where it decides what is written (see promptkit.formats.writer).
            **({"keep_replies": sink.encoder.keep_replies}
               if out_format.aiperf_type == "mooncake_trace" else {}),
        },
        "steps": [step.as_dict() for step in steps],
        "skipped": skipped_section(skipped),
        "side_outputs": [
            {"path": path, "sha256": manifest.text_sha256(text)}
            for step in steps for path, text in step.side_files.items()
        ],
        "aiperf": aiperf_section(sink.name, out_format.name, out_format.aiperf_type, distinct,
                                 [arg for step in steps for arg in step.aiperf_args]
                                 + block_args(out_format, steps, inputs),
                                 getattr(sink, "compression", None)),
        "warnings": warnings_for(steps, out_format.name, inputs, sink),
        **token_section(sink),
    }


def ids_block_size(read: dict[str, Any]) -> int | None:
    """The tokens an input's hash ids stand for: the AIPerf flag of the manifest beside
    it, when that manifest describes it (its sha256), else its format's own (16 for
    bailian_trace, AIPerf's 512 for mooncake_trace); ``None`` for a format without ids."""
    fmt = FORMATS.get(read.get("format", ""))
    if fmt is None or fmt.hash_block_size is None:
        return None
    path = read.get("path")
    if path and path != STDIO and os.path.isfile(manifest.default_path(path)):
        try:
            made = manifest.read(manifest.default_path(path))
        except (PromptkitError, KeyError, TypeError):
            made = {}
        if made.get("output", {}).get("sha256") == read.get("sha256"):
            size = block_size_in(made.get("aiperf", {}).get("args", []))
            if size is not None:
                return size
    return fmt.hash_block_size


def block_args(out_format: Any, steps: list[Step], inputs: list[dict[str, Any]]) -> list[str]:
    """AIPerf's ``--isl-block-size`` for a written file of hash ids: always for
    bailian_trace (where AIPerf's documentation asks for it), else when the ids' tokens
    are not what AIPerf assumes of the format; none when a step names it already."""
    if out_format.hash_block_size is None or not inputs or any(
            arg in HASH_BLOCK_FLAGS for step in steps for arg in step.aiperf_args):
        return []
    size = ids_block_size(inputs[0])
    if size is None or (size == out_format.hash_block_size
                        and out_format.name != "bailian_trace"):
        return []
    return ["--isl-block-size", str(size)]


def _nothing_written(name: str, read: int, skipped: list[str]) -> str:
    """Why a run wrote no record: what it read, and the commonest reason it skipped them."""
    text = f"{name}: no records to write ({counted(read, 'record')} read"
    if skipped:
        reason, count = next(iter(skipped_section(skipped)["by_reason"].items()))
        text += f", {len(skipped)} skipped; commonest reason ({count}): {reason}"
    return text + "); nothing written"


def compressed_output(sink: Sink | TableSink) -> dict[str, Any]:
    """A compressed output's codec and the sha256 of the lines in it (which ``rebuild``
    compares when another zlib or zstd compressed the same lines differently)."""
    codec = getattr(sink, "compression", None)
    if codec is None:
        return {}
    assert isinstance(sink, Sink) and sink.content_sha256 is not None
    return {"compression": codec, "content_sha256": sink.content_sha256.hexdigest()}


def token_section(sink: Sink | TableSink) -> dict[str, Any]:
    """The output's token statistics, when a step named a tokenizer."""
    tap = sink.encoder.tap
    if tap is None:
        return {}
    assert tap.tokenizer is not None
    return {"token_stats": {"tokenizer": tap.tokenizer.name, **tap.finish().summary()}}


def _line_of(skipped: str) -> int:
    head = skipped.split(":", 1)[0]
    return int(head) if head.isdigit() else 0


def aiperf_section(path: str, fmt: str, aiperf_type: str | None, distinct: int,
                   extra_args: list[str] | None = None,
                   codec: str | None = None) -> dict[str, Any]:
    # AIPerf reads gzip by its first bytes, except in random_pool; nothing else compressed.
    unreadable = codec is not None and (codec != "gzip"
                                        or aiperf_type in ("random_pool", "burst_gpt_trace"))
    loaded = compression.strip_suffix(path) if unreadable else path
    args = ["--input-file", loaded, "--custom-dataset-type", aiperf_type] if aiperf_type else []
    section: dict[str, Any] = {
        "custom_dataset_type": aiperf_type,
        "args": args + (extra_args or []),
        "distinct_records": distinct,
        "note": (
            f"At most {counted(distinct, 'request')}, warmup included, never repeat a prompt: "
            "beyond that AIPerf wraps around the file and the repeats hit the prefix cache."
        ),
    }
    if aiperf_type == "burst_gpt_trace":
        # AIPerf replays a trace on its schedule by itself only when its first line is
        # JSON with a timestamp: a CSV's is not.
        section["args"] += ["--fixed-schedule"]
        section["note"] = (
            "AIPerf makes up a prompt of each row's length (no two alike) and sends each "
            "row once, at its Timestamp (--fixed-schedule; without it, as fast as the "
            "concurrency allows).")
    elif aiperf_type == "multi_turn":
        section["note"] = (
            f"{distinct} distinct conversations. AIPerf sends one request a turn and counts "
            "turns in --request-count, each turn with the conversation's history (the "
            "server's replies too): later turns hit the earlier ones, as 'promptkit check' "
            "predicts. Beyond one pass over the file's turns, warmup included, AIPerf wraps "
            "around and repeats whole conversations, which hit the prefix cache."
        )
    elif aiperf_type is None and fmt in ("sharegpt", "alpaca"):
        section["note"] = (
            f"AIPerf does not load {fmt} files, and their recorded replies are not requests: "
            "'promptkit turns FILE OUT --mode first --tokenizer T' makes one request a "
            "conversation with the first reply's length as output_length (--mode each: an "
            "AIPerf multi_turn session a conversation; --mode history: the whole history)."
        )
    elif aiperf_type is None:
        section["note"] = (
            f"AIPerf does not load {fmt} files; convert with "
            "'promptkit pipe read FILE write --to single_turn OUT' (or multi_turn)."
        )
    elif fmt == "openai":
        section["note"] += (
            " AIPerf reads OpenAI chat lines as mooncake_trace and sends only 'messages'"
            " and 'tools' of each line."
        )
    if unreadable and aiperf_type:
        assert codec is not None
        section["note"] += (
            f" AIPerf does not read {codec}-compressed {aiperf_type} files: decompress it "
            f"first ({compression.CODECS[codec].unpack} {path}), then load {loaded}."
        )
    return section


#: The fields of an OpenAI chat line that AIPerf (loading it as mooncake_trace) sends.
SENT_FROM_OPENAI = frozenset({"messages", "tools"})
#: Nonce positions that put the nonce into a record's own system message, when it has one.
_INTO_SYSTEM = ("start", "system", "every-turn")


def warnings_for(steps: list[Step], out_format: str, inputs: list[dict[str, Any]] | None = None,
                 sink: Sink | TableSink | None = None) -> list[str]:
    """What the manifest (and stderr) warns of: files AIPerf will not send as written
    (or not load at all), and padding that shares nothing."""
    warnings = []
    fmt = FORMATS.get(out_format)
    if fmt is not None and fmt.aiperf_type is None:
        warnings.append(f"AIPerf does not load {out_format} files: " + (
            "'promptkit turns IN OUT --tokenizer T' makes requests of its conversations"
            if out_format in ("sharegpt", "alpaca") else
            f"write --to {default_output(out_format)} for one it loads"))
    if (fmt is not None and fmt.aiperf_type == "mooncake_trace" and sink is not None
            and sink.encoder.keep_replies):
        warnings.append("--keep-replies: a conversation that ends with a recorded reply is "
                        "written as it is, and AIPerf sends that reply as the end of the "
                        "prompt: the server answers after the recorded answer")
    salted = False
    for step in steps:
        if step.op == "nonce" and step.params.get("at") == "salt" and out_format in (
            "openai", "sharegpt", "prompt"
        ):
            salted = True
            warnings.append(
                f"cache_salt is written into {out_format} lines, but AIPerf does not send it "
                "from this format; write --to single_turn, multi_turn or mooncake_trace"
            )
    for step in steps:
        if step.op == "nonce" and hasattr(step.state, "warning"):
            nonce_warning = step.state.warning(step.params.get("at", "start"))
            if nonce_warning is not None:
                warnings.append(nonce_warning)
    for i, step in enumerate(steps):
        if isinstance(step.state, PadState) and step.state.nearly_all_distinct():
            warnings.append(_pad_warning(step.state, steps[:i], (inputs or [{}])[0]))
    fields = sink.encoder.fields if sink is not None else None
    if fields and out_format == "openai":
        unsent = sorted(fields - SENT_FROM_OPENAI - ({"cache_salt"} if salted else set()))
        if unsent:
            warnings.append(_unsent_warning(unsent))
    return warnings


def _unsent_warning(fields: list[str]) -> str:
    names = ", ".join(f"'{name}'" for name in fields)
    many = len(fields) > 1
    them, gets = ("them", "gets none of them") if many else ("it", "never gets it")
    text = (f"request field{'s' if many else ''} {names} {'are' if many else 'is'} written "
            "into openai lines, but AIPerf loads them as mooncake_trace and sends only "
            f"'messages' and 'tools': the server {gets}; write --to mooncake_trace (or "
            f"single_turn, multi_turn) to carry {them} in 'extra', which AIPerf merges into "
            "every request body")
    options = {"model": "--model", "stream": "--streaming"}
    overriding = [name for name in options if name in fields]
    if overriding:
        text += (" (there " + " and ".join(f"'{name}'" for name in overriding)
                 + " would override AIPerf's "
                 + " and ".join(options[name] for name in overriding) + ")")
    return text


def _pad_warning(state: PadState, earlier: list[Step], read: dict[str, Any]) -> str:
    records, distinct = state.own_prompts()
    text = (f"pad: the records' own system prompts are nearly all distinct ({distinct} "
            f"distinct in {records} records), so the padded prompts are too and hardly any "
            "request shares one with another")
    nonces = [s.params.get("at") for s in earlier if s.op == "nonce"]
    source = "an earlier stage of this pipe, 'nonce --at AT',"
    if not nonces:
        made = _made_by(read)
        if made is not None:
            nonces = [s.get("params", {}).get("at") for s in made.get("steps", [])
                      if isinstance(s, dict) and s.get("op") == "nonce"]
            source = f"{made['path']} says the input was made by 'nonce --at AT', which"
    at = next((a for a in nonces if a in _INTO_SYSTEM), None)
    if at is not None:
        text += (f"; {source.replace('--at AT', f'--at {at}')} put a nonce into each "
                 "record's own system prompt: pad first, then 'nonce --at user', which keeps "
                 "the padded prompt shared and every user turn unique")
    return text


def _made_by(read: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest beside an input file (``IN.manifest.json``) with ``path`` added, when
    the bytes read (``read``: the run's account of its input) are the ones it describes."""
    path = read.get("path")
    if not path or path == display_name(STDIO) or "dataset" in read:
        return None
    found = manifest.default_path(path)
    try:
        recorded = manifest.read(found)
        matches = recorded["output"]["sha256"] == read.get("sha256")
    except (PromptkitError, KeyError, TypeError):
        return None
    return {**recorded, "path": found} if matches else None


def verify_output(path: str, manifest_path: str | None = None) -> list[str]:
    """The differences between a written file and its manifest (see
    :func:`promptkit.provenance.manifest.verify`): JSONL files by their bytes and lines, tables
    (parquet, hf-dir) as :class:`~promptkit.io.datasets.TableSink` hashed them."""

    def facts(file: str, fmt: str) -> tuple[str, int]:
        if fmt in TABLE_FORMATS:
            from promptkit.io.datasets import table_facts

            return table_facts(file, fmt)
        return manifest.file_facts(file)

    return manifest.verify(path, manifest_path, facts)
