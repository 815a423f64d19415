"""Run ``aiperf profile`` on a prompt file (or synthetic prompts), configured by ``.env``,
and compare the prefix-cache hit rate ``check`` predicts with the one the server measured.

Usage (``promptkit bench``; ``scripts/run_aiperf.py`` is a wrapper for it)::

    promptkit bench [--env-file PATH] [--dry-run] [--allow-repeats]

Settings (documented in ``.env.example``) come from ``KEY=VALUE`` lines of the
env file (``.env`` in the current folder by default) and from the process
environment, which wins: ``CONCURRENCY=8 promptkit bench`` runs the file's setup
at concurrency 8. A variable set to the empty string in the environment counts
as set (``INPUT_FILE=`` forces synthetic prompts). Keys the runner does not know
(``HF_TOKEN``, ``AIPERF_*`` settings, ...) are exported to AIPerf's environment
unless the environment already has them.

What it does, in order:

1. ``INPUT_FILE`` set and present: its manifest (``FILE.manifest.json``, written
   by promptkit) supplies ``--custom-dataset-type``, a ``--system-prompt-file``
   and the number of distinct records; without a manifest (or with one that no
   longer matches the file's sha256) the format is detected as every promptkit
   command detects it and the distinct prompts are counted (a ``multi_turn``
   conversation holds one request a turn, as AIPerf counts ``--request-count``).
   When ``WARMUP_REQUEST_COUNT + REQUEST_COUNT`` exceeds those requests, AIPerf
   would wrap around the file and resend prompts that hit the prefix cache: the
   runner stops (exit 1) unless ``--allow-repeats`` or ``ALLOW_REPEATS=true``.
   The schedule is decided as AIPerf decides it (``FIXED_SCHEDULE`` or AIPerf's
   flag in ``AIPERF_ARGS`` override): on its fixed schedule (a ``mooncake_trace``
   whose first line has a timestamp) AIPerf sends every line once and ignores
   ``--request-count``, so ``REQUEST_COUNT`` is refused (exit 2) and a warmup
   counts as repeats. The runner says which schedule the run is on and passes
   ``--fixed-schedule`` or ``--no-fixed-schedule`` either way.
   ``INPUT_FILE`` unset (or empty): AIPerf's synthetic prompts, with a warning
   (they are alike, so prefix caching may flatter the results). ``INPUT_FILE``
   set to a path that is missing, a folder or unreadable stops the runner (exit 1).
2. Predicts the run's prefix-cache hit rate with ``check``, in-process: the same
   file, request and warmup counts and system prompt file, under ``TOKENIZER``
   (a folder, ``hf:ID`` from the local Hugging Face cache for a Hub id, the
   model's tokenizer when unset), ``CHAT_TEMPLATE`` and ``BLOCK_SIZE``. A
   prediction that cannot be made (synthetic prompts, no tokenizer offline)
   does not stop the run: it is said on stderr and recorded as ``null`` with
   the reason. ``--dry-run`` prints the prediction too.
3. ``RESET_CACHE``: clears the server's prefix cache right before AIPerf starts
   (``vllm``: ``POST /reset_prefix_cache``; ``sglang``: ``POST /flush_cache``;
   ``aiperf``: AIPerf's own ``--reset-kv-cache``; ``command:CMD``: a shell hook,
   e.g. a server restart); ``ARTIFACT_DIR/cache_condition.json``, written after a
   run AIPerf finished, records what was done, when, the response status, the
   run's shape, the prediction and AIPerf's exit code.
4. Runs ``aiperf profile`` (``--dry-run``: prints the exact command instead, one
   shell-quoted line on stdout, and runs nothing), in a process group of its own
   that ends with promptkit however promptkit ends (Linux's parent-death signal:
   SIGKILL of promptkit ends AIPerf and its services too). From a terminal, AIPerf
   gets its foreground (its dashboard reads the keyboard; Ctrl-C and Ctrl-Z reach
   AIPerf). SIGINT, SIGTERM and SIGHUP sent to promptkit are passed on to AIPerf.
   A run that did not finish (a signal to promptkit, AIPerf dead of one, or AIPerf
   cancelling its run after a Ctrl-C) ends with one line, exit 128 + the signal,
   and no comparison and no ``cache_condition.json``. Secrets (the values of
   ``--api-key`` and other options, headers, request fields and JSON keys named for
   a key or token, at any depth; ``*_TOKEN`` / ``*KEY*`` variables; a URL's whole
   user information; bearer tokens; curl's ``-u user:password``) are shown as
   ``***`` in everything the runner prints and writes; an error in the .env file
   names the file, line and key, never a value. AIPerf gets the real values.
5. Reads what the server counted during the profiling phase from AIPerf's
   ``ARTIFACT_DIR/server_metrics_export.json`` (AIPerf scrapes the server's
   ``/metrics`` unless ``--no-server-metrics``): vLLM's
   ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` counters, else
   SGLang's ``sglang:cached_tokens`` / ``sglang:prompt_tokens``. Writes
   ``"prefix_cache": {"predicted_hit_rate", "predicted_range",
   "measured_hit_rate", "measured_hits", "measured_queries", "source", ...}``
   into ``cache_condition.json`` and prints one line comparing prediction and
   measurement, saying plainly when the server hit more than predicted (a
   flattered run) and what may cause it. Where the prompt tokens differ, the
   server's count of each profiled request (its ``usage``, in AIPerf's
   ``ARTIFACT_DIR/profile_export.jsonl``) against check's tells the first
   requests of conversations (the tokenizer, chat template or tools differ)
   from later turns only (the server's replies, sent back in the history, came
   back as other tokens): ``"measured_turns"`` / ``"predicted_turns"``. After a
   warmup, AIPerf 0.13's export can leave the first profiled requests out of
   the profiling phase's counters (its warmup and profiling windows overlap);
   when the measurement is exactly the prediction less its first requests, the
   line says so.

Exit codes: AIPerf's own after a run; 1 when the runner stops (prompts would
repeat, the cache reset failed, the input file is not loadable, AIPerf cannot be
started); 2 for a bad setting; 3 when AIPerf succeeded but the measured hit rate is
above ``MAX_HIT_RATE`` (a fraction, 0 to 1; with nothing measured it only warns);
128 + n for a run that signal n stopped (130: Ctrl-C).
The runner's messages go to stderr, one line each, prefixed ``promptkit:``;
stdout carries the ``--dry-run`` command, or AIPerf's own output during a run.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from promptkit.core import interrupts, leftovers
from promptkit.core.errors import InvalidRecordError, PromptkitError, SettingError
from promptkit.core.redact import (
    HIDDEN,
    redact_json,
    redact_strings,
    redact_text,
    redact_url,
    redacted,
    redacted_shell,
    secret_name,
)
from promptkit.core.words import counted
from promptkit.formats.aiperf import HASH_BLOCK_FLAGS, TRACE_TYPES, fixed_schedule
from promptkit.io import files
from promptkit.provenance import manifest

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

RESET_PATHS = {"vllm": "/reset_prefix_cache", "sglang": "/flush_cache"}
CONDITION_FILE = "cache_condition.json"
SERVER_METRICS_FILE = "server_metrics_export.json"
#: The prefix-cache counters AIPerf records, ``(hits, queries)``, by engine (AIPerf
#: strips the ``_total`` of the counters' sample names).
CACHE_COUNTERS = {
    "vllm": ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
    "sglang": ("sglang:cached_tokens", "sglang:prompt_tokens"),
}
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")
#: Exit codes of the runner itself (AIPerf's own is returned after a run).
EXIT_STOP = 1
EXIT_SETTING = 2
EXIT_ABOVE_MAX_HIT_RATE = 3
#: Rates closer than this are the same (both are rounded to 6 digits).
RATE_EPSILON = 1e-6



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


# ---------------------------------------------------------------- the input file


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
    from promptkit.io.jsonl import Source
    from promptkit.io.keys import prompt_key

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


# ---------------------------------------------------------------- the cache reset


def origin(url: str) -> str:
    """``scheme://host:port`` of a base URL (``http://`` added when it has no scheme)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def with_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``(url, headers)`` for urllib, which takes no user information in a URL: the URL
    without it, and its user and password as basic authentication (as curl sends them)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, {}
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_reset(value: str) -> tuple[str, str | None]:
    """``(mode, hook command)`` of a RESET_CACHE value."""
    low = value.strip().lower()
    if low.startswith("command:"):
        command = value.strip()[len("command:"):].strip()
        if not command:
            raise SettingError("RESET_CACHE=command: needs a shell command after the colon")
        return "command", command
    if low in ("none", "vllm", "sglang", "aiperf"):
        return low, None
    raise SettingError(f"RESET_CACHE={redacted_shell(value)!r}: one of none, vllm, sglang, "
                       "aiperf, command:CMD")


def reset_cache(mode: str, hook: str | None, url: str, timeout: float) -> dict[str, Any]:
    """Clear the prefix cache now (vllm, sglang, command); what was done, for the record."""
    started = time.monotonic()
    record: dict[str, Any] = {"at": now_utc()}
    if mode in RESET_PATHS:
        target = origin(url) + RESET_PATHS[mode]
        shown = redact_url(target)
        record["action"] = f"POST {shown}"
        plain, headers = with_credentials(target)
        request = urllib.request.Request(plain, data=b"", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                record["status"] = response.status
                record["response"] = response.read(500).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            hint = (" (vLLM serves it only with VLLM_SERVER_DEV_MODE=1)"
                    if mode == "vllm" and exc.code == 404 else "")
            raise PromptkitError(f"RESET_CACHE={mode}: POST {shown} answered {exc.code} "
                                 f"{exc.reason}{hint}; not running the benchmark") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = redact_text(str(getattr(exc, "reason", exc)))
            raise PromptkitError(f"RESET_CACHE={mode}: POST {shown} failed: {reason}; "
                                 "not running the benchmark") from None
    else:
        assert mode == "command" and hook is not None
        shown = redacted_shell(hook)
        record["action"] = f"command: {shown}"
        try:
            done = subprocess.run(hook, shell=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PromptkitError(f"RESET_CACHE hook timed out after {timeout:g}s "
                                 f"(RESET_TIMEOUT): {shown}") from None
        record["exit_code"] = done.returncode
        if done.returncode != 0:
            raise PromptkitError(f"RESET_CACHE hook exited {done.returncode}: {shown}; "
                                 "not running the benchmark")
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def write_json(path: Path, data: dict[str, Any]) -> None:
    from promptkit.io.files import write_text

    text = json.dumps(redact_strings(data), indent=2, ensure_ascii=False) + "\n"
    write_text(str(path), text)


# ---------------------------------------------------------------- the prediction


@dataclass
class Prediction:
    """What ``check`` is asked: the file, the run's shape and how the server tokenizes."""

    input_file: str | None  # None: synthetic prompts
    tokenizer: str | None  # promptkit's name of TOKENIZER (None: none can be named)
    chat_template: str | None  # None: CHAT_TEMPLATE unset (chosen from the tokenizer)
    block_size: int | None
    requests: int | None
    warmup: int
    system_prompt_file: str | None
    num_gpu_blocks: int | None = None
    reply_tokens: int | None = None
    hash_block_size: int | None = None  # AIPerf's --prompt-input-tokens-block-size
    fixed_schedule: bool = False  # AIPerf replays the file on its fixed schedule
    cache_bust: str = "none"  # AIPerf's --cache-bust (promptkit's spelling)


def check_tokenizer(tokenizer: str | None, model: str) -> str | None:
    """promptkit's name for the tokenizer AIPerf is given (``TOKENIZER``): a local
    folder or file as it is, a Hub id as ``hf:ID`` (the local Hugging Face cache),
    ``builtin`` as AIPerf's ``o200k_base``; unset, the model's tokenizer."""
    if tokenizer is None:
        return f"hf:{model}" if "/" in model else None
    if os.path.exists(tokenizer):
        return tokenizer
    if tokenizer == "builtin":
        return "o200k_base"
    return f"hf:{tokenizer}"


def has_chat_template(spec: str) -> bool:
    """Whether a Hugging Face tokenizer (a folder, its tokenizer.json, or ``hf:ID`` in
    the local cache) comes with a chat template."""
    candidates: list[str] = []
    if spec.startswith("hf:"):
        from huggingface_hub import try_to_load_from_cache

        for name in ("tokenizer_config.json", "chat_template.jinja", "chat_template.json"):
            found = try_to_load_from_cache(spec[3:], name)
            if isinstance(found, str):
                candidates.append(found)
    elif os.path.exists(spec):
        folder = spec if os.path.isdir(spec) else os.path.dirname(os.path.abspath(spec))
        candidates = [os.path.join(folder, name) for name in
                 ("tokenizer_config.json", "chat_template.jinja", "chat_template.json")]
    for file in candidates:
        if not os.path.isfile(file):
            continue
        if not file.endswith("tokenizer_config.json"):
            return True
        try:
            with open(file, encoding="utf-8") as f:
                if json.load(f).get("chat_template"):
                    return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def chat_template_for(prediction: Prediction, endpoint_type: str) -> tuple[str, str]:
    """``(template, why)``: CHAT_TEMPLATE, or the one the server applies: none for a
    completions endpoint, the tokenizer's own (``hf``) when it has one, else none."""
    if prediction.chat_template is not None:
        return prediction.chat_template, "CHAT_TEMPLATE"
    if endpoint_type != "chat":
        return "none", f"ENDPOINT_TYPE={endpoint_type} sends no chat messages"
    if prediction.tokenizer is not None and has_chat_template(prediction.tokenizer):
        return "hf", "the tokenizer's own chat template"
    return "none", "the tokenizer has no chat template"


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "PyTorch was not found" advice from transformers (a tokenizer needs no torch)
    while check loads a chat template."""
    name = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def predict(prediction: Prediction, endpoint_type: str) -> dict[str, Any]:
    """``check``'s prediction of the profiled run, or ``predicted_hit_rate: None`` and
    the reason it cannot be made. Never raises for a prediction that fails."""
    out: dict[str, Any] = {"predicted_hit_rate": None, "predicted_range": None}
    if prediction.input_file is None:
        out["prediction_unavailable"] = ("synthetic prompts: AIPerf makes them at run "
                                         "time, so check has no file to read")
        return out
    if prediction.tokenizer is None:
        out["prediction_unavailable"] = ("no tokenizer to count with: set TOKENIZER (a "
                                         "folder, or a Hub id in the local cache)")
        return out
    template, why = chat_template_for(prediction, endpoint_type)
    options: dict[str, Any] = {
        "tokenizer": prediction.tokenizer, "chat_template": template,
        "block_size": prediction.block_size, "requests": prediction.requests,
        "warmup": prediction.warmup, "fixed_schedule": prediction.fixed_schedule,
        "cache_bust": prediction.cache_bust,
    }
    for key in ("system_prompt_file", "num_gpu_blocks", "reply_tokens", "hash_block_size"):
        if getattr(prediction, key) is not None:
            options[key] = getattr(prediction, key)
    out["predicted_with"] = {**options, "chat_template_from": why}
    from promptkit.runner import pipeline
    # prompt tokens of conversations' first requests and later turns (turns_diagnosis).
    # (In a scratch folder of the temp folder: a later run removes it if this one is killed.)
    with leftovers.scratch_folder() as scratch:
        rows = os.path.join(scratch, "per-request.jsonl")
        try:
            with _quiet_transformers():
                # use_manifest=False: the system prompt file is the one AIPerf is given.
                summary = pipeline.check_file(prediction.input_file, use_manifest=False,
                                              per_request=rows, **options)
            turns = _turns()
            with open(rows, encoding="utf-8") as f:
                for n, row in enumerate(map(json.loads, f)):
                    if prediction.warmup and n < BOUNDARY_REQUESTS:
                        out.setdefault("predicted_first_requests", []).append(
                            [row["prompt_tokens"], row["hit_tokens"]])
                    _count_turn(turns, row["turn"] == 1, row["prompt_tokens"])
            out["predicted_turns"] = turns
        except PromptkitError as exc:
            out["prediction_unavailable"] = f"check failed: {exc}"
            return out
        except Exception as exc:  # a run must not be lost to a failing prediction
            out["prediction_unavailable"] = f"check failed: {type(exc).__name__}: {exc}"
            return out
    rate = summary["hit_rate"]
    out["predicted_hit_rate"] = rate
    rate_range = summary.get("hit_rate_range")
    out["predicted_range"] = list(rate_range) if rate_range is not None else None
    out["predicted_hits"] = summary["hit_tokens"]
    out["predicted_queries"] = summary["prompt_tokens"]
    bust_range = summary.get("cache_bust", {}).get("prompt_tokens_range")
    if bust_range is not None:  # markers of the run's own digest: a range of prompt tokens
        out["predicted_queries_range"] = bust_range
        low, high = out["predicted_range"] or (rate, rate)
        queries = summary["prompt_tokens"]
        out["predicted_range"] = [round(low * queries / bust_range[1], 6),
                                  round(high * queries / max(bust_range[0], 1), 6)]
    if "cross_conversation_hit_rate" in summary:
        out["predicted_cross_conversation_hit_rate"] = summary["cross_conversation_hit_rate"]
    out["predicted_with"]["block_size"] = summary.get("block_size", prediction.block_size)
    return out


def pct(rate: float) -> str:
    return f"{100 * rate:.2f}%"


def prediction_line(predicted: dict[str, Any]) -> str:
    if predicted["predicted_hit_rate"] is None:
        return f"no prediction of the prefix-cache hit rate: {predicted['prediction_unavailable']}"
    used = predicted["predicted_with"]
    low_high = predicted["predicted_range"]
    shown = pct(predicted["predicted_hit_rate"])
    if low_high is not None and low_high[0] != low_high[1]:
        shown += f" (range {pct(low_high[0])} to {pct(low_high[1])})"
    return (f"predicted prefix-cache hit rate {shown}: {predicted['predicted_hits']} of "
            f"{predicted['predicted_queries']} prompt tokens (check: tokenizer "
            f"{used['tokenizer']}, chat template {used['chat_template']}, block size "
            f"{used['block_size']})")


# ---------------------------------------------------------------- the measurement


def _series_total(metric: Any) -> float | None:
    """The counter's increase over the phase, summed over its series (every endpoint
    and label set); None when no series has one."""
    totals = [s["stats"]["total"] for s in (metric or {}).get("series") or []
              if isinstance(s, dict) and isinstance(s.get("stats"), dict)
              and isinstance(s["stats"].get("total"), int | float)]
    return float(sum(totals)) if totals else None


def _counters(metrics: Any) -> tuple[str, str, str, float, float] | None:
    """``(engine, hits name, queries name, hits, queries)`` of the first engine whose
    two prefix-cache counters ``metrics`` holds."""
    if not isinstance(metrics, dict):
        return None
    for engine, (hits_name, queries_name) in CACHE_COUNTERS.items():
        hits = _series_total(metrics.get(hits_name))
        queries = _series_total(metrics.get(queries_name))
        if hits is not None and queries is not None:
            return engine, hits_name, queries_name, hits, queries
    return None


#: AIPerf's record of every request, one JSON line each (its ``metadata``: phase,
#: conversation, turn; its ``metrics``: the server's usage, among others).
RECORDS_FILE = "profile_export.jsonl"
#: The two kinds of request a difference in prompt tokens is put down to.
FIRST, LATER = "first_requests", "later_turns"


def _turns() -> dict[str, dict[str, int]]:
    return {FIRST: {"requests": 0, "prompt_tokens": 0},
            LATER: {"requests": 0, "prompt_tokens": 0}}


def _count_turn(turns: dict[str, dict[str, int]], first: bool, prompt_tokens: int) -> None:
    group = turns[FIRST if first else LATER]
    group["requests"] += 1
    group["prompt_tokens"] += prompt_tokens


def measured_turns(artifact_dir: Path) -> dict[str, dict[str, int]] | None:
    """The prompt tokens the server counted (its ``usage``) for the profiled requests,
    as AIPerf recorded them one by one in ``profile_export.jsonl``: of the first
    requests of conversations and of their later turns. ``None`` when the file is
    missing or a profiled request has no count (no usage from the server, an error)."""
    turns = _turns()
    try:
        with (artifact_dir / RECORDS_FILE).open(encoding="utf-8") as f:
            for line in filter(str.strip, f):
                row = json.loads(line)
                meta = row["metadata"]
                if meta.get("benchmark_phase") != "profiling":
                    continue
                tokens = (row.get("metrics") or {}).get("usage_prompt_tokens", {}).get("value")
                turn = meta.get("turn_index")
                if not isinstance(tokens, int) or not isinstance(turn, int):
                    return None
                _count_turn(turns, turn == 0, tokens)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return turns


def measure(artifact_dir: Path) -> dict[str, Any]:
    """What the server counted during the profiling phase, from AIPerf's export of its
    ``/metrics`` scrape: hits, queries (prompt tokens), their ratio and the source.
    (Its ``warmup_metrics`` are left alone: AIPerf 0.13's warmup window runs on into
    the profiling phase; measured on vLLM, it counted several profiled requests.)"""
    path = artifact_dir / SERVER_METRICS_FILE
    out: dict[str, Any] = {"measured_hit_rate": None, "measured_hits": None,
                           "measured_queries": None,
                           "measured_turns": measured_turns(artifact_dir)}
    if not path.is_file():
        out["source"] = (f"{path}: missing (AIPerf writes it when it scraped the server's "
                         "/metrics: server metrics on, no --no-server-metrics)")
        return out
    try:
        export = json.loads(path.read_text(encoding="utf-8"))
        found = _counters(export.get("metrics"))
    except (OSError, ValueError, AttributeError) as exc:
        out["source"] = f"{path}: unreadable ({exc})"
        return out
    if found is None:
        names = " or ".join(f"{h} / {q}" for h, q in CACHE_COUNTERS.values())
        out["source"] = (f"{path}: no prefix-cache counters ({names}); the server does not "
                         "export them, or its prefix caching is off")
        return out
    engine, hits_name, queries_name, hits, queries = found
    out.update({"measured_hits": int(hits), "measured_queries": int(queries),
                "measured_engine": engine,
                "source": f"{path}: {hits_name} / {queries_name}, profiling phase"})
    if queries > 0:
        out["measured_hit_rate"] = round(min(hits, queries) / queries, 6)
    else:
        out["source"] += " (no prompt tokens counted: no rate)"
    return out


#: Why a measurement may differ from the prediction when a warmup ran: AIPerf 0.13's
#: warmup and profiling windows overlap, and the first profiled requests can be counted
#: in the warmup phase or in neither (measured on vLLM 0.32 with 4 warmup and 28
#: profiled requests: 1 to 11 requests left out in 6 runs of 7; on the test server, 1).
BOUNDARY = ("AIPerf's export counting requests at the warmup/profiling boundary in the "
            "other phase (WARMUP_REQUEST_COUNT={warmup})")
#: How many of the first profiled requests are looked at for that.
BOUNDARY_REQUESTS = 64


def requests_missed(record: dict[str, Any]) -> int:
    """How many of the first profiled requests the measurement lacks, when it is the
    prediction less exactly those (AIPerf 0.13's export after a warmup); else 0."""
    first = record.get("predicted_first_requests")
    if not first or record.get("predicted_hits") is None:
        return 0
    hits, queries = record["predicted_hits"], record["predicted_queries"]
    measured = (record["measured_hits"], record["measured_queries"])
    for k, (prompt_tokens, hit_tokens) in enumerate(first, start=1):
        hits, queries = hits - hit_tokens, queries - prompt_tokens
        if measured == (hits, queries):
            return k
        if queries < measured[1]:
            break
    return 0


def comparison_line(record: dict[str, Any], reset_mode: str, chat_template: str | None,
                    warmup: int = 0) -> str:
    """One line: the measured rate against the prediction, and what a difference means."""
    predicted, measured = record["predicted_hit_rate"], record["measured_hit_rate"]
    if measured is None:
        if predicted is None:
            return (f"prefix cache: neither predicted ({record['prediction_unavailable']}) "
                    f"nor measured ({record['source']})")
        return f"prefix cache: predicted {pct(predicted)}; not measured: {record['source']}"
    served = (f"the server hit {pct(measured)} ({record['measured_hits']} of "
              f"{record['measured_queries']} prompt tokens)")
    if predicted is None:
        return (f"prefix cache: {served}; no prediction to compare "
                f"({record['prediction_unavailable']})")
    low, high = record["predicted_range"] or (predicted, predicted)
    expected = pct(predicted) if low == high else f"{pct(low)} to {pct(high)}"
    missed = requests_missed(record) if warmup and low == high else 0
    if missed:
        lost = record["predicted_first_requests"][:missed]
        what = "the first" if missed == 1 else f"the first {missed}"
        return (f"prefix cache: {served}, as predicted for every profiled request but {what} "
                f"({sum(p for p, _ in lost)} prompt tokens, {sum(h for _, h in lost)} hit), "
                "which AIPerf's export counted outside the profiling phase (its warmup and "
                f"profiling windows overlap); predicted with them: {expected}")
    boundary = [BOUNDARY.format(warmup=warmup)] if warmup else []
    # AIPerf's records of each request tell where the prompt tokens differ (why), or
    # that they do not (""); without them (None) the tokenizer or template is a guess.
    why = (bust_diagnosis(record, chat_template) if record.get("predicted_queries_range")
           else turns_diagnosis(record, chat_template))
    guess = ([f"a chat template the tokenizer does not match (check used {chat_template}; "
              "set CHAT_TEMPLATE)"] if why is None else [])
    if measured > high + RATE_EPSILON:
        causes = []
        if reset_mode == "none":
            causes.append("the cache was not cleared before the run (RESET_CACHE=none) "
                          "and held earlier prompts")
        causes += ["warmup requests counted in the profiling window", *boundary,
                   "another client sending to the same server", *guess]
        if why:
            return (f"prefix cache: {served}, more than the {expected} predicted, on other "
                    f"prompt tokens: {why}; other possible causes: {'; '.join(causes)}")
        return (f"prefix cache: {served}, more than the {expected} predicted: a flattered "
                f"run; possible causes: {'; '.join(causes)}")
    if measured < low - RATE_EPSILON:
        causes = [*boundary, "evictions (a cache smaller than the run needs)", "requests "
                  "with shared prefixes in flight together (CONCURRENCY above 1)", *guess]
        if why:
            return (f"prefix cache: {served}, less than the {expected} predicted, on other "
                    f"prompt tokens: {why}; other possible causes: {'; '.join(causes)}")
        return (f"prefix cache: {served}, less than the {expected} predicted; possible "
                f"causes: {'; '.join(causes)}")
    line = f"prefix cache: {served}, as predicted ({expected})"
    if why:
        line += f"; but {why}"
    elif record.get("predicted_queries_range") and why is not None:
        low_q, high_q = record["predicted_queries_range"]
        line += (f"; its prompt tokens inside the {low_q} to {high_q} check predicted with "
                 "AIPerf's --cache-bust markers")
    elif (record.get("predicted_queries") not in (None, record["measured_queries"])
          and not record.get("predicted_queries_range")):
        line += (f"; but the server counted {record['measured_queries']} prompt tokens "
                 f"where check counted {record['predicted_queries']}: ")
        if why is None:
            line += "; or ".join([*boundary, "its tokenizer or chat template differs from "
                                  "the one check used"])
        else:
            line += ("AIPerf's records of the profiled requests hold the prompt tokens check "
                     "counted, so the server's counters took in other requests: "
                     + "; or ".join([*boundary, "another client sending to the same server"]))
    return line


def bust_diagnosis(record: dict[str, Any], chat_template: str | None) -> str:
    """With AIPerf's --cache-bust markers, whose digests are the run's own, the prompt
    tokens are predicted as a range: ``""`` when the server's count is inside it."""
    low, high = record["predicted_queries_range"]
    measured = record["measured_queries"]
    if low <= measured <= high:
        return ""
    return (f"the server counted {measured} prompt tokens, outside the {low} to {high} that "
            f"check counted with AIPerf's --cache-bust markers: the server's tokenizer or "
            f"chat template differs from what check rendered (chat template {chat_template}; "
            "set TOKENIZER, CHAT_TEMPLATE), or another client sent to the same server")


def turns_diagnosis(record: dict[str, Any], chat_template: str | None) -> str | None:
    """Where the prompt tokens differ from the prediction, from AIPerf's record of each
    profiled request (the server's own count): in the first requests of conversations
    (the tokenizer, chat template or tools) or only in their later turns (the server's
    replies, sent back in the history). ``""``: as predicted in both; ``None``: no
    records to tell."""
    predicted, measured = record.get("predicted_turns"), record.get("measured_turns")
    if not predicted or not measured:
        return None
    if predicted == measured:
        return ""
    first, later = measured[FIRST], measured[LATER]
    counted = (predicted[FIRST]["requests"], predicted[LATER]["requests"])
    if (first["requests"], later["requests"]) != counted:
        return (f"AIPerf sent {first['requests']} first requests of conversations and "
                f"{later['requests']} later turns where check predicted {counted[0]} and "
                f"{counted[1]}: other requests than predicted")
    expected = predicted[FIRST]["prompt_tokens"]
    what = "the first requests of conversations" if later["requests"] else "the requests"
    if first["prompt_tokens"] == expected:
        return (f"{what} came to exactly the {expected} prompt tokens check counted, their "
                f"later turns to {later['prompt_tokens']} where it counted "
                f"{predicted[LATER]['prompt_tokens']}: the server's replies, sent back in the "
                "history, are not the output_length tokens check counted (re-tokenized, or "
                "shorter)")
    why = (f"{what} came to {first['prompt_tokens']} prompt tokens where check counted "
           f"{expected}: the server's tokenizer, chat template or tools differ from what "
           f"check rendered (chat template {chat_template}; set TOKENIZER, CHAT_TEMPLATE)")
    if later["prompt_tokens"] != predicted[LATER]["prompt_tokens"]:
        why += (f", and their later turns to {later['prompt_tokens']} where it counted "
                f"{predicted[LATER]['prompt_tokens']}")
    return why


# ---------------------------------------------------------------- the command


def aiperf_program(settings: Mapping[str, str]) -> list[str]:
    configured = setting(settings, "AIPERF")
    if configured:
        try:
            return shlex.split(configured)
        except ValueError as exc:
            raise SettingError(f"AIPERF: {exc}") from None
    if shutil.which("aiperf"):
        return ["aiperf"]
    return [sys.executable, "-m", "aiperf"]


def default_artifact_dir(model: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"
    return os.path.join("artifacts", f"{safe}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")


def option_value(args: list[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


SCHEDULE_FLAGS = {"--fixed-schedule": True, "--no-fixed-schedule": False}


def cache_bust_asked(settings: Mapping[str, str], aiperf_args: list[str]) -> str:
    """CACHE_BUST, or AIPerf's own ``--cache-bust`` in AIPERF_ARGS, as promptkit spells
    the mode (``none`` when neither is set)."""
    from promptkit.text import cachebust

    values = [("CACHE_BUST", setting(settings, "CACHE_BUST")),
              ("AIPERF_ARGS's --cache-bust", option_value(aiperf_args, "--cache-bust"))]
    modes: dict[str, str] = {}
    for where, value in values:
        if value is not None:
            try:
                modes[where] = cachebust.mode_of(value)
            except ValueError:
                raise SettingError(f"{where}={value!r}: one of "
                                   f"{', '.join(cachebust.MODES)}") from None
    if len(set(modes.values())) > 1:
        raise SettingError(f"CACHE_BUST={settings['CACHE_BUST']} and AIPERF_ARGS's "
                           f"--cache-bust {option_value(aiperf_args, '--cache-bust')} disagree")
    return next(iter(modes.values()), "none")


def schedule_asked(settings: Mapping[str, str], aiperf_args: list[str]) -> bool | None:
    """FIXED_SCHEDULE, or AIPerf's own flag for it in AIPERF_ARGS: True (a fixed
    schedule), False (none), ``None`` (unset: AIPerf's own choice)."""
    asked = flag(settings, "FIXED_SCHEDULE") if setting(settings, "FIXED_SCHEDULE") else None
    given = [SCHEDULE_FLAGS[arg] for arg in aiperf_args if arg in SCHEDULE_FLAGS]
    if given and asked is not None and given[-1] != asked:
        raise SettingError(f"FIXED_SCHEDULE={settings['FIXED_SCHEDULE']} and AIPERF_ARGS's "
                           f"{'--fixed-schedule' if given[-1] else '--no-fixed-schedule'} "
                           "disagree")
    return given[-1] if given else asked


def scheduled_requests(dataset: Dataset, requests: int | None) -> int:
    """The requests AIPerf's fixed schedule sends of ``dataset``: every line once
    (REQUEST_COUNT, which it ignores, is refused)."""
    if not dataset.timed:
        raise SettingError(f"FIXED_SCHEDULE: the first line of {dataset.path} has no "
                           "timestamp, which AIPerf's fixed schedule needs (it refuses the run)")
    if requests is not None:
        raise SettingError(
            f"REQUEST_COUNT={requests}: AIPerf replays {dataset.path} on its fixed schedule, "
            f"every line once ({dataset.requests_per_pass} requests), and ignores "
            "--request-count; unset REQUEST_COUNT, or set FIXED_SCHEDULE=false for "
            f"{requests} requests in file order")
    return dataset.requests_per_pass


def schedule_line(dataset: Dataset, requests: int, fixed: bool) -> str:
    """Which of AIPerf's schedules the run is on, in one line."""
    if fixed:
        return (f"schedule: fixed (--fixed-schedule): every line of {dataset.path} once, "
                f"{requests} requests, the conversations in the order of their timestamps")
    unused = (", its timestamps not used" if dataset.timed
              and dataset.custom_dataset_type in TRACE_TYPES else "")
    return (f"schedule: {requests} requests in file order (--no-fixed-schedule){unused}")


@dataclass
class Plan:
    command: list[str]
    artifact_dir: Path
    condition: dict[str, Any]
    reset_mode: str
    reset_hook: str | None
    url: str
    reset_timeout: float
    prediction: Prediction
    endpoint_type: str
    max_hit_rate: float | None


def plan(settings: Mapping[str, str], allow_repeats: bool) -> Plan:
    """Check the settings and the input file; the command and the run's condition."""
    model = setting(settings, "MODEL")
    if not model:
        raise SettingError("MODEL is not set (in .env or the environment)")
    url = base_url(setting(settings, "URL") or "")
    endpoint_type = setting(settings, "ENDPOINT_TYPE") or "chat"
    streaming = flag(settings, "STREAMING")
    concurrency = count(settings, "CONCURRENCY", 1)
    requests = count(settings, "REQUEST_COUNT", 1)
    warmup = count(settings, "WARMUP_REQUEST_COUNT", 0) or 0
    allow_repeats = allow_repeats or flag(settings, "ALLOW_REPEATS")
    reset_mode, reset_hook = parse_reset(setting(settings, "RESET_CACHE") or "none")
    extra = extra_input_args(parse_extra_inputs(setting(settings, "EXTRA_INPUTS")))
    reset_timeout = seconds(settings, "RESET_TIMEOUT")
    tokenizer = setting(settings, "TOKENIZER")
    if tokenizer and os.path.exists(tokenizer):
        tokenizer = os.path.abspath(tokenizer)  # AIPerf takes a relative one for a Hub id
    artifact_dir = setting(settings, "ARTIFACT_DIR") or default_artifact_dir(model)
    if os.path.exists(artifact_dir) and not os.path.isdir(artifact_dir):
        raise SettingError(f"ARTIFACT_DIR={artifact_dir}: a file, not a folder")
    try:
        more = shlex.split(setting(settings, "AIPERF_ARGS") or "")
    except ValueError as exc:
        raise SettingError(f"AIPERF_ARGS: {exc}") from None
    from promptkit.ops.check import TEMPLATES

    chat_template = setting(settings, "CHAT_TEMPLATE")
    if chat_template is not None and chat_template not in TEMPLATES:
        raise SettingError(f"CHAT_TEMPLATE={chat_template!r}: one of {', '.join(TEMPLATES)}")
    block_size = count(settings, "BLOCK_SIZE", 1)
    num_gpu_blocks = count(settings, "NUM_GPU_BLOCKS", 2)
    reply_tokens = count(settings, "REPLY_TOKENS", 1)
    max_hit_rate = fraction(settings, "MAX_HIT_RATE")
    if max_hit_rate is not None and "--no-server-metrics" in more:
        raise SettingError("MAX_HIT_RATE needs the server's counters, which AIPerf does not "
                           "collect with --no-server-metrics (in AIPERF_ARGS)")

    asked = schedule_asked(settings, more)
    bust = cache_bust_asked(settings, more)
    fixed = False
    condition: dict[str, Any] = {"reset_cache": reset_mode}
    input_file = setting(settings, "INPUT_FILE")
    dataset_args: list[str] = []
    predicted_file: str | None = None
    if input_file:
        dataset = load_dataset(readable_file(input_file))
        for message in dataset.warnings:
            warn(message)
        fixed = fixed_schedule(dataset.custom_dataset_type, dataset.timed, asked)
        if fixed:
            requests = scheduled_requests(dataset, requests)
        elif requests is None:
            requests = dataset.distinct_requests - warmup
            if requests < 1:
                raise PromptkitError(
                    f"WARMUP_REQUEST_COUNT ({warmup}) leaves none of the "
                    f"{dataset.describe()} of {dataset.path} for the profiled run; set "
                    "REQUEST_COUNT")
            note(f"REQUEST_COUNT unset: {requests} (the file's {dataset.describe()} less "
                 f"{warmup} warmup)")
        total = warmup + requests
        repeats = total > dataset.distinct_requests
        # AIPerf's marker before all of a request's text makes each pass new, as a nonce.
        renewed = repeats and bust == "system-prefix"
        if repeats and not (allow_repeats or renewed) and fixed:
            raise PromptkitError(
                f"{total} requests ({warmup} warmup, then every line of {dataset.path} once "
                f"on AIPerf's fixed schedule), but it has only {dataset.describe()}: "
                f"{counted(total - dataset.distinct_requests, 'request')} would resend a "
                "prompt that hits the prefix cache. Set WARMUP_REQUEST_COUNT=0, make the "
                "lines distinct "
                "(promptkit nonce), or pass --allow-repeats (ALLOW_REPEATS=true)")
        if repeats and not (allow_repeats or renewed):
            raise PromptkitError(
                f"WARMUP_REQUEST_COUNT + REQUEST_COUNT = {warmup} + {requests} = {total} "
                f"requests, but {dataset.path} has only {dataset.describe()}: AIPerf would "
                "wrap around and resend prompts that hit the prefix cache. Lower the counts, "
                "make more records (promptkit nonce --copies N), or pass --allow-repeats "
                "(ALLOW_REPEATS=true)")
        if renewed:
            note(f"{total} requests from {dataset.describe()}: AIPerf's --cache-bust "
                 "system-prefix puts a new marker before each pass's prompts")
        elif repeats:
            warn(f"{total} requests from {dataset.describe()}: "
                 f"{total - dataset.distinct_requests} resend a prompt and may hit the "
                 "prefix cache (--allow-repeats)")
        if dataset.distinct_turns is not None and warmup > 1:
            warn("multi_turn with a warmup: AIPerf 0.13 was seen to skip a conversation "
                 "after a warmup of 2 or more requests (and so to wrap around sooner); "
                 "the prediction assumes the conversations follow in file order")
        note(schedule_line(dataset, requests, fixed))
        dataset_args = dataset.args
        if not {"--fixed-schedule", "--no-fixed-schedule"} & set(more):
            dataset_args = [*dataset_args, "--fixed-schedule" if fixed else "--no-fixed-schedule"]
        predicted_file = dataset.path
        condition["dataset"] = {
            "input_file": dataset.path,
            "custom_dataset_type": dataset.custom_dataset_type,
            "from": dataset.source,
            "distinct_records": dataset.distinct_records,
            "repeats": repeats,
        }
        if dataset.distinct_turns is not None:
            condition["dataset"]["distinct_turns"] = dataset.distinct_turns
    else:
        if asked:
            raise SettingError("FIXED_SCHEDULE=true replays a file's timestamps: set "
                               "INPUT_FILE (synthetic prompts have none)")
        warn("synthetic mode: AIPerf's synthetic prompts are much alike, so the server's "
             "prefix cache may serve parts of them and flatter the results; use a "
             "nonce'd file (promptkit nonce) for a cold-cache run")
        condition["dataset"] = {"synthetic": True}

    command = [
        *aiperf_program(settings), "profile",
        "--model", model,
        "--url", url,
        "--endpoint-type", endpoint_type,
    ]
    if streaming:
        command.append("--streaming")
    command += dataset_args
    command += ["--concurrency", str(concurrency)]
    if requests is not None and not fixed:  # (a fixed schedule ignores it)
        command += ["--request-count", str(requests)]
    if warmup:
        command += ["--warmup-request-count", str(warmup)]  # AIPerf rejects 0
    if tokenizer:
        command += ["--tokenizer", tokenizer]
    command += ["--artifact-dir", artifact_dir]
    command += extra
    if reset_mode == "aiperf":
        command.append("--reset-kv-cache")
    if bust != "none" and option_value(more, "--cache-bust") is None:
        from promptkit.text.cachebust import aiperf_name

        command += ["--cache-bust", aiperf_name(bust)]
    command += more
    condition.update({"warmup_request_count": warmup, "request_count": requests,
                      "fixed_schedule": fixed, "cache_bust": bust,
                      "concurrency": concurrency,
                      "url": redact_url(url), "model": model})
    system_prompt_file = option_value(command, "--system-prompt-file")
    hash_block = [v for v in (option_value(command, flag) for flag in HASH_BLOCK_FLAGS)
                  if v is not None and v.isdigit() and int(v) >= 1]
    prediction = Prediction(
        input_file=predicted_file, tokenizer=check_tokenizer(tokenizer, model),
        chat_template=chat_template, block_size=block_size,
        requests=None if fixed else requests, warmup=warmup, fixed_schedule=fixed,
        cache_bust=bust,
        system_prompt_file=os.path.abspath(system_prompt_file) if system_prompt_file else None,
        num_gpu_blocks=num_gpu_blocks, reply_tokens=reply_tokens,
        hash_block_size=int(hash_block[-1]) if hash_block else None)
    return Plan(command, Path(artifact_dir), condition, reset_mode, reset_hook, url,
                reset_timeout, prediction, endpoint_type, max_hit_rate)


# ---------------------------------------------------------------- running AIPerf

#: Seconds AIPerf has to end after the first signal promptkit passes on to it (with
#: SIGINT it cancels the run and writes what it has, in about a second), before SIGKILL.
STOP_GRACE = 30.0
#: AIPerf's note that its results are written; ``was_cancelled`` after a SIGINT.
RESULTS_READY = ".aiperf_results_ready.json"


def check_program(command: list[str]) -> None:
    """AIPerf's program exists and can be run (else a bad setting, before any reset)."""
    if shutil.which(command[0]) is None:
        raise SettingError(f"AIPERF: {redacted(command[:1])[0]}: no such program, or not "
                           "executable")


def _foreground_terminal() -> int | None:
    """stdin, when it is a terminal whose foreground is this process's group."""
    try:
        fd = sys.stdin.fileno()
        return fd if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp() else None
    except (OSError, ValueError, AttributeError):
        return None


def _hand_terminal(terminal: int, group: int) -> None:
    """Make ``group`` the terminal's foreground (from the background too: SIGTTOU held)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    try:
        os.tcsetpgrp(terminal, group)
    except OSError:
        pass  # the terminal is gone (a hangup)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _aiperf_preexec(terminal: int | None) -> Callable[[], None]:
    """What AIPerf's process does before it is executed: a process group of its own (its
    services join it), the terminal's foreground when promptkit had it (AIPerf's
    dashboard reads the keyboard; Ctrl-C and Ctrl-Z reach AIPerf alone), and death
    with promptkit (SIGKILL when promptkit ends, however it ends)."""
    dies = interrupts.dies_with_this_process()

    def preexec() -> None:
        os.setpgid(0, 0)
        if terminal is not None:
            _hand_terminal(terminal, os.getpgrp())
        dies()

    return preexec


def _signal_group(group: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _wait(proc: subprocess.Popen[bytes], terminal: int | None) -> int:
    """AIPerf's exit code (negative: the signal it died of). Stopped at the terminal
    (Ctrl-Z), it stops promptkit's job too: the shell gets the terminal back, and
    ``fg`` resumes both."""
    while True:
        _, status = os.waitpid(proc.pid, os.WUNTRACED if terminal is not None else 0)
        if terminal is not None and os.WIFSTOPPED(status):
            _hand_terminal(terminal, os.getpgrp())
            _signal_group(os.getpgrp(), signal.SIGTSTP)  # stops here until fg
            _hand_terminal(terminal, proc.pid)
            _signal_group(proc.pid, signal.SIGCONT)
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode


def run_aiperf(command: list[str], env: Mapping[str, str]) -> tuple[int, int | None]:
    """Run AIPerf: ``(its exit code, the signal promptkit got meanwhile or None)``.

    AIPerf runs in a process group of its own and dies with promptkit, even with one
    killed by SIGKILL (see :func:`_aiperf_preexec`). SIGINT, SIGTERM and SIGHUP sent
    to promptkit are passed on to AIPerf's group (a second one, or ``STOP_GRACE``
    seconds without an end, send SIGKILL), and promptkit waits for it to end."""
    received: list[int] = []
    sent: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    deadline: threading.Timer | None = None

    def pass_on() -> None:
        nonlocal deadline
        while proc is not None and len(sent) < len(received):
            sent.append(signal.SIGKILL if sent else received[0])
            _signal_group(proc.pid, sent[-1])
            if deadline is None:
                deadline = threading.Timer(STOP_GRACE, _signal_group,
                                           (proc.pid, signal.SIGKILL))
                deadline.daemon = True
                deadline.start()

    def stop(signum: int, frame: Any) -> None:
        received.append(signum)
        pass_on()

    main = threading.current_thread() is threading.main_thread()  # (signals: main only)
    before = {each: signal.signal(each, stop) for each in interrupts.SIGNALS
              if main and signal.getsignal(each) is not signal.SIG_IGN}
    terminal = _foreground_terminal()
    try:
        try:
            proc = subprocess.Popen(command, env=dict(env), preexec_fn=_aiperf_preexec(terminal))
        except (OSError, subprocess.SubprocessError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise PromptkitError(f"AIPERF: {redacted(command[:1])[0]}: cannot start it: "
                                 f"{why.lower()}") from None
        pass_on()  # a signal that came while it started
        return _wait(proc, terminal), received[0] if received else None
    finally:
        for each, handler in before.items():
            signal.signal(each, handler)
        if deadline is not None:
            deadline.cancel()
        if terminal is not None:
            _hand_terminal(terminal, os.getpgrp())


def unfinished_run(code: int, stopped_by: int | None, artifact_dir: Path,
                   started: float) -> tuple[str, int] | None:
    """Why the run did not finish, and promptkit's exit code (128 + the signal), or None
    for a run AIPerf finished: promptkit got a signal, AIPerf died of one, or AIPerf
    cancelled its run (a Ctrl-C at the terminal reaches AIPerf alone; it then writes
    what it has and exits 0, saying ``was_cancelled``)."""
    if stopped_by is not None:
        return f"interrupted ({signal.Signals(stopped_by).name})", 128 + stopped_by
    if code < 0:
        return f"AIPerf died of {signal.Signals(-code).name}", 128 - code
    ready = artifact_dir / RESULTS_READY
    try:
        cancelled = (ready.stat().st_mtime >= started - 1
                     and json.loads(ready.read_text(encoding="utf-8")).get("was_cancelled"))
    except (OSError, ValueError, AttributeError):
        cancelled = False
    if cancelled is True:
        return "AIPerf cancelled its run (SIGINT)", 128 + signal.SIGINT
    return None


def execute(the_plan: Plan, exports: Mapping[str, str]) -> int:
    """Predict, clear the cache, run AIPerf, measure; the exit code. A run that did not
    finish (:func:`unfinished_run`) gets one line and exit 128 + the signal, and
    neither the comparison nor the record (cache_condition.json)."""
    condition = dict(the_plan.condition)
    predicted = predict(the_plan.prediction, the_plan.endpoint_type)
    (note if predicted["predicted_hit_rate"] is not None else warn)(prediction_line(predicted))
    limit = the_plan.max_hit_rate
    if (limit is not None and predicted["predicted_hit_rate"] is not None
            and predicted["predicted_hit_rate"] > limit + RATE_EPSILON):
        warn(f"the predicted hit rate is already above MAX_HIT_RATE={limit:g}")
    prefix_cache: dict[str, Any] = {**predicted, "max_hit_rate": limit}
    check_program(the_plan.command)
    try:
        the_plan.artifact_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PromptkitError(f"ARTIFACT_DIR={the_plan.artifact_dir}: "
                             f"{(exc.strerror or str(exc)).lower()}") from None
    record = the_plan.artifact_dir / CONDITION_FILE
    mode = the_plan.reset_mode
    if mode in ("vllm", "sglang", "command"):
        condition.update(reset_cache(mode, the_plan.reset_hook, the_plan.url,
                                     the_plan.reset_timeout))
        note(f"prefix cache cleared: {condition['action']}")
    elif mode == "aiperf":
        condition.update({
            "at": now_utc(),
            "action": f"aiperf --reset-kv-cache: AIPerf POSTs its reset path "
                      f"(default {redact_url(origin(the_plan.url))}/reset_prefix_cache) "
                      "before it starts; "
                      "a failed reset fails the run",
        })
    else:
        condition.update({"at": now_utc(), "action": "none: the server's prefix cache was "
                          "not cleared and may hold prompts of earlier runs"})
    condition["aiperf_command"] = redacted(the_plan.command)  # the real one runs
    condition["prefix_cache"] = prefix_cache
    started = time.time()
    code, stopped_by = run_aiperf(the_plan.command, {**exports, **os.environ})
    unfinished = unfinished_run(code, stopped_by, the_plan.artifact_dir, started)
    if unfinished is not None:
        why, exit_code = unfinished
        note(f"{why}: the run did not finish; no comparison, no {CONDITION_FILE}")
        return exit_code
    condition["aiperf_exit_code"] = code
    condition["finished"] = now_utc()
    prefix_cache.update(measure(the_plan.artifact_dir))
    measured = prefix_cache["measured_hit_rate"]
    above = limit is not None and measured is not None and measured > limit + RATE_EPSILON
    # None: no limit, or nothing measured to hold to it.
    prefix_cache["above_max_hit_rate"] = (None if limit is None or measured is None
                                          else above)
    write_json(record, condition)
    template = (predicted.get("predicted_with") or {}).get("chat_template")
    note(comparison_line(prefix_cache, mode, template,
                         the_plan.prediction.warmup))
    if limit is not None and measured is None:
        warn(f"MAX_HIT_RATE={limit:g} not checked: nothing measured ({prefix_cache['source']})")
    if above and code == 0 and measured is not None and limit is not None:
        note(f"the measured hit rate {pct(measured)} is above MAX_HIT_RATE={limit:g} "
             f"({pct(limit)}): exit {EXIT_ABOVE_MAX_HIT_RATE}")
        return EXIT_ABOVE_MAX_HIT_RATE
    return code


def dry_run(the_plan: Plan) -> str:
    """What ``--dry-run`` shows: the prediction and the cache reset on stderr; the
    command, returned as one shell-quoted line. Nothing is written or sent."""
    predicted = predict(the_plan.prediction, the_plan.endpoint_type)
    (note if predicted["predicted_hit_rate"] is not None else warn)(prediction_line(predicted))
    if the_plan.reset_mode in ("vllm", "sglang", "command"):
        action = (f"POST {redact_url(origin(the_plan.url))}"
                  f"{RESET_PATHS[the_plan.reset_mode]}"
                  if the_plan.reset_hook is None
                  else f"command: {redacted_shell(the_plan.reset_hook)}")
        note(f"dry run: would clear the prefix cache first: {action}")
    return shlex.join(redacted(the_plan.command))


def bench(env_file: str | None = None, *, dry: bool = False, allow_repeats: bool = False,
          environ: Mapping[str, str] | None = None) -> int:
    """The whole of ``promptkit bench``: the exit code of the run (``--dry-run``: the
    command is printed on stdout, 0). Raises :class:`SettingError` for a bad setting
    (exit 2) and :class:`~promptkit.core.errors.PromptkitError` when the runner stops
    (exit 1)."""
    settings, exports = load_settings(env_file, os.environ if environ is None else environ)
    the_plan = plan(settings, allow_repeats)
    if dry:
        print(dry_run(the_plan), flush=True)
        return 0
    return execute(the_plan, exports)


__all__ = ["EXIT_ABOVE_MAX_HIT_RATE", "SETTINGS", "SettingError", "bench", "measure", "plan",
           "predict"]
