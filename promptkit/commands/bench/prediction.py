"""The prefix-cache hit rate ``check`` predicts for the profiled run, in-process, under
the tokenizer and chat template the server applies; and the prompt tokens it counts for
conversations' first requests and later turns, which the measurement is held to."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from promptkit.commands.check import check_file
from promptkit.core import leftovers
from promptkit.core.errors import PromptkitError

#: The two kinds of request a difference in prompt tokens is put down to.
FIRST, LATER = "first_requests", "later_turns"
#: How many of the first profiled requests the prediction lists one by one, for the
#: measurement to tell those AIPerf's export left out after a warmup.
BOUNDARY_REQUESTS = 64


def new_turns() -> dict[str, dict[str, int]]:
    """Requests and prompt tokens, none yet, of conversations' first requests and of
    their later turns (predicted and measured alike)."""
    return {FIRST: {"requests": 0, "prompt_tokens": 0},
            LATER: {"requests": 0, "prompt_tokens": 0}}


def count_turn(turns: dict[str, dict[str, int]], first: bool, prompt_tokens: int) -> None:
    group = turns[FIRST if first else LATER]
    group["requests"] += 1
    group["prompt_tokens"] += prompt_tokens


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
        from huggingface_hub import try_to_load_from_cache  # (lazy: slow to import)

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
    # prompt tokens of conversations' first requests and later turns (turns_diagnosis).
    # (In a scratch folder of the temp folder: a later run removes it if this one is killed.)
    with leftovers.scratch_folder() as scratch:
        rows = os.path.join(scratch, "per-request.jsonl")
        try:
            with _quiet_transformers():
                # use_manifest=False: the system prompt file is the one AIPerf is given.
                summary = check_file(prediction.input_file, use_manifest=False,
                                     per_request=rows, **options)
            turns = new_turns()
            with open(rows, encoding="utf-8") as f:
                for n, row in enumerate(map(json.loads, f)):
                    if prediction.warmup and n < BOUNDARY_REQUESTS:
                        out.setdefault("predicted_first_requests", []).append(
                            [row["prompt_tokens"], row["hit_tokens"]])
                    count_turn(turns, row["turn"] == 1, row["prompt_tokens"])
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
