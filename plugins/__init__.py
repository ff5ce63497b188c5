"""Built-in search strategies, registered through the ``nasframe`` entry point like any plugin."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nasframe import hookimpl

if TYPE_CHECKING:
    from nasframe.registry import Registry


@hookimpl
def register_strategies(registry: Registry) -> None:
    from nasframe_plugins.ens import EnsStrategy
    from nasframe_plugins.eps_bo import EpsBO
    from nasframe_plugins.grid import GridSearch
    from nasframe_plugins.nni_strategy import NNIStrategy
    from nasframe_plugins.optuna_strategy import OptunaStrategy
    from nasframe_plugins.random_search import RandomSearch

    registry.add(RandomSearch)
    registry.add(GridSearch)
    registry.add(EnsStrategy)
    registry.add(EpsBO)  # needs botorch only when constructed
    registry.add(OptunaStrategy)  # needs optuna only when constructed
    registry.add(NNIStrategy)  # needs nni only when constructed


@hookimpl
def register_executors(registry: Registry) -> None:
    from nasframe_plugins.dask_executor import DaskExecutor
    from nasframe_plugins.executors import InlineExecutor, ProcessExecutor

    registry.add(InlineExecutor)
    registry.add(ProcessExecutor)
    registry.add(DaskExecutor)
