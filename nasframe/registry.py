"""Typed registries handed to plugin hooks."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nasframe.errors import ConfigError, InvalidParams, PluginError, unknown_name
from nasframe.params import ParamError, Params, parse_params

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: its class and the plugin that registered it."""

    name: str
    cls: type[T]
    plugin: str
    version: str

    def missing(self) -> list[str]:
        """Modules the component needs that are not installed (empty: available)."""
        return self.cls.missing_dependencies()  # type: ignore[attr-defined]

    def install_hint(self) -> str:
        hint = getattr(self.cls, "install_hint", None)
        return hint or f"pip install {' '.join(self.missing())}"


class Registry(Generic[T]):
    """Components of one kind, by name.

    ``add`` is called by plugins from their hook; it rejects a class that is not
    a concrete subclass of ``base``, one without a ``name``, one whose ``Params``
    is not a :class:`nasframe.params.Params` model, or a name that is already
    taken (naming both plugins). ``create`` validates the YAML params against
    the class's ``Params`` and makes the component.
    """

    def __init__(self, kind: str, base: type[T]):
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry[T]] = {}
        self._current_plugin = ("<unknown>", "")

    # -- used by plugins -------------------------------------------------
    def add(self, cls: type[T], name: str | None = None) -> type[T]:
        plugin, version = self._current_plugin
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a {self.kind}, but it is not a "
                f"subclass of {self.base.__module__}.{self.base.__qualname__}"
            )
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(cls.__abstractmethods__))
            raise PluginError(
                f"plugin '{plugin}' registered {self.kind} {cls.__qualname__}, which is abstract "
                f"(implement: {missing})"
            )
        name = name or getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"plugin '{plugin}' registered {self.kind} {cls.__qualname__} without a name; "
                "set the class attribute `name = \"...\"`"
            )
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and issubclass(params, Params)):
            raise PluginError(
                f"plugin '{plugin}' registered {self.kind} {cls.__qualname__} whose `Params` is "
                f"{params!r}, not a subclass of nasframe.params.Params; declare the params as "
                "`class Params(nasframe.Params): ...`"
            )
        if name in self._entries:
            other = self._entries[name]
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by plugin '{other.plugin}' "
                f"({other.cls.__module__}.{other.cls.__qualname__}) and by plugin '{plugin}' "
                f"({cls.__module__}.{cls.__qualname__}); rename one or disable a plugin "
                "with NASFRAME_DISABLE_PLUGINS"
            )
        self._entries[name] = Entry(name, cls, plugin, version)
        return cls

    # -- used by the core ------------------------------------------------
    def get(self, name: str, where: str | None = None) -> type[T]:
        """The class registered as ``name``: a ConfigError (with the choices) if
        there is none, or if its dependencies are not installed (with the fix).
        ``where`` locates the component in the experiment (e.g. ``objectives[0]``)."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise ConfigError(unknown_name(self.kind, name, self._entries,
                                           f"{where}.name" if where else None,
                                           self.known_as(name))) from None
        missing = entry.missing()
        if missing:
            loc = f"{where}: " if where else ""
            raise ConfigError(f"{loc}{self.kind} '{name}' needs {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not installed; install "
                              f"with: {entry.install_hint()}")
        return entry.cls

    def known_as(self, name: str) -> list[str]:
        """Hints for a name from another tool (the components' ``known_as``)."""
        key = str(name).strip().lower().replace("-", "").replace("_", "")
        hints = []
        for e in self._entries.values():
            for alias, hint in (getattr(e.cls, "known_as", None) or {}).items():
                if alias.lower().replace("-", "").replace("_", "") == key:
                    hints.append(hint)
        return hints

    def entry(self, name: str) -> Entry[T]:
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, name: str, params: Any, where: str | None = None) -> Params:
        """``params`` validated against ``name``'s ``Params`` (a ConfigError per problem)."""
        cls = self.get(name, where)
        return parse_params(cls.Params, params,  # type: ignore[attr-defined]
                            f"{where}.params" if where else f"{self.kind} '{name}' params")

    def create(self, name: str, params: Any = None, where: str | None = None,
               **runtime: Any) -> T:
        """Make ``name`` with validated ``params`` (and ``runtime`` arguments such
        as a strategy's problem and seed, passed by keyword beside ``params``); bad params
        are a ConfigError naming the field. ``params``, ``problem``, ``seed`` and
        ``history`` are therefore not usable as parameter names."""
        cls = self.get(name, where)
        parsed = self.parse(name, params, where)
        prefix = f"{where}.params" if where else f"{self.kind} '{name}' params"
        try:
            return cls(params=parsed, **runtime)
        except ParamError as err:
            raise ConfigError(f"{prefix}.{err.field}: {err.message}") from err
        except InvalidParams as err:      # nested params the component validated itself
            raise InvalidParams(*(f"{prefix}.{p}" for p in err.problems)) from None
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where or self.kind}: {self.kind} '{name}' rejected its params "
                              f"{parsed.to_dict()}: {err}") from err


# ---------------------------------------------------------------- op handles
#: A MAC-count handle: ``handle(inputs, outputs) -> MACs`` where ``inputs`` and
#: ``outputs`` are the traced node's ``torch._C.Value`` lists (fvcore's form).
OpHandle = Callable[[list[Any], list[Any]], float]


class OpHandles:
    """MAC-count handles for traced ops, registered by the plugin that owns each op.

    A plugin whose models contain a custom op (an ``autograd.Function`` appears
    in a trace as ``prim::PythonOp.<ClassName>``) teaches the ``gmacs``
    objective to count it with the ``register_op_handles`` hook::

        @hookimpl
        def register_op_handles(handles):
            handles.add("prim::PythonOp.SelectiveScan", selective_scan_macs)
    """

    def __init__(self) -> None:
        self._handles: dict[str, tuple[OpHandle, str]] = {}
        self._current_plugin = ("<unknown>", "")

    def add(self, op_name: str, handle: OpHandle) -> None:
        plugin = self._current_plugin[0]
        if not isinstance(op_name, str) or "::" not in op_name:
            raise PluginError(f"plugin '{plugin}' registered an op handle for {op_name!r}; an op "
                              "name looks like 'aten::op' or 'prim::PythonOp.Name'")
        if not callable(handle):
            raise PluginError(f"plugin '{plugin}' registered a handle for {op_name!r} that is "
                              f"not callable: {handle!r}")
        if op_name in self._handles:
            other = self._handles[op_name][1]
            raise PluginError(f"op handle '{op_name}' is registered twice: by plugin '{other}' and "
                              f"by plugin '{plugin}'; one plugin owns an op")
        self._handles[op_name] = (handle, plugin)

    def as_dict(self) -> dict[str, OpHandle]:
        return {k: h for k, (h, _) in self._handles.items()}

    def owner(self, op_name: str) -> str:
        return self._handles[op_name][1]

    def names(self) -> list[str]:
        return sorted(self._handles)

    def _remove(self, names: set[str]) -> None:
        for n in names:
            self._handles.pop(n, None)
