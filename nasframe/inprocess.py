"""Components defined in a notebook or script, registered in this process.

A plugin package is the way to share components; for a quick experiment an
objective (or any component class) can be registered where it is written::

    import nasframe

    @nasframe.objective(direction="max", kind="proxy")
    def sharpness(candidate):
        return float(candidate.arch["width"]) ** 0.5

    @nasframe.register
    class MySpace(nasframe.SearchSpace): ...

They join the process-wide registries (``nasframe plugins`` lists them with
the plugin ``in-process``); defining one again under the same name replaces
it, as re-running a notebook cell should.

The ``inline`` executor uses them directly. Worker processes (``process``,
``dask``) do not run the notebook, so the classes are sent to them by value
with cloudpickle; when that is not possible (cloudpickle missing, or the
class holds something unpicklable), ``validate`` says so, with the fix.
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from nasframe.errors import ConfigError

PLUGIN = "in-process"

#: kind -> {name: class}, in registration order
_CLASSES: dict[str, dict[str, type]] = {}


def _kind(cls: type) -> str:
    from nasframe.backends import DeployCheck, LatencyBackend
    from nasframe.executor import Executor
    from nasframe.objective import Objective
    from nasframe.space import SearchSpace
    from nasframe.strategy import Strategy

    for base, kind in ((SearchSpace, "search_space"), (Objective, "objective"),
                       (Strategy, "strategy"), (Executor, "executor"),
                       (LatencyBackend, "latency_backend"), (DeployCheck, "deploy_check")):
        if isinstance(cls, type) and issubclass(cls, base):
            return kind
    raise TypeError(f"{cls!r} is not a search space, objective, strategy, executor, latency "
                    "backend or deploy check class")


def _add(plugins: Any, kind: str, cls: type) -> None:
    registry = plugins.registry(kind)
    name = cls.name
    if name in registry and registry.entry(name).plugin == PLUGIN:
        registry._entries.pop(name)                   # a redefinition replaces the old one
    registry._current_plugin = (PLUGIN, "")
    try:
        registry.add(cls)
    finally:
        registry._current_plugin = ("<unknown>", "")


def register(cls: type) -> type:
    """Register a component class in this process (usable as a class decorator)."""
    from nasframe.plugins import get_plugins

    kind = _kind(cls)
    _add(get_plugins(), kind, cls)
    _CLASSES.setdefault(kind, {})[cls.name] = cls
    return cls


def objective(fn: Callable[..., Any] | None = None, *, name: str | None = None,
              direction: str = "min", kind: str = "proxy", unit: str = "",
              backend: str = "python", cost: float = 1.0,
              requires: tuple = (), reports_intermediate: bool = False) -> Any:
    """Turn ``fn(candidate)`` or ``fn(candidate, ctx)`` into a registered objective named
    ``name`` (default: the function's name). It returns a number or a ``nasframe.Value``;
    with ``reports_intermediate=True`` it may call ``candidate.report(value, step)`` and
    raise ``nasframe.TrialPruned`` when ``candidate.should_prune()``."""

    if kind not in ("proxy", "measured"):
        raise ValueError(f"@nasframe.objective(kind={kind!r}): kind is 'proxy' (an estimate) "
                         "or 'measured' (a measurement)")
    if direction not in ("min", "max"):
        raise ValueError(f"@nasframe.objective(direction={direction!r}): direction is 'min' "
                         "or 'max'")

    def make(f: Callable[..., Any]) -> type:
        from nasframe.objective import Objective

        takes_ctx = len(inspect.signature(f).parameters) >= 2
        attrs: dict[str, Any] = {
            "name": name or f.__name__, "direction": direction, "kind": kind, "unit": unit,
            "backend": backend, "cost": cost, "requires": tuple(requires),
            "reports_intermediate": bool(reports_intermediate),
            "__doc__": inspect.getdoc(f) or f"The in-process objective {f.__name__}.",
            "function": staticmethod(f),
            "evaluate": (lambda self, candidate, ctx: self.function(candidate, ctx)) if takes_ctx
            else (lambda self, candidate, ctx: self.function(candidate)),
        }
        cls = type(f"{f.__name__}_objective", (Objective,), attrs)
        cls.__module__ = f.__module__
        return register(cls)

    return make(fn) if fn is not None else make


class _Plugin:
    """The hook implementations that register a set of in-process classes (in a worker)."""

    def __init__(self, classes: dict[str, list[type]]):
        self.classes = classes

    def install(self, plugins: Any) -> None:
        for kind, classes in self.classes.items():
            for cls in classes:
                _add(plugins, kind, cls)


def used_by(config: Any, plugins: Any) -> list[tuple[str, str]]:
    """``(kind, name)`` of the in-process components an experiment config names."""
    wanted = [("search_space", config.search_space.name), ("strategy", config.strategy.name),
              ("executor", config.executor.name)]
    wanted += [("objective", o.name) for o in config.objectives]
    wanted += [("objective", c.key) for c in config.parsed_constraints]
    out = []
    for kind, name in wanted:
        registry = plugins.registry(kind)
        if name in registry and registry.entry(name).plugin == PLUGIN:
            out.append((kind, name))
    return list(dict.fromkeys(out))


def payload(config: Any, plugins: Any) -> bytes | None:
    """The in-process classes an experiment uses, pickled by value for worker processes
    (None when it uses none); a ConfigError saying why when they cannot be sent."""
    used = used_by(config, plugins)
    if not used:
        return None
    names = ", ".join(f"{k.replace('_', ' ')} '{n}'" for k, n in used)
    try:
        import cloudpickle
    except ImportError:
        raise ConfigError(
            f"executor '{config.executor.name}': {names} {'is' if len(used) == 1 else 'are'} "
            "registered in this process (a notebook or script), and worker processes can only "
            "get them pickled by value with cloudpickle, which is not installed: `pip install "
            "cloudpickle`, or use `executor: {name: inline}`") from None
    classes: dict[str, list[type]] = {}
    for kind, name in used:
        classes.setdefault(kind, []).append(plugins.registry(kind).entry(name).cls)
    # classes of __main__ travel by value anyway; those of a notebook helper module or a
    # test file too, as a worker may not be able to import that module
    modules = {sys.modules[c.__module__] for cs in classes.values() for c in cs
               if c.__module__ in sys.modules and c.__module__ != "__main__"
               and not c.__module__.partition(".")[0].startswith("nasframe")}
    registered = []
    try:
        for module in modules:
            try:
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
            except ValueError:       # a module cloudpickle cannot take by value
                pass
        return cloudpickle.dumps(_Plugin(classes))
    except Exception as err:  # noqa: BLE001 - anything unpicklable
        raise ConfigError(
            f"executor '{config.executor.name}': {names} cannot be sent to worker processes "
            f"({type(err).__name__}: {err}); use `executor: {{name: inline}}`, or move the "
            "component into a module and load it with NASFRAME_PLUGIN_MODULES") from None
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def install(blob: bytes | None, plugins: Any) -> None:
    """In a worker: register the classes a driver sent (see :func:`payload`)."""
    if blob is None:
        return
    import pickle

    plugin = pickle.loads(blob)   # written by this run's own driver, never a user file
    plugin.install(plugins)
