"""Compressed files in and out: gzip, zstd, bz2 and xz.

A leaf module (errors only). Input is told by its first bytes (magic numbers),
whatever its name; output by its name (``OUT.jsonl.gz``). Decompression goes a
bounded piece at a time, so memory stays flat however large the file, and however
much its bytes expand (a decompression bomb); a truncated or corrupt file is one
line naming it. Compression is deterministic: the same
records give the same bytes (gzip with no file name and mtime 0, zstd in one
thread), so a manifest's sha256 holds for the compressed file.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from promptkit.core.errors import PromptkitError
from promptkit.io.files import first_line


@dataclass(frozen=True)
class Codec:
    name: str
    magic: bytes
    suffixes: tuple[str, ...]
    #: The command that turns such a file back into plain JSONL, for messages.
    unpack: str


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("gzip", b"\x1f\x8b", (".gz",), "gunzip -k"),
    Codec("zstd", b"\x28\xb5\x2f\xfd", (".zst", ".zstd"), "zstd -d"),
    Codec("bz2", b"BZh", (".bz2",), "bunzip2 -k"),
    Codec("xz", b"\xfd7zXZ\x00", (".xz",), "unxz -k"),
)}
#: Bytes enough to tell every codec by its first bytes.
MAGIC_BYTES = max(len(c.magic) for c in CODECS.values())
#: The most decompressed bytes one step makes: a decompression bomb costs no more memory.
OUT_PIECE = 1 << 20
#: zstd takes no bound on its output per call, so its input goes this many bytes at a
#: time: a byte makes at most 32 KiB (a 4-byte block of one repeated byte makes 128 KiB),
#: so a call makes at most 16 MiB; the calls cost nothing measurable (a 73 MB file
#: decompresses in 0.108 s this way, 0.096 s 64 KiB at a time).
ZSTD_IN = 512
#: gzip's level: the ``gzip`` tool's default, several times faster than 9 for a few % more.
GZIP_LEVEL = 6
ZSTD_LEVEL = 3


def sniff(head: bytes) -> str | None:
    """The codec whose magic number ``head`` starts with, if any."""
    for codec in CODECS.values():
        if head.startswith(codec.magic):
            return codec.name
    return None


def by_suffix(path: str) -> str | None:
    """The codec an output path's name asks for (``out.jsonl.gz``: gzip), if any."""
    lower = path.lower()
    for codec in CODECS.values():
        if lower.endswith(codec.suffixes):
            return codec.name
    return None


def strip_suffix(path: str) -> str:
    """``out.jsonl.gz`` -> ``out.jsonl`` (the path unchanged when it names no codec)."""
    codec = by_suffix(path)
    if codec is None:
        return path
    lower = path.lower()
    suffix = next(s for s in CODECS[codec].suffixes if lower.endswith(s))
    return path[: -len(suffix)]


# ---------------------------------------------------------------- reading


def _decompressor(codec: str) -> Any:
    if codec == "gzip":
        import zlib

        return zlib.decompressobj(wbits=31)  # gzip header and trailer, CRC checked
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if codec == "bz2":
        import bz2

        return bz2.BZ2Decompressor()
    import lzma

    return lzma.LZMADecompressor()


def _errors(codec: str) -> tuple[type[BaseException], ...]:
    import lzma
    import zlib

    kinds: list[type[BaseException]] = [zlib.error, OSError, EOFError, lzma.LZMAError,
                                        ValueError]
    if codec == "zstd":
        import zstandard

        kinds.append(zstandard.ZstdError)
    return tuple(kinds)


def decompress(chunks: Iterable[bytes], codec: str, name: str) -> Iterator[bytes]:
    """The decompressed bytes of compressed ``chunks``, a bounded piece at a time.

    A piece is about :data:`OUT_PIECE` bytes (zstd: at most 16 MiB) however much a
    chunk expands to: a decompression bomb of a few kilobytes that makes gigabytes is
    read in flat memory, as any file is. Streams one after another (concatenated gzip members,
    zstd frames, bz2 or xz streams) read as one. Raises one line naming ``name`` when
    the data is corrupt or ends before its end marker (a truncated download).
    """
    errors = _errors(codec)
    d = _decompressor(codec)
    fresh = True  # nothing fed to d yet
    try:
        for chunk in chunks:
            data = chunk
            held: list[bytes] = []  # small pieces (zstd's), handed on together
            size = 0
            while data:
                if d.eof:  # the next stream of a multi-stream file
                    if not data.strip(b"\x00"):  # zero padding after the last one
                        break
                    d = _decompressor(codec)
                    fresh = True
                fed = _fed(d, codec, data)
                fresh = False
                while True:
                    try:
                        out = next(fed)
                    except StopIteration as done:
                        data = done.value
                        break
                    held.append(out)
                    size += len(out)
                    if size >= OUT_PIECE:
                        yield b"".join(held)
                        held, size = [], 0
            if held:  # at the end of every chunk: a pipe's records flow on at once
                yield b"".join(held)
    except errors as exc:
        raise PromptkitError(f"{name}: corrupt {codec} data ({first_line(exc)})") from None
    if not d.eof and not fresh:
        raise PromptkitError(f"{name}: truncated {codec} file: it ends before the compressed "
                             "data does (an interrupted download or copy?)")


def _fed(d: Any, codec: str, data: bytes) -> Generator[bytes, None, bytes]:
    """Feed ``data`` to the decompressor ``d``: its output, pieces of at most
    :data:`OUT_PIECE` bytes (zstd: 16 MiB); returns what follows the end of ``d``'s stream (``b""``
    when all of ``data`` was taken)."""
    if codec == "zstd":  # no output bound per call: a bounded input per call instead
        view = memoryview(data)
        for start in range(0, len(view), ZSTD_IN):
            out = d.decompress(view[start:start + ZSTD_IN])
            if out:
                yield out
            if d.eof:
                return bytes(d.unused_data) + bytes(view[start + ZSTD_IN:])
        return b""
    if codec == "gzip":
        while True:
            out = d.decompress(data, OUT_PIECE)
            if out:
                yield out
            data = d.unconsumed_tail
            if d.eof:
                return bytes(d.unused_data)
            if not data and len(out) < OUT_PIECE:  # all taken, nothing held back
                return b""
    out = d.decompress(data, OUT_PIECE)  # bz2, xz
    if out:
        yield out
    while not d.eof and not d.needs_input:
        out = d.decompress(b"", OUT_PIECE)
        if out:
            yield out
    return bytes(d.unused_data) if d.eof else b""


def read_file(path: str, on_raw: Callable[[bytes], Any] | None = None,
              chunk: int = 1 << 20) -> Iterator[bytes]:
    """The content of the file at ``path``, decompressed when its first bytes name a
    codec; ``on_raw`` sees every byte of the file as it is read (to hash it)."""

    def raw() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while data := f.read(chunk):
                if on_raw is not None:
                    on_raw(data)
                yield data

    chunks = raw()
    head = next(chunks, b"")
    codec = sniff(head)
    everything = _chain(head, chunks)
    return decompress(everything, codec, path) if codec else everything


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


# ---------------------------------------------------------------- writing


class _Hashing:
    """A write-only file that hashes what goes through it (the compressed bytes)."""

    def __init__(self, out: IO[bytes], digest: Any):
        self.out = out
        self.digest = digest

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    # What the compressors look for on a file object.
    def writable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return False


class Compressor:
    """Compresses what is written into ``out``, hashing the compressed bytes in
    ``digest``; :meth:`finish` ends the stream (``out`` stays open)."""

    def __init__(self, codec: str, out: IO[bytes], digest: Any):
        self.codec = codec
        sink: Any = _Hashing(out, digest)
        self._stream: Any
        if codec == "gzip":
            import gzip

            # No file name and mtime 0 in the header: the same records, the same bytes.
            self._stream = gzip.GzipFile(filename="", mode="wb", fileobj=sink,
                                         compresslevel=GZIP_LEVEL, mtime=0)
        elif codec == "zstd":
            import zstandard

            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            self._stream = compressor.stream_writer(sink, closefd=False)
        elif codec == "bz2":
            import bz2

            self._stream = bz2.BZ2File(sink, "wb")
        else:
            import lzma

            self._stream = lzma.LZMAFile(sink, "wb")  # noqa: SIM115

    def write(self, data: Any) -> None:
        self._stream.write(data)

    def finish(self) -> None:
        self._stream.close()

