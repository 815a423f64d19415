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

The parts, each imported only by those after it: :mod:`.settings` (the .env file, each
setting checked, ``EXTRA_INPUTS``, the runner's messages), :mod:`.dataset` (the input
file as AIPerf loads it), :mod:`.reset` (the cache reset), :mod:`.prediction` (check's
prediction), :mod:`.measurement` (what the server counted, the comparison),
:mod:`.command` (the aiperf command and the plan of the run), :mod:`.child` (AIPerf's
process, the terminal, signals); here, the run from prediction to record.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from promptkit.commands.bench.child import RESULTS_READY, check_program, run_aiperf, unfinished_run
from promptkit.commands.bench.command import Plan, plan
from promptkit.commands.bench.dataset import load_dataset
from promptkit.commands.bench.measurement import (
    RATE_EPSILON,
    comparison_line,
    measure,
    turns_diagnosis,
)
from promptkit.commands.bench.prediction import pct, predict, prediction_line
from promptkit.commands.bench.reset import RESET_PATHS, now_utc, origin, reset_cache
from promptkit.commands.bench.settings import (
    SETTINGS,
    base_url,
    extra_input_args,
    load_settings,
    note,
    parse_env,
    parse_extra_inputs,
    read_env,
    warn,
)
from promptkit.core.errors import PromptkitError, SettingError
from promptkit.core.redact import redact_strings, redact_url, redacted, redacted_shell
from promptkit.io import files

CONDITION_FILE = "cache_condition.json"
#: Exit codes of the runner itself (AIPerf's own is returned after a run).
EXIT_STOP = 1
EXIT_SETTING = 2
EXIT_ABOVE_MAX_HIT_RATE = 3


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(redact_strings(data), indent=2, ensure_ascii=False) + "\n"
    files.write_text(str(path), text)


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


#: The runner's public names (its parts are in the modules beside this one).
__all__ = ["CONDITION_FILE", "EXIT_ABOVE_MAX_HIT_RATE", "RESULTS_READY", "SETTINGS", "SettingError",
           "base_url", "bench", "extra_input_args", "load_dataset", "measure", "parse_env",
           "parse_extra_inputs", "plan", "predict", "read_env", "reset_cache", "turns_diagnosis"]
