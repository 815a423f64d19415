"""AIPerf's verbatim request bodies: ``raw_payload`` lines and a run's ``inputs.json``.

- ``raw_payload`` (AIPerf 0.13, ``RawPayloadDatasetLoader``): each line a whole chat
  request body, sent to the server as it is (no endpoint formatting; ``model``,
  ``max_tokens``, ``cache_salt`` and every other field go as written), each line a
  conversation of its own. It must hold a ``messages`` list (AIPerf refuses a line
  without one). The shape is an OpenAI chat line's, which promptkit reads as
  ``openai`` unless told (``--from raw_payload``): AIPerf sends only an OpenAI line's
  ``messages`` and ``tools`` when it loads it as ``mooncake_trace``, and all of it as
  ``raw_payload``.
- ``inputs_json``: the ``inputs.json`` AIPerf writes into a run's artifacts
  (``InputsFile``: ``{"data": [{"session_id": ..., "payloads": [body, ...]}]}``), the
  request bodies it made of the dataset, one a turn, each formatted on its own (a
  conversation's later turn without its history: AIPerf adds that at run time).
  AIPerf loads it again (``--custom-dataset-type inputs_json``) and sends each body
  as it is, a session's in a row. Read only: a record is one body (its session's
  ``session_id``), numbered in the file's order where a line number would go.

A body is held as a ``mooncake_trace`` ``payload`` line holds it (its messages, the
other fields in ``extra``), so either is written as ``mooncake_trace`` lines of
``payload``: sent as they are, sessions kept (AIPerf loads such lines as it loads an
``inputs.json``: each body verbatim, a session's in a row).
"""

from __future__ import annotations

from typing import Any

from promptkit.core.errors import ConversionError
from promptkit.core.records import Record
from promptkit.formats._schema import bad, no_place, refuse
from promptkit.formats.aiperf import parse_mooncake
from promptkit.formats.chat import dump_openai, parse_openai

#: The layout a body's record has, so that mooncake_trace writes it as a payload.
PAYLOAD = "mooncake_trace:payload"


def parse_raw_payload(obj: dict[str, Any]) -> Record:
    if not isinstance(obj.get("messages"), list):
        raise bad("no 'messages' list (AIPerf sends a raw payload line with one only)")
    record = parse_openai(obj)
    record.layout = PAYLOAD
    return record


def dump_raw_payload(record: Record) -> dict[str, Any]:
    hint = "a raw_payload line is one request body, a conversation of its own"
    refuse(record, "raw_payload", ("session_id", "timestamp", "delay"), hint)
    if not record.messages:
        raise no_place("raw_payload", "a record with no messages", hint)
    if record.fields:
        raise no_place("raw_payload", f"field {next(iter(record.fields))!r} (every field "
                       "of a raw payload is sent to the server)", "use mooncake_trace")
    return dump_openai(record)


def parse_inputs_json(obj: dict[str, Any]) -> Record:
    """One body of an ``inputs.json`` session: ``{"session_id": ..., "payload": body}``,
    as :func:`promptkit.io.jsonl.inputs_json_items` gives them."""
    return parse_mooncake(obj)


def dump_inputs_json(record: Record) -> dict[str, Any]:
    raise ConversionError("inputs_json is read only: write --to mooncake_trace (payload "
                          "lines, sessions kept) or raw_payload")


def session_payloads(item: Any, at: int) -> list[dict[str, Any]]:
    """The bodies of ``inputs.json``'s ``data[at]``, each as a record's object; raises
    naming what AIPerf's ``InputsJsonSession`` refuses."""
    if not isinstance(item, dict):
        raise bad(f"data[{at}] is {type(item).__name__}, not an object")
    session, payloads = item.get("session_id"), item.get("payloads")
    if not isinstance(session, str):
        raise bad(f"data[{at}] has no string 'session_id'")
    if not isinstance(payloads, list) or not payloads or not all(
            isinstance(p, dict) for p in payloads):
        raise bad(f"data[{at}]: 'payloads' is not a non-empty list of objects")
    return [{"session_id": session, "payload": payload} for payload in payloads]
