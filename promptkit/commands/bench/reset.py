"""Clearing the server's prefix cache right before AIPerf starts (``RESET_CACHE``): a
POST to vLLM's or SGLang's reset path, or a shell hook; what was done, for the record."""

from __future__ import annotations

import base64
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from promptkit.core.errors import PromptkitError, SettingError
from promptkit.core.redact import redact_text, redact_url, redacted_shell

RESET_PATHS = {"vllm": "/reset_prefix_cache", "sglang": "/flush_cache"}


def origin(url: str) -> str:
    """``scheme://host:port`` of a base URL (``http://`` added when it has no scheme)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def with_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``(url, headers)`` for urllib, which takes no user information in a URL: the URL
    without it, and its user and password as basic authentication (as curl sends them)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, {}
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_reset(value: str) -> tuple[str, str | None]:
    """``(mode, hook command)`` of a RESET_CACHE value."""
    low = value.strip().lower()
    if low.startswith("command:"):
        command = value.strip()[len("command:"):].strip()
        if not command:
            raise SettingError("RESET_CACHE=command: needs a shell command after the colon")
        return "command", command
    if low in ("none", "vllm", "sglang", "aiperf"):
        return low, None
    raise SettingError(f"RESET_CACHE={redacted_shell(value)!r}: one of none, vllm, sglang, "
                       "aiperf, command:CMD")


def reset_cache(mode: str, hook: str | None, url: str, timeout: float) -> dict[str, Any]:
    """Clear the prefix cache now (vllm, sglang, command); what was done, for the record."""
    started = time.monotonic()
    record: dict[str, Any] = {"at": now_utc()}
    if mode in RESET_PATHS:
        target = origin(url) + RESET_PATHS[mode]
        shown = redact_url(target)
        record["action"] = f"POST {shown}"
        plain, headers = with_credentials(target)
        request = urllib.request.Request(plain, data=b"", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                record["status"] = response.status
                record["response"] = response.read(500).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            hint = (" (vLLM serves it only with VLLM_SERVER_DEV_MODE=1)"
                    if mode == "vllm" and exc.code == 404 else "")
            raise PromptkitError(f"RESET_CACHE={mode}: POST {shown} answered {exc.code} "
                                 f"{exc.reason}{hint}; not running the benchmark") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = redact_text(str(getattr(exc, "reason", exc)))
            raise PromptkitError(f"RESET_CACHE={mode}: POST {shown} failed: {reason}; "
                                 "not running the benchmark") from None
    else:
        assert mode == "command" and hook is not None
        shown = redacted_shell(hook)
        record["action"] = f"command: {shown}"
        try:
            done = subprocess.run(hook, shell=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PromptkitError(f"RESET_CACHE hook timed out after {timeout:g}s "
                                 f"(RESET_TIMEOUT): {shown}") from None
        record["exit_code"] = done.returncode
        if done.returncode != 0:
            raise PromptkitError(f"RESET_CACHE hook exited {done.returncode}: {shown}; "
                                 "not running the benchmark")
    record["seconds"] = round(time.monotonic() - started, 3)
    return record
