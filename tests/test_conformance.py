"""Every built-in component through the conformance suite shipped in nasframe.testing.

Classes are generated from the registry, so a new built-in gets the contract
tests for free. Each component is made with its own ``small_params`` (a small
instance for CI); each objective is paired with the built-in search spaces
that provide the capabilities it requires, so no table says which goes with
which.
"""
from __future__ import annotations

import functools

import pytest

from nasframe import capabilities
from nasframe.plugins import Plugins
from nasframe.testing import (
    ExecutorContract,
    ObjectiveContract,
    SearchSpaceContract,
    StrategyContract,
    ToySpace,
)

_plugins = Plugins()
_plugins.load_entry_points()


def _builtin(registry):
    return [e for e in registry.entries() if e.plugin.startswith("builtin_") and not e.missing()]


def _space(name):
    cls = _plugins.search_spaces.get(name)
    return _plugins.search_spaces.create(name, dict(cls.small_params))


SPACES = [e.name for e in _builtin(_plugins.search_spaces)]

for _e in _builtin(_plugins.search_spaces):
    globals()[f"TestSpace_{_e.name}"] = type(
        f"TestSpace_{_e.name}", (SearchSpaceContract,),
        {"make_space": lambda self, n=_e.name: _space(n)})


@functools.cache
def _checked_space(name):
    """One instance per space for the pairing checks at collection (made once, not per objective)."""
    return _space(name)


def _pairings(obj_cls) -> list[str | None]:
    """The spaces an objective can score: ToySpace (None) when it requires nothing,
    else every built-in space providing what it requires."""
    obj = obj_cls(dict(obj_cls.small_params))
    if not obj.requirements() and obj.check_space(ToySpace()) is None:
        return [None]
    out = []
    for name in SPACES:
        space_cls = _plugins.search_spaces.get(name)
        if all(issubclass(space_cls, c) for c in obj.requirements()) \
                and obj.check_space(_checked_space(name)) is None:
            out.append(name)
    return out


PAIRED: dict[str, list[str]] = {}
for _e in _builtin(_plugins.objectives):
    for _space_name in _pairings(_e.cls):
        PAIRED.setdefault(_e.name, []).append(_space_name or "toy")
        _attrs = {"make_objective": lambda self, e=_e: e.cls(dict(e.cls.small_params))}
        if _space_name is not None:
            _attrs["make_space"] = lambda self, n=_space_name: _space(n)
        _label = f"TestObjective_{_e.name}_on_{_space_name or 'toy'}"
        globals()[_label] = type(_label, (ObjectiveContract,), _attrs)


def test_every_builtin_objective_is_paired_with_a_space():
    unpaired = [e.name for e in _builtin(_plugins.objectives) if e.name not in PAIRED]
    assert unpaired == []
    # a pairing is exactly "the space provides what the objective requires"
    psnr = _plugins.objectives.get("psnr")
    assert set(PAIRED["psnr"]) == {n for n in SPACES if all(
        issubclass(_plugins.search_spaces.get(n), c) for c in psnr.requires)}
    assert capabilities.TrainedWeights in psnr.requires
    assert PAIRED["transformer_count"] == ["hybrid_unet"]   # sd_unet has kinds, not transformers
    assert PAIRED["fidelity"] == ["sd_unet"]


def _strategy(name, problem, seed, history):
    return _plugins.strategies.create(name, {}, problem=problem, seed=seed, history=history)


for _e in _builtin(_plugins.strategies):
    globals()[f"TestStrategy_{_e.name}"] = type(
        f"TestStrategy_{_e.name}", (StrategyContract,),
        {"make_strategy": lambda self, problem, seed, history, n=_e.name:
            _strategy(n, problem, seed, history)})


# an experiment every worker can load (built-ins only), for the executor contract
EXECUTOR_EXPERIMENT = {
    "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
    "objectives": [{"name": "params"}, {"name": "gmacs"}],
    "constraints": ["gmacs <= 0.02"],
    "budget": {"trials": 1},
}


def _executor(name, workers):
    return _plugins.executors.create(name, {"workers": workers})


for _e in _builtin(_plugins.executors):
    globals()[f"TestExecutor_{_e.name}"] = type(
        f"TestExecutor_{_e.name}", (ExecutorContract,),
        {"make_executor": lambda self, workers, n=_e.name: _executor(n, workers),
         "make_config": lambda self: dict(EXECUTOR_EXPERIMENT)})


def test_every_builtin_kind_is_covered():
    names = {k for k in globals() if k.startswith("Test")}
    assert any(n.startswith("TestSpace_") for n in names)
    assert any(n.startswith("TestObjective_") for n in names)
    assert any(n.startswith("TestStrategy_") for n in names)
    assert any(n.startswith("TestExecutor_") for n in names)


@pytest.mark.parametrize("name", SPACES)
def test_space_small_params_are_valid(name):
    cls = _plugins.search_spaces.get(name)
    cls.Params.model_validate(dict(cls.small_params))
