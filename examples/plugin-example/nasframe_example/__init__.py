"""An example nasframe plugin: one search space, one objective, one strategy.

nasframe finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.nasframe]
    example = "nasframe_example"

and calls each ``@hookimpl`` function below with a typed registry. The
component classes are imported inside the hooks, so that loading the plugin
(``nasframe plugins``, ``nasframe validate``) stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from nasframe import hookimpl

if TYPE_CHECKING:
    from nasframe.registry import Registry

__version__ = "0.1.0"


@hookimpl
def register_search_spaces(registry: Registry) -> None:
    from nasframe_example.space import TinyMLPSpace

    registry.add(TinyMLPSpace)


@hookimpl
def register_objectives(registry: Registry) -> None:
    from nasframe_example.objective import FitLoss

    registry.add(FitLoss)


@hookimpl
def register_strategies(registry: Registry) -> None:
    from nasframe_example.strategy import LocalSearch

    registry.add(LocalSearch)
