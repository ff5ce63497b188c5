"""``grid``: every valid architecture of a finite space, once."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nasframe.architecture import Architecture
from nasframe.strategy import Strategy
from nasframe.trial import Problem, Trial

#: spaces with more decision combinations than this need an explicit ``limit``
MAX_UNLIMITED_SIZE = 1_000_000


class GridSearch(Strategy):
    """Walks ``space.enumerate(limit)`` in order, or in a seeded random order.

    ``limit`` keeps the first ``limit`` valid architectures of the enumeration
    (before shuffling); it is required when ``space.size`` exceeds
    1,000,000 decision combinations. With ``shuffle`` the grid is visited in a
    permutation drawn from a seed taken from ``self.rng`` at construction.
    Architectures told before the walk reaches them (reference architectures,
    duplicates) are skipped. ``ask`` returns ``[]`` once the grid is done.

    State: the permutation seed, the position in the grid, the grid's length
    (to notice a changed space on resume) and the sorted told ids.
    """

    name = "grid"
    requires_finite_space = True

    def __init__(self, problem: Problem, seed: int = 0, shuffle: bool = False,
                 limit: int | None = None):
        super().__init__(problem, seed)
        if not isinstance(shuffle, bool):
            raise ValueError(f"`shuffle` must be true or false, got {shuffle!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"`limit` must be a positive integer or null, got {limit!r}")
        if not self.space.is_finite():
            raise ValueError(f"strategy 'grid' needs a finite search space, and "
                             f"'{self.space.name}' is not; use strategy 'random' instead")
        if limit is None and self.space.size > MAX_UNLIMITED_SIZE:
            raise ValueError(f"search space '{self.space.name}' has {self.space.size:,} decision "
                             f"combinations, too many to enumerate; set `limit` in the strategy "
                             f"params (e.g. `limit: 10000`) or use strategy 'random'")
        self.shuffle = shuffle
        self.limit = limit
        self._perm_seed = int(self.rng.integers(2**63)) if shuffle else None
        self._grid: list[Architecture] | None = None
        self._pos = 0
        self._told: set[str] = set()

    def grid(self) -> list[Architecture]:
        """The architectures in visiting order (enumerated on first use)."""
        if self._grid is None:
            archs = list(self.space.enumerate(self.limit))
            if self._perm_seed is not None:
                order = np.random.default_rng(self._perm_seed).permutation(len(archs))
                archs = [archs[i] for i in order]
            self._grid = archs
        return self._grid

    def ask(self, n: int) -> list[Architecture]:
        grid = self.grid()
        out: list[Architecture] = []
        while len(out) < n and self._pos < len(grid):
            arch = grid[self._pos]
            self._pos += 1
            if arch.id not in self._told:
                out.append(arch)
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        self._told.update(t.arch.id for t in trials)

    @property
    def done(self) -> bool:
        """True once every architecture of the grid has been proposed or skipped."""
        return self._pos >= len(self.grid())

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng_state(), "perm_seed": self._perm_seed, "position": self._pos,
                "grid_size": len(self.grid()), "told": sorted(self._told)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])
        self._perm_seed = state["perm_seed"]
        self._grid = None
        size = len(self.grid())
        if state.get("grid_size", size) != size:
            raise ValueError(f"the saved grid state has {state['grid_size']} architectures but "
                             f"search space '{self.space.name}' now enumerates {size}; the space "
                             "or `limit` changed since the run was saved: start a new run")
        self._pos = int(state["position"])
        self._told = set(state.get("told", ()))
