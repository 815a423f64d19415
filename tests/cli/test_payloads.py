"""AIPerf's verbatim request bodies read as inputs: a run's ``inputs.json`` and
``raw_payload`` lines, predicted by ``check`` and re-made by ``nonce``; what promptkit
writes of them held to AIPerf 0.13's own loaders (``tests/aiperf_tool.py``).

The bodies are the ones AIPerf's chat endpoint makes (``aiperf_tool.request_bodies``),
so the files have the shape a past run's artifacts really have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiperf_tool
import pytest
from helpers import ROOT, read_jsonl, write_jsonl

SYSTEM = "You are a careful assistant for a travel agency. Answer briefly and exactly."
QUESTIONS = [["Which trains leave Lyon for Turin on Sunday mornings?",
              "And the cheapest of them?"],
             ["What documents does a child need to fly alone?",
              "Does that hold for domestic flights?"]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizer_dir import build_tokenizer_dir

    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "bpe")


@pytest.fixture(scope="module")
def bodies(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict[str, Any]]]:
    """The chat request bodies AIPerf makes of two conversations of two turns sharing a
    system prompt, by conversation: each turn's body on its own, as its inputs.json
    holds them."""
    folder = tmp_path_factory.mktemp("bodies")
    rows = [{"session_id": f"c{n}", "turns": [
        {"texts": [question], "max_tokens": 8} for question in turns]}
        for n, turns in enumerate(QUESTIONS)]
    source = write_jsonl(folder / "multi.jsonl", rows)
    made = aiperf_tool.request_bodies("multi_turn", source)
    assert len(made) == 4
    for body in made:  # (the system prompt, as a run with --shared-system-prompt sends it)
        body["messages"].insert(0, {"role": "system", "content": SYSTEM})
    return [made[:2], made[2:]]


def inputs_json(path: Path, bodies: list[list[dict[str, Any]]]) -> Path:
    data = {"data": [{"session_id": f"session-{n}", "payloads": payloads}
                     for n, payloads in enumerate(bodies)]}
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def report(run, path: Path, *args: Any) -> dict[str, Any]:
    result = run("check", path, "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_an_inputs_json_is_read_as_aiperf_replays_it(tmp_path, run, tokenizer, bodies):
    """Each body one request, sent as it is, a session's in a row: check predicts what
    the same bodies as mooncake_trace payload lines (which AIPerf sends so too) give."""
    source = inputs_json(tmp_path / "inputs.json", bodies)
    loaded = aiperf_tool.load_dataset("inputs_json", source)
    assert [len(s[0]["payloads"]) for s in loaded] == [2, 2]
    stats = run("stats", source, "--json")
    assert stats.exit_code == 0, stats.stderr
    counted = json.loads(stats.stdout)
    assert counted["input"]["format"] == "inputs_json"
    assert (counted["records"], counted["conversations"]) == (4, 2)
    payload_lines = write_jsonl(tmp_path / "payloads.jsonl", [
        {"session_id": f"session-{n}", "payload": body}
        for n, payloads in enumerate(bodies) for body in payloads])
    aiperf_tool.validate("MooncakeTrace", read_jsonl(payload_lines))
    predicted = report(run, source, "--tokenizer", tokenizer)
    same = report(run, payload_lines, "--tokenizer", tokenizer)
    for key in ("requests", "conversations", "prompt_tokens", "hit_tokens",
                "within_conversation_hit_tokens"):
        assert predicted[key] == same[key], key
    assert predicted["requests"] == 4 and predicted["conversations"] == 2
    assert predicted["cross_conversation_hit_tokens"] > 0  # the shared system prompt


def test_nonce_remakes_an_inputs_json_as_payload_lines(tmp_path, run, tokenizer, bodies):
    source = inputs_json(tmp_path / "inputs.json", bodies)
    out = tmp_path / "nonced.jsonl"
    result = run("nonce", source, out, "--seed", "3", "--at", "system")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    aiperf_tool.strict("MooncakeTrace", rows)
    assert [r["session_id"] for r in rows] == ["session-0"] * 2 + ["session-1"] * 2
    flat = [body for payloads in bodies for body in payloads]
    for row, body in zip(rows, flat, strict=True):
        sent = row["payload"]
        assert {k: v for k, v in sent.items() if k != "messages"} == {
            k: v for k, v in body.items() if k != "messages"}  # model, max_tokens, ...
        assert sent["messages"][1:] == body["messages"][1:]
        assert sent["messages"][0]["content"].endswith(SYSTEM)
    firsts = [r["payload"]["messages"][0]["content"] for r in rows]
    assert SYSTEM != firsts[0] != firsts[2] != SYSTEM  # each session's first body
    manifest = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    assert manifest["inputs"][0]["format"] == "inputs_json"
    assert manifest["aiperf"]["args"][2:4] == ["--custom-dataset-type", "mooncake_trace"]
    assert report(run, out, "--tokenizer", tokenizer)["requests"] == 4


@pytest.mark.parametrize("at", ["start", "system", "user"])
def test_every_body_of_a_session_gets_its_sessions_nonce(tmp_path, run, tokenizer, bodies,
                                                         at):
    """A body is sent as it is, its history included: each of a session's bodies gets
    the nonce its first got, in the same place, so the hits within the session stay and
    those across sessions go."""
    source = inputs_json(tmp_path / "inputs.json", bodies)
    out = tmp_path / "nonced.jsonl"
    result = run("nonce", source, out, "--seed", "3", "--at", at)
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    place = 1 if at == "user" else 0
    heads = [r["payload"]["messages"][place]["content"] for r in rows]
    wheres = [b["messages"][place]["content"] for payloads in bodies for b in payloads]
    nonces = [head[:len(head) - len(was)] for head, was in zip(heads, wheres, strict=True)]
    assert all(head.endswith(was) for head, was in zip(heads, wheres, strict=True))
    assert nonces[0] == nonces[1] != nonces[2] == nonces[3] and "" not in nonces
    before = report(run, source, "--tokenizer", tokenizer)
    after = report(run, out, "--tokenizer", tokenizer)
    if at != "user":  # (a nonce in the user message leaves the system prompt shared)
        assert after["cross_conversation_hit_tokens"] == 0
    assert after["within_conversation_hit_tokens"] >= before["within_conversation_hit_tokens"]


@pytest.mark.parametrize(("data", "problem"), [
    ({"data": [{"session_id": "a", "payloads": [{"messages": []}]},
               {"session_id": "a", "payloads": [{"messages": []}]}]},
     "session_id 'a' again"),
    ({"data": [{"session_id": "a", "payloads": []}]}, "'payloads' is not a non-empty list"),
    ({"data": [{"payloads": [{"messages": []}]}]}, "no string 'session_id'"),
])
def test_an_inputs_json_aiperf_refuses_is_one_line(tmp_path, run, data, problem):
    source = tmp_path / "inputs.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = run("nonce", source, out, "--seed", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"promptkit: {source}:"), result.stderr
    assert problem in result.stderr and len(result.stderr.splitlines()) == 1
    assert not out.exists()


def test_raw_payload_lines_keep_every_field_and_load_in_aiperf(tmp_path, run, tokenizer,
                                                             bodies):
    """A raw payload is sent whole: read --from raw_payload, every field (model,
    max_tokens, a cache_salt) goes to the server and stays in the written line; a line
    read as openai sends only its messages (AIPerf's mooncake_trace)."""
    rows = [{**body, "cache_salt": f"salt-{n}"} if n == 3 else body
            for n, body in enumerate(b for payloads in bodies for b in payloads)]
    source = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "nonced.jsonl"
    result = run("nonce", source, out, "--from", "raw_payload", "--seed", "2")
    assert result.exit_code == 0, result.stderr
    written = read_jsonl(out)
    for row, was in zip(written, rows, strict=True):
        assert {k: v for k, v in row.items() if k != "messages"} == {
            k: v for k, v in was.items() if k != "messages"}
        assert row["messages"][1:] == was["messages"][1:]
        assert row["messages"][0]["content"] != was["messages"][0]["content"]
    loaded = aiperf_tool.load_dataset("raw_payload", out)
    assert [s[0]["payload"] for s in loaded] == written
    manifest = json.loads(Path(f"{out}.manifest.json").read_text(encoding="utf-8"))
    assert manifest["output"]["format"] == "raw_payload"
    assert "raw_payload" in manifest["aiperf"]["args"]
    raw = report(run, source, "--from", "raw_payload", "--tokenizer", tokenizer)
    as_openai = report(run, source, "--tokenizer", tokenizer)
    assert "salts_not_sent" not in raw and as_openai["salts_not_sent"] == 1
    assert raw["requests"] == as_openai["requests"] == 4


def test_a_salt_a_session_reaches_every_body_of_it(tmp_path, run, tokenizer, bodies):
    """nonce --at salt: one cache_salt a session, in each of its bodies (sent with
    them): no hit across sessions, the hits within them as before."""
    source = inputs_json(tmp_path / "inputs.json", bodies)
    out = tmp_path / "salted.jsonl"
    result = run("nonce", source, out, "--seed", "3", "--at", "salt")
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    aiperf_tool.strict("MooncakeTrace", rows)
    salts = [r["payload"]["cache_salt"] for r in rows]
    assert salts[0] == salts[1] != salts[2] == salts[3]
    before = report(run, source, "--tokenizer", tokenizer)
    after = report(run, out, "--tokenizer", tokenizer)
    assert after["cross_conversation_hit_tokens"] == 0
    assert after["within_conversation_hit_tokens"] == before["within_conversation_hit_tokens"] > 0


def test_inputs_json_is_not_a_choice_of_to(tmp_path, run):
    """inputs_json is read only: --to inputs_json is a usage error (exit 2) before
    anything is read, not a run that fails at its first record."""
    out = tmp_path / "out.json"
    result = run("nonce", ROOT / "prompts" / "trace.jsonl.example", out, "--to", "inputs_json")
    assert result.exit_code == 2 and "'inputs_json' is not one of" in result.stderr
    assert not out.exists()
    formats = run("formats")
    assert "inputs_json" in formats.stdout  # still listed, as an input
