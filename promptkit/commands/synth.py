"""``promptkit synth``: workloads generated from options alone (see
:mod:`promptkit.ops.synth`), with the CLI's defaults: a random seed when none is given,
the manifest at OUT.manifest.json."""

from __future__ import annotations

from typing import Any

from promptkit.commands.common import manifest_path_for
from promptkit.core.seeds import new_seed
from promptkit.formats import FORMATS
from promptkit.ops import synth as generators
from promptkit.runner import pipeline


def prefix_test(output_path: str, *, groups: int = 16, group_size: int = 8,
                system_tokens: int | None = None, tokenizer: str = "cl100k_base",
                system_prompt: str | None = None, filler_file: str | None = None,
                order: str = "interleaved", output_tokens: int | None = None,
                to_format: str = "mooncake_trace", seed: int | None = None,
                manifest_path: str | None = None, argv: list[str] | None = None
                ) -> dict[str, Any]:
    """``promptkit synth prefix-test OUT``: ``groups`` x ``group_size`` requests sharing
    exact system prompts; returns the manifest (also written)."""
    params = {
        "groups": groups, "group_size": group_size,
        "system_tokens": generators.DEFAULT_SYSTEM_TOKENS if system_tokens is None
        else system_tokens,
        "tokenizer": tokenizer,
        "system_prompt": generators.DEFAULT_SYSTEM_PROMPT if system_prompt is None
        else system_prompt,
        "filler_file": filler_file, "seed": new_seed() if seed is None else seed,
        "order": order, "output_tokens": output_tokens,
        "into": "system" if FORMATS[to_format].holds_system else "text",
    }
    params = generators.checked_params("prefix-test", params)  # before anything is written
    return pipeline.generate("prefix-test", params, output_path, to_format=to_format,
                             manifest_path=manifest_path_for(output_path, manifest_path),
                             argv=argv)
