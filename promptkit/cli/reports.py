"""The commands that report on a file (``stats``, ``check``): options in, the figures
made by :mod:`promptkit.commands.stats` and :mod:`promptkit.commands.check`, printed as
text or JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from promptkit.cli.base import UserError, files_not_stdout, report, report_skipped, report_wrote
from promptkit.cli.help import INPUT, SectionedCommand, shared
from promptkit.cli.options import (
    FORMAT_CHOICE,
    check_options,
    dataset_options,
    ray_option,
    tokenizer_option,
)
from promptkit.commands.check import check as check_command
from promptkit.commands.check import hit_rate_failure
from promptkit.commands.stats import stats as stats_command
from promptkit.core.limits import MAX_WORKERS
from promptkit.core.words import counted
from promptkit.text.templates import TEMPLATES


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="IN")
@tokenizer_option
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@click.option("--chat-template", type=click.Choice(TEMPLATES), default="none", show_default=True,
              help="Count prompt tokens under this template, as 'check' does (none: each "
                   "text on its own, nothing added).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_WORKERS),
              help="Threads for batch tokenization (default: one per CPU).")
@shared(INPUT, "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), default=1,
        show_default=True,
        help="Processes for a large JSONL file (a chunk each, merged in order); "
                   "the figures are the same for every value.")
@shared(INPUT, "--skip-invalid", is_flag=True,
        help="Skip bad records instead of stopping; the report counts them by reason.")
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random).")
@click.option("--plot", metavar="FILE.png",
              help="Also draw the prompt-length histogram, shared prefix marked "
                   "(needs matplotlib and --tokenizer).")
@ray_option
@dataset_options
@report
def stats(input_path: str, tokenizer: str | None, from_format: str | None, chat_template: str,
          as_json: bool, threads: int | None, workers: int, skip_invalid: bool,
          seed: int | None, plot: str | None, ray_address: str | None,
          dataset: dict[str, Any]) -> None:
    """Count records, conversations, turns and prompt tokens; show shared prompts.

    Requests are what AIPerf sends in one pass over the file (one a record, one a
    multi_turn turn); turns are user messages. A record's prompt tokens are those of
    the prompt its messages make under --chat-template, as 'check' counts them (a
    multi_turn conversation: its turns, without the server's replies).

    \b
    Examples:
      promptkit stats prompts/trace.jsonl.example --tokenizer cl100k_base
      promptkit stats out.jsonl --tokenizer ./my_tokenizer_dir --json
      promptkit stats hf:tatsu-lab/alpaca --limit 1000 --tokenizer cl100k_base
    """
    files_not_stdout(("--plot", plot))
    summary = stats_command(input_path, tokenizer=tokenizer, from_format=from_format,
                            chat_template=chat_template, threads=threads, workers=workers,
                            skip_invalid=skip_invalid, dataset=dataset, seed=seed, plot=plot,
                            ray=ray_address)
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_stats(summary)
    for warning in summary["warnings"]:
        click.echo(f"promptkit: warning: {warning}", err=True)
    report_wrote(summary["wrote"])
    report_skipped(summary["skipped"])


def print_stats(summary: dict[str, Any]) -> None:
    click.echo(f"{summary['input']['path']} ({summary['input']['format']})")
    for key in ("records", "conversations", "requests", "turns"):
        click.echo(f"  {key:22} {summary[key]}")
    tokens = summary.get("prompt_tokens")
    if tokens:
        figures = "  ".join(f"{k} {v}" for k, v in tokens.items())
        stated = summary.get("prompt_tokens_stated", 0)
        tokenized = (f"{summary['tokenizer']}, template {summary['chat_template']}"
                     if stated < summary["records"] and summary["tokenizer"] else None)
        source = ("input_length" if not tokenized else f"{tokenized}; {stated} records' "
                  "input_length" if stated else tokenized)
        click.echo(f"  {'prompt tokens':22} {figures}  ({source})")
        if "distinct_first_tokens" in summary:
            click.echo(f"  {'distinct first tokens':22} {summary['distinct_first_tokens']}")
    shared = summary["system_prompts"]
    click.echo(f"  {'system prompts':22} {shared['distinct']} distinct, "
               f"in {shared['records_with_one']} records")
    for prompt in shared["most_shared"][:5]:
        size = f", {prompt['tokens']} tokens" if prompt["tokens"] is not None else ""
        click.echo(f"    {prompt['records']} records{size}: {prompt['starts']!r}")


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="IN")
@check_options
@shared(INPUT, "--from", "from_format", type=FORMAT_CHOICE,
        help="Input format (default: detected from the first record).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-hit-rate", type=click.FloatRange(0, 1), metavar="X",
              help="Exit 1 when the predicted hit rate across conversations (what a nonce "
                   "removes) is above X.")
@click.option("--no-manifest", "use_manifest", is_flag=True, flag_value=False, default=True,
              help="Do not apply the AIPerf arguments of IN.manifest.json.")
@click.option("--plot", metavar="FILE.png",
              help="Also draw hit tokens per request and the cumulative hit rate "
                   "(needs matplotlib).")
@click.option("--per-request", metavar="PATH",
              help="Also write a JSONL line a profiled request: its record, prompt and hit "
                   "tokens, and where that record first differs from all before it.")
@shared(INPUT, "--skip-invalid", is_flag=True,
        help="Skip bad records instead of stopping; the report counts them by reason.")
@shared(INPUT, "--seed", type=int, help="Seed of --shuffle (default: random).")
@shared(INPUT, "--workers", type=click.IntRange(min=1, max=MAX_WORKERS), default=1,
        show_default=True,
        help="Processes that tokenize a large JSONL file, a chunk each (the cache is "
                   "simulated in order: the same report for every value).")
@ray_option
@dataset_options
@report
def check(input_path: str, from_format: str | None, as_json: bool,
          max_hit_rate: float | None, use_manifest: bool, plot: str | None,
          per_request: str | None, skip_invalid: bool, seed: int | None, workers: int,
          ray_address: str | None, dataset: dict[str, Any], **options: Any) -> None:
    """Predict the prefix-cache hit rate a benchmark run of a file will see.

    \b
    Examples:
      promptkit check out.jsonl --tokenizer cl100k_base --max-hit-rate 0.01
      promptkit check chat.jsonl --tokenizer ./tok_dir --chat-template hf --requests 5000
      promptkit check mooncake_trace.jsonl --json
    """
    files_not_stdout(("--plot", plot), ("--per-request", per_request))
    summary = check_command(input_path, from_format=from_format, skip_invalid=skip_invalid,
                            dataset=dataset, seed=seed, per_request=per_request, plot=plot,
                            workers=workers, use_manifest=use_manifest, ray=ray_address,
                            **options)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_check(summary)
    report_wrote(summary["wrote"])
    report_skipped(summary["skipped"])
    problem = hit_rate_failure(summary, max_hit_rate, options.get("max_total_hit_rate"))
    if problem is not None:
        raise UserError(problem)


def print_check(s: dict[str, Any]) -> None:
    capacity = (f"{s['num_gpu_blocks']} vLLM blocks" if s.get("num_gpu_blocks")
                else f"{s['capacity_tokens']} tokens" if s["capacity_tokens"] else "unbounded")
    template = f", template {s['chat_template']}" if s["chat_template"] else ", hash ids"
    click.echo(f"{s['input']['path']}: predicted prefix-cache hit rate {s['hit_rate']:.2%} "
               f"({s['engine']}, block {s['block_size']}, {capacity}{template})")
    low, high = s["hit_rate_range"]
    if low != high:
        click.echo(f"  range                  {low:.2%} to {high:.2%} (the replies' tokens "
                   "as sent back are not known)")
    if s["within_conversation_hit_tokens"]:
        click.echo(f"  across conversations   {s['cross_conversation_hit_rate']:.2%}; within "
                   f"them {s['within_conversation_hit_rate']:.2%} (history sent again)")
    click.echo(f"  requests               {s['requests']} (+{s['warmup']} warmup) from "
               f"{s['records']} records, {s['conversations']} conversations")
    if s.get("fixed_schedule"):
        click.echo("  schedule               AIPerf's fixed schedule: every line once, the "
                   "conversations in the order of their timestamps")
    repeating = s.get("requests_repeating_a_prompt")
    if repeating and s.get("fixed_schedule"):
        click.echo(f"  repeated prompts       {counted(repeating, 'request')} resend a warmup "
                   "prompt: the fixed schedule sends every line after the warmup")
    elif repeating:
        size = (f"a {s['records']}-record file" if s["requests_per_pass"] == s["records"]
                else f"a {s['records']}-record file of {s['requests_per_pass']} requests")
        click.echo(f"  repeated prompts       {counted(repeating, 'request')} resend a prompt: "
                   f"AIPerf wraps around {size}; use nonce --copies "
                   f"{s['copies_for_distinct_prompts']} for distinct prompts")
    click.echo(f"  prompt tokens          {s['prompt_tokens']}, of which hits {s['hit_tokens']}")
    per = s["hit_tokens_per_request"]
    click.echo("  hit tokens a request   " + "  ".join(f"{k} {v}" for k, v in per.items())
               + f"  ({counted(s['requests_with_hits'], 'request')} hit)")
    for key in ("first_differing_token", "first_differing_block"):
        if key in s:
            figures = "  ".join(f"{k} {v}" for k, v in s[key].items() if k != "window")
            click.echo(f"  {key.replace('_', ' '):22} {figures}")
    first = s["first_block"]
    click.echo(f"  first blocks           {first['distinct']} distinct; the most shared is in "
               f"{counted(first['shared_by_most'], 'record')}")
    if s.get("template_header_tokens"):
        click.echo(f"  template header        {s['template_header_tokens']} tokens before "
                   "the first content")
    if s.get("records_with_tools"):
        click.echo(f"  tools                  {counted(s['records_with_tools'], 'record')} "
                   "send tools" + (", rendered before the user's text"
                                   if s["chat_template"] != "none" else ""))
    applied = s.get("aiperf_args", {})
    if applied.get("applied"):
        flag, value = applied["applied"]
        shown = value if flag.endswith("-file") else f"({len(value)} characters)"
        click.echo(f"  AIPerf arguments       {flag} {shown} (from the {applied['source']})")
    for key in ("warning", "warning_salts", "warning_tools", "warning_history"):
        if key in s:
            click.echo(f"promptkit: warning: {s[key]}", err=True)
    if applied.get("note"):
        click.echo(f"promptkit: note: {applied['note']}", err=True)
