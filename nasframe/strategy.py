"""Search strategies: ask/tell with a resumable, JSON-serialisable state."""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from nasframe.architecture import Architecture
from nasframe.trial import Problem, Trial


class SeenIds:
    """Architecture ids in the order first seen: a set for lookups, the order for the
    JSON state (so saving it needs no sort). ``SeenIds(state_list)`` restores it."""

    def __init__(self, ids: Sequence[str] = ()):
        self._set: set[str] = set()
        self._order: list[str] = []
        for arch_id in ids:
            self.add(arch_id)

    def add(self, arch_id: str) -> None:
        if arch_id not in self._set:
            self._set.add(arch_id)
            self._order.append(arch_id)

    def __contains__(self, arch_id: object) -> bool:
        return arch_id in self._set

    def __len__(self) -> int:
        return len(self._order)

    def to_list(self) -> list[str]:
        return list(self._order)


class Strategy(abc.ABC):
    """Proposes architectures and learns from their results.

    Lifecycle: ``Strategy(problem, seed=..., **params)``; then repeatedly
    :meth:`ask` for up to ``n`` architectures and :meth:`tell` the finished
    trials (complete, failed or infeasible; in any order; possibly trials the
    strategy did not ask for, such as reference architectures or duplicates
    answered from the store). After every tell the runner stores
    :meth:`state_dict`; a resumed run calls :meth:`load_state_dict` on a fresh
    instance and continues the same search.

    ``ask`` returns an empty list when the strategy has nothing left to propose.
    The state must be JSON-serialisable (no pickles): use
    :meth:`rng_state` / :meth:`set_rng_state` for ``self.rng``.
    """

    name: ClassVar[str]
    #: True when the strategy needs a finite, enumerable space
    requires_finite_space: ClassVar[bool] = False

    def __init__(self, problem: Problem, seed: int = 0):
        self.problem = problem
        self.space = problem.space
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def ask(self, n: int) -> list[Architecture]:
        """Up to ``n`` architectures to evaluate next."""

    @abc.abstractmethod
    def tell(self, trials: Sequence[Trial]) -> None:
        """Results of finished trials."""

    def pick(self, trials: Sequence[Trial]) -> tuple[Trial, str] | None:
        """The model the strategy recommends from the finished trials, and the rule that chose it.

        ``trials`` are every finished trial of a run (any status, references
        included). Return ``(trial, rule)``, where ``rule`` says in words or
        a formula why (it is exported with the pick), or None: no pick, the
        default. Export makes a fresh instance from the experiment's config
        (no state loaded) and marks the pick in its files.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue; JSON-serialisable."""
        return {"rng": self.rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])

    # -- helpers ---------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
