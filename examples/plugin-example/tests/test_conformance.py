"""The nasframe conformance suite, applied to this plugin's components.

Each ``Test*`` class inherits every contract test from ``nasframe.testing``;
the plugin only says how to make its component. Run with::

    pip install -e examples/plugin-example
    pytest examples/plugin-example
"""
from __future__ import annotations

import json

import numpy as np
from nasframe.history import TrialHistory
from nasframe.plugins import Plugins
from nasframe.testing import ObjectiveContract, SearchSpaceContract, StrategyContract, ToySpace, fake_trials
from nasframe.trial import ObjectiveSpec, Problem, Trial

import nasframe_example
from nasframe_example.objective import FitLoss
from nasframe_example.space import TinyMLPSpace
from nasframe_example.strategy import LocalSearch


# ------------------------------------------------------------- the contracts
class TestTinyMLP(SearchSpaceContract):
    def make_space(self):
        return TinyMLPSpace()


class TestTinyMLPOtherShape(SearchSpaceContract):
    def make_space(self):
        return TinyMLPSpace(widths=[4, 12], max_depth=1, activations=["tanh"], in_features=3,
                            out_features=2)


class TestFitLoss(ObjectiveContract):
    def make_objective(self):
        return FitLoss(steps=5)

    def make_space(self):
        return TinyMLPSpace()


class TestFitLossOnToySpace(ObjectiveContract):
    """``fit_loss`` is generic: the conformance suite's own ``ToySpace`` (4 -> 2) works too."""

    def make_objective(self):
        return FitLoss(steps=5, samples=32)


class TestLocalSearch(StrategyContract):
    def make_strategy(self, problem, seed, history):
        return LocalSearch(problem, seed=seed, history=history, n_initial=2)


def _tell(strategy, history, trials):
    """What the runner does: record the trials in the run's history, then tell them."""
    history.record(trials)
    strategy.tell(trials)


# ----------------------------------------------- beyond the contract: behaviour
def test_hooks_register_every_component():
    plugins = Plugins()
    plugins.register(nasframe_example, "example", nasframe_example.__version__)
    assert plugins.failures == []
    assert plugins.search_spaces.get("tiny_mlp") is TinyMLPSpace
    assert plugins.objectives.get("fit_loss") is FitLoss
    assert plugins.strategies.get("local_search") is LocalSearch
    assert plugins.strategies.entry("local_search").plugin == "example"


def test_graph_matches_the_built_model():
    space = TinyMLPSpace()
    arch = space.reference_architectures()["baseline"]
    model, g = space.build(arch), space.graph(arch)
    assert [name for name, _ in model.named_children()] == list(g.nodes)
    assert [g.nodes[n]["channels"] for n in g.nodes] == [32, 32, 4]


def test_local_search_mutates_one_decision_of_the_incumbent():
    problem = Problem(ToySpace(), (ObjectiveSpec("loss", "min"),))
    history = TrialHistory()
    strategy = LocalSearch(problem, seed=0, history=history, n_initial=2)
    start = strategy.ask(2)
    _tell(strategy, history, [Trial(0, start[0], "complete", {"loss": 1.0}, feasible=True),
                              Trial(1, start[1], "failed", error="boom")])
    assert strategy.incumbent == start[0]
    for arch in strategy.ask(3):
        changed = [k for k in arch if arch[k] != start[0][k]]
        assert len(changed) == 1
        if changed == ["depth"]:  # an Integer decision moves to an adjacent value
            assert abs(arch["depth"] - start[0]["depth"]) == 1


def test_local_search_climbs_on_a_max_objective_and_a_foreign_trial_can_win():
    problem = Problem(ToySpace(), (ObjectiveSpec("acc", "max"),))
    history = TrialHistory()
    strategy = LocalSearch(problem, seed=3, history=history, n_initial=1)
    first = strategy.ask(1)[0]
    _tell(strategy, history, [Trial(0, first, "complete", {"acc": 0.5}, feasible=True)])
    foreign = next(a for a in ToySpace().enumerate() if a != first)
    _tell(strategy, history, [Trial(1, foreign, "complete", {"acc": 0.9}, feasible=True,
                                    origin="reference:x")])
    assert strategy.incumbent == foreign
    _tell(strategy, history, [Trial(2, first, "complete", {"acc": 0.7}, feasible=False,
                                    violation=1.0)])
    assert strategy.incumbent == foreign  # infeasible never beats feasible


def test_local_search_proposes_each_architecture_once_then_stops():
    problem = Problem(ToySpace(), (ObjectiveSpec("a", "min"),))
    history = TrialHistory()
    strategy = LocalSearch(problem, seed=1, history=history, n_initial=2, max_retries=200)
    proposed = []
    for step in range(20):
        asked = strategy.ask(4)
        _tell(strategy, history, fake_trials(problem, asked, len(proposed), fail_every=4))
        proposed += asked
    assert len(proposed) == len({a.id for a in proposed}) == ToySpace().size == 18
    assert strategy.ask(4) == []
    json.dumps(strategy.state_dict())


def test_fit_loss_is_lower_for_a_bigger_model(tmp_path):
    from nasframe import Architecture, Candidate
    from nasframe.testing import plugin_context

    space, objective = TinyMLPSpace(), FitLoss(steps=30)
    ctx = plugin_context(tmp_path)
    objective.prepare(space, ctx)
    small = Architecture(width=8, depth=1, activation="relu")
    big = Architecture(width=64, depth=3, activation="relu")
    losses = [objective(Candidate(space, a, seed=0), ctx)[0] for a in (small, big)]
    assert losses[1] < losses[0]
    assert np.isfinite(losses).all()
