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
    :meth:`state_dict` (or, for a strategy that ``journals``, :meth:`state_delta`,
    with a whole state now and then); a resumed run makes a fresh instance with the history
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

    # -- a journal instead of whole states (optional) ----------------------
    #: True when the strategy's state grows with the run (a log of calls, every result):
    #: the runner then appends :meth:`state_delta` after each ask and tell and writes
    #: :meth:`state_dict` only now and then, so that storing it costs O(1) per trial
    journals: ClassVar[bool] = False

    def state_delta(self) -> dict[str, Any] | None:
        """What changed since the last :meth:`state_dict` or :meth:`state_delta` call
        (JSON-serialisable; None: nothing). Only for strategies with ``journals = True``."""
        raise NotImplementedError

    def apply_state_delta(self, delta: dict[str, Any]) -> None:
        """Apply a delta of :meth:`state_delta` after :meth:`load_state_dict` (resume)."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------
    def rng_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def state_entry(strategy: Strategy, deltas: int, trials: int,
                every: int = 200) -> tuple[str, dict[str, Any] | None]:
    """What to store of ``strategy``'s state now: a delta while the journal since the last
    whole state is shorter than ``max(every, trials)``, else the whole state (so that the
    total written stays proportional to the number of trials)."""
    if strategy.journals and deltas < max(every, trials):
        return "delta", strategy.state_delta()
    return "snapshot", strategy.state_dict()


def restore(strategy: Strategy, snapshot: dict[str, Any] | None,
            deltas: Sequence[dict[str, Any]]) -> None:
    """Load a stored state: the whole state, then the deltas after it."""
    if snapshot is not None:
        strategy.load_state_dict(snapshot)
    for d in deltas:
        strategy.apply_state_delta(d)
