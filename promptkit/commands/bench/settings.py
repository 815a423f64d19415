"""The settings of ``promptkit bench``: the ``.env`` file read (an error names the file,
line and key, never a value), the environment over it, each setting checked, and
``EXTRA_INPUTS`` made into AIPerf arguments that reach the server with their JSON type;
and how the runner speaks (one line on stderr, secrets hidden)."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from promptkit.core.errors import PromptkitError, SettingError
from promptkit.core.redact import (
    HIDDEN,
    redact_json,
    redact_text,
    redact_url,
    redacted_shell,
    secret_name,
)
from promptkit.io import files

#: Every setting the runner reads, with its default (None: not passed to AIPerf).
SETTINGS: dict[str, str | None] = {
    "MODEL": None,                  # required: --model
    "URL": "http://localhost:8000",  # --url: the server's base URL
    "ENDPOINT_TYPE": "chat",        # --endpoint-type
    "STREAMING": "false",           # --streaming when true
    "CONCURRENCY": "1",             # --concurrency
    "REQUEST_COUNT": None,          # --request-count (file default: distinct - warmup)
    "FIXED_SCHEDULE": None,         # true/false: --fixed-schedule/--no-fixed-schedule
    "CACHE_BUST": None,             # AIPerf's --cache-bust mode (system-prefix, ...)
    "WARMUP_REQUEST_COUNT": "0",    # --warmup-request-count when > 0
    "TOKENIZER": None,              # --tokenizer (a local folder is made absolute)
    "ARTIFACT_DIR": None,           # --artifact-dir (default: artifacts/MODEL-TIME)
    "INPUT_FILE": None,             # --input-file; unset or missing: synthetic prompts
    "EXTRA_INPUTS": None,           # key:value,... -> repeated --extra-inputs
    "RESET_CACHE": "none",          # none | vllm | sglang | aiperf | command:CMD
    "ALLOW_REPEATS": "false",       # like --allow-repeats
    "AIPERF": None,                 # the aiperf command (default: aiperf, or python -m aiperf)
    "AIPERF_ARGS": None,            # more aiperf profile arguments, shell-quoted
    "RESET_TIMEOUT": "30",          # seconds for the reset request or hook
    "CHAT_TEMPLATE": None,          # check's template (default: hf if the tokenizer has one)
    "BLOCK_SIZE": None,             # check's block size (default 16; hash-id traces 512)
    "NUM_GPU_BLOCKS": None,         # check --num-gpu-blocks: the server's KV cache blocks
    "REPLY_TOKENS": None,           # check --reply-tokens: replies' length without output_length
    "MAX_HIT_RATE": None,           # exit 3 when the measured hit rate is above it
}
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def note(message: str) -> None:
    """One line on stderr (secrets hidden, whatever the message holds)."""
    print(f"promptkit: {redact_text(message)}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    note(f"warning: {message}")


# ---------------------------------------------------------------- the .env file

_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


#: The start of a line meant as ``KEY=VALUE`` (or ``KEY: VALUE``): its key and separator.
_KEY_START = re.compile(r"\s*(?:(?:export|set)\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*([=:])")


def shown_key(line: str) -> str | None:
    """The key of a line meant as ``KEY=VALUE`` that an error may name: a name before
    ``=`` or ``:`` written as env keys are, in capitals (letters, digits, ``_ . -``),
    and not long with digits. A key in small letters, or a long one with digits, is
    not told apart from a token pasted on a line of its own: not named. Nothing after
    the key is ever shown."""
    match = _KEY_START.match(line)
    if match is None:
        return None
    key = match.group(1)
    digits = any(c.isdigit() for c in key)
    if key != key.upper() or len(key) > 40 or (digits and len(key) >= 12):
        return None
    return key


def _not_key_value(line: str) -> str:
    """Why ``line`` is not ``KEY=VALUE``, naming its key, never its value."""
    what = "not a KEY=VALUE line"
    match = _KEY_START.match(line)
    key = shown_key(line)
    if match is None or key is None:
        return f"{what} (not shown: it may hold a secret)"
    hint = ("'=' between the key and the value; " if match.group(2) == ":"
            else "" if key.isidentifier() else "a key is letters, digits and _; ")
    return f"{key}: {what} ({hint}the value is not shown)"


def parse_env(text: str, name: str = ".env") -> dict[str, str]:
    """``KEY=VALUE`` lines: blank lines and ``#`` comments skipped, ``export``
    allowed, values optionally in single quotes (literal) or double quotes
    (``\\n``, ``\\t``, ``\\"``, ``\\\\`` escapes); an unquoted value ends at a ``#``
    that follows whitespace. No variable expansion, no multi-line values. An error
    names the file, the line and the key, never a value."""
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            raise SettingError(f"{name}:{lineno}: {_not_key_value(line)}")
        key, raw = match.groups()
        try:
            values[key] = _env_value(raw.strip())
        except ValueError as exc:
            raise SettingError(f"{name}:{lineno}: {key}: {exc}") from None
    return values


def read_env(path: Path) -> str:
    """The text of an env file (UTF-8, a BOM dropped); an error names the line and key."""
    try:
        data = files.read_whole(str(path), ".env file")
    except FileNotFoundError:
        raise SettingError(f"{path}: no such env file") from None
    except OSError as exc:
        raise SettingError(f"{path}: {(exc.strerror or str(exc)).lower()}") from None
    except PromptkitError as exc:  # a device, or a file beyond the limit
        raise SettingError(str(exc)) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        key = shown_key(data[start:exc.start].decode("utf-8", "replace").lstrip("\ufeff"))
        raise SettingError(f"{path}:{lineno}: {f'{key}: ' if key else ''}not UTF-8 text "
                           "(the value is not shown)") from None


def _env_value(raw: str) -> str:
    if not raw or raw[0] not in "'\"":
        return re.split(r"\s#", raw, maxsplit=1)[0].strip()
    quote, i = raw[0], 1
    out: list[str] = []
    while i < len(raw):
        char = raw[i]
        if char == quote:
            rest = raw[i + 1:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError("text after the closing quote (not shown)")
            return "".join(out)
        if char == "\\" and quote == '"' and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    raise ValueError(f"no closing {quote}")


def load_settings(env_file: str | None,
                  environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(settings, exports)``: the runner's settings (environment over file) and the
    file's other keys, to add to AIPerf's environment."""
    path = Path(env_file) if env_file is not None else Path(".env")
    if env_file is not None or path.is_file():
        from_file = parse_env(read_env(path), str(path))
    else:
        from_file = {}
        note("no .env here: settings from the environment only")
    settings: dict[str, str] = {}
    for key in SETTINGS:
        if key in environ:
            if key in from_file and from_file[key] != environ[key]:
                shown = "" if key == "AIPERF_ARGS" else f" ({shown_setting(key, environ[key])!r})"
                note(f"{key} from the environment{shown} overrides {path}")
            settings[key] = environ[key]
        elif key in from_file:
            settings[key] = from_file[key]
    exports = {k: v for k, v in from_file.items() if k not in SETTINGS and k not in environ}
    return settings, exports


def setting(settings: Mapping[str, str], key: str) -> str | None:
    """The value of ``key``, or its default; an empty value is the default."""
    value = settings.get(key, "").strip()
    return value if value else SETTINGS[key]


def flag(settings: Mapping[str, str], key: str) -> bool:
    value = (setting(settings, key) or "").lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise SettingError(f"{key}={value!r}: not true or false")


def count(settings: Mapping[str, str], key: str, minimum: int) -> int | None:
    value = setting(settings, key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise SettingError(f"{key}={value!r}: not a whole number >= {minimum}")
    return number


def fraction(settings: Mapping[str, str], key: str) -> float | None:
    value = setting(settings, key)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 1:
        raise SettingError(f"{key}={value!r}: not a fraction from 0 to 1 (0.05 is 5%)")
    return number


#: The most seconds RESET_TIMEOUT may give (a day): more does not fit a socket timeout.
MAX_SECONDS = 86400.0


def seconds(settings: Mapping[str, str], key: str) -> float:
    value = setting(settings, key) or ""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number <= MAX_SECONDS:  # NaN, inf and 1e400 (inf) fail this too
        raise SettingError(f"{key}={value!r}: not a number of seconds above 0 and at most "
                           f"{MAX_SECONDS:g}")
    return number


def base_url(value: str) -> str:
    """The server's base URL as given, once it is known to be one: http(s), a host,
    a port that is a number from 1 to 65535 (``http://`` is assumed without a scheme)."""
    shown = redact_url(value)
    full = value if "://" in value else f"http://{value}"
    # An @ after the first / ? or #: a password holding one of them ends the host part
    # early, so what follows the last @ is not the host (said without the parse's own
    # words, which would quote part of the password as a port).
    rest = full.partition("://")[2]
    if rest.rfind("@") > len(re.split(r"[/?#]", rest, maxsplit=1)[0]):
        raise SettingError(f"URL={shown!r}: an @ after a / ? or #: write a user or password's "
                           "/ ? # as %2F %3F %23 (an @ in the path as %40)")
    try:
        parts = urlsplit(full)
        port = parts.port  # ValueError: not a number, or out of range
    except ValueError as exc:
        raise SettingError(f"URL={shown!r}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise SettingError(f"URL={shown!r}: not an http:// or https:// URL")
    if not parts.hostname:
        raise SettingError(f"URL={shown!r}: no host")
    if port == 0:
        raise SettingError(f"URL={shown!r}: port 0 is not a server's port")
    return value


def shown_setting(key: str, value: str) -> str:
    """A setting's value as the runner prints it: secrets hidden."""
    if key == "RESET_CACHE":
        prefix, colon, hook = value.partition(":")
        return prefix + colon + redacted_shell(hook) if colon else redacted_shell(value)
    if key == "AIPERF":
        return redacted_shell(value)
    if key == "EXTRA_INPUTS":
        try:
            pairs = parse_extra_inputs(value)
        except SettingError:
            return HIDDEN
        return json.dumps(redact_json(dict(pairs)), ensure_ascii=False) if pairs else value
    if key == "URL":
        return redact_url(value)
    return redact_text(value)


# ---------------------------------------------------------------- EXTRA_INPUTS


def _json_constant(name: str) -> float:
    raise ValueError(name)  # NaN and Infinity are not JSON: keep them as strings


def json_value(text: str) -> Any:
    """A value as JSON reads it (``true``, ``1``, ``0.5``, ``"x"``, ``[1, 2]``), else the
    text as a string (``x``)."""
    try:
        value = json.loads(text, parse_constant=_json_constant)
    except ValueError:
        return text
    if isinstance(value, float) and not math.isfinite(value):
        return text
    return value


def split_items(text: str) -> list[str]:
    """Split at commas outside quotes and brackets: ``a:1,stop:["x","y"]`` is two items."""
    items: list[str] = []
    current: list[str] = []
    depth, quote, escaped = 0, False, False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quote = False
        elif char == '"':
            quote = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return items


def parse_extra_inputs(text: str | None) -> list[tuple[str, Any]]:
    """``key:value`` pairs, comma-separated (or one JSON object), values typed as JSON."""
    text = (text or "").strip()
    if not text:
        return []
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise SettingError(f"EXTRA_INPUTS: not a valid JSON object: {exc}") from None
        if not isinstance(obj, dict):
            raise SettingError("EXTRA_INPUTS: not a JSON object")
        return list(obj.items())
    pairs: list[tuple[str, Any]] = []
    for number, item in enumerate(split_items(text), start=1):
        if not item.strip():
            continue
        key, sep, value = item.partition(":")
        key = key.strip()
        if not sep or not key or "=" in key:  # api_key=S:T is api_key=... too
            # Not shown: a comma in a secret value makes its second half an item.
            hint = "':' between the key and the value, " if "=" in item else ""
            raise SettingError(f"EXTRA_INPUTS: item {number} is not key:value ({hint}"
                               "not shown: it may hold a secret)")
        if key in dict(pairs):
            raise SettingError(f"EXTRA_INPUTS: {key!r} given twice")
        pairs.append((key, json_value(value.strip())))
    return pairs


def _aiperf_coerce_value(value: str) -> Any:
    """AIPerf 0.13's ``aiperf.config.loader.parsing.coerce_value``, verbatim."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.lower() in ("none", "null"):
        return None
    if value.isdigit() and (not value.startswith("0") or value == "0"):
        return int(value)
    if (value.startswith("-") and value[1:].isdigit()
            and (not value.startswith("-0") or value == "-0")):
        return int(value)
    if value.count(".") == 1 and (
        value.replace(".", "").isdigit()
        or (value.startswith("-") and value[1:].replace(".", "").isdigit())
    ):
        return float(value)
    return value


#: What AIPerf fails on (``int("²")``: ``"²".isdigit()`` is true).
_FAILS = object()


def aiperf_coerce(text: str) -> Any:
    """What AIPerf makes of a string value of ``--extra-inputs``. It applies this to
    every string value, in ``key:value`` and JSON form alike (its CLI config is
    validated twice, and the second pass coerces the parsed pairs' values)."""
    try:
        return _aiperf_coerce_value(text)
    except ValueError:
        return _FAILS


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def extra_input_args(pairs: list[tuple[str, Any]]) -> list[str]:
    """One ``--extra-inputs`` argument a pair, so the value reaches the server with
    its JSON type: ``key:value`` when AIPerf's parsing of the text gives back the
    value, else ``{"key": value}`` (a list or object, a float such as ``1e-05``, a
    string with a comma or outer spaces). A string AIPerf would turn into something
    else (``"1"``, ``"true"``, ``"null"``) cannot be sent through its CLI: an error."""
    args: list[str] = []
    for key, value in pairs:
        if isinstance(value, str) and not _same(aiperf_coerce(value), value):
            shown = HIDDEN if secret_name(key) else json.dumps(value, ensure_ascii=False)
            raise SettingError(
                f"EXTRA_INPUTS: {key}: the string {shown} would not reach the "
                "server as a string: AIPerf 0.13 turns string values that look like "
                "numbers, booleans or null into those")
        if isinstance(value, bool):
            text: str | None = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = value if isinstance(value, str) else repr(value)
        else:
            text = None  # null, lists and objects
        simple = (
            text is not None and text == text.strip() and text != ""
            and "," not in text and _same(aiperf_coerce(text), value)
            and not any(c in key for c in ":,") and key == key.strip() and key[:1] != "{"
        )
        args += ["--extra-inputs",
                 f"{key}:{text}" if simple else json.dumps({key: value}, ensure_ascii=False)]
    return args
