"""Latency backends, and objective values that a device job delivers later.

A *latency backend* times a candidate somewhere: ``torch`` (the model in this
process), ``onnxruntime`` (its exported graph on this CPU), ``qai_hub`` (a
phone in Qualcomm's device farm), or whatever a plugin registers with the
``register_latency_backends`` hook. The ``latency`` objective takes its
``backend`` by name and its ``options`` (validated against the backend's
``Params``).

Synchronous backends implement :meth:`LatencyBackend.measure`. Asynchronous
ones (``asynchronous = True``: slow, paid device jobs) implement
:meth:`LatencyBackend.submit` and :meth:`LatencyBackend.poll`: the objective
then returns a :class:`Deferred` value from the worker, and the runner — in
the driver, which owns the store — submits the job, stores its id with the
trial at once (a resumed run re-attaches to it instead of paying again),
and polls every job of the batch together until each has a value.
"""
from __future__ import annotations

import abc
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from nasframe.errors import NasframeError
from nasframe.params import Component

if TYPE_CHECKING:
    import torch

    from nasframe.context import Context
    from nasframe.deploy import ExportResult
    from nasframe.objective import Value


class DeviceJobError(NasframeError):
    """A device job failed; ``url`` links to it when the service has a page for it."""

    def __init__(self, message: str, url: str | None = None):
        self.url = url
        super().__init__(message + (f" ({url})" if url else ""))


@dataclass(frozen=True)
class Deferred:
    """An objective's value that a device job will deliver.

    ``request`` is plain JSON data saying what to submit (e.g. the exported
    graph's path and hash, the device, the options); equal requests are the
    same job (:attr:`key`), which is how a resumed run finds the job it
    already paid for. ``details`` are kept with the value's provenance.
    """

    request: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        text = json.dumps(self.request, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class LatencyBackend(Component, abc.ABC):
    """Where and how a candidate is timed (see the module docstring).

    ``export_format`` is the format the backend times (``"onnx"``), or None when
    it times the PyTorch module itself; the ``latency`` objective exports the
    model (checked against PyTorch, cached by the graph's hash) and passes the
    :class:`~nasframe.deploy.ExportResult`.
    """

    name: ClassVar[str]
    asynchronous: ClassVar[bool] = False
    export_format: ClassVar[str | None] = None
    #: seconds between two polls of a device job
    poll_every: ClassVar[float] = 5.0
    #: times in this process and can run two models alternately (:meth:`runner`): what
    #: the ``latency`` objective's ``anchor`` needs
    paired: ClassVar[bool] = False

    def __init__(self, params: Any = None, **kwargs: Any):
        self._init_params(params, kwargs)

    @abc.abstractmethod
    def device(self) -> str:
        """The hardware, in words (part of every value's provenance)."""

    def runtime(self) -> str:
        """The software that runs the model (e.g. ``onnxruntime 1.32.0``)."""
        return self.name

    def measure(self, model: torch.nn.Module, inputs: tuple[Any, ...], ctx: Context,
                exported: ExportResult | None = None) -> Value:
        """Time one forward pass (synchronous backends): a Value in milliseconds."""
        raise NotImplementedError(f"latency backend '{self.name}' is asynchronous: "
                                  "it submits device jobs")

    def runner(self, model: torch.nn.Module, inputs: tuple[Any, ...], ctx: Context,
               exported: ExportResult | None = None) -> tuple[Callable[[], None], dict[str, Any]]:
        """One forward pass as a callable, set up once (a session, threads, the inputs), for
        timing two models alternately (:func:`paired_times`; ``paired`` backends), and the
        settings :meth:`measure` reports beside its times (threads, runtime, ...). The call
        returns when the pass is done (a GPU synchronised)."""
        raise NotImplementedError(f"latency backend '{self.name}' does not time two models "
                                  "alternately (paired = False)")

    def request(self, exported: ExportResult, ctx: Context) -> dict[str, Any]:
        """The job request for an exported model (asynchronous backends)."""
        raise NotImplementedError

    def submit(self, request: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """Submit a job; returns its reference (JSON data with at least ``id``). Runs in
        the driver process; a cached result may be returned as ``{"id": ..., "cached": ...}``."""
        raise NotImplementedError

    def poll(self, job: dict[str, Any], ctx: Context) -> Value | None:
        """The job's value in milliseconds once it is done, None while it runs; raises
        :class:`DeviceJobError` (with the job's URL) when it failed."""
        raise NotImplementedError


def time_passes(run: Callable[[], None], warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` passes of a runner after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def paired_times(first: Callable[[], None], second: Callable[[], None], warmup: int,
                 repeats: int) -> tuple[list[float], list[float]]:
    """Milliseconds of ``repeats`` passes of each of two runners, timed alternately in the
    order first, second, second, first, first, ... after ``warmup`` untimed passes of
    each: a slow or fast phase of the machine falls on both, so their ratio holds where
    each one's time alone does not."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        order = ((first, 0), (second, 1)) if i % 2 == 0 else ((second, 1), (first, 0))
        for fn, slot in order:
            start = time.perf_counter()
            fn()
            times[slot].append((time.perf_counter() - start) * 1e3)
    return times


def interleaved_times(runners: list[Callable[[], None]], warmup: int, repeats: int,
                      seed: int = 0,
                      on_round: Callable[[], None] | None = None) -> list[list[float]]:
    """Milliseconds of ``repeats`` passes of each runner, timed in ``repeats`` rounds of one
    pass each, in a new random order every round (seeded), after ``warmup`` untimed passes
    of each: every runner sees the machine's slow and fast phases alike, so their times can
    be added and subtracted (a lookup table's blocks against whole networks) where times
    taken one model after the other, minutes apart, cannot. ``on_round`` is called after
    each round (a progress bar)."""
    import random

    for _ in range(warmup):
        for run in runners:
            run()
    order = list(range(len(runners)))
    rng = random.Random(seed)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            start = time.perf_counter()
            runners[i]()
            times[i].append((time.perf_counter() - start) * 1e3)
        if on_round is not None:
            on_round()
    return times


@dataclass(frozen=True)
class CheckReport:
    """A deploy check's verdict on one exported graph.

    ``passed``: the graph is deployable on the check's target; ``summary``: one line for
    people; ``details``: JSON data, kept under ``checks.<name>`` in the export's
    ``<file>.json``; ``files``: the artefacts the check wrote (e.g. a compiled model).
    """

    check: str
    target: str
    passed: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**self.details, "check": self.check, "target": self.target,
                "passed": self.passed, "summary": self.summary, "files": list(self.files)}


class DeployCheck(Component, abc.ABC):
    """A vendor toolchain's verdict on an exported graph, before any device sees it: does
    it compile for the target, and does it compute what PyTorch computes.

    ``nasframe export-model --check NAME`` and ``nasframe export --models onnx --check NAME``
    run the check registered as ``NAME`` (``register_deploy_checks`` hook) on each file
    they export, with the export's own example inputs, and keep its report in the file's
    ``.json``. :meth:`artefacts` names the files the check writes beside a model (known
    before it runs, so that an export's manifest can claim them).

    Objectives that score candidates with the same toolchain record the same report in
    their values' provenance, under ``details["deploy_check"]`` (the form of
    :meth:`CheckReport.to_dict`, with ``passed`` and ``unsupported_ops``); ``nasframe
    analyse`` summarises those per run.
    """

    name: ClassVar[str]
    #: export formats the check takes
    formats: ClassVar[tuple[str, ...]] = ("onnx",)

    def __init__(self, params: Any = None, **kwargs: Any):
        self._init_params(params, kwargs)

    @abc.abstractmethod
    def target(self) -> str:
        """The device the graph is checked for, in words."""

    @abc.abstractmethod
    def check(self, exported: ExportResult, inputs: tuple[Any, ...] | None = None) -> CheckReport:
        """Check the exported file ``exported.path`` on ``inputs`` (the export's example
        inputs; None: the check makes its own from ``exported``'s input specs), writing
        the files of :meth:`artefacts` beside it."""

    def artefacts(self, model_path: str) -> tuple[str, ...]:
        """The files :meth:`check` writes for the model at ``model_path`` (paths)."""
        return ()
