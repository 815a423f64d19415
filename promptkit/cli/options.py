"""The command line's options: option types and the option groups commands share
(IN/OUT and formats, dataset options, each operation's own). Click only: what the
options do is :mod:`promptkit.commands`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from promptkit.cli.help import DATASET, INPUT, OUTPUT, shared
from promptkit.core.errors import PromptkitError
from promptkit.core.limits import (
    MAX_COPIES,
    MAX_GROUPS,
    MAX_NONCE_LENGTH,
    MAX_RECORDS,
    MAX_TOKENS,
    MAX_WORKERS,
)
from promptkit.formats import FORMATS, READ_ONLY, TABLE_FORMATS
from promptkit.ops.check import ENGINES
from promptkit.ops.fit import parse_tokens
from promptkit.ops.nonce import (
    DEFAULT_RANDOM_LENGTH,
    DEFAULT_TIME_STEP_US,
    KINDS,
    NONCE_TEMPLATES,
    POSITIONS,
)
from promptkit.ops.turns import MODES
from promptkit.text.cachebust import mode_of
from promptkit.text.templates import TEMPLATES

#: Input formats: every line format of JSON lines.
FORMAT_CHOICE = click.Choice([name for name, f in FORMATS.items() if f.encode is None])
#: Output formats: every line format, and tables (parquet, a save_to_disk folder).
OUTPUT_CHOICE = click.Choice([*(name for name in FORMATS if name not in READ_ONLY),
                              *TABLE_FORMATS])


# ---------------------------------------------------------------- option types


class FitTokens(click.ParamType):
    """``fit --tokens``: a number, a range ``LOW,HIGH`` or a column name (checked here,
    passed on as given)."""

    name = "N|LOW,HIGH|COLUMN"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            parse_tokens(str(value))
        except PromptkitError as exc:
            self.fail(f"{str(exc).removeprefix('--tokens: ')} (it takes a whole number N "
                      f"from 1 to {MAX_TOKENS:,}, a range LOW,HIGH with 1 <= LOW <= HIGH "
                      "within it, or a column name)", param, ctx)
        return str(value)


# ---------------------------------------------------------------- shared option bundles

TO_HELP = ("Output format (default: the input format when AIPerf loads it, else "
           "mooncake_trace, single_turn for prompt lines; mooncake_trace for a dataset).")

keep_replies_option = shared(
    OUTPUT, "--keep-replies", is_flag=True,
    help="Write a conversation that ends with a recorded reply as a request (mooncake_trace, "
         "openai) as it is: AIPerf sends the reply as the end of the prompt. Refused "
         "otherwise ('promptkit turns' makes requests of recorded conversations).")

SKIP_HELP = ("Skip bad records (unreadable, or ones a step or the output format cannot "
             "take) instead of stopping; the manifest lists them and counts them by reason.")


workers_option = shared(
    INPUT, "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), default=None,
    help="Processes for large input files (default: one per CPU, up to 4). "
         "The output is the same bytes for every value.")


ray_option = shared(
    INPUT, "--ray", "ray_address", metavar="ADDRESS",
    help="Run on a Ray cluster: local (a private one on this machine), auto (the one this "
         "machine belongs to), ray://HOST:PORT or HOST:PORT. OUT is then a folder of parts "
         "(part-00000.jsonl ...) and OUT/manifest.json; the parts in order are the bytes "
         "written without --ray.")


#: Options of a Hugging Face dataset input, passed on as one ``dataset`` dict.
DATASET_KEYS = ("config", "split", "revision", "text_column", "system_column",
                "messages_column", "output_length_column", "input_length_column",
                "timestamp_column", "timestamp_unit", "limit", "shuffle")


def dataset_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options for reading a Hugging Face dataset, gathered into ``dataset=``. The column
    options also read a JSONL input by columns instead of by its line format."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        chosen = {key: kwargs.pop(key) for key in DATASET_KEYS}
        kwargs["dataset"] = {k: v for k, v in chosen.items() if v not in (None, False)}
        return func(*args, **kwargs)

    for decorator in reversed([
        shared(DATASET, "--config", metavar="NAME", help="Dataset input: the configuration."),
        shared(DATASET, "--split", metavar="NAME",
               help="Dataset input: the split [default: train]."),
        shared(DATASET, "--revision", metavar="REV",
               help="Dataset input: a branch, tag or commit of a hub dataset."),
        shared(DATASET, "--text-column", metavar="COL",
               help="Dataset or JSONL input: the column holding the prompt text."),
        shared(DATASET, "--system-column", metavar="COL",
               help="Dataset or JSONL input: a column holding a system prompt."),
        shared(DATASET, "--messages-column", metavar="COL",
               help="Dataset or JSONL input: a column of OpenAI chat messages."),
        shared(DATASET, "--output-length-column", metavar="COL",
               help="Dataset or JSONL input: a column of output lengths (tokens)."),
        shared(DATASET, "--input-length-column", metavar="COL",
               help="Dataset or JSONL input: a column of input lengths (tokens), for a "
                    "trace without text (written as mooncake_trace)."),
        shared(DATASET, "--timestamp-column", metavar="COL",
               help="Dataset or JSONL input: a column of request times (ISO 8601 "
                    "date-times or numbers), written as milliseconds from the first "
                    "record's."),
        shared(DATASET, "--timestamp-unit", type=click.Choice(["s", "ms", "us", "ns"]),
               help="The unit of numeric timestamps [default: ms; s for BurstGPT]."),
        shared(INPUT, "--limit", type=click.IntRange(min=1),
               help="Read only the first N records of the input (of a dataset: after "
                    "--shuffle)."),
        shared(INPUT, "--shuffle", is_flag=True,
               help="Dataset input: shuffle the rows with --seed (a dataset on disk "
                    "exactly; a streamed one in a 10,000-row buffer)."),
    ]):
        wrapper = decorator(wrapper)
    return wrapper


def io_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """IN and OUT arguments, formats, --skip-invalid and --manifest."""
    for decorator in reversed([
        click.argument("input_path", metavar="IN"),
        click.argument("output_path", metavar="OUT"),
        shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
               help="Input format (default: detected from the first record)."),
        shared(OUTPUT, "--to", "to_format", type=OUTPUT_CHOICE, help=TO_HELP
               + " OUT.jsonl.gz, .zst, .bz2, .xz: compressed."),
        keep_replies_option,
        shared(INPUT, "--skip-invalid", is_flag=True, help=SKIP_HELP),
        shared(OUTPUT, "--manifest", "manifest_path", metavar="PATH",
               help="Where to write the manifest, - for stdout (default: "
                    "OUT.manifest.json; none when OUT is stdout unless given)."),
        workers_option,
        ray_option,
    ]):
        func = decorator(func)
    return dataset_options(func)


def nonce_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--kind", type=click.Choice(KINDS), default="uuid", show_default=True,
                     help="What the nonce is made of."),
        click.option("--seed", type=int,
                     help="Seed: same input and seed give the same bytes "
                          "(default: a random seed, recorded in the manifest)."),
        click.option("--at", type=click.Choice(POSITIONS), default="start", show_default=True,
                     help="Where the nonce goes: start of the conversation, the system "
                          "message, the first user message, every turn, or a cache_salt."),
        click.option("--template", default="{nonce}\\n", show_default=True, metavar="TEXT",
                     help="Text put before the content; {nonce} is replaced by the nonce."),
        click.option("--length", type=click.IntRange(min=1, max=MAX_NONCE_LENGTH),
                     default=DEFAULT_RANDOM_LENGTH,
                     show_default=True, help="Characters of a random nonce."),
        click.option("--start-time", metavar="ISO",
                     help="First timestamp of a timestamp nonce (default: now, UTC)."),
        click.option("--time-step-us", type=click.IntRange(min=1), default=DEFAULT_TIME_STEP_US,
                     show_default=True, help="Microseconds between records' timestamps."),
        click.option("--copies", type=click.IntRange(min=1, max=MAX_COPIES), default=1,
                     show_default=True,
                     help="Distinct nonce'd copies of each record, so long runs never "
                          "resend a prompt."),
        click.option("--tokenizer", metavar="T",
                     help="Count prompt tokens under T (as 'stats' does): the manifest gets "
                          "the figures before and after the nonce."),
        click.option("--keep-tokens", is_flag=True,
                     help="With --tokenizer: take the nonce's tokens back out of the end of "
                          "the last user message, so every prompt keeps its token count."),
        click.option("--chat-template", type=click.Choice(NONCE_TEMPLATES),
                     help="With --tokenizer: count each prompt's tokens before its nonce as "
                          "the server renders it (template header, tools), and warn when "
                          "they fill a cache block."),
    ]):
        func = decorator(func)
    return func


tokenizer_option = click.option(
    "--tokenizer", metavar="T",
    help="A tiktoken encoding (cl100k_base works offline), a folder or tokenizer.json "
         "file, or hf:OWNER/NAME from the local Hugging Face cache.")


def pad_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--tokens", "tokens", required=True, metavar="N",
                     type=click.IntRange(min=1, max=MAX_TOKENS),
                     help="Exact length of the shared system prompt, in tokens."),
        click.option("--tokenizer", required=True, metavar="T",
                     help="The tokenizer the length is exact under (see 'stats')."),
        click.option("--system-prompt", metavar="TEXT",
                     help="Base text (default: each record's own system message)."),
        click.option("--system-prompt-file", metavar="PATH", help="Base text from a file."),
        click.option("--filler-file", metavar="PATH",
                     help="Filler words from a file (default: seeded faker English words)."),
        click.option("--groups", type=click.IntRange(min=1, max=MAX_GROUPS), default=1,
                     show_default=True,
                     help="Distinct shared prompts, differing at their first token."),
        click.option("--group-by", metavar="FIELD",
                     help="Records with the same value of FIELD share a group "
                          "(default: round-robin by record)."),
        click.option("--into", type=click.Choice(["system", "text", "file"]), default="system",
                     show_default=True,
                     help="A system message; before the first text; or OUT.system.txt for "
                          "AIPerf's --system-prompt-file (single_turn)."),
        click.option("--seed", type=int, help="Seed of the filler (default: random, recorded)."),
    ]):
        func = decorator(func)
    return func


def fit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--tokens", required=True, metavar="N|LOW,HIGH|COLUMN", type=FitTokens(),
                     help="Exact tokens of each user text: a number, a uniform range drawn "
                          "per record (seeded), or a column holding each record's own."),
        click.option("--tokenizer", required=True, metavar="T",
                     help="The tokenizer the length is exact under (see 'stats')."),
        click.option("--filler-file", metavar="PATH",
                     help="Filler words from a file (default: seeded faker English words)."),
        click.option("--seed", type=int,
                     help="Seed of the filler and the range (default: random, recorded)."),
    ]):
        func = decorator(func)
    return func


def turns_options(func: Callable[..., Any]) -> Callable[..., Any]:
    bound = functools.partial(click.option, type=click.IntRange(min=1, max=MAX_TOKENS),
                              metavar="N")
    for decorator in reversed([
        click.option("--mode", type=click.Choice(MODES), default="first", show_default=True,
                     help="first: one request a conversation, its first user message; each: "
                          "an AIPerf multi_turn session, a turn a user message; history: one "
                          "request, the whole conversation up to its last user message."),
        click.option("--tokenizer", required=True, metavar="T",
                     help="Each request's output_length is its recorded reply's tokens "
                          "under T (see 'stats')."),
        bound("--min-prompt-tokens", help="Leave out requests with fewer prompt tokens."),
        bound("--max-prompt-tokens", help="Leave out requests with more prompt tokens."),
        bound("--min-output-tokens", help="Leave out requests whose reply had fewer tokens."),
        bound("--max-output-tokens", help="Leave out requests whose reply had more tokens."),
        bound("--max-turns", help="Keep the first N exchanges of a conversation."),
        click.option("--chat-template", type=click.Choice(NONCE_TEMPLATES),
                     help="Count the prompt bounds as the server sees a request: rendered "
                          "through this template with its tools (default: the raw texts)."),
    ]):
        func = decorator(func)
    return func


class CacheBustChoice(click.ParamType):
    """A ``--cache-bust`` mode, in promptkit's spelling or AIPerf's."""

    name = "mode"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            return mode_of(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def check_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        tokenizer_option,
        click.option("--chat-template", type=click.Choice(TEMPLATES), default="none",
                     show_default=True,
                     help="What the server renders: raw texts (none: each tokenized on its "
                          "own, as 'stats' counts), a built-in template, or the Hugging Face "
                          "tokenizer's own (hf)."),
        click.option("--engine", type=click.Choice(ENGINES), default="vllm", show_default=True,
                     help="vllm: full blocks, chained hashes; sglang: token-level radix."),
        click.option("--block-size", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
                     help="Tokens a block of the server's cache [default: 16; for hash-id "
                          "traces the tokens a hash id stands for]."),
        click.option("--hash-block-size", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
                     help="Tokens AIPerf makes of a hash id (its --isl-block-size) [default: "
                          "the manifest's, else 16 for bailian_trace, 512 for "
                          "mooncake_trace]."),
        click.option("--capacity-tokens", type=click.IntRange(min=1), metavar="N",
                     help="Cache size in tokens, LRU eviction (default: unbounded)."),
        click.option("--num-gpu-blocks", type=click.IntRange(min=2), metavar="N",
                     help="vLLM's KV cache blocks, as its log says ('GPU KV cache size' / "
                          "--num-gpu-blocks-override): its block pool, replayed exactly at "
                          "concurrency 1."),
        click.option("--requests", type=click.IntRange(min=1, max=MAX_RECORDS),
                     help="Profiled requests (default: one pass over the file); beyond it "
                          "AIPerf wraps around the file and repeats prompts: the report "
                          "counts them."),
        click.option("--warmup", type=click.IntRange(min=0, max=MAX_RECORDS), default=0,
                     show_default=True,
                     help="Warmup requests sent first, from the same records."),
        click.option("--fixed-schedule/--no-fixed-schedule", default=None,
                     help="As AIPerf's options: every line once, conversations in the order "
                          "of their timestamps (no --requests), or the file in order "
                          "[default: as AIPerf decides: a fixed schedule for a mooncake_trace "
                          "IN whose first line has a timestamp; in a pipe, the file in order]."),
        click.option("--system-prompt-file", metavar="PATH",
                     help="The file AIPerf sends as a system message on every request (its "
                          "--system-prompt-file) [default: the one the file's manifest "
                          "names]."),
        click.option("--cache-bust", type=CacheBustChoice(), default="none",
                     show_default=True, metavar="MODE",
                     help="AIPerf's --cache-bust: where it puts its run-time marker (none, "
                          "system-prefix, system-suffix, first-turn-prefix, "
                          "first-turn-suffix, warmup-isolation-system, "
                          "warmup-isolation-first-turn; AIPerf's underscores too)."),
        click.option("--reply-tokens", type=click.IntRange(min=1, max=MAX_TOKENS), metavar="N",
                     help="Tokens the server generates for a request without output_length: "
                          "a reply AIPerf sends back in a conversation's history, and blocks "
                          "that take cache room."),
        click.option("--max-total-hit-rate", type=click.FloatRange(0, 1), metavar="X",
                     help="Fail when the predicted total hit rate (within conversations "
                          "too; the top of its range) is above X."),
    ]):
        func = decorator(func)
    return func


def hash_trace_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed([
        click.option("--tokenizer", required=True, metavar="T",
                     help="The tokenizer the blocks are counted under (see 'stats')."),
        click.option("--block-size", type=click.IntRange(min=1, max=MAX_TOKENS), default=512,
                     show_default=True, metavar="N",
                     help="Tokens a block (one hash id each; the last may be partial)."),
        click.option("--rate", type=click.FloatRange(min=0, min_open=True),
                     help="Requests a second, for timestamps where records have none."),
        click.option("--threads", type=click.IntRange(min=1, max=MAX_WORKERS),
                     help="Threads for batch tokenization in one process (default: one per "
                          "CPU)."),
    ]):
        func = decorator(func)
    return func
