"""AIPerf for the tests, the way users run it: a separate tool in a virtualenv of its own.

promptkit's test environment holds what ``pip install .`` resolves, and never
AIPerf: AIPerf 0.13 pins ``huggingface_hub<2``, ``pandas~=2.3`` and
``orjson~=3.11``, which would pull promptkit's own dependencies below what its
users get. AIPerf is installed once into ``~/.cache/promptkit/aiperf-0.13.0``
(override: ``PROMPTKIT_AIPERF_VENV``; about 1.2 GB, about a minute) by the same
cached, locked installer as the vLLM engine (``scripts/vllm_cpu.py``,
``install_venv``), on first use in a session; later sessions find its marker
file and start at once.

Where AIPerf cannot be installed, every test that needs it fails and says why:
those tests hold promptkit's files to the real AIPerf, and a pass without it
would be a claim nobody checked.

Two ways in:

- :func:`executable`: the venv's ``aiperf`` command, for ``aiperf profile`` runs
  (``tests/integration/test_aiperf_profile.py``) and ``promptkit bench`` (``AIPERF=...``).
- The functions below, answered by this same file running under the AIPerf venv's
  Python as a worker process (one a session, started on first use, ended at the
  session's end; it reads one JSON request a line on stdin and answers one JSON line
  on stdout), so a test sends its whole batch of lines or files in one request:

  - :func:`validate` (``MODEL.model_validate`` of every row: ``SingleTurn``,
    ``MultiTurn``, ``MooncakeTrace``, ``RandomPool``, ``BailianTrace``,
    ``BurstGPTTrace``, ``RawPayload``, ``InputsJsonSession`` from
    ``aiperf.dataset.loader.models``), :func:`strict` (the same, and no field
    AIPerf does not document);
  - :func:`load_dataset`, :func:`conversations`: AIPerf's dataset loaders on a file
    (the hash-id traces' at a block size; AIPerf 0.13 decodes the prompts of ten or
    more lines in a process pool whose workers set ``HF_HUB_OFFLINE`` and so cannot
    load a tokenizer folder: the worker decodes them in its own process, as AIPerf
    does for fewer);
  - :func:`request_bodies`: the chat request bodies AIPerf makes of a file (its
    loader, then its chat endpoint's payload for each turn);
  - ``call("requires", distribution=NAME)``: a distribution's declared requirements
    in the AIPerf venv (``tests/integration/test_environment.py``).

This file imports only the standard library at the top: the AIPerf venv runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AIPERF_VERSION = "0.13.0"
PACKAGES = [f"aiperf=={AIPERF_VERSION}"]
# The modules the tests use: an install where they do not import is no install.
CHECK = ("import aiperf.dataset.loader.models, aiperf.dataset.loader.mooncake_trace, "
         "aiperf.endpoints.openai_chat")
MODELS = ("SingleTurn", "MultiTurn", "MooncakeTrace", "RandomPool", "BailianTrace",
          "BurstGPTTrace", "RawPayload", "InputsJsonSession")
ROOT = Path(__file__).resolve().parents[1]


# -- the worker: runs under the AIPerf venv's Python ---------------------------------------


def _describe(model: Any) -> dict[str, Any]:
    """A validated model as JSON: its documented fields, what it kept aside
    (``model_extra``), and for a MultiTurn its turns, each described the same way."""
    described = {"values": model.model_dump(mode="json", include=set(type(model).model_fields)),
                 "model_extra": model.model_extra}
    if type(model).__name__ == "MultiTurn":
        described["turns"] = [_describe(turn) for turn in model.turns]
    return described


def _validate(model: str, rows: list[Any]) -> dict[str, Any]:
    from aiperf.dataset.loader import models
    from pydantic import ValidationError

    cls = getattr(models, model)
    described = []
    for row in rows:
        try:
            described.append(_describe(cls.model_validate(row)))
        except ValidationError as error:
            described.append({"error": str(error)})
    return {"rows": described,  # (a field by its name in a line: its alias, if it has one)
            "fields": {name: [field.alias or key for key, field
                              in getattr(models, name).model_fields.items()]
                       for name in MODELS}}


_TOKENIZERS: dict[str, Any] = {}


#: The hash-id trace loaders: a block size each (their plugin's default).
_TRACES = {"mooncake_trace": ("mooncake_trace", "MooncakeTraceDatasetLoader", 512),
           "bailian_trace": ("bailian_trace", "BailianTraceDatasetLoader", 16),
           "burst_gpt_trace": ("burst_gpt", "BurstGPTTraceDatasetLoader", None)}
_PAYLOADS = {"raw_payload": ("raw_payload", "RawPayloadDatasetLoader"),
             "inputs_json": ("inputs_json", "InputsJsonPayloadLoader")}


def _loader(kind: str, path: str, tokenizer: str | None, block_size: int | None = None) -> Any:
    import importlib

    if kind in _TRACES:
        from aiperf.common import random_generator as rng
        from aiperf.common.tokenizer import Tokenizer
        from aiperf.dataset.generator.prompt import PromptGenerator
        from aiperf.dataset.loader import hash_ids_synthesis

        if tokenizer is None:
            raise ValueError(f"{kind} needs a tokenizer folder")
        if tokenizer not in _TOKENIZERS:
            _TOKENIZERS[tokenizer] = Tokenizer.from_pretrained(tokenizer)
        tok = _TOKENIZERS[tokenizer]
        # (see the module's docstring: AIPerf's own sequential decode, for any number)
        hash_ids_synthesis.parallel_decode = (  # type: ignore[attr-defined]
            lambda sequences, name, **_: [tok.decode(s) for s in sequences])
        if rng._manager is None:  # (a prompt generator draws from AIPerf's seeded RNG)
            rng.init(7)
        module, name, default = _TRACES[kind]
        cls = getattr(importlib.import_module(f"aiperf.dataset.loader.{module}"), name)
        return cls(filename=path, default_block_size=block_size or default,
                   prompt_generator=PromptGenerator(prompts=None, prefix_prompts=None,
                                                    tokenizer=tok))
    if kind in _PAYLOADS:
        module, name = _PAYLOADS[kind]
        return getattr(importlib.import_module(f"aiperf.dataset.loader.{module}"),
                       name)(filename=path)
    from aiperf.dataset.loader.multi_turn import MultiTurnDatasetLoader
    from aiperf.dataset.loader.single_turn import SingleTurnDatasetLoader

    cls = {"single_turn": SingleTurnDatasetLoader, "multi_turn": MultiTurnDatasetLoader}[kind]
    return cls(filename=path)


def _load_dataset(kind: str, path: str, tokenizer: str | None = None,
                  block_size: int | None = None) -> list[list[Any]]:
    loaded = _loader(kind, path, tokenizer, block_size).load_dataset()
    return [[item.model_dump(mode="json", by_alias=True) for item in items]
            for items in loaded.values()]


def _conversations(kind: str, path: str, tokenizer: str | None = None,
                   block_size: int | None = None) -> list[Any]:
    loader = _loader(kind, path, tokenizer, block_size)
    return [c.model_dump(mode="json")
            for c in loader.convert_to_conversations(loader.load_dataset())]


def _request_bodies(kind: str, path: str, tokenizer: str | None = None,
                    block_size: int | None = None) -> list[Any]:
    from aiperf.common import random_generator as rng
    from aiperf.common.enums import CreditPhase
    from aiperf.common.models.model_endpoint_info import ModelEndpointInfo
    from aiperf.common.models.record_models import RequestInfo
    from aiperf.endpoints.openai_chat import ChatEndpoint

    rng.reset()
    rng.init(7)
    try:
        loader = _loader(kind, path, tokenizer, block_size)
        conversations = loader.convert_to_conversations(loader.load_dataset())
        endpoint_info = ModelEndpointInfo.from_run(loader.run)
        endpoint = ChatEndpoint(model_endpoint=endpoint_info)
        return [endpoint.format_payload(RequestInfo(
            credit_num=0, credit_phase=CreditPhase.PROFILING,
            conversation_id=conversation.session_id, turn_index=i, x_request_id="r",
            x_correlation_id="c", model_endpoint=endpoint_info, turns=[turn]))
            for conversation in conversations for i, turn in enumerate(conversation.turns)]
    finally:
        rng.reset()


def _requires(distribution: str) -> list[str]:
    import importlib.metadata

    return importlib.metadata.requires(distribution) or []


_OPERATIONS = {"validate": _validate, "load_dataset": _load_dataset,
               "conversations": _conversations, "request_bodies": _request_bodies,
               "requires": _requires}


def _serve() -> None:
    """Answer requests until stdin closes. Anything AIPerf prints goes to stderr: stdout
    carries the answers only."""
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"result": _OPERATIONS[request.pop("op")](**request)}
        except Exception:
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


# -- the tests' side ---------------------------------------------------------------------


def default_venv() -> Path:
    from helpers import load_script

    cache: Path = load_script("vllm_cpu").CACHE
    return Path(os.environ.get("PROMPTKIT_AIPERF_VENV") or cache / f"aiperf-{AIPERF_VERSION}")


_installed: list[Path | str] = []  # once a session: the venv, or why there is none


def venv() -> Path:
    """The AIPerf virtualenv, installed on first use (cached across sessions); the
    calling test fails, saying why, where it cannot be installed."""
    import pytest
    from helpers import load_script

    if not _installed:
        path = default_venv()
        installer = load_script("vllm_cpu")
        started = time.monotonic()
        fresh = not (path / installer.MARKER).exists()
        try:
            installer.install_venv(path, PACKAGES, check=CHECK,
                                   size="about 1.2 GB; a minute or so")
        except (subprocess.CalledProcessError, OSError) as error:
            what = (f"{' '.join(map(str, error.cmd))} exited {error.returncode}"
                    if isinstance(error, subprocess.CalledProcessError) else str(error))
            _installed.append(
                f"AIPerf {AIPERF_VERSION} cannot be installed into {path} ({what}; log: "
                f"{path / 'promptkit-install.log'}). The tests that hold promptkit's files "
                "to the real AIPerf need it: give pip access to PyPI, or point "
                "PROMPTKIT_AIPERF_VENV at a virtualenv holding it.")
        else:
            _installed.append(path)
            if fresh:
                print(f"AIPerf {AIPERF_VERSION} installed into {path} in "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    found = _installed[0]
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    return found


def executable() -> Path:
    """The ``aiperf`` command of the AIPerf venv (installed on first use)."""
    return venv() / "bin" / "aiperf"


@dataclass
class _Worker:
    proc: subprocess.Popen[str]
    log: Path

    @classmethod
    def start(cls) -> _Worker:
        python = venv() / "bin" / "python"
        fd, name = tempfile.mkstemp(prefix="aiperf-tool-", suffix=".log")
        os.close(fd)
        log = Path(name)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        with log.open("w") as err:
            proc = subprocess.Popen([str(python), "-I", str(Path(__file__).resolve()), "serve"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                    text=True, encoding="utf-8", env=env, cwd=ROOT)
        return cls(proc, log)

    def call(self, op: str, **params: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **params}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError as error:
            line = f"<{error}>"
        if not line.startswith("{"):
            raise AssertionError(
                f"the AIPerf worker ({self.proc.args}) ended (exit code "
                f"{self.proc.poll()}) on {op!r}; its stderr ({self.log}):\n"
                + self.log.read_text(encoding="utf-8", errors="replace")[-4000:])
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"AIPerf failed on {op!r}:\n{answer['error']}")
        return answer["result"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.returncode == 0:
            self.log.unlink(missing_ok=True)


_workers: list[_Worker] = []


def call(op: str, **params: Any) -> Any:
    """One request to the session's AIPerf worker (started on first use)."""
    if not _workers or _workers[0].proc.poll() is not None:
        _workers[:] = [_Worker.start()]
    return _workers[0].call(op, **params)


def close() -> None:
    """End the worker (``tests/conftest.py`` calls this when the session ends)."""
    while _workers:
        _workers.pop().close()


@dataclass
class Validated:
    """One row as AIPerf's model took it."""

    values: dict[str, Any]  # the fields the model documents, as validated
    model_extra: dict[str, Any] | None  # the fields it keeps aside and never sends
    turns: list[Validated] = field(default_factory=list)  # a MultiTurn's, as SingleTurn


def _validated(described: dict[str, Any]) -> Validated:
    return Validated(described["values"], described["model_extra"],
                     [_validated(turn) for turn in described.get("turns", [])])


_fields: dict[str, list[str]] = {}


def validate(model: str, rows: list[Any]) -> list[Validated]:
    """Every row validated by AIPerf's ``model`` (``model_validate``), in one request;
    an AssertionError naming every row it rejects."""
    assert model in MODELS, model
    result = call("validate", model=model, rows=rows)
    _fields.update(result["fields"])
    rejected = [f"row {i}: {row}\n{described['error']}"
                for i, (row, described) in enumerate(zip(rows, result["rows"], strict=True))
                if "error" in described]
    assert not rejected, f"AIPerf's {model} rejects {len(rejected)} of {len(rows)} rows:\n" + (
        "\n".join(rejected))
    return [_validated(described) for described in result["rows"]]


def fields(model: str) -> set[str]:
    """The fields AIPerf's ``model`` documents."""
    if model not in _fields:
        validate(model, [])
    return set(_fields[model])


def strict(model: str, rows: list[dict[str, Any]],
           kept: set[str] | frozenset[str] = frozenset()) -> list[Validated]:
    """Every row validates with AIPerf's ``model`` and holds no field AIPerf does not
    document, except the input's own fields named in ``kept`` (promptkit keeps those);
    a MultiTurn's turns hold none either."""
    validated = validate(model, rows)
    for row in rows:
        unknown = set(row) - fields(model) - kept
        assert not unknown, f"fields AIPerf does not know: {unknown} in {row}"
        if model == "MultiTurn":
            for turn in row["turns"]:
                unknown = set(turn) - fields("SingleTurn")
                assert not unknown, f"fields AIPerf does not know: {unknown} in turn {turn}"
    return validated


def load_dataset(kind: str, path: Path, tokenizer: Path | None = None,
                 block_size: int | None = None) -> list[list[Any]]:
    """AIPerf's loader for ``kind`` (single_turn, multi_turn, raw_payload, inputs_json;
    the traces mooncake_trace, bailian_trace, burst_gpt_trace with a tokenizer folder,
    hash ids at ``block_size`` or the type's default) on ``path``: ``load_dataset()``,
    each session's items dumped (``model_dump(mode="json", by_alias=True)``), in the
    loader's order."""
    return call("load_dataset", kind=kind, path=str(path),
                tokenizer=None if tokenizer is None else str(tokenizer), block_size=block_size)


def conversations(kind: str, path: Path, tokenizer: Path | None = None,
                  block_size: int | None = None) -> list[dict[str, Any]]:
    """The conversations AIPerf's loader makes of ``path``
    (``convert_to_conversations``), dumped (``model_dump(mode="json")``)."""
    return call("conversations", kind=kind, path=str(path),
                tokenizer=None if tokenizer is None else str(tokenizer), block_size=block_size)


def request_bodies(kind: str, path: Path, tokenizer: Path | None = None,
                   block_size: int | None = None) -> list[dict[str, Any]]:
    """The chat request bodies AIPerf 0.13 makes of ``path``: its loader for ``kind``,
    then its chat endpoint's payload for each turn, on its own (AIPerf's default test
    run: model ``test-model``; a conversation's later turns are sent with its history
    too, which this leaves out)."""
    return call("request_bodies", kind=kind, path=str(path),
                tokenizer=None if tokenizer is None else str(tokenizer), block_size=block_size)


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    _serve()
