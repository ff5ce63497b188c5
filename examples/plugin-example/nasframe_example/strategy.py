"""``local_search``: a seeded hill-climber that mutates one decision at a time."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nasframe import Architecture, Field, Integer, Params, Problem, Strategy, Trial
from nasframe.params import Int


class LocalSearch(Strategy):
    """Hill-climbing on the first objective, from random starting points.

    The first ``n_initial`` proposals are random samples. After that, each
    proposal is a *neighbour* of the incumbent (the best trial told so far):
    one decision changed, to the next value up or down for an ``Integer``
    decision, to any other value otherwise. The decision is drawn uniformly
    among those with an unseen valid neighbour, then the value. When every
    neighbour of the incumbent has been seen (a local optimum) the next
    proposal is a random restart.

    "Best" compares, in order: feasible before infeasible, smaller constraint
    violation, better first objective (its direction respected). Failed trials,
    and trials without a finite first objective, never become the incumbent.
    Any told trial counts, including ones the strategy did not ask for
    (reference architectures, duplicates answered from the store), and no
    architecture the run has seen (``self.seen``, read from the run's history)
    is proposed again. ``ask`` returns fewer than ``n`` (possibly none) once
    ``max_retries`` random draws in a row hit seen architectures.

    State (JSON): the generator state, the incumbent and its score, and the
    number of random proposals made so far; what was seen is the history's.
    """

    name = "local_search"

    class Params(Params):
        n_initial: Int = Field(4, ge=0, le=1_000_000)
        """Random proposals before climbing."""
        max_retries: Int = Field(1000, ge=1, le=10_000_000)
        """Random draws of seen architectures in a row before the space counts as exhausted."""

    def __init__(self, problem: Problem, params=None, **kwargs):
        super().__init__(problem, params, **kwargs)
        self.n_initial = self.params.n_initial
        self.max_retries = self.params.max_retries
        self.objective = problem.objectives[0]  # the objective climbed
        self.incumbent: Architecture | None = None
        self._score: tuple[int, float, float] | None = None
        self._asking: set[str] = set()   # proposed by the ask in progress
        self._n_random = 0

    def _known(self, arch_id: str) -> bool:
        return self.seen(arch_id) or arch_id in self._asking

    # -- ask / tell ------------------------------------------------------
    def ask(self, n: int) -> list[Architecture]:
        out: list[Architecture] = []
        self._asking = set()
        while len(out) < n:
            arch = None
            if self.incumbent is not None and self._n_random >= self.n_initial:
                arch = self._mutate(self.incumbent)
            if arch is None:  # still starting, nothing to climb from, or a local optimum
                arch = self._random()
                if arch is None:
                    break  # the space looks exhausted
                self._n_random += 1
            self._asking.add(arch.id)
            out.append(arch)
        self._asking = set()
        return out

    def tell(self, trials: Sequence[Trial]) -> None:
        for trial in trials:
            score = self.score(trial)
            if score is not None and (self._score is None or score < self._score):
                self.incumbent, self._score = trial.arch, score

    def score(self, trial: Trial) -> tuple[int, float, float] | None:
        """``(infeasible, violation, minimised first objective)``, lower is better; None if unusable."""
        value = trial.values.get(self.objective.key)
        if trial.status == "failed" or value is None or not math.isfinite(value) \
                or not math.isfinite(trial.violation):
            return None
        return (int(trial.feasible is False), float(trial.violation), self.objective.to_min(value))

    # -- proposals -------------------------------------------------------
    def _random(self) -> Architecture | None:
        for _ in range(self.max_retries):
            arch = self.space.sample(self.rng)
            if not self._known(arch.id):
                return arch
        return None

    def neighbours(self, arch: Architecture) -> dict[str, list[Architecture]]:
        """Valid architectures one decision away from ``arch``, by decision name (unseen ones only)."""
        out: dict[str, list[Architecture]] = {}
        for d in self.space.decisions():
            values = d.values()
            i = d.index(arch[d.name])
            others = ([values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
                      if isinstance(d, Integer) else values[:i] + values[i + 1:])
            found = []
            for v in others:
                cand = self.space.canonicalize(arch.replace(**{d.name: v}))
                if not self._known(cand.id) and cand != arch and self.space.validate(cand) is None:
                    found.append(cand)
            if found:
                out[d.name] = found
        return out

    def _mutate(self, arch: Architecture) -> Architecture | None:
        options = self.neighbours(arch)
        if not options:
            return None
        names = list(options)
        choices = options[names[int(self.rng.integers(len(names)))]]
        return choices[int(self.rng.integers(len(choices)))]

    # -- state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng_state(),
            "incumbent": None if self.incumbent is None else self.incumbent.to_dict(),
            "score": None if self._score is None else list(self._score),
            "n_random": self._n_random,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_rng_state(state["rng"])
        inc, score = state.get("incumbent"), state.get("score")
        self.incumbent = None if inc is None else Architecture(inc)
        self._score = None if score is None else (int(score[0]), float(score[1]), float(score[2]))
        self._n_random = int(state.get("n_random", 0))
