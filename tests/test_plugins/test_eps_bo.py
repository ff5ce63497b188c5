"""Behaviour of the built-in ``eps_bo`` strategy (epsilon-constrained Bayesian optimisation)."""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

pytest.importorskip("botorch")

from nasframe.plugins import Plugins  # noqa: E402
from nasframe.space import Boolean, Categorical, SearchSpace  # noqa: E402
from nasframe.errors import ConfigError  # noqa: E402
from nasframe.testing import StrategyDriver, ToySpace, fake_trials  # noqa: E402
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial  # noqa: E402
from nasframe_plugins.eps_bo import EpsBO  # noqa: E402
from nasframe_plugins.random_search import RandomSearch  # noqa: E402


class Synth(SearchSpace):
    """3 x 3 x 3 x 2^4 = 432 architectures of a made-up network."""

    name = "synth"

    def decisions(self):
        return [Categorical("width", (16, 24, 32)), Categorical("depth", (1, 2, 3)),
                Categorical("kernel", (3, 5, 7)), Boolean("attn"), Boolean("skip"),
                Boolean("se"), Boolean("wide_head")]

    def build(self, arch):
        raise NotImplementedError


W = {16: 1.0, 24: 1.8, 32: 2.9}
D = {1: 0.0, 2: 1.0, 3: 2.2}
K = {3: 0.0, 5: 0.6, 7: 1.4}


def values(a) -> dict[str, float]:
    """A GMACs-like cost (weighted sum, width x depth) and a fidelity that falls with it."""
    cost = (W[a["width"]] * (1 + 0.5 * D[a["depth"]]) + K[a["kernel"]] + 1.1 * a["attn"]
            + 0.3 * a["skip"] + 0.4 * a["se"] + 0.7 * a["wide_head"])
    q = (0.35 * math.log(W[a["width"]]) + 0.12 * D[a["depth"]] + 0.05 * K[a["kernel"]]
         + 0.25 * a["attn"] + 0.1 * a["skip"] * a["attn"] + 0.08 * a["se"]
         + 0.06 * a["wide_head"] * (a["width"] == 32) + 0.1 * a["skip"])
    return {"gmacs": round(cost, 6), "fidelity": round(1 - 0.6 * math.exp(-1.5 * q), 6)}


SPACE = Synth()
PROBLEM = Problem(SPACE, (ObjectiveSpec("gmacs", "min"), ObjectiveSpec("fidelity", "max")))
ALL = list(SPACE.enumerate())
FIDS = np.array([values(a)["fidelity"] for a in ALL])
EPS = float(np.quantile(FIDS, 0.6))  # 40 % of the space is feasible
EPSILONS = [float(np.quantile(FIDS, q)) for q in (0.3, 0.6, 0.85)]


def optimum(eps: float) -> float:
    return min(values(a)["gmacs"] for a in ALL if values(a)["fidelity"] >= eps)


def trials_of(archs, start=0):
    return [Trial(start + i, a, "complete", values(a), feasible=True) for i, a in enumerate(archs)]


def drive(strategy, budget: int, batch: int = 2, start: int = 0):
    """Ask/tell ``batch`` at a time up to ``budget`` trials, as the runner does;
    every proposal and trial."""
    d = strategy if isinstance(strategy, StrategyDriver) else StrategyDriver(strategy)
    proposed, told = [], []
    while len(proposed) < budget:
        asked = d.ask(min(batch, budget - len(proposed)))
        if not asked:
            break
        trials = d.tell(trials_of(asked, start + len(proposed)))
        proposed += asked
        told += trials
    return proposed, told


def gap(told, eps: float = EPS) -> float:
    feasible = [t.values["gmacs"] for t in told if t.values["fidelity"] >= eps]
    return (min(feasible) if feasible else math.inf) - optimum(eps)


@pytest.mark.slow
def test_finds_the_constrained_optimum_better_than_random():
    budget, seeds = 30, range(3)
    bo = [gap(drive(EpsBO(PROBLEM, seed=s, bounds={"fidelity": EPS}), budget)[1]) for s in seeds]
    rnd = [gap(drive(RandomSearch(PROBLEM, seed=s), budget)[1]) for s in seeds]
    print(f"mean gap to the optimum ({optimum(EPS):g} gmacs) after {budget} trials: "
          f"eps_bo {np.mean(bo):.3f} {bo}, random {np.mean(rnd):.3f} {rnd}")
    assert sum(g <= 1e-9 for g in bo) >= 2
    assert np.mean(bo) <= np.mean(rnd)


@pytest.mark.slow
def test_experiment_constraints_and_local_search():
    """No bounds: the experiment's constraint is modelled; a small `candidates` forces local search."""
    problem = Problem(SPACE, PROBLEM.objectives, (Constraint("fidelity", ">=", EPS),))
    strategy = StrategyDriver(EpsBO(problem, seed=0, candidates=64))
    proposed, told = drive(strategy, 30)
    assert len({a.id for a in proposed}) == len(proposed) == 30
    assert all(SPACE.validate(a) is None for a in proposed)
    assert gap(told) <= 0.5
    told = [Trial(t.number, t.arch, t.status, t.values, feasible=t.values["fidelity"] >= EPS)
            for t in told]
    trial, rule = strategy.strategy.pick(told)
    assert trial.values["fidelity"] >= EPS and rule == f"min gmacs = {trial.values['gmacs']:.6g}"
    assert trial.values["gmacs"] == min(t.values["gmacs"] for t in told if t.feasible)


@pytest.mark.slow
def test_same_seed_same_sequence():
    a = drive(EpsBO(PROBLEM, seed=3, bounds={"fidelity": EPS}, n_initial=4), 12)[0]
    b = drive(EpsBO(PROBLEM, seed=3, bounds={"fidelity": EPS}, n_initial=4), 12)[0]
    c = drive(EpsBO(PROBLEM, seed=4, bounds={"fidelity": EPS}, n_initial=4), 12)[0]
    assert a == b and a != c


@pytest.mark.slow
def test_json_state_round_trip_continues_the_same_search():
    first = StrategyDriver(EpsBO(PROBLEM, seed=1, epsilons=EPSILONS, bounded="fidelity",
                                 n_initial=4))
    drive(first, 6, batch=3)  # 4 random proposals, then the model
    first.ask(1)  # one pending proposal: a running trial in the history
    second = first.reloaded(seed=999)
    assert second.strategy.state_dict() == json.loads(json.dumps(first.strategy.state_dict()))
    a = drive(first, 4, batch=2, start=100)[0]
    b = drive(second, 4, batch=2, start=100)[0]
    assert a == b


@pytest.mark.slow
def test_exhausts_a_small_space_without_duplicates():
    problem = Problem(ToySpace(), (ObjectiveSpec("a", "min"), ObjectiveSpec("b", "max")))
    strategy = StrategyDriver(EpsBO(problem, seed=0, bounds={"b": 40.0}, n_initial=3))
    seen, n = [], 0
    for _ in range(20):
        asked = strategy.ask(4)
        if not asked:
            break
        strategy.tell(fake_trials(problem, asked, n, fail_every=4))
        n += len(asked)
        seen += [a.id for a in asked]
    assert len(seen) == len(set(seen)) == len(list(ToySpace().enumerate()))
    assert strategy.ask(3) == []


def test_epsilon_sweep_cycles_and_picks_the_tightest_feasible_epsilon():
    strategy = EpsBO(PROBLEM, seed=2, epsilons=EPSILONS, bounded="fidelity", n_initial=6)
    proposed, told = drive(strategy, 18, batch=3)
    assert strategy.state_dict()["cycle"] == 12  # one model-based proposal per epsilon per ask
    for eps in EPSILONS:
        assert gap(told, eps) <= 1.0
    trial, rule = strategy.pick(told)
    # the tightest epsilon satisfied by some trial decides
    tight = max(e for e in EPSILONS if any(t.values["fidelity"] >= e for t in told))
    best = min(t.values["gmacs"] for t in told if t.values["fidelity"] >= tight)
    assert trial.values["fidelity"] >= tight and trial.values["gmacs"] == best
    assert rule == f"min gmacs s.t. fidelity >= {tight:g} = {best:.6g}"
    # only loose epsilons satisfied: the pick falls back to them
    loose = [t for t in told if t.values["fidelity"] < EPSILONS[1]]
    if any(t.values["fidelity"] >= EPSILONS[0] for t in loose):
        assert f">= {EPSILONS[0]:g}" in strategy.pick(loose)[1]
    assert strategy.pick([t for t in told if t.values["fidelity"] < EPSILONS[0]]) is None


def test_failed_pruned_and_foreign_trials():
    strategy = StrategyDriver(EpsBO(PROBLEM, seed=0, bounds={"fidelity": EPS}, n_initial=4))
    rng = np.random.default_rng(0)
    archs = [ALL[i] for i in rng.choice(len(ALL), 8, replace=False)]
    trials = [Trial(0, archs[0], "failed", error="out of memory"),
              Trial(1, archs[1], "failed", error="boom"),
              Trial(2, archs[2], "infeasible", {"gmacs": values(archs[2])["gmacs"]}, feasible=False),
              Trial(3, archs[3], "running")]
    trials += [Trial(10 + i, a, "complete", values(a), feasible=True, origin="reference:x")
               for i, a in enumerate(archs[4:])]
    strategy.tell(trials)
    obs = strategy.strategy._obs       # the observations the model is fitted on, from the history
    assert obs[archs[0].id]["values"] == {} and obs[archs[0].id]["feasible"] is False
    assert set(obs[archs[2].id]["values"]) == {"gmacs"}
    assert archs[3].id not in obs
    proposed, _ = drive(strategy, 10)
    assert not {a.id for a in proposed} & {a.id for a in archs}
    # the pick ignores failed, pruned and infeasible trials
    assert strategy.strategy.pick(trials[:3]) is None


@pytest.mark.parametrize("params, match", [
    ({"minimise": "latency"}, r"minimise: must name one of .*gmacs, fidelity.*'latency'"),
    ({"bounds": {"psnr": 30}}, r"bounds.psnr: must name one of .*'psnr'"),
    ({"bounds": {"gmacs": 3}}, r"bounds.gmacs: names 'gmacs', the objective being optimised"),
    ({"bounds": {"fidelity": "high"}}, r"params.bounds.fidelity: Input should be a valid number.*'high'"),
    ({"bounds": [0.9]}, r"params.bounds: Input should be a valid dictionary.*\[0.9\]"),
    ({"epsilons": []}, r"params.epsilons: List should have at least 1 item.*\[\]"),
    ({"epsilons": [0.8, None]}, r"params.epsilons\[1\]: Input should be a valid number.*None"),
    ({"bounded": "fidelity"}, r"`bounded: fidelity` needs `epsilons`"),
    ({"epsilons": [0.9], "bounded": "fidelity", "bounds": {"fidelity": 0.8}}, r"not both"),
    ({"n_initial": -1}, r"params.n_initial: Input should be greater than or equal to 0.*-1"),
    ({"candidates": 0}, r"params.candidates: Input should be greater than or equal to 1.*got 0"),
    ({"candidates": 2.5}, r"params.candidates: Input should be a valid integer.*2.5"),
])
def test_bad_params_are_clear_errors(params, match):
    with pytest.raises((ValueError, ConfigError), match=match):
        EpsBO(PROBLEM, **params)


def test_epsilons_default_to_the_only_other_objective():
    s = EpsBO(PROBLEM, epsilons=[0.7, 0.8])
    assert s.minimise == "gmacs" and s.bounded == "fidelity"


def test_registered_and_unavailable_without_botorch(monkeypatch):
    plugins = Plugins()
    plugins.load_entry_points()
    s = plugins.strategies.create("eps_bo", {"bounds": {"fidelity": 0.9}}, problem=PROBLEM, seed=0)
    assert isinstance(s, EpsBO)
    monkeypatch.setitem(sys.modules, "botorch", None)  # import botorch now fails
    assert plugins.strategies.entry("eps_bo").missing() == ["botorch"]
    with pytest.raises(ConfigError, match=r"strategy: strategy 'eps_bo' needs botorch, which is not "
                                          r"installed; install with: pip install 'nasframe\[bo\]'"):
        plugins.strategies.create("eps_bo", {}, where="strategy", problem=PROBLEM, seed=0)
