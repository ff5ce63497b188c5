"""Objectives: what a candidate is scored on, and where the number came from."""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from nasframe.backends import Deferred
from nasframe.params import Component

if TYPE_CHECKING:
    from nasframe.candidate import Candidate
    from nasframe.capabilities import Capability
    from nasframe.context import Context
    from nasframe.space import SearchSpace

Direction = Literal["min", "max"]
Kind = Literal["proxy", "measured"]


@dataclass(frozen=True)
class Provenance:
    """Where a value came from.

    ``kind`` is ``"proxy"`` (computed from the architecture or a cheap model of
    the truth: parameter count, MACs, transformer count, short-training PSNR) or
    ``"measured"`` (timed or scored on real hardware/data); ``backend`` names
    the tool (``fvcore``, ``torch``, ``qai_hub``) and ``device`` the hardware.
    ``details`` holds anything else worth keeping (threads, ops not counted).
    """

    kind: Kind
    backend: str
    device: str = "n/a"
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("proxy", "measured"):
            raise ValueError(f"provenance kind must be 'proxy' or 'measured', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "backend": self.backend, "device": self.device,
                "details": dict(self.details)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        return cls(d["kind"], d["backend"], d.get("device", "n/a"), dict(d.get("details", {})))

    def short(self) -> str:
        return f"{self.kind}:{self.backend}@{self.device}"


@dataclass(frozen=True)
class Value:
    """An objective's result: the number and, optionally, extra provenance details."""

    value: float
    details: dict[str, Any] = field(default_factory=dict)


class Objective(Component, abc.ABC):
    """One number per candidate, minimised or maximised.

    Subclasses set ``name``, ``direction`` (the default; YAML may override it),
    ``kind`` (``proxy`` or ``measured``), their ``Params`` model, and implement
    :meth:`evaluate`. ``cost`` orders evaluation: the runner evaluates cheap
    objectives first, so a candidate that breaks a constraint on a cheap one
    skips the expensive ones.

    ``requires`` lists the :mod:`capabilities <nasframe.capabilities>` the
    search space must provide (override :meth:`requirements` when they depend
    on the params, and :meth:`check_space` for finer checks); ``nasframe
    validate`` rejects a pairing that lacks one, and the space prepares exactly
    what the experiment's objectives require.
    """

    name: ClassVar[str]
    direction: ClassVar[Direction] = "min"
    kind: ClassVar[Kind] = "proxy"
    backend: ClassVar[str] = "python"
    unit: ClassVar[str] = ""
    cost: ClassVar[float] = 1.0
    requires: ClassVar[tuple[type[Capability], ...]] = ()
    #: seconds between two :meth:`collect` calls while a device job runs
    poll_every: ClassVar[float] = 5.0
    #: True when :meth:`evaluate` reports intermediate values (``candidate.report``) and
    #: stops when ``candidate.should_prune()`` says so (see :mod:`nasframe.pruning`)
    reports_intermediate: ClassVar[bool] = False

    def __init__(self, params: Any = None, **kwargs: Any):
        self._init_params(params, kwargs)

    def requirements(self) -> tuple[type[Capability], ...]:
        """The capabilities the search space must provide (default: :attr:`requires`)."""
        return tuple(self.requires)

    def check_space(self, space: SearchSpace) -> str | None:
        """A reason this objective cannot score ``space``'s candidates beyond a
        missing capability (e.g. an unknown model part), naming the param; None if fine."""
        return None

    def prepare(self, space: SearchSpace, ctx: Context) -> None:
        """One-time setup (load data, a reference model) before the search."""

    def device(self, ctx: Context) -> str:
        """The hardware the value is computed on (``n/a`` for pure proxies)."""
        return "n/a"

    def provenance(self, ctx: Context, details: dict[str, Any] | None = None) -> Provenance:
        return Provenance(self.kind, self.backend, self.device(ctx), dict(details or {}))

    @abc.abstractmethod
    def evaluate(self, candidate: Candidate, ctx: Context) -> float | Value | Deferred:
        """Score one candidate. Raise to mark the trial failed. An objective whose value
        comes from a device job returns a :class:`~nasframe.backends.Deferred` request and
        implements :meth:`submit` and :meth:`collect` (called by the runner, in the driver)."""

    def submit(self, request: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Submit the job of a :class:`~nasframe.backends.Deferred` value; its reference."""
        raise NotImplementedError(f"objective '{self.name}' returned a deferred value but "
                                  "cannot submit jobs")

    def collect(self, job: dict[str, Any], ctx: Context) -> float | Value | None:
        """The job's value once done, None while it runs (raise when it failed)."""
        raise NotImplementedError(f"objective '{self.name}' cannot collect jobs")

    def finish(self, out: float | Value, ctx: Context) -> tuple[float, Provenance]:
        """A raw result as ``(value, provenance)``; a non-finite value is an error."""
        details = {}
        if isinstance(out, Value):
            out, details = out.value, out.details
        try:
            value = float(out)
        except (TypeError, ValueError):
            raise ValueError(f"objective '{self.name}' returned {type(out).__name__} "
                             f"{str(out)[:60]!r}, not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"objective '{self.name}' returned {value}, not a finite number")
        return value, self.provenance(ctx, details)

    def __call__(self, candidate: Candidate, ctx: Context) -> tuple[float, Provenance] | Deferred:
        out = self.evaluate(candidate, ctx)
        if isinstance(out, Deferred):
            return out
        return self.finish(out, ctx)
