"""Immutable records: objective specs, constraints, problems and trials."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from nasframe.architecture import Architecture
from nasframe.objective import Provenance

if TYPE_CHECKING:
    from nasframe.space import SearchSpace

#: ``infeasible``: a constraint was broken, and the remaining objectives were skipped;
#: ``pruned``: stopped early by a pruner (multi-fidelity), keeping its last reported value
Status = Literal["running", "complete", "infeasible", "pruned", "failed"]
STATUSES = ("running", "complete", "infeasible", "pruned", "failed")
#: trials whose values place them in the front analysis (a pruned trial's values are partial)
EVALUATED = ("complete", "infeasible")
FAILURES = ("exception", "invalid", "died", "timeout", "interrupted")


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective as the search sees it: its key in trial values and direction."""

    key: str
    direction: Literal["min", "max"]

    def to_min(self, value: float) -> float:
        return value if self.direction == "min" else -value


_CONSTRAINT_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``key op bound`` with op ``<=`` or ``>=`` (``<``/``>`` are read as such)."""

    key: str
    op: Literal["<=", ">="]
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT_RE.match(str(text))
        if not m:
            raise ValueError(f"cannot read constraint {text!r}; write it as 'NAME <= NUMBER' "
                             "or 'NAME >= NUMBER', e.g. 'gmacs <= 20'")
        key, op, bound = m.groups()
        return cls(key, "<=" if op.startswith("<") else ">=", float(bound))

    def violation(self, value: float | None) -> float:
        """0 when satisfied, else how far off (inf when the value is missing)."""
        if value is None or math.isnan(value):
            return math.inf
        return max(0.0, value - self.bound) if self.op == "<=" else max(0.0, self.bound - value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Problem:
    """What a strategy optimises: the space, the objectives and the constraints."""

    space: SearchSpace
    objectives: tuple[ObjectiveSpec, ...]
    constraints: tuple[Constraint, ...] = ()

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objectives]

    def minimised(self, trial: Trial) -> np.ndarray:
        """The trial's objective vector, every component to be minimised (NaN if missing)."""
        return np.array([o.to_min(trial.values[o.key]) if o.key in trial.values else math.nan
                         for o in self.objectives], dtype=float)


@dataclass(frozen=True)
class Trial:
    """One evaluation of one architecture. Never changed once read."""

    number: int
    arch: Architecture
    status: Status
    values: Mapping[str, float] = field(default_factory=dict)
    provenance: Mapping[str, Provenance] = field(default_factory=dict)
    feasible: bool | None = None
    violation: float = 0.0
    error: str | None = None
    seed: int = 0
    origin: str = "strategy"
    started: float | None = None
    finished: float | None = None
    attempt: int = 1
    #: why a failed trial failed: ``exception`` (an objective raised), ``invalid`` (not an
    #: architecture of the space), ``died`` (its worker process died), ``timeout``,
    #: ``interrupted`` (set on a running trial the run stopped under; it re-runs on resume)
    failure: str | None = None
    #: the last time the driver stamped this running trial (seconds since the epoch)
    heartbeat: float | None = field(default=None, compare=False)
    #: references of device jobs submitted for this trial ({objective key: job info})
    jobs: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: intermediate values an objective reported for pruning: ``{"key": objective key,
    #: "values": {step: value}, "attrs": {pruner bookkeeping}, "steps": work done}``
    intermediate: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: the finished trials' intermediate values when this trial was handed to its worker
    #: (what a pruner compares it with; not stored)
    peers: tuple = field(default=(), compare=False, repr=False)

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def is_reference(self) -> bool:
        return self.origin.startswith("reference:")



def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    return obj
