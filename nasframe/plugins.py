"""Plugin discovery: entry points in the ``nasframe`` group, loaded lazily, once.

Environment variables:

``NASFRAME_PLUGINS``
    Comma-separated entry-point names to load (all others are skipped);
    ``none`` (or an empty string) loads no plugin at all.
``NASFRAME_DISABLE_PLUGINS``
    Comma-separated entry-point names never to load.
``NASFRAME_PLUGIN_MODULES``
    Comma-separated importable module names loaded as plugins too (each under
    its module name), for plugins that are not installed as a distribution,
    e.g. a module beside a script. Worker processes inherit it.

A plugin that fails to import, or whose hook raises, is reported by name in
:attr:`Plugins.failures` (and by ``nasframe plugins``); the others keep working.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from dataclasses import dataclass
from typing import Any

import pluggy

from nasframe import hookspecs
from nasframe.backends import DeployCheck, LatencyBackend
from nasframe.executor import Executor
from nasframe.objective import Objective
from nasframe.registry import OpHandles, Registry
from nasframe.space import SearchSpace
from nasframe.strategy import Strategy

GROUP = "nasframe"


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    error: str
    detail: str


class Plugins:
    """The one plugin manager and its registries (one per kind), behind a typed API."""

    def __init__(self) -> None:
        self.search_spaces: Registry[SearchSpace] = Registry("search space", SearchSpace)
        self.objectives: Registry[Objective] = Registry("objective", Objective)
        self.strategies: Registry[Strategy] = Registry("strategy", Strategy)
        self.executors: Registry[Executor] = Registry("executor", Executor)
        self.latency_backends: Registry[LatencyBackend] = Registry("latency backend",
                                                                    LatencyBackend)
        self.deploy_checks: Registry[DeployCheck] = Registry("deploy check", DeployCheck)
        self.op_handles = OpHandles()
        self.failures: list[PluginFailure] = []
        self.loaded: list[tuple[str, str]] = []  # (plugin name, version)
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)

    def registry(self, kind: str) -> Registry:
        return {"search_space": self.search_spaces, "objective": self.objectives,
                "strategy": self.strategies, "executor": self.executors,
                "latency_backend": self.latency_backends,
                "deploy_check": self.deploy_checks}[kind]

    @property
    def _hooks(self) -> tuple[tuple[str, str, Any], ...]:
        """Each hook, the name of its argument and the registry it is handed."""
        return (("register_search_spaces", "registry", self.search_spaces),
                ("register_objectives", "registry", self.objectives),
                ("register_strategies", "registry", self.strategies),
                ("register_executors", "registry", self.executors),
                ("register_latency_backends", "registry", self.latency_backends),
                ("register_deploy_checks", "registry", self.deploy_checks),
                ("register_op_handles", "handles", self.op_handles))

    # -- loading ---------------------------------------------------------
    def load_entry_points(self) -> None:
        only = os.environ.get("NASFRAME_PLUGINS")
        allow = None if only is None else {n.strip() for n in only.split(",") if n.strip()} - {"none"}
        deny = {n.strip() for n in os.environ.get("NASFRAME_DISABLE_PLUGINS", "").split(",") if n.strip()}
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            if (allow is not None and ep.name not in allow) or ep.name in deny:
                continue
            version = ep.dist.version if ep.dist is not None else ""
            try:
                module = ep.load()
            except Exception as err:  # a broken plugin must not break the others
                self._fail(ep.name, err)
                continue
            self.register(module, ep.name, version)
        for name in os.environ.get("NASFRAME_PLUGIN_MODULES", "").split(","):
            name = name.strip()
            if not name or name in deny or name in self._pm.get_plugins() or \
                    any(n == name for n, _ in self.loaded):
                continue
            try:
                module = importlib.import_module(name)
            except Exception as err:  # reported, not fatal
                self._fail(name, err)
                continue
            if self._pm.is_registered(module):   # already loaded through its entry point
                continue
            self.register(module, name, getattr(module, "__version__", ""))

    def register(self, plugin: Any, name: str, version: str = "") -> None:
        """Register a plugin object (module or instance with ``@hookimpl`` functions)."""
        try:
            self._pm.register(plugin, name=name)
        except Exception as err:
            self._fail(name, err)
            return
        ok = True
        before = {hook: set(reg.names()) for hook, _, reg in self._hooks}
        for hook, arg, reg in self._hooks:
            impls = [i for i in getattr(self._pm.hook, hook).get_hookimpls() if i.plugin is plugin]
            for impl in impls:
                reg._current_plugin = (name, version)
                try:
                    impl.function(**{arg: reg})
                except Exception as err:  # PluginError included: reported, not fatal
                    self._fail(name, err)
                    ok = False
                finally:
                    reg._current_plugin = ("<unknown>", "")
        if ok:
            self.loaded.append((name, version))
        else:  # all or nothing: a plugin whose hook failed adds no component
            for hook, _, reg in self._hooks:
                added = set(reg.names()) - before[hook]
                if isinstance(reg, OpHandles):
                    reg._remove(added)
                else:
                    for n in added:
                        reg._entries.pop(n)
            self._pm.unregister(plugin)

    def _fail(self, name: str, err: BaseException) -> None:
        self.failures.append(PluginFailure(name, f"{type(err).__name__}: {err}",
                                           "".join(traceback.format_exception(err))))


_PLUGINS: Plugins | None = None


def get_plugins(reload: bool = False) -> Plugins:
    """The process-wide plugin manager, loading entry points on first use."""
    global _PLUGINS
    if _PLUGINS is None or reload:
        plugins = Plugins()
        plugins.load_entry_points()
        _PLUGINS = plugins
    return _PLUGINS
