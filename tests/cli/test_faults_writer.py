"""Faults while writing: every output lands whole, with its manifest, or not at all.

Each fault is made for real, in real ``promptkit`` processes: a folder on a tmpfs
mounted read-only, a tmpfs too small for the output (``No space left on device``), a file-size
limit (``File too large``),
a folder the process may not write (root's permission override dropped with
``setpriv``), two processes writing the same OUT at once. These need root (to
mount) as the test machines run; without it they fail and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_jsonl

PROMPTKIT = [sys.executable, "-m", "promptkit"]
PAGE = 4096


def promptkit(*args: str | Path, stdin: str | None = None, prefix: list[str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), *PROMPTKIT, *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed run printed: exactly one line, no traceback, exit 1."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("promptkit: "), result.stderr
    return result.stderr.rstrip("\n").removeprefix("promptkit: ")


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden temporary and lock files included) and its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else b"<folder>" for p in folder.iterdir()}


@pytest.fixture
def mount(tmp_path):
    """Mount a real tmpfs: ``mount(size, read_only=False)`` returns its folder."""
    mounted: list[Path] = []

    def make(size: int, read_only: bool = False) -> Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"these fault tests mount a tmpfs, which failed here (euid "
                        f"{os.geteuid()}): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def small(tmp_path) -> Path:
    return write_jsonl(tmp_path / "small.jsonl", [{"text": f"prompt {i}"} for i in range(50)])


@pytest.fixture
def big(tmp_path) -> Path:
    """About 600 KB of records: more than the small tmpfs below holds."""
    return write_jsonl(tmp_path / "big.jsonl",
                       [{"text": f"prompt number {i} " * 20} for i in range(1500)])


# ---------------------------------------------------------------- paths refused before any work


def test_out_and_its_manifest_the_same_path_is_refused(tmp_path, small):
    out = tmp_path / "g.jsonl"
    result = promptkit("nonce", small, out, "--manifest", out)
    assert one_line(result) == f"{out}: OUT and the manifest are the same file; name another"
    assert not out.exists()
    out.write_text("old\n")  # an existing OUT stays as it was
    assert one_line(promptkit("nonce", small, out, "--manifest", out)).startswith(f"{out}: ")
    assert out.read_text() == "old\n"
    assert sorted(listing(tmp_path)) == ["g.jsonl", "small.jsonl"]


def test_a_manifest_onto_the_input_is_refused(tmp_path, small):
    before = small.read_bytes()
    result = promptkit("nonce", small, tmp_path / "o.jsonl", "--manifest", small)
    assert one_line(result) == f"{small}: the manifest would overwrite the input file"
    assert small.read_bytes() == before
    assert sorted(listing(tmp_path)) == ["small.jsonl"]


def test_a_side_file_and_the_manifest_the_same_path_is_refused(tmp_path, small):
    out = tmp_path / "o.jsonl"
    side = f"{out}.system.txt"
    result = promptkit("pad", small, out, "--tokens", "40", "--tokenizer", "cl100k_base",
                       "--into", "file", "--system-prompt", "Be brief.", "--manifest", side)
    assert one_line(result) == f"{side}: a side file and the manifest are the same file; " \
                               "name another"
    assert sorted(listing(tmp_path)) == ["small.jsonl"]


def test_other_commands_refuse_the_same_paths(tmp_path, small):
    out = tmp_path / "t.jsonl"
    result = promptkit("synth", "prefix-test", out, "--groups", "2", "--manifest", out)
    assert one_line(result) == f"{out}: OUT and the manifest are the same file; name another"
    result = promptkit("check", small, "--tokenizer", "cl100k_base", "--per-request", small)
    assert one_line(result) == f"{small}: --per-request would overwrite the input file"
    assert sorted(listing(tmp_path)) == ["small.jsonl"]


def test_out_a_folder_is_refused_before_any_work(tmp_path, small):
    out = tmp_path / "d"
    out.mkdir()
    assert one_line(promptkit("nonce", small, out)) == f"{out}: is a folder"
    assert one_line(promptkit("nonce", small, out, "--to", "parquet")) == f"{out}: is a folder"
    manifest = tmp_path / "m"
    manifest.mkdir()
    result = promptkit("nonce", small, tmp_path / "o.jsonl", "--manifest", manifest)
    assert one_line(result) == f"{manifest}: is a folder"
    assert sorted(listing(tmp_path)) == ["d", "m", "small.jsonl"]
    assert list(out.iterdir()) == [] and list(manifest.iterdir()) == []


def test_a_missing_folder_is_one_line(tmp_path, small):
    out = tmp_path / "nowhere" / "o.jsonl"
    assert one_line(promptkit("nonce", small, out)) == \
        f"{out}: folder {tmp_path / 'nowhere'} does not exist"


def test_a_hf_dir_out_replaces_only_a_saved_dataset(tmp_path, small):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = promptkit("nonce", small, mine, "--to", "hf-dir")
    assert one_line(result) == \
        f"{mine}: a folder that is not a saved dataset; promptkit replaces only those"
    assert listing(mine) == {"notes.txt": b"keep me"}
    saved = tmp_path / "saved"
    assert promptkit("nonce", small, saved, "--to", "hf-dir", "--seed", "1").returncode == 0
    result = promptkit("nonce", small, saved, "--to", "hf-dir", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert promptkit("verify", saved).returncode == 0


# ---------------------------------------------------------------- the file system says no


def test_a_read_only_folder_is_one_line(mount, small):
    folder = mount(1 << 20, read_only=True)
    out = folder / "o.jsonl"
    assert one_line(promptkit("nonce", small, out)) == f"{out}: Read-only file system"
    for args in (["--to", "parquet"], ["--to", "hf-dir"]):
        assert one_line(promptkit("nonce", small, out, *args)) == \
            f"{out}: Read-only file system"
    result = promptkit("check", small, "--tokenizer", "cl100k_base", "--per-request",
                      folder / "per.jsonl")
    assert one_line(result) == f"{folder / 'per.jsonl'}: Read-only file system"
    result = promptkit("publish", small, folder / "pub")
    assert one_line(result) == f"{folder / 'pub'}: Read-only file system"
    assert listing(folder) == {}


def test_a_folder_without_write_permission_is_one_line(tmp_path, small):
    """Root may write anywhere: the run drops that override (CAP_DAC_OVERRIDE)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    no_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                   "--inh-caps=-dac_override,-dac_read_search"]
    out = folder / "o.jsonl"
    result = promptkit("nonce", small, out, prefix=no_override)
    assert one_line(result) == f"{out}: Permission denied"
    assert listing(folder) == {}


def test_no_space_for_out_leaves_nothing_and_the_old_pair_untouched(mount, small, big):
    folder = mount(64 * 1024)
    out = folder / "o.jsonl"
    assert promptkit("nonce", small, out, "--seed", "1").returncode == 0
    before = listing(folder)
    assert sorted(before) == ["o.jsonl", "o.jsonl.manifest.json"]
    for args in ([], ["--workers", "2"], ["--to", "parquet"]):
        result = promptkit("nonce", big, out, "--seed", "2", *args)
        assert one_line(result) == f"{out}: No space left on device", args
        assert listing(folder) == before, args  # no temporary file, no lock file stays
    assert promptkit("verify", out).returncode == 0


def test_a_file_too_large_is_one_line(tmp_path, big):
    """A file-size limit (``prlimit --fsize``): writing past it fails with EFBIG."""
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    limit = ["prlimit", f"--fsize={64 * 1024}"]
    result = promptkit("nonce", big, out, prefix=limit)
    assert one_line(result) == f"{out}: File too large"
    assert sorted(listing(tmp_path)) == ["big.jsonl", "o.jsonl"]
    assert out.read_text() == "old\n"


def test_no_space_for_the_manifest_leaves_the_old_pair(mount, small):
    """OUT fits, its manifest does not: neither lands (OUT was never renamed)."""
    folder = mount(256 * 1024)
    out = folder / "o.jsonl"
    assert promptkit("nonce", small, out, "--seed", "1").returncode == 0
    before = listing(folder)
    # Fill the rest so that exactly the new OUT's pages are left, none for its manifest.
    out_pages = -(-out.stat().st_size // PAGE)
    stat = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"x" * (stat.f_bavail * stat.f_frsize - out_pages * PAGE))
    assert os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize == out_pages * PAGE
    result = promptkit("nonce", small, out, "--seed", "2")
    assert one_line(result) == f"{out}.manifest.json: No space left on device"
    filler.unlink()
    assert listing(folder) == before
    assert promptkit("verify", out).returncode == 0


def test_no_space_for_a_side_file_leaves_the_old_files(mount, small):
    folder = mount(256 * 1024)
    out = folder / "o.jsonl"
    pad = ["pad", small, out, "--tokens", "40", "--tokenizer", "cl100k_base", "--into", "file",
           "--system-prompt", "Be brief."]
    assert promptkit(*pad, "--seed", "1").returncode == 0
    before = listing(folder)
    assert sorted(before) == ["o.jsonl", "o.jsonl.manifest.json", "o.jsonl.system.txt"]
    out_pages = -(-out.stat().st_size // PAGE)
    stat = os.statvfs(folder)
    (folder / "filler").write_bytes(b"x" * (stat.f_bavail * stat.f_frsize - out_pages * PAGE))
    result = promptkit(*pad, "--seed", "2")
    assert one_line(result).endswith(": No space left on device")
    (folder / "filler").unlink()
    assert listing(folder) == before


def test_no_space_while_publishing_leaves_nothing(mount, big):
    folder = mount(64 * 1024)
    result = promptkit("publish", big, folder / "pub")
    assert one_line(result) == f"{folder / 'pub' / 'aiperf/prompts.jsonl'}: No space left on device"
    assert listing(folder) == {}


# ---------------------------------------------------------------- two runs, one OUT


def test_a_second_run_writing_the_same_out_stops_with_one_line(tmp_path, small):
    out = tmp_path / "o.jsonl"
    # The first run holds the lock while it waits for its input on stdin.
    first = subprocess.Popen([*PROMPTKIT, "nonce", "-", str(out), "--seed", "1"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while not any(p.name.endswith(".promptkit-lock") for p in tmp_path.iterdir()):
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        second = promptkit("nonce", small, out, "--seed", "2")
        assert one_line(second) == \
            f"{out}: another promptkit run is writing it; try again when it is done"
        assert not out.exists()
        _, err = first.communicate(small.read_text(), timeout=60)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err
    assert promptkit("verify", out).returncode == 0
    assert json.loads((tmp_path / "o.jsonl.manifest.json").read_text())["steps"][0][
        "params"]["seed"] == 1
    assert sorted(listing(tmp_path)) == ["o.jsonl", "o.jsonl.manifest.json", "small.jsonl"]


@pytest.mark.slow  # more than 5 s on 2 cores
def test_many_runs_at_once_leave_out_and_manifest_of_one_run(tmp_path, small):
    """Without the lock, about one round in five left OUT of one run beside the manifest
    of another (measured: 4 of 20)."""
    out = tmp_path / "o.jsonl"
    lock_line = (f"promptkit: {out}: another promptkit run is writing it; try again when it "
                 "is done\n")
    for round_ in range(12):
        runs = [subprocess.Popen([*PROMPTKIT, "nonce", str(small), str(out), "--seed",
                                  str(10 * round_ + i)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(4)]
        results = [(run.wait(timeout=120), run.communicate()[1]) for run in runs]
        assert any(code == 0 for code, _ in results), results
        for code, err in results:
            assert code == 0 or err == lock_line, (code, err)
        verified = promptkit("verify", out)
        assert verified.returncode == 0, (round_, verified.stderr)
        assert sorted(listing(tmp_path)) == ["o.jsonl", "o.jsonl.manifest.json", "small.jsonl"]


def test_a_manifest_written_elsewhere_takes_the_old_one_away(tmp_path, small):
    """OUT's old manifest would describe a file that is gone: it goes with the old OUT."""
    out = tmp_path / "o.jsonl"
    assert promptkit("nonce", small, out, "--seed", "1").returncode == 0
    other = tmp_path / "other.json"
    assert promptkit("nonce", small, out, "--seed", "2", "--manifest", other).returncode == 0
    assert sorted(listing(tmp_path)) == ["o.jsonl", "other.json", "small.jsonl"]
    assert promptkit("verify", out, "--manifest", other).returncode == 0


# ---------------------------------------------------------------- rebuild, publish --overwrite


def test_a_rebuild_that_differs_writes_nothing(tmp_path, small):
    out = tmp_path / "o.jsonl"
    assert promptkit("nonce", small, out, "--seed", "1").returncode == 0
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": f"else {i}"} for i in range(50)])
    again = tmp_path / "again.jsonl"
    result = promptkit("rebuild", f"{out}.manifest.json", again, "--input", other)
    assert one_line(result).startswith(f"{again}: rebuilt file differs from the manifest")
    assert not again.exists() and not Path(f"{again}.manifest.json").exists()
    again.write_text("old\n")  # an existing file stays as it was
    assert promptkit("rebuild", f"{out}.manifest.json", again, "--input", other
                     ).returncode == 1
    assert again.read_text() == "old\n"
    assert sorted(listing(tmp_path)) == ["again.jsonl", "o.jsonl", "o.jsonl.manifest.json",
                                         "other.jsonl", "small.jsonl"]
    result = promptkit("rebuild", f"{out}.manifest.json", again)
    assert result.returncode == 0, result.stderr
    assert again.read_bytes() == out.read_bytes()


def test_publish_overwrite_replaces_only_a_publish_folder(tmp_path, small):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    result = promptkit("publish", small, home, "--overwrite")
    assert one_line(result) == (f"{home}: not a folder 'publish' made (no "
                                "aiperf/prompts.jsonl.manifest.json); --overwrite replaces "
                                "only those")
    assert listing(home) == {"thesis.tex": b"years of work"}
    pub = tmp_path / "pub"
    assert promptkit("publish", small, pub).returncode == 0
    result = promptkit("publish", small, pub, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert sorted(listing(tmp_path)) == ["home", "pub", "small.jsonl"]
    shutil.rmtree(pub)
