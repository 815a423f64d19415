"""VllmCache(num_gpu_blocks=N): vLLM 0.32's block pool at concurrency 1, hit for hit.

The rule (``promptkit/cache.py``, class docstring) comes from vLLM's
``vllm/v1/core/block_pool.py`` and ``kv_cache_manager.py``. It is pinned three ways:

- hand-made cases whose numbers follow from the rule step by step (each also
  differs from a plain LRU of N or N - 1 blocks, so each can fail);
- a literal replay of vLLM's ``BlockPool`` below (physical blocks, reference
  counts, the free queue with its ``popleft`` / ``prepend`` / ``append``, one
  decode step at a time), which must agree with ``VllmCache`` on random workloads;
- the real vLLM engine (``tests/integration/test_vllm_engine.py``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptkit.text.cachesim import VllmCache


def tokens(n: int, start: int = 1000) -> list[int]:
    return list(range(start, start + n))


class LiteralBlockPool:
    """vLLM's BlockPool replayed block by block, for one request at a time."""

    def __init__(self, num_gpu_blocks: int, block_size: int):
        self.size = block_size
        self.queue: deque[int] = deque(range(num_gpu_blocks))  # the free block queue
        self.queue.popleft()  # block 0: the null block (BlockPool.__init__)
        self.key: dict[int, Hashable] = {}  # block id -> its hash, cached blocks only
        self.cached: dict[Hashable, list[int]] = {}  # hash -> block ids (duplicates kept)
        self.ref: dict[int, int] = {}
        self.generated = 0

    def _allocate(self) -> int:  # get_new_blocks: popleft, drop its cached hash
        block = self.queue.popleft()
        if block in self.key:
            key = self.key.pop(block)
            self.cached[key].remove(block)
            if not self.cached[key]:
                del self.cached[key]
        self.ref[block] = 1
        return block

    def _cache(self, block: int, key: Hashable) -> None:  # cache_full_blocks
        self.key[block] = key
        self.cached.setdefault(key, []).append(block)

    def request(self, keys: Sequence[Hashable], length: int, output_tokens: int) -> int:
        size = self.size
        held: list[int] = []
        for key in keys[:(length - 1) // size]:  # find_longest_cache_hit, then touch
            if key not in self.cached:
                break
            block = self.cached[key][0]
            if self.ref.get(block, 0) == 0:
                self.queue.remove(block)
            self.ref[block] = self.ref.get(block, 0) + 1
            held.append(block)
        hits = len(held)
        computed = 0
        # Prefill computes the prompt; each decode step computes one generated token
        # (the last one sampled is never computed).
        for end in [length] + [length + k for k in range(1, output_tokens)]:
            while len(held) * size < end:
                held.append(self._allocate())
            for index in range(computed // size, end // size):
                if index >= hits and held[index] not in self.key:
                    if index < len(keys) and (index + 1) * size <= length:
                        self._cache(held[index], keys[index])
                    else:  # a block filled by generated tokens
                        self.generated += 1
                        self._cache(held[index], ("generated", self.generated))
            computed = end
        for block in reversed(held):  # free_blocks(reversed(blocks))
            self.ref[block] -= 1
            if self.ref[block] == 0:
                if block in self.key:
                    self.queue.append(block)  # cached: evicted last (LRU)
                else:
                    self.queue.appendleft(block)  # never cached: reused first
        return hits * size


def test_the_null_block_and_the_running_requests_blocks_take_room():
    """4 usable blocks of 4 tokens. A (12 tokens) leaves A0 A1 A2 cached; C (5 tokens,
    4 generated) holds 2 blocks, evicting A's tail block A2 (the one free block that
    caches nothing covers the other), and leaves C0 and a block of generated tokens
    cached; D (5 tokens) needs 2 blocks: A1 and A0 go, A hits nothing."""
    cache = VllmCache(4, num_gpu_blocks=5)
    a = tokens(12)
    assert cache.request(a) == 0
    assert cache.request(a) == 8
    assert cache.request(tokens(5, 2000), output_tokens=4) == 0
    assert cache.request(a) == 8  # A0 A1 survived C: only A2 went
    cache.request(tokens(5, 2000), output_tokens=4)  # C again: hits C0, frees like before
    assert cache.request(tokens(5, 3000)) == 0
    assert cache.request(a) == 0
    # A plain LRU of the 4 (or 5) blocks would still hold A0 and A1 here:
    lru = VllmCache(4, capacity_tokens=4 * 4)
    for prompt in (a, a, tokens(5, 2000), a, tokens(5, 2000), tokens(5, 3000)):
        lru.request(prompt)
    assert lru.request(a) == 8


def test_generated_tokens_fill_blocks_that_take_room():
    """Same prompts, one generated token: C leaves one block cached, not two, and its
    partial block caches nothing, so D evicts only A1; A still hits A0."""
    cache = VllmCache(4, num_gpu_blocks=5)
    a = tokens(12)
    cache.request(a)
    cache.request(tokens(5, 2000), output_tokens=1)
    cache.request(tokens(5, 3000), output_tokens=1)
    assert cache.request(a) == 4


def test_a_request_frees_its_tail_first():
    """3 usable blocks. A (12 tokens) is cached whole; a 2-block request then takes the
    free blocks from A's tail: A0 stays, so A hits one block."""
    cache = VllmCache(4, num_gpu_blocks=4)
    a = tokens(12)
    cache.request(a)
    assert cache.request(tokens(8, 2000)) == 0
    assert cache.request(a) == 4


def test_duplicate_blocks_are_kept():
    """4 usable blocks. A prompt of exactly 2 blocks hits 1 (never the last token) and
    computes its second block again: vLLM caches that copy too (it does not
    deduplicate), so the cache is full and the next request evicts X, which a free
    block would have spared."""
    cache = VllmCache(4, num_gpu_blocks=5)
    x, a = tokens(4, 3000), tokens(8)
    cache.request(x)
    cache.request(a)
    assert cache.request(a) == 4  # A1 is now held twice: X0 A1 A1' A0 fill the pool
    assert cache.request(tokens(4, 2000)) == 0  # takes X0, the least recently used
    assert cache.request(x + [5]) == 0


def test_num_gpu_blocks_and_capacity_tokens_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        VllmCache(32, capacity_tokens=2048, num_gpu_blocks=64)
    with pytest.raises(ValueError, match="null block"):
        VllmCache(32, num_gpu_blocks=1)


workloads = st.lists(
    st.tuples(
        st.integers(0, 5),  # which shared prefix
        st.integers(0, 40),  # its length
        st.integers(0, 12),  # unique tail tokens
        st.integers(1, 12),  # generated tokens
        st.integers(0, 2),  # salt: none, "s1", "s2"
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(workloads, st.integers(4, 16), st.sampled_from([2, 4]))
def test_vllmcache_replays_the_literal_block_pool(requests, num_gpu_blocks, block_size):
    cache = VllmCache(block_size, num_gpu_blocks=num_gpu_blocks)
    pool = LiteralBlockPool(num_gpu_blocks, block_size)
    fresh = 10_000
    for prefix, length, tail, generated, salt_index in requests:
        prompt = tokens(length, 100 * prefix) + tokens(tail, fresh)
        fresh += tail
        if not prompt or len(prompt) + generated - 1 > (num_gpu_blocks - 1) * block_size:
            continue  # vLLM never schedules a request larger than its pool
        salt = [None, "s1", "s2"][salt_index]
        expected = pool.request(cache.block_hashes(prompt, salt), len(prompt), generated)
        assert cache.request(prompt, salt, output_tokens=generated) == expected
