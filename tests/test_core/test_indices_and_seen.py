"""The integer encoding of architectures and the seen-ids record shared by strategies."""
from __future__ import annotations

import json

import numpy as np

from nasframe.strategy import SeenIds
from nasframe.testing import ToySpace


def test_indices_round_trip_and_reject_invalid():
    space = ToySpace()
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = space.sample(rng)
        x = space.to_indices(arch)
        assert all(0 <= i < d.count for i, d in zip(x, space.decisions()))
        assert space.from_indices(x) == arch
    n = len(space.decisions())
    assert space.from_indices([10**6] * n) is None          # out of range
    assert space.from_indices([0] * (n + 1)) is None        # wrong length
    assert space.to_indices(arch.replace(width=-1)) is None  # not a value of the space


def test_seen_ids_keep_first_seen_order_and_restore():
    seen = SeenIds()
    for arch_id in ["b", "a", "b", "c", "a"]:
        seen.add(arch_id)
    assert seen.to_list() == ["b", "a", "c"] and len(seen) == 3 and "c" in seen and "d" not in seen
    again = SeenIds(json.loads(json.dumps(seen.to_list())))
    assert again.to_list() == seen.to_list()
