"""promptkit check: the prefix-cache simulation pinned on hand-made cases, then the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import mooncake_trace, read_jsonl, write_jsonl

from promptkit.text.cachesim import SglangCache, VllmCache


def tokens(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


@pytest.mark.parametrize(("length", "hits"), [(15, 0), (16, 0), (17, 16), (31, 16), (32, 16),
                                              (33, 32)])
def test_vllm_hits_full_blocks_and_never_the_last_token(length, hits):
    cache = VllmCache(16)
    assert cache.request(tokens(length)) == 0
    assert cache.request(tokens(length)) == hits


def test_vllm_hits_only_the_leading_run_of_blocks():
    cache = VllmCache(4)
    cache.request(tokens(12))
    changed = tokens(12)
    changed[5] = 7  # the second block differs: the third cannot hit though it is equal
    assert cache.request(changed + [1]) == 4
    assert cache.request(tokens(12) + [1]) == 12


def test_vllm_salt_separates_namespaces():
    cache = VllmCache(16)
    cache.request(tokens(40), salt="a")
    assert cache.request(tokens(40), salt="b") == 0
    assert cache.request(tokens(40)) == 0
    assert cache.request(tokens(40), salt="a") == 32


def test_vllm_evicts_least_recently_used_blocks_tail_first():
    cache = VllmCache(4, capacity_tokens=12)  # three blocks
    a, b = tokens(9), tokens(9, start=5000)
    cache.request(a)  # blocks a1 a2
    cache.request(b)  # blocks b1 b2: one of a's must go, the tail a2 first
    assert cache.request(a) == 4  # a1 still there, a2 evicted
    two = VllmCache(4, capacity_tokens=8)
    two.request(a)
    two.request(b)
    assert two.request(a) == 0


def test_sglang_matches_token_by_token():
    cache = SglangCache()
    cache.request(tokens(20))
    assert cache.request(tokens(13) + [1, 2, 3]) == 13
    assert cache.request(tokens(20)) == 19  # never the last token
    assert cache.request(tokens(25)) == 20


def test_sglang_evicts_least_recently_used_leaves():
    cache = SglangCache(capacity_tokens=20)
    cache.request(tokens(10))
    cache.request(tokens(10, start=5000))
    cache.request(tokens(10, start=9000))  # 30 tokens: the oldest leaf goes
    assert cache.request(tokens(10)) == 0
    assert cache.request(tokens(10, start=9000)) == 9


def test_sglang_salt_separates_namespaces():
    cache = SglangCache()
    cache.request(tokens(10), salt="x")
    assert cache.request(tokens(10)) == 0
    assert cache.request(tokens(10), salt="x") == 9


def test_replay_wraps_around_like_aiperf():
    from promptkit.core.records import Record
    from promptkit.ops.check import CheckOptions, check_records

    def trace():  # three records of 9 tokens: 2 full blocks of 4 each
        return [Record(input_length=9, hash_ids=[10 * i, 10 * i + 1, 10 * i + 2], lineno=i + 1)
                for i in range(3)]

    report = check_records(trace(), options=CheckOptions(hash_block_size=4, requests=9))
    assert list(report.hits) == [0, 0, 0, 8, 8, 8, 8, 8, 8]
    warm = check_records(trace(), options=CheckOptions(hash_block_size=4, requests=3,
                                                       warmup=3))
    assert list(warm.hits) == [8, 8, 8]


# ---------------------------------------------------------------- the command


def test_hash_id_traces_are_checked_on_their_ids(tmp_path, run):
    source = write_jsonl(tmp_path / "t.jsonl", [
        {"input_length": 1500, "hash_ids": [1, 2, 3]},
        {"input_length": 1500, "hash_ids": [1, 2, 4]},
        {"input_length": 1024, "hash_ids": [1, 2]},
    ])
    result = run("check", source, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["block_size"] == 512
    # second: 2 blocks; third: (1024-1)//512 = 1 block (never the last token)
    assert report["hit_tokens"] == 1024 + 512
    assert report["prompt_tokens"] == 4024
    assert report["first_differing_block"]["max"] == 2


def test_mooncake_trace_matches_an_independent_count(run):
    source = mooncake_trace("conversation")
    result = run("check", source, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    seen: set[int] = set()
    hit = total = 0
    for row in read_jsonl(source):
        leading = 0
        for block in row["hash_ids"][:(row["input_length"] - 1) // 512]:
            if block not in seen:
                break
            leading += 1
        seen.update(row["hash_ids"])
        hit += leading * 512
        total += row["input_length"]
    assert report["hit_tokens"] == hit and report["prompt_tokens"] == total
    assert report["hit_rate"] == round(hit / total, 6)


def test_nonce_then_check_reaches_zero_and_repeats_do_not(tmp_path, run, single_turn):
    out = tmp_path / "n.jsonl"
    assert run("nonce", single_turn, out, "--seed", "1").exit_code == 0
    once = run("check", out, "--tokenizer", "cl100k_base", "--max-hit-rate", "0")
    assert once.exit_code == 0, once.stderr
    assert "predicted prefix-cache hit rate 0.00%" in once.stdout
    twice = run("check", out, "--tokenizer", "cl100k_base", "--requests", "8",
                "--max-hit-rate", "0.01")
    assert twice.exit_code == 1
    assert twice.stderr.strip().endswith("is above --max-hit-rate 1.00%")


def test_a_template_header_that_fills_a_block_is_reported(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"{i} question"} for i in range(4)])
    result = run("check", source, "--tokenizer", "cl100k_base", "--chat-template", "llama3.1",
                 "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["template_header_fills_a_block"] is True
    assert report["requests_with_hits"] == 3  # all but the first: distinct texts cannot help
    assert "cache_salt" in report["warning"]
    salted = tmp_path / "salted.jsonl"
    assert run("nonce", source, salted, "--at", "salt", "--seed", "2").exit_code == 0
    again = json.loads(run("check", salted, "--tokenizer", "cl100k_base", "--chat-template",
                           "llama3.1", "--json").stdout)
    assert again["hit_rate"] == 0
    assert "warning" not in again  # every record has a salt: nothing to warn about


def test_check_as_a_chain_stage_goes_into_the_manifest(tmp_path, run, single_turn):
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", single_turn, "nonce", "--seed", "3", "check", "--tokenizer",
                 "cl100k_base", "write", out)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    summary = manifest["steps"][1]["info"]["summary"]
    assert summary["hit_rate"] == 0 and summary["requests"] == 4
    again = tmp_path / "again.jsonl"
    assert run("rebuild", f"{out}.manifest.json", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(("rows", "args", "code", "problem"), [
    ([{"input_length": 5}], [], 1, ":1: a record with no text and no hash ids"),
    ([{"text": "a"}], ["--tokenizer", "cl100k_base", "--chat-template", "hf"], 2,
     "--chat-template hf needs a Hugging Face tokenizer"),
])
def test_bad_check_input_is_one_line_exit_1(rows, args, code, problem, tmp_path, run):
    """Bad input: one line, exit 1; options that do not go together: a usage error, 2."""
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    result = run("check", source, *args)
    assert result.exit_code == code, result.stderr
    error = result.stderr.splitlines()[-1]
    assert problem in error, result.stderr
    if code == 1:
        assert len(result.stderr.splitlines()) == 1 and error.startswith("promptkit: ")
    else:
        assert error.startswith("Error: ")


def test_the_tokenizer_own_chat_template(tmp_path, run, tokenizers):
    import shutil

    folder = tmp_path / "tok"
    shutil.copytree(tokenizers["local_bpe"].name, folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
                         "<|im_start|>assistant\n{% endif %}",
    }))
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": f"question {i}"}]} for i in range(5)])
    reports = {}
    for template in ("hf", "chatml"):
        result = run("check", source, "--tokenizer", folder, "--chat-template", template,
                     "--json")
        assert result.exit_code == 0, result.stderr
        reports[template] = json.loads(result.stdout)
    hf, chatml = reports["hf"], reports["chatml"]
    assert hf["template_header_tokens"] == chatml["template_header_tokens"] > 0
    assert (hf["prompt_tokens"], hf["hit_tokens"]) == (chatml["prompt_tokens"],
                                                       chatml["hit_tokens"])
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    without = run("check", source, "--tokenizer", folder, "--chat-template", "hf")
    assert without.exit_code == 1 and "has no chat template" in without.stderr


def test_per_request_lines(tmp_path, run):
    source = write_jsonl(tmp_path / "t.jsonl", [
        {"input_length": 1100, "hash_ids": [1, 2, 3]},
        {"input_length": 1100, "hash_ids": [1, 2, 4]},
    ])
    lines = tmp_path / "per.jsonl"
    result = run("check", source, "--requests", "3", "--warmup", "1", "--per-request", lines)
    assert result.exit_code == 0, result.stderr
    row = {"turn": 1, "prompt_tokens": 1100, "hit_tokens": 1024, "hit_tokens_low": 1024,
           "hit_tokens_within_conversation": 0}
    assert read_jsonl(lines) == [  # (the warmup sent conversation 1: record 1)
        {"request": 1, "record": 2, "conversation": 2, **row, "first_differing_block": 2},
        {"request": 2, "record": 1, "conversation": 3, **row, "first_differing_block": 0},
        {"request": 3, "record": 2, "conversation": 4, **row, "first_differing_block": 2},
    ]


def test_a_pipe_check_guard_writes_nothing_when_the_rate_is_too_high(tmp_path, run):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "same prompt " * 10}] * 4)
    out = tmp_path / "out.jsonl"
    result = run("pipe", "read", source, "check", "--tokenizer", "cl100k_base",
                 "--max-hit-rate", "0.1", "write", out)
    assert result.exit_code == 1
    assert "is above --max-hit-rate 10.00%; nothing written" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    fine = run("pipe", "read", source, "nonce", "--seed", "1", "check", "--tokenizer",
               "cl100k_base", "--max-hit-rate", "0.1", "write", out)
    assert fine.exit_code == 0, fine.stderr
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    assert manifest["steps"][1]["params"]["max_hit_rate"] == 0.1


def test_num_gpu_blocks_is_vllms_pool_instead_of_a_token_capacity(tmp_path, run):
    source = write_jsonl(tmp_path / "t.jsonl", [
        {"input_length": 1536, "hash_ids": [i, i + 1, i + 2]} for i in (0, 10, 20, 0)])
    roomy = run("check", source, "--num-gpu-blocks", "100", "--json")
    assert roomy.exit_code == 0, roomy.stderr
    assert json.loads(roomy.stdout)["hit_tokens"] == 1024  # the fourth repeats the first
    # 7 blocks, one of them vLLM's null block: the three others evicted the first's (three
    # full blocks each; a partial last block is never cached).
    tight = run("check", source, "--num-gpu-blocks", "7", "--json")
    assert json.loads(tight.stdout)["hit_tokens"] == 0
    both = run("check", source, "--num-gpu-blocks", "7", "--capacity-tokens", "4096")
    assert both.exit_code == 2 and "not both" in both.stderr
    sglang = run("check", source, "--num-gpu-blocks", "7", "--engine", "sglang")
    assert sglang.exit_code == 2 and "--engine vllm" in sglang.stderr


def test_reply_tokens_stand_for_a_missing_output_length(tmp_path, run):
    """Generated tokens take blocks of vLLM's pool: --reply-tokens says how many where the
    records do not."""
    rows = [{"input_length": 100, "hash_ids": [i, i + 1]} for i in (0, 10, 0)]
    bare = write_jsonl(tmp_path / "bare.jsonl", rows)
    given = write_jsonl(tmp_path / "given.jsonl", [{**r, "output_length": 300} for r in rows])

    def hits(path, *args):
        result = run("check", path, "--hash-block-size", "64", "--num-gpu-blocks", "8",
                     "--json", *args)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["hit_tokens"]

    assert hits(bare) == 64  # 7 blocks of room: the third request finds the first's
    assert hits(given) == 0  # 300 generated tokens: a request holds 7 blocks, all there are
    assert hits(bare, "--reply-tokens", "300") == hits(given)


EXAMPLES = Path(__file__).resolve().parents[2] / "prompts"


def _repeats_in(rows: list[dict]) -> int:
    """Profiled requests (no warmup) that send a (record, turn) an earlier one sent."""
    seen: set[tuple[int, int]] = set()
    repeats = 0
    for row in rows:
        key = (row["record"], row["turn"])
        repeats += key in seen
        seen.add(key)
    return repeats


@pytest.mark.parametrize(("name", "requests"), [("trace.jsonl.example", 60),
                                                ("conversations.jsonl.example", 50)])
def test_check_says_how_many_requests_wrap_around(tmp_path, run, name, requests):
    path = EXAMPLES / name
    records = len(read_jsonl(path))
    rows_path = tmp_path / "rows.jsonl"
    result = run("check", path, "--tokenizer", "cl100k_base", "--requests", requests,
                 "--per-request", rows_path, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    rows = read_jsonl(rows_path)
    one_pass = len({(row["record"], row["turn"]) for row in rows})
    assert summary["requests_per_pass"] == one_pass
    repeats = _repeats_in(rows)
    assert repeats == requests - one_pass > 0
    assert summary["requests_repeating_a_prompt"] == repeats
    copies = -(-requests // one_pass)
    assert summary["copies_for_distinct_prompts"] == copies
    text = run("check", path, "--tokenizer", "cl100k_base", "--requests", requests).stdout
    size = (f"a {records}-record file;" if one_pass == records
            else f"a {records}-record file of {one_pass} requests;")
    assert (f"{repeats} requests resend a prompt: AIPerf wraps around {size} use nonce "
            f"--copies {copies} for distinct prompts") in text
    # nonce --copies as suggested: the same run repeats nothing
    nonced = tmp_path / "nonced.jsonl"
    assert run("nonce", path, nonced, "--copies", copies, "--seed", "3").exit_code == 0
    again = json.loads(run("check", nonced, "--tokenizer", "cl100k_base", "--requests",
                           requests, "--json").stdout)
    assert again["requests_repeating_a_prompt"] == 0
    assert "copies_for_distinct_prompts" not in again


def test_warmup_takes_the_first_requests_of_the_pass(run):
    path = EXAMPLES / "trace.jsonl.example"
    records = len(read_jsonl(path))

    def check(warmup: int, requests: int) -> dict:
        result = run("check", path, "--tokenizer", "cl100k_base", "--warmup", warmup,
                     "--requests", requests, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    assert check(5, records - 5)["requests_repeating_a_prompt"] == 0  # one pass exactly
    assert check(5, records)["requests_repeating_a_prompt"] == 5
    # warmup beyond the file: every profiled request repeats one warmup sent
    late = check(records + 3, 7)
    assert late["requests_repeating_a_prompt"] == 7
    assert late["copies_for_distinct_prompts"] == -(-(records + 10) // records)
    text = run("check", path, "--tokenizer", "cl100k_base").stdout
    assert "repeat a prompt" not in text


def test_a_pipe_check_puts_the_repeats_in_the_manifest(tmp_path, run):
    path = EXAMPLES / "trace.jsonl.example"
    out = tmp_path / "out.jsonl"
    assert run("pipe", "read", path, "check", "--tokenizer", "cl100k_base", "--requests", "45",
               "write", out).exit_code == 0
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    summary = manifest["steps"][0]["info"]["summary"]
    assert summary["requests_repeating_a_prompt"] == 45 - len(read_jsonl(path))
