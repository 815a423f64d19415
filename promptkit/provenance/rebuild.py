"""Re-make a file from its manifest, byte for byte, and refuse what a manifest must not
make a rebuild do.

A manifest is another person's input: it is checked when read
(:func:`promptkit.provenance.manifest.read`), each step's parameters by the operation's own
``make_step``, and no file it names outside its own folder is read unless allowed.
The rebuilt file must match the manifest: its bytes (or, compressed, its lines), its
side files and its AIPerf arguments.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from promptkit.core.errors import OptionNeededError, PromptkitError
from promptkit.io.datasets import DatasetOptions
from promptkit.io.files import STDIO, display_name
from promptkit.io.shards import expand, is_many, shard_name
from promptkit.ops.registry import make
from promptkit.provenance import manifest
from promptkit.runner.pipeline import generate, run, where_of
from promptkit.runner.splice import writer_of


def rebuild(manifest_path: str, output_path: str, *, input_path: str | None = None,
            argv: list[str] | None = None, workers: int | None = None,
            allow_paths: bool = False, ray_address: str | None = None) -> dict[str, Any]:
    """Re-make a file from its manifest and input; raise if the bytes differ.

    A manifest is another person's input: one that names files outside its own folder
    (an input, a filler or system prompt file; a ``hf:`` input, which is a download) is
    refused, naming them, before anything is read, unless ``allow_paths`` (the input:
    ``input_path``, which replaces the one the manifest names).

    A folder of parts (made with ``--ray``) is rebuilt as a folder of the same parts: on
    the Ray cluster at ``ray_address`` when given (cut into chunks of the recorded size),
    else on this machine, the output cut where the recorded parts end."""
    recorded = manifest.read(manifest_path)
    outside = paths_outside(manifest_path, recorded, input_path)
    if outside and not allow_paths:
        named = ", ".join(f"{what} {path}" for what, path in outside)
        raise PromptkitError(f"{manifest_path}: names files outside its folder, not read: "
                             f"{named} (--allow-paths reads them; --input PATH gives the "
                             "input)")
    own_manifest = None if output_path == STDIO else manifest.default_path(output_path)

    def same_file(result: dict[str, Any]) -> None:
        """Refuse a differing result before it is put in place: no OUT, no manifest."""
        problem = shards_problem(recorded, result) or rebuilt_problem(recorded, result)
        if problem is not None:
            raise PromptkitError(f"{output_path}: {problem}; not written")

    if "generator" in recorded:
        return _regenerate(manifest_path, recorded, output_path, own_manifest, argv,
                           same_file)
    if "parts" in recorded["output"]:
        own_manifest = None
    elif ray_address is not None:
        raise PromptkitError(f"{manifest_path}: describes one file, not a folder of parts: "
                             "rebuild it without --ray")
    return _rerun(manifest_path, recorded, output_path, own_manifest, input_path, argv,
                  workers, same_file, ray_address)


def rebuilt_problem(recorded: dict[str, Any], result: dict[str, Any]) -> str | None:
    """How a rebuilt file (its manifest ``result``) differs from the one ``recorded``
    describes: its bytes, its side files or its AIPerf arguments (paths of its own files
    aside: a rebuilt file has its own name); ``None`` when it is the same."""
    want = recorded["output"]["sha256"]
    # A compressed file: the same lines, compressed by another zlib or zstd, may differ
    # in bytes; the lines are what was made.
    lines = recorded["output"].get("content_sha256")
    same_lines = lines is not None and result["output"].get("content_sha256") == lines
    if result["output"]["sha256"] != want and not same_lines:
        return (f"rebuilt file differs from the manifest "
                f"(sha256 {result['output']['sha256']}, manifest says {want})")
    for what, made, described in (
            ("side files", _side_sha256s(result), _side_sha256s(recorded)),
            ("AIPerf arguments", _args_shape(result), _args_shape(recorded))):
        if made != described:
            return f"rebuilt {what} differ from the manifest ({made}, manifest says {described})"
    return None


def shards_problem(recorded: dict[str, Any], result: dict[str, Any]) -> str | None:
    """How the shards a rebuild read (an input of many files, see
    :mod:`promptkit.io.shards`) differ from those the manifest lists, by their sha256 in
    order: the first that differs, named; ``None`` when they are the same (or the input
    is one file)."""
    listed = recorded["inputs"][0].get("shards") if recorded["inputs"] else None
    if listed is None:
        return None
    read = result["inputs"][0].get("shards") or []
    for i, (was, now) in enumerate(zip(listed, read, strict=False)):
        if was["sha256"] != now["sha256"]:
            return (f"input shard {now['path']} differs from the manifest's shard {i} "
                    f"(sha256 {now['sha256']}, manifest says {was['sha256']} of {was['path']})")
    if len(listed) != len(read):
        extra = (f"; first not listed: {read[len(listed)]['path']}" if len(read) > len(listed)
                 else f"; first missing: {listed[len(read)]['path']}")
        return f"the input has {len(read)} shards, the manifest lists {len(listed)}{extra}"
    return None


def unlisted_shard(recorded: dict[str, Any], source: str) -> str | None:
    """The first shard of ``source`` (a folder or glob: see :mod:`promptkit.io.shards`) that
    the manifest's input ``recorded`` does not list, by its name within the input; a
    rebuild opens no file a manifest does not name (a file or link dropped among the
    shards). ``None`` when every shard is listed or the input is not many files."""
    listed = recorded.get("shards")
    if listed is None or source == STDIO or not is_many(source):
        return None
    names = {shard_name(recorded["path"], shard["path"]) for shard in listed}
    return next((path for path in expand(source) if shard_name(source, path) not in names),
                None)


#: AIPerf arguments whose value is a path of this run's own files.
_PATH_ARGS = frozenset({"--input-file", "--system-prompt-file"})


def _args_shape(described: dict[str, Any]) -> list[str]:
    """A manifest's AIPerf arguments with the paths of its own files left out (a rebuilt
    file has its own name)."""
    args = described.get("aiperf", {}).get("args", [])
    return [a if i == 0 or args[i - 1] not in _PATH_ARGS else "PATH" for i, a in enumerate(args)]


def _side_sha256s(described: dict[str, Any]) -> list[str]:
    return [str(side.get("sha256")) for side in described.get("side_outputs", [])
            if isinstance(side, dict)]


def paths_outside(manifest_path: str, recorded: dict[str, Any],
                  input_path: str | None = None) -> list[tuple[str, str]]:
    """The files ``rebuild`` would read that are outside the manifest's own folder, as
    ``(field, path)``: the input (unless ``input_path`` replaces it; a ``hf:`` input is a
    download), and every file a step's or the generator's parameters name. A path is
    taken as ``rebuild`` reads it (relative to the working folder), links resolved."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(manifest_path)))
    named: list[tuple[str, str]] = []
    if input_path is None:
        named += [(f"inputs[{i}].path", entry["path"])
                  for i, entry in enumerate(recorded["inputs"])
                  if entry["path"] != display_name(STDIO)]
        named += [(f"inputs[{i}].shards[{j}].path", shard["path"])
                  for i, entry in enumerate(recorded["inputs"])
                  for j, shard in enumerate(entry.get("shards") or [])]
    described = [(f"steps[{i}].params", step["params"])
                 for i, step in enumerate(recorded["steps"])]
    if "generator" in recorded:
        described.append(("generator.params", recorded["generator"]["params"]))
    for where, params in described:
        named += [(f"{where}.{key}", params[key]) for key in ("filler_file", "system_prompt_file")
                  if isinstance(params.get(key), str)]
    for what, path in named:
        if not manifest.is_path(path):
            raise PromptkitError(f"{manifest_path}: not a valid manifest: {what} is {path!r}, "
                                 "not a path")

    def inside(path: str) -> bool:
        if path.startswith("hf:"):
            return False
        real = os.path.realpath(path)
        return os.path.commonpath([real, folder]) == folder

    return [(what, path) for what, path in named if not inside(path)]


def _regenerate(manifest_path: str, recorded: dict[str, Any], output_path: str,
                own_manifest: str | None, argv: list[str] | None,
                accept: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from promptkit.ops.synth import GENERATORS, checked_params

    generator = recorded["generator"]
    if generator["name"] not in GENERATORS:
        raise PromptkitError(f"{manifest_path}: unknown generator {generator['name']!r}")
    try:
        params = checked_params(generator["name"], generator["params"])
    except PromptkitError as exc:
        raise PromptkitError(f"{manifest_path}: generator.params: {exc}") from None
    return generate(generator["name"], params, output_path,
                    to_format=recorded["output"]["format"], manifest_path=own_manifest,
                    argv=argv, accept=accept)


def _same_rows(dataset: dict[str, Any] | None) -> dict[str, Any] | None:
    """Dataset options that read the rows a manifest describes: a hub dataset at the
    commit it was read at, not wherever its branch points now."""
    if dataset is None:
        return None
    options = dict(dataset["options"])
    if dataset.get("revision"):
        options["revision"] = dataset["revision"]
    return options


def _rerun(manifest_path: str, recorded: dict[str, Any], output_path: str,
           own_manifest: str | None, input_path: str | None, argv: list[str] | None,
           workers: int | None, accept: Callable[[dict[str, Any]], None],
           ray_address: str | None = None) -> dict[str, Any]:
    from dataclasses import fields

    inputs = recorded["inputs"]
    if len(inputs) != 1:
        raise PromptkitError(f"{manifest_path}: expected one input, found {len(inputs)}")
    source = input_path or inputs[0]["path"]
    if source == display_name(STDIO):
        raise OptionNeededError(f"{manifest_path}: the input was stdin; name it with --input")
    dataset = inputs[0].get("dataset")
    options = _same_rows(dataset)
    if dataset is None and inputs[0].get("limit") is not None:
        options = {"limit": inputs[0]["limit"]}
    known = {f.name for f in fields(DatasetOptions)}
    for key in options or {}:
        if key not in known:
            raise PromptkitError(f"{manifest_path}: inputs[0].dataset.options: unknown "
                                 f"option {key!r}")
    unlisted = unlisted_shard(inputs[0], source)
    if unlisted is not None:
        raise PromptkitError(f"{manifest_path}: {unlisted} is not one of the input's shards "
                             "the manifest lists: not read")
    from_format = None if dataset is not None else inputs[0]["format"]
    where = where_of(source, output_path, from_format, options)
    steps = []
    for i, step in enumerate(recorded["steps"]):
        try:
            steps.append(make(step["op"], step["params"], where))
        except PromptkitError as exc:
            raise PromptkitError(f"{manifest_path}: steps[{i}]: {exc}") from None
    try:
        writer_of(recorded)
    except PromptkitError as exc:
        raise PromptkitError(f"{manifest_path}: {exc}") from None
    if "parts" in recorded["output"]:
        from promptkit.ray.run import rebuild_parts

        return rebuild_parts(recorded, source, output_path, steps, from_format=from_format,
                             skip_invalid=recorded["skipped"]["count"] > 0, argv=argv,
                             workers=workers, accept=accept, ray_address=ray_address)
    return run(
        source,
        output_path,
        steps,
        from_format=from_format,
        dataset=options,
        to_format=recorded["output"]["format"],
        skip_invalid=recorded["skipped"]["count"] > 0,
        manifest_path=own_manifest,
        argv=argv,
        workers=workers,
        accept=accept,
        writer=writer_of(recorded),
        keep_replies=manifest.kept_replies(recorded),
    )
