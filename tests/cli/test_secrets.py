"""No secret of a ``promptkit bench`` user in anything it prints or writes.

A corpus of secret shapes (``tests/secret_shapes.py``: tokens with their real
prefixes, passwords holding ``@ : / ? # , ' "`` and spaces) in every place a user
puts one: lines of the .env file that do not parse, EXTRA_INPUTS (flat, nested,
JSON), the server's URL (user information in every form, a token in the query),
RESET_CACHE hooks (curl ``-u``, headers, a URL, ``sh -c``, an open quote), AIPERF_ARGS
and AIPERF. Hypothesis draws the secrets; each is put in every place, and no piece of
it may appear in stdout, stderr, an error or ``cache_condition.json``, while AIPerf
(a program that records what it gets) still gets the real value.

In-process for the many examples (``bench.bench``, which the CLI calls), then as a
user runs it: ``python -m promptkit bench`` for the places that fail, and one run
of the real AIPerf against the local server with secrets in five places at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import string
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import secret_shapes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai_server import OpenAIServer
from secret_shapes import ALNUM, JOINERS, PREFIXES, Place, leaked, passed_forms, places

from promptkit.commands import bench
from promptkit.core.errors import PromptkitError

BASE = ["# the settings every place shares", "MODEL=test-model", "REQUEST_COUNT=2"]

piece = st.builds(lambda first, rest: first + rest, st.sampled_from(string.ascii_lowercase),
                  st.text(ALNUM, min_size=7, max_size=20))
secrets = st.builds(
    lambda prefix, first, more: prefix + first + "".join(j + p for j, p in more),
    st.sampled_from(PREFIXES), piece,
    st.lists(st.tuples(st.sampled_from(JOINERS), piece), max_size=3))


def in_process(place: Place, folder: Path, *, dry: bool,
               extra: dict[str, str] | None = None) -> tuple[int | None, str, str, str]:
    """``promptkit bench`` as the CLI runs it, in this process: ``(exit code or None
    for an error, stdout, stderr, the error's message)``."""
    env_file = folder / ".env"
    env_file.write_bytes(secret_shapes.env_file(place, BASE))
    out, err = io.StringIO(), io.StringIO()
    code, message = None, ""
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = bench.bench(str(env_file), dry=dry,
                               environ={**place.environment, **(extra or {})})
        except PromptkitError as exc:
            message = str(exc)
    return code, out.getvalue(), err.getvalue(), message


def expected(place: Place, code: int | None, message: str) -> None:
    if place.outcome == "ok":
        assert code == 0, f"{place.name}: {message}"
    elif place.outcome == "error":
        assert code is None and message, place.name


@settings(max_examples=80, deadline=None)
@given(secret=secrets)
def test_no_secret_in_what_a_dry_run_prints(secret: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for place in places(secret):
            code, out, err, message = in_process(place, Path(tmp), dry=True)
            expected(place, code, message)
            assert not leaked(secret, out, err, message), (place.name, out, err, message)


RECORDER = """import json, os, sys
with open(os.environ["PK_RECORD"], "w") as f:
    json.dump({"argv": sys.argv[1:], "HF_TOKEN": os.environ.get("HF_TOKEN")}, f)
"""


@pytest.fixture(scope="module")
def server() -> Any:
    with OpenAIServer(model="test-model") as running:
        yield running


@pytest.mark.slow  # more than 5 s on 2 cores
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secrets)
def test_no_secret_in_what_a_run_prints_and_writes(secret: str, server: OpenAIServer,
                                                   tmp_path: Path) -> None:
    """Runs to the end: the cache reset (the hooks run, against the local server), the
    program AIPerf's command starts (it records what it got: the real values), the
    record written."""
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER, encoding="utf-8")
    program = f"{shlex.quote(sys.executable)} {shlex.quote(str(recorder))}"
    host = server.url.removeprefix("http://")
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # the hooks' folder
        folder = Path(tmp)
        record = folder / "argv.json"
        os.environ["PK_RECORD"] = str(record)
        try:
            for place in places(secret, host, program):
                artifacts = folder / "artifacts"
                extra = {"ARTIFACT_DIR": str(artifacts), "AIPERF": program,
                         **place.environment}
                if "URL" not in place.environment:
                    extra["URL"] = server.url
                code, out, err, message = in_process(place, folder, dry=False, extra=extra)
                written = ""
                if (artifacts / bench.CONDITION_FILE).exists():
                    written = (artifacts / bench.CONDITION_FILE).read_text(encoding="utf-8")
                    (artifacts / bench.CONDITION_FILE).unlink()
                assert not leaked(secret, out, err, message, written), (
                    place.name, out, err, message, written)
                if code == 0:
                    assert written, place.name  # a finished run is recorded
                    got = json.loads(record.read_text(encoding="utf-8"))
                    if place.passed:
                        text = json.dumps(got["argv"], ensure_ascii=False)
                        assert any(form in " ".join(got["argv"]) or form in text
                                   for form in passed_forms(secret)), place.name
                    if place.name.startswith("AIPERF=env"):
                        assert got["HF_TOKEN"] == secret
                record.unlink(missing_ok=True)
        finally:
            del os.environ["PK_RECORD"]


ERRORS = [place for place in places(secret_shapes.EXAMPLE) if place.outcome == "error"]


@pytest.mark.parametrize("place", ERRORS, ids=[place.name for place in ERRORS])
def test_a_bad_setting_with_a_secret_is_one_line_without_it(place: Place,
                                                             tmp_path: Path) -> None:
    """As a user runs it: exit 2, one line naming what is wrong, none of the secret."""
    secret = secret_shapes.EXAMPLE
    env_file = tmp_path / ".env"
    env_file.write_bytes(secret_shapes.env_file(place, BASE))
    env = {k: v for k, v in os.environ.items() if k not in bench.SETTINGS}
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             str(env_file), "--dry-run"], capture_output=True, text=True,
                            env={**env, **place.environment}, cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("promptkit: ") and "Traceback" not in result.stderr
    assert not leaked(secret, result.stderr)


@pytest.mark.parametrize(("line", "message"), [
    ("HF-TOKEN=hf_q7Wm2XavR9kL4", "HF-TOKEN: not a KEY=VALUE line (a key is letters, digits "
     "and _; the value is not shown)"),
    ("HF_TOKEN: hf_q7Wm2XavR9kL4", "HF_TOKEN: not a KEY=VALUE line ('=' between the key and "
     "the value; the value is not shown)"),
    ('K="a" hf_q7Wm2XavR9kL4', "K: text after the closing quote (not shown)"),
    ("set HF_TOKEN=hf_q7Wm2XavR9kL4", "HF_TOKEN: not a KEY=VALUE line (the value is not "
     "shown)"),
    # A key in small letters is not told apart from a pasted token: not named.
    ("hf-token=hf_q7Wm2XavR9kL4", "not a KEY=VALUE line (not shown: it may hold a secret)"),
    ("hf_q7Wm2XavR9kL4", "not a KEY=VALUE line (not shown: it may hold a secret)"),
    ("AKIA2Q7WM2XAVR9KL4-X=1", "not a KEY=VALUE line (not shown: it may hold a secret)"),
])
def test_an_env_line_that_does_not_parse_names_file_line_and_key(line: str,
                                                                 message: str) -> None:
    with pytest.raises(bench.SettingError) as caught:
        bench.parse_env(f"MODEL=m\n\n{line}\n", "vllm.env")
    assert str(caught.value) == f"vllm.env:3: {message}"


def test_a_bom_and_bytes_not_utf8(tmp_path: Path) -> None:
    """A BOM before the first line is dropped (the line parses); a byte that is not
    UTF-8 is one line naming the file, line and key: a bad setting (exit 2)."""
    path = tmp_path / ".env"
    path.write_bytes(b"\xef\xbb\xbfHF_TOKEN=hf_q7Wm2XavR9kL4\nMODEL=m\n")
    assert bench.parse_env(bench.read_env(path)) == {"HF_TOKEN": "hf_q7Wm2XavR9kL4",
                                                     "MODEL": "m"}
    path.write_bytes(b"MODEL=m\nHF_TOKEN=hf_q7Wm2Xav\xffR9kL4\n")
    env = {k: v for k, v in os.environ.items() if k not in bench.SETTINGS}
    result = subprocess.run([sys.executable, "-m", "promptkit", "bench", "--env-file",
                             str(path), "--dry-run"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (
        2, "", f"promptkit: {path}:2: HF_TOKEN: not UTF-8 text (the value is not shown)\n")


def test_extra_inputs_errors_show_no_value() -> None:
    with pytest.raises(bench.SettingError) as caught:
        bench.parse_extra_inputs("top_k:5,api_key=sk-q7Wm2XavR9kL4")
    assert str(caught.value) == ("EXTRA_INPUTS: item 2 is not key:value (':' between the key "
                                 "and the value, not shown: it may hold a secret)")
    with pytest.raises(bench.SettingError) as caught:
        bench.extra_input_args([("api_key", "123456789")])
    assert "123456789" not in str(caught.value) and "***" in str(caught.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:p1@p2@host:8000", "http://***@host:8000"),
    ("http://hf_q7Wm2XavR9kL4@host", "http://***@host"),
    ("u:p1@host:8000", "***@host:8000"),
    ("https://user:pa ss@host/v1?api_key=k1&x=2", "https://***@host/v1?api_key=***"),
    ("http://host:8000/v1", "http://host:8000/v1"),
])
def test_url_user_information_in_every_form(url: str, shown: str) -> None:
    assert bench.redact_url(url) == shown
    assert bench.redacted(["aiperf", "--url", url]) == ["aiperf", "--url", shown]


def test_a_password_with_a_slash_is_refused_without_it() -> None:
    with pytest.raises(bench.SettingError) as caught:
        bench.base_url("http://u:a/b@host")
    assert str(caught.value) == ("URL='http://***@host': an @ after a / ? or #: write a user "
                                 "or password's / ? # as %2F %3F %23 (an @ in the path as %40)")
    with pytest.raises(bench.SettingError, match=r"an @ after a / \? or #"):
        bench.base_url("http://u:p#kL4@host:8000")  # not: port could not be cast ... 'kL4'
    assert bench.base_url("http://u:p%2Fq@host:8000") == "http://u:p%2Fq@host:8000"


@pytest.mark.parametrize(("hook", "shown"), [
    ("curl -u admin:S1 http://h/r", "curl -u *** http://h/r"),
    ("curl -uadmin:S1 http://h/r", "curl -u*** http://h/r"),
    ("curl --user 'admin:S1 S2' http://h/r", "curl --user '***' http://h/r"),
    ("curl -H 'Authorization: Token S1' http://h/r",
     "curl -H 'Authorization: ***' http://h/r"),
    ("curl -d 'api_key=S1&x=1' http://h/r", "curl -d 'api_key=***' http://h/r"),
    ("curl -d 'x=1&api_key=S1&y=2' http://h/r", "curl -d 'x=1&api_key=***' http://h/r"),
    ("curl --data '{\"token\": \"S1\"}' http://h/r",
     "curl --data '{\"token\": \"***\"}' http://h/r"),
    ("HF_TOKEN=S1 ./restart.sh", "HF_TOKEN=*** ./restart.sh"),
    ("sh -c 'curl --user admin:S1 http://h/r'", "sh -c 'curl --user *** http://h/r'"),
    ("curl -u admin:S1 'http://h", "curl ***"),
    ("./restart.sh --wait 30", "./restart.sh --wait 30"),
])
def test_reset_hooks_are_shown_without_their_secrets(hook: str, shown: str) -> None:
    assert bench.redacted_shell(hook) == shown


def test_the_reset_request_sends_url_credentials_as_basic_authentication(
        server: OpenAIServer) -> None:
    """urllib takes no user information in a URL (it looked the whole ``u:p@host`` up
    as a host name): the reset goes to the host with an Authorization header."""
    url = server.url.replace("http://", "http://admin:p%40ss@")
    done = bench.reset_cache("vllm", None, url, 10)
    assert done["status"] == 200 and done["action"].startswith("POST http://***@")
    request = server.recorded("/reset_prefix_cache")[-1]
    assert request.headers["Authorization"] == "Basic YWRtaW46cEBzcw=="  # admin:p@ss
