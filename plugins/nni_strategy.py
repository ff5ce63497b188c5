"""``nni``: NNI 3.0's HPO tuners (TPE, Evolution, Anneal, Random, GridSearch, any tuner class)
as a strategy, through the Tuner API and without NNI's experiment manager.

NNI tuners optimise one number, so the experiment's objectives are scalarised (one
objective, or a weighted sum) and its constraints become a penalty. Invalid and already
seen architectures never reach an evaluation (see :mod:`nasframe_plugins.tuner_bridge`).

Install: ``pip install 'nasframe[nni]' && pip install --no-deps nni==3.0`` (nni 3.0's own
requirements pin ``filelock<3.12`` and ``typeguard<4.1.3``, which would downgrade packages
torch and others use; the tuners need only the light dependencies the extra lists).
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import math
import random
from collections import deque
from typing import Annotated, Any

import numpy as np
from nasframe_plugins.tuner_bridge import Outcome, TunerBridge
from pydantic import JsonValue, model_validator

from nasframe import trust
from nasframe.errors import did_you_mean
from nasframe.params import Field, Float, Int, ParamError, Params
from nasframe.trial import Problem

INSTALL_HINT = "pip install 'nasframe[nni]' && pip install --no-deps nni==3.0"
#: tuners whose constructor has no optimize_mode (they ignore results)
_NO_MODE = {"gridsearch", "random", "batch"}


class RngSandbox:
    """Private global random state for third-party code that draws from ``random`` and
    ``np.random`` (NNI's Evolution and Anneal do, and create unseeded
    ``np.random.RandomState()`` objects). Inside ``with sandbox():`` the global
    generators hold this sandbox's state, and ``np.random.RandomState()`` without a
    seed is seeded from a private stream; both are put back afterwards. Not thread-safe:
    one tuner call at a time."""

    def __init__(self, seed: int):
        self._py = random.Random(seed).getstate()
        self._np = np.random.RandomState(seed).get_state()
        self._seeds = np.random.default_rng([seed, 0x5EED])

    @contextlib.contextmanager
    def __call__(self):
        saved_py, saved_np = random.getstate(), np.random.get_state()
        real = np.random.RandomState
        seeds = self._seeds

        class SeededRandomState(real):   # a subclass, so isinstance checks still hold
            def __init__(self, seed=None):
                super().__init__(int(seeds.integers(2**31)) if seed is None else seed)

        random.setstate(self._py)
        np.random.set_state(self._np)
        np.random.RandomState = SeededRandomState
        try:
            yield
        finally:
            np.random.RandomState = real
            self._py, self._np = random.getstate(), np.random.get_state()
            random.setstate(saved_py)
            np.random.set_state(saved_np)


def _import_nni():
    import nni

    log = logging.getLogger("nni")    # nni prints INFO lines to stdout through its own handler
    log.handlers.clear()
    log.setLevel(logging.ERROR)
    return nni


def builtin_tuners() -> dict[str, Any]:
    """NNI's built-in tuners by lower-case name and alias: their ``AlgoMeta``."""
    import yaml

    _import_nni()
    from nni.runtime.config import get_builtin_config_file
    from nni.tools.package_utils.common import AlgoMeta

    with open(get_builtin_config_file("builtin_algorithms.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    out = {}
    for entry in config.get("tuners", []):
        meta = AlgoMeta.load(entry, "tuner")
        out[meta.name.lower()] = meta
        if meta.alias:
            out[meta.alias.lower()] = meta
    return out


def tuner_class(spec: str) -> tuple[type, dict[str, Any], Any] | None:
    """``(class, built-in class args, args validator or None)`` of a built-in tuner name
    (any case: TPE, Evolution, Anneal, Random, GridSearch, ...) or a class path
    ('package.module.Class'). A ParamError otherwise. A class path loads code: it must be
    allowed outside the experiment file (:mod:`nasframe.trust`), and under
    :func:`nasframe.trust.check_only` it is checked but not imported (None)."""
    name = spec.strip()
    builtins = builtin_tuners()
    meta = builtins.get(name.lower())
    if meta is not None:
        module, _, cls_name = meta.class_name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except ImportError as err:
            raise ParamError("tuner", f"NNI tuner {meta.name!r} needs {err.name or err}, which is "
                             f"not installed (e.g. Anneal needs hyperopt: pip install "
                             "'nasframe[nni]')") from None
        validator = None
        if meta.validator_class_name:
            vmod, _, vname = meta.validator_class_name.rpartition(".")
            validator = getattr(importlib.import_module(vmod), vname)()
        return cls, dict(meta.class_args or {}), validator
    if "." in name:
        trust.require(spec, "tuner", "a class path (importing it runs that module's code)")
        if trust.checking_only():
            return None
        module, _, cls_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ParamError("tuner", f"cannot import {spec!r} ({err}); give "
                             "'package.module.Class' of an importable tuner") from None
        from nni.tuner import Tuner

        if not (inspect.isclass(cls) and issubclass(cls, Tuner)):
            raise ParamError("tuner", f"{spec!r} is {cls!r}, not a subclass of nni.tuner.Tuner")
        return cls, {}, None
    names = sorted({m.name for m in builtins.values()})
    raise ParamError("tuner", f"unknown NNI tuner {spec!r}{did_you_mean(name, names)}; use a "
                     f"built-in tuner ({', '.join(names)}) or a class path "
                     "('package.module.Class')")


class NNIStrategy(TunerBridge):
    """An NNI tuner driven through its Tuner API (``update_search_space``,
    ``generate_multiple_parameters``, ``receive_trial_result``, ``trial_end``,
    ``import_data``), in-process.

    * Decisions: each becomes a ``choice`` over its value numbers; proposals are
      canonicalised and validated by the space.
    * Objectives: NNI tuners minimise one number (``optimize_mode: minimize`` is always
      set): ``objective`` (default: the first objective) in its direction, or with
      ``weights`` the weighted sum of the objectives, each in minimisation form (a
      maximised objective counts negated).
    * Constraints, invalid architectures and failed evaluations: the tuner is told a
      penalty worse than every value told so far: ``W + m (1 + v / V)`` for an infeasible
      trial with violation ``v`` (``V`` the largest violation told), ``W + 3 m`` for an
      invalid architecture or a failed evaluation, where ``W`` is the worst value told so
      far and ``m`` a tenth of the spread of the told values.
    * A proposal whose canonical architecture was seen is told that architecture's
      value. After ``max_asks`` rejected proposals in a row (or when the tuner has no
      more: TPE, Random and GridSearch stop once every combination was proposed;
      Evolution has none while its population waits for results) an unseen architecture
      is drawn at random; its result reaches the tuner through ``import_data`` (TPE
      learns from it, Evolution does not).
    * Seed: the experiment's, passed as ``seed`` to tuners that take one (TPE, Random);
      every tuner call runs with private global random generators seeded from it, so
      Evolution and Anneal are reproducible too.

    State: the ask/tell sequence; NNI tuners cannot save their state, so a resumed
    instance replays the sequence into a fresh tuner.
    """

    name = "nni"
    known_as = {"anneal": "`nni` with `params: {tuner: Anneal}`",
                "evolution": "`nni` with `params: {tuner: Evolution}`",
                "tpe": "`nni` with `params: {tuner: TPE}`"}
    dependencies = ("nni", "json_tricks", "schema", "typeguard")
    install_hint = INSTALL_HINT

    class Params(Params):
        tuner: str = Field("TPE", min_length=1)
        """TPE, Evolution, Anneal, Random, GridSearch (any NNI built-in tuner) or 'package.module.Class'."""
        tuner_kwargs: dict[str, JsonValue] = {}
        """The tuner's class args (e.g. {population_size: 16}); optimize_mode and seed are set by nasframe."""
        objective: str | None = None
        """The objective the tuner minimises (in its direction; default: the first objective)."""
        weights: dict[str, Annotated[Float, Field(ge=0)]] = {}
        """Minimise sum(weight x objective), maximised objectives negated, instead of one objective."""
        max_asks: Int = Field(32, ge=1, le=100_000)
        """Tuner proposals per architecture before an unseen one is drawn at random."""
        max_retries: Int = Field(1000, ge=1, le=10_000_000)
        """Random draws of seen architectures before a large space counts as exhausted."""

        @model_validator(mode="after")
        def _one_scalarisation(self):
            if self.objective is not None and self.weights:
                raise ValueError("give `objective` (one objective) or `weights` (a weighted sum), "
                                 "not both")
            if self.weights and not any(w > 0 for w in self.weights.values()):
                raise ValueError("`weights` needs at least one weight above 0")
            return self

    def __init__(self, problem: Problem, params=None, **kwargs):
        self._tuner_cls = None
        super().__init__(problem, params, **kwargs)

    def _init_scalar(self) -> None:
        p = self.params
        specs = {o.key: o for o in self.problem.objectives}
        if p.weights:
            for key in p.weights:
                if key not in specs:
                    raise ParamError(f"weights.{key}", f"must name one of the experiment's "
                                     f"objectives ({', '.join(specs)}){did_you_mean(key, specs)}")
            self._weights = {k: (w if specs[k].direction == "min" else -w)
                             for k, w in p.weights.items() if w > 0}
        else:
            key = p.objective if p.objective is not None else next(iter(specs))
            if key not in specs:
                raise ParamError("objective", f"must name one of the experiment's objectives "
                                 f"({', '.join(specs)}), got {key!r}{did_you_mean(key, specs)}")
            self._weights = {key: 1.0 if specs[key].direction == "min" else -1.0}

    # -- the tuner -------------------------------------------------------------
    def _make_tuner(self):
        p = self.params
        if self._tuner_cls is None:
            _import_nni()
            self._tuner_cls = tuner_class(p.tuner)
        if self._tuner_cls is None:      # validate: a class path checked, not imported
            return None
        cls, defaults, validator = self._tuner_cls
        kwargs = {**defaults, **p.tuner_kwargs}
        for bad, why in (("optimize_mode", "nasframe always minimises (maximised objectives are "
                          "negated)"), ("seed", "the tuner's seed is the experiment's `seed`")):
            if bad in p.tuner_kwargs:
                raise ParamError(f"tuner_kwargs.{bad}", f"remove it: {why}")
        accepted = inspect.signature(cls).parameters
        mode = {}
        if "optimize_mode" in accepted and p.tuner.lower() not in _NO_MODE:
            mode = {"optimize_mode": "minimize"}
            kwargs.update(mode)
        if validator is not None:     # checks the user's class args (not the built-in ones)
            try:
                validator.validate_class_args(**p.tuner_kwargs, **mode)
            except Exception as err:  # noqa: BLE001 - schema errors, reported as params
                raise ParamError("tuner_kwargs", f"NNI rejected {p.tuner}'s class args "
                                 f"{kwargs}: {err}") from None
        if "seed" in accepted:
            kwargs["seed"] = self._base_seed
        try:
            with self._sandbox():
                return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise ParamError("tuner_kwargs", f"{cls.__name__}({kwargs}) failed: {err}") from None

    def _backend_reset(self, seed: int) -> None:
        self._init_scalar()
        self._sandbox = RngSandbox(seed)
        self._worst_s: float | None = None
        self._best_s: float | None = None
        self._max_violation = 0.0
        self._late: deque[tuple[int, dict]] = deque()
        self._next_id = 0
        self._tuner = self._make_tuner()
        if self._tuner is None:
            return
        space = {d.name: {"_type": "choice", "_value": list(range(d.count))}
                 for d in self._decisions}
        with self._sandbox():
            self._tuner.update_search_space(space)

    def _late_trial(self, parameter_id, params) -> None:
        """Evolution hands out parameters it owed when an earlier call had none."""
        self._late.append((int(parameter_id), params))

    def _indices(self, params: dict) -> list[int]:
        def one(v):
            return int(v["_idx"] if isinstance(v, dict) else v)
        return [one(params[d.name]) for d in self._decisions]

    def _backend_ask(self):
        if self._late:
            pid, params = self._late.popleft()
        else:
            pid = self._next_id
            self._next_id += 1
            try:
                with self._sandbox():
                    got = self._tuner.generate_multiple_parameters([pid],
                                                                   st_callback=self._late_trial)
            except RuntimeError:
                # Evolution raises "The population is empty" (not NoMoreTrialError) while its
                # whole population is out; with nothing of ours in flight it is a real error
                if not self._deferred and not any(self._open.values()):
                    raise
                return None
            if not got:
                return None
            params = got[0]
        params = json.loads(json.dumps(params, default=_plain))
        return (pid, params), self._indices(params)

    def _backend_inject(self, indices: list[int]):
        return None      # NNI tuners cannot be handed a proposal: told through import_data

    def _backend_report(self, handle, indices: list[int], outcome: Outcome) -> None:
        value = self._value(outcome)
        with self._sandbox():
            if handle is None:
                params = {d.name: int(i) for d, i in zip(self._decisions, indices)}
                self._tuner.import_data([{"parameter": params, "value": value}])
            else:
                pid, params = handle
                self._tuner.receive_trial_result(pid, params, value)
                self._tuner.trial_end(pid, True)

    # -- the scalar and its penalties ------------------------------------------
    def _raw(self, outcome: Outcome) -> float | None:
        if outcome.kind != "ok" or any(k not in outcome.values for k in self._weights):
            return None
        return float(sum(w * outcome.values[k] for k, w in self._weights.items()))

    def _margin(self) -> float:
        spread = (self._worst_s - self._best_s) or abs(self._worst_s) or 1.0
        return 0.1 * spread

    def _value(self, outcome: Outcome) -> float:
        raw = self._raw(outcome)
        if raw is not None and outcome.feasible:
            return raw
        if raw is not None:       # infeasible: worse than any value told, ordered by violation
            v = outcome.violation if math.isfinite(outcome.violation) else self._max_violation
            return self._worst_s + self._margin() * (1.0 + v / (self._max_violation or 1.0))
        return self._worst_s + 3.0 * self._margin()

    def _needs_penalty(self, outcome: Outcome) -> bool:
        return not outcome.feasible or self._raw(outcome) is None

    def _can_penalise(self) -> bool:
        return self._worst_s is not None

    def _observe(self, outcome: Outcome) -> None:
        raw = self._raw(outcome)
        if raw is not None:
            self._worst_s = raw if self._worst_s is None else max(self._worst_s, raw)
            self._best_s = raw if self._best_s is None else min(self._best_s, raw)
        if not outcome.feasible and math.isfinite(outcome.violation):
            self._max_violation = max(self._max_violation, outcome.violation)

    def _spec(self) -> dict[str, Any]:
        p = self.params
        return {"tuner": p.tuner, "tuner_kwargs": p.model_dump(mode="json")["tuner_kwargs"],
                "objective": p.objective, "weights": dict(p.weights), "max_asks": p.max_asks,
                "max_retries": p.max_retries,
                "objectives": [f"{o.key}:{o.direction}" for o in self.problem.objectives],
                "constraints": [str(c) for c in self.problem.constraints]}


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
