"""Pareto maths: dominance, ranks, fronts and hypervolume (pymoo underneath)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


def to_minimisation(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Negate the columns to be maximised, so that smaller is better everywhere."""
    values = np.asarray(values, dtype=float).reshape(-1, len(directions))
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    return values * sign


def pareto_ranks(values: np.ndarray, directions: Sequence[str],
                 feasible: np.ndarray | None = None, violation: np.ndarray | None = None) -> np.ndarray:
    """Rank of every point under constrained dominance (0 is the front).

    ``values`` is (n, m) in the objectives' own units and ``directions`` gives
    ``"min"`` or ``"max"`` per column. A point dominates another when it is no
    worse in every objective and strictly better in at least one. Feasibility
    comes first: feasible points are sorted into fronts 0, 1, ...; infeasible
    points follow, ordered by total ``violation`` (equal violations share a rank).
    Rows with NaN (failed or skipped evaluations) get rank -1.
    """
    F = to_minimisation(values, directions)
    n = len(F)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    feasible = np.ones(n, dtype=bool) if feasible is None else np.asarray(feasible, dtype=bool)
    valid = ~np.isnan(F).any(axis=1)
    ok = np.flatnonzero(valid & feasible)
    next_rank = 0
    if len(ok):
        for r, front in enumerate(NonDominatedSorting().do(F[ok])):
            ranks[ok[front]] = r
        next_rank = int(ranks[ok].max()) + 1
    bad = np.flatnonzero(~feasible)
    if len(bad):
        v = np.zeros(n) if violation is None else np.asarray(violation, dtype=float)
        levels = np.unique(v[bad])
        for i in bad:
            ranks[i] = next_rank + int(np.searchsorted(levels, v[i]))
    return ranks


def pareto_mask(values: np.ndarray, directions: Sequence[str],
                feasible: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the non-dominated feasible points (see :func:`pareto_ranks`).

    Duplicated points on the front are all marked. If no point is feasible the
    mask is all False: an infeasible point is never called Pareto-optimal.
    """
    feasible_arr = np.ones(len(values), dtype=bool) if feasible is None else np.asarray(feasible, bool)
    ranks = pareto_ranks(values, directions, feasible_arr)
    return (ranks == 0) & feasible_arr


def default_reference_point(values: np.ndarray, directions: Sequence[str],
                            margin: float = 0.1) -> np.ndarray:
    """A reference point in minimisation form: the worst value of each objective
    plus ``margin`` of its range (or of its magnitude when the range is zero)."""
    F = to_minimisation(values, directions)
    F = F[~np.isnan(F).any(axis=1)]
    if len(F) == 0:
        return np.full(len(directions), np.nan)
    worst, best = F.max(axis=0), F.min(axis=0)
    span = np.where(worst > best, worst - best, np.maximum(np.abs(worst), 1.0))
    return worst + margin * span


def hypervolume(values: np.ndarray, directions: Sequence[str], ref_point_min: np.ndarray) -> float:
    """Hypervolume (pymoo) of the points dominating ``ref_point_min`` (minimisation form)."""
    F = to_minimisation(values, directions)
    F = F[~np.isnan(F).any(axis=1)]
    if len(F) == 0 or np.isnan(ref_point_min).any():
        return 0.0
    F = F[(F < ref_point_min).all(axis=1)]
    if len(F) == 0:
        return 0.0
    return float(HV(ref_point=np.asarray(ref_point_min, dtype=float))(F))


def hypervolume_history(values: np.ndarray, directions: Sequence[str], ref_point_min: np.ndarray,
                        feasible: np.ndarray | None = None) -> np.ndarray:
    """Hypervolume of the feasible points among the first k, for k = 1..n."""
    values = np.asarray(values, dtype=float).reshape(-1, len(directions))
    n = len(values)
    feasible = np.ones(n, bool) if feasible is None else np.asarray(feasible, bool)
    out = np.zeros(n)
    last = 0.0
    for k in range(n):
        if feasible[k] and not np.isnan(values[k]).any():
            last = hypervolume(values[: k + 1][feasible[: k + 1]], directions, ref_point_min)
        out[k] = last
    return out
