"""Search strategies: ask/tell with a resumable, JSON-serialisable state."""
from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from nasframe.architecture import Architecture
from nasframe.history import History, TrialHistory
from nasframe.params import Component
from nasframe.trial import Problem, Trial


class Strategy(Component, abc.ABC):
    """Proposes architectures and learns from their results.

    Lifecycle: ``Strategy(problem, params, seed=..., history=...)``; then
    repeatedly :meth:`ask` for up to ``n`` architectures and :meth:`tell` the
    finished trials (complete, failed or infeasible; in any order; possibly
    trials the strategy did not ask for, such as reference architectures or
    duplicates answered from the store).

    The run's trials are in :attr:`history`, a read-only
    :class:`~nasframe.history.History` the runner keeps up to date (asked
    architectures appear there as running trials before they are evaluated).
    "Was this architecture seen?" is :meth:`seen`; a strategy keeps only its
    algorithm's own state. After every ask and tell the runner stores
    :meth:`state_dict`; a resumed run makes a fresh instance with the history
    rebuilt from the store, calls :meth:`load_state_dict` and continues the
    same search.

    ``ask`` returns an empty list when the strategy has nothing left to propose.
    The state must be JSON-serialisable (no pickles): use
    :meth:`rng_state` / :meth:`set_rng_state` for ``self.rng``.
    """

    name: ClassVar[str]

    def __init__(self, problem: Problem, params: Any = None, *, seed: int = 0,
                 history: History | None = None, **kwargs: Any):
        self._init_params(params, kwargs)
        self.problem = problem
        self.space = problem.space
        self.seed = seed
        self.history: History = history if history is not None else TrialHistory()
        self.rng = np.random.default_rng(seed)

    @abc.abstractmethod
    def ask(self, n: int) -> list[Architecture]:
        """Up to ``n`` architectures to evaluate next, none seen before."""

    @abc.abstractmethod
    def tell(self, trials: Sequence[Trial]) -> None:
        """Results of finished trials (also already in :attr:`history`)."""

    def seen(self, arch_id: str) -> bool:
        """True when the run has a trial of this architecture (running or finished)."""
        return self.history.seen(arch_id)

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
        """Everything needed to continue, besides the history; JSON-serialisable."""
        return {"rng": self.rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])

    # -- helpers ---------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
