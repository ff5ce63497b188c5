"""Multi-fidelity: objectives report intermediate values, a pruner stops unpromising trials.

An objective that improves a candidate step by step (fine-tuning, a longer
training run) reports what it has so far and asks whether to go on::

    class FinetunedPSNR(Objective):
        reports_intermediate = True

        def evaluate(self, candidate, ctx):
            for step in range(every, steps + 1, every):
                ...train `every` steps...
                value = psnr(...)
                candidate.report(value, step)      # step: the work done so far
                if candidate.should_prune():
                    raise nasframe.TrialPruned()    # the trial keeps `value`
            return value

The experiment names the pruner (``pruner: {name: median, params: {...}}``).
With several objectives, ``params: {no_worse_on: [transformer_count]}`` compares a
trial only with the trials that are at least as good on those objectives (a cheap
model is not stopped for being worse than expensive ones: it may still be on the
front).
The pruners are Optuna's (``optuna.pruners``: median, percentile, successive
halving, Hyperband, threshold, patient, Wilcoxon), each asked exactly as
Optuna asks it: the current trial and the finished trials' intermediate values
form a study, and ``pruner.prune(study, trial)`` decides. The finished trials
are those known when the trial was handed to its worker (a snapshot, so that
the decision can be taken wherever the trial runs); a pruned trial is stored
with status ``pruned``, its last reported value and the step it stopped at.
Pruned trials are not on the Pareto front (their values are partial).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from nasframe.errors import ConfigError, did_you_mean

#: pruner names -> optuna.pruners classes
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner",
           "successive_halving": "SuccessiveHalvingPruner", "asha": "SuccessiveHalvingPruner",
           "hyperband": "HyperbandPruner", "threshold": "ThresholdPruner",
           "patient": "PatientPruner", "wilcoxon": "WilcoxonPruner", "none": "NopPruner"}
INSTALL_HINT = "pip install 'nasframe[optuna]'"


class TrialPruned(Exception):  # noqa: N818 - Optuna's name, which users know
    """Raised by an objective when :meth:`Candidate.should_prune` says so: the trial stops,
    keeps the last value it reported and is stored as ``pruned``."""


def pruner_class(name: str) -> type:
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"pruner.name: pruner '{name}' is one of Optuna's pruners and needs "
                          f"optuna, which is not installed; install with: {INSTALL_HINT}") from None
    if name not in PRUNERS:
        raise ConfigError(f"pruner.name: unknown pruner '{name}'{did_you_mean(name, PRUNERS)} "
                          f"available: {', '.join(sorted(PRUNERS))}")
    return getattr(optuna.pruners, PRUNERS[name])


#: nasframe's own pruner param (the rest go to the Optuna pruner)
OWN_PARAMS = ("no_worse_on",)


def make_pruner(name: str, params: Mapping[str, Any]) -> Any:
    """An ``optuna.pruners`` object from the experiment's ``pruner`` section (checked:
    every param must be one the class takes, with a value it accepts)."""
    params = {k: v for k, v in params.items() if k not in OWN_PARAMS}
    cls = pruner_class(name)
    sig = inspect.signature(cls)
    for key in params:
        if key not in sig.parameters:
            takes = [p for p in sig.parameters if p not in ("self",)]
            raise ConfigError(f"pruner.params.{key}: {cls.__name__} has no parameter "
                              f"{key!r}{did_you_mean(key, takes)} it takes: {', '.join(takes)}")
    kwargs = dict(params)
    if name == "patient":        # PatientPruner wraps another pruner (by our name)
        inner = kwargs.pop("wrapped_pruner", "median")
        kwargs["wrapped_pruner"] = None if inner in (None, "none") else make_pruner(str(inner), {})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"pruner.params: {cls.__name__}({kwargs}) failed: {err}") from None


def peer_record(trial) -> dict[str, Any] | None:
    """What a finished trial tells the pruner of later trials (None: it reported nothing)."""
    inter = dict(trial.intermediate or {})
    if not inter.get("values") or trial.status not in ("complete", "infeasible", "pruned"):
        return None
    key = inter.get("key")
    final = trial.values.get(key) if key else None
    others = {k: float(v) for k, v in trial.values.items()
              if k != key and v is not None and math.isfinite(v)}
    return {"number": trial.number, "pruned": trial.status == "pruned",
            "values": inter["values"], "attrs": inter.get("attrs", {}), "others": others,
            "final": None if final is None or not math.isfinite(final) else float(final)}


class Pruning:
    """One trial's intermediate values and its pruner (made in the process that evaluates
    the trial: the driver or a worker)."""

    def __init__(self, name: str | None, params: Mapping[str, Any], number: int,
                 peers: Sequence[Mapping[str, Any]] = (), study_name: str = "nasframe",
                 directions: Mapping[str, str] | None = None):
        self.name = name
        self.params = dict(params)
        #: compare only with trials at least as good as this one on these objectives
        self.no_worse_on = list(self.params.pop("no_worse_on", None) or [])
        self.directions = dict(directions or {})
        self.others: dict[str, float] = {}
        self.number = number
        self.peers = list(peers)
        self.study_name = study_name
        self.key: str | None = None
        self.direction = "min"
        self.values: dict[int, float] = {}
        self.attrs: dict[str, Any] = {}
        self.checks = 0
        self._pruner = None

    # -- what objectives call (through the candidate) ------------------------
    def start(self, key: str, direction: str, values: Mapping[str, float] | None = None) -> None:
        """The objective ``key`` (in ``direction``) is about to be evaluated; ``values``: the
        trial's values so far (the cheaper objectives)."""
        if self.key is None or not self.values:
            self.key, self.direction = key, direction
        self.others = {k: float(v) for k, v in (values or {}).items()}

    def _comparable(self, peer: Mapping[str, Any]) -> bool:
        """A peer counts when it is no worse than this trial on every ``no_worse_on`` objective
        (a trial that is cheaper can only be beaten by one at least as cheap)."""
        for k in self.no_worse_on:
            mine, theirs = self.others.get(k), (peer.get("others") or {}).get(k)
            if mine is None or theirs is None:
                return False
            if (theirs > mine) if self.directions.get(k, "min") == "min" else (theirs < mine):
                return False
        return True

    def report(self, value: float, step: int) -> None:
        value, step = float(value), int(step)
        if step < 0:
            raise ValueError(f"report(value, step): step must be >= 0, got {step}")
        if not math.isfinite(value):
            raise ValueError(f"report(value, step): value must be finite, got {value}")
        self.values[step] = value

    @property
    def last(self) -> tuple[int, float] | None:
        if not self.values:
            return None
        step = max(self.values)
        return step, self.values[step]

    def should_prune(self) -> bool:
        """The pruner's verdict on the values reported so far (False without a pruner)."""
        if self.name in (None, "none") or not self.values:
            return False
        self.checks += 1
        return self._ask_optuna()

    def record(self) -> dict[str, Any]:
        """What the trial stores: ``{"key", "values", "attrs", "steps", "pruner"}``."""
        if not self.values:
            return {}
        return {"key": self.key, "values": {str(k): v for k, v in sorted(self.values.items())},
                "attrs": self.attrs, "steps": max(self.values), "pruner": self.name,
                "checks": self.checks}

    # -- the decision ----------------------------------------------------------
    def _ask_optuna(self) -> bool:
        import optuna
        from optuna.distributions import FloatDistribution
        from optuna.trial import TrialState, create_trial

        if self._pruner is None:
            self._pruner = make_pruner(self.name, self.params)
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(
                direction="minimize" if self.direction == "min" else "maximize",
                pruner=self._pruner, study_name=self.study_name,
                sampler=optuna.samplers.RandomSampler(seed=0))
            by_number = {int(p["number"]): p for p in self.peers if self._comparable(p)}
            # Hyperband puts a trial in a bracket by its number: keep the run's numbering
            numbered = self.name == "hyperband"
            order = range(self.number) if numbered else sorted(n for n in by_number
                                                               if n < self.number)
            dist = {"_": FloatDistribution(0.0, 1.0)}
            for n in order:
                p = by_number.get(n)
                if p is None:
                    study.add_trial(create_trial(state=TrialState.FAIL))
                    continue
                inter = {int(k): float(v) for k, v in p["values"].items()}
                final = p.get("final")
                pruned = p.get("pruned") or final is None
                study.add_trial(create_trial(
                    state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                    value=None if pruned else final, intermediate_values=inter,
                    system_attrs=dict(p.get("attrs", {})), params={"_": 0.5}, distributions=dist))
            trial = study.ask()
            storage, tid = study._storage, trial._trial_id
            for k, v in self.attrs.items():
                storage.set_trial_system_attr(tid, k, v)
            for step in sorted(self.values):
                trial.report(self.values[step], step)
            verdict = bool(trial.should_prune())
            self.attrs = dict(storage.get_trial(tid).system_attrs)
            return verdict
        finally:
            optuna.logging.set_verbosity(level)
