"""Behaviour of the ``optuna`` and ``nni`` strategies (external ask/tell optimisers).

What both share: only valid, unseen canonical architectures are proposed (invalid and
equivalent proposals are answered without an evaluation), the search is reproducible
by seed and a resumed instance continues it exactly. Then what each maps: Optuna's
directions and constraints, NNI's scalar (weights, penalties) seen by a recording tuner
given by class path. Skipped per library when it is not installed.
"""
from __future__ import annotations

import importlib
import json
import math
from typing import ClassVar

import numpy as np
import pytest

import nasframe
from nasframe.architecture import Architecture
from nasframe.params import ParamError
from nasframe.simulate import finished_trial, simulate
from nasframe.space import Boolean, Categorical, Integer, SearchSpace
from nasframe.testing import StrategyDriver
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial


def _have(*modules: str) -> bool:
    try:
        for m in modules:
            importlib.import_module(m)
    except ImportError:
        return False
    return True


needs_optuna = pytest.mark.skipif(not _have("optuna"), reason="optuna is not installed")
needs_nni = pytest.mark.skipif(not _have("nni", "json_tricks", "schema", "typeguard"),
                               reason="nni is not installed")
needs_hyperopt = pytest.mark.skipif(not _have("hyperopt"), reason="hyperopt is not installed")

OPS = ("conv", "ssm", "attn", "none")


class Gated(SearchSpace):
    """32 decision combinations, 26 valid, 23 distinct once canonical: ``attn`` of width 4
    and ``none`` without the skip are invalid; ``none`` ignores its width (canonical 1)."""

    name = "gated"

    def decisions(self):
        return [Categorical("op", OPS), Integer("width", 1, 4), Boolean("skip")]

    def check(self, arch):
        if arch["op"] == "attn" and arch["width"] == 4:
            return "attn is at most 3 wide"
        if arch["op"] == "none" and not arch["skip"]:
            return "'none' needs the skip"
        return None

    def canonicalize(self, arch):
        if arch["op"] == "none" and arch["width"] != 1:
            return Architecture({**arch.to_dict(), "width": 1})
        return arch

    def build(self, arch):
        raise NotImplementedError


SPACE = Gated()
CANONICAL = {a.id for a in (SPACE.canonicalize(x) for x in SPACE.enumerate())}
N_VALID = 23
N_COMBOS = 32


def values(arch: Architecture) -> dict[str, float]:
    """``err`` (min), ``quality`` (max) and ``cost`` (min) of an architecture."""
    op = OPS.index(arch["op"])
    err = round(1.0 + 0.3 * op - 0.15 * arch["width"] + 0.2 * (not arch["skip"])
                + 0.05 * (op == 1) * arch["width"], 4)
    return {"err": err, "quality": round(3.0 - err, 4), "cost": float(arch["width"] * (op + 1))}


PROBLEM = Problem(SPACE, (ObjectiveSpec("err", "min"), ObjectiveSpec("cost", "min")))

#: (strategy, params) for the shared tests
CASES = [
    pytest.param("optuna", {"sampler": "tpe", "sampler_kwargs": {"n_startup_trials": 4}},
                 marks=needs_optuna, id="optuna-tpe"),
    pytest.param("optuna", {"sampler": "nsga2", "sampler_kwargs": {"population_size": 4}},
                 marks=needs_optuna, id="optuna-nsga2"),
    pytest.param("nni", {"tuner": "TPE"}, marks=needs_nni, id="nni-tpe"),
    pytest.param("nni", {"tuner": "Evolution", "tuner_kwargs": {"population_size": 4}},
                 marks=needs_nni, id="nni-evolution"),
    pytest.param("nni", {"tuner": "Anneal"}, marks=[needs_nni, needs_hyperopt], id="nni-anneal"),
    pytest.param("nni", {"tuner": "Random"}, marks=needs_nni, id="nni-random"),
    pytest.param("nni", {"tuner": "GridSearch"}, marks=needs_nni, id="nni-grid"),
]


def strategy_class(name: str):
    if name == "optuna":
        from nasframe_plugins.optuna_strategy import OptunaStrategy
        return OptunaStrategy
    from nasframe_plugins.nni_strategy import NNIStrategy
    return NNIStrategy


def make(name: str, problem: Problem = PROBLEM, seed: int = 0, **params) -> StrategyDriver:
    return StrategyDriver(strategy_class(name)(problem, seed=seed, **params))


def trials_of(problem: Problem, archs, start: int) -> list[Trial]:
    return [finished_trial(problem, start + i, a, values) for i, a in enumerate(archs)]


def drive(d: StrategyDriver, budget: int, batch: int, problem: Problem = PROBLEM,
          start: int = 0) -> list[Architecture]:
    proposed: list[Architecture] = []
    while len(proposed) < budget:
        asked = d.ask(min(batch, budget - len(proposed)))
        if not asked:
            break
        d.tell(trials_of(problem, asked, start + len(proposed)))
        proposed += asked
    return proposed


# ------------------------------------------------------------------ shared behaviour
@pytest.mark.parametrize("name, params", CASES)
def test_proposes_each_valid_canonical_architecture_once_then_nothing(name, params):
    d = make(name, **params)
    proposed = drive(d, 100, batch=3)
    ids = [a.id for a in proposed]
    assert all(SPACE.validate(a) is None and SPACE.canonicalize(a) == a for a in proposed)
    assert len(ids) == len(set(ids)) == N_VALID
    assert set(ids) == CANONICAL
    assert d.ask(2) == []
    # every evaluation was a new valid architecture: the rest were answered without one
    counts = d.strategy.counts
    assert counts["asks"] + counts["fallback"] >= N_VALID
    json.dumps(d.strategy.state_dict(), allow_nan=False)


@pytest.mark.parametrize("name, params", CASES)
def test_same_seed_same_search(name, params):
    a = drive(make(name, seed=3, **params), 12, batch=2)
    b = drive(make(name, seed=3, **params), 12, batch=2)
    assert a == b


@pytest.mark.parametrize("cut", [3, 9])
@pytest.mark.parametrize("name, params", CASES)
def test_resume_continues_the_same_search(name, params, cut):
    straight = drive(make(name, seed=1, **params), 18, batch=1)
    first = make(name, seed=1, **params)
    done = drive(first, cut, batch=1)
    pending = first.ask(1)        # asked but not told when the run stopped
    second = first.reloaded()     # a fresh instance (another seed) over the stored history
    assert second.strategy.state_dict() == first.strategy.state_dict()
    second.tell(trials_of(PROBLEM, pending, cut))
    rest = drive(second, 18 - cut - 1, batch=1, start=100)
    assert done + pending + rest == straight


@pytest.mark.parametrize("name, params", CASES)
def test_foreign_failed_and_repeated_results_are_taken(name, params):
    d = make(name, **params)
    rng = np.random.default_rng(0)
    foreign = [SPACE.canonicalize(SPACE.sample(rng)) for _ in range(3)]
    d.tell(trials_of(PROBLEM, foreign, 0))                 # references: not asked for
    asked = d.ask(3)
    told = [Trial(10, asked[0], "failed", error="boom")] + trials_of(PROBLEM, asked[1:], 11)
    d.tell(told)
    d.tell(told[1:])                                        # the same results twice
    more = drive(d, 100, batch=2, start=20)
    assert not {a.id for a in more} & {a.id for a in foreign + asked}
    assert len({a.id for a in foreign + asked + more}) == N_VALID


def test_invalid_sd_unet_combinations_cost_no_evaluation():
    """36 valid architectures among 2^15 decision combinations of a tiny sd_unet space."""
    pytest.importorskip("diffusers")
    from nasframe_search_spaces.sd_unet.space import SDUNetSpace

    space = SDUNetSpace(preset="tiny", pairs=["full", "removed"], widths=[1.0], mid="keep",
                        innermost="remove")
    valid = {a.id for a in space.enumerate()}
    assert len(valid) == 36
    problem = Problem(space, (ObjectiveSpec("kept", "max"),))

    def kept(a):
        return {"kept": float(sum(v == "full" for v in a.values()))}

    for name, params in [("optuna", {"sampler": "tpe", "max_asks": 8}),
                         ("nni", {"tuner": "TPE", "max_asks": 8})]:
        if not (_have("optuna") if name == "optuna" else _have("nni", "json_tricks", "schema")):
            continue
        trials = simulate(lambda h, n=name, p=params: strategy_class(n)(problem, seed=0,
                                                                          history=h, **p),
                          problem, kept, budget=12)
        assert len(trials) == 12
        assert all(t.status == "complete" and t.arch.id in valid for t in trials)
        assert len({t.arch.id for t in trials}) == 12


# ------------------------------------------------------------------ optuna
@needs_optuna
def test_optuna_study_has_the_directions_constraints_and_invalid_marks():
    problem = Problem(SPACE, (ObjectiveSpec("err", "min"), ObjectiveSpec("quality", "max")),
                      (Constraint.parse("cost <= 6"),))
    d = make("optuna", problem, sampler="nsga2", sampler_kwargs={"population_size": 4})
    proposed = drive(d, 100, batch=2, problem=problem)
    assert len(proposed) == N_VALID
    study = d.strategy.study
    assert [s.name for s in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    import optuna

    by_params: dict[str, list] = {}
    for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        arch = SPACE.from_indices([t.params[x.name] for x in SPACE.decisions()])
        cons = t.constraints                      # by name, feasible when <= 0
        assert list(cons) == ["valid", "cost <= 6"]
        if arch is None:                          # an invalid proposal: violates `valid`
            assert cons["valid"] == 1.0
            continue
        v = values(arch)
        assert cons["valid"] == 0.0
        assert cons["cost <= 6"] == pytest.approx(v["cost"] - 6)
        assert t.values == pytest.approx([v["err"], v["quality"]])
        by_params.setdefault(arch.id, []).append(t)
    assert set(by_params) == CANONICAL
    assert any(len(ts) > 1 for ts in by_params.values()) or d.strategy.counts["seen"] == 0


@needs_optuna
def test_optuna_constrained_tpe_finds_the_feasible_optimum():
    problem = Problem(SPACE, (ObjectiveSpec("err", "min"),), (Constraint.parse("cost <= 3"),))
    table = {a.id: values(a) for a in (SPACE.canonicalize(x) for x in SPACE.enumerate())}
    best = min(v["err"] for v in table.values() if v["cost"] <= 3)
    found = []
    for seed in range(3):
        trials = simulate(lambda h, s=seed: strategy_class("optuna")(
            problem, seed=s, history=h, sampler="tpe", sampler_kwargs={"n_startup_trials": 4}),
            problem, values, budget=14)
        found.append(min(t.values["err"] for t in trials if t.feasible))
    assert found.count(best) >= 2


@needs_optuna
@pytest.mark.parametrize("spec, match", [
    ("tpee", "did you mean"),
    ("optuna.samplers.NoSuchSampler", "has no sampler"),
    ("no_such_module.Sampler", "cannot import"),
    ("json.JSONDecoder", "not a subclass"),
])
def test_optuna_bad_sampler_is_a_param_error(spec, match):
    with pytest.raises(ParamError, match=match) as err, nasframe.allow_code("*"):
        make("optuna", sampler=spec)
    assert err.value.field == "sampler"


@needs_optuna
@pytest.mark.parametrize("spec", ["json.JSONDecoder", "optunahub:samplers/x", "os:system"])
def test_optuna_code_from_the_experiment_needs_an_opt_in(spec):
    """A class path or an OptunaHub package is code: refused unless allowed outside the file."""
    with pytest.raises(ParamError, match="--allow-code") as err:
        make("optuna", sampler=spec)
    assert err.value.field == "sampler"


@needs_optuna
def test_optuna_sampler_by_class_path_and_bad_kwargs():
    d = make("optuna", sampler="optuna.samplers.RandomSampler")
    assert type(d.strategy.study.sampler).__name__ == "RandomSampler"
    assert len(drive(d, 5, batch=5)) == 5
    with pytest.raises(ParamError, match="n_startup_trial") as err:
        make("optuna", sampler="tpe", sampler_kwargs={"n_startup_trial": 3})
    assert err.value.field == "sampler_kwargs.n_startup_trial"
    with pytest.raises(ParamError, match="experiment's `seed`"):
        make("optuna", sampler="tpe", sampler_kwargs={"seed": 3})


# ------------------------------------------------------------------ nni
_TunerBase = importlib.import_module("nni.tuner").Tuner if _have("nni") else object


class RecordingTuner(_TunerBase):
    """Stands for "any tuner class": proposes every combination in order (invalid ones
    too), records the values it is told."""

    told: ClassVar[list[tuple[dict, float]]] = []

    def __init__(self):
        self.space: dict = {}
        self.k = 0

    def update_search_space(self, search_space):
        self.space = search_space

    def generate_parameters(self, parameter_id, **kw):
        sizes = [len(s["_value"]) for s in self.space.values()]
        if self.k >= math.prod(sizes):
            from nni import NoMoreTrialError
            raise NoMoreTrialError("done")
        k, out = self.k, {}
        for name, size in zip(self.space, sizes):
            out[name] = self.space[name]["_value"][k % size]
            k //= size
        self.k += 1
        return out

    def receive_trial_result(self, parameter_id, parameters, value, **kw):
        RecordingTuner.told.append((parameters, value))

    def import_data(self, data):
        RecordingTuner.told += [(d["parameter"], d["value"]) for d in data]


def nni_recorded(problem: Problem, **params) -> list[tuple[Architecture | None, float]]:
    RecordingTuner.told = []
    with nasframe.allow_code(f"{__name__}.RecordingTuner"):
        d = make("nni", problem, tuner=f"{__name__}.RecordingTuner", **params)
    drive(d, 100, batch=1, problem=problem)
    return [(SPACE.from_indices([p[x.name] for x in SPACE.decisions()]), v)
            for p, v in RecordingTuner.told]


@needs_nni
def test_nni_tells_the_weighted_sum_and_penalties_worse_than_the_values_told():
    problem = Problem(SPACE, (ObjectiveSpec("err", "min"), ObjectiveSpec("quality", "max"),
                              ObjectiveSpec("cost", "min")), (Constraint.parse("cost <= 8"),))
    told = nni_recorded(problem, weights={"err": 1.0, "quality": 0.5})
    assert len(told) == N_COMBOS                # every combination, the invalid ones included
    feasible = [(a, v) for a, v in told if a is not None and values(a)["cost"] <= 8]
    infeasible = [(a, v) for a, v in told if a is not None and values(a)["cost"] > 8]
    invalid = [v for a, v in told if a is None]
    assert len(invalid) == N_COMBOS - 26 and feasible and infeasible
    for a, v in feasible:                       # quality is maximised: it counts negated
        assert v == pytest.approx(values(a)["err"] - 0.5 * values(a)["quality"])
    # a penalty is worse than every value told before it (the scale grows as values come)
    raw_so_far, told_so_far = [], []
    for a, v in told:
        raw = None if a is None else values(a)["err"] - 0.5 * values(a)["quality"]
        if a is None:                           # invalid: worse than anything told yet
            assert all(v > x for x in raw_so_far) and all(v >= x for x in told_so_far)
        elif values(a)["cost"] > 8:             # infeasible: worse than every value seen yet
            assert v > raw and all(v > x for x in raw_so_far)
        raw_so_far += [] if raw is None else [raw]
        told_so_far.append(v)
    assert min(v for _, v in infeasible) > min(v for _, v in feasible)


@needs_nni
def test_nni_one_objective_in_its_direction():
    problem = Problem(SPACE, (ObjectiveSpec("quality", "max"), ObjectiveSpec("cost", "min")))
    told = nni_recorded(problem)                # default: the first objective
    assert all(v == pytest.approx(-values(a)["quality"]) for a, v in told if a is not None)
    told = nni_recorded(problem, objective="cost")
    assert all(v == pytest.approx(values(a)["cost"]) for a, v in told if a is not None)


@needs_nni
@pytest.mark.parametrize("params, field, match", [
    ({"tuner": "TPEE"}, "tuner", "did you mean"),
    ({"tuner": "nasframe.trial.Trial"}, "tuner", "not a subclass"),
    ({"objective": "errr"}, "objective", "did you mean"),
    ({"weights": {"cots": 1.0}}, "weights.cots", "must name one"),
    ({"tuner_kwargs": {"optimize_mode": "maximize"}}, "tuner_kwargs.optimize_mode", "remove it"),
])
def test_nni_bad_params_are_param_errors(params, field, match):
    with pytest.raises(ParamError, match=match) as err, nasframe.allow_code("nasframe.*"):
        make("nni", **params)
    assert err.value.field == field


@needs_nni
def test_nni_tuner_class_path_needs_an_opt_in():
    with pytest.raises(ParamError, match="--allow-code") as err:
        make("nni", tuner="nasframe.trial.Trial")
    assert err.value.field == "tuner"


@needs_nni
def test_nni_leaves_the_global_random_state_alone():
    import random

    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    drive(make("nni", tuner="Evolution", tuner_kwargs={"population_size": 4}), 10, batch=2)
    assert (random.random(), np.random.random()) == expected


HUB_SAMPLER = '''
import optuna


class EveryOtherSampler(optuna.samplers.RandomSampler):
    """A sampler as OptunaHub packages ship them (a module of a registry)."""

    calls = 0

    def sample_independent(self, study, trial, name, distribution):
        EveryOtherSampler.calls += 1
        return super().sample_independent(study, trial, name, distribution)
'''


@needs_optuna
def test_optuna_sampler_from_a_local_optunahub_registry(tmp_path):
    """OptunaHub downloads from GitHub (not reachable here); a local registry is the same
    module loader without the download."""
    pytest.importorskip("optunahub")
    pkg = tmp_path / "samplers" / "every_other"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(HUB_SAMPLER)
    with nasframe.allow_code("optunahub:samplers/*"):
        d = make("optuna", sampler="optunahub:samplers/every_other",
                 optunahub_registry=str(tmp_path))
    sampler = d.strategy.study.sampler
    assert type(sampler).__name__ == "EveryOtherSampler"
    assert len(drive(d, 6, batch=2)) == 6
    assert type(sampler).calls > 0
    with pytest.raises(ParamError, match="cannot load OptunaHub package 'samplers/nothing'"), \
            nasframe.allow_code("optunahub:samplers/*"):
        make("optuna", sampler="optunahub:samplers/nothing", optunahub_registry=str(tmp_path))


# ------------------------------------------------------------------ through the runner
@pytest.mark.parametrize("strategy", [
    pytest.param({"name": "optuna", "params": {"sampler": "nsga2",
                                               "sampler_kwargs": {"population_size": 4}}},
                 marks=needs_optuna, id="optuna-nsga2"),
    pytest.param({"name": "nni", "params": {"tuner": "Evolution",
                                            "tuner_kwargs": {"population_size": 4},
                                            "weights": {"toy_cost": 0.1, "toy_quality": 1.0}}},
                 marks=needs_nni, id="nni-evolution"),
])
def test_a_run_interrupted_and_resumed_makes_the_same_trials(tmp_path, plugins, toy_config,
                                                             monkeypatch, strategy):
    from nasframe import experiment
    from nasframe.config import config_from_dict
    from nasframe.runner import Runner, resume_run, run_experiment
    from nasframe.store import TrialStore

    toy_config.update(strategy=strategy, budget={"trials": 12}, batch_size=2,
                      constraints=["toy_cost <= 40"])
    toy_config["search_space"]["params"] = {"widths": [2, 4, 8, 16], "max_depth": 4}

    def sequence(run_dir):
        store = TrialStore.open(run_dir)
        try:
            return [(t.arch.id, t.status, dict(t.values)) for t in store.trials()]
        finally:
            store.close()

    run_experiment(config_from_dict(toy_config), tmp_path / "full", quiet=True)
    calls = {"n": 0}
    original = experiment.Experiment.evaluate

    def interrupted(self, trial, ctx, skip_infeasible=None):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, trial, ctx, skip_infeasible)

    monkeypatch.setattr(experiment.Experiment, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Runner.start(config_from_dict(toy_config), tmp_path / "cut", quiet=True).run()
    monkeypatch.setattr(experiment.Experiment, "evaluate", original)
    resume_run(tmp_path / "cut")
    full = sequence(tmp_path / "full")
    assert len(full) >= 12
    assert sequence(tmp_path / "cut") == full
