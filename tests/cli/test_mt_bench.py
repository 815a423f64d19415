"""MT-bench question files (FastChat's llm_judge/data/mt_bench/question.jsonl) become
AIPerf multi_turn files: each string in ``turns`` is a user turn.

The fixture has the published shape with made-up texts: ``question_id`` (a
number), ``category``, ``turns`` (strings), and on some lines ``reference``
(the judge's reference answers, one per turn, some of them empty).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiperf_tool
from helpers import read_jsonl, write_jsonl

QUESTIONS = [
    {"question_id": 81, "category": "writing",
     "turns": ["Compose a travel blog post about a trip to Hawaii.",
               "Rewrite your previous response. Start every sentence with the letter A."]},
    {"question_id": 111, "category": "math",
     "turns": ["The vertices of a triangle are at (0, 0), (1, 0) and (0.5, 0.866). "
               "What is its area?", "What is the area of the circle circumscribing it?"],
     "reference": ["Area is 0.433", "pi/3"]},
    {"question_id": 133, "category": "extraction",
     "turns": ["Extract the book, author and year from:\na) ...",
               "Reformulate your earlier reply as JSON."],
     "reference": ["", "Only books published after 1980."]},
]
#: Fields of a question line that AIPerf's MultiTurn does not document: kept, as promptkit
#: keeps every field it does not map, at the top level, where AIPerf ignores them.
KEPT = ("question_id", "category", "reference")


def questions(folder: Path) -> Path:
    return write_jsonl(folder / "question.jsonl", QUESTIONS)


def test_a_question_file_becomes_a_multi_turn_file_aiperf_loads(tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", questions(tmp_path), "write", "--to", "multi_turn", out)
    assert result.exit_code == 0, result.stderr
    rows = read_jsonl(out)
    assert rows == [{"turns": [{"text": text} for text in q["turns"]],
                     **{k: q[k] for k in KEPT if k in q}} for q in QUESTIONS]
    models = aiperf_tool.validate("MultiTurn", rows)
    for model, question in zip(models, QUESTIONS, strict=True):
        # Nothing lands inside a turn, where AIPerf builds the request from its fields;
        # the only fields AIPerf does not document are the question's own, at the top.
        assert len(model.turns) == len(question["turns"])
        assert all(not turn.model_extra for turn in model.turns)
        assert model.model_extra == {k: question[k] for k in KEPT if k in question}
        assert model.values["session_id"] is None  # AIPerf names the conversations itself

    conversations = aiperf_tool.conversations("multi_turn", out)
    assert [[t["texts"][0]["contents"] for t in c["turns"]] for c in conversations] == [
        [[text] for text in q["turns"]] for q in QUESTIONS]
    assert all(t["role"] is None and t["max_tokens"] is None and t["extra_body"] is None
               for c in conversations for t in c["turns"])
    dumped = json.dumps(conversations)
    assert "writing" not in dumped and "pi/3" not in dumped  # the kept fields are not sent


def test_the_output_format_defaults_to_multi_turn_and_reads_back_unchanged(tmp_path, run):
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", questions(tmp_path), "write", out).exit_code == 0
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["inputs"][0]["format"] == "multi_turn"
    assert manifest["aiperf"]["custom_dataset_type"] == "multi_turn"
    again = tmp_path / "again.jsonl"
    assert run("pipe", "read", out, "write", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()
    rebuilt = tmp_path / "rebuilt.jsonl"
    assert run("rebuild", f"{out}.manifest.json", rebuilt).exit_code == 0
    assert rebuilt.read_bytes() == out.read_bytes()


def test_string_turns_are_user_turns_in_every_format(tmp_path, run):
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", questions(tmp_path), "write", "--to", "mooncake_trace",
               out).exit_code == 0
    first = read_jsonl(out)[0]
    assert first["messages"] == [{"role": "user", "content": text}
                                 for text in QUESTIONS[0]["turns"]]


def test_a_nonce_goes_before_the_first_question_of_each_conversation(tmp_path, run):
    out = tmp_path / "out.jsonl"
    result = run("nonce", questions(tmp_path), out, "--seed", "3", "--at", "user")
    assert result.exit_code == 0, result.stderr
    for row, question in zip(read_jsonl(out), QUESTIONS, strict=True):
        nonce, text = row["turns"][0]["text"].split("\n", 1)
        assert len(nonce) == 36 and text == question["turns"][0]
        assert row["turns"][1] == {"text": question["turns"][1]}
    aiperf_tool.validate("MultiTurn", read_jsonl(out))


def test_a_turn_neither_text_nor_object_is_one_line(tmp_path, run):
    source = write_jsonl(tmp_path / "question.jsonl", [
        QUESTIONS[0], {"question_id": 82, "category": "writing", "turns": ["fine", 7]}])
    result = run("pipe", "read", source, "write", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert result.stderr == (f"promptkit: {source}:2: multi_turn: turn 1 must be an object or a "
                             "string\n")
    assert not (tmp_path / "out.jsonl").exists()
