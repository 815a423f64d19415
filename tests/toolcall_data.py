"""Tool-calling conversations in the shape of LLaMA-Factory's glaive demo, made here.

``glaive_toolcall_en_demo.json`` (LLaMA-Factory's copy of the Glaive function-calling
data) is a JSON array of ShareGPT records: ``conversations`` of ``human``,
``function_call`` (a JSON object of ``name`` and ``arguments``), ``observation`` (the
tool's JSON answer) and ``gpt`` turns; ``tools`` a JSON *string* of bare function
schemas (name, description, parameters); some records a ``system`` key. The Hub is
out of reach here, so :func:`glaive` writes records of that shape: each
conversation offers one to three tools of a pool of real-looking functions, calls
one or two of them, and may ask a follow-up question. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TOOLS: list[dict[str, Any]] = [
    {"name": "get_weather", "description": "Get the current weather of a city",
     "parameters": {"type": "object", "properties": {
         "city": {"type": "string", "description": "The city name"},
         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                  "description": "The temperature unit"}}, "required": ["city"]}},
    {"name": "convert_currency", "description": "Convert an amount from one currency to another",
     "parameters": {"type": "object", "properties": {
         "amount": {"type": "number", "description": "The amount to convert"},
         "from_currency": {"type": "string", "description": "The currency to convert from"},
         "to_currency": {"type": "string", "description": "The currency to convert to"}},
         "required": ["amount", "from_currency", "to_currency"]}},
    {"name": "search_restaurants", "description": "Search for restaurants near a location",
     "parameters": {"type": "object", "properties": {
         "location": {"type": "string", "description": "The location to search in"},
         "cuisine": {"type": "string", "description": "The cuisine to look for"},
         "price_range": {"type": "integer", "description": "From 1 (cheap) to 4 (expensive)"}},
         "required": ["location"]}},
    {"name": "calculate_bmi", "description": "Calculate the Body Mass Index (BMI)",
     "parameters": {"type": "object", "properties": {
         "weight": {"type": "number", "description": "The weight in kilograms"},
         "height": {"type": "number", "description": "The height in meters"}},
         "required": ["weight", "height"]}},
    {"name": "generate_password", "description": "Generate a random password",
     "parameters": {"type": "object", "properties": {
         "length": {"type": "integer", "description": "The length of the password"},
         "include_symbols": {"type": "boolean", "description": "Whether to use symbols"}},
         "required": ["length"]}},
    {"name": "get_stock_price", "description": "Get the current price of a stock",
     "parameters": {"type": "object", "properties": {
         "symbol": {"type": "string", "description": "The stock symbol, e.g. AAPL"}},
         "required": ["symbol"]}},
    {"name": "send_email", "description": "Send an email to a recipient",
     "parameters": {"type": "object", "properties": {
         "recipient": {"type": "string", "description": "The email address"},
         "subject": {"type": "string", "description": "The subject of the email"},
         "body": {"type": "string", "description": "The text of the email"}},
         "required": ["recipient", "subject", "body"]}},
    {"name": "create_calendar_event", "description": "Create a new event in the calendar",
     "parameters": {"type": "object", "properties": {
         "title": {"type": "string", "description": "The title of the event"},
         "start_time": {"type": "string", "description": "The start time, ISO 8601"},
         "end_time": {"type": "string", "description": "The end time, ISO 8601"},
         "attendees": {"type": "array", "items": {"type": "string"},
                       "description": "The email addresses of the attendees"}},
         "required": ["title", "start_time", "end_time"]}},
    {"name": "translate_text", "description": "Translate a text into another language",
     "parameters": {"type": "object", "properties": {
         "text": {"type": "string", "description": "The text to translate"},
         "target_language": {"type": "string", "description": "The language to translate to"}},
         "required": ["text", "target_language"]}},
    {"name": "get_news_headlines", "description": "Get the latest news headlines",
     "parameters": {"type": "object", "properties": {
         "country": {"type": "string", "description": "The country code, e.g. us"},
         "category": {"type": "string", "description": "The news category"}},
         "required": ["country"]}},
    {"name": "calculate_loan_payment", "description": "Calculate the monthly loan payment",
     "parameters": {"type": "object", "properties": {
         "principal": {"type": "number", "description": "The loan amount"},
         "interest_rate": {"type": "number", "description": "The annual interest rate"},
         "term": {"type": "integer", "description": "The loan term in months"}},
         "required": ["principal", "interest_rate", "term"]}},
    {"name": "search_movies", "description": "Search for movies by title or genre",
     "parameters": {"type": "object", "properties": {
         "query": {"type": "string", "description": "The title or keywords"},
         "genre": {"type": "string", "description": "The genre of the movie"},
         "year": {"type": "integer", "description": "The release year"}},
         "required": ["query"]}},
]

CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Lima", "Oslo", "Hanoi", "Austin"]
SYSTEM = "You are a helpful assistant with access to the following functions. Use them if required."


def _arguments(tool: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, schema in tool["parameters"]["properties"].items():
        if name not in tool["parameters"]["required"] and rng.random() < 0.5:
            continue
        kind = schema["type"]
        if "enum" in schema:
            out[name] = rng.choice(schema["enum"])
        elif kind == "string":
            out[name] = rng.choice(CITIES) if "city" in name or "location" in name else (
                f"{name.replace('_', ' ')} {rng.randint(1, 99)}")
        elif kind == "number":
            out[name] = round(rng.uniform(1, 500), 1)
        elif kind == "integer":
            out[name] = rng.randint(1, 48)
        elif kind == "boolean":
            out[name] = rng.random() < 0.5
        else:
            out[name] = [f"person{rng.randint(1, 9)}@example.com"]
    return out


def _question(tool: dict[str, Any], arguments: dict[str, Any]) -> str:
    details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in arguments.items())
    return f"Can you help me? I need to {tool['description'].lower()} ({details})."


def glaive(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` glaive-shaped tool-calling conversations."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        offered = rng.sample(TOOLS, rng.randint(1, 3))
        turns: list[dict[str, str]] = []
        for _call in range(rng.randint(1, 2)):
            tool = rng.choice(offered)
            arguments = _arguments(tool, rng)
            turns += [
                {"from": "human", "value": _question(tool, arguments)},
                {"from": "function_call", "value": json.dumps(
                    {"name": tool["name"], "arguments": arguments})},
                {"from": "observation", "value": json.dumps(
                    {"status": "ok", "result": rng.randint(1, 10_000)})},
                {"from": "gpt", "value": f"Done: the {tool['name'].replace('_', ' ')} "
                                         f"answer is {rng.randint(1, 10_000)}."},
            ]
        record: dict[str, Any] = {"conversations": turns,
                                  "tools": json.dumps(offered, ensure_ascii=False)}
        if rng.random() < 0.3:
            record["system"] = SYSTEM
        records.append(record)
    return records


def write_glaive(path: Path, n: int, seed: int = 0) -> Path:
    """A JSON array of :func:`glaive` records at ``path`` (as LLaMA-Factory ships it)."""
    path.write_text(json.dumps(glaive(n, seed), ensure_ascii=False, indent=2) + "\n",
                    encoding="utf-8")
    return path
