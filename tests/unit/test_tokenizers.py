"""Tokenizers load by name, offline: tiktoken's cl100k_base from a shipped file, a local
tokenizer folder or file, and hub ids already in the local Hugging Face cache."""

from __future__ import annotations

import shutil

import pytest
from tokenizer_dir import build_tokenizer_dir

from promptkit.core.tokenizers import TokenizerError, load_tokenizer


def test_cl100k_base_loads_offline_and_matches_known_ids():
    tok = load_tokenizer("cl100k_base")
    assert tok.encode("hello world") == [15339, 1917]  # cl100k_base's published ids
    assert tok.encode_batch(["hello world", "a"], 2) == [[15339, 1917], [64]]
    assert tok.decode([15339, 1917]) == "hello world"


def test_a_local_folder_and_its_tokenizer_json(tmp_path):
    folder = build_tokenizer_dir(tmp_path / "tok")
    by_folder = load_tokenizer(str(folder))
    by_file = load_tokenizer(str(folder / "tokenizer.json"))
    text = "the quick brown fox"
    assert by_folder.encode(text) == by_file.encode(text) != []
    assert by_folder.decode(by_folder.encode(text)) == text
    assert by_folder.encode_batch([text, "fox"], 2) == [by_folder.encode(text),
                                                        by_folder.encode("fox")]


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch):
    # The hub itself is out of reach here: the cache is laid out as huggingface_hub
    # lays it out after a download, and nothing is fetched.
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("0123abcd")
    folder = build_tokenizer_dir(tmp_path / "tok")
    shutil.copy(folder / "tokenizer.json", snapshot / "tokenizer.json")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    tok = load_tokenizer("hf:acme/tiny")
    assert tok.encode("the fox") == load_tokenizer(str(folder)).encode("the fox")
    with pytest.raises(TokenizerError, match="not in the local Hugging Face cache"):
        load_tokenizer("hf:acme/missing")


@pytest.mark.parametrize(("spec", "problem"), [
    ("no_such_encoding", "unknown tokenizer 'no_such_encoding'"),
    ("o200k_base", "cannot be downloaded"),  # not cached, and this machine has no network
    ("/nowhere/tokenizer.json", "no tokenizer.json there"),
])
def test_unloadable_tokenizers_say_what_to_do(spec, problem):
    with pytest.raises(TokenizerError, match=problem):
        load_tokenizer(spec)
