"""promptkit on a Ray cluster: the same steps, the same bytes, on many machines.

- :func:`connect` joins (or starts) a cluster for one run;
- :func:`apply` puts promptkit steps inside a user's own Ray Data pipeline;
- :mod:`promptkit.ray.commands` is ``--ray`` on the command line, each command's work
  on a cluster: the input cut into line-aligned chunks (:mod:`promptkit.ray.inputs`),
  each chunk a Ray Data task (:mod:`promptkit.ray.run` for the record-wise steps) that
  writes its own part file (``OUT/part-00000.jsonl`` ...), one manifest covering them
  (``OUT/manifest.json``, :mod:`promptkit.provenance.parts`); ``check`` and ``stats``
  figures from distributed aggregations (:mod:`promptkit.ray.aggregate`);
- :mod:`promptkit.ray.rows` turns the rows of a user's Ray Dataset into records and back.

Ray is an optional extra (``pip install '.[ray]'`` in the promptkit folder); nothing here imports it
before it is needed, and :func:`require` says in one line how to install it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from promptkit.core.errors import BadOptionError, PromptkitError
from promptkit.formats import default_output
from promptkit.ops.base import Step
from promptkit.ops.registry import ORDERED, make

__all__ = ["INSTALL", "address_kind", "apply", "check_address", "connect", "probe", "require"]

INSTALL = ("--ray needs Ray: pip install '.[ray]' (from the promptkit folder) or "
           "pip install 'ray[data]'")


def require() -> Any:
    """The ``ray`` module, or one line saying how to install it (a PromptkitError)."""
    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.data")
    except ImportError:
        raise PromptkitError(INSTALL) from None
    return ray


def address_kind(address: str) -> str:
    """What the manifest records of an address: its kind, never the host or a token
    (``local``, ``auto``, ``ray://`` or ``host:port``)."""
    if address in ("local", "auto"):
        return address
    return "ray://" if address.startswith("ray://") else "host:port"


def check_address(address: str) -> str:
    """``address`` when it is one ``connect`` takes, else a usage error naming it."""
    ok = address in ("local", "auto") or (
        address.removeprefix("ray://").rpartition(":")[2].isdigit()
        and address.removeprefix("ray://").rpartition(":")[0] != "")
    if not ok:
        raise BadOptionError(f"--ray: {address!r} is not local, auto, ray://HOST:PORT or "
                             "HOST:PORT")
    return address


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A connection to a Ray cluster for the time of a run, yielding the ``ray`` module.

    ``local`` starts a private cluster on this machine (shut down at the end), ``auto``
    joins the one this machine is part of (``ray start``, ``ray job submit``),
    ``ray://HOST:PORT`` connects through Ray Client, ``HOST:PORT`` joins a head node.
    Ray's own logs and progress bars are kept off stderr (promptkit's messages are one
    line each). A cluster promptkit did not start is left running."""
    ray = require()
    check_address(address)
    if ray.is_initialized():  # the caller's own connection (the Python API): used as it is
        _configure(ray)
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                              "configure_logging": True}
    if address == "local":
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address != "local":
        probe(address)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, auth errors: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PromptkitError(f"--ray {address}: cannot connect: {first}") from None
    try:
        _configure(ray)
        yield ray
    finally:
        ray.shutdown()


#: Seconds a cluster's address has to answer (Ray itself retries for many minutes).
ANSWER_TIMEOUT = 10.0


def _bootstrap(address: str) -> str | None:
    """``HOST:PORT`` that ``ray.init(address)`` connects to: ``ray://HOST:PORT`` and
    ``HOST:PORT`` as given, ``auto`` as Ray finds it (RAY_ADDRESS, or the cluster
    ``ray start`` made on this machine; None when Ray's own lookup is not there)."""
    if address != "auto":
        return address.removeprefix("ray://")
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        return canonicalize_bootstrap_address(address)
    except Exception as exc:  # ConnectionError: no cluster found
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PromptkitError(f"--ray {address}: cannot connect: {first}") from None


def probe(address: str, timeout: float = ANSWER_TIMEOUT) -> None:
    """One line (a PromptkitError) unless a Ray cluster answers at ``address`` within
    ``timeout`` seconds: a TCP connection, then one gRPC call a head node (or Ray
    Client's server, for ``ray://``) answers and another server refuses as unknown.
    Ray's own connection would retry for many minutes, printing only its log lines."""
    target = _bootstrap(address)
    if target is None:
        return
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout
    failed = f"--ray {address}: cannot connect"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        why = (f"no answer in {timeout:g} s" if isinstance(exc, TimeoutError)
               else getattr(exc, "strerror", None) or str(exc))
        raise PromptkitError(f"{failed}: nothing answers at {target} ({why.lower()})") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS channel needs the cluster's certificates: left to Ray
    import grpc  # type: ignore[import-untyped]  # Ray's dependency

    method = ("/ray.rpc.RayletDriver/ClusterInfo" if address.startswith("ray://")
              else "/ray.rpc.NodeInfoGcsService/GetClusterId")
    channel = grpc.insecure_channel(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    try:
        channel.unary_unary(method)(b"", timeout=max(deadline - time.monotonic(), 1.0),
                                    wait_for_ready=True)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            raise PromptkitError(f"{failed}: {target} answers, but it is no Ray cluster "
                                 f"({'Ray Client' if address.startswith('ray://') else 'GCS'} "
                                 "service unknown there)") from None
        if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise PromptkitError(f"{failed}: {target} takes connections but gives no Ray "
                                 f"answer in {timeout:g} s") from None
        # Any other answer is Ray's (a refused token, say): ray.init says what it means.
    finally:
        channel.close()


def _configure(ray: Any) -> None:
    """Ray Data as promptkit runs it: quiet, and its groupbys on the sort-based
    shuffle. (Ray 2.60's default shuffle starts aggregator actors for every groupby:
    ``check --ray`` of 2,000 records on two nodes of 1 CPU each took 5.3 times as long
    with it, for the same report; ``scripts/bench_ray_shuffle.py``.)"""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    with contextlib.suppress(ImportError, AttributeError):  # (older Ray: its only shuffle)
        from ray.data.context import ShuffleStrategy

        context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    with contextlib.suppress(AttributeError):
        context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def apply(ds: Any, steps: Sequence[Step], *, from_format: str | None = None,
          to_format: str | None = None, keep_replies: bool = False) -> Any:
    """``ds`` (a ``ray.data.Dataset`` of records) with ``steps`` applied, as a Dataset.

    Rows are records in a line format's fields (an OpenAI chat line, a mooncake_trace
    line ...; the format is detected from the first row unless ``from_format``), with an
    ``index`` column (what nonces and sampled lengths are addressed by) or without one:
    then each row's position in ``ds`` is its index. Rows come out in ``to_format``
    (default: the input's when AIPerf loads it, as the CLI's), each with its ``index``;
    ``copies`` of a nonce step are rows of their own; ``keep_replies``: as the CLI's
    ``--keep-replies``. Steps are made (``promptkit.ops.registry.make``) when not made yet.

    Lines sharing a ``session_id`` keep the first line's nonce only within one block of
    ``ds``: give such rows in one block (or run the file with ``--ray``, which carries
    conversations across chunks)."""
    require()
    from promptkit.ray import rows  # (it imports pyarrow: not when promptkit.ray is imported)

    made = [step if step.made else make(step.op, step.params) for step in steps]
    ordered = [step.op for step in made if step.op in ORDERED]
    if ordered:
        raise PromptkitError(f"promptkit.ray.apply: {ordered[0]} sees every record in order; "
                             "run it on the whole file ('promptkit check', 'hash-trace')")
    fmt = from_format or rows.detect(ds)
    if "index" not in ds.schema().names:
        ds = rows.with_index(ds)
    return ds.map_batches(rows.apply_batch, batch_format="pyarrow",
                          fn_kwargs={"steps": made, "in_format": fmt,
                                     "out_format": to_format or default_output(fmt),
                                     "keep_replies": keep_replies})
