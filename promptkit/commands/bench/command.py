"""The ``aiperf profile`` command that ``promptkit bench`` runs, and the plan of the run:
the settings checked together, the input file loaded, the schedule decided as AIPerf
decides it, the repeats refused, and what ``check`` is asked to predict."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promptkit.commands.bench.dataset import Dataset, load_dataset, readable_file
from promptkit.commands.bench.prediction import Prediction, check_tokenizer
from promptkit.commands.bench.reset import parse_reset
from promptkit.commands.bench.settings import (
    base_url,
    count,
    extra_input_args,
    flag,
    fraction,
    note,
    parse_extra_inputs,
    seconds,
    setting,
    warn,
)
from promptkit.core.errors import PromptkitError, SettingError
from promptkit.core.redact import redact_url
from promptkit.core.words import counted
from promptkit.formats.aiperf import HASH_BLOCK_FLAGS, TRACE_TYPES, fixed_schedule
from promptkit.text import cachebust
from promptkit.text.templates import TEMPLATES


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
        command += ["--cache-bust", cachebust.aiperf_name(bust)]
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
