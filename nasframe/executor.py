"""Executors: where the trials of a batch are evaluated.

The driver (the runner) owns the strategy and the trial store; an executor
only turns a batch of ``running`` trials into finished ones. Workers get the
experiment *configuration* (a plain dict) and the run directory, never live
objects: each worker rebuilds the experiment once and calls its ``prepare``,
which loads the artifacts the driver cached (they are keyed by content hash).
The call a worker runs is :attr:`Job.remote`, made by the runner (see
:mod:`nasframe.worker`), so executors stay independent of the experiment code.

The contract is :class:`Executor`: ``start(job)``, ``map(trials)``,
``shutdown()``; :class:`nasframe.pool.WorkerPool` is a pool of local worker
processes that survives its tasks, for executors to build on.

Executors are registered by plugins with the ``register_executors`` hook and
named in the YAML as ``executor: {name, workers, params}``; ``workers`` is a
field of every executor's ``Params``.
"""
from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nasframe.params import Component, Field, Int, Params
from nasframe.trial import Trial

if TYPE_CHECKING:
    from nasframe.context import Context
    from nasframe.experiment import Experiment

#: the most workers an experiment may ask for
MAX_WORKERS = 1024


@dataclass(frozen=True)
class Job:
    """What an executor needs to evaluate trials of one run."""

    #: the driver's experiment and context (for in-process executors)
    experiment: Experiment
    context: Context
    #: the experiment configuration as plain data, and the run directory (for workers)
    config: dict[str, Any]
    run_dir: Path
    #: ``remote(trial) -> finished trial``: a picklable call that evaluates one trial in
    #: a worker process (it rebuilds and prepares the experiment there on first use)
    remote: Callable[[Trial], Trial]
    #: seconds a trial may run before it is stopped and failed (None: no limit)
    trial_timeout: float | None = None
    #: ``warm()``: a picklable call that builds and prepares the experiment in a new worker
    #: before its first trial (its time does not count against ``trial_timeout``)
    warm: Callable[[], Any] | None = None


def failed(trial: Trial, failure: str, error: str) -> Trial:
    """``trial`` finished as failed (``failure``: ``died``, ``timeout``, ...) with ``error``."""
    now = time.time()
    return dataclasses.replace(trial, status="failed", values={}, provenance={}, feasible=None,
                               violation=0.0, error=error, failure=failure,
                               started=trial.started or now, finished=now)


class ExecutorParams(Params):
    workers: Int = Field(1, ge=1, le=MAX_WORKERS)
    """Parallel evaluations (also the default batch size)."""


class Executor(Component, abc.ABC):
    """Evaluates batches of trials, in order, returning finished trials.

    ``workers`` comes from the YAML (``executor.workers``) and sets the default
    batch size; other YAML ``executor.params`` are fields of the executor's
    ``Params`` (a subclass of :class:`ExecutorParams`). ``map`` must return one
    finished trial per input trial, in the input order; evaluation errors are
    already caught by :meth:`nasframe.experiment.Experiment.evaluate` (the
    trial comes back ``failed``). A trial whose worker dies comes back failed
    with ``failure="died"`` and one that runs past ``job.trial_timeout`` with
    ``failure="timeout"`` (see :func:`failed`); the other trials of the batch
    are unaffected. An exception out of ``map`` means the executor itself broke.
    ``shutdown`` must leave no worker process behind, also after Ctrl-C.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ExecutorParams]] = ExecutorParams
    #: True when trials run in the driver's process (with the driver's experiment); False
    #: when workers rebuild the experiment (components registered in the driver's process,
    #: see :mod:`nasframe.inprocess`, are then sent to them by value)
    in_process: ClassVar[bool] = False

    def __init__(self, params: Any = None, **kwargs: Any):
        self._init_params(params, kwargs)

    @property
    def workers(self) -> int:
        return self.params.workers

    @abc.abstractmethod
    def start(self, job: Job) -> None:
        """Called once before the first ``map``."""

    @abc.abstractmethod
    def map(self, trials: Sequence[Trial]) -> list[Trial]:
        """Evaluate ``trials`` (status ``running``) and return them finished, in order."""

    def shutdown(self) -> None:
        """Release workers; called once, also after an error or Ctrl-C."""

    def describe(self) -> str:
        return f"{self.name} ({self.workers} worker{'s' if self.workers != 1 else ''})"
