"""The splice writer (``output.writer`` ``splice/1``, :mod:`promptkit.runner.writers`) against
the writer it replaces for plain nonce runs (``encode``: every record encoded again).

The promise: the bytes may differ only in formatting. Read as AIPerf reads the file
(text mode, universal newlines, blank lines left out, each line parsed), every output
line is exactly what the encode writer writes (as Python objects, types included, key
order aside); records, distinct records, skipped lines and errors are the same. A line
the splicer takes keeps its own bytes, with only the nonce inserted."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import ROOT, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import promptkit
from promptkit import Step
from promptkit.ops.nonce import KINDS

#: The positions where a nonce is an insertion into a single_turn text (the splicer's).
AT = ("start", "user", "system", "every-turn")
START_TIME = "2026-01-01T00:00:00Z"


# ---------------------------------------------------------------- running both writers


@dataclass
class Outcome:
    """One run: the manifest and the output's bytes, or the error it raised."""

    manifest: dict[str, Any] | None
    data: bytes | None
    error: tuple[str, str] | None


def run_writer(source: Path | str, out: Path, writer: str, *, skip_invalid: bool = False,
               workers: int = 1, **params: Any) -> Outcome:
    """``promptkit.run`` of one nonce step over ``source`` with ``writer``."""
    if out.exists():
        out.unlink()
    step = Step("nonce", {"seed": 7, "start_time": START_TIME, **params})
    try:
        manifest = promptkit.run(str(source), str(out), [step], writer=writer,
                                 skip_invalid=skip_invalid, workers=workers)
    except Exception as exc:  # noqa: BLE001 (any error: the other writer's must be the same)
        return Outcome(None, None, (type(exc).__name__, str(exc)))
    return Outcome(manifest, out.read_bytes(), None)


def strict(value: Any) -> Any:
    """``value`` compared exactly: a bool is no int, an int no float, and -0.0 no 0.0
    (dict order aside)."""
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strict(item) for item in value]
    if isinstance(value, bool | int):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", repr(value))
    return value


def as_aiperf_reads(data: bytes) -> list[Any]:
    """The lines of an output as AIPerf's loader reads them (``open(path,
    encoding="utf-8")``: universal newlines; blank lines left out; each line parsed),
    parsed by the standard library (exact for integers beyond 64 bits), compared
    strictly. Every line ends with a newline and none is blank, as the encode writer
    writes them."""
    assert data == b"" or data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert all(line.strip() for line in lines), data
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")  # newline=None, as open()
    read = [json.loads(line) for line in text if line.strip()]
    assert len(read) == len(lines), "a line AIPerf would read as more than one"
    return [strict(obj) for obj in read]


def account(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a manifest says of a run, but for which writer made the output and where."""
    return {"inputs": manifest["inputs"], "records": manifest["output"]["records"],
            "format": manifest["output"]["format"], "steps": manifest["steps"],
            "skipped": manifest["skipped"], "warnings": manifest["warnings"],
            "distinct": manifest["aiperf"]["distinct_records"]}


def assert_same(spliced: Outcome, encoded: Outcome) -> None:
    """The splice writer's run said and wrote what the encode writer's did."""
    assert spliced.error == encoded.error
    if encoded.error is not None:
        return
    assert spliced.manifest is not None and encoded.manifest is not None
    assert spliced.data is not None and encoded.data is not None
    assert encoded.manifest["output"]["writer"] == "encode"
    assert spliced.manifest["output"]["writer"] == "splice/1"
    assert account(spliced.manifest) == account(encoded.manifest)
    assert as_aiperf_reads(spliced.data) == as_aiperf_reads(encoded.data)
    assert spliced.manifest["output"]["sha256"] == hashlib.sha256(spliced.data).hexdigest()


def both(source: Path | str, tmp_path: Path, **options: Any) -> tuple[Outcome, Outcome]:
    """The splice writer's and the encode writer's runs over ``source``, checked the same."""
    spliced = run_writer(source, tmp_path / "spliced.jsonl", "splice/1", **options)
    encoded = run_writer(source, tmp_path / "encoded.jsonl", "encode", **options)
    assert_same(spliced, encoded)
    return spliced, encoded


# ---------------------------------------------------------------- lines as people write them


@dataclass(frozen=True)
class Num:
    """A JSON number as it is spelled in the line."""

    literal: str


@dataclass(frozen=True)
class Style:
    """How one line is written."""

    strings: str  # ascii | utf8 | orjson | escapes
    spacing: str  # default (json.dumps) | compact | random
    spaces: tuple[str, ...]  # what ``random`` spacing chooses from
    shuffle: bool
    lead: str
    trail: str


def dump_string(value: str, style: Style, rnd: Any) -> str:
    if style.strings == "ascii":
        return json.dumps(value, ensure_ascii=True)
    if style.strings == "utf8":
        return json.dumps(value, ensure_ascii=False)
    if style.strings == "orjson":
        return orjson.dumps(value).decode()
    out = ['"']  # escapes: any character may be a \\u escape, a slash may be \\/
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "/" and rnd.random() < 0.5:
            out.append("\\/")
        elif code < 0x20 or rnd.random() < 0.3:
            units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10),
                                                   0xDC00 + ((code - 0x10000) & 0x3FF)]
            out.extend(("\\u%04X" if rnd.random() < 0.5 else "\\u%04x") % u for u in units)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump(value: Any, style: Style, rnd: Any) -> str:
    """``value`` as JSON text in ``style`` (an object is a list of key-value pairs, so a
    line may hold a key twice)."""
    if isinstance(value, Num):
        return value.literal
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return dump_string(value, style, rnd)
    if isinstance(value, Obj):
        pairs = list(value.pairs)
        if style.shuffle:
            rnd.shuffle(pairs)
        items = [dump_string(k, style, rnd) + gap(style, rnd, ":") + dump(v, style, rnd)
                 for k, v in pairs]
        return "{" + inner(items, style, rnd) + "}"
    assert isinstance(value, list)
    return "[" + inner([dump(v, style, rnd) for v in value], style, rnd) + "]"


@dataclass(frozen=True)
class Obj:
    pairs: tuple[tuple[str, Any], ...]


def gap(style: Style, rnd: Any, sep: str) -> str:
    """A separator and the white space JSON allows around it."""
    if style.spacing == "compact":
        return sep
    if style.spacing == "default":
        return sep + " "
    return rnd.choice(style.spaces) + sep + rnd.choice(style.spaces)


def inner(items: list[str], style: Style, rnd: Any) -> str:
    if not items:
        return rnd.choice(style.spaces) if style.spacing == "random" else ""
    edge = (lambda: rnd.choice(style.spaces)) if style.spacing == "random" else (lambda: "")
    return edge() + gap(style, rnd, ",").join(items) + edge()


#: Pieces of texts that break naive splicing: quotes, backslashes, escapes, control
#: characters, non-ASCII, astral characters, a key inside the text, brackets.
PIECES = ['"', "\\", "\n", "\t", "\r", "\x00", "\x1f", "\x7f", "/", "é", "日本", "😀",
          "\U0010ffff", "\u2028", "\x85", '"text":', '"text": "', '{"text":"x"}', "{", "}",
          "[", "]", '\\"text\\":', " "]
TEXTS = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=4)), max_size=6).map(
    "".join)
#: Numbers in every spelling: signs, zeros, exponents, beyond 64 bits, u64, denormals.
LITERALS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["0", "-0", "0.0", "-0.0", "1e3", "1E3", "1e-2", "1E-2", "2.5e+2",
                     "-1.5E+10", "1.0", "100.000", "18446744073709551615",
                     "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
                     "123456789012345678901234567890", "1e19", "5e-324",
                     "0.1000000000000000055511151231257827", "1.7976931348623157e308"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(2**63, 2**80).map(str),
)
NUMBERS = LITERALS.map(Num)
TURN_KEYS = {"text", "texts", "role", "session_id", "timestamp", "delay", "output_length",
             "extra"}
OTHER_KEYS = st.one_of(
    st.sampled_from(["meta", "id", "tags", "Text", "text ", 'a"text', "a\\", "{k}", "[k]",
                     "te/xt", "日"]),
    st.text(max_size=5).filter(lambda key: key not in TURN_KEYS))
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, TEXTS),
    lambda inside: st.one_of(
        st.lists(inside, max_size=3),
        st.lists(st.tuples(st.one_of(st.just("text"), OTHER_KEYS), inside), max_size=3,
                 unique_by=lambda kv: kv[0]).map(lambda pairs: Obj(tuple(pairs)))),
    max_leaves=6)
#: ``extra`` objects, with and without a cache_salt (a string, as AIPerf sends it).
EXTRAS = st.lists(st.one_of(st.tuples(st.just("cache_salt"), TEXTS),
                            st.tuples(st.sampled_from(["temperature", "text", "n"]), VALUES)),
                  max_size=3, unique_by=lambda kv: kv[0]).map(lambda pairs: Obj(tuple(pairs)))
SESSIONS = st.sampled_from(["s0", "s1", "s2", 's"3', "日"])
NULLABLE = ["role", "session_id", "output_length", "timestamp", "delay", "extra", "meta"]


@st.composite
def records(draw: Any) -> Obj:
    """A single_turn record: text, and any of role, session, output length, a time,
    extra, unknown fields (nested, some holding a "text" key) and fields set to null."""
    pairs: dict[str, Any] = {"text": draw(TEXTS)}
    if draw(st.booleans()):
        pairs["role"] = draw(st.sampled_from(["user", "assistant", "system"]))
    if draw(st.booleans()):
        pairs["session_id"] = draw(SESSIONS)
    if draw(st.integers(0, 2)) == 0:
        pairs["output_length"] = Num(str(draw(st.integers(1, 2**40))))
    for when in draw(st.sampled_from([[], ["timestamp"], ["delay"], ["timestamp", "delay"]])):
        pairs[when] = draw(NUMBERS)
    if draw(st.integers(0, 2)) == 0:
        pairs["extra"] = draw(EXTRAS)
    for key, value in draw(st.lists(st.tuples(OTHER_KEYS, VALUES), max_size=2)):
        pairs[key] = value
    for key in draw(st.lists(st.sampled_from(NULLABLE), max_size=2)):
        pairs[key] = None
    return Obj(tuple(pairs.items()))


STYLES = st.builds(
    Style,
    strings=st.sampled_from(["ascii", "utf8", "orjson", "escapes"]),
    spacing=st.sampled_from(["default", "compact", "random"]),
    spaces=st.sampled_from([("", " "), ("", " ", "  ", "\t"), ("", " ", "\r")]),
    shuffle=st.booleans(),
    lead=st.sampled_from(["", "", " ", "  ", "\t"]),
    trail=st.sampled_from(["", "", " ", "\t "]),
)
#: Lines no reader takes: not JSON, not an object, a key twice, no text, bad fields,
#: not UTF-8.
BAD = [b'{"text": "unterminated', b"[1, 2]", b'"just a string"', b'{"text": "a", "text": "b"}',
       b'{"text": null}', b'{"text": 5}', b'{"text": "a", "output_length": 0}',
       b'{"text": "a", "texts": ["b"]}', b'{"text": "a", "role": 5}', b'{"text": "\xff"}',
       b'{"meta": {"k": 1, "k": 2}, "text": "a"}', b'{"text": "a"} {"text": "b"}']


@st.composite
def files(draw: Any) -> bytes:
    """A file of single_turn lines, each in its own style: blank lines between them, CRLF
    or LF, a BOM or none, a final newline or none, now and then a bad line."""
    rnd = draw(st.randoms(use_true_random=False))
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["record"] * 8 + ["blank", "bad"]))
        if kind == "record":
            style = draw(STYLES)
            line = (style.lead + dump(draw(records()), style, rnd) + style.trail).encode()
        elif kind == "blank":
            line = draw(st.sampled_from([b"", b" ", b"\t", b"\r"]))
        else:
            line = draw(st.sampled_from(BAD))
        lines.append(line + draw(st.sampled_from([b"\n", b"\n", b"\r\n"])))
    data = b"".join(lines)
    if data and draw(st.booleans()):
        data = data.rstrip(b"\r\n")  # no final newline
    if draw(st.integers(0, 4)) == 0:
        data = b"\xef\xbb\xbf" + data
    return data


TEMPLATES = st.sampled_from(["{nonce}\n", "{nonce}", "[{nonce}] ", '«{nonce}»\t"q" \\ ',
                             "{nonce}{nonce}", "😀{nonce}\u2028", "\x01{nonce}\n"])


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=files(), template=TEMPLATES, kind=st.sampled_from(KINDS),
       skip_invalid=st.booleans(), chunk=st.sampled_from([4 << 20, 64, 300]))
def test_the_splice_writer_writes_what_the_encode_writer_writes(data, template, kind,
                                                                skip_invalid, chunk, tmp_path,
                                                                monkeypatch):
    """Over a plain file (read in chunks, small ones too: states and lines carried from
    chunk to chunk) and the same file gzipped (read as a stream of lines)."""
    from promptkit.runner import workers as parallel

    monkeypatch.setattr(parallel, "CHUNK_BYTES", chunk)
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(data))
    for at in AT:
        spliced, _ = both(source, tmp_path, at=at, kind=kind, template=template,
                          skip_invalid=skip_invalid)
        streamed = run_writer(packed, tmp_path / "streamed.jsonl", "splice/1", at=at,
                              kind=kind, template=template, skip_invalid=skip_invalid)
        assert streamed.data == spliced.data
        if spliced.error is not None:
            assert streamed.error is not None
            assert streamed.error[1].replace(str(packed), str(source)) == spliced.error[1]
        else:
            assert streamed.manifest is not None and spliced.manifest is not None
            assert streamed.manifest["output"] == {**spliced.manifest["output"],
                                                   "path": str(tmp_path / "streamed.jsonl")}
            assert streamed.manifest["skipped"] == json.loads(json.dumps(
                spliced.manifest["skipped"]).replace(str(source), str(packed)))


# ---------------------------------------------------------------- the proofs, one by one


def one_line_file(tmp_path: Path, line: bytes) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_bytes(line + b"\n")
    return source


@pytest.mark.parametrize("line", [
    b'{"meta":{"text":"hi"},"text":"hi"}',  # the first "text": is a nested object's
    b'{"tags":["text"],"text":"hi"}',  # a bracket before the key
    b'{"note":"{","text":"hi"}',  # a brace inside a string: not proven either
    b'{"text" : "hi"}',  # a space before the colon: not proven
    b'{"te\\u0078t":"hi"}',  # the key escaped
    b'{"text":"hi","role":null}',  # a null, which the encode writer leaves out
    b'{"text":"hi","id":123456789012345678901234567890}',  # beyond 64 bits
    b'{"text":"hi",\r"role":"user"}',  # a carriage return inside: AIPerf would cut the line
    b'{"text":"hi"}\r\r',  # two at its end: the first would end a line, the second a blank
])
def test_a_line_not_proven_goes_the_usual_way(line, tmp_path):
    spliced, encoded = both(one_line_file(tmp_path, line), tmp_path)
    assert spliced.data == encoded.data  # encoded again, byte for byte


@pytest.mark.parametrize("line", [
    b'{"a\\"text":"x","text":"x"}',  # an escaped quote before text: a key holding it
    b'{"k":"\\\\","text":"x"}',  # an escaped backslash ends a string before the key
    b'{"k":"text","text":"x"}',  # "text" as a value first
    b'{"k":"\\"text\\": \\"","text":"x"}',  # "text": " inside a string, escaped
])
def test_a_text_key_after_escapes_is_found_in_its_place(line, tmp_path):
    spliced, encoded = both(one_line_file(tmp_path, line), tmp_path)
    assert spliced.data != encoded.data  # spliced: the input's own bytes
    out = spliced.data.rstrip(b"\n")
    made = json.loads(out)
    before = json.loads(line)
    nonce = made["text"].removesuffix("x")
    assert made == {**before, "text": nonce + "x"}
    escaped = json.dumps(nonce)[1:-1].encode()
    assert out.replace(escaped, b"", 1) == line


def error_of(outcome: Outcome) -> str:
    assert outcome.error is not None
    return outcome.error[1]


def test_a_key_twice_is_the_same_error_either_way(tmp_path):
    source = one_line_file(tmp_path, b'{"text":"a"}\n{"text":"a","text":"b"}')
    spliced, _ = both(source, tmp_path)
    assert error_of(spliced) == (f"{source}:2: invalid JSON: the key \"text\" appears twice in "
                                 "one object (readers keep one or the other)")
    spliced, _ = both(source, tmp_path, skip_invalid=True)
    assert spliced.manifest is not None and spliced.manifest["skipped"]["count"] == 1


def test_text_null_is_the_same_error_either_way(tmp_path):
    source = one_line_file(tmp_path, b'{"text": null, "role": "user"}')
    spliced, _ = both(source, tmp_path)
    assert "no 'text' or 'texts'" in error_of(spliced)


@pytest.mark.parametrize(("at", "roles", "problem"), [
    ("user", ("user", "assistant"), "no user message to put the nonce in"),  # no user line
    ("system", ("system", "user"), "has a system message"),  # a system message made
])
def test_a_line_the_position_cannot_take_is_the_same_error_either_way(at, roles, problem,
                                                                     tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [
        {"text": "a", "role": roles[0]}, {"text": "b", "role": roles[1]}])
    spliced, _ = both(source, tmp_path, at=at)
    assert problem in error_of(spliced)
    spliced, _ = both(source, tmp_path, at=at, skip_invalid=True)
    assert spliced.manifest is not None and spliced.manifest["output"]["records"] == 1


#: Lines of every role (none too), sessions begun and continued, times: with
#: ``--skip-invalid`` every position has lines it takes and lines it refuses.
ROWS = [{"text": f"Question {i}: \"why\" \\ {'é' * (i % 3)}",
         **({"role": ["user", "system", "assistant"][i % 3]} if i % 5 else {}),
         **({"session_id": f"s{i % 4}"} if i % 2 else {}),
         **({"timestamp": i * 1.5} if i % 4 == 0 else {})} for i in range(12)]


def lines_of(rows: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(row, ensure_ascii=False).encode() for row in rows]


def cli_nonce(run: Any, source: Path | str, out: Path, *args: str, seed: int = 3,
              input: bytes | None = None) -> bytes:
    """``promptkit nonce SOURCE OUT --seed SEED ARGS...`` (the splice writer, where it
    can): OUT's bytes."""
    result = run("nonce", source, out, "--seed", str(seed), "--start-time", START_TIME, *args,
                 input=input)
    assert result.exit_code == 0, result.stderr
    return out.read_bytes()


def manifest_of(out: Path) -> dict[str, Any]:
    return json.loads(Path(f"{out}.manifest.json").read_text())


def outcome_of(out: Path) -> Outcome:
    """A CLI run's manifest and output."""
    return Outcome(manifest_of(out), out.read_bytes(), None)


@pytest.mark.parametrize("at", AT)
def test_crlf_no_final_newline_and_a_bom_change_nothing(at, tmp_path, run):
    lines = lines_of(ROWS)
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b"".join(line + b"\n" for line in lines))
    expected = cli_nonce(run, plain, tmp_path / "plain-out.jsonl", "--at", at, "--skip-invalid")
    assert expected.count(b"\n") >= 4 and b"\r" not in expected
    variants = {
        "crlf": b"".join(line + b"\r\n" for line in lines),
        "no-final-newline": b"\n".join(lines),
        "crlf-no-final-newline": b"\r\n".join(lines),
        "bom": b"\xef\xbb\xbf" + b"".join(line + b"\n" for line in lines),
        "bom-crlf": b"\xef\xbb\xbf" + b"".join(line + b"\r\n" for line in lines),
    }
    for name, data in variants.items():
        source = tmp_path / f"{name}.jsonl"
        source.write_bytes(data)
        out = tmp_path / f"{name}-out.jsonl"
        assert cli_nonce(run, source, out, "--at", at, "--skip-invalid") == expected, name
        assert_same(outcome_of(out), run_writer(source, tmp_path / "encoded.jsonl", "encode",
                                                at=at, seed=3, skip_invalid=True))


def test_skip_invalid_skips_the_same_lines(tmp_path, run):
    lines = lines_of(ROWS[:6])
    lines[1:1] = [b"{not json", b'{"text": "a", "text": "b"}', b'{"text": null}', b"[1]"]
    lines[8:8] = [b'{"text": "x", "output_length": -1}', b'{"text": "\xff"}', b"  ", b""]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    cli_nonce(run, source, out, "--skip-invalid")
    encoded = run_writer(source, tmp_path / "encoded.jsonl", "encode", seed=3,
                         skip_invalid=True)
    assert_same(outcome_of(out), encoded)
    assert manifest_of(out)["skipped"]["count"] == 6
    result = run("nonce", source, tmp_path / "x.jsonl", "--seed", "3")
    assert result.exit_code == 1
    error = error_of(run_writer(source, tmp_path / "encoded.jsonl", "encode"))
    assert error.startswith(f"{source}:2: invalid JSON")
    assert result.stderr.splitlines() == [f"promptkit: {error}"]


@pytest.mark.parametrize("copies", [1, 3000])
def test_compressed_input_and_stdin_give_the_bytes_of_the_plain_file(copies, tmp_path, run):
    """A small stream, and one of megabytes (read a piece at a time: the lines of each
    piece keep their numbers, so their nonces), without a final newline."""
    data = (b"\n".join(lines_of(ROWS)) + b"\n  \n" + b'{"text" : "spaced"}\r\n') * copies
    data = data.rstrip(b"\r\n")
    assert len(data) > 2 * (1 << 20) or copies == 1
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(data)
    expected = cli_nonce(run, plain, tmp_path / "plain-out.jsonl")
    assert_same(outcome_of(tmp_path / "plain-out.jsonl"),
                run_writer(plain, tmp_path / "encoded.jsonl", "encode", seed=3))
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(gzip.compress(data))
    out = tmp_path / "gz-out.jsonl"
    assert cli_nonce(run, packed, out) == expected
    assert manifest_of(out)["output"]["writer"] == "splice/1"
    out = tmp_path / "stdin-out.jsonl"
    assert cli_nonce(run, "-", out, input=data) == expected
    assert manifest_of(out)["output"]["writer"] == "splice/1"


def big_file(path: Path, size: int) -> Path:
    """A single_turn file of ``size`` bytes or more: sessions that run through the whole
    file (so chunks in workers meet conversations begun in chunks before), odd spacing,
    CRLF and blank lines now and then, a few lines the splicer leaves to the encoder."""
    body = "Tell me everything you know about the topic, then \\\"summarize\\\" it. " * 2
    lines = []
    total = i = 0
    while total < size:
        session = f', "session_id": "s{i % 997}"' if i % 3 == 0 else ""
        line = f'{{"text": "{i}: {body}", "role": "user"{session}}}'
        if i % 101 == 0:
            line = line.replace('"text": ', '"text" :  ')  # not proven: encoded again
        if i % 53 == 0:
            line = "  " + line + "\r"
        if i % 211 == 0:
            line += "\n"
        lines.append(line)
        total += len(line) + 1
        i += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_workers_give_the_same_bytes_on_a_large_file(tmp_path, run, monkeypatch):
    from promptkit.runner import workers as parallel

    ran: list[int] = []
    real = parallel.run_file

    def spy(path, job, sink, workers, *rest):
        ran.append(workers)
        return real(path, job, sink, workers, *rest)

    monkeypatch.setattr(parallel, "run_file", spy)
    source = big_file(tmp_path / "big.jsonl", parallel.MIN_PARALLEL_BYTES + (1 << 20))
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert cli_nonce(run, source, one, "--workers", "1") == cli_nonce(
        run, source, two, "--workers", "2")
    assert ran == [1, 2]  # in this process, then in two workers
    first, second = manifest_of(one), manifest_of(two)
    assert first["output"]["writer"] == second["output"]["writer"] == "splice/1"
    assert account(first) == account(second)
    assert first["output"]["records"] > 80_000


@pytest.mark.parametrize("at", AT)
def test_chunks_in_workers_write_what_the_encode_writer_writes(at, tmp_path, small_chunks):
    """Chunks of 2 KiB in two workers: conversations begun in one chunk continue in
    later ones (a chunk that meets one is done again, in order), bad lines skipped."""
    lines = lines_of(ROWS * 40)
    lines[7] = b'{"text": "a", "text": "b"}'
    lines[300] = b'  {"text" :"not proven", "session_id": "s1"}\r'
    lines[301] = b""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines))
    spliced, _ = both(source, tmp_path, at=at, skip_invalid=True, workers=2)
    assert small_chunks == [2, 2]  # both writers ran in the workers
    assert spliced.manifest is not None and spliced.manifest["skipped"]["count"] >= 1
    if at != "user":  # (--at user: see the next test)
        in_order = run_writer(source, tmp_path / "one.jsonl", "splice/1", at=at,
                              skip_invalid=True)
        assert in_order.data == spliced.data


@pytest.mark.parametrize("writer", ["splice/1", "encode"])
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_workers_continue_a_conversation_begun_in_an_earlier_chunk(writer, skip_invalid,
                                                                    tmp_path, small_chunks):
    rows = [{"text": "x" * 60 + str(i), "role": "user"} for i in range(100)]
    rows[3] = {"text": "begin", "role": "user", "session_id": "s"}
    rows[90] = {"text": "reply", "role": "assistant", "session_id": "s"}  # a later chunk
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    one = run_writer(source, tmp_path / "one.jsonl", writer, at="user",
                     skip_invalid=skip_invalid)
    assert one.error is None and one.manifest is not None
    assert one.manifest["output"]["records"] == 100
    two = run_writer(source, tmp_path / "two.jsonl", writer, at="user",
                     skip_invalid=skip_invalid, workers=2)
    assert small_chunks[-1] == 2  # the second run, in two workers
    assert two.error is None and two.data == one.data


def test_many_shards_give_the_bytes_of_their_concatenation(tmp_path, run):
    lines = lines_of(ROWS * 3)  # sessions continue from shard to shard
    lines[4] = b'  {"text" :"not proven", "session_id": "s1"}\r'
    lines[20] = b'{"text": null}'
    folder = tmp_path / "parts"
    folder.mkdir()
    cuts = [0, 1, 1, 9, 10, 23, len(lines)]  # uneven, one line, an empty shard
    whole = b""
    for k, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        data = b"".join(line + b"\n" for line in lines[a:b])
        if k == 3:
            data = b"\xef\xbb\xbf" + data  # hashed, never read
        (folder / f"part-{k:05d}.jsonl").write_bytes(data)
        whole += data.removeprefix(b"\xef\xbb\xbf")
    concatenated = tmp_path / "all.jsonl"
    concatenated.write_bytes(whole)
    for at in AT:
        one = tmp_path / "all-out.jsonl"
        expected = cli_nonce(run, concatenated, one, "--at", at, "--skip-invalid")
        assert_same(outcome_of(one), run_writer(concatenated, tmp_path / "encoded.jsonl",
                                                "encode", seed=3, at=at, skip_invalid=True))
        many = tmp_path / "many-out.jsonl"
        assert cli_nonce(run, folder, many, "--at", at, "--skip-invalid") == expected
        assert manifest_of(many)["output"]["writer"] == "splice/1"
        assert account(manifest_of(many))["skipped"]["count"] == manifest_of(one)["skipped"][
            "count"]


# ---------------------------------------------------------------- rebuild


#: Lines the two writers write differently: a rebuild with the wrong one differs.
SPACED = [b'{ "text" : "a" ,"role":"user" }', b'{"text":  "b",  "timestamp": 1E3}',
          b'{"output_length": 7, "text": "caf\\u00e9"}']


def test_an_encode_manifest_rebuilds_with_the_encode_writer(tmp_path, run):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(SPACED) + b"\n")
    out = tmp_path / "out.jsonl"
    step = Step("nonce", {"seed": 5, "at": "user"})
    promptkit.run(str(source), str(out), [step], writer="encode",
                  manifest_path=f"{out}.manifest.json")
    recorded = manifest_of(out)
    assert recorded["output"].pop("writer") == "encode"  # as manifests made before splice/1
    Path(f"{out}.manifest.json").write_text(json.dumps(recorded))
    spliced = cli_nonce(run, source, tmp_path / "spliced.jsonl", "--at", "user", seed=5)
    assert spliced != out.read_bytes()  # so a rebuild by the splice writer would differ
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{out}.manifest.json", again)
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == out.read_bytes()
    assert manifest_of(again)["output"]["writer"] == "encode"


def test_a_splice_manifest_rebuilds_with_the_splice_writer(tmp_path, run):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\r\n".join(SPACED))
    out = tmp_path / "out.jsonl"
    made = cli_nonce(run, source, out, "--at", "every-turn")
    encoded = run_writer(source, tmp_path / "encoded.jsonl", "encode", at="every-turn", seed=3)
    assert encoded.data != made  # so a rebuild by the encode writer would differ
    again = tmp_path / "again.jsonl"
    result = run("rebuild", f"{out}.manifest.json", again)
    assert result.exit_code == 0, result.stderr
    assert again.read_bytes() == made
    assert manifest_of(again)["output"]["writer"] == "splice/1"


def test_a_manifest_naming_a_writer_this_promptkit_lacks_is_refused(tmp_path, run):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(SPACED) + b"\n")
    out = tmp_path / "out.jsonl"
    cli_nonce(run, source, out)
    manifest = Path(f"{out}.manifest.json")
    recorded = json.loads(manifest.read_text())
    recorded["output"]["writer"] = "splice/9"
    manifest.write_text(json.dumps(recorded))
    again = tmp_path / "again.jsonl"
    result = run("rebuild", manifest, again)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"promptkit: {manifest}: output.writer 'splice/9': this promptkit writes with encode, "
        "splice/1 (another promptkit version made the file)"]
    assert not [name for name in os.listdir(tmp_path) if name.startswith("again")]


def test_run_refuses_a_writer_it_lacks(tmp_path):
    source = one_line_file(tmp_path, b'{"text": "a"}')
    with pytest.raises(promptkit.PromptkitError, match="unknown writer 'splice/9'"):
        promptkit.run(str(source), str(tmp_path / "out.jsonl"), [Step("nonce", {"seed": 1})],
                      writer="splice/9")


# ---------------------------------------------------------------- the input's own bytes


#: One line as some other tool writes it: ASCII escapes (an astral character as a
#: surrogate pair), odd spacing, a number spelled 1.50E0, white space around it.
ODD = (b'  {"output_length" :20 ,"role":   "user","text":  "caf\\u00e9 \\ud83d\\ude00 '
       b'\\"quoted\\" back\\\\slash\\ttab" ,  "extra":{"temperature":0.50,"text":"{["},'
       b'"id":1.50E0}  \t')


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b""])
def test_a_spliced_line_keeps_its_bytes_but_for_the_nonce(end, tmp_path, run):
    original = "caf\u00e9 \U0001f600 \"quoted\" back\\slash\ttab"
    assert json.loads(ODD) == {"output_length": 20, "role": "user", "text": original,
                               "extra": {"temperature": 0.5, "text": "{["}, "id": 1.5}
    source = tmp_path / "in.jsonl"
    source.write_bytes(ODD + end)
    out = tmp_path / "out.jsonl"
    written = cli_nonce(run, source, out, "--template", "«{nonce}»\n")
    encoded = run_writer(source, tmp_path / "encoded.jsonl", "encode", seed=3,
                         template="«{nonce}»\n")
    assert_same(outcome_of(out), encoded)
    assert encoded.data is not None
    nonce = json.loads(encoded.data)["text"].removesuffix(original)
    assert nonce.startswith("«") and nonce.endswith("»\n") and len(nonce) > 3
    assert written.endswith(b"\n") and written.count(b"\n") == 1
    written = written[:-1]
    where = ODD.index(b'"text":  "') + len(b'"text":  "')
    inserted = written[where:len(written) - (len(ODD) - where)]
    assert written[:where] + written[where + len(inserted):] == ODD
    assert json.loads(b'"' + inserted + b'"') == nonce


def test_plain_json_dumps_lines_all_keep_their_bytes(tmp_path, run):
    lines = lines_of(ROWS)
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    written = cli_nonce(run, source, tmp_path / "out.jsonl", "--at", "every-turn",
                        "--template", "{nonce} ").split(b"\n")
    assert written.pop() == b""
    assert len(written) == len(lines)
    for before, after in zip(lines, written, strict=True):
        where = before.index(b'"text": "') + len(b'"text": "')
        assert after[:where] == before[:where]
        assert after[where + 37:] == before[where:]  # a uuid and a space between


def test_a_salt_that_is_no_string_is_keyed_by_its_json(tmp_path):
    """A ``cache_salt`` list or object (servers want a string; the file is read as it is)
    keys the distinct count by its JSON, the same for both writers, key order aside."""
    rows = [{"text": "first", "session_id": "a"},  # nonce'd: a prompt of its own
            # Later lines of the conversation keep their text: two of them are one prompt.
            {"text": "same", "extra": {"cache_salt": {"b": 1, "a": 2}}, "session_id": "a"},
            {"text": "same", "extra": {"cache_salt": {"a": 2, "b": 1}}, "session_id": "a"},
            {"text": "same", "extra": {"cache_salt": ["a", 2]}, "session_id": "a"},
            {"text": "same", "extra": {"cache_salt": "x"}, "session_id": "a"}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    spliced = run_writer(source, tmp_path / "spliced.jsonl", "splice/1")
    encoded = run_writer(source, tmp_path / "encoded.jsonl", "encode")
    assert spliced.error is None, spliced.error
    assert_same(spliced, encoded)
    assert spliced.manifest is not None
    assert spliced.manifest["aiperf"]["distinct_records"] == 4


# ---------------------------------------------------------------- mooncake_trace


@pytest.mark.parametrize("at", ["start", "every-turn", "user"])
def test_the_shipped_mooncake_traces_take_a_fresh_first_hash_id_in_place(at, tmp_path):
    """The Mooncake conversation trace as shipped (gzipped, json.dumps spacing): every
    line keeps its bytes but its first hash id, which is the one the encode writer
    writes; --at user is refused the same way (hash ids have no user message)."""
    source = ROOT / "data" / "mooncake" / "conversation_trace.jsonl.gz"
    spliced, encoded = both(source, tmp_path, at=at)
    if at == "user":
        assert spliced.error is not None and "no user message" in spliced.error[1]
        return
    assert spliced.data is not None
    before = gzip.decompress(source.read_bytes()).splitlines()
    after = spliced.data.splitlines()
    assert len(after) == len(before) > 10_000
    for old, new in zip(before, after, strict=True):
        head, _, rest = old.partition(b'"hash_ids": [')
        assert new.startswith(head + b'"hash_ids": [')
        fresh, _, tail = new[len(head) + 13:].partition(b",")
        assert int(fresh) >= 1 << 52 and tail == rest.partition(b",")[2]


def test_mooncake_lines_as_people_write_them(tmp_path):
    """Hash ids and text_input lines in several spellings, sessions continuing: the two
    writers agree; the lines the rules take keep their bytes, but for the nonce."""
    lines = [b'{"input_length":64,"hash_ids":[1,2,3,4]}',
             b'{"session_id": "s", "input_length": 64, "hash_ids": [ 7 , 8 ]}',
             b'{"session_id": "s", "input_length": 64, "hash_ids": [7, 8, 9]}',  # continues
             b'{"hash_ids" : [5], "input_length": 16}',  # a space before the colon
             b'{"extra": {"x": [1]}, "input_length": 16, "hash_ids": [5]}',  # nested first
             b'{"input_length": 16, "hash_ids": []}',  # empty: refused either way
             b'{"text_input": "Caf\\u00e9 \\"menu\\"", "output_length": 3}',
             b'{"timestamp": 1.5e3, "text_input": "plain", "weird": [{"text_input": "x"}]}',
             b'{"input_length": 16, "hash_ids": [4503599627370496]}']  # at 2^52: refused
    source = tmp_path / "trace.jsonl"
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    for at in ("start", "every-turn"):
        spliced, _ = both(source, tmp_path, at=at, skip_invalid=True)
        assert spliced.manifest is not None and spliced.data is not None
        assert spliced.manifest["skipped"]["count"] == 2
        out = spliced.data.splitlines()
        assert out[0].startswith(b'{"input_length":64,"hash_ids":[')
        assert out[0].endswith(b",2,3,4]}")
        assert out[1].startswith(b'{"session_id": "s", "input_length": 64, "hash_ids": [ ')
        assert out[5] == b'{"text_input": "' + out[5][16:54] + b'Caf\\u00e9 \\"menu\\"", ' \
            b'"output_length": 3}'
        assert out[6].startswith(b'{"timestamp": 1.5e3, "text_input": "')
        # A session's later line gets the fresh first id of its first line (one a
        # session: its turns share their history's blocks, no other session does).
        fresh = out[1].partition(b'"hash_ids": [ ')[2].partition(b" ")[0]
        assert int(fresh) >= 1 << 52
        assert out[2] == b'{"session_id": "s", "input_length": 64, "hash_ids": [%b, 8, 9]}' % (
            fresh)


def test_a_hash_id_session_gets_one_fresh_first_block_whatever_the_writer(tmp_path,
                                                                         small_chunks):
    """Lines of a mooncake_trace session (hash ids, history included) interleaved with
    other sessions and single lines, across many chunks in worker processes: both writers,
    in one process or in workers, give every line of a session the same fresh first id
    (none shared between sessions), the rest of each line as it was."""
    import random

    rnd = random.Random(4)
    lines, expected = [], []
    for n in range(400):
        session = f"s{rnd.randrange(60)}" if n % 5 else None
        first = rnd.choice([1, 2])  # many sessions begin alike: a shared system prompt
        row = {"input_length": 64, "hash_ids": [first, 10 + n % 7, 100 + n, 200 + n]}
        if session is not None:
            row = {"session_id": session, **row}
        lines.append(json.dumps(row))
        expected.append((session, first))
    source = tmp_path / "trace.jsonl"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    spliced, encoded = both(source, tmp_path)
    in_workers = run_writer(source, tmp_path / "workers.jsonl", "splice/1", workers=3)
    assert in_workers.data == spliced.data and small_chunks
    assert spliced.data is not None
    fresh: dict[Any, set[int]] = {}
    written = spliced.data.decode().splitlines()
    for n, ((session, first), old, new) in enumerate(zip(expected, lines, written,
                                                         strict=True)):
        row, was = json.loads(new), json.loads(old)
        assert row["hash_ids"][1:] == was["hash_ids"][1:] and row["hash_ids"][0] >= 1 << 52
        fresh.setdefault((session, first) if session else n, set()).add(row["hash_ids"][0])
    assert all(len(ids) == 1 for ids in fresh.values())
    assert len(set.union(*fresh.values())) == len(fresh)  # none shared between them
