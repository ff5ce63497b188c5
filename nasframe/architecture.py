"""Architectures: immutable decision -> value mappings with a canonical form."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

Value = bool | int | float | str


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        raise TypeError("architecture values must be scalars or lists, not mappings")
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if not isinstance(value, (bool, int, float, str)) or value is None:
        raise TypeError(f"unsupported architecture value {value!r} ({type(value).__name__})")
    return value


class Architecture(Mapping[str, Any]):
    """An immutable mapping of decision name -> value.

    Two architectures with the same decisions and values are equal, hash equal
    and share :attr:`id`, a short stable hash of the canonical JSON form
    (keys sorted, no whitespace). Values are bools, ints, floats, strings, or
    tuples of those.
    """

    __slots__ = ("_data", "_json", "_id")

    def __init__(self, data: Mapping[str, Any] | None = None, **kwargs: Any):
        merged = dict(data or {}, **kwargs)
        for key in merged:
            if not isinstance(key, str):
                raise TypeError(f"decision names must be strings, got {key!r}")
        frozen = {k: _freeze(merged[k]) for k in sorted(merged)}
        object.__setattr__(self, "_data", frozen)
        text = json.dumps(frozen, sort_keys=True, separators=(",", ":"))
        object.__setattr__(self, "_json", text)
        object.__setattr__(self, "_id", hashlib.sha256(text.encode()).hexdigest()[:12])

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Architecture is immutable")

    def __reduce__(self):  # pickles (for process executors) as its canonical JSON
        return (Architecture.from_json, (self._json,))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(self._json)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Architecture):
            return self._json == other._json
        return NotImplemented

    def __repr__(self) -> str:
        return f"Architecture({self._json})"

    @property
    def id(self) -> str:
        """Short stable id: the first 12 hex digits of SHA-256 of :meth:`to_json`."""
        return self._id

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact)."""
        return self._json

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON/YAML-friendly copy (tuples become lists)."""
        return json.loads(self._json)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls(json.loads(text))

    def replace(self, **changes: Any) -> Architecture:
        """A new architecture with some decisions changed."""
        return Architecture({**self._data, **changes})
