"""The integer encoding of architectures and the history view strategies read."""
from __future__ import annotations

import numpy as np

from nasframe.history import TrialHistory
from nasframe.testing import ToySpace
from nasframe.trial import Trial


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


def test_history_orders_by_number_replaces_finished_and_answers_seen():
    space = ToySpace()
    a, b, c = list(space.enumerate())[:3]
    h = TrialHistory()
    h.record([Trial(1, b, "running"), Trial(0, a, "running")])
    assert [t.number for t in h.trials()] == [0, 1]             # number order, whatever came first
    assert h.seen(a.id) and h.seen(b.id) and not h.seen(c.id)
    h.record([Trial(1, b, "complete", {"x": 1.0}, feasible=True)])
    assert [t.status for t in h.trials()] == ["running", "complete"] and len(h) == 2
    assert [t.number for t in h.finished()] == [1] and [t.number for t in h.running()] == [0]
    h.record([Trial(2, b, "failed", error="boom")])              # a later trial of the same arch
    assert h.latest(b.id).number == 2 and h.latest(c.id) is None
    rebuilt = TrialHistory(reversed(h.trials()))
    assert [t.number for t in rebuilt.trials()] == [0, 1, 2]


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
