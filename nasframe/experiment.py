"""An experiment resolved against the installed plugins, and one-trial evaluation."""
from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.config import ExperimentConfig, check_against_plugins
from nasframe.context import Context
from nasframe.objective import Objective
from nasframe.plugins import Plugins, get_plugins
from nasframe.space import SearchSpace
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial


def trial_seed(seed: int, arch: Architecture) -> int:
    """The seed of an architecture's evaluation: the same in every run of the same experiment
    and in ``nasframe evaluate``, so a front member re-evaluates to the same values."""
    digest = hashlib.sha256(f"{seed}:{arch.id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Experiment:
    """The components of one experiment, instantiated from its config."""

    cfg: ExperimentConfig
    space: SearchSpace
    objectives: dict[str, Objective]  # search objectives and constraint-only ones, by key
    specs: tuple[ObjectiveSpec, ...]
    constraints: tuple[Constraint, ...]

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, plugins: Plugins | None = None,
                    source: str = "<config>") -> Experiment:
        plugins = plugins or get_plugins()
        check_against_plugins(cfg, plugins, source)
        space = plugins.search_spaces.create(cfg.search_space.name, cfg.search_space.params,
                                             where="search_space")
        objectives: dict[str, Objective] = {}
        specs = []
        for i, o in enumerate(cfg.objectives):
            obj = plugins.objectives.create(o.name, o.params, where=f"objectives[{i}]")
            objectives[o.key] = obj
            specs.append(ObjectiveSpec(o.key, o.direction or obj.direction))
        constraints = tuple(cfg.parsed_constraints)
        for c in constraints:
            if c.key not in objectives:  # a constraint on an objective that is not searched
                objectives[c.key] = plugins.objectives.create(c.key, {}, where="constraints")
        return cls(cfg, space, objectives, tuple(specs), constraints)

    @property
    def problem(self) -> Problem:
        return Problem(self.space, self.specs, self.constraints)

    def context(self, run_dir: str | Path, quiet: bool = False, console=None) -> Context:
        kwargs: dict[str, Any] = {}
        if console is not None:
            kwargs["console"] = console
        return Context(run_dir=Path(run_dir), seed=self.cfg.seed, device=self.cfg.device,
                       cache_dir=Path(self.cfg.cache_dir) if self.cfg.cache_dir else None,
                       quiet=quiet, **kwargs)

    def prepare(self, ctx: Context) -> None:
        self.space.prepare(ctx)
        for obj in self.objectives.values():
            obj.prepare(self.space, ctx)

    def evaluation_order(self) -> list[str]:
        """Objective keys, cheapest first (stable for equal costs)."""
        keys = list(self.objectives)
        return sorted(keys, key=lambda k: (self.objectives[k].cost, keys.index(k)))

    def evaluate(self, trial: Trial, ctx: Context, skip_infeasible: bool | None = None) -> Trial:
        """Evaluate a running trial and return it finished (complete, pruned or failed)."""
        skip = self.cfg.skip_infeasible if skip_infeasible is None else skip_infeasible
        started = time.time()
        values: dict[str, float] = {}
        provenance = {}
        status, error = "complete", None
        reason = self.space.validate(trial.arch)
        if reason is not None:
            status, error = "failed", f"invalid architecture: {reason}"
        else:
            cand = Candidate(self.space, trial.arch, trial.seed)
            try:
                for key in self.evaluation_order():
                    try:
                        values[key], provenance[key] = self.objectives[key](cand, ctx)
                    except Exception as err:
                        status = "failed"
                        tb = traceback.format_exception(err, limit=-3)
                        error = f"objective '{key}': {type(err).__name__}: {err}\n{''.join(tb)}"
                        break
                    if skip and any(c.key == key and c.violation(values[key]) > 0
                                    for c in self.constraints):
                        if len(values) < len(self.objectives):
                            status = "pruned"
                        break
            finally:
                cand.release()
        feasible, violation = (None, 0.0)
        if status != "failed":
            violation = float(sum(c.violation(values[c.key]) for c in self.constraints
                                  if c.key in values))
            feasible = violation == 0.0 and all(c.key in values for c in self.constraints)
        return Trial(number=trial.number, arch=trial.arch, status=status, values=values,
                     provenance=provenance, feasible=feasible, violation=violation, error=error,
                     seed=trial.seed, origin=trial.origin, started=started, finished=time.time(),
                     attempt=trial.attempt)
