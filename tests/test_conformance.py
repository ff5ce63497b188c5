"""Every built-in component through the conformance suite shipped in nasframe.testing.

Classes are generated from the registry, so a new built-in gets the contract
tests for free; ``SMALL`` only says how to make each one small enough for CI.
"""
from __future__ import annotations

import pytest

from nasframe.plugins import Plugins
from nasframe.testing import (
    ExecutorContract,
    ObjectiveContract,
    SearchSpaceContract,
    StrategyContract,
)

_plugins = Plugins()
_plugins.load_entry_points()

# small presets for CI; components not listed are made with their defaults
SMALL_SPACES = {"conv_denoiser": {"input_size": 16},
                "hybrid_unet": {"preset": "tiny", "granularity": "stage", "input_size": 16,
                                "data": {"short_side": 48, "val_size": 32, "patch": 16}},
               "sd_unet": {"preset": "tiny", "widths": [1.0, 0.5], "latent_size": 8,
                           "fidelity": {"samples": 2, "batch_size": 2}}}
SMALL_OBJECTIVES = {"latency": {"repeats": 3, "warmup": 1}, "quick_psnr": {"steps": 5}}
# objectives that need a particular kind of model (default: nasframe.testing.ToySpace)
OBJECTIVE_SPACES = {"quick_psnr": "conv_denoiser", "psnr": "hybrid_unet", "ssim": "hybrid_unet",
                    "transformer_count": "hybrid_unet", "fidelity": "sd_unet"}


def _builtin(registry):
    return [e for e in registry.entries() if e.plugin.startswith("builtin_")]


def _space(name):
    return _plugins.search_spaces.create(name, SMALL_SPACES.get(name, {}))


for _e in _builtin(_plugins.search_spaces):
    globals()[f"TestSpace_{_e.name}"] = type(
        f"TestSpace_{_e.name}", (SearchSpaceContract,),
        {"make_space": lambda self, n=_e.name: _space(n)})

for _e in _builtin(_plugins.objectives):
    _attrs = {"make_objective": lambda self, n=_e.name: _plugins.objectives.create(
        n, SMALL_OBJECTIVES.get(n, {}))}
    if _e.name in OBJECTIVE_SPACES:
        _attrs["make_space"] = lambda self, n=OBJECTIVE_SPACES[_e.name]: _space(n)
    globals()[f"TestObjective_{_e.name}"] = type(f"TestObjective_{_e.name}", (ObjectiveContract,), _attrs)

# strategies whose optional dependency may be missing (their contract is then skipped)
OPTIONAL_STRATEGIES = {"eps_bo": "botorch"}


def _strategy(name, problem, seed):
    if name in OPTIONAL_STRATEGIES:
        pytest.importorskip(OPTIONAL_STRATEGIES[name])
    return _plugins.strategies.create(name, {}, problem=problem, seed=seed)


for _e in _builtin(_plugins.strategies):
    globals()[f"TestStrategy_{_e.name}"] = type(
        f"TestStrategy_{_e.name}", (StrategyContract,),
        {"make_strategy": lambda self, problem, seed, n=_e.name: _strategy(n, problem, seed)})


# an experiment every worker can load (built-ins only), for the executor contract
EXECUTOR_EXPERIMENT = {
    "search_space": {"name": "conv_denoiser", "params": {"input_size": 16}},
    "objectives": [{"name": "params"}, {"name": "gmacs"}],
    "constraints": ["gmacs <= 0.02"],
    "budget": {"trials": 1},
}
# executors whose optional dependency may be missing (their contract is then skipped)
OPTIONAL_EXECUTORS = {"dask": "dask.distributed"}


def _executor(name, workers):
    if name in OPTIONAL_EXECUTORS:
        pytest.importorskip(OPTIONAL_EXECUTORS[name])
    return _plugins.executors.create(name, {}, workers=workers)


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
