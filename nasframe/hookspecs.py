"""Hook specifications: one hook per kind of component.

A plugin is a module (or object) with ``@hookimpl`` functions, exposed through
an entry point in the ``nasframe`` group::

    [project.entry-points.nasframe]
    my_plugin = "my_package.plugin"

Each hook is handed a typed registry; ``registry.add(cls)`` checks the class
at once and rejects a wrong type or a duplicate name, naming both plugins.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from nasframe.registry import OpHandles, Registry

PROJECT = "nasframe"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_search_spaces(registry: Registry) -> None:
    """Add :class:`nasframe.SearchSpace` subclasses with ``registry.add(cls)``."""


@hookspec
def register_objectives(registry: Registry) -> None:
    """Add :class:`nasframe.Objective` subclasses with ``registry.add(cls)``."""


@hookspec
def register_strategies(registry: Registry) -> None:
    """Add :class:`nasframe.Strategy` subclasses with ``registry.add(cls)``."""


@hookspec
def register_executors(registry: Registry) -> None:
    """Add :class:`nasframe.executor.Executor` subclasses with ``registry.add(cls)``."""


@hookspec
def register_op_handles(handles: OpHandles) -> None:
    """Teach MAC counting (``gmacs``) the custom ops of the plugin's models:
    ``handles.add("prim::PythonOp.Name", handle)``; see :class:`nasframe.registry.OpHandles`."""


@hookspec
def register_latency_backends(registry: Registry) -> None:
    """Add :class:`nasframe.backends.LatencyBackend` subclasses (where the ``latency``
    objective times candidates) with ``registry.add(cls)``."""


@hookspec
def register_deploy_checks(registry: Registry) -> None:
    """Add :class:`nasframe.backends.DeployCheck` subclasses (a vendor toolchain's verdict on
    an exported graph: ``nasframe export-model --check NAME``) with ``registry.add(cls)``."""
