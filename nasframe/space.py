"""Search spaces: decisions, sampling, validation, encoding, models and graphs."""
from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from nasframe.architecture import Architecture
from nasframe.params import Component

if TYPE_CHECKING:
    import networkx as nx
    import torch

    from nasframe.capabilities import Capability
    from nasframe.context import Context


# ---------------------------------------------------------------- decisions
class Decision(abc.ABC):
    """One choice of a search space. Subclasses: Categorical, Integer, Boolean."""

    name: str

    @abc.abstractmethod
    def values(self) -> list[Any]:
        """Every allowed value, in a fixed order."""

    @property
    def count(self) -> int:
        """Number of allowed values."""
        return len(self.values())

    def value_at(self, i: int) -> Any:
        """The ``i``-th allowed value (``0 <= i < count``)."""
        return self.values()[i]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.value_at(int(rng.integers(self.count)))

    def contains(self, value: Any) -> bool:
        return any(_same(value, v) for v in self.values())

    @property
    def width(self) -> int:
        """Length of this decision's slice of :meth:`SearchSpace.encode`."""
        return 1

    def index(self, value: Any) -> int:
        """Position of ``value`` in :meth:`values`; a ValueError naming the decision if absent."""
        for i, v in enumerate(self.values()):
            if _same(value, v):
                return i
        raise ValueError(f"decision '{self.name}': {value!r} is not one of {self.values()}")

    def encode(self, value: Any) -> list[float]:
        n, i = self.count, self.index(value)
        return [0.0] if n == 1 else [i / (n - 1)]

    def decode(self, code: Sequence[float]) -> Any:
        n = self.count
        i = math.floor(float(code[0]) * (n - 1) + 0.5) if n > 1 else 0
        return self.value_at(min(max(i, 0), n - 1))

    def describe(self) -> str:
        return f"{self.name}: {self.values()}"


def _same(a: Any, b: Any) -> bool:
    # 3 == 3.0 is fine for numbers, but True must not match 1
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@dataclass(frozen=True)
class Categorical(Decision):
    """An unordered choice; encoded one-hot."""

    name: str
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(tuple(c) if isinstance(c, list) else c
                                                  for c in self.choices))
        if not self.choices:
            raise ValueError(f"decision '{self.name}' has no choices")
        for i, c in enumerate(self.choices):
            if any(_same(c, d) for d in self.choices[:i]):
                raise ValueError(f"decision '{self.name}': choice {c!r} appears twice")

    def values(self) -> list[Any]:
        return list(self.choices)

    @property
    def width(self) -> int:
        return len(self.choices)

    def encode(self, value: Any) -> list[float]:
        idx = self.index(value)
        return [1.0 if i == idx else 0.0 for i in range(len(self.choices))]

    def decode(self, code: Sequence[float]) -> Any:
        return self.choices[int(np.argmax(np.asarray(code, dtype=float)))]


@dataclass(frozen=True)
class Integer(Decision):
    """An ordered integer in ``[low, high]`` with ``step``; encoded to [0, 1]."""

    name: str
    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        if self.high < self.low or self.step < 1:
            raise ValueError(f"decision '{self.name}': need low <= high and step >= 1")

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    # O(1) versions of the list-based methods (sample, encode and decode use them):
    # an Integer may span millions of values
    @property
    def count(self) -> int:
        return (self.high - self.low) // self.step + 1

    def value_at(self, i: int) -> int:
        return self.low + self.step * i

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not value.is_integer():
            return False
        v = int(value)
        return self.low <= v <= self.high and (v - self.low) % self.step == 0

    def index(self, value: Any) -> int:
        if not self.contains(value):
            raise ValueError(f"decision '{self.name}': {value!r} is not in "
                             f"{self.low}..{self.high} (step {self.step})")
        return (int(value) - self.low) // self.step

    def describe(self) -> str:
        step = f" step {self.step}" if self.step != 1 else ""
        return f"{self.name}: {self.low}..{self.high}{step}"


@dataclass(frozen=True)
class Boolean(Decision):
    """A yes/no choice; encoded 0/1."""

    name: str

    def values(self) -> list[bool]:
        return [False, True]


# ------------------------------------------------------------ search space
class SearchSpace(Component, abc.ABC):
    """A family of architectures and how to build them.

    Lifecycle: the runner instantiates the space with the YAML ``params``
    (validated against the nested ``Params`` model into ``self.params``),
    calls :meth:`prepare` once with the capabilities the experiment's
    objectives need (train teachers, distil components; cache by content hash
    through ``ctx.cache``), then, for each architecture a strategy proposes,
    :meth:`validate` and, lazily, :meth:`build`.

    Subclasses implement :meth:`decisions` and :meth:`build`; they may override
    :meth:`check` (extra validity rules with a reason), :meth:`canonicalize`
    (map equivalent encodings to one architecture), :meth:`sample` (when
    rejection sampling would skew the distribution), :meth:`neighbours`,
    :meth:`graph`, :meth:`reference_architectures`, :meth:`example_inputs` and
    :meth:`prepare`. What a space offers beyond models (validation data, a
    teacher, model parts, ...) it declares by subclassing the capabilities of
    :mod:`nasframe.capabilities`.

    A subclass that needs derived state overrides ``__init__``, calls
    ``super().__init__(params, **kwargs)`` first and reads ``self.params``.
    """

    name: ClassVar[str]
    #: a default input shape for :meth:`example_inputs` (objectives may override it)
    input_shape: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, params: Any = None, **kwargs: Any):
        self._init_params(params, kwargs)

    # -- to implement ----------------------------------------------------
    @abc.abstractmethod
    def decisions(self) -> Sequence[Decision]:
        """The decisions, in a fixed order (which fixes the encoding)."""

    @abc.abstractmethod
    def build(self, arch: Architecture) -> torch.nn.Module:
        """A freshly initialised model for a valid architecture."""

    # -- optional hooks --------------------------------------------------
    def check(self, arch: Architecture) -> str | None:
        """Extra validity rules: return a reason if ``arch`` cannot be built, else None."""
        return None

    def canonicalize(self, arch: Architecture) -> Architecture:
        """The canonical form of ``arch`` (e.g. unused decisions reset); identity by default.

        :meth:`decode` applies it, so model-based strategies land on valid architectures.
        """
        return arch

    def reference_architectures(self) -> dict[str, Architecture]:
        """Named baselines evaluated before the search (e.g. ``teacher``)."""
        return {}

    def prepare(self, ctx: Context, needs: frozenset[type[Capability]] = frozenset()) -> None:
        """One-time work before the search; cache artifacts with ``ctx.cache``.

        ``needs`` holds the capabilities the experiment's objectives require: do
        only the work they need (e.g. train a teacher only when
        :class:`~nasframe.capabilities.TrainedWeights` is in it). Called in
        every worker process too, where it should load what the driver cached.
        """

    def example_inputs(self, arch: Architecture, input_shape: Sequence[int] | None = None,
                       batch_size: int = 1) -> tuple[Any, ...]:
        """Inputs for one forward pass (used by ``gmacs`` and ``latency``).

        ``input_shape``, when given, is the full shape including the batch
        dimension and ``batch_size`` is ignored; otherwise the space's
        :attr:`input_shape` (without batch) is used with ``batch_size``.
        """
        import torch

        shape = tuple(input_shape) if input_shape else self.input_shape
        if shape is None:
            raise ValueError(f"search space '{self.name}' has no default input shape; "
                             "give `input_shape` in the objective's params")
        if input_shape is None:
            shape = (batch_size, *shape)
        return (torch.randn(*shape),)

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """The block graph: nodes carry ``kind``, ``channels`` and ``resolution``.

        The default is a chain of the built model's top-level children.
        """
        import networkx as nx

        g = nx.DiGraph()
        prev = None
        for name, child in self.build(arch).named_children():
            g.add_node(name, kind=type(child).__name__, channels=None, resolution=None)
            if prev is not None:
                g.add_edge(prev, name)
            prev = name
        return g

    # -- provided --------------------------------------------------------
    def decision_map(self) -> dict[str, Decision]:
        return {d.name: d for d in self.decisions()}

    def validate(self, arch: Architecture) -> str | None:
        """None when ``arch`` belongs to this space, else the reason it does not."""
        decisions = self.decision_map()
        missing = [n for n in decisions if n not in arch]
        extra = [n for n in arch if n not in decisions]
        if missing:
            return f"missing decisions: {', '.join(missing)}"
        if extra:
            return f"unknown decisions: {', '.join(extra)} (this space has: {', '.join(decisions)})"
        for name, dec in decisions.items():
            if not dec.contains(arch[name]):
                return f"decision '{name}' = {arch[name]!r} is not allowed ({dec.describe()})"
        return self.check(arch)

    def is_valid(self, arch: Architecture) -> bool:
        return self.validate(arch) is None

    def sample(self, rng: np.random.Generator, max_tries: int = 1000) -> Architecture:
        """A valid architecture drawn uniformly per decision (rejection sampling).

        Spaces whose decisions matter only conditionally may override it.
        """
        decisions = self.decisions()
        reason = None
        for _ in range(max_tries):
            arch = Architecture({d.name: d.sample(rng) for d in decisions})
            reason = self.validate(arch)
            if reason is None:
                return arch
        raise RuntimeError(f"search space '{self.name}': no valid sample in {max_tries} tries "
                           f"(last reason: {reason})")

    @property
    def encoding_width(self) -> int:
        return sum(d.width for d in self.decisions())

    def encode(self, arch: Architecture) -> np.ndarray:
        """A float vector: one-hot for categoricals, [0, 1] for integers and booleans."""
        out: list[float] = []
        for d in self.decisions():
            out.extend(d.encode(arch[d.name]))
        return np.asarray(out, dtype=float)

    def decode(self, vector: Sequence[float]) -> Architecture:
        """The architecture nearest to an encoded vector (inverse of :meth:`encode`)."""
        vector = np.asarray(vector, dtype=float)
        if vector.shape != (self.encoding_width,):
            raise ValueError(f"expected a vector of length {self.encoding_width}, got {vector.shape}")
        values, i = {}, 0
        for d in self.decisions():
            values[d.name] = d.decode(vector[i:i + d.width])
            i += d.width
        return self.canonicalize(Architecture(values))

    def from_indices(self, indices: Sequence[int]) -> Architecture | None:
        """The canonical architecture whose decision ``i`` takes value number
        ``indices[i]``, or None when that is not a valid architecture of this space.

        The integer encoding used by evolutionary and model-based strategies
        (:meth:`encode` is the one-hot one)."""
        try:
            arch = Architecture({d.name: d.value_at(int(i))
                                 for d, i in zip(self.decisions(), indices, strict=True)})
            arch = self.canonicalize(arch)
        except (ValueError, IndexError, TypeError, KeyError):
            return None
        return arch if self.validate(arch) is None else None

    def to_indices(self, arch: Architecture) -> list[int] | None:
        """Each decision's value number in ``arch`` (canonicalised), or None when it is
        not a valid architecture of this space. Inverse of :meth:`from_indices`."""
        try:
            arch = self.canonicalize(arch)
            if self.validate(arch) is not None:
                return None
            return [int(d.index(arch[d.name])) for d in self.decisions()]
        except (ValueError, KeyError, TypeError):
            return None

    def neighbours(self, arch: Architecture,
                   rng: np.random.Generator | None = None) -> list[Architecture]:
        """Valid architectures one move away, for local search and mutation.

        The default move changes one decision: an Integer by one step, a
        Categorical or Boolean to any other value (at most 64 values drawn with
        ``rng`` when a decision has more). Spaces whose validity couples
        decisions (so that no single change leads out of a region) override it
        to add the coupled moves. Canonical, deduplicated, ``arch`` excluded."""
        x = self.to_indices(arch)
        if x is None:
            return []
        rng = rng if rng is not None else np.random.default_rng(0)
        out: dict[str, Architecture] = {}
        own = self.canonicalize(arch).id
        for i, d in enumerate(self.decisions()):
            c = d.count
            if isinstance(d, Integer):
                options = [j for j in (x[i] - 1, x[i] + 1) if 0 <= j < c]
            elif c <= 64:
                options = [j for j in range(c) if j != x[i]]
            else:
                options = [int(j) for j in rng.choice(c, 64, replace=False) if j != x[i]]
            for j in options:
                y = list(x)
                y[i] = j
                a = self.from_indices(y)
                if a is not None and a.id != own:
                    out.setdefault(a.id, a)
        return list(out.values())

    @property
    def size(self) -> int:
        """Number of decision combinations (valid or not): an upper bound."""
        return math.prod(d.count for d in self.decisions())

    def enumerate(self, limit: int | None = None) -> Iterator[Architecture]:
        """Every valid architecture, in a fixed (lexicographic) order."""
        decisions = self.decisions()
        count = 0
        for combo in itertools.product(*(d.values() for d in decisions)):
            arch = Architecture({d.name: v for d, v in zip(decisions, combo)})
            if self.check(arch) is None:
                yield arch
                count += 1
                if limit is not None and count >= limit:
                    return

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "decisions": [d.describe() for d in self.decisions()],
                "size": self.size}
