"""``random``: uniform random search without repeats."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nasframe.architecture import Architecture
from nasframe.strategy import SeenIds, Strategy
from nasframe.trial import Problem, Trial


class RandomSearch(Strategy):
    """Architectures drawn with ``space.sample(self.rng)``, never one seen before.

    "Seen" means proposed by this strategy or told (any trial, whoever asked
    for it). ``ask(n)`` returns fewer than ``n`` architectures, possibly none,
    once ``max_retries`` consecutive draws all hit seen architectures: the space
    is then taken to be exhausted (certainly so for a small finite space).

    State: the generator state and the seen ids in the order first seen; the
    same seed gives the same sequence, and a resumed instance continues it
    exactly.
    """

    name = "random"

    def __init__(self, problem: Problem, seed: int = 0, max_retries: int = 1000):
        super().__init__(problem, seed)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 1:
            raise ValueError(f"`max_retries` must be a positive integer, got {max_retries!r}")
        self.max_retries = max_retries
        self._seen = SeenIds()

    def ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        misses = 0
        while len(out) < n and misses < self.max_retries:
            arch = self.space.sample(self.rng)
            if arch.id in self._seen:
                misses += 1
                continue
            misses = 0
            self._seen.add(arch.id)
            out.append(arch)
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        for t in trials:
            self._seen.add(t.arch.id)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng_state(), "seen": self._seen.to_list()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])
        self._seen = SeenIds(state.get("seen", ()))
