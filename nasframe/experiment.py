"""An experiment resolved against the installed plugins, and one-trial evaluation.

:meth:`Experiment.from_config` is what ``nasframe validate`` runs: every
component is looked up, its params validated and the component made; every
objective's required capabilities are checked against the search space; the
strategy and the executor are made too (and thrown away), so that anything
``run`` would reject is rejected here, with the field path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasframe import capabilities, stopping
from nasframe.architecture import Architecture
from nasframe.backends import Deferred
from nasframe.candidate import Candidate
from nasframe.config import ExperimentConfig
from nasframe.context import Context
from nasframe.errors import ConfigError, did_you_mean
from nasframe.executor import Executor
from nasframe.history import History
from nasframe.objective import Objective
from nasframe.plugins import Plugins, get_plugins
from nasframe.pruning import Pruning, TrialPruned
from nasframe.space import SearchSpace
from nasframe.strategy import Strategy
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial


def trial_seed(seed: int, arch: Architecture) -> int:
    """The seed of an architecture's evaluation: the same in every run of the same experiment
    and in ``nasframe evaluate``, so a front member re-evaluates to the same values."""
    digest = hashlib.sha256(f"{seed}:{arch.id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class _Problems:
    """Collects ConfigErrors so that validation reports every problem at once."""

    def __init__(self, source: str):
        self.source = source
        self.lines: list[str] = []

    def attempt(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            self.add(*err.problems)
            return None

    def add(self, *lines: str) -> None:
        self.lines.extend(f"{self.source}: {line}" for line in lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(*self.lines)


@dataclass
class Experiment:
    """The components of one experiment, made from its config."""

    cfg: ExperimentConfig
    space: SearchSpace
    objectives: dict[str, Objective]  # search objectives and constraint-only ones, by key
    specs: tuple[ObjectiveSpec, ...]
    constraints: tuple[Constraint, ...]
    plugins: Plugins = field(repr=False, default=None)  # type: ignore[assignment]
    #: the experiment file's text (kept with the run's config snapshot)
    text: str = field(repr=False, default="")

    def plugins_payload(self) -> bytes | None:
        """The components registered in this process (:mod:`nasframe.inprocess`) that the
        experiment uses, pickled by value for worker processes; None when there are none."""
        from nasframe import inprocess

        return inprocess.payload(self.cfg, self.plugins)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, plugins: Plugins | None = None,
                    source: str = "<config>") -> Experiment:
        """Resolve and check everything; one ConfigError listing every problem."""
        plugins = plugins or get_plugins()
        problems = _Problems(source)
        space = problems.attempt(plugins.search_spaces.create, cfg.search_space.name,
                                 cfg.search_space.params, where="search_space")
        objectives: dict[str, Objective] = {}
        specs = []
        for i, o in enumerate(cfg.objectives):
            obj = problems.attempt(plugins.objectives.create, o.name, o.params,
                                   where=f"objectives[{i}]")
            if obj is not None:
                objectives[o.key] = obj
                specs.append(ObjectiveSpec(o.key, o.direction or obj.direction))
        constraints = tuple(cfg.parsed_constraints)
        keys = [o.key for o in cfg.objectives]
        for i, c in enumerate(constraints):
            if c.key in keys:
                continue
            if c.key not in plugins.objectives:
                avail = sorted(set(keys) | set(plugins.objectives.names()))
                problems.add(f"constraints[{i}]: '{c.key}' is neither an objective of this "
                             f"experiment nor a registered objective{did_you_mean(c.key, avail)} "
                             f"available: {', '.join(avail)}")
                continue
            obj = problems.attempt(plugins.objectives.create, c.key, {}, where=f"constraints[{i}]")
            if obj is not None:  # a constraint on an objective that is not searched
                objectives[c.key] = obj
        if cfg.reference_point:
            for key in cfg.reference_point:
                if key not in keys:
                    problems.add(f"reference_point.{key}: not an objective of this experiment"
                                 f"{did_you_mean(key, keys)} give a value for each of: "
                                 f"{', '.join(keys)}")
        if space is not None:
            for key, obj in objectives.items():
                where = _where(cfg, key)
                missing = capabilities.missing(space, obj.requirements())
                if missing:
                    have = capabilities.names(capabilities.provided_by(space))
                    problems.add(
                        f"{where}: objective '{obj.name}' needs a search space that provides "
                        f"{capabilities.names(missing)}; '{space.name}' provides {have}; choose "
                        f"another objective or space (`nasframe plugins {obj.name}` says more)")
                    continue
                reason = obj.check_space(space)
                if reason:
                    problems.add(f"{where}: {reason}")
            if cfg.references not in (True, False):
                refs = space.reference_architectures()
                for j, name in enumerate(cfg.references):
                    if name not in refs:
                        problems.add(f"references[{j}]: search space '{space.name}' has no "
                                     f"reference architecture '{name}'{did_you_mean(name, refs)} "
                                     f"available: {', '.join(refs) or 'none'}")
        problems.attempt(plugins.strategies.parse, cfg.strategy.name, cfg.strategy.params,
                         "strategy")
        if cfg.pruner is not None:
            from nasframe.pruning import make_pruner

            problems.attempt(make_pruner, cfg.pruner.name, cfg.pruner.params)
            within = cfg.pruner.params.get("no_worse_on") or []
            if not isinstance(within, list) or not all(isinstance(k, str) for k in within):
                problems.add(f"pruner.params.no_worse_on: give a list of objective keys, got "
                             f"{within!r}")
            else:
                for k in within:
                    if k not in [s.key for s in specs]:
                        problems.add(f"pruner.params.no_worse_on: {k!r} is not an objective of "
                                     f"this experiment{did_you_mean(k, [s.key for s in specs])} "
                                     f"objectives: {', '.join(s.key for s in specs)}")
            reporting = [k for k, o in objectives.items() if o.reports_intermediate]
            if cfg.pruner.name != "none" and objectives and not reporting:
                able = sorted(n for n in plugins.objectives.names()
                              if plugins.objectives.entry(n).cls.reports_intermediate)
                problems.add(f"pruner: no objective of this experiment reports intermediate "
                             f"values, so '{cfg.pruner.name}' would never stop a trial; add one "
                             f"that does ({', '.join(able) or 'none installed'}) or remove "
                             "`pruner`")
        problems.attempt(plugins.executors.parse, cfg.executor.name,
                         {**cfg.executor.params, "workers": cfg.executor.workers}, "executor")
        problems.raise_if_any()
        exp = cls(cfg, space, objectives, tuple(specs), constraints, plugins)
        # the strategy and executor are made once here so their params are checked now
        problems.attempt(exp.make_strategy)
        executor = problems.attempt(exp.make_executor)
        if executor is not None and not executor.in_process:
            problems.attempt(exp.plugins_payload)   # can in-process components reach workers?
        problems.raise_if_any()
        return exp

    # -- components --------------------------------------------------------
    @property
    def problem(self) -> Problem:
        return Problem(self.space, self.specs, self.constraints)

    def make_strategy(self, history: History | None = None) -> Strategy:
        """The experiment's strategy, fresh (no state loaded), reading ``history``."""
        return self.plugins.strategies.create(
            self.cfg.strategy.name, self.cfg.strategy.params, where="strategy",
            problem=self.problem, seed=self.cfg.seed, history=history)

    def make_executor(self) -> Executor:
        """The experiment's executor, not started."""
        return self.plugins.executors.create(
            self.cfg.executor.name, {**self.cfg.executor.params, "workers": self.cfg.executor.workers},
            where="executor")

    def needs(self) -> frozenset[type[capabilities.Capability]]:
        """The capabilities the objectives require: what the space must prepare."""
        return frozenset(c for obj in self.objectives.values() for c in obj.requirements())

    def context(self, run_dir: str | Path, quiet: bool = False, console=None,
                cpu_fallback: bool = False) -> Context:
        """The run's context. ``cpu_fallback``: where the experiment's ``device`` is not on
        this machine (a run made on a GPU, exported on a laptop), work on the CPU in fp32
        and say so, instead of the ConfigError a run gets."""
        kwargs: dict[str, Any] = {}
        if console is not None:
            kwargs["console"] = console
        from nasframe import accel

        device, precision = self.cfg.device, self.cfg.precision
        if cpu_fallback and accel.problems(device, precision):
            import sys

            print(f"note: device {device!r} ({precision}) is not available here; using the "
                  "CPU (fp32)", file=sys.stderr)
            device, precision = "cpu", "fp32"
        accel.check(device, precision)   # ConfigError: no such device here
        return Context(run_dir=Path(run_dir), seed=self.cfg.seed, device=device,
                       precision=precision,
                       cache_dir=Path(self.cfg.cache_dir) if self.cfg.cache_dir else None,
                       quiet=quiet, op_handles=self.plugins.op_handles.as_dict(), **kwargs)

    def prepare(self, ctx: Context) -> None:
        """The space prepares what the objectives need, then each objective prepares."""
        self.space.prepare(ctx, self.needs())
        for obj in self.objectives.values():
            obj.prepare(self.space, ctx)

    def evaluation_order(self) -> list[str]:
        """Objective keys, cheapest first (stable for equal costs)."""
        keys = list(self.objectives)
        return sorted(keys, key=lambda k: (self.objectives[k].cost, keys.index(k)))

    # -- evaluation --------------------------------------------------------
    def evaluate(self, trial: Trial, ctx: Context, skip_infeasible: bool | None = None) -> Trial:
        """Evaluate a running trial and return it finished (complete, infeasible, pruned or failed).

        An objective that returns a :class:`~nasframe.backends.Deferred` value (a device
        job) leaves the trial ``running``, with its values so far and the job request in
        ``trial.jobs[key]["request"]``: the runner submits the jobs and finishes the trial
        with :meth:`complete`."""
        skip = self.cfg.skip_infeasible if skip_infeasible is None else skip_infeasible
        started = time.time()
        values: dict[str, float] = {}
        provenance = {}
        jobs: dict[str, Any] = {}
        status, error, failure = "complete", None, None
        reason = self.space.validate(trial.arch)
        pruning = self.pruning_for(trial)
        directions = {s.key: s.direction for s in self.specs}
        if reason is not None:
            status, error, failure = "failed", f"invalid architecture: {reason}", "invalid"
        else:
            cand = Candidate(self.space, trial.arch, trial.seed, pruning)
            try:
                for key in self.evaluation_order():
                    obj = self.objectives[key]
                    if pruning is not None and obj.reports_intermediate:
                        pruning.start(key, directions.get(key, obj.direction), values)
                    try:
                        out = obj(cand, ctx)
                    except TrialPruned:
                        last = pruning.last if pruning is not None else None
                        if last is None:
                            status, failure = "failed", "exception"
                            error = (f"objective '{key}' raised TrialPruned without reporting "
                                     "a value first (candidate.report(value, step))")
                            break
                        step, value = last
                        status = "pruned"
                        values[key] = value
                        provenance[key] = obj.provenance(ctx, {"pruned_at_step": step})
                        error = (f"pruned by '{self.cfg.pruner.name if self.cfg.pruner else '?'}' "
                                 f"at step {step}: {key} = {value:.6g}")
                        break
                    except (Exception, KeyboardInterrupt, SystemExit) as err:
                        if not isinstance(err, Exception) and not stopping.objective_error(err):
                            raise          # the user's Ctrl-C / SIGTERM: the run stops
                        status, failure = "failed", "exception"
                        tb = traceback.format_exception(err, limit=-3)
                        what = f"{type(err).__name__}: {err}"
                        if not isinstance(err, Exception):
                            what = (f"raised {type(err).__name__}({err!s}) itself (not a Ctrl-C "
                                    "or SIGTERM of the run: the trial fails, the run goes on)")
                        error = f"objective '{key}': {what}\n{''.join(tb)}"
                        break
                    if isinstance(out, Deferred):
                        jobs[key] = {"request": out.request, "request_key": out.key,
                                     "details": out.details}
                        continue
                    values[key], provenance[key] = out
                    if skip and any(c.key == key and c.violation(values[key]) > 0
                                    for c in self.constraints):
                        if len(values) < len(self.objectives):
                            status = "infeasible"
                        jobs = {}
                        break
            finally:
                cand.release()
        if pruning is not None and pruning.record():
            trial = dataclasses.replace(trial, intermediate=pruning.record())
        if jobs and status == "complete":
            merged = dict(trial.jobs)
            for key, entry in jobs.items():
                old = trial.jobs.get(key) or {}
                if old.get("request_key") == entry["request_key"] and "job" in old:
                    entry = {**entry, "job": old["job"]}   # submitted before: re-attach to it
                merged[key] = entry
            return dataclasses.replace(trial, status="running", values=values,
                                       provenance=provenance, jobs=merged, started=started)
        return self.complete(trial, status, values, provenance, error, failure, started)

    def pruning_for(self, trial: Trial) -> Pruning | None:
        """The trial's :class:`~nasframe.pruning.Pruning` when an objective reports
        intermediate values (with the experiment's pruner, if any)."""
        if not any(o.reports_intermediate for o in self.objectives.values()):
            return None
        p = self.cfg.pruner
        directions = {s.key: s.direction for s in self.specs}
        return Pruning(p.name if p else None, p.params if p else {}, trial.number,
                       trial.peers, study_name=f"nasframe-{self.cfg.name}",
                       directions=directions)

    def complete(self, trial: Trial, status: str, values: dict[str, float], provenance: dict,
                 error: str | None = None, failure: str | None = None,
                 started: float | None = None) -> Trial:
        """``trial`` finished with ``values``: feasibility and violation from the constraints."""
        feasible, violation = (None, 0.0)
        if status != "failed":
            violation = float(sum(c.violation(values[c.key]) for c in self.constraints
                                  if c.key in values))
            feasible = violation == 0.0 and all(c.key in values for c in self.constraints)
        return dataclasses.replace(
            trial, status=status, values=values, provenance=provenance, feasible=feasible,
            violation=violation, error=error, failure=failure, peers=(),
            started=started if started is not None else trial.started, finished=time.time())


def checked_config(data: Any, source: str = "<config>",
                   plugins: Plugins | None = None) -> ExperimentConfig:
    """The experiment config of ``data``; when the schema finds problems, the components'
    names and params are checked too, so that one error lists every problem at once."""
    from nasframe.config import config_from_dict

    try:
        return config_from_dict(data, source)
    except ConfigError as err:
        more = component_problems(data, source, plugins) if isinstance(data, dict) else []
        seen = set(err.problems)
        raise ConfigError(*err.problems, *(m for m in more if m not in seen)) from None


def component_problems(data: dict[str, Any], source: str,
                       plugins: Plugins | None = None) -> list[str]:
    """Unknown component names and bad params in a raw experiment mapping (best effort:
    sections that are not even shaped like a component are left to the schema's errors)."""
    try:
        plugins = plugins or get_plugins()
    except ConfigError:
        return []
    problems = _Problems(source)

    def component(section: Any) -> tuple[str, Any] | None:
        if isinstance(section, dict) and isinstance(section.get("name"), str):
            params = section.get("params", {})
            return section["name"], params if isinstance(params, dict) else {}
        return None

    space = component(data.get("search_space"))
    if space:
        problems.attempt(plugins.search_spaces.create, *space, where="search_space")
    objectives = data.get("objectives")
    for i, o in enumerate(objectives if isinstance(objectives, list) else []):
        comp = component(o)
        if comp:
            problems.attempt(plugins.objectives.create, *comp, where=f"objectives[{i}]")
    strategy = component(data.get("strategy"))
    if strategy:
        problems.attempt(plugins.strategies.parse, *strategy, "strategy")
    executor = component(data.get("executor"))
    if executor:                        # (`workers` is the schema's to check)
        problems.attempt(plugins.executors.parse, *executor, "executor")
    return problems.lines


def _where(cfg: ExperimentConfig, key: str) -> str:
    for i, o in enumerate(cfg.objectives):
        if o.key == key:
            return f"objectives[{i}]"
    for i, c in enumerate(cfg.parsed_constraints):
        if c.key == key:
            return f"constraints[{i}]"
    return key
