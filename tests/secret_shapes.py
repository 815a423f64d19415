"""Secrets of the shapes people have, and the places a ``promptkit bench`` user puts
them, for the tests (``tests/cli/test_secrets.py``) and the fault drill
(``scripts/fault_drill.py``). Standard library only.

A secret is made of random pieces of letters and digits (each at least 6 long, each
with a small letter), joined by the characters that make secrets hard to handle:
``@ : / ? # % & = , ' "`` and spaces. A piece found in anything promptkit printed or
wrote is a leak, whole secret or not (``http://u:p1@p2@host`` once showed ``p2``).

A place is ``(name, env lines, environment, outcome)``: lines of the .env file
(bytes: a line may hold a byte that is not UTF-8), settings put in the environment
(they override the file's, which then holds a harmless value of the same key, so the
override message is exercised), and what ``promptkit bench --dry-run`` should do:
``"ok"``, ``"error"`` or ``"either"`` (a URL whose password holds ``/`` is refused,
one without is taken).
"""

from __future__ import annotations

import json
import random
import shlex
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

ALNUM = string.ascii_letters + string.digits
#: What joins a secret's pieces: every character that has broken a redaction.
JOINERS = ["@", ":", "/", "?", "#", "%", "&", "=", ",", "'", '"', " ", "-", "_", ".", "+",
           "!", "$", ";", "\\", "é"]
#: The prefixes of real tokens.
PREFIXES = ["", "hf_", "sk-", "sk-proj-", "ghp_", "eyJ", "Bearer-", "AKIA"]


#: One secret of many shapes at once, for tests that run a few cases.
EXAMPLE = "sk-proj-q7Wm2Xa9@vR9kL4ab:kL4pT8xy/pT8zQ3r#zQ3dN5hY,Q3dN5hYq'dN5hY6w hY6wQ7e"


def pieces(secret: str) -> list[str]:
    """The random pieces of a secret made here: any of them showing is a leak."""
    out, current = [], []
    for char in secret:
        if char in ALNUM:
            current.append(char)
        else:
            out.append("".join(current))
            current = []
    out.append("".join(current))
    return [p for p in out if len(p) >= 6]


def leaked(secret: str, *texts: str) -> list[str]:
    """The pieces of ``secret`` found in ``texts``."""
    return [p for p in pieces(secret) if any(p in text for text in texts)]


def make_secret(rng: random.Random, joiners: str | list[str] | None = None) -> str:
    """A random secret: a prefix, then 1 to 4 pieces joined by ``joiners``."""
    use = JOINERS if joiners is None else list(joiners)
    parts = []
    for _ in range(rng.randint(1, 4)):
        piece = rng.choice(string.ascii_lowercase)
        piece += "".join(rng.choice(ALNUM) for _ in range(rng.randint(7, 20)))
        parts.append(piece)
    secret = rng.choice(PREFIXES) + parts[0]
    for part in parts[1:]:
        secret += rng.choice(use) + part
    return secret


@dataclass
class Place:
    name: str
    env_lines: list[bytes]
    environment: dict[str, str] = field(default_factory=dict)
    outcome: str = "ok"  # "ok", "error" or "either"
    #: Whether AIPerf gets the secret (in its command line, as it is, JSON-escaped or
    #: percent-encoded).
    passed: bool = False


def _env(name: str, lines: list[str | bytes], outcome: str) -> Place:
    return Place(name, [line if isinstance(line, bytes) else line.encode() for line in lines],
                 outcome=outcome)


def _setting(name: str, key: str, value: str, outcome: str = "ok",
             passed: bool = False) -> Place:
    # The file holds the same key with a harmless value: the environment's overrides it.
    harmless = {"URL": "http://127.0.0.1:9", "RESET_CACHE": "none", "AIPERF_ARGS": "",
                "EXTRA_INPUTS": "top_k:5", "AIPERF": "aiperf"}[key]
    return Place(name, [f"{key}={harmless}".encode()], {key: value}, outcome, passed)


q = shlex.quote
#: A hook's request: quiet, its answer dropped, a POST.
CURL = "curl -sf -o /dev/null -X POST"


def curl(host: str, options: str) -> str:
    """``RESET_CACHE=command:curl ... OPTIONS http://HOST/reset_prefix_cache``."""
    return f"command:{CURL} {options} http://{host}/reset_prefix_cache".replace("  ", " ")

#: Every place, as a function of the secret (``host``: the server's host and port).
PLACES: list[Callable[[str, str], Place]] = [
    # .env lines that do not parse: the file, line and key, never the value.
    lambda s, h: _env("env: HF-TOKEN=S", [f"HF-TOKEN={s}"], "error"),
    lambda s, h: _env("env: HF_TOKEN: S", [f"HF_TOKEN: {s}"], "error"),
    lambda s, h: _env("env: K=\"a\" S", [f'K="a" {s}'], "error"),
    lambda s, h: _env("env: API_KEY='S", [f"API_KEY='{s}"], "error"),
    lambda s, h: _env("env: export HF.TOKEN=S", [f"export HF.TOKEN={s}"], "error"),
    lambda s, h: _env("env: set HF_TOKEN=S", [f"set HF_TOKEN={s}"], "error"),
    lambda s, h: _env("env: S on a line of its own", [s], "either"),
    lambda s, h: _env("env: S then a byte not UTF-8", [f"HF_TOKEN={s}".encode() + b"\xff"],
                      "error"),
    lambda s, h: _env("env: BOM, then HF_TOKEN=S", ["\ufeffHF_TOKEN=" + json.dumps(s)], "ok"),
    # EXTRA_INPUTS
    lambda s, h: _setting("EXTRA_INPUTS=api_key=S", "EXTRA_INPUTS", f"api_key={s}", "either"),
    lambda s, h: _setting("EXTRA_INPUTS=api_key:\"S\"", "EXTRA_INPUTS",
                          f"api_key:{json.dumps(s)}", passed=True),
    # (Unquoted, a value ends at a comma, as documented: what follows is another field.)
    lambda s, h: _setting("EXTRA_INPUTS=api_key:S", "EXTRA_INPUTS",
                          f"api_key:{s if ',' not in s else json.dumps(s)}", "either"),
    lambda s, h: _setting("EXTRA_INPUTS=metadata:{api_key:S}", "EXTRA_INPUTS",
                          f"metadata:{json.dumps({'api_key': s})}", passed=True),
    lambda s, h: _setting("EXTRA_INPUTS={api_key:S,top_k:5}", "EXTRA_INPUTS",
                          json.dumps({"api_key": s, "top_k": 5}), passed=True),
    lambda s, h: _setting("EXTRA_INPUTS=top_k:5,apiKey:S", "EXTRA_INPUTS",
                          f"top_k:5,apiKey:{json.dumps(s)}", passed=True),
    lambda s, h: _setting("EXTRA_INPUTS=headers:{Authorization:Bearer S}", "EXTRA_INPUTS",
                          f"headers:{json.dumps({'Authorization': 'Bearer ' + s})}",
                          passed=True),
    lambda s, h: _setting("EXTRA_INPUTS=extra:{auth:{client_secret:S}}", "EXTRA_INPUTS",
                          f"extra:{json.dumps({'auth': {'client_secret': s}})}",
                          passed=True),
    # URL: user information in every form, a token in the query
    lambda s, h: _setting("URL=http://u:S@host", "URL", f"http://u:{s}@{h}", "either", True),
    lambda s, h: _setting("URL=http://S@host", "URL", f"http://{s}@{h}", "either", True),
    lambda s, h: _setting("URL=http://u:S@S@host", "URL", f"http://u:{s}@{s}@{h}", "either", True),
    lambda s, h: _setting("URL=u:S@host", "URL", f"u:{s}@{h}", "either", True),
    lambda s, h: _setting("URL=http://u:S@host/v1?x=1", "URL", f"http://u:{s}@{h}/v1?x=1",
                          "either", True),
    lambda s, h: _setting("URL=http://host/?api_key=S", "URL",
                          f"http://{h}/?api_key={quote(s, safe='')}", passed=True),
    # RESET_CACHE hooks (that POST to the server's reset path)
    lambda s, h: _setting("RESET_CACHE=command:curl -u admin:S", "RESET_CACHE",
                          curl(h, f"-u admin:{q(s)}")),
    lambda s, h: _setting("RESET_CACHE=command:curl -uadmin:S", "RESET_CACHE",
                          curl(h, f"-uadmin:{q(s)}")),
    lambda s, h: _setting("RESET_CACHE=command:curl --user admin:S", "RESET_CACHE",
                          curl(h, f"--user admin:{q(s)}")),
    lambda s, h: _setting("RESET_CACHE=command:curl -H 'Authorization: Bearer S'",
                          "RESET_CACHE", curl(h, f"-H {q('Authorization: Bearer ' + s)}")),
    lambda s, h: _setting("RESET_CACHE=command:curl -H 'X-Api-Key: S'", "RESET_CACHE",
                          curl(h, f"-H {q('X-Api-Key: ' + s)}")),
    lambda s, h: _setting("RESET_CACHE=command:curl http://admin:S@host", "RESET_CACHE",
                          f"command:{CURL} {q(f'http://admin:{s}@{h}/reset_prefix_cache')}"),
    lambda s, h: _setting("RESET_CACHE=command:curl -d api_key=S", "RESET_CACHE",
                          curl(h, f"-d {q('api_key=' + s)}")),
    lambda s, h: _setting("RESET_CACHE=command:curl --data {token:S}", "RESET_CACHE",
                          curl(h, f"--data {q(json.dumps({'token': s}))}")),
    lambda s, h: _setting("RESET_CACHE=command:HF_TOKEN=S hook", "RESET_CACHE",
                          curl(h, "").replace("command:", f"command:HF_TOKEN={q(s)} ")),
    lambda s, h: _setting("RESET_CACHE=command:sh -c 'curl --user admin:S'", "RESET_CACHE",
                          "command:sh -c " + q(curl(h, f"--user admin:{q(s)}")[8:])),
    lambda s, h: _setting("RESET_CACHE=command:wget --password=S", "RESET_CACHE",
                          f"command:wget -q -O /dev/null --password={q(s)} --post-data= "
                          f"http://{h}/reset_prefix_cache"),
    lambda s, h: _setting("RESET_CACHE=command:curl -u admin:S 'unclosed", "RESET_CACHE",
                          f"command:curl -u admin:{q(s)} 'http://{h}"),
    lambda s, h: _setting("RESET_CACHE=comand:curl -u admin:S (a typo)", "RESET_CACHE",
                          f"comand:curl -u admin:{q(s)}", "error"),
    # AIPERF_ARGS and AIPERF
    lambda s, h: _setting("AIPERF_ARGS=--api-key S", "AIPERF_ARGS", f"--api-key {q(s)}",
                          passed=True),
    lambda s, h: _setting("AIPERF_ARGS=--api-key=S", "AIPERF_ARGS", f"--api-key={q(s)}",
                          passed=True),
    lambda s, h: _setting("AIPERF_ARGS=--header 'Authorization: Bearer S'", "AIPERF_ARGS",
                          f"--header {q('Authorization: Bearer ' + s)}", passed=True),
    lambda s, h: _setting("AIPERF_ARGS=-H x-api-key:S", "AIPERF_ARGS",
                          f"-H {q('x-api-key:' + s)}", passed=True),
    lambda s, h: _setting("AIPERF=env HF_TOKEN=S aiperf", "AIPERF",
                          f"env HF_TOKEN={q(s)} {PROGRAM}"),
]
#: The AIPerf program in ``AIPERF`` places (a test puts its own in place of it).
PROGRAM = "aiperf"


def places(secret: str, host: str = "127.0.0.1:9", program: str = PROGRAM) -> list[Place]:
    """Every place of ``secret`` (``host``: where hooks and URLs point; ``program``:
    the AIPerf command where a place sets it)."""
    made = [make(secret, host) for make in PLACES]
    for place in made:
        if "AIPERF" in place.environment:
            place.environment["AIPERF"] = place.environment["AIPERF"].replace(PROGRAM, program)
    return made


def passed_forms(secret: str) -> list[str]:
    """The forms in which AIPerf's command may carry a secret it is passed."""
    return [secret, json.dumps(secret, ensure_ascii=False)[1:-1], quote(secret, safe="")]


def env_file(place: Place, base: list[str]) -> bytes:
    """The .env file of a place: the base settings, then its own lines (first, when
    they start with a BOM)."""
    lines = [line.encode() for line in base]
    bom = place.env_lines[:1] and place.env_lines[0].startswith(b"\xef\xbb\xbf")
    return b"\n".join(place.env_lines + lines if bom else lines + place.env_lines) + b"\n"
