"""``random``: uniform random search without repeats."""
from __future__ import annotations

from collections.abc import Sequence

from nasframe.architecture import Architecture
from nasframe.params import Field, Int, Params
from nasframe.strategy import Strategy
from nasframe.trial import Trial


class RandomSearch(Strategy):
    """Architectures drawn with ``space.sample(self.rng)``, never one seen before.

    "Seen" means the run has a trial of it (see :meth:`Strategy.seen`), or it
    was already drawn in the same ``ask``. ``ask(n)`` returns fewer than ``n``
    architectures, possibly none, once ``max_retries`` consecutive draws all
    hit seen architectures: the space is then taken to be exhausted (certainly
    so for a small finite space).

    State: the generator state; the same seed gives the same sequence, and a
    resumed instance (with the history rebuilt from the store) continues it
    exactly.
    """

    name = "random"
    known_as = {"randomsearch": "`random`", "rs": "`random`"}

    class Params(Params):
        max_retries: Int = Field(1000, ge=1, le=10_000_000)
        """Consecutive draws of seen architectures before the space counts as exhausted."""

    def ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        drawn: set[str] = set()
        misses = 0
        while len(out) < n and misses < self.params.max_retries:
            arch = self.space.sample(self.rng)
            if arch.id in drawn or self.seen(arch.id):
                misses += 1
                continue
            misses = 0
            drawn.add(arch.id)
            out.append(arch)
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        """Nothing to learn: the history already holds the trials."""
