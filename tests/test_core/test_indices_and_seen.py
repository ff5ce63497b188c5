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


def test_neighbours_change_one_decision_and_stay_valid():
    space = ToySpace()
    arch = space.sample(np.random.default_rng(1))
    near = space.neighbours(arch)
    assert near and all(space.validate(a) is None for a in near)
    assert arch.id not in {a.id for a in near} and len({a.id for a in near}) == len(near)
    for a in near:
        changed = [k for k in arch if a[k] != arch[k]]
        assert len(changed) == 1
        if changed == ["depth"]:                             # an Integer moves one step
            assert abs(a["depth"] - arch["depth"]) == 1
    widths = {a["width"] for a in near if a["width"] != arch["width"]}
    assert widths == set(space.decision_map()["width"].values()) - {arch["width"]}
