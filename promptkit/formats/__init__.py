"""File formats: one module each, registered in :data:`FORMATS`.

Every format turns one JSON object (one line) into a canonical
:class:`~promptkit.core.records.Record` (``parse``) and back (``dump``). ``dump`` raises
:class:`~promptkit.core.errors.ConversionError` when the record holds data the format
has no place for, so a conversion never drops data silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from promptkit.core.errors import ConversionError, FormatUnknownError, InvalidRecordError
from promptkit.core.records import Record, ends_with_reply
from promptkit.formats import accept, aiperf, bailian, burstgpt, chat, payloads, table


@dataclass(frozen=True)
class Format:
    name: str
    parse: Callable[[dict[str, Any]], Record]
    dump: Callable[[Record], dict[str, Any]]
    #: The ``--custom-dataset-type`` AIPerf loads the file with, as it is (or None).
    aiperf_type: str | None
    description: str
    #: Whether a system message can be written (``nonce --at system`` can create one).
    holds_system: bool
    #: The tokens AIPerf makes of a hash id of this format when not told otherwise (its
    #: ``--isl-block-size``); ``None``: the format holds no hash ids.
    hash_block_size: int | None = None
    #: For a format whose lines depend on the lines before them: a new linker for one
    #: file read in order (it completes each record parsed, e.g. its session).
    linker: Callable[[], Callable[[Record], None]] | None = None
    #: A new ``dump`` for one file written in order, where one line depends on the lines
    #: written before it (``None``: ``dump`` writes each line on its own).
    dumper: Callable[[], Callable[[Record], dict[str, Any]]] | None = None
    #: A format whose lines are not JSON: the bytes of a line of ``dump``'s dict, and
    #: what goes before the first line (a CSV's header).
    encode: Callable[[dict[str, Any]], bytes] | None = None
    header: Callable[[dict[str, Any]], bytes] | None = None

    @property
    def linked(self) -> bool:
        """Whether a file of it is read (or written) in one pass, in one process: its
        lines depend on the lines before them (or on a header)."""
        return self.linker is not None or self.dumper is not None or self.header is not None


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("single_turn", aiperf.parse_single_turn, aiperf.dump_single_turn, "single_turn",
               "AIPerf single_turn: one request a line ({\"text\": ...})", False),
        Format("multi_turn", aiperf.parse_multi_turn, aiperf.dump_multi_turn, "multi_turn",
               "AIPerf multi_turn: {\"session_id\": ..., \"turns\": [...]}", True),
        Format("random_pool", aiperf.parse_random_pool, aiperf.dump_random_pool, "random_pool",
               "AIPerf random_pool: text entries sampled at random", False),
        Format("mooncake_trace", aiperf.parse_mooncake, aiperf.dump_mooncake, "mooncake_trace",
               "AIPerf mooncake_trace: input_length+hash_ids, text_input, messages or payload",
               True, hash_block_size=aiperf.MOONCAKE_BLOCK_SIZE),
        Format("bailian_trace", bailian.parse_bailian, bailian.dump_bailian, "bailian_trace",
               "Alibaba Bailian trace: chat_id chains, timestamp (s), input_length, "
               "output_length, hash_ids of 16 tokens", False,
               hash_block_size=bailian.BLOCK_SIZE, linker=bailian.Chains,
               dumper=bailian.Numbering),
        Format("burst_gpt_trace", burstgpt.parse_burst_gpt, burstgpt.dump_burst_gpt,
               "burst_gpt_trace", "BurstGPT CSV: Timestamp (s), Request tokens, Response "
               "tokens (--to only; a BurstGPT CSV reads by its columns)", False,
               dumper=burstgpt.Rows, encode=burstgpt.encode_row, header=burstgpt.header),
        Format("openai", chat.parse_openai, chat.dump_openai, "mooncake_trace",
               "OpenAI chat JSONL: {\"messages\": [...], ...request fields}", True),
        Format("raw_payload", payloads.parse_raw_payload, payloads.dump_raw_payload,
               "raw_payload", "AIPerf raw_payload: a whole request body a line, sent as it "
               "is (name it with --from raw_payload)", True),
        Format("inputs_json", payloads.parse_inputs_json, payloads.dump_inputs_json,
               "inputs_json", "AIPerf's inputs.json of a run: its request bodies by session "
               "(read only; written as mooncake_trace payloads)", True),
        Format("sharegpt", chat.parse_sharegpt, chat.dump_sharegpt, None,
               "ShareGPT: {\"conversations\": [{\"from\": \"human\", \"value\": ...}]}", True),
        Format("prompt", chat.parse_prompt, chat.dump_prompt, None,
               "Plain prompt JSONL: {\"prompt\": ...}", False),
        Format("alpaca", chat.parse_alpaca, chat.dump_alpaca, None,
               "Alpaca: {\"instruction\": ..., \"input\": ..., \"output\": ...}", True),
    )
}

#: Formats read only (their writer refuses every record): not a choice of --to.
READ_ONLY = frozenset({"inputs_json"})


def _no_parse(obj: dict[str, Any]) -> Record:
    raise InvalidRecordError("a table format is read through its file, not line by line")


#: Formats written as tables (see :mod:`promptkit.formats.table`): output only, since
#: any parquet file or dataset folder is read by its path, whatever its columns.
TABLE_FORMATS: dict[str, Format] = {
    "parquet": Format("parquet", _no_parse, lambda r: table.to_row(r, "parquet"), None,
                      "parquet file of promptkit's columns (--to only; any parquet reads)",
                      True),
    "hf-dir": Format("hf-dir", _no_parse, lambda r: table.to_row(r, "hf-dir"), None,
                     "Hugging Face save_to_disk folder (--to only; any dataset reads)", True),
}

_MOONCAKE_KEYS = ("input_length", "hash_ids", "text_input", "payload")
_TRACE_KEYS = ("timestamp", "delay", "output_length", "session_id", "extra")


def detect(obj: dict[str, Any]) -> str:
    """The format of a record, judged from its keys. Raises if none fits."""
    if "turns" in obj:
        return "multi_turn"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj:
        return "alpaca"
    if bailian.detected(obj):
        return "bailian_trace"
    if any(k in obj for k in _MOONCAKE_KEYS):
        return "mooncake_trace"
    if "messages" in obj:
        return "mooncake_trace" if any(k in obj for k in _TRACE_KEYS) else "openai"
    if "prompt" in obj:
        return "prompt"
    if "text" in obj or "texts" in obj:
        return "single_turn"
    keys = ", ".join(sorted(obj)) or "none"
    raise FormatUnknownError(
        f"cannot tell the format from the keys ({keys}); name it with --from "
        f"({', '.join(FORMATS)}), or map its keys with --text-column or --input-length-column"
    )


def detect_many(objs: list[dict[str, Any]]) -> str:
    """The format of a file, judged from its first records.

    A ``{"messages": ...}`` line is OpenAI chat unless some line carries a
    mooncake_trace field (timestamp, session_id, extra, ...).
    """
    found = {detect(obj) for obj in objs}
    if len(found) == 1:
        return found.pop()
    if found == {"openai", "mooncake_trace"}:
        return "mooncake_trace"
    raise InvalidRecordError(
        f"the first records look like different formats ({', '.join(sorted(found))}); "
        "name it with --from"
    )


def get_format(name: str) -> Format:
    try:
        return FORMATS[name] if name in FORMATS else TABLE_FORMATS[name]
    except KeyError:
        raise InvalidRecordError(
            f"unknown format {name!r}; known formats: {', '.join([*FORMATS, *TABLE_FORMATS])}"
        ) from None


#: The output format of an input format AIPerf does not load, when no ``--to`` names one.
AIPERF_OUTPUT = {"sharegpt": "mooncake_trace", "alpaca": "mooncake_trace",
                 "prompt": "single_turn", "inputs_json": "mooncake_trace"}


def default_output(name: str) -> str:
    """The format records read as ``name`` are written in when no ``--to`` names one: the
    input's own when AIPerf loads it, else one AIPerf loads (see :data:`AIPERF_OUTPUT`)."""
    return AIPERF_OUTPUT.get(name, name)


#: Why a conversation that ends with a recorded reply is not written as a request.
REPLY_HINT = (f"{aiperf.TURNS_HINT}; or --keep-replies writes it as it is, --to sharegpt as "
              "a dataset")


def writer(fmt: Format, *, keep_replies: bool = False) -> Callable[[Record], dict[str, Any]]:
    """The object each record is written as in ``fmt``: the format's ``dump``, and for
    an AIPerf type the line AIPerf takes (see :mod:`promptkit.formats.accept`); a record
    that makes no such line raises :class:`ConversionError`, as one the format cannot
    hold does. So does a conversation that ends with a recorded reply, in a format whose
    messages AIPerf sends as they are (mooncake_trace, openai): the reply would be sent
    as the prompt's end, unless ``keep_replies`` says that is meant."""
    dump = fmt.dumper() if fmt.dumper is not None else fmt.dump
    kind = fmt.aiperf_type
    if kind is None:
        return dump
    check = accept.problem
    replies = kind in ("mooncake_trace", "raw_payload") and not keep_replies

    def written(record: Record) -> dict[str, Any]:
        if replies and ends_with_reply(record):
            raise ConversionError(f"the conversation ends with a recorded reply "
                                  f"({record.messages[-1].role}), which AIPerf would send as "
                                  f"the prompt's end; {REPLY_HINT}")
        obj = dump(record)
        found = check(kind, obj)
        if found is not None:
            raise ConversionError(found)
        return obj

    return written


__all__ = ["FORMATS", "TABLE_FORMATS", "Format", "default_output", "detect", "detect_many",
           "get_format", "writer"]
