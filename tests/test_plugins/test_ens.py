"""Behaviour of the built-in ``ens`` strategy (NSGA-II over slot choices) and the exported pick."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

import nasframe_plugins
from nasframe.architecture import Architecture
from nasframe.config import config_from_dict
from nasframe.errors import ConfigError
from nasframe.export import export_run
from nasframe.pareto import hypervolume, pareto_mask
from nasframe.plugins import Plugins
from nasframe.runner import run_experiment
from nasframe.space import Boolean, SearchSpace
from nasframe.store import TrialStore
from nasframe.strategy import Strategy
from nasframe.testing import StrategyDriver
from nasframe.trial import Constraint, ObjectiveSpec, Problem, Trial
from nasframe_plugins.ens import EnsStrategy
from nasframe_plugins.random_search import RandomSearch

N_SLOTS = 8
WEIGHTS = (0.9, 0.2, 1.4, 0.5, 1.1, 0.3, 0.8, 0.6)
DIRS = ["max", "min"]
REF = np.array([-28.0, N_SLOTS + 1.0])  # hypervolume reference point (minimisation form)


class Slots(SearchSpace):
    """``t0 .. t7``: whether each block slot is a transformer (else an SSM)."""

    name = "slots"

    def decisions(self):
        return [Boolean(f"t{i}") for i in range(N_SLOTS)]

    def build(self, arch):
        raise NotImplementedError

    def reference_architectures(self):
        return {"all_ssm": Architecture({f"t{i}": False for i in range(N_SLOTS)}),
                "teacher": Architecture({f"t{i}": True for i in range(N_SLOTS)})}


def values(arch: Architecture) -> dict[str, float]:
    """A PSNR-like quality (weights plus interactions) against the transformer count."""
    b = [int(arch[f"t{i}"]) for i in range(N_SLOTS)]
    q = (28 + sum(w * x for w, x in zip(WEIGHTS, b)) + 0.7 * b[0] * b[7] - 0.4 * b[2] * b[4]
         + 0.3 * b[1] * b[5] * b[6])
    return {"psnr": round(q, 4), "transformer_count": float(sum(b))}


PROBLEM = Problem(Slots(), (ObjectiveSpec("psnr", "max"), ObjectiveSpec("transformer_count", "min")))


def trials_of(archs, start=0, origin="strategy"):
    return [Trial(start + i, a, "complete", values(a), feasible=True, origin=origin)
            for i, a in enumerate(archs)]


def references():
    return trials_of(PROBLEM.space.reference_architectures().values(), 1000, "reference:x")


def drive(strategy: Strategy | StrategyDriver, budget: int, batch: int = 4, refs: bool = True):
    """Tell the references, then ask/tell ``batch`` at a time up to ``budget`` trials,
    as the runner does (proposals enter the history as running trials first)."""
    d = strategy if isinstance(strategy, StrategyDriver) else StrategyDriver(strategy)
    told = d.tell(references()) if refs else []
    proposed: list[Architecture] = []
    while len(proposed) < budget:
        asked = d.ask(min(batch, budget - len(proposed)))
        if not asked:
            break
        d.tell(trials_of(asked, len(proposed)))
        proposed += asked
    return proposed, told + trials_of(proposed)


def front(trials) -> list[tuple[float, float]]:
    v = np.array([[t.values["psnr"], t.values["transformer_count"]] for t in trials])
    return sorted({(float(q), float(c)) for q, c in v[pareto_mask(v, DIRS)]}, key=lambda p: p[1])


def hv(points) -> float:
    return hypervolume(np.array(points, dtype=float), DIRS, REF)


TRUE_FRONT = front(trials_of(PROBLEM.space.enumerate()))
BUDGET = 64

#: plain NSGA-II: no screening model, a random first generation
PLAIN = {"screen": 1, "initial": "random"}
# recorded once with seed 0, population 8, PLAIN, BUDGET trials in batches of 4 after the
# references (hypervolume 0.983 of the true front's: it misses the best 3-, 4- and
# 5-transformer choices)
GOLDEN_FRONT = [(28.0, 0.0), (29.4, 1.0), (30.3, 2.0), (31.3, 3.0), (32.3, 4.0), (32.9, 5.0),
                (33.6, 6.0), (33.9, 7.0), (34.4, 8.0)]


def test_registered_through_the_plugin_hook():
    pm = Plugins()
    pm.register(nasframe_plugins, "builtin_plugins")
    assert pm.failures == []
    assert pm.strategies.get("ens") is EnsStrategy


def test_golden_front_with_seed_0():
    proposed, trials = drive(EnsStrategy(PROBLEM, seed=0, population=8, **PLAIN), BUDGET)
    assert len(proposed) == BUDGET
    assert front(trials) == GOLDEN_FRONT
    assert hv(GOLDEN_FRONT) >= 0.98 * hv(TRUE_FRONT)


def test_close_to_the_true_front_and_better_than_random():
    assert len(TRUE_FRONT) == N_SLOTS + 1  # one best architecture per transformer count
    ens, rnd = [], []
    for seed in range(5):
        ens.append(hv(front(drive(EnsStrategy(PROBLEM, seed=seed, population=8), BUDGET)[1])))
        rnd.append(hv(front(drive(RandomSearch(PROBLEM, seed=seed), BUDGET)[1])))
    best = hv(TRUE_FRONT)
    assert min(ens) >= 0.93 * best
    assert np.mean(ens) >= 0.95 * best
    assert np.mean(ens) > np.mean(rnd)


def test_same_seed_same_search_other_seed_other_search():
    a = drive(EnsStrategy(PROBLEM, seed=3), 40, batch=3)[0]
    b = drive(EnsStrategy(PROBLEM, seed=3), 40, batch=3)[0]
    c = drive(EnsStrategy(PROBLEM, seed=4), 40, batch=3)[0]
    assert a == b != c


@pytest.mark.parametrize("cut", [5, 16, 23])  # inside the first generation, at its end, later
def test_resume_from_json_state_continues_the_same_search(cut):
    straight = drive(EnsStrategy(PROBLEM, seed=1, population=8), 48, batch=1)[0]
    first = StrategyDriver(EnsStrategy(PROBLEM, seed=1, population=8))
    done = drive(first, cut, batch=1)[0]
    # one asked but not told when the state is saved, as when a run is killed mid-trial
    pending = first.ask(1)
    second = first.reloaded()                     # a fresh instance over the stored history
    assert second.strategy.state_dict() == first.strategy.state_dict()
    second.tell(trials_of(pending, cut))  # the interrupted trial runs again after the resume
    rest = []
    while len(done) + len(pending) + len(rest) < 48:
        asked = second.ask(1)
        second.tell(trials_of(asked, 100 + len(rest)))
        rest += asked
    assert done + pending + rest == straight


def test_never_proposes_an_architecture_twice_and_ends_when_exhausted():
    strategy = StrategyDriver(EnsStrategy(PROBLEM, seed=2, population=8))
    proposed, _ = drive(strategy, 10_000, batch=5)
    ids = [a.id for a in proposed]
    assert len(ids) == len(set(ids)) == 2 ** N_SLOTS - 2  # every architecture but the references
    assert not set(ids) & {t.arch.id for t in references()}
    assert strategy.ask(3) == []


def test_failed_infeasible_foreign_and_invalid_trials_are_taken():
    problem = Problem(PROBLEM.space, PROBLEM.objectives, (Constraint.parse("transformer_count <= 5"),))
    strategy = StrategyDriver(EnsStrategy(problem, seed=0, population=6))
    rng = np.random.default_rng(0)
    for step in range(8):
        asked = strategy.ask(3)
        told = []
        for i, a in enumerate(asked):
            v = values(a)
            if i == 0 and step % 2:
                told.append(Trial(10 * step + i, a, "failed", error="boom"))
            else:
                ok = v["transformer_count"] <= 5
                told.append(Trial(10 * step + i, a, "complete", v, feasible=ok,
                                  violation=0.0 if ok else v["transformer_count"] - 5))
        foreign = PROBLEM.space.sample(rng)
        told.append(Trial(500 + step, foreign, "complete", values(foreign), feasible=True))
        told.append(Trial(600 + step, Architecture(bogus=1), "complete", {"psnr": 1.0}))
        strategy.tell(told[::-1])
        strategy.tell(told[:1])  # the same trial twice
        json.dumps(strategy.strategy.state_dict(), allow_nan=False)
    assert all(problem.space.validate(a) is None for a in strategy.ask(6))


def test_pick_maximises_quality_minus_penalty_times_cost_on_the_front():
    def t(n, q, c, **kw):
        arch = Architecture({f"t{i}": i < c for i in range(N_SLOTS)} | {"t7": n % 2 == 1})
        return Trial(n, arch, kw.pop("status", "complete"), {"psnr": q, "transformer_count": c},
                     feasible=kw.pop("feasible", True), **kw)

    trials = [t(0, 30.0, 0), t(1, 31.0, 2), t(2, 31.5, 3), t(3, 32.4, 8),
              t(4, 30.9, 2),                          # dominated by trial 1
              t(5, 40.0, 1, feasible=False),          # infeasible
              t(6, 39.0, 1, status="infeasible"),     # not complete
              Trial(7, Architecture(t0=True), "failed", error="boom")]
    # scores with penalty 0.1: 30.0, 30.8, 31.2, 31.6 -> trial 3
    trial, rule = EnsStrategy(PROBLEM, penalty=0.1).pick(trials)
    assert trial.number == 3 and rule == "psnr - 0.1 * transformer_count = 31.6"
    # penalty 0.5: 30.0, 30.0, 30.0, 28.4 -> a tie, the earliest trial wins
    assert EnsStrategy(PROBLEM, penalty=0.5).pick(trials)[0].number == 0
    # penalty 0.3: 30.0, 30.4, 30.6, 30.0 -> trial 2
    trial, rule = EnsStrategy(PROBLEM, penalty=0.3).pick(trials)
    assert trial.number == 2 and rule == "psnr - 0.3 * transformer_count = 30.6"
    assert EnsStrategy(PROBLEM).pick(trials[5:]) is None  # nothing feasible and complete
    assert EnsStrategy(PROBLEM).pick([]) is None


def test_pick_with_max_drop_is_the_lowest_cost_within_the_bound_of_the_baseline():
    def t(n, q, c, origin="strategy", **kw):
        arch = Architecture({f"t{i}": i < c for i in range(N_SLOTS)})
        return Trial(n, arch, kw.pop("status", "complete"), {"psnr": q, "transformer_count": c},
                     feasible=kw.pop("feasible", True), origin=origin, **kw)

    teacher = t(0, 32.0, 8, "reference:teacher")
    trials = [teacher, t(1, 29.0, 0, "reference:all_ssm"), t(2, 31.6, 3), t(3, 31.8, 3),
              t(4, 31.0, 1), t(5, 33.0, 1, feasible=False), t(6, 31.9, 2, status="infeasible")]
    s = EnsStrategy(PROBLEM, penalty=0.1, max_drop=0.5)
    trial, rule = s.pick(trials)
    # within 0.5 of 32.0: trials 0, 2, 3; lowest cost 3 (a tie: the better PSNR, trial 3)
    assert trial.number == 3
    assert rule == ("lowest transformer_count with psnr >= 31.5 (teacher's 32 - 0.5): "
                    "transformer_count = 3")
    assert EnsStrategy(PROBLEM, max_drop=1.0).pick(trials)[0].number == 4
    assert EnsStrategy(PROBLEM, max_drop=0).pick(trials)[0].number == 0   # only the teacher
    # measured from another reference
    assert EnsStrategy(PROBLEM, max_drop=0, baseline="all_ssm").pick(trials)[0].number == 1
    # before the teacher's trial is complete: the penalty rule, saying why
    trial, rule = s.pick(trials[1:])
    assert rule.startswith("psnr - 0.1 * transformer_count") and "no complete 'teacher'" in rule
    with pytest.raises((ValueError, ConfigError)) as err:
        EnsStrategy(PROBLEM, max_drop=0.3, baseline="teachr")
    assert all(w in str(err.value) for w in ("baseline", "'teachr'", "all_ssm, teacher",
                                             "did you mean 'teacher'"))


def test_the_core_strategy_picks_nothing_by_default():
    assert RandomSearch(PROBLEM).pick(trials_of(PROBLEM.space.enumerate())) is None


@pytest.mark.parametrize("params, words", [
    ({"population": 1}, ["params.population", "(got 1)", "greater than or equal to 2",
                         "the default is 16"]),
    ({"population": 4.5}, ["population", "4.5", "valid integer"]),
    ({"penalty": -1}, ["penalty", "-1", "greater than or equal to 0"]),
    ({"penalty": "high"}, ["penalty", "'high'", "valid number"]),
    ({"crossover_prob": 1.5}, ["crossover_prob", "1.5", "less than or equal to 1"]),
    ({"mutation_prob": 0}, ["mutation_prob", "(got 0)", "greater than 0"]),
    ({"screen": 0}, ["screen", "(got 0)", "greater than or equal to 1"]),
    ({"initial": "grid"}, ["initial", "grid", "maximin", "random"]),
    ({"explore": 1.5}, ["explore", "1.5", "less than or equal to 1"]),
    ({"quality": "ssim"}, ["quality", "ssim", "psnr, transformer_count"]),
    ({"quality": "transformer_count"}, ["quality", "maximised", "direction 'min'"]),
    ({"cost": "psnr"}, ["cost", "minimised", "direction 'max'"]),
    ({"max_drop": -0.3}, ["max_drop", "-0.3", "greater than or equal to 0"]),
])
def test_bad_params_are_named(params, words):
    with pytest.raises((ValueError, ConfigError)) as err:
        EnsStrategy(PROBLEM, **params)
    for word in words:
        assert word in str(err.value)


def test_default_quality_and_cost():
    s = EnsStrategy(PROBLEM)
    assert (s.quality, s.cost, s.population, s.penalty) == ("psnr", "transformer_count", 16, 0.1)
    other = Problem(PROBLEM.space, (ObjectiveSpec("gmacs", "min"), ObjectiveSpec("params", "min"),
                                    ObjectiveSpec("psnr", "max")))
    assert (EnsStrategy(other).quality, EnsStrategy(other).cost) == ("psnr", "gmacs")
    only_min = Problem(PROBLEM.space, (ObjectiveSpec("gmacs", "min"),))
    assert EnsStrategy(only_min).pick(trials_of(PROBLEM.space.enumerate())) is None


# ------------------------------------------------------------------ export
def test_a_run_exports_its_pick(tmp_path, plugins, toy_config, capsys):
    toy_config["strategy"] = {"name": "ens", "params": {"population": 4, "penalty": 0.25,
                                                        "quality": "toy_quality", "cost": "toy_cost"}}
    toy_config["budget"] = {"trials": 10}
    run_experiment(config_from_dict(toy_config), tmp_path / "r", quiet=True)
    paths = export_run(tmp_path / "r")

    store = TrialStore.open(tmp_path / "r")
    trials = store.trials()
    store.close()
    assert len(trials) == 10 and len({t.arch.id for t in trials}) == 10
    best = max(trials, key=lambda t: (t.values["toy_quality"] - 0.25 * t.values["toy_cost"], -t.number))

    doc = json.loads(paths["pareto.json"].read_text())
    pick = doc["pick"]
    assert (pick["trial"], pick["id"]) == (best.number, best.arch.id)
    score = best.values["toy_quality"] - 0.25 * best.values["toy_cost"]
    assert pick["rule"] == f"toy_quality - 0.25 * toy_cost = {score:.6g}"
    assert pick["values"] == {"toy_cost": best.values["toy_cost"],
                              "toy_quality": best.values["toy_quality"]}
    assert pick["id"] in {m["id"] for m in doc["front"]}

    rows = list(csv.DictReader(paths["trials.csv"].open()))
    assert [r["id"] for r in rows if r["pick"] == "1"] == [best.arch.id]
    assert {r["pick"] for r in rows} == {"0", "1"}

    picked = yaml.safe_load((paths["front"] / "pick.yaml").read_text())
    member = yaml.safe_load((paths["front"] / f"{best.arch.id}.yaml").read_text())
    assert picked["pick"] == {"trial": best.number, "rule": pick["rule"]}
    assert {k: v for k, v in picked.items() if k != "pick"} == member
    assert paths["pareto.png"].stat().st_size > 10_000

    from nasframe.cli import main

    assert main(["export", str(tmp_path / "r")]) == 0
    assert f"pick: trial {best.number} ({best.arch.id}), {pick['rule']}" in capsys.readouterr().out


def test_a_run_without_a_pick_exports_as_before(tmp_path, plugins, toy_config):
    run_experiment(config_from_dict(toy_config), tmp_path / "r", quiet=True)
    paths = export_run(tmp_path / "r")
    assert "pick" not in json.loads(paths["pareto.json"].read_text())
    assert {r["pick"] for r in csv.DictReader(paths["trials.csv"].open())} == {"0"}
    assert not (paths["front"] / "pick.yaml").exists()


def test_screening_and_a_space_filling_start_beat_plain_nsga2_at_small_budgets():
    """The default (maximin first generation, children screened by the ridge model) finds
    more of the front in 16 and 25 trials (10 % of the space) than plain NSGA-II."""
    best = hv(TRUE_FRONT)
    scores = {"default": {16: [], 25: []}, "plain": {16: [], 25: []}}
    for seed in range(4):
        for name, kw in (("default", {}), ("plain", PLAIN)):
            trials = drive(EnsStrategy(PROBLEM, seed=seed, population=8, **kw), 25)[1]
            refs, own = trials[:2], trials[2:]
            for n in (16, 25):
                scores[name][n].append(hv(front(refs + own[:n])) / best)
    mean = {k: {n: float(np.mean(v)) for n, v in d.items()} for k, d in scores.items()}
    assert mean["default"][16] > mean["plain"][16] + 0.03
    assert mean["default"][25] > mean["plain"][25] + 0.03
    assert mean["default"][25] >= 0.98


class Wide(SearchSpace):
    """One integer of a million values beside two switches (the benchmarks' no-op space)."""

    name = "wide"

    def decisions(self):
        from nasframe.space import Integer

        return [Integer("x", 0, 1_000_000), Boolean("a"), Boolean("b")]

    def build(self, arch):
        raise NotImplementedError


def test_screening_a_wide_integer_uses_its_order_not_a_one_hot():
    """A decision of 10^6 values enters the screening model as one scaled column (a one-hot
    of it asked numpy for terabytes), and the screened generations move toward its optimum."""
    problem = Problem(Wide(), (ObjectiveSpec("q", "max"), ObjectiveSpec("c", "min")))

    def value(a):
        return {"q": -abs(a["x"] - 700_000) / 1e5 + a["a"], "c": float(a["a"] + a["b"])}

    d = StrategyDriver(EnsStrategy(problem, seed=0, population=8))
    seen = []
    while len(seen) < 48:
        asked = d.ask(4)
        d.tell([Trial(len(seen) + i, a, "complete", value(a), feasible=True)
                for i, a in enumerate(asked)])
        seen += asked
    X = d.strategy._one_hot(np.array([[1_000_000, 1, 0]]))
    assert X.shape == (1, 5) and X[0, 0] == 1.0
    first, last = seen[:8], seen[-8:]
    gap = [np.median([abs(a["x"] - 700_000) for a in g]) for g in (first, last)]
    assert gap[1] < gap[0]
