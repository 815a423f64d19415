"""A real multi-node Ray cluster on this machine, for the tests of ``--ray``.

``ray start --head`` and ``ray start --address=...`` for each further node, every
one with its own ``--num-cpus``, its own free ports and a temporary folder of its
own, so two test runs on one machine do not meet. Each ``ray start --block`` runs in
a session of its own; stopping the cluster kills every process of those sessions
(``ray stop`` would stop every Ray process on the machine, other runs' included).

Token authentication is off for the cluster and, while it runs, for drivers in this
process (``RAY_AUTH_MODE=disabled``): a ``~/.ray/auth_token`` left by an earlier
local Ray would otherwise keep the second node from joining.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_executable() -> str:
    script = Path(sys.executable).with_name("ray")
    if not script.is_file():
        raise RuntimeError(
            f"Ray is not installed next to {sys.executable}: pip install -e '.[test]' "
            "installs it (the ray extra)")
    return str(script)


@dataclass
class LocalCluster:
    """A head and ``len(cpus) - 1`` worker nodes; ``address`` is ``127.0.0.1:PORT``."""

    cpus: tuple[int, ...] = (1, 1)
    address: str = ""
    folder: str = ""
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _auth_before: str | None = None

    def start(self, timeout: float = 60) -> LocalCluster:
        self._auth_before = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = "disabled"
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> LocalCluster:
        # A short folder: Ray's socket paths live under it (at most 107 bytes).
        self.folder = tempfile.mkdtemp(prefix="pkray-", dir="/tmp")
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        for i, cpus in enumerate(self.cpus):
            args = [ray_executable(), "start", "--block", "--num-cpus", str(cpus),
                    "--dashboard-agent-listen-port", str(free_port()),
                    "--metrics-export-port", str(free_port())]
            if i == 0:
                args += ["--head", "--port", str(port), "--temp-dir", self.folder,
                         "--include-dashboard=false", "--disable-usage-stats",
                         "--ray-client-server-port", str(free_port())]
            else:
                args += ["--address", self.address]
            log = open(os.path.join(self.folder, f"node-{i}.log"), "wb")  # noqa: SIM115
            self.nodes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, env=env))
            log.close()
            if i == 0:
                self._wait(lambda: _listening(port), timeout, "the head node")
        self._wait(lambda: self.alive_nodes() == len(self.cpus), timeout,
                   f"{len(self.cpus)} nodes")
        return self

    def alive_nodes(self) -> int:
        out = subprocess.run(
            [sys.executable, "-c",
             "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', "
             "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))",
             self.address], capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip() or 0)

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            if any(p.poll() is not None for p in self.nodes):
                raise RuntimeError(f"a Ray node exited while starting; logs in {self.folder}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not up in {timeout} s; logs in {self.folder}")
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        """The Ray worker processes of this cluster (``ray::...``), for fault tests."""
        sessions = {p.pid for p in self.nodes}
        found = []
        for pid in _pids():
            with contextlib.suppress(OSError):
                if os.getsid(pid) in sessions and _cmdline(pid).startswith(b"ray::"):
                    found.append(pid)
        return found

    def stop(self) -> None:
        sessions = {p.pid for p in self.nodes}
        for pid in _pids():
            with contextlib.suppress(OSError):
                if os.getsid(pid) in sessions:
                    os.kill(pid, signal.SIGKILL)
        for p in self.nodes:
            p.wait()
        self.nodes.clear()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._auth_before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = self._auth_before

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def local_cluster(cpus: tuple[int, ...] = (1, 1)) -> Iterator[LocalCluster]:
    with LocalCluster(cpus) as cluster:
        yield cluster


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()
