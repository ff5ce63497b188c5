"""Front analysis of a run's trials: ranks, Pareto front, hypervolume, the pick.

Pure functions of the trials (no files written, no components made): the
runner's progress bar, export, plots and the Python API share them.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nasframe.pareto import default_reference_point, hypervolume, hypervolume_history, pareto_ranks
from nasframe.trial import EVALUATED, Trial

if TYPE_CHECKING:
    from nasframe.strategy import Strategy


@dataclass(frozen=True)
class FrontAnalysis:
    trials: list[Trial]
    keys: list[str]
    directions: list[str]
    values: np.ndarray      # (n, m), NaN where missing
    feasible: np.ndarray    # (n,)
    ranks: np.ndarray       # (n,), -1 for failed
    ref_point_min: np.ndarray
    hv_history: np.ndarray  # (n,)

    @property
    def pareto(self) -> np.ndarray:
        return (self.ranks == 0) & self.feasible

    @property
    def hypervolume(self) -> float:
        return float(self.hv_history[-1]) if len(self.hv_history) else 0.0


@dataclass(frozen=True)
class Pick:
    """The trial a strategy recommends (:meth:`nasframe.strategy.Strategy.pick`) and why."""

    index: int   # position in FrontAnalysis.trials
    trial: Trial
    rule: str


def _ref_point(keys: Sequence[str], directions: Sequence[str],
               reference_point: Mapping[str, float] | None, values: np.ndarray,
               ok: np.ndarray) -> np.ndarray:
    """The hypervolume reference point in minimisation form: the experiment's, else from data."""
    if reference_point:
        return np.array([reference_point[k] * (1 if d == "min" else -1)
                         for k, d in zip(keys, directions)], dtype=float)
    if ok.any():
        return default_reference_point(values[ok], directions)
    return np.full(len(keys), np.nan)


def analyse(trials: Sequence[Trial], keys: Sequence[str], directions: Sequence[str],
            reference_point: Mapping[str, float] | None = None) -> FrontAnalysis:
    """Ranks, front and hypervolume history of the finished trials, in trial order."""
    keys, directions = list(keys), list(directions)
    done = [t for t in trials if t.status != "running"]
    values = np.array([[t.values.get(k, math.nan) for k in keys] for t in done],
                      dtype=float).reshape(-1, len(keys))
    # failed trials have no values and pruned ones partial values: neither is ranked
    placed = np.array([t.status in EVALUATED for t in done], dtype=bool)
    feasible = np.array([bool(t.feasible) for t in done], dtype=bool) & placed
    violation = np.array([t.violation if t.feasible is False else 0.0 for t in done])
    ranks = pareto_ranks(values, directions, feasible, violation)
    ranks[~placed] = -1
    ok = feasible & ~np.isnan(values).any(axis=1)
    ref = _ref_point(keys, directions, reference_point, values, ok)
    hv = hypervolume_history(values, directions, ref, feasible)
    return FrontAnalysis(done, keys, directions, values, feasible, ranks, ref, hv)


def front_stats(trials: Sequence[Trial], keys: Sequence[str], directions: Sequence[str],
                reference_point: Mapping[str, float] | None = None) -> tuple[int, float]:
    """(front size, hypervolume) of the finished trials; cheaper than :func:`analyse`."""
    done = [t for t in trials if t.status in EVALUATED]
    if not done:
        return 0, 0.0
    values = np.array([[t.values.get(k, math.nan) for k in keys] for t in done], dtype=float)
    feasible = np.array([bool(t.feasible) for t in done])
    ranks = pareto_ranks(values, directions, feasible)
    mask = (ranks == 0) & feasible
    ok = feasible & ~np.isnan(values).any(axis=1)
    ref = _ref_point(keys, directions, reference_point, values, ok)
    hv = hypervolume(values[mask], directions, ref) if mask.any() else 0.0
    return int(mask.sum()), hv


def find_pick(a: FrontAnalysis, strategy: Strategy | None) -> Pick | None:
    """The strategy's pick among the analysed trials, or None.

    A strategy that fails to pick, or picks a trial that is not a finished
    trial of the run, gives no pick (with a warning): a pick never stops an export.
    """
    if strategy is None:
        return None
    try:
        chosen = strategy.pick(list(a.trials))
    except Exception as err:  # noqa: BLE001 - the export must not fail for want of a pick
        warnings.warn(f"no pick exported: strategy '{strategy.name}' failed to pick "
                      f"({type(err).__name__}: {err})", RuntimeWarning, stacklevel=2)
        return None
    if chosen is None:
        return None
    trial, rule = chosen
    index = next((i for i, t in enumerate(a.trials) if t.number == trial.number), None)
    if index is None:
        warnings.warn(f"no pick exported: the strategy picked trial {trial.number}, which is not "
                      "a finished trial of this run", RuntimeWarning, stacklevel=2)
        return None
    return Pick(index, a.trials[index], str(rule))
