"""Small shared checks for the format modules (field types, what a target can hold)."""

from __future__ import annotations

from typing import Any

from promptkit.core.errors import ConversionError, InvalidRecordError
from promptkit.core.limits import MAX_TOKENS
from promptkit.core.records import Record

NUMBER = (int, float)


def bad(message: str) -> InvalidRecordError:
    return InvalidRecordError(message)


def check_type(obj: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    """``obj[key]`` if absent or of ``types``; raise naming the field otherwise."""
    value = obj.get(key)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
        raise bad(f"'{key}' must be {what}, not {type(value).__name__}")
    return value


def check_text_list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise bad(f"'{key}' must be a non-empty list")
    return value


def no_place(fmt: str, what: str, hint: str = "") -> ConversionError:
    message = f"{fmt} has no place for {what}"
    return ConversionError(f"{message}; {hint}" if hint else message)


def refuse(record: Record, fmt: str, attrs: tuple[str, ...], hint: str = "") -> None:
    """Raise if ``record`` sets any of ``attrs``, which ``fmt`` cannot hold."""
    for attr in attrs:
        if getattr(record, attr) is not None:
            raise no_place(fmt, f"'{attr}'", hint)


def require_text(record: Record, fmt: str) -> None:
    if not record.messages:
        raise ConversionError(
            f"record has no text (only input_length/hash_ids); {fmt} cannot hold it, "
            "only mooncake_trace can"
        )


_TURN_TYPES: dict[str, tuple[Any, str]] = {
    "role": (str, "a string"),
    "session_id": (str, "a string"),
    "timestamp": (NUMBER, "a number"),
    "delay": (NUMBER, "a number"),
    "extra": (dict, "an object"),
    "output_length": (int, "an integer"),
}


def check_turn_fields(obj: dict[str, Any]) -> None:
    """Check the types of the AIPerf turn fields ``obj`` has, and their rules."""
    for key in _TURN_TYPES.keys() & obj.keys():
        types, what = _TURN_TYPES[key]
        check_type(obj, key, types, what)
    length = obj.get("output_length")
    if length is not None and length <= 0:
        raise bad("'output_length' must be positive")
    if length is not None and length > MAX_TOKENS:
        raise bad(f"'output_length' is {length}, more than {MAX_TOKENS:,} tokens")
    if obj.get("timestamp") and obj.get("delay"):
        raise bad("'timestamp' and 'delay' cannot both be set")
