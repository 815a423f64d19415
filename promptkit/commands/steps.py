"""The steps of the record commands (``nonce``, ``pad``, ``fit``, ``turns``,
``hash-trace``, ``check`` in a pipe) made of their options, checked as the CLI checks
them, with the CLI's defaults: a random seed when none is given (recorded in the
manifest), ``pad``'s system prompt read from ``system_prompt_file``.

Each returns a :class:`~promptkit.ops.base.Step` that the run makes for its input and
output when it starts (see :mod:`promptkit.ops.base`).
"""

from __future__ import annotations

from typing import Any

from promptkit.core.errors import BadOptionError, PromptkitError
from promptkit.io.files import read_whole
from promptkit.ops.base import Step
from promptkit.ops.fit import parse_tokens
from promptkit.ops.nonce import (
    DEFAULT_RANDOM_LENGTH,
    DEFAULT_TIME_STEP_US,
    new_seed,
    nonce_params,
    parse_time,
)

INTO_FILE = "--into file needs --system-prompt(-file), one group and an OUT file"


def nonce_step(*, kind: str = "uuid", seed: int | None = None, at: str = "start",
               template: str = "{nonce}\n", length: int = DEFAULT_RANDOM_LENGTH,
               start_time: str | None = None, time_step_us: int = DEFAULT_TIME_STEP_US,
               copies: int = 1, tokenizer: str | None = None, keep_tokens: bool = False,
               chat_template: str | None = None) -> Step:
    """``nonce``'s options as a step (its parameters checked again by
    ``nonce.make_step`` when the run starts)."""
    if "{nonce}" not in template:
        raise BadOptionError("Invalid value for --template: must contain {nonce}")
    if keep_tokens and tokenizer is None:
        raise BadOptionError("--keep-tokens needs --tokenizer (the tokens it keeps are "
                             "counted under it)")
    if chat_template and tokenizer is None:
        raise BadOptionError("--chat-template needs --tokenizer (the tokens before each "
                             "nonce are counted under it)")
    if start_time is not None:
        try:
            parse_time(start_time)
        except ValueError as exc:
            raise BadOptionError(f"Invalid value for --start-time: {exc}") from None
    return Step("nonce", nonce_params(
        kind=kind, seed=seed, at=at, template=template, length=length,
        start_time=start_time, time_step_us=time_step_us, copies=copies,
        tokenizer=tokenizer, keep_tokens=keep_tokens, chat_template=chat_template,
    ))


def pad_step(*, tokens: int | str, tokenizer: str, system_prompt: str | None = None,
             system_prompt_file: str | None = None, filler_file: str | None = None,
             groups: int = 1, group_by: str | None = None, into: str = "system",
             seed: int | None = None) -> Step:
    """``pad``'s options as a step (made by ``pad.make_step`` for the run's input and
    output when the run starts: the groups' prompts, ``OUT.system.txt`` for
    ``into="file"``)."""
    try:
        n = int(tokens)
    except ValueError:
        n = 0
    if n < 1:
        raise PromptkitError(f"--tokens: {tokens!r} is not a positive integer")
    if system_prompt is not None and system_prompt_file is not None:
        raise BadOptionError("give --system-prompt or --system-prompt-file, not both")
    if system_prompt_file is not None:
        try:
            system_prompt = read_whole(system_prompt_file, "system prompt file").decode("utf-8")
        except OSError as exc:
            raise PromptkitError(f"{system_prompt_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise PromptkitError(f"{system_prompt_file}: not UTF-8 text") from None
    if into == "file" and (system_prompt is None or groups != 1):
        raise BadOptionError(INTO_FILE)
    return Step("pad", {"tokens": n, "tokenizer": tokenizer, "groups": groups,
                        "seed": new_seed() if seed is None else seed,
                        "system_prompt": system_prompt, "filler_file": filler_file,
                        "into": into, "group_by": group_by})


def fit_step(*, tokens: int | str | list[int], tokenizer: str, filler_file: str | None = None,
             seed: int | None = None) -> Step:
    """``fit``'s options as a step: ``tokens`` a number, a range ``"LOW,HIGH"`` (or
    ``[LOW, HIGH]``) or a column name (made by ``fit.make_step`` when the run starts)."""
    if isinstance(tokens, list):
        tokens = ",".join(map(str, tokens))
    return Step("fit", {"tokens": parse_tokens(str(tokens)), "tokenizer": tokenizer,
                        "seed": new_seed() if seed is None else seed,
                        "filler_file": filler_file})


def turns_step(*, tokenizer: str, mode: str = "first", min_prompt_tokens: int | None = None,
               max_prompt_tokens: int | None = None, min_output_tokens: int | None = None,
               max_output_tokens: int | None = None, max_turns: int | None = None,
               chat_template: str | None = None) -> Step:
    """``turns``' options as a step (made by ``turns.make_step`` when the run starts)."""
    params: dict[str, Any] = {
        "mode": mode, "min_prompt_tokens": min_prompt_tokens,
        "max_prompt_tokens": max_prompt_tokens, "min_output_tokens": min_output_tokens,
        "max_output_tokens": max_output_tokens, "max_turns": max_turns}
    for low, high in (("min_prompt_tokens", "max_prompt_tokens"),
                      ("min_output_tokens", "max_output_tokens")):
        if params[low] is not None and params[high] is not None and params[low] > params[high]:
            raise BadOptionError(f"--{low.replace('_', '-')} is above "
                                 f"--{high.replace('_', '-')}")
    if chat_template is not None:  # only when used: plain runs keep their shape
        params["chat_template"] = chat_template
    return Step("turns", {"tokenizer": tokenizer, **params})


def hash_trace_step(*, tokenizer: str, block_size: int = 512, rate: float | None = None,
                    threads: int | None = None) -> Step:
    """``hash-trace``'s options as a step."""
    return Step("hash_trace", {"tokenizer": tokenizer, "block_size": block_size,
                               "rate": rate, "threads": threads})


def check_params(tokenizer: str | None = None, chat_template: str = "none",
                 engine: str = "vllm", block_size: int | None = None,
                 hash_block_size: int | None = None, capacity_tokens: int | None = None,
                 num_gpu_blocks: int | None = None, requests: int | None = None,
                 warmup: int = 0, fixed_schedule: bool | None = None,
                 system_prompt_file: str | None = None, reply_tokens: int | None = None,
                 max_total_hit_rate: float | None = None,
                 cache_bust: str = "none") -> dict[str, Any]:
    """``check``'s options as the parameters of its report (and of a ``check`` step)."""
    if block_size is not None and block_size < 1:
        raise PromptkitError(f"--block-size: {block_size} is below 1")
    params: dict[str, Any] = {
        "tokenizer": tokenizer, "chat_template": chat_template, "engine": engine,
        "block_size": block_size, "capacity_tokens": capacity_tokens,
        "requests": requests, "warmup": warmup, "reply_tokens": reply_tokens}
    if num_gpu_blocks is not None:
        if capacity_tokens is not None:
            raise BadOptionError("give --capacity-tokens or --num-gpu-blocks, not both")
        if engine != "vllm":
            raise BadOptionError("--num-gpu-blocks is vLLM's block count (--engine vllm)")
    for key, value in (("num_gpu_blocks", num_gpu_blocks), ("hash_block_size", hash_block_size),
                       ("cache_bust", None if cache_bust == "none" else cache_bust),
                       ("fixed_schedule", fixed_schedule),
                       ("system_prompt_file", system_prompt_file),
                       ("max_total_hit_rate", max_total_hit_rate)):
        if value is not None:
            params[key] = value
    return params


def check_step(*, max_hit_rate: float | None = None, **options: Any) -> Step:
    """``check`` as a step of a pipe (its report goes into the manifest; a predicted hit
    rate above ``max_hit_rate`` fails the run, writing nothing)."""
    params = check_params(**options)
    if max_hit_rate is not None:
        params["max_hit_rate"] = max_hit_rate
    return Step("check", params)
