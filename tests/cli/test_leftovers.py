"""Nothing left behind: every temporary file or folder promptkit makes carries the owner
a later run's sweep removes it by, and runs that fail or lose their reader clean up.

Real ``promptkit`` processes: one killed with SIGKILL in the middle of putting its
files in place, one that cannot read a shard (root's permission override dropped), one
whose stdout's reader goes away (``| head``), and tiktoken's cache, which is not the
temp folder's to keep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import write_jsonl

PROMPTKIT = [sys.executable, "-m", "promptkit"]
TEXTS = [{"text": f"Tell me about item {i}, please."} for i in range(20)]


def env_for(tmp_path: Path, **more: str) -> dict[str, str]:
    """A private temp folder (and tiktoken cache) for a run."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch),
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"), **more}
    return {k: v for k, v in env.items() if v is not None}


def killed_mid_commit(tmp_path: Path, code: str) -> None:
    """Run ``code`` (after ``import os, signal``) in a process that kills itself with
    SIGKILL where the code calls ``die()``."""
    program = "import os, signal\ndef die(*_):\n    os.kill(os.getpid(), signal.SIGKILL)\n" \
        + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", program], env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_sigkill_while_the_old_manifest_is_aside_leaves_what_the_next_run_removes(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "prompts.jsonl"
    assert subprocess.run([*PROMPTKIT, "nonce", source, out], env=env_for(tmp_path),
                          capture_output=True).returncode == 0
    # Killed after the old manifest was moved aside, before OUT was renamed.
    killed_mid_commit(tmp_path, f"""
        from promptkit.io import files
        outputs = files.Outputs({str(out)!r}, {str(out) + ".manifest.json"!r})
        outputs.stage({str(out) + ".manifest.json"!r}, "{{}}")
        outputs.commit(die)
    """)
    left = sorted(set(os.listdir(folder)) - {"prompts.jsonl"})
    assert len(left) == 3 and any(".old." in name for name in left), left  # aside, staged, lock
    done = subprocess.run([*PROMPTKIT, "nonce", source, folder / "next.jsonl"],
                          env=env_for(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(folder)) == ["next.jsonl", "next.jsonl.manifest.json",
                                          "prompts.jsonl"]


def test_sigkill_while_publish_replaces_a_folder_leaves_what_the_next_run_removes(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    published = tmp_path / "published"
    assert subprocess.run([*PROMPTKIT, "publish", source, published], env=env_for(tmp_path),
                          capture_output=True).returncode == 0
    # Killed after the old folder was moved aside, before the new one was renamed.
    killed_mid_commit(tmp_path, f"""
        from promptkit.commands import publish
        real = os.replace
        def replace(a, b):
            real(a, b)
            if b.endswith(".old.promptkit-tmp"):
                die()
        os.replace = replace
        publish.publish({str(source)!r}, {str(published)!r}, overwrite=True)
    """)
    left = sorted(set(os.listdir(tmp_path)) - {"in.jsonl", "tmp"})
    assert len(left) == 3, left  # the new folder, the old one aside, the lock file
    done = subprocess.run([*PROMPTKIT, "publish", source, tmp_path / "again"],
                          env=env_for(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["again", "in.jsonl", "tmp"]
    assert os.listdir(tmp_path / "tmp") == []


def test_a_plot_killed_mid_write_leaves_what_the_next_run_removes(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    plot = tmp_path / "check.png"
    killed_mid_commit(tmp_path, f"""
        from promptkit.commands import plots
        plots.put_in_place = die
        plots.check_plot({str(plot)!r}, [0, 1], [4, 4], "killed")
    """)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".check.png.")]
    done = subprocess.run([*PROMPTKIT, "nonce", source, tmp_path / "next.jsonl"],
                          env=env_for(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "next.jsonl",
                                            "next.jsonl.manifest.json", "tmp"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unreadable_shard_leaves_no_temporary_output(workers, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        write_jsonl(shards / f"part-{k}.jsonl", TEXTS)
    (shards / "part-1.jsonl").chmod(0)
    folder = tmp_path / "out"
    folder.mkdir()
    no_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                   "--inh-caps=-dac_override,-dac_read_search"]
    done = subprocess.run([*no_override, *PROMPTKIT, "nonce", shards, folder / "o.jsonl",
                           "--workers", workers], env=env_for(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == f"promptkit: {shards / 'part-1.jsonl'}: Permission denied\n"
    assert os.listdir(folder) == [] and os.listdir(tmp_path / "tmp") == []


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """Far more output than a pipe holds, and enough for worker processes."""
    from promptkit.runner import workers as parallel

    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    line = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)
    with open(path, "w") as f:
        i = 0
        while f.tell() < parallel.MIN_PARALLEL_BYTES + (2 << 20):
            f.write(json.dumps({"text": f"{i}: {line}"}) + "\n")
            i += 1
    return path


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("manifest", [False, True])
def test_a_closed_stdout_ends_quietly_and_leaves_nothing(workers, manifest, big, tmp_path):
    """``promptkit nonce big - | head -1``: exit 141 (as SIGPIPE's), nothing on stderr,
    nothing in the temp folder, no lock file beside the manifest."""
    folder = tmp_path / "out"
    folder.mkdir()
    extra = ["--manifest", str(folder / "m.json")] if manifest else []
    proc = subprocess.Popen([*PROMPTKIT, "nonce", big, "-", "--workers", workers, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env_for(tmp_path), cwd=folder)
    assert proc.stdout is not None and proc.stdout.readline().startswith(b'{"text": ')
    proc.stdout.close()  # what head does once it has its line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert err == b""
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(folder) == []


def test_tiktokens_cache_is_the_users_not_the_temp_folders(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    home = tmp_path / "home"
    home.mkdir()
    command = [*PROMPTKIT, "stats", source, "--tokenizer", "cl100k_base"]
    env = env_for(tmp_path, HOME=str(home))
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "tmp") == []
    assert len(os.listdir(home / ".cache" / "tiktoken")) == 1
    chosen = tmp_path / "chosen"
    done = subprocess.run(command, env={**env, "TIKTOKEN_CACHE_DIR": str(chosen)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(os.listdir(chosen)) == 1 and os.listdir(tmp_path / "tmp") == []
