#!/usr/bin/env python3
"""Run ``aiperf profile`` on a prompt file (or synthetic prompts), configured by ``.env``.

Usage::

    python scripts/run_aiperf.py [--env-file PATH] [--dry-run] [--allow-repeats]

Settings (documented in ``.env.example``) come from ``KEY=VALUE`` lines of the
env file (``.env`` in the current folder by default) and from the process
environment, which wins: ``CONCURRENCY=8 python scripts/run_aiperf.py`` runs
the file's setup at concurrency 8. A variable set to the empty string in the
environment counts as set (``INPUT_FILE=`` forces synthetic prompts). Keys the
runner does not know (``HF_TOKEN``, ``AIPERF_*`` settings, ...) are exported
to AIPerf's environment unless the environment already has them.

What the runner does, in order:

1. ``INPUT_FILE`` set and present: its manifest (``FILE.manifest.json``, written
   by promptkit) supplies ``--custom-dataset-type``, a ``--system-prompt-file``
   and the number of distinct records; without a manifest (or with one that no
   longer matches the file's sha256) the type is detected from the first
   records and the distinct non-blank lines are counted. When
   ``WARMUP_REQUEST_COUNT + REQUEST_COUNT`` exceeds the distinct records, AIPerf
   would wrap around the file and resend prompts that hit the prefix cache: the
   runner stops (exit 1) unless ``--allow-repeats`` or ``ALLOW_REPEATS=true``.
   ``INPUT_FILE`` unset or missing: AIPerf's synthetic prompts, with a warning
   (they are alike, so prefix caching may flatter the results).
2. ``RESET_CACHE``: clears the server's prefix cache right before AIPerf starts
   (``vllm``: ``POST /reset_prefix_cache``; ``sglang``: ``POST /flush_cache``;
   ``aiperf``: AIPerf's own ``--reset-kv-cache``; ``command:CMD``: a shell hook,
   e.g. a server restart) and writes ``ARTIFACT_DIR/cache_condition.json``: what
   was done, when, the response status, the run's shape and AIPerf's exit code.
3. Runs ``aiperf profile`` (``--dry-run``: prints the exact command instead, one
   shell-quoted line on stdout, and touches nothing) and exits with its code.

Exit codes: AIPerf's own after a run; 1 when the runner stops (prompts would
repeat, the cache reset failed, the input file is not loadable); 2 for a bad
setting. Messages go to stderr, one line each, prefixed ``run_aiperf:``.
Standard library only, plus promptkit for format detection and manifests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

try:
    from promptkit import manifest
    from promptkit.errors import PromptkitError
    from promptkit.formats import FORMATS, detect_many
except ImportError:  # run from a checkout with a Python that lacks the installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from promptkit import manifest
    from promptkit.errors import PromptkitError
    from promptkit.formats import FORMATS, detect_many

PROG = "run_aiperf"

#: Every setting the runner reads, with its default (None: not passed to AIPerf).
SETTINGS: dict[str, str | None] = {
    "MODEL": None,                  # required: --model
    "URL": "http://localhost:8000",  # --url: the server's base URL
    "ENDPOINT_TYPE": "chat",        # --endpoint-type
    "STREAMING": "false",           # --streaming when true
    "CONCURRENCY": "1",             # --concurrency
    "REQUEST_COUNT": None,          # --request-count (file default: distinct - warmup)
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
}

RESET_PATHS = {"vllm": "/reset_prefix_cache", "sglang": "/flush_cache"}
CONDITION_FILE = "cache_condition.json"
DETECT_LINES = 64
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class ConfigError(Exception):
    """A bad setting: exit 2."""


class Stop(Exception):
    """The runner refuses to go on (repeats, a failed reset, an unloadable file): exit 1."""


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


# ---------------------------------------------------------------- the .env file

_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def parse_env(text: str, name: str = ".env") -> dict[str, str]:
    """``KEY=VALUE`` lines: blank lines and ``#`` comments skipped, ``export``
    allowed, values optionally in single quotes (literal) or double quotes
    (``\\n``, ``\\t``, ``\\"``, ``\\\\`` escapes); an unquoted value ends at a ``#``
    that follows whitespace. No variable expansion, no multi-line values."""
    values: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match is None:
            raise ConfigError(f"{name}:{lineno}: not a KEY=VALUE line: {stripped!r}")
        key, raw = match.groups()
        try:
            values[key] = _env_value(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}:{lineno}: {key}: {exc}") from None
    return values


def _env_value(raw: str) -> str:
    if not raw or raw[0] not in "'\"":
        return re.split(r"\s#", raw, maxsplit=1)[0].strip()
    quote, out, i = raw[0], [], 1
    while i < len(raw):
        char = raw[i]
        if char == quote:
            rest = raw[i + 1:].strip()
            if rest and not rest.startswith("#"):
                raise ValueError(f"text after the closing quote: {rest!r}")
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
                  environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(settings, exports)``: the runner's settings (environment over file) and the
    file's other keys, to add to AIPerf's environment."""
    path = Path(env_file) if env_file is not None else Path(".env")
    if path.is_file():
        from_file = parse_env(path.read_text(encoding="utf-8"), str(path))
    elif env_file is not None:
        raise ConfigError(f"{env_file}: no such env file")
    else:
        from_file = {}
        note("no .env here: settings from the environment only")
    settings: dict[str, str] = {}
    for key in SETTINGS:
        if key in environ:
            if key in from_file and from_file[key] != environ[key]:
                shown = "" if key == "AIPERF_ARGS" else f" ({environ[key]!r})"  # an API key?
                note(f"{key} from the environment{shown} overrides {path}")
            settings[key] = environ[key]
        elif key in from_file:
            settings[key] = from_file[key]
    exports = {k: v for k, v in from_file.items() if k not in SETTINGS and k not in environ}
    return settings, exports


def setting(settings: dict[str, str], key: str) -> str | None:
    """The value of ``key``, or its default; an empty value is the default."""
    value = settings.get(key, "").strip()
    return value if value else SETTINGS[key]


def flag(settings: dict[str, str], key: str) -> bool:
    value = (setting(settings, key) or "").lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{key}={value!r}: not true or false")


def count(settings: dict[str, str], key: str, minimum: int) -> int | None:
    value = setting(settings, key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ConfigError(f"{key}={value!r}: not a whole number >= {minimum}")
    return number


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
    items, current, depth, quote, escaped = [], [], 0, False, False
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
            raise ConfigError(f"EXTRA_INPUTS: not a valid JSON object: {exc}") from None
        if not isinstance(obj, dict):
            raise ConfigError("EXTRA_INPUTS: not a JSON object")
        return list(obj.items())
    pairs: list[tuple[str, Any]] = []
    for item in split_items(text):
        if not item.strip():
            continue
        key, sep, value = item.partition(":")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"EXTRA_INPUTS: {item.strip()!r} is not key:value")
        if key in dict(pairs):
            raise ConfigError(f"EXTRA_INPUTS: {key!r} given twice")
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
            shown = json.dumps(value, ensure_ascii=False)
            raise ConfigError(
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
            beside = os.path.join(os.path.dirname(input_file), os.path.basename(value))
            found = next((p for p in (value, beside) if os.path.isfile(p)), None)
            if found is None:
                raise Stop(f"{input_file}: the manifest's --system-prompt-file {value} is "
                           f"missing (looked here and at {beside})")
            out += [arg, os.path.abspath(found)]
            i += 2
            continue
        out.append(arg)
        i += 1
    return ["--input-file", input_file, *out]


def distinct_lines(path: str) -> int:
    """Distinct non-blank lines of a file (8-byte digests of the stripped lines)."""
    seen: set[bytes] = set()
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                seen.add(hashlib.blake2b(line, digest_size=8).digest())
    return len(seen)


def detect_type(path: str) -> str:
    """AIPerf's ``--custom-dataset-type`` for a file, from its first records."""
    head: list[dict[str, Any]] = []
    first_line = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            first_line = first_line or lineno
            try:
                obj = json.loads(line)
            except ValueError:
                raise Stop(f"{path}:{lineno}: not a JSON line (AIPerf loads JSONL)") from None
            if not isinstance(obj, dict):
                raise Stop(f"{path}:{lineno}: not a JSON object")
            head.append(obj)
            if len(head) == DETECT_LINES:
                break
    if not head:
        raise Stop(f"{path}: empty file: no records")
    try:
        fmt = detect_many(head)
    except PromptkitError as exc:
        raise Stop(f"{path}:{first_line}: {exc}") from None
    aiperf_type = FORMATS[fmt].aiperf_type
    if aiperf_type is None:
        raise Stop(f"{path}: AIPerf does not load {fmt} files; convert first: "
                   f"promptkit pipe read {path} write --to single_turn OUT")
    return aiperf_type


def load_dataset(path: str) -> Dataset:
    path = os.path.abspath(path)
    manifest_path = manifest.default_path(path)
    warnings: list[str] = []
    if os.path.isfile(manifest_path):
        try:
            made = manifest.read(manifest_path)
            sha256, _ = manifest.file_facts(path)
        except PromptkitError as exc:
            raise Stop(str(exc)) from None
        aiperf = made.get("aiperf") or {}
        if sha256 != made.get("output", {}).get("sha256"):
            warnings.append(f"{manifest_path} does not match {path} (sha256 differs): "
                            "ignored; the type is detected and distinct lines counted")
        elif not aiperf.get("custom_dataset_type"):
            raise Stop(f"{path}: {aiperf.get('note') or 'AIPerf does not load this format'}")
        else:
            return Dataset(path, aiperf["custom_dataset_type"],
                           _manifest_args(list(aiperf.get("args", [])), path),
                           int(aiperf["distinct_records"]), "manifest")
    aiperf_type = detect_type(path)
    return Dataset(path, aiperf_type,
                   ["--input-file", path, "--custom-dataset-type", aiperf_type],
                   distinct_lines(path), "detected", warnings)


# ---------------------------------------------------------------- the cache reset


def origin(url: str) -> str:
    """``scheme://host:port`` of a base URL (``http://`` added when it has no scheme)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_reset(value: str) -> tuple[str, str | None]:
    """``(mode, hook command)`` of a RESET_CACHE value."""
    low = value.strip().lower()
    if low.startswith("command:"):
        command = value.strip()[len("command:"):].strip()
        if not command:
            raise ConfigError("RESET_CACHE=command: needs a shell command after the colon")
        return "command", command
    if low in ("none", "vllm", "sglang", "aiperf"):
        return low, None
    raise ConfigError(f"RESET_CACHE={value!r}: one of none, vllm, sglang, aiperf, command:CMD")


def reset_cache(mode: str, hook: str | None, url: str, timeout: float) -> dict[str, Any]:
    """Clear the prefix cache now (vllm, sglang, command); what was done, for the record."""
    started = time.monotonic()
    record: dict[str, Any] = {"at": now_utc()}
    if mode in RESET_PATHS:
        target = origin(url) + RESET_PATHS[mode]
        record["action"] = f"POST {target}"
        request = urllib.request.Request(target, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                record["status"] = response.status
                record["response"] = response.read(500).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            hint = (" (vLLM serves it only with VLLM_SERVER_DEV_MODE=1)"
                    if mode == "vllm" and exc.code == 404 else "")
            raise Stop(f"RESET_CACHE={mode}: POST {target} answered {exc.code} "
                       f"{exc.reason}{hint}; not running the benchmark") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Stop(f"RESET_CACHE={mode}: POST {target} failed: {reason}; "
                       "not running the benchmark") from None
    else:
        assert mode == "command" and hook is not None
        record["action"] = f"command: {hook}"
        try:
            done = subprocess.run(hook, shell=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise Stop(f"RESET_CACHE hook timed out after {timeout:g}s (RESET_TIMEOUT): "
                       f"{hook}") from None
        record["exit_code"] = done.returncode
        if done.returncode != 0:
            raise Stop(f"RESET_CACHE hook exited {done.returncode}: {hook}; "
                       "not running the benchmark")
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def redacted(command: list[str]) -> list[str]:
    """The command with the value of ``--api-key`` hidden, for the record on disk."""
    out: list[str] = []
    for arg in command:
        if out and out[-1] == "--api-key":
            arg = "***"
        elif arg.startswith("--api-key="):
            arg = "--api-key=***"
        out.append(arg)
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the command


def aiperf_program(settings: dict[str, str]) -> list[str]:
    configured = setting(settings, "AIPERF")
    if configured:
        return shlex.split(configured)
    if shutil.which("aiperf"):
        return ["aiperf"]
    return [sys.executable, "-m", "aiperf"]


def default_artifact_dir(model: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"
    return os.path.join("artifacts", f"{safe}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")


@dataclass
class Plan:
    command: list[str]
    artifact_dir: Path
    condition: dict[str, Any]
    reset_mode: str
    reset_hook: str | None
    url: str
    reset_timeout: float


def plan(settings: dict[str, str], allow_repeats: bool) -> Plan:
    """Check the settings and the input file; the command and the run's condition."""
    model = setting(settings, "MODEL")
    if not model:
        raise ConfigError("MODEL is not set (in .env or the environment)")
    url = setting(settings, "URL") or ""
    streaming = flag(settings, "STREAMING")
    concurrency = count(settings, "CONCURRENCY", 1)
    requests = count(settings, "REQUEST_COUNT", 1)
    warmup = count(settings, "WARMUP_REQUEST_COUNT", 0) or 0
    allow_repeats = allow_repeats or flag(settings, "ALLOW_REPEATS")
    reset_mode, reset_hook = parse_reset(setting(settings, "RESET_CACHE") or "none")
    extra = extra_input_args(parse_extra_inputs(setting(settings, "EXTRA_INPUTS")))
    try:
        reset_timeout = float(setting(settings, "RESET_TIMEOUT") or "")
    except ValueError:
        raise ConfigError("RESET_TIMEOUT: not a number of seconds") from None
    tokenizer = setting(settings, "TOKENIZER")
    if tokenizer and os.path.exists(tokenizer):
        tokenizer = os.path.abspath(tokenizer)  # AIPerf takes a relative one for a Hub id
    artifact_dir = setting(settings, "ARTIFACT_DIR") or default_artifact_dir(model)
    try:
        more = shlex.split(setting(settings, "AIPERF_ARGS") or "")
    except ValueError as exc:
        raise ConfigError(f"AIPERF_ARGS: {exc}") from None

    condition: dict[str, Any] = {"reset_cache": reset_mode}
    input_file = setting(settings, "INPUT_FILE")
    dataset_args: list[str] = []
    if input_file and os.path.isfile(input_file):
        dataset = load_dataset(input_file)
        for message in dataset.warnings:
            warn(message)
        if requests is None:
            requests = dataset.distinct_records - warmup
            if requests < 1:
                raise Stop(f"WARMUP_REQUEST_COUNT ({warmup}) leaves none of the "
                           f"{dataset.distinct_records} distinct records of {dataset.path} "
                           "for the profiled run; set REQUEST_COUNT")
            note(f"REQUEST_COUNT unset: {requests} (the file's {dataset.distinct_records} "
                 f"distinct records less {warmup} warmup)")
        total = warmup + requests
        repeats = total > dataset.distinct_records
        if repeats and not allow_repeats:
            raise Stop(
                f"WARMUP_REQUEST_COUNT + REQUEST_COUNT = {warmup} + {requests} = {total} "
                f"requests, but {dataset.path} has only {dataset.distinct_records} distinct "
                "records: AIPerf would wrap around and resend prompts that hit the prefix "
                "cache. Lower the counts, make more records (promptkit nonce --copies N), "
                "or pass --allow-repeats (ALLOW_REPEATS=true)")
        if repeats:
            warn(f"{total} requests from {dataset.distinct_records} distinct records: "
                 f"{total - dataset.distinct_records} resend a prompt and may hit the "
                 "prefix cache (--allow-repeats)")
        dataset_args = dataset.args
        condition["dataset"] = {
            "input_file": dataset.path,
            "custom_dataset_type": dataset.custom_dataset_type,
            "from": dataset.source,
            "distinct_records": dataset.distinct_records,
            "repeats": repeats,
        }
    else:
        if input_file:
            warn(f"INPUT_FILE={input_file}: no such file; using AIPerf's synthetic prompts")
        warn("synthetic mode: AIPerf's synthetic prompts are much alike, so the server's "
             "prefix cache may serve parts of them and flatter the results; use a "
             "nonce'd file (promptkit nonce) for a cold-cache run")
        condition["dataset"] = {"synthetic": True}

    command = [
        *aiperf_program(settings), "profile",
        "--model", model,
        "--url", url,
        "--endpoint-type", setting(settings, "ENDPOINT_TYPE") or "chat",
    ]
    if streaming:
        command.append("--streaming")
    command += dataset_args
    command += ["--concurrency", str(concurrency)]
    if requests is not None:
        command += ["--request-count", str(requests)]
    if warmup:
        command += ["--warmup-request-count", str(warmup)]  # AIPerf rejects 0
    if tokenizer:
        command += ["--tokenizer", tokenizer]
    command += ["--artifact-dir", artifact_dir]
    command += extra
    if reset_mode == "aiperf":
        command.append("--reset-kv-cache")
    command += more
    condition.update({"warmup_request_count": warmup, "request_count": requests,
                      "concurrency": concurrency, "url": url, "model": model})
    return Plan(command, Path(artifact_dir), condition, reset_mode, reset_hook, url,
                reset_timeout)


def run(the_plan: Plan, exports: dict[str, str]) -> int:
    condition = dict(the_plan.condition)
    mode = the_plan.reset_mode
    if mode in ("vllm", "sglang", "command"):
        condition.update(reset_cache(mode, the_plan.reset_hook, the_plan.url,
                                     the_plan.reset_timeout))
        note(f"prefix cache cleared: {condition['action']}")
    elif mode == "aiperf":
        condition.update({
            "at": now_utc(),
            "action": f"aiperf --reset-kv-cache: AIPerf POSTs its reset path "
                      f"(default {origin(the_plan.url)}/reset_prefix_cache) before it starts; "
                      "a failed reset fails the run",
        })
    else:
        condition.update({"at": now_utc(), "action": "none: the server's prefix cache was "
                          "not cleared and may hold prompts of earlier runs"})
    condition["aiperf_command"] = redacted(the_plan.command)
    the_plan.artifact_dir.mkdir(parents=True, exist_ok=True)
    record = the_plan.artifact_dir / CONDITION_FILE
    write_json(record, condition)
    env = {**exports, **os.environ}
    proc = subprocess.Popen(the_plan.command, env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # AIPerf got the same SIGINT: let it shut down
        code = proc.wait()
    condition["aiperf_exit_code"] = code
    condition["finished"] = now_utc()
    write_json(record, condition)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_aiperf.py",
        description="Run aiperf profile on a prompt file or synthetic prompts, configured "
                    "by .env (see .env.example); the environment overrides the file.")
    parser.add_argument("--env-file", metavar="PATH",
                        help="The settings file (default: .env in the current folder, "
                             "if present).")
    parser.add_argument("--dry-run", action="store_true",
                        help="Print the exact aiperf profile command and stop: no cache "
                             "reset, no run, nothing written.")
    parser.add_argument("--allow-repeats", action="store_true",
                        help="Run even when warmup + requests exceed the file's distinct "
                             "records (prompts repeat and may hit the prefix cache).")
    args = parser.parse_args(argv)
    try:
        settings, exports = load_settings(args.env_file, dict(os.environ))
        the_plan = plan(settings, args.allow_repeats)
        if args.dry_run:
            if the_plan.reset_mode in ("vllm", "sglang", "command"):
                action = (f"POST {origin(the_plan.url)}{RESET_PATHS[the_plan.reset_mode]}"
                          if the_plan.reset_hook is None else f"command: {the_plan.reset_hook}")
                note(f"dry run: would clear the prefix cache first: {action}")
            print(shlex.join(the_plan.command))
            return 0
        return run(the_plan, exports)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except Stop as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
