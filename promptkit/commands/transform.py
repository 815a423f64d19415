"""The record commands (``nonce``, ``pad``, ``fit``, ``turns``, ``hash-trace``, ``pipe``)
as the CLI runs them, callable from Python with its defaults: the manifest at
OUT.manifest.json (none for stdout), ``--shuffle``'s seed (the step's own, else
``seed``, else random), and ``ray`` (``--ray ADDRESS``) running them on a Ray cluster,
OUT then a folder of parts with OUT/manifest.json.

Each returns the manifest (also written). :func:`pipe` runs any list of steps
(:mod:`promptkit.commands.steps`), as ``promptkit pipe`` does.
"""

from __future__ import annotations

from typing import Any

from promptkit.commands.common import manifest_path_for, ray_ready, shuffled
from promptkit.commands.steps import (
    INTO_FILE,
    fit_step,
    hash_trace_step,
    nonce_step,
    pad_step,
    turns_step,
)
from promptkit.core.errors import BadOptionError
from promptkit.io.files import STDIO
from promptkit.ops.base import Step
from promptkit.ops.nonce import DEFAULT_RANDOM_LENGTH, DEFAULT_TIME_STEP_US
from promptkit.runner import pipeline


def pipe(input_path: str, output_path: str, steps: list[Step], *,
         from_format: str | None = None, to_format: str | None = None,
         skip_invalid: bool = False, manifest_path: str | None = None,
         workers: int | None = None, dataset: dict[str, Any] | None = None,
         seed: int | None = None, ray: str | None = None, keep_replies: bool = False,
         argv: list[str] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run ``steps`` over the records of ``input_path`` into ``output_path`` (``promptkit
    pipe read IN ... write OUT``); return the manifest.

    ``dataset`` holds the dataset options (``shuffle=True`` shuffles with ``seed``,
    random when not given). A last ``hash_trace`` step writes mooncake_trace unless
    ``to_format`` says otherwise; with ``ray``, one ``hash_trace`` step numbers the
    blocks' ids by distributed shuffles."""
    if output_path == STDIO and any(s.op == "pad" and s.params["into"] == "file"
                                    for s in steps):
        raise BadOptionError("pad --into file writes OUT.system.txt beside OUT, and "
                             "'write -' is stdout: write to a file (write out.jsonl "
                             "writes out.jsonl.system.txt)")
    if to_format is None and steps and steps[-1].op == "hash_trace":
        to_format = "mooncake_trace"
    if ray is not None:
        return _on_ray(input_path, output_path, steps, from_format=from_format,
                       to_format=to_format, skip_invalid=skip_invalid,
                       manifest_path=manifest_path, dataset=dataset, seed=seed, ray=ray,
                       keep_replies=keep_replies, argv=argv)
    return pipeline.run(input_path, output_path, steps, from_format=from_format,
                        to_format=to_format, skip_invalid=skip_invalid,
                        manifest_path=manifest_path_for(output_path, manifest_path),
                        argv=argv, workers=workers, dataset=shuffled(dataset, seed),
                        progress=progress, keep_replies=keep_replies)


def _on_ray(input_path: str, output_path: str, steps: list[Step], *, from_format: str | None,
            to_format: str | None, skip_invalid: bool, manifest_path: str | None,
            dataset: dict[str, Any] | None, seed: int | None, ray: str, keep_replies: bool,
            argv: list[str] | None) -> dict[str, Any]:
    """The steps on a Ray cluster, OUT a folder of parts with its manifest."""
    if len(steps) == 1 and steps[0].op == "hash_trace":
        ray_ready(ray, manifest_path, dataset)
        if to_format != "mooncake_trace":
            raise BadOptionError(f"hash-trace --ray writes mooncake_trace, not {to_format}")
        from promptkit.ray.commands import hash_trace_folder  # (imports numpy: on demand)

        return hash_trace_folder(input_path, output_path, steps[0], address=ray,
                                 from_format=from_format, skip_invalid=skip_invalid,
                                 argv=argv)
    ray_ready(ray, manifest_path)
    from promptkit.ray.commands import run_folder  # (imports numpy: on demand)

    return run_folder(input_path, output_path, steps, address=ray, from_format=from_format,
                      to_format=to_format, skip_invalid=skip_invalid, argv=argv,
                      dataset=shuffled(dataset, seed), keep_replies=keep_replies)


def nonce(input_path: str, output_path: str, *, kind: str = "uuid", seed: int | None = None,
          at: str = "start", template: str = "{nonce}\n", length: int = DEFAULT_RANDOM_LENGTH,
          start_time: str | None = None, time_step_us: int = DEFAULT_TIME_STEP_US,
          copies: int = 1,
          tokenizer: str | None = None, keep_tokens: bool = False,
          chat_template: str | None = None, **run: Any) -> dict[str, Any]:
    """``promptkit nonce IN OUT``: a unique nonce at the start of every prompt. ``run``:
    the options of :func:`pipe` (``from_format``, ``to_format``, ``manifest_path``,
    ``workers``, ``dataset``, ``ray``, ...)."""
    step = nonce_step(kind=kind, seed=seed, at=at, template=template, length=length,
                      start_time=start_time, time_step_us=time_step_us, copies=copies,
                      tokenizer=tokenizer, keep_tokens=keep_tokens, chat_template=chat_template)
    return pipe(input_path, output_path, [step], seed=step.params["seed"], **run)


def pad(input_path: str, output_path: str, *, tokens: int, tokenizer: str,
        system_prompt: str | None = None, system_prompt_file: str | None = None,
        filler_file: str | None = None, groups: int = 1, group_by: str | None = None,
        into: str = "system", seed: int | None = None, **run: Any) -> dict[str, Any]:
    """``promptkit pad IN OUT``: a shared system prompt of exactly ``tokens`` tokens.
    ``run``: the options of :func:`pipe`."""
    step = pad_step(tokens=tokens, tokenizer=tokenizer, system_prompt=system_prompt,
                    system_prompt_file=system_prompt_file, filler_file=filler_file,
                    groups=groups, group_by=group_by, into=into, seed=seed)
    if into == "file" and output_path == STDIO:
        raise BadOptionError(INTO_FILE)
    return pipe(input_path, output_path, [step], seed=step.params["seed"], **run)


def fit(input_path: str, output_path: str, *, tokens: int | str | list[int], tokenizer: str,
        filler_file: str | None = None, seed: int | None = None,
        **run: Any) -> dict[str, Any]:
    """``promptkit fit IN OUT``: every user text exactly ``tokens`` tokens (a number, a
    range ``"LOW,HIGH"`` or a column name). ``run``: the options of :func:`pipe`."""
    step = fit_step(tokens=tokens, tokenizer=tokenizer, filler_file=filler_file, seed=seed)
    return pipe(input_path, output_path, [step], seed=step.params["seed"], **run)


def turns(input_path: str, output_path: str, *, tokenizer: str, mode: str = "first",
          **options: Any) -> dict[str, Any]:
    """``promptkit turns IN OUT``: benchmark requests of recorded conversations.
    ``options``: those of :func:`~promptkit.commands.steps.turns_step` (bounds,
    ``max_turns``, ``chat_template``), then those of :func:`pipe` (``seed`` is
    ``--shuffle``'s)."""
    step_options = {key: options.pop(key) for key in (
        "min_prompt_tokens", "max_prompt_tokens", "min_output_tokens", "max_output_tokens",
        "max_turns", "chat_template") if key in options}
    step = turns_step(tokenizer=tokenizer, mode=mode, **step_options)
    return pipe(input_path, output_path, [step], **options)


def hash_trace(input_path: str, output_path: str, *, tokenizer: str, block_size: int = 512,
               rate: float | None = None, threads: int | None = None,
               **run: Any) -> dict[str, Any]:
    """``promptkit hash-trace IN OUT``: a mooncake_trace of hash ids (the prefix sharing,
    no text). ``run``: the options of :func:`pipe` (``seed`` is ``--shuffle``'s)."""
    step = hash_trace_step(tokenizer=tokenizer, block_size=block_size, rate=rate,
                           threads=threads)
    return pipe(input_path, output_path, [step], to_format="mooncake_trace", **run)
