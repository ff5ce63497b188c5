"""Behaviour of the built-in ``random`` and ``grid`` strategies."""
from __future__ import annotations

import pytest

import nasframe_plugins
from nasframe.architecture import Architecture
from nasframe.errors import ConfigError
from nasframe.plugins import Plugins
from nasframe.space import Categorical, SearchSpace
from nasframe.testing import StrategyDriver
from nasframe.trial import ObjectiveSpec, Problem, Trial
from nasframe_plugins.grid import GridSearch
from nasframe_plugins.random_search import RandomSearch
from nasframe_search_spaces.denoiser import ConvDenoiserSpace

N_VALID = 12  # valid architectures of the small space below


def problem(space: SearchSpace | None = None) -> Problem:
    space = space or ConvDenoiserSpace(depths=[1, 2], widths=[4], kernels=[3, 5], input_size=8)
    return Problem(space, (ObjectiveSpec("params", "min"),))


def told(*archs: Architecture) -> list[Trial]:
    return [Trial(i, a, "complete", {"params": 1.0}) for i, a in enumerate(archs)]


def drive(cls, prob, **kwargs) -> StrategyDriver:
    return StrategyDriver(cls(prob, **kwargs))


class HugeSpace(SearchSpace):
    name = "huge"

    def decisions(self):
        return [Categorical(f"d{i}", tuple(range(10))) for i in range(7)]  # 10**7 combinations

    def build(self, arch):
        raise NotImplementedError


def test_registered_through_the_plugin_hook():
    pm = Plugins()
    pm.register(nasframe_plugins, "builtin_plugins")
    assert pm.failures == []
    assert pm.strategies.get("random") is RandomSearch
    assert pm.strategies.get("grid") is GridSearch


# ------------------------------------------------------------------ random
def test_random_proposes_every_architecture_once_then_nothing():
    prob = problem()
    strategy = drive(RandomSearch, prob, seed=1, max_retries=200)
    proposed = []
    for _ in range(10):
        proposed += strategy.ask(5)
    assert len(proposed) == N_VALID
    assert set(proposed) == set(prob.space.enumerate())
    assert all(prob.space.is_valid(a) for a in proposed)
    assert strategy.ask(3) == []


def test_random_skips_told_architectures():
    prob = problem()
    others = list(prob.space.enumerate())[:5]
    strategy = drive(RandomSearch, prob, seed=0, max_retries=200)
    strategy.tell(told(*others))
    proposed = strategy.ask(N_VALID)
    assert len(proposed) == N_VALID - 5
    assert not set(proposed) & set(others)


def test_random_is_deterministic_by_seed():
    prob = problem(ConvDenoiserSpace())
    a, b, c = (drive(RandomSearch, prob, seed=s) for s in (3, 3, 4))
    seq_a, seq_b, seq_c = a.ask(10) + a.ask(10), b.ask(20), c.ask(20)
    assert seq_a == seq_b
    assert seq_a != seq_c
    assert len(set(seq_a)) == 20


def test_random_state_round_trip():
    prob = problem(ConvDenoiserSpace())
    old = drive(RandomSearch, prob, seed=5)
    first = old.ask(7)
    old.tell(told(*first[:3], prob.space.reference_architectures()["largest"]))
    fresh = old.reloaded()
    assert fresh.strategy.state_dict() == old.strategy.state_dict()
    nxt = old.ask(15)
    assert fresh.ask(15) == nxt
    assert not set(nxt) & set(first)


def test_random_round_trip_after_exhaustion():
    old = drive(RandomSearch, problem(), seed=2, max_retries=100)
    old.ask(N_VALID - 1)
    fresh = old.reloaded()
    assert fresh.ask(5) == old.ask(5)
    assert len(fresh.history) == N_VALID
    assert fresh.ask(1) == []


def test_random_rejects_bad_max_retries():
    with pytest.raises(ConfigError, match="max_retries"):
        RandomSearch(problem(), max_retries=0)


# -------------------------------------------------------------------- grid
@pytest.mark.parametrize("shuffle", [False, True])
def test_grid_enumerates_every_valid_architecture_exactly_once(shuffle):
    prob = problem()
    strategy = drive(GridSearch, prob, seed=0, shuffle=shuffle)
    proposed = []
    while batch := strategy.ask(5):
        proposed += batch
    assert len(proposed) == N_VALID
    assert set(proposed) == set(prob.space.enumerate())
    assert (proposed == list(prob.space.enumerate())) is not shuffle
    assert strategy.strategy.done
    assert strategy.ask(5) == []


def test_grid_shuffle_depends_on_the_seed():
    prob = problem()
    orders = [GridSearch(prob, seed=s, shuffle=True).ask(N_VALID) for s in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2]


def test_grid_skips_told_architectures():
    prob = problem()
    grid = list(prob.space.enumerate())
    strategy = drive(GridSearch, prob)
    strategy.tell(told(grid[0], grid[4]))
    assert strategy.ask(N_VALID) == [a for i, a in enumerate(grid) if i not in (0, 4)]


def test_grid_limit():
    prob = problem()
    assert GridSearch(prob, limit=4).ask(10) == list(prob.space.enumerate())[:4]


@pytest.mark.parametrize("shuffle", [False, True])
def test_grid_state_round_trip(shuffle):
    prob = problem()
    old = drive(GridSearch, prob, seed=7, shuffle=shuffle)
    first = old.ask(4)
    later = [a for a in prob.space.enumerate() if a not in first][-2:]
    old.tell(told(*first, *later))
    fresh = old.reloaded(shuffle=not shuffle)  # the saved state decides the order
    assert fresh.strategy.state_dict() == old.strategy.state_dict()
    nxt = old.ask(N_VALID)
    assert fresh.ask(N_VALID) == nxt
    assert len(nxt) == N_VALID - 4 - 2
    assert not set(nxt) & set(first + later)


def test_grid_state_of_a_changed_space_is_refused():
    old = GridSearch(problem())
    old.ask(2)
    other = GridSearch(problem(ConvDenoiserSpace(depths=[1], widths=[4], kernels=[3])))
    with pytest.raises(ValueError, match="changed"):
        other.load_state_dict(old.state_dict())


def test_grid_refuses_a_huge_space_without_limit():
    prob = problem(HugeSpace())
    with pytest.raises(ValueError) as err:      # ParamError: a ValueError naming `limit`
        GridSearch(prob)
    assert "limit" in str(err.value) and "huge" in str(err.value)
    assert len(GridSearch(prob, limit=3).ask(10)) == 3


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 2.5}, {"shuffle": "yes"}])
def test_grid_rejects_bad_params(params):
    with pytest.raises(ConfigError, match=next(iter(params))):
        GridSearch(problem(), **params)
