"""check's compact state against the plain structures it replaces: the block store
(:class:`~promptkit.text.cachesim.BlockSet`) against a ``set``, and where each record
first differs (:class:`~promptkit.ops.check.setup.Leads`, whose leads past their first
differing step live in a temporary file) against a comparison with every earlier lead."""

from __future__ import annotations

import random
from array import array

import pytest

from promptkit.ops.check.setup import Leads
from promptkit.text.cachesim import BlockSet


def test_block_set_is_a_set() -> None:
    rng = random.Random(3)
    blocks, plain = BlockSet(), set()
    for _ in range(200_000):  # grows through several tables
        key = rng.choice([rng.getrandbits(64), rng.randrange(50), 0, (rng.randrange(3), 7),
                          rng.getrandbits(64) | 1 << 63])
        assert (key in blocks) == (key in plain)
        blocks.add(key)
        plain.add(key)
    assert len(blocks) == len(plain)
    assert all(key in blocks for key in plain)
    others = [rng.getrandbits(64) for _ in range(20_000)]
    assert [k in blocks for k in others] == [k in plain for k in others]


@pytest.mark.parametrize(("unit", "code"), [(4, "I"), (8, "q")])
def test_leads_match_every_earlier_lead(unit: int, code: str) -> None:
    """Leads sharing long prefixes (a few stems, varied at every depth), duplicates and
    prefixes of earlier ones: the same answer as comparing with all earlier leads."""
    rng = random.Random(unit)
    stems = [[rng.randrange(3) for _ in range(rng.randrange(1, 300))] for _ in range(6)]
    leads = Leads(unit)
    earlier: list[list[int]] = []
    for _ in range(1500):
        items = list(rng.choice(stems + earlier[-20:] if earlier else stems))
        cut = rng.randrange(len(items) + 1)
        items = items[:cut] + [rng.randrange(3) for _ in range(rng.randrange(0, 40))]
        items = items[:256] or [1]
        want = max((_common(items, e) for e in earlier), default=0)
        assert leads.first_difference(array(code, items).tobytes()) == want
        earlier.append(items)
    leads.close()
    assert leads.file is not None  # some leads went to the file


def _common(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
