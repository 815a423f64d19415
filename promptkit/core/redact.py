"""Secrets hidden in what promptkit prints and writes: ``***`` in their place.

A leaf module (the standard library only). What counts as a secret:

- the value of an option, header, request field or JSON key named for one
  (``--api-key``, ``Authorization``, ``x-api-key``, ``apiKey``, ``client_secret``,
  ``HF_TOKEN=...``), at any depth of a JSON value;
- a URL's user information, whatever it holds (``http://***@host``: the name and
  password up to the last ``@``, ``/`` and ``@`` included; a token given as the user
  name too);
- bearer and basic credentials (``Bearer ***``) and the ``user:password`` of curl's
  ``-u``/``--user`` (``-u ***``: some APIs take a key as the user name);
- the same inside a shell command line (a ``RESET_CACHE=command:`` hook), quoted
  words and ``sh -c '...'`` included.

Over-hiding is the safe side: a URL with an ``@`` in its path loses the part before
it in what is shown. The real values are passed on untouched; only what is shown
is redacted.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from typing import Any

HIDDEN = "***"
#: Options that take ``Name:Value`` headers (several after one flag: AIPerf's).
HEADER_OPTIONS = ("--header", "-H")
#: Options whose value is ``user:password`` (curl's; or a URL, as AIPerf's ``-u``).
USER_OPTIONS = ("-u", "--user", "--proxy-user", "-U")
#: Options whose value is a URL.
URL_OPTIONS = ("--url",)

#: Words of a name that make it a secret's name (``api_key``, ``X-Auth-Token``).
_SECRET_WORDS = frozenset({
    "auth", "authorization", "authentication", "key", "apikey", "accesskey", "secretkey",
    "privatekey", "token", "secret", "password", "passwd", "pwd", "passphrase", "cookie",
    "credential", "credentials", "signature", "bearer", "jwt",
})
#: ... and endings of run-together words (``accesstoken``, ``clientsecret``).
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "credential", "credentials")
#: A name's words: split at ``-_. `` and at camelCase (``apiKey``, ``APIKey``).
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
#: A variable (``HF_TOKEN``, ``OPENAI_API_KEY``, ``MYKEY``; not ``TOKENIZER``).
_SECRET_VARIABLE = re.compile(r"(?i)key|secret|passw|credential|auth|token(?:$|_)")

#: A URL's scheme and user information: up to the last ``@`` of the word.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(\S*)@")
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\"]+")
#: The start of ``name=value``, ``name: value``, ``"name": "value"`` (the name is
#: checked apart), and the value.
_PAIR = re.compile(r"""(?<![\w.-])([\w.-]+)(["']?\s*[:=]\s*)""")
#: (Unquoted, it runs to a space, a quote or a closing bracket: ``&`` ``#`` ``,`` may be
#: in a password, and hiding what follows is the safe side.)
_PAIR_VALUE = re.compile(r"""("(?:[^"\\]|\\.)*"|'[^']*'|[^\s}\]"']+)""")
_ASSIGNMENT_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)


def secret_name(name: str) -> bool:
    """Whether an option, header, request field or JSON key of this name holds a secret."""
    words = [w.lower() for w in _WORD.findall(name)]
    joined = "".join(words)
    return (any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in words)
            or joined.endswith(_SECRET_ENDINGS) or "apikey" in joined)


def secret_variable(name: str) -> bool:
    """Whether an environment variable of this name holds a secret."""
    return bool(_SECRET_VARIABLE.search(name))


def _pairs(text: str) -> str:
    """``text`` with the values of its secret-named pairs hidden."""
    out: list[str] = []
    done = 0
    for start in _PAIR.finditer(text):
        value = _PAIR_VALUE.match(text, start.end())
        if (start.start() < done or value is None or not secret_name(start.group(1))
                or value.group(0).strip("'\"") == HIDDEN):
            continue
        quote = value.group(0)[0] if value.group(0)[0] in "'\"" else ""
        out += [text[done:start.end()], quote, HIDDEN, quote]
        done = value.end()
    return "".join(out) + text[done:]


def redact_url(url: str) -> str:
    """A value known to be a URL (``http://u:p@host``, or ``u:p@host`` without a
    scheme): its user information (all before its last ``@``) hidden, and the values
    of secret-named query parameters (``?api_key=...``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        rest = f"{HIDDEN}@{rest[at + 1:]}"
    return _pairs(f"{scheme}{sep}{rest}")


def redact_text(text: str) -> str:
    """Free text (a message) with URL user information and bearer and basic
    credentials hidden."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{HIDDEN}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{HIDDEN}", text)


def redact_word(word: str) -> str:
    """A word of a command or a string of JSON data: as :func:`redact_text`, and the
    values of secret-named pairs hidden (``api_key=...``, ``"token": "..."``,
    ``?password=...``)."""
    return _pairs(redact_text(word))


def redact_json(value: Any) -> Any:
    """JSON data (request fields) with the values of secret-named keys hidden, at any
    depth, and its strings redacted as words."""
    if isinstance(value, dict):
        return {k: HIDDEN if secret_name(str(k)) else redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    if isinstance(value, str):
        return redact_word(value)
    return value


def redact_strings(value: Any) -> Any:
    """Every string of a JSON value redacted as text (a record of promptkit's own)."""
    if isinstance(value, dict):
        return {k: redact_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_strings(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def _json_text(text: str) -> str | None:
    """``text`` redacted when it is a JSON object or array (None when it is not one)."""
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return HIDDEN  # a broken object can hide anything
    hidden = redact_json(value)
    return text if hidden == value else json.dumps(hidden, ensure_ascii=False)


def redact_pair(value: str, separator: str = ":") -> str:
    """A ``Name:Value`` header or ``key:value`` field (the value may be JSON), or a
    JSON object of them."""
    whole = _json_text(value)
    if whole is not None:
        return whole
    name, sep, rest = value.partition(separator)
    if sep and secret_name(name):
        return f"{name}{sep}{rest[:len(rest) - len(rest.lstrip())]}{HIDDEN}"
    inner = _json_text(rest) if sep else None
    return f"{name}{sep}{inner}" if inner is not None else redact_word(value)


def _url_value(value: str) -> str:
    """The value of ``--url``: with or without a scheme."""
    return redact_url(value) if "@" in value else redact_word(value)


def _user_value(value: str) -> str:
    """The value of ``-u``/``--user``: ``user:password`` (or ``TOKEN:``, as some APIs
    take a key), or a URL (AIPerf's ``-u``)."""
    if "://" in value or ":" not in value:
        return _url_value(value)
    return HIDDEN


def _value_of(option: str) -> Callable[[str], str] | None:
    """How the value of ``option`` is shown, when it is an option with a value to
    hide: a header or request field, a user, a URL, or one named for a secret."""
    if option in HEADER_OPTIONS or option == "--extra-inputs":
        return redact_pair
    if option in USER_OPTIONS:
        return _user_value
    if option in URL_OPTIONS:
        return _url_value
    if option.startswith("--") and secret_name(option):
        return lambda _: HIDDEN
    return None


def _word(arg: str) -> str:
    """A word that is no option's value."""
    name, eq, value = arg.partition("=")
    show = _value_of(name) if name.startswith("--") and eq else None
    assignment = _ASSIGNMENT_WORD.fullmatch(arg)
    if show is not None:  # --api-key=..., --header=...
        arg = f"{name}={show(value)}"
    elif arg[:2] in ("-u", "-U") and len(arg) > 2:  # curl's -uUSER:PASSWORD
        arg = arg[:2] + _user_value(arg[2:])
    elif assignment is not None and secret_variable(assignment.group(1)):
        arg = f"{assignment.group(1)}={HIDDEN}"  # HF_TOKEN=...
    elif re.match(r"(?i)[a-z][a-z0-9+.-]*://", arg):
        arg = redact_url(arg)
    elif _json_text(arg) is not None:
        arg = redact_pair(arg)  # JSON data: curl --data '{"token": "..."}'
    elif any(c.isspace() for c in arg.strip()):
        arg = redacted_shell(arg)  # a command line in one word: sh -c '...'
    return redact_word(arg)


def redacted(command: list[str]) -> list[str]:
    """The words of a command with their secrets hidden: the value of an option named
    for one (``--api-key``, ``--hf-token``), of a secret header (``--header
    "Authorization: Bearer ..."``, ``-H x-api-key:...``) or request field
    (``--extra-inputs api_key:...``, nested JSON keys too), of ``-u user:password``,
    a ``NAME=value`` word whose variable is one (``HF_TOKEN=...``), URL user
    information, bearer tokens, JSON data, and the same inside a word that is itself
    a command line (``sh -c '...'``)."""
    out: list[str] = []
    show: Callable[[str], str] | None = None  # how the next word is shown
    several = False  # --header takes several values, up to the next option
    for arg in command:
        if show is not None and not (several and arg.startswith("-")):
            out.append(show(arg))
            show = show if several else None
            continue
        show = None if "=" in arg else _value_of(arg)  # --name=value: a word of its own
        several = arg in HEADER_OPTIONS
        out.append(arg if show is not None else _word(arg))
    return out


def redacted_shell(text: str) -> str:
    """A shell command line (a ``RESET_CACHE=command:`` hook) with its secrets hidden,
    as it was written where that can be done, else as the shell reads it. A line
    the shell cannot split (an open quote) shows its first word only."""
    try:
        words = shlex.split(text)
    except ValueError:
        first = text.split(maxsplit=1)
        return f"{redacted(first[:1])[0]} {HIDDEN}" if first else text
    shown = text
    for word, hidden in zip(words, redacted(words), strict=True):
        if word != hidden:
            if word not in shown:  # quoted with escapes: show it as the shell reads it
                return shlex.join(redacted(words))
            shown = shown.replace(word, hidden)
    return redact_word(shown)


__all__ = ["HIDDEN", "redact_json", "redact_pair", "redact_strings", "redact_text",
           "redact_url", "redact_word", "redacted", "redacted_shell", "secret_name",
           "secret_variable"]
