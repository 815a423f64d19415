"""What the server counted during AIPerf's profiling phase (its ``/metrics`` scrape and
its record of each request), and the one line that holds it to the prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptkit.commands.bench.prediction import FIRST, LATER, count_turn, new_turns, pct

SERVER_METRICS_FILE = "server_metrics_export.json"
#: The prefix-cache counters AIPerf records, ``(hits, queries)``, by engine (AIPerf
#: strips the ``_total`` of the counters' sample names).
CACHE_COUNTERS = {
    "vllm": ("vllm:prefix_cache_hits", "vllm:prefix_cache_queries"),
    "sglang": ("sglang:cached_tokens", "sglang:prompt_tokens"),
}
#: Rates closer than this are the same (both are rounded to 6 digits).
RATE_EPSILON = 1e-6
#: AIPerf's record of every request, one JSON line each (its ``metadata``: phase,
#: conversation, turn; its ``metrics``: the server's usage, among others).
RECORDS_FILE = "profile_export.jsonl"


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


def measured_turns(artifact_dir: Path) -> dict[str, dict[str, int]] | None:
    """The prompt tokens the server counted (its ``usage``) for the profiled requests,
    as AIPerf recorded them one by one in ``profile_export.jsonl``: of the first
    requests of conversations and of their later turns. ``None`` when the file is
    missing or a profiled request has no count (no usage from the server, an error)."""
    turns = new_turns()
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
                count_turn(turns, turn == 0, tokens)
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
