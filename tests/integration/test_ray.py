"""``--ray`` on a real two-node Ray cluster on this machine (tests/ray_cluster.py): the
parts in order are the bytes the same command writes without ``--ray``; verify and
rebuild of part folders; a worker killed mid-job; ``promptkit.ray.apply``; Ray missing.

One cluster for the whole file; inputs cut into many chunks by a small
``PROMPTKIT_RAY_CHUNK_BYTES``."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from promptkit.cli import cli

pytestmark = pytest.mark.ray

CHUNK = 3000


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> Path:
    """OpenAI chat lines, each with a system prompt (three distinct), some sharing a
    conversation whose lines lie 40 lines apart (so across chunks), a blank line."""
    path = tmp_path_factory.mktemp("in") / "chat.jsonl"
    lines = []
    for i in range(300):
        messages = [{"role": "system", "content": f"You are helper number {i % 3}."}]
        words = " ".join(f"w{(i * 7 + k) % 97}" for k in range(5 + i % 23))
        messages.append({"role": "user", "content": f"Question {i}: {words}"})
        row: dict = {"messages": messages}
        if i % 10 == 0:
            row["session_id"] = f"conv-{i % 40}"
        lines.append(json.dumps(row))
        if i == 150:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 10 * CHUNK
    return path


def invoke(*args: str | Path, env: dict[str, str] | None = None):
    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False,
                         env={"PROMPTKIT_RAY_CHUNK_BYTES": str(CHUNK), **(env or {})})


def parts(folder: Path) -> bytes:
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith("part-"))
    assert names == [f"part-{i:05d}.jsonl" for i in range(len(names))]
    return b"".join((folder / name).read_bytes() for name in names)


def same_as_local(cluster, tmp_path: Path, command: list[str | Path], infile: Path,
                  tail: list[str]) -> dict:
    """Run ``command IN OUT tail`` without and with ``--ray``: the parts in order are the
    bytes of the file; returns the part folder's manifest."""
    plain = tmp_path / "plain.jsonl"
    result = invoke(*command, infile, plain, *tail)
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "parts"
    result = invoke(*command, infile, folder, *tail, "--ray", cluster.address)
    assert result.exit_code == 0, result.stderr
    assert parts(folder) == plain.read_bytes()
    made = json.loads((folder / "manifest.json").read_text())
    local = json.loads((tmp_path / "plain.jsonl.manifest.json").read_text())
    assert made["output"]["sha256"] == local["output"]["sha256"]
    assert made["output"]["records"] == local["output"]["records"]
    assert made["inputs"][0]["sha256"] == local["inputs"][0]["sha256"]
    assert made["inputs"][0]["records"] == local["inputs"][0]["records"]
    assert made["aiperf"]["distinct_records"] == local["aiperf"]["distinct_records"]
    assert made["steps"] == local["steps"]
    assert made.get("token_stats") == local.get("token_stats")
    assert made["ray"]["nodes"] == 2 and made["ray"]["address"] == "host:port"
    assert made["ray"]["chunks"] >= 8 and len(made["output"]["parts"]) == made["ray"]["chunks"]
    assert "promptkit: wrote" in result.stderr and "on 2 Ray nodes" in result.stderr
    return made


@pytest.mark.parametrize("options", [
    ["--kind", "uuid"],
    ["--kind", "timestamp", "--start-time", "2026-01-01T00:00:00Z", "--at", "user"],
    ["--kind", "random", "--at", "system"],
    ["--copies", "3", "--at", "salt"],
])
def test_nonce_parts_are_the_bytes_of_one_run(cluster, chat, tmp_path, options):
    made = same_as_local(cluster, tmp_path, ["nonce"], chat, ["--seed", "7", *options])
    # Conversations continue across chunks: those chunks were run again, in order.
    assert made["ray"]["chunks_redone"] >= 1


def test_fit_and_pad(cluster, chat, tmp_path):
    same_as_local(cluster, tmp_path / "fit", ["fit"], chat,
                  ["--tokens", "20,60", "--tokenizer", "cl100k_base", "--seed", "3"])
    made = same_as_local(cluster, tmp_path / "pad", ["pad"], chat,
                         ["--tokens", "64", "--tokenizer", "cl100k_base", "--groups", "2",
                          "--seed", "5"])
    assert len(made["steps"][0]["info"]["groups"]) == 2 * 3  # two groups of three prompts


@pytest.fixture
def tmp_path(tmp_path):  # the subfolders same_as_local writes into
    for name in ("fit", "pad"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_pipe_and_compressed_input(cluster, chat, tmp_path):
    plain = tmp_path / "plain.jsonl"
    folder = tmp_path / "parts"
    chain = ["nonce", "--seed", "1", "--at", "user", "fit", "--tokens", "40",
             "--tokenizer", "cl100k_base", "--seed", "2"]
    assert invoke("pipe", "read", chat, *chain, "write", plain).exit_code == 0
    result = invoke("pipe", "read", "--ray", cluster.address, chat, *chain, "write", folder)
    assert result.exit_code == 0, result.stderr
    assert parts(folder) == plain.read_bytes()
    # A gzip file cannot be cut at byte offsets: one task reads it, streaming.
    packed = tmp_path / "chat.jsonl.gz"
    packed.write_bytes(gzip.compress(chat.read_bytes()))
    one = tmp_path / "one"
    result = invoke("nonce", packed, one, "--seed", "9", "--ray", cluster.address)
    assert result.exit_code == 0, result.stderr
    assert invoke("nonce", chat, tmp_path / "p.jsonl", "--seed", "9").exit_code == 0
    assert parts(one) == (tmp_path / "p.jsonl").read_bytes()
    made = json.loads((one / "manifest.json").read_text())
    assert made["inputs"][0]["compression"] == "gzip"
    assert made["inputs"][0]["sha256"] == hashlib.sha256(
        packed.read_bytes()).hexdigest()


def verified_and_rebuilt(cluster, folder: Path, source: Path, tmp_path: Path) -> None:
    """``folder`` verifies, and rebuilds from ``source`` to the same parts both on one
    machine (cut where the recorded parts end) and on the cluster."""
    result = invoke("verify", folder)
    assert result.exit_code == 0 and result.stdout.startswith(f"{folder}: OK")
    for out, extra in ((tmp_path / "here", []), (tmp_path / "there", ["--ray", cluster.address])):
        result = invoke("rebuild", folder / "manifest.json", out, "--input", source, *extra)
        assert result.exit_code == 0, result.stderr
        assert "identical" in result.stderr
        assert sorted(os.listdir(out)) == sorted(os.listdir(folder))
        for part in folder.glob("part-*.jsonl"):
            assert (out / part.name).read_bytes() == part.read_bytes()
        assert invoke("verify", out).exit_code == 0


def test_verify_and_rebuild_a_part_folder(cluster, chat, tmp_path):
    folder = tmp_path / "parts"
    assert invoke("nonce", chat, folder, "--seed", "4", "--ray", cluster.address).exit_code == 0
    verified_and_rebuilt(cluster, folder, chat, tmp_path)
    # A changed part and an extra one are told apart, by name.
    (folder / "part-00002.jsonl").write_bytes(b"{}\n" + (folder / "part-00002.jsonl").read_bytes())
    (folder / "part-99999.jsonl").write_bytes(b"")
    result = invoke("verify", folder)
    assert result.exit_code == 1
    assert "part-00002.jsonl: sha256 is" in result.stderr
    assert "part-99999.jsonl not in the manifest" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_worker_killed_mid_job(cluster, chat, tmp_path):
    """SIGKILL a Ray worker running a chunk: Ray runs the task again; same bytes."""
    plain = tmp_path / "plain.jsonl"
    assert invoke("nonce", chat, plain, "--seed", "11").exit_code == 0
    folder = tmp_path / "parts"
    env = {**os.environ, "PROMPTKIT_RAY_CHUNK_BYTES": str(CHUNK),
           "PROMPTKIT_RAY_TEST_DELAY": "0.5"}
    script = Path(sys.executable).with_name("promptkit")
    job = subprocess.Popen([str(script), "nonce", str(chat), str(folder), "--seed", "11",
                            "--ray", cluster.address], env=env, stderr=subprocess.PIPE)
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and job.poll() is None:
        for pid in cluster.worker_pids():
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                name = f.read()
            if b"Map" in name or b"process" in name:  # a worker running a chunk's task
                os.kill(pid, signal.SIGKILL)
                killed = name
                break
        time.sleep(0.05)
    _, err = job.communicate(timeout=180)
    assert killed is not None, "no task was running to kill"
    assert job.returncode == 0, err.decode()
    assert parts(folder) == plain.read_bytes()


# ---------------------------------------------------------------- many shards


@pytest.fixture(scope="module")
def shards(chat, tmp_path_factory) -> Path:
    """The chat lines, with repeated prompts, cut into 9 uneven shards of a folder: one
    gzipped, one ending without a newline, conversations running across shards."""
    lines = chat.read_text().splitlines()
    lines += lines[20:60]  # the same prompts again (some of their conversations too)
    folder = tmp_path_factory.mktemp("shards") / "logs"
    folder.mkdir()
    cuts = [0, 7, 61, 62, 130, 171, 230, 231, 290, len(lines)]
    for n, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        text = "\n".join(lines[a:b]) + ("" if n == 5 else "\n")
        if n == 4:
            (folder / f"{n:02d}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
        else:
            (folder / f"{n:02d}.jsonl").write_text(text)
    return folder


def same_as_local_shards(cluster, tmp_path: Path, command: list[str | Path], infile: Path,
                         tail: list[str], *, before: list[str] | None = None) -> dict:
    """``command IN OUT tail`` over many shards, without and with ``--ray`` (``before``:
    ``pipe`` takes ``read IN ... write OUT``): the same bytes and the same manifest."""
    plain, folder = tmp_path / "plain.jsonl", tmp_path / "parts"
    if before is None:
        here = [*command, infile, plain, *tail]
        there = [*command, infile, folder, *tail, "--ray", cluster.address]
    else:
        here = [*command, "read", infile, *before, "write", plain]
        there = [*command, "read", "--ray", cluster.address, infile, *before, "write", folder]
    result = invoke(*here)
    assert result.exit_code == 0, result.stderr
    result = invoke(*there)
    assert result.exit_code == 0, result.stderr
    assert parts(folder) == plain.read_bytes()
    made = json.loads((folder / "manifest.json").read_text())
    local = json.loads((tmp_path / "plain.jsonl.manifest.json").read_text())
    assert made["inputs"] == local["inputs"]
    assert len(made["inputs"][0]["shards"]) == 9
    for key in ("records", "sha256", "format"):
        assert made["output"][key] == local["output"][key]
    assert made["aiperf"]["distinct_records"] == local["aiperf"]["distinct_records"]
    assert made["steps"] == local["steps"]
    assert made.get("token_stats") == local.get("token_stats")
    assert made["skipped"] == local["skipped"]
    # Every plain shard's chunks, and the gzipped shard one task.
    assert made["ray"]["chunks"] >= 9 and made["ray"]["nodes"] == 2
    return made


def test_shards_nonce(cluster, shards, tmp_path):
    made = same_as_local_shards(cluster, tmp_path, ["nonce"], shards, ["--seed", "7"])
    # Conversations continue across shards: those chunks were run again, in order.
    assert made["ray"]["chunks_redone"] >= 1
    # Prompts repeated in other shards (one nonce a conversation): counted once, as here.
    assert made["aiperf"]["distinct_records"] < made["output"]["records"]
    assert made["inputs"][0]["shards"][4]["compression"] == "gzip"
    assert made["inputs"][0]["path"] == str(shards)


def test_shards_fit_pad_pipe(cluster, shards, tmp_path):
    same_as_local_shards(cluster, tmp_path / "fit", ["fit"], shards,
                         ["--tokens", "20,60", "--tokenizer", "cl100k_base", "--seed", "3"])
    same_as_local_shards(cluster, tmp_path / "pad", ["pad"], shards,
                         ["--tokens", "64", "--tokenizer", "cl100k_base", "--groups", "2",
                          "--seed", "5"])
    (tmp_path / "pipe").mkdir()
    same_as_local_shards(cluster, tmp_path / "pipe", ["pipe"], Path(f"{shards}/*.jsonl*"), [],
                         before=["nonce", "--seed", "1", "--at", "user", "fit", "--tokens",
                                 "40", "--tokenizer", "cl100k_base", "--seed", "2"])


def test_shards_verify_rebuild_and_errors(cluster, shards, tmp_path):
    folder = tmp_path / "parts"
    result = invoke("nonce", shards, folder, "--seed", "4", "--ray", cluster.address)
    assert result.exit_code == 0, result.stderr
    verified_and_rebuilt(cluster, folder, shards, tmp_path)
    # A bad line in a shard: named by the shard and its own line, as without --ray.
    bad = tmp_path / "bad"
    bad.mkdir()
    for shard in sorted(shards.iterdir())[:3]:
        (bad / shard.name).write_bytes(shard.read_bytes())
    lines = (bad / "02.jsonl").read_text()  # one line: the third shard
    (bad / "02.jsonl").write_text(lines + "{oops\n")
    for extra in ([], ["--ray", cluster.address]):
        out = tmp_path / ("bad-ray" if extra else "bad.jsonl")
        result = invoke("nonce", bad, out, "--seed", "1", *extra)
        assert result.exit_code == 1
        assert result.stderr.startswith(f"promptkit: {bad / '02.jsonl'}:2: "), result.stderr
        assert not out.exists()


def test_ray_local(chat, tmp_path):
    plain = tmp_path / "plain.jsonl"
    assert invoke("nonce", chat, plain, "--seed", "8").exit_code == 0
    result = invoke("nonce", chat, tmp_path / "parts", "--seed", "8", "--ray", "local")
    assert result.exit_code == 0, result.stderr
    assert parts(tmp_path / "parts") == plain.read_bytes()
    made = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    assert made["ray"]["address"] == "local"


def salt_of(row: dict) -> str:
    return row.get("cache_salt") or (row.get("extra") or {})["cache_salt"]


def test_apply_in_a_users_own_pipeline(cluster, chat, tmp_path):
    import ray

    from promptkit import ray as pk_ray
    from promptkit.ops.base import Step

    plain = tmp_path / "plain.jsonl"
    assert invoke("nonce", chat, plain, "--seed", "5", "--at", "salt").exit_code == 0
    rows = [json.loads(line) for line in chat.read_text().splitlines() if line]
    expected = [json.loads(line) for line in plain.read_text().splitlines()]
    with pk_ray.connect(cluster.address):
        # Indexes of the lines, as the file has them (a blank line at 151).
        indexed = [{**row, "index": i + (i > 150)} for i, row in enumerate(rows)]
        # No session_id here: conversations are carried across blocks only by --ray.
        plain_rows = [{k: v for k, v in r.items() if k != "session_id"} for r in indexed]
        ds = ray.data.from_items(plain_rows, override_num_blocks=6)
        out = pk_ray.apply(ds, [Step("nonce", {"seed": 5, "at": "salt"})]).take_all()
        salts = {row["index"]: salt_of(row) for row in out}
        for row, want in zip(indexed, expected, strict=True):
            if "session_id" not in row:
                assert salts[row["index"]] == salt_of(want)
        # Without an index column, each row's position is its index.
        ds = ray.data.from_items([{"messages": r["messages"]} for r in rows[:40]],
                                 override_num_blocks=4)
        out = pk_ray.apply(ds, [Step("nonce", {"seed": 5})]).take_all()
        assert sorted(row["index"] for row in out) == list(range(40))


def test_the_readme_ray_example(cluster, tmp_path):
    """The README's ``promptkit.ray.apply`` example, as written, on the cluster (joined
    through RAY_ADDRESS): each row gets the salt the CLI gives its line."""
    import re

    root = Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
              if "promptkit.ray" in b]
    code += "\nprint(json.dumps(nonced))\n"
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    plain = tmp_path / "plain.jsonl"
    example = root / "prompts" / "chat.jsonl.example"
    assert invoke("nonce", example, plain, "--seed", "7", "--at", "salt").exit_code == 0
    want = [json.loads(line) for line in plain.read_text().splitlines()]
    assert [row["index"] for row in rows] == list(range(len(want))) and len(want) > 3
    assert [salt_of(row) for row in rows] == [salt_of(row) for row in want]


def test_without_ray_one_line(chat, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = invoke("nonce", chat, tmp_path / "parts", "--ray", "local")
    assert result.exit_code == 1
    assert result.stderr == ("promptkit: --ray needs Ray: pip install '.[ray]' (from the "
                             "promptkit folder) or pip install 'ray[data]'\n")
    assert not (tmp_path / "parts").exists()


def test_refusals(chat, tmp_path):
    result = invoke("check", chat, "--ray", "local", "--per-request", tmp_path / "r.jsonl")
    assert result.exit_code == 2 and "run it without --ray" in result.stderr
    result = invoke("nonce", chat, tmp_path / "x", "--ray", "nowhere")
    assert result.exit_code == 2 and "not local, auto" in result.stderr
    result = invoke("nonce", chat, "-", "--ray", "local")
    assert result.exit_code == 1 and "name OUT (a folder)" in result.stderr
