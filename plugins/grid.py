"""``grid``: every valid architecture of a finite space, once."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nasframe.architecture import Architecture
from nasframe.params import Bool, Field, Int, ParamError, Params
from nasframe.strategy import Strategy
from nasframe.trial import Trial

#: spaces with more decision combinations than this need an explicit ``limit``
MAX_UNLIMITED_SIZE = 1_000_000


class GridSearch(Strategy):
    """Walks ``space.enumerate(limit)`` in order, or in a seeded random order.

    ``limit`` keeps the first ``limit`` valid architectures of the enumeration
    (before shuffling); it is required when ``space.size`` exceeds
    1,000,000 decision combinations. With ``shuffle`` the grid is visited in a
    permutation drawn from a seed taken from ``self.rng`` at construction.
    Architectures the run already has (reference architectures, duplicates)
    are skipped. ``ask`` returns ``[]`` once the grid is done.

    State: the permutation seed, the position in the grid and the grid's
    length (to notice a changed space on resume).
    """

    name = "grid"
    known_as = {"gridsearch": "`grid`", "exhaustive": "`grid`", "bruteforce": "`grid`"}

    class Params(Params):
        shuffle: Bool = False
        """Visit the grid in a seeded random order instead of the enumeration order."""
        limit: int | None = Field(None, ge=1, le=10_000_000, strict=True)
        """Keep only the first `limit` valid architectures (required for spaces of over 1,000,000 combinations)."""

    def __init__(self, problem, params=None, **kwargs):
        super().__init__(problem, params, **kwargs)
        if self.params.limit is None and self.space.size > MAX_UNLIMITED_SIZE:
            raise ParamError("limit", f"search space '{self.space.name}' has {self.space.size:,} "
                             "decision combinations, too many to enumerate; set `limit` "
                             "(e.g. `limit: 10000`) or use strategy 'random'")
        self._perm_seed = int(self.rng.integers(2**63)) if self.params.shuffle else None
        self._grid: list[Architecture] | None = None
        self._pos = 0

    def grid(self) -> list[Architecture]:
        """The architectures in visiting order (enumerated on first use)."""
        if self._grid is None:
            archs = list(self.space.enumerate(self.params.limit))
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
            if not self.seen(arch.id):
                out.append(arch)
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        """Nothing to learn: the walk is fixed and the history holds the trials."""

    @property
    def done(self) -> bool:
        """True once every architecture of the grid has been proposed or skipped."""
        return self._pos >= len(self.grid())

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng_state(), "perm_seed": self._perm_seed, "position": self._pos,
                "grid_size": len(self.grid())}

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
