"""The run's history as strategies see it: a read-only view of every trial.

The runner owns the trials (it writes the store); a strategy reads them through
:class:`History` and keeps only its algorithm's own state (a population, a
model's settings, a random generator). So "has this architecture been seen?"
(asked before, running, finished, a reference, a duplicate) is answered in one
place, and a resumed run rebuilds the history from the store instead of each
strategy saving its own copy.
"""
from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence

from nasframe.trial import Trial


class History(abc.ABC):
    """Read-only view of a run's trials, in trial-number order."""

    @abc.abstractmethod
    def trials(self) -> Sequence[Trial]:
        """Every trial, running ones included, in number order (one record per trial)."""

    @abc.abstractmethod
    def seen(self, arch_id: str) -> bool:
        """True when a trial of this architecture exists (running or finished)."""

    @abc.abstractmethod
    def latest(self, arch_id: str) -> Trial | None:
        """The most recent trial of this architecture, or None."""

    def finished(self) -> list[Trial]:
        """Finished trials (complete, infeasible, pruned, failed), in number order."""
        return [t for t in self.trials() if t.status != "running"]

    def running(self) -> list[Trial]:
        return [t for t in self.trials() if t.status == "running"]

    def __len__(self) -> int:
        return len(self.trials())

    def __iter__(self) -> Iterator[Trial]:
        return iter(self.trials())


class TrialHistory(History):
    """The in-memory history the runner keeps (and that tests drive by hand).

    :meth:`record` adds trials or replaces a trial of the same number (a
    running trial once it finishes, a retried trial).
    """

    def __init__(self, trials: Iterable[Trial] = ()):
        self._order: list[Trial] = []
        self._index: dict[int, int] = {}      # trial number -> position in _order
        self._latest: dict[str, Trial] = {}
        self.record(trials)

    def record(self, trials: Iterable[Trial]) -> None:
        resort = False
        for t in trials:
            i = self._index.get(t.number)
            if i is not None:
                self._order[i] = t
            else:
                if self._order and self._order[-1].number > t.number:
                    resort = True
                self._index[t.number] = len(self._order)
                self._order.append(t)
            old = self._latest.get(t.arch.id)
            if old is None or old.number <= t.number:
                self._latest[t.arch.id] = t
        if resort:
            self._order.sort(key=lambda t: t.number)
            self._index = {t.number: i for i, t in enumerate(self._order)}

    def trials(self) -> Sequence[Trial]:
        return self._order

    def seen(self, arch_id: str) -> bool:
        return arch_id in self._latest

    def latest(self, arch_id: str) -> Trial | None:
        return self._latest.get(arch_id)
