"""``--ray ADDRESS`` where no Ray cluster answers: one line, exit 1, within 30 s.

Ray's own connection to a head node that is not there retries for many minutes
(measured: over 90 s with only its log lines on stderr, for ``127.0.0.1:1``).
promptkit asks first: a TCP connection, then one gRPC call a head node answers.
The cases: nothing listening (refused), a server that is no gRPC server (the tests'
HTTP server), a gRPC server without Ray's services; and a real cluster
(``tests/ray_cluster.py``), which still connects.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # installed with Ray
import pytest
from openai_server import OpenAIServer
from ray_cluster import free_port

pytestmark = pytest.mark.ray

#: The most seconds a failed connection may take, Python's start and Ray's import included.
LIMIT = 30.0


def nonce_on(address: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    infile = tmp_path / "in.jsonl"
    infile.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "promptkit", "nonce", str(infile),
                             str(tmp_path / "parts"), "--ray", address],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return result, time.monotonic() - started


def refused(address: str, tmp_path: Path, why: str) -> None:
    result, took = nonce_on(address, tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"promptkit: --ray {address}: cannot connect: {why}\n"
    assert took < LIMIT
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]  # nothing written, nothing left


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_nothing_listening(address: str, tmp_path: Path) -> None:
    refused(address, tmp_path, "nothing answers at 127.0.0.1:1 (connection refused)")


def test_a_server_that_is_not_grpc(tmp_path: Path) -> None:
    with OpenAIServer() as server:
        address = server.url.removeprefix("http://")
        refused(address, tmp_path, f"{address} takes connections but gives no Ray answer in "
                "10 s")


def test_a_grpc_server_without_ray(tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        refused(f"127.0.0.1:{port}", tmp_path,
                f"127.0.0.1:{port} answers, but it is no Ray cluster (GCS service unknown "
                "there)")
    finally:
        server.stop(0)


def test_a_cluster_that_answers_connects(tmp_path: Path, ray_cluster: Any) -> None:
    result, _ = nonce_on(ray_cluster.address, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "parts" / "manifest.json").is_file()
