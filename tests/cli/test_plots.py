"""--plot: real PNG files from matplotlib, and one clear line without it."""

from __future__ import annotations

import json
import sys

from helpers import write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def test_check_and_stats_draw_png_files(tmp_path, run, single_turn):
    out = tmp_path / "n.jsonl"
    assert run("nonce", single_turn, out, "--seed", "1").exit_code == 0
    picture = tmp_path / "check.png"
    rows = tmp_path / "rows.jsonl"
    result = run("check", out, "--tokenizer", "cl100k_base", "--requests", "12",
                 "--plot", picture, "--per-request", rows)
    assert result.exit_code == 0, result.stderr
    assert picture.read_bytes().startswith(PNG) and picture.stat().st_size > 10_000
    assert result.stderr.splitlines() == [f"promptkit: wrote {picture}",
                                          f"promptkit: wrote {rows}"]
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Shared."},
                      {"role": "user", "content": "q" * (i + 1)}]} for i in range(9)])
    histogram = tmp_path / "stats.png"
    result = run("stats", chat, "--tokenizer", "cl100k_base", "--plot", histogram)
    assert result.exit_code == 0, result.stderr
    assert histogram.read_bytes().startswith(PNG)
    assert result.stderr.splitlines() == [f"promptkit: wrote {histogram}"]
    result = run("stats", chat, "--tokenizer", "cl100k_base", "--plot", histogram, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["wrote"] == [str(histogram)]
    assert result.stderr.splitlines() == [f"promptkit: wrote {histogram}"]


def test_stats_plot_needs_token_counts(tmp_path, run, single_turn):
    result = run("stats", single_turn, "--plot", tmp_path / "s.png")
    assert result.exit_code == 2  # a usage error, found before anything is read
    assert result.stderr.splitlines()[-1] == ("Error: --plot draws prompt token counts: it "
                                              "needs --tokenizer")
    assert not (tmp_path / "s.png").exists()


def test_without_matplotlib_the_option_says_how_to_install(tmp_path, run, single_turn,
                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    result = run("check", single_turn, "--tokenizer", "cl100k_base", "--plot",
                 tmp_path / "c.png")
    assert result.exit_code == 1
    # The install line works from a clone: the PyPI name promptkit is another project.
    assert result.stderr.startswith("promptkit: --plot needs matplotlib")
    assert "pip install matplotlib" in result.stderr
    assert "promptkit[plot]" not in result.stderr
    assert list(tmp_path.glob("*.png")) == []
