"""``optuna``: any Optuna sampler (TPE, NSGA-II/III, GP, an OptunaHub module, ...) as a strategy.

The sampler runs in an in-memory study through ask/tell, with the experiment's
objectives as the study's directions (multi-objective samplers get them all) and its
constraints as Optuna constraints. Invalid and already seen architectures never reach
an evaluation (see :mod:`nasframe_plugins.tuner_bridge`). Needs ``optuna >= 5.0``
(``pip install 'nasframe[optuna]'``).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import warnings
from typing import Any

from nasframe_plugins.tuner_bridge import Outcome, TunerBridge
from pydantic import JsonValue

from nasframe import trust
from nasframe.errors import ConfigError, did_you_mean
from nasframe.params import Field, Int, ParamError, Params
from nasframe.space import Integer
from nasframe.trial import Problem

INSTALL_HINT = "pip install 'nasframe[optuna]'"
#: short names of samplers in ``optuna.samplers`` (class names work too, in any case)
SAMPLERS = {"tpe": "TPESampler", "nsga2": "NSGAIISampler", "nsgaii": "NSGAIISampler",
            "nsga3": "NSGAIIISampler", "nsgaiii": "NSGAIIISampler", "gp": "GPSampler",
            "random": "RandomSampler", "qmc": "QMCSampler", "cmaes": "CmaEsSampler"}
#: the constraint every trial carries: 0 evaluated, 1 invalid architecture or failed evaluation
VALID = "valid"


@contextlib.contextmanager
def _quiet():
    """No "Trial N finished" lines and no experimental-feature warnings from the sampler."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def sampler_class(spec: str, registry: str | None = None) -> type | None:
    """The sampler class named by ``spec``: a short name (``tpe``, ``nsga2``, ``nsga3``,
    ``gp``, ``random``, ``qmc``, ``cmaes``), a class of ``optuna.samplers`` (``TPESampler``),
    a class path (``package.module.Class`` or ``package.module:Class``) or an OptunaHub
    module (``optunahub:PACKAGE`` or ``optunahub:PACKAGE:Class``). A ParamError otherwise.

    A class path or an OptunaHub module loads code, so it must be allowed outside the
    experiment file (:mod:`nasframe.trust`); under :func:`nasframe.trust.check_only`
    (``nasframe validate``) it is checked but not imported, and None is returned."""
    import optuna

    low = spec.strip().lower()
    names = {n.lower(): n for n in dir(optuna.samplers) if n.endswith("Sampler")}
    if low in SAMPLERS or low in names:
        return getattr(optuna.samplers, SAMPLERS.get(low) or names[low])
    for prefix in ("optuna.samplers.", "optuna.samplers:"):   # optuna's own: nothing imported
        if spec.strip().startswith(prefix):
            name = spec.strip()[len(prefix):]
            if name.lower() in names:
                return getattr(optuna.samplers, names[name.lower()])
            raise ParamError("sampler", f"optuna.samplers has no sampler {name!r}"
                             f"{did_you_mean(name, names.values())}; its samplers: "
                             f"{', '.join(sorted(names.values()))}")
    if low.startswith("optunahub:"):
        trust.require(spec, "sampler", "an OptunaHub package (its code is downloaded or read "
                      "from the registry folder, then run)")
        if trust.checking_only():
            return None
        return _hub_class(spec.strip()[len("optunahub:"):], registry)
    if "." in spec or ":" in spec:
        trust.require(spec, "sampler", "a class path (importing it runs that module's code)")
        if trust.checking_only():
            return None
        module, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ParamError("sampler", f"cannot import {spec!r} ({err}); give "
                             "'package.module.Class' of an importable sampler") from None
        return _check_sampler(cls, spec)
    choices = sorted(SAMPLERS) + sorted(names.values())
    raise ParamError("sampler", f"unknown sampler {spec!r}{did_you_mean(low, choices)}; use one of "
                     f"{', '.join(sorted(SAMPLERS))}, a class of optuna.samplers, a class path "
                     "('package.module.Class') or 'optunahub:PACKAGE[:Class]'")


def _check_sampler(cls: Any, spec: str) -> type:
    import optuna

    if not (inspect.isclass(cls) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise ParamError("sampler", f"{spec!r} is {cls!r}, not a subclass of "
                         "optuna.samplers.BaseSampler")
    return cls


def _hub_class(spec: str, registry: str | None) -> type:
    import optuna

    package, _, name = spec.partition(":")
    try:
        import optunahub
    except ImportError:
        raise ParamError("sampler", f"'optunahub:{spec}' needs the optunahub package; install "
                         "it with: pip install optunahub") from None
    try:
        if registry is not None:
            module = optunahub.load_local_module(package, registry_root=registry)
        else:
            module = optunahub.load_module(package)
    except Exception as err:  # noqa: BLE001 - a download or import failure, reported as such
        where = f"the local registry {registry!r}" if registry else "OptunaHub (needs GitHub access)"
        raise ParamError("sampler", f"cannot load OptunaHub package {package!r} from {where}: "
                         f"{type(err).__name__}: {err}") from None
    if name:
        if not hasattr(module, name):
            raise ParamError("sampler", f"OptunaHub package {package!r} has no {name!r}")
        return _check_sampler(getattr(module, name), f"optunahub:{spec}")
    found = sorted({v for v in vars(module).values() if inspect.isclass(v)
                    and issubclass(v, optuna.samplers.BaseSampler)
                    and v.__module__.startswith(module.__name__)}, key=lambda c: c.__name__)
    if len(found) != 1:
        raise ParamError("sampler", f"OptunaHub package {package!r} defines "
                         f"{len(found)} samplers ({', '.join(c.__name__ for c in found) or 'none'}); "
                         f"name one: 'optunahub:{package}:CLASS'")
    return found[0]


class OptunaStrategy(TunerBridge):
    """An Optuna sampler driven through ask/tell in an in-memory study.

    * Decisions: each becomes a distribution over its value numbers: ``Integer`` an
      ``IntDistribution`` (ordered), ``Categorical`` and ``Boolean`` a
      ``CategoricalDistribution``; proposals are canonicalised and validated by the space.
    * Objectives: the study has one direction per objective (``minimize``/``maximize``),
      so multi-objective samplers (NSGA-II, NSGA-III, TPE, GP) search the whole front and
      single-objective ones (CMA-ES, QMC) need a single-objective experiment.
    * Constraints: every trial carries ``valid`` (0, or 1 for an invalid architecture or
      a failed evaluation) and one constraint per experiment constraint (``value - bound``
      for ``<=``, ``bound - value`` for ``>=``; feasible when <= 0) through
      ``trial.set_constraint``, which TPE, NSGA-II/III and GP use.
    * Invalid architectures and failed evaluations are told as complete trials violating
      ``valid``, with the worst values told so far (GP and NSGA-II ignore failed trials,
      so a FAIL would have them propose the same point again). A proposal whose canonical
      architecture was seen is told that architecture's values. After ``max_asks``
      rejected proposals in a row an unseen architecture is drawn at random and enqueued
      (``study.enqueue_trial``), so the sampler owns it.
    * Seed: the experiment's, passed as the sampler's ``seed``.

    State: the ask/tell sequence; a resumed instance replays it into a fresh study.
    """

    name = "optuna"
    known_as = {"nsga": "`optuna` with `params: {sampler: nsga2}`",
                "nsga2": "`optuna` with `params: {sampler: nsga2}`",
                "nsgaii": "`optuna` with `params: {sampler: nsga2}`",
                "nsga3": "`optuna` with `params: {sampler: nsga3}`",
                "tpe": "`optuna` with `params: {sampler: tpe}`",
                "cmaes": "`optuna` with `params: {sampler: cmaes}`",
                "gp": "`optuna` with `params: {sampler: gp}`",
                "bayesian": "`optuna` with `params: {sampler: gp}`"}
    dependencies = ("optuna",)
    install_hint = INSTALL_HINT

    class Params(Params):
        sampler: str = Field("tpe", min_length=1)
        """tpe, nsga2, nsga3, gp, random, qmc, cmaes, a class of optuna.samplers, 'package.module.Class' or 'optunahub:PACKAGE[:Class]'."""
        sampler_kwargs: dict[str, JsonValue] = {}
        """Keyword arguments of the sampler (e.g. {n_startup_trials: 8}); the seed is the experiment's."""
        optunahub_registry: str | None = Field(None, min_length=1)
        """A local OptunaHub registry folder for 'optunahub:' samplers (default: download from GitHub)."""
        max_asks: Int = Field(32, ge=1, le=100_000)
        """Sampler proposals per architecture before an unseen one is drawn at random."""
        max_retries: Int = Field(1000, ge=1, le=10_000_000)
        """Random draws of seen architectures before a large space counts as exhausted."""

    def __init__(self, problem: Problem, params=None, **kwargs):
        import optuna

        major = int(optuna.__version__.split(".")[0])
        if major < 5:
            raise ConfigError(f"strategy 'optuna' needs optuna >= 5.0 (trial.set_constraint); "
                              f"optuna {optuna.__version__} is installed: "
                              "pip install -U 'nasframe[optuna]'")
        self._cls: type | None = None
        super().__init__(problem, params, **kwargs)

    # -- the sampler -----------------------------------------------------------
    def _make_sampler(self, seed: int):
        p = self.params
        if self._cls is None:
            self._cls = sampler_class(p.sampler, p.optunahub_registry)
        cls = self._cls
        if cls is None:
            return None
        kwargs = dict(p.sampler_kwargs)
        for bad, why in (("seed", "the sampler's seed is the experiment's `seed`"),
                         ("constraints_func", "the experiment's constraints are passed to the "
                          "sampler as Optuna constraints")):
            if bad in kwargs:
                raise ParamError(f"sampler_kwargs.{bad}", f"remove it: {why}")
        sig = inspect.signature(cls)
        accepted = sig.parameters
        if not any(v.kind is inspect.Parameter.VAR_KEYWORD for v in accepted.values()):
            for key in kwargs:
                if key not in accepted:
                    raise ParamError(f"sampler_kwargs.{key}", f"{cls.__name__} has no parameter "
                                     f"{key!r}{did_you_mean(key, accepted)}; it takes: "
                                     f"{', '.join(k for k in accepted if k != 'seed')}")
        if "seed" in accepted:
            kwargs["seed"] = seed
        try:
            with _quiet():
                return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ParamError("sampler_kwargs", f"{cls.__name__}({kwargs}) failed: {err}") from None

    def _backend_reset(self, seed: int) -> None:
        import optuna
        from optuna.distributions import CategoricalDistribution, IntDistribution

        self._dists = {d.name: (IntDistribution(0, d.count - 1) if isinstance(d, Integer)
                                else CategoricalDistribution(tuple(range(d.count))))
                       for d in self._decisions}
        names = [VALID]
        for c in self.problem.constraints:
            name = str(c)
            while name in names:
                name += "'"
            names.append(name)
        self._con_names = names
        self._worst: dict[str, float] = {}
        self._worst_con: dict[int, float] = {}
        sampler = self._make_sampler(seed)
        if sampler is None:          # validate: named code checked, not imported
            self._study = None
            return
        with _quiet():
            self._study = optuna.create_study(
                directions=["minimize" if o.direction == "min" else "maximize"
                            for o in self.problem.objectives], sampler=sampler)

    def _backend_ask(self):
        with _quiet():
            trial = self._study.ask(fixed_distributions=self._dists)
        return trial, [int(trial.params[d.name]) for d in self._decisions]

    def _backend_inject(self, indices: list[int]):
        params = {d.name: int(i) for d, i in zip(self._decisions, indices)}
        with _quiet():
            self._study.enqueue_trial(params)
            return self._study.ask(fixed_distributions=self._dists)

    def _backend_report(self, trial, indices: list[int], outcome: Outcome) -> None:
        values = [outcome.values.get(o.key, self._worst.get(o.key)) for o in self.problem.objectives]
        cons = [0.0 if outcome.kind == "ok" else 1.0]
        cons += [c if c is not None else self._worst_con.get(i, 0.0)
                 for i, c in enumerate(outcome.constraints)]
        with _quiet():
            for name, v in zip(self._con_names, cons):
                trial.set_constraint(name, float(v))
            self._study.tell(trial, values)

    # -- penalties ---------------------------------------------------------------
    def _needs_penalty(self, outcome: Outcome) -> bool:
        return any(o.key not in outcome.values for o in self.problem.objectives)

    def _can_penalise(self) -> bool:
        return all(o.key in self._worst for o in self.problem.objectives)

    def _observe(self, outcome: Outcome) -> None:
        for o in self.problem.objectives:
            v = outcome.values.get(o.key)
            if v is None:
                continue
            w = self._worst.get(o.key)
            self._worst[o.key] = v if w is None else (max(w, v) if o.direction == "min" else min(w, v))
        for i, c in enumerate(outcome.constraints):
            if c is not None and math.isfinite(c):
                self._worst_con[i] = max(self._worst_con.get(i, c), c)

    def _spec(self) -> dict[str, Any]:
        p = self.params
        return {"sampler": p.sampler, "sampler_kwargs": p.model_dump(mode="json")["sampler_kwargs"],
                "optunahub_registry": p.optunahub_registry, "max_asks": p.max_asks,
                "max_retries": p.max_retries,
                "objectives": [f"{o.key}:{o.direction}" for o in self.problem.objectives],
                "constraints": [str(c) for c in self.problem.constraints]}

    @property
    def study(self):
        """The sampler's in-memory study (invalid and duplicate proposals included)."""
        return self._study
