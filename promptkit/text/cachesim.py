"""Prefix-cache simulation: the hits a server's prefix cache gives a run of prompts.

A leaf module: prompts come in as token ids (or, for hash-id traces, as block
ids), in the order a client sends them, one at a time (concurrency 1).

- :class:`VllmCache` follows vLLM v1: the cache holds *full* blocks of
  ``block_size`` tokens, each named by a hash chained over every block before
  it (and a per-request ``cache_salt`` in the first); a prompt hits the longest
  run of its leading blocks already cached, and never its last token, so a
  prompt of L tokens hits at most ``(L - 1) // block_size * block_size``. After
  the prompt, all its full blocks are cached. With a capacity, the least
  recently used blocks go first; within one prompt the tail blocks are older
  than the head (vLLM frees a request's blocks tail first). Given vLLM's block
  count (``num_gpu_blocks``) instead, it replays vLLM's block pool exactly: the
  null block, the blocks the running request holds, its generated tokens.
- :class:`SglangCache` follows SGLang's radix cache with page size 1: a prompt
  hits its longest common token prefix with anything cached, at most L - 1
  tokens; eviction drops least recently used leaves, token by token.

Hit rate = hit tokens / prompt tokens, as vLLM's ``prefix_cache_hits`` /
``prefix_cache_queries`` count it.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import struct
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class VllmCache:
    """vLLM v1's block cache (see the module docstring).

    Capacity, one of:

    - ``capacity_tokens``: a plain LRU cache of ``capacity_tokens // block_size``
      blocks; a prompt's blocks join it, then the least recently used go.
    - ``num_gpu_blocks``: vLLM's own block pool of that many blocks (the number vLLM
      logs, or ``--num-gpu-blocks-override``), replayed as vLLM 0.32's scheduler and
      ``BlockPool`` use it at concurrency 1, which gives vLLM's hit counts exactly:

      1. block 0 is vLLM's null block: ``num_gpu_blocks - 1`` blocks hold KV;
      2. a request of L prompt tokens generating O tokens holds
         ``ceil((L + O - 1) / block_size)`` blocks while it runs (the last generated
         token is never fed back); its hit blocks are among them, the rest are taken
         first from blocks that cache nothing, then by evicting the least recently
         used cached blocks;
      3. when it ends, its ``floor((L + O - 1) / block_size)`` full blocks stay cached
         (the ones past the prompt hold generated tokens: no later prompt can hit
         them, but they take room; an identical block computed again is a second
         copy, vLLM does not deduplicate) and its last, partial block caches nothing
         and is reused first; the cached ones join the LRU order tail block first,
         so a request's head blocks outlive its tail.

    Neither: unbounded.
    """

    def __init__(self, block_size: int = 16, capacity_tokens: int | None = None,
                 num_gpu_blocks: int | None = None):
        if block_size < 1:
            raise ValueError("block size must be at least 1")
        if capacity_tokens is not None and num_gpu_blocks is not None:
            raise ValueError("give capacity_tokens or num_gpu_blocks, not both")
        if num_gpu_blocks is not None and num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be at least 2 (vLLM keeps one as its null "
                             "block)")
        self.block_size = block_size
        self.capacity = None if capacity_tokens is None else capacity_tokens // block_size
        self.blocks: OrderedDict[Hashable, None] = OrderedDict()  # LRU first
        self.unbounded = BlockSet()  # without a capacity, order does not matter
        # num_gpu_blocks: vLLM's pool. Cached blocks no request holds, by block id,
        # least recently used first (vLLM's free queue after its never-cached blocks),
        # and every block id holding each key (vLLM keeps duplicates).
        self.num_gpu_blocks = num_gpu_blocks
        self.free_cached: OrderedDict[int, Hashable] = OrderedDict()
        self.holders: dict[Hashable, list[int]] = {}
        self._next_id = 0  # the next block id

    def block_hashes(self, tokens: Sequence[int] | Runs, salt: str | None = None) -> list[int]:
        """The chained hash of each full block of ``tokens`` (64-bit): token ids, or
        :class:`Runs`."""
        size = self.block_size
        hashes = []
        parent = hashlib.blake2b((salt or "").encode(), digest_size=8).digest()
        if isinstance(tokens, Runs):
            return tokens.block_hashes(size, parent)
        data = array("I", tokens).tobytes()
        step = 4 * size
        for start in range(0, len(data) - step + 1, step):
            parent = hashlib.blake2b(parent + data[start:start + step], digest_size=8).digest()
            hashes.append(int.from_bytes(parent))
        return hashes

    def request(self, tokens: Sequence[int], salt: str | None = None,
                output_tokens: int | None = None) -> int:
        """Send one prompt; return its hit tokens. ``output_tokens``: how many tokens the
        server generates for it (default 1); only ``num_gpu_blocks`` uses it."""
        return self.request_blocks(self.block_hashes(tokens, salt), len(tokens),
                                   output_tokens)

    def request_blocks(self, blocks: Sequence[Hashable], length: int,
                       output_tokens: int | None = None) -> int:
        """Send a prompt of ``length`` tokens whose full blocks are ``blocks`` (chained
        block hashes, or the ids of a hash-id trace, which are chained already).

        Keys past the prompt's full blocks are those of blocks filled by generated
        tokens. With ``num_gpu_blocks``, ``output_tokens`` (default 1) says how many
        tokens the server generates: the request's blocks past ``blocks`` that they
        fill get keys no prompt can match."""
        can_hit = (length - 1) // self.block_size if length > 0 else 0
        if self.num_gpu_blocks is not None:
            return self._request_pool(blocks, length, can_hit, output_tokens or 1)
        hits = 0
        if self.capacity is None:
            seen = self.unbounded
            for block in blocks[:can_hit]:
                if block not in seen:
                    break
                hits += 1
            seen.update(blocks)
            return hits * self.block_size
        cached = self.blocks
        for block in blocks[:can_hit]:
            if block not in cached:
                break
            hits += 1
        for block in reversed(blocks):  # head blocks end up most recently used
            cached[block] = None
            cached.move_to_end(block)
        while len(cached) > self.capacity:
            cached.popitem(last=False)
        return hits * self.block_size

    def _request_pool(self, blocks: Sequence[Hashable], length: int, can_hit: int,
                      output_tokens: int) -> int:
        """One request against vLLM's block pool (rules in the class docstring)."""
        assert self.num_gpu_blocks is not None
        size = self.block_size
        slots = length + output_tokens - 1  # KV slots the request computes
        full = max(slots // size, len(blocks))  # blocks it leaves cached
        held = max(-(-slots // size), full)  # blocks it holds while it runs
        chain: list[tuple[int, Hashable]] = []
        for key in blocks[:can_hit]:  # the hit: vLLM takes the first block of a key
            ids = self.holders.get(key)
            if not ids:
                break
            chain.append((ids[0], key))
        hits = len(chain)
        for block_id, _ in chain:  # in use now: out of the free queue
            self.free_cached.pop(block_id, None)
        never_cached = self.num_gpu_blocks - 1 - len(self.free_cached) - hits
        evict = min(max(held - hits - never_cached, 0), len(self.free_cached))
        for _ in range(evict):
            block_id, key = self.free_cached.popitem(last=False)
            ids = self.holders[key]
            ids.remove(block_id)
            if not ids:
                del self.holders[key]
        for index in range(hits, full):  # its new full blocks get cached
            key = blocks[index] if index < len(blocks) else object()  # generated tokens
            block_id, self._next_id = self._next_id, self._next_id + 1
            self.holders.setdefault(key, []).append(block_id)
            chain.append((block_id, key))
        for block_id, key in reversed(chain):  # freed tail first: the head outlives it
            self.free_cached[block_id] = key
            self.free_cached.move_to_end(block_id)
        return hits * size


_MASK = (1 << 64) - 1
#: Fibonacci hashing's multiplier (odd: a key times it, mod 2**64, gives the key back
#: times its inverse).
_GOLDEN = 0x9E3779B97F4A7C15
_GOLDEN_INVERSE = pow(_GOLDEN, -1, 1 << 64)
_CHUNK = 1 << 16


class BlockSet:
    """A set of block keys at about 16 bytes a key: 64-bit ints (chained block hashes,
    hash ids) in an open-addressing table of 8-byte slots, from a half to two thirds
    full (a Python ``set`` of ints takes 70-100 bytes a key); any other key (a block
    ``--cache-bust`` makes an instance's own) in a ``set`` beside it.

    Linear probing without wrapping around: a key lives at or after its home slot
    (the top bits of the key times :data:`_GOLDEN`), in a run of full slots; the table
    has room past its last home slot for the longest run. 0 marks an empty slot, so
    the key 0 is a flag of its own."""

    __slots__ = ("slots", "shift", "size", "room", "zero", "others")

    def __init__(self) -> None:
        self.others: set[Hashable] = set()
        self.zero = False
        self._build(np.zeros(0, np.uint64), 10)

    def _build(self, keys: np.ndarray, bits: int) -> None:
        """The table of ``2 ** bits`` home slots holding ``keys`` (distinct, none 0;
        taken over and overwritten), placed at once: sorted by home slot, each goes to
        its home or the slot after the one before it, whichever is later (a chunk at a
        time: the keys and the new table are all the memory it takes)."""
        self.shift = 64 - bits
        self.room = (1 << bits) * 2 // 3  # keys before the table grows
        self.size = len(keys)
        keys *= np.uint64(_GOLDEN)  # (wraps around: mod 2**64)
        keys.sort()  # by home slot: the top bits
        slots = array("Q", [0]) * ((1 << bits) + 64)
        reach = 0  # the running maximum of (home slot - rank): a key's slot less its rank
        for start in range(0, len(keys), _CHUNK):
            part = keys[start:start + _CHUNK]
            rank = np.arange(start, start + len(part), dtype=np.int64)
            at = (part >> np.uint64(self.shift)).view(np.int64) - rank
            at[0] = max(at[0], reach)
            np.maximum.accumulate(at, out=at)
            reach = int(at[-1])
            at += rank
            if at[-1] + 1 >= len(slots):  # the last slot stays empty: it ends every probe
                slots.extend(array("Q", [0]) * (int(at[-1]) + 64 - len(slots)))
            np.frombuffer(slots, np.uint64)[at] = part * np.uint64(_GOLDEN_INVERSE)
        self.slots = slots

    def __contains__(self, key: object) -> bool:
        if type(key) is not int or not 0 <= key <= _MASK:
            return key in self.others
        if not key:
            return self.zero
        slots = self.slots
        at = ((key * _GOLDEN) & _MASK) >> self.shift
        while True:
            found = slots[at]
            if found == key:
                return True
            if not found:
                return False
            at += 1

    def add(self, key: Hashable) -> None:
        if type(key) is not int or not 0 <= key <= _MASK:
            self.others.add(key)
            return
        if not key:
            self.zero = True
            return
        slots = self.slots
        at = ((key * _GOLDEN) & _MASK) >> self.shift
        while True:
            found = slots[at]
            if found == key:
                return
            if not found:
                break
            at += 1
        if at + 1 == len(slots):  # the last slot: keep one empty to end every probe
            self._grow()
            self.add(key)
            return
        slots[at] = key
        self.size += 1
        if self.size > self.room:
            self._grow()

    def update(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self.add(key)

    def _grow(self) -> None:
        table = np.frombuffer(self.slots, np.uint64)
        keys = table[table != 0]
        del table
        self.slots = array("Q")
        self._build(keys, 64 - self.shift + 1)

    def __len__(self) -> int:
        return self.size + self.zero + len(self.others)


def mixed(x: int) -> int:
    """splitmix64's finalizer: a 64-bit number, mixed (distinct in, distinct out)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


#: A run of symbols in a block: its marker, seed, first token and count.
_SYMBOL = struct.Struct(">BQII")


class Runs:
    """A token sequence held as runs, for prompts whose tokens are known only as equal or
    not (a hash-id trace's): a run of symbols ``(seed, start, count)``, the tokens
    ``start`` to ``start + count - 1`` of the content ``seed`` names (a hash id's block,
    wherever it is), or a run of token ids ``(tokens,)`` (a chat template's own). Runs
    that continue each other are one, so equal sequences have equal runs, and a block's
    hash costs its runs, not its tokens. Sliced, added and compared as a list is."""

    __slots__ = ("runs", "length")

    def __init__(self, runs: Sequence[tuple[Any, ...]] = ()):
        self.runs: list[tuple[Any, ...]] = []
        self.length = 0
        for run in runs:
            self._add(run)

    @classmethod
    def joined(cls, runs: list[tuple[Any, ...]], length: int) -> Runs:
        """Runs of symbol runs none of which continues the one before (distinct seeds),
        none empty, ``length`` tokens in all: taken as they are."""
        out = cls()
        out.runs, out.length = runs, length
        return out

    def _add(self, run: tuple[Any, ...]) -> None:
        count = len(run[0]) if len(run) == 1 else run[2]
        if not count:
            return
        self.length += count
        if self.runs:
            last = self.runs[-1]
            if len(run) == 1 and len(last) == 1:
                self.runs[-1] = (last[0] + run[0],)
                return
            if len(run) == 3 and len(last) == 3 and last[0] == run[0] and (
                    last[1] + last[2] == run[1]):
                self.runs[-1] = (last[0], last[1], last[2] + run[2])
                return
        self.runs.append(run)

    def __len__(self) -> int:
        return self.length

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Runs) and self.runs == other.runs

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Runs) -> Runs:
        out = Runs()
        out.runs, out.length = list(self.runs), self.length
        for run in other.runs:
            out._add(run)
        return out

    def __getitem__(self, cut: slice) -> Runs:
        start, stop, _ = cut.indices(self.length)
        out = Runs()
        at = 0
        for run in self.runs:
            count = len(run[0]) if len(run) == 1 else run[2]
            low, high = max(start - at, 0), min(stop - at, count)
            if low < high:
                out._add((run[0][low:high],) if len(run) == 1
                         else (run[0], run[1] + low, high - low))
            at += count
            if at >= stop:
                break
        return out

    def block_hashes(self, size: int, parent: bytes) -> list[int]:
        """The chained hash of each full block of ``size`` tokens, from ``parent``."""
        hashes = []
        pieces: list[bytes] = []
        room = size  # tokens the current block still takes
        blake2b, symbol = hashlib.blake2b, _SYMBOL.pack
        for run in self.runs:
            literal = len(run) == 1
            count = len(run[0]) if literal else run[2]
            done = 0
            while done < count:
                take = min(room, count - done)
                if literal:
                    pieces.append(b"\x02" + array("I", run[0][done:done + take]).tobytes())
                else:
                    pieces.append(symbol(1, run[0], run[1] + done, take))
                done += take
                room -= take
                if not room:
                    parent = blake2b(parent + b"".join(pieces), digest_size=8).digest()
                    hashes.append(int.from_bytes(parent))
                    pieces = []
                    room = size
        return hashes

    def tokens(self) -> array:
        """The tokens, one by one: token ids as they are, a symbol a 64-bit number with
        its top bit set (no token id has it)."""
        out = array("Q")
        for run in self.runs:
            if len(run) == 1:
                out.extend(run[0])
            else:
                seed, start, count = run
                out.extend(mixed(seed + i) | 1 << 63 for i in range(start, start + count))
        return out


@dataclass(eq=False)
class _Node:
    key: tuple[int, ...]
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    used: int = 0  # last access time


class SglangCache:
    """SGLang's radix cache, page size 1 (see the module docstring)."""

    def __init__(self, capacity_tokens: int | None = None):
        self.root = _Node((), None)
        self.capacity = capacity_tokens
        self.size = 0  # tokens cached
        self.clock = itertools.count(1)

    def request(self, tokens: Sequence[int], salt: str | None = None,
                length: int | None = None) -> int:
        """Send one prompt; return its hit tokens. A salt starts a separate tree.

        ``length``: the prompt is the first ``length`` tokens (default: all); the rest
        (the tokens the server generated) join the cache but cannot hit."""
        key = tuple(tokens)
        root = self._root(salt)
        now = next(self.clock)
        matched = self._match(root, key, now)
        hits = min(matched, max((len(key) if length is None else length) - 1, 0))
        self._insert(root, key, now)
        if self.capacity is not None:
            self._evict()
        return hits

    def _root(self, salt: str | None) -> _Node:
        if salt is None:
            return self.root
        marker = -1 - (int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=6).digest()))
        node = self.root.children.get(marker)
        if node is None:
            node = _Node((marker,), self.root)
            self.root.children[marker] = node
        return node

    def _match(self, node: _Node, key: tuple[int, ...], now: int) -> int:
        matched = 0
        while matched < len(key):
            child = node.children.get(key[matched])
            if child is None:
                break
            common = _common(child.key, key[matched:])
            child.used = now
            matched += common
            if common < len(child.key):
                break
            node = child
        return matched

    def _insert(self, node: _Node, key: tuple[int, ...], now: int) -> None:
        at = 0
        while at < len(key):
            child = node.children.get(key[at])
            if child is None:
                new = _Node(key[at:], node, used=now)
                node.children[key[at]] = new
                self.size += len(new.key)
                return
            common = _common(child.key, key[at:])
            if common < len(child.key):  # split the edge
                head = _Node(child.key[:common], node, used=now)
                child.key = child.key[common:]
                child.parent = head
                head.children[child.key[0]] = child
                node.children[head.key[0]] = head
                child = head
            child.used = now
            at += common
            node = child

    def _evict(self) -> None:
        assert self.capacity is not None
        if self.size <= self.capacity:
            return
        leaves = [(n.used, id(n), n) for n in self._nodes() if not n.children]
        heapq.heapify(leaves)
        while self.size > self.capacity and leaves:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            if parent is None or leaf.key[0] < 0:  # a salt's root holds no tokens
                continue
            drop = min(len(leaf.key), self.size - self.capacity)
            if drop < len(leaf.key):  # drop the tail tokens only
                leaf.key = leaf.key[:len(leaf.key) - drop]
                self.size -= drop
                continue
            del parent.children[leaf.key[0]]
            self.size -= len(leaf.key)
            if parent is not self.root and not parent.children and parent.key[0] >= 0:
                heapq.heappush(leaves, (parent.used, id(parent), parent))

    def _nodes(self) -> list[_Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return [n for n in out if n is not self.root]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i

