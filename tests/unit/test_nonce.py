"""The nonce operation: placement, determinism, index addressing, copies, hash ids,
and the promise that prompts differ within their first 6 cl100k_base tokens."""

from __future__ import annotations

import itertools

import pytest
from helpers import write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from promptkit import add_nonces
from promptkit.core.errors import InvalidRecordError
from promptkit.core.records import Message, Record, first_text
from promptkit.formats import FORMATS
from promptkit.ops.nonce import HASH_ID_BASE, KINDS, NonceMaker


def user(text: str, **kw) -> Record:
    return Record(messages=[Message("user", text)], **kw)


def chat(*pairs: tuple[str, str], **kw) -> Record:
    return Record(messages=[Message(role, text) for role, text in pairs], **kw)


def texts(records) -> list[list[str]]:
    return [[m.content for m in r.messages] for r in records]


def test_default_nonce_is_a_uuid_then_a_newline_before_the_prompt():
    [record] = add_nonces([user("Hello")], seed=1)
    nonce, rest = record.messages[0].content.split("\n", 1)
    assert rest == "Hello"
    assert len(nonce) == 36 and nonce[14] == "4" and nonce.count("-") == 4


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_nonces_other_seed_other_nonces(kind):
    def make(seed):
        records = [user(f"q{i}") for i in range(50)]
        return texts(add_nonces(records, kind=kind, seed=seed, start_time="2026-01-01T00:00:00Z"))

    assert make(7) == make(7)
    if kind != "timestamp":  # a timestamp nonce is made of its start time, not the seed
        assert make(7) != make(8)


@pytest.mark.parametrize("kind", KINDS)
def test_nonces_are_index_addressed_so_shards_match_a_sequential_run(kind):
    options = dict(kind=kind, seed=11, start_time="2026-01-01T00:00:00Z", copies=2)
    sequential = texts(add_nonces([user(f"q{i}") for i in range(40)], **options))
    shards = []
    for start in (0, 13, 29):
        stop = {0: 13, 13: 29, 29: 40}[start]
        shard = [user(f"q{i}") for i in range(start, stop)]
        shards += texts(add_nonces(shard, first_index=start, **options))
    assert shards == sequential


def test_timestamp_nonce_puts_the_per_record_part_first():
    records = add_nonces([user("a"), user("b")], kind="timestamp", seed=0,
                         start_time="2026-11-22T10:12:01Z", time_step_us=1500)
    assert [r.messages[0].content for r in records] == [
        "000000@2026-11-22T10:12:01.000000Z\na",
        "000001@2026-11-22T10:12:01.001500Z\nb",
    ]


def test_random_nonce_has_the_chosen_length():
    [record] = add_nonces([user("x")], kind="random", seed=3, length=40)
    nonce = record.messages[0].content.split("\n")[0]
    assert len(nonce) == 40 and nonce.isalnum()


def test_template_places_text_around_the_nonce():
    [record] = add_nonces([user("x")], seed=3, template="[{nonce}] ")
    assert record.messages[0].content.startswith("[") and record.messages[0].content.endswith("] x")


def test_at_start_goes_before_the_first_message_whatever_its_role():
    [record] = add_nonces([chat(("system", "S"), ("user", "U"))], seed=1)
    assert record.messages[0].content.endswith("\nS") and record.messages[1].content == "U"


def test_at_user_keeps_a_shared_system_prompt_shared():
    records = list(add_nonces([chat(("system", "S"), ("user", "U")) for _ in range(3)], seed=1,
                              at="user"))
    assert {r.messages[0].content for r in records} == {"S"}
    assert len({r.messages[1].content for r in records}) == 3


def test_at_system_prefixes_or_creates_the_system_message():
    has, lacks = add_nonces([chat(("system", "S"), ("user", "U")), user("U")], seed=1,
                            at="system")
    assert has.messages[0].content.endswith("\nS") and has.messages[1].content == "U"
    assert [m.role for m in lacks.messages] == ["system", "user"]
    assert "\n" not in lacks.messages[0].content and lacks.messages[1].content == "U"


def test_at_every_turn_marks_the_start_and_every_user_turn_differently():
    [record] = add_nonces(
        [chat(("system", "S"), ("user", "U1"), ("assistant", "A"), ("user", "U2"))],
        seed=1, at="every-turn")
    contents = [m.content for m in record.messages]
    assert contents[2] == "A"
    nonces = [c.split("\n")[0] for c in (contents[0], contents[1], contents[3])]
    assert len(set(nonces)) == 3


def test_at_salt_changes_no_text_and_gives_each_conversation_one_salt():
    records = list(add_nonces(
        [user("a"), user("b", session_id="s"), user("c", session_id="s"),
         user("d", extra={"temperature": 0})], seed=1, at="salt"))
    assert texts(records) == [["a"], ["b"], ["c"], ["d"]]
    salts = [r.extra["cache_salt"] for r in records]
    assert salts[1] == salts[2] and len(set(salts)) == 3
    assert records[3].extra["temperature"] == 0


def test_lines_continuing_a_session_keep_the_first_lines_nonce():
    records = list(add_nonces([user("a", session_id="s"), user("b", session_id="s"),
                               user("c")], seed=1))
    assert records[0].messages[0].content.endswith("\na")
    assert records[1].messages[0].content == "b"
    assert records[2].messages[0].content.endswith("\nc")


def test_copies_are_distinct_and_keep_sessions_apart():
    records = list(add_nonces([user("a", session_id="s"), user("b", session_id="s")],
                              seed=1, copies=3))
    assert [r.session_id for r in records] == ["s", "s#1", "s#2"] * 2
    assert len({r.messages[0].content for r in records[:3]}) == 3
    assert all(r.messages[0].content.count("\n") == 1 for r in records[:3])
    assert [r.messages[0].content for r in records[3:]] == ["b"] * 3


def test_hash_id_records_get_a_fresh_unique_first_id():
    records = [Record(input_length=1024, hash_ids=[0, 5]) for _ in range(4)]
    records.append(Record(input_length=30))
    out = list(add_nonces(records, seed=5, copies=2))
    firsts = [r.hash_ids[0] for r in out]
    assert len(set(firsts)) == len(firsts) == 10
    assert all(HASH_ID_BASE <= f < 2**53 for f in firsts)
    assert all(r.hash_ids[1:] == [5] for r in out[:8])
    assert out[8].hash_ids == [firsts[8]]  # input_length alone: one fresh block


def test_hash_id_records_have_no_user_message():
    with pytest.raises(InvalidRecordError, match="use --at start"):
        list(add_nonces([Record(input_length=4, hash_ids=[1])], seed=1, at="user"))


def test_a_record_without_a_user_message_is_an_error_for_at_user():
    with pytest.raises(InvalidRecordError, match="no user message"):
        list(add_nonces([chat(("system", "only"))], seed=1, at="user"))


@pytest.mark.parametrize("bad", [dict(kind="guid"), dict(at="middle"), dict(template="x"),
                                 dict(copies=0), dict(kind="random", length=0)])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        list(add_nonces([user("x")], seed=1, **bad))


content_strategy = st.one_of(
    st.text(),
    st.lists(st.text(), min_size=1, max_size=3),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}), min_size=1,
             max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(content=content_strategy, kind=st.sampled_from(KINDS),
       at=st.sampled_from(["start", "user", "every-turn", "system"]),
       template=st.sampled_from(["{nonce}\n", "[{nonce}] ", "id={nonce};"]),
       seed=st.integers(0, 2**63 - 1), index=st.integers(0, 10**7))
def test_after_the_nonce_the_original_content_is_unchanged(content, kind, at, template, seed,
                                                           index):
    original = first_text(content)
    [record] = add_nonces([Record(messages=[Message("user", content)])], kind=kind, seed=seed,
                          at=at, template=template, first_index=index,
                          start_time="2026-01-01T00:00:00Z")
    message = record.messages[-1]
    text = first_text(message.content)
    if at == "system":
        assert message.content == content
        return
    assert text is not None
    prefix = template.replace("{nonce}", NonceMaker(kind, seed, start_time="2026-01-01T00:00:00Z")
                              .make(index))
    if original is not None and text == prefix + original:
        pass
    else:  # a leading non-text part: the nonce became its own first part
        assert text == prefix
    # Everything after the nonce is exactly what was there.
    if isinstance(content, str):
        assert message.content == prefix + content
    else:
        assert len(message.content) in (len(content), len(content) + 1)


def max_shared_leading_tokens(prompts: list[str], encoding) -> int:
    """The most leading tokens any two prompts share (max LCP of sorted neighbours)."""
    tokens = sorted(encoding.encode_ordinary_batch(prompts))
    best = 0
    for a, b in itertools.pairwise(tokens):
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        best = max(best, n)
    return best


@pytest.mark.parametrize("kind", KINDS)
def test_ten_thousand_prompts_share_at_most_six_leading_tokens(kind, cl100k):
    # The worst case: every record has the same text, so only the nonce tells them apart.
    records = [user("Summarize the following article in three sentences.") for _ in range(10_000)]
    out = add_nonces(records, kind=kind, seed=2026, start_time="2026-11-22T10:12:01Z")
    prompts = [r.messages[0].content for r in out]
    assert len(set(prompts)) == 10_000
    assert max_shared_leading_tokens(prompts, cl100k) <= 6


def test_the_measure_catches_a_date_first_timestamp(cl100k):
    # Why timestamp nonces put the record number first: written date-first, 10,000
    # timestamps a millisecond apart share far more than 6 tokens.
    prompts = [f"2026-11-22T10:12:{i // 1000:02d}.{i % 1000:03d}000Z\nSame text"
               for i in range(10_000)]
    assert max_shared_leading_tokens(prompts, cl100k) > 6


def test_every_nonced_format_stays_loadable_by_aiperf():
    import aiperf_tool

    models = {"single_turn": "SingleTurn", "multi_turn": "MultiTurn",
              "mooncake_trace": "MooncakeTrace"}
    rows = {
        "single_turn": {"text": "q", "output_length": 3},
        "multi_turn": {"session_id": "x", "turns": [{"text": "a"}, {"text": "b"}]},
        "mooncake_trace": {"timestamp": 0, "input_length": 700, "hash_ids": [0, 1]},
    }
    for fmt, model in models.items():
        written = []
        for at in ("start", "every-turn", "salt"):
            record = FORMATS[fmt].parse(rows[fmt])
            [done] = add_nonces([record], seed=4, at=at)
            written.append(FORMATS[fmt].dump(done))
        aiperf_tool.validate(model, written)


def test_sessions_answer_as_a_set_of_strings_does(monkeypatch):
    """Sessions (strings, then digests beyond a few) against a plain set, operation by
    operation, on random ids that repeat."""
    import random

    from promptkit.ops.nonce import Sessions

    monkeypatch.setattr(Sessions, "RECENT", 5)
    rng = random.Random(3)
    ids = [f"s{i}" for i in range(40)] + ["ünï", "\udcff"]  # a lone surrogate too
    one, two = Sessions(), Sessions()
    set_one: set[str] = set()
    set_two: set[str] = set()
    for _ in range(3000):
        which = rng.random()
        session = rng.choice(ids)
        ours, model = (one, set_one) if rng.random() < 0.5 else (two, set_two)
        if which < 0.5:
            ours.add(session)
            model.add(session)
        elif which < 0.6:
            ours.discard(session)
            model.discard(session)
        elif which < 0.62:
            one.update(two)
            set_one |= set_two
        assert (session in ours) == (session in model)
        assert len(ours) == len(model)
        assert one.isdisjoint(two) == set_one.isdisjoint(set_two)
        assert two.isdisjoint(one) == set_two.isdisjoint(set_one)
        picked = set(rng.sample(ids, 3))
        assert one.isdisjoint(picked) == set_one.isdisjoint(picked)
    assert one.old is not None and two.old is not None  # digests were made and used


@pytest.mark.parametrize("workers", ["1", "2"])
def test_many_conversations_give_the_bytes_a_small_memory_gives(workers, monkeypatch, tmp_path,
                                                               run, small_chunks):
    from promptkit.ops.nonce import Sessions

    rows = []
    for i in range(400):  # conversations that go on over many chunks
        rows.append({"text": f"turn of {i % 90}", "session_id": f"c{i % 90}", "role": "user"})
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    outs = []
    for recent in (1 << 16, 3):
        monkeypatch.setattr(Sessions, "RECENT", recent)
        for at in ("start", "user"):
            out = tmp_path / f"{recent}-{at}.jsonl"
            result = run("nonce", source, out, "--seed", "2", "--at", at, "--workers", workers)
            assert result.exit_code == 0, result.stderr
            outs.append(out.read_bytes())
    assert outs[:2] == outs[2:]
    assert sum(line.count(b"-4") > 0 for line in outs[0].splitlines()) == 90
