"""Typed registries handed to plugin hooks."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nasframe.errors import ConfigError, PluginError, unknown_name

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component: its class and the plugin that registered it."""

    name: str
    cls: type[T]
    plugin: str
    version: str


class Registry(Generic[T]):
    """Components of one kind, by name.

    ``add`` is called by plugins from their hook; it rejects a class that is not
    a concrete subclass of ``base``, one without a ``name``, or a name that is
    already taken (naming both plugins).
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
        try:
            return self._entries[name].cls
        except KeyError:
            raise ConfigError(unknown_name(self.kind, name, self._entries, where)) from None

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

    def create(self, name: str, params: dict[str, Any] | None = None, where: str | None = None,
               **kwargs: Any) -> T:
        """Instantiate ``name`` with ``params``; unknown or bad params are a ConfigError."""
        cls = self.get(name, where)
        params = dict(params or {})
        check_params(cls, params, f"{where}.params" if where else f"{self.kind} '{name}' params",
                     reserved=set(kwargs))
        try:
            return cls(**kwargs, **params)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where or self.kind}: {self.kind} '{name}' rejected its params "
                              f"{params}: {err}") from err


def accepted_params(cls: type) -> tuple[list[str], bool]:
    """The keyword parameters ``cls.__init__`` accepts, and whether it takes ``**kwargs``."""
    if cls.__init__ is object.__init__:
        return [], False
    sig = inspect.signature(cls.__init__)
    names, var_kw = [], False
    for p in list(sig.parameters.values())[1:]:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def check_params(cls: type, params: dict[str, Any], where: str, reserved: set[str] = frozenset()) -> None:
    names, var_kw = accepted_params(cls)
    names = [n for n in names if n not in reserved]
    if var_kw:
        return
    problems = []
    for key in params:
        if key not in names:
            from nasframe.errors import did_you_mean
            problems.append(
                f"{where}.{key}: unknown parameter{did_you_mean(key, names)} "
                f"accepted: {', '.join(names) if names else 'none'}"
            )
    if problems:
        raise ConfigError(*problems)
