"""The real chat templates of the model families promptkit's built-in templates follow.

llama.cpp keeps the chat templates of popular models, as their makers publish them
in their tokenizer configs, under ``models/templates/``; the ``llama-cpp-python``
source distribution on PyPI carries that folder. The tests fetch it from PyPI (the
one registry this machine reaches), check its sha256 against PyPI's, and keep the
few templates they need in ``~/.cache/promptkit/chat-templates-VERSION`` (override:
``PROMPTKIT_CHAT_TEMPLATES``), so later sessions start at once. Nothing of it is
committed: the templates stay their makers' files.

Where it cannot be fetched, the tests that need it fail and say why (they hold the
built-in templates to the real ones; a pass without them would be a claim nobody
checked).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
#: Built-in template name -> the real template's file in llama.cpp's models/templates.
FILES = {
    "llama3.1": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "chatml-tools": "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
}
TIMEOUT_S = 300


def folder() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptkit"
    return Path(os.environ.get("PROMPTKIT_CHAT_TEMPLATES")
                or cache / f"chat-templates-{VERSION}")


def _fetch(into: Path) -> None:
    """Download the sdist from PyPI, check its sha256, keep the templates of FILES."""
    base = f"https://pypi.org/pypi/{PACKAGE}/json"
    with urllib.request.urlopen(base, timeout=60) as response:
        releases = json.load(response)["releases"]
    sdist = next(u for u in releases[VERSION] if u["packagetype"] == "sdist")
    url = urllib.parse.urljoin(base, sdist["url"])
    with tempfile.TemporaryDirectory() as work:
        archive = Path(work) / sdist["filename"]
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, \
                archive.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sdist["digests"]["sha256"]:
            raise OSError(f"{url}: sha256 {digest.hexdigest()} is not PyPI's "
                          f"{sdist['digests']['sha256']}")
        staging = Path(work) / "templates"
        staging.mkdir()
        wanted = set(FILES.values())
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if "/models/templates/" in member.name and name in wanted and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    (staging / name).write_bytes(source.read())
        missing = wanted - {p.name for p in staging.iterdir()}
        if missing:
            raise OSError(f"{sdist['filename']} holds no {', '.join(sorted(missing))}")
        into.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(into))


def real_templates() -> dict[str, str]:
    """Built-in template name -> the real template's text (fetched once, then cached)."""
    path = folder()
    if not all((path / name).exists() for name in FILES.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / f".{path.name}.lock", "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                _fetch(path)
    return {key: (path / name).read_text(encoding="utf-8") for key, name in FILES.items()}


def render_real(template: str, messages: list[dict], tools: list[dict] | None,
                bos_token: str = "") -> str:
    """What ``transformers`` (as vLLM calls it) renders of a conversation and tools with
    a template's text."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered = render_jinja_template(conversations=[messages], tools=tools,
                                     chat_template=template, add_generation_prompt=True,
                                     bos_token=bos_token)
    with contextlib.suppress(TypeError, IndexError):  # (rendered, generation indices)
        if isinstance(rendered, tuple):
            rendered = rendered[0]
    return rendered[0] if isinstance(rendered, list) else rendered
