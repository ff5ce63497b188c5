"""Executors: where the trials of a batch are evaluated.

The driver (the runner) owns the strategy and the trial store; an executor
only turns a batch of ``running`` trials into finished ones. Workers get the
experiment *configuration* (a plain dict) and the run directory, never live
objects: each worker rebuilds the experiment once and calls its ``prepare``,
which loads the artifacts the driver cached (they are keyed by content hash).

Two bases:

- :class:`Executor`, the contract: ``start(job)``, ``map(trials)``, ``shutdown()``.
- :class:`FuturesExecutor`, for anything that is a
  :class:`concurrent.futures.Executor` (a local process pool, a Dask cluster's
  ``Client.get_executor()``, ...): implement :meth:`FuturesExecutor.make_pool`.

Executors are registered by plugins with the ``register_executors`` hook and
named in the YAML as ``executor: {name, workers, params}``.
"""
from __future__ import annotations

import abc
import concurrent.futures as cf
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nasframe.trial import Trial

if TYPE_CHECKING:
    from nasframe.context import Context
    from nasframe.experiment import Experiment


@dataclass(frozen=True)
class Job:
    """What an executor needs to evaluate trials of one run."""

    #: the driver's experiment and context (for in-process executors)
    experiment: Experiment
    context: Context
    #: the experiment configuration as plain data, and the run directory (for workers)
    config: dict[str, Any]
    run_dir: Path

    @cached_property
    def key(self) -> str:
        """Identifies the experiment a worker must have built (config + run dir)."""
        text = json.dumps(self.config, sort_keys=True, default=str) + "\0" + str(self.run_dir)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Executor(abc.ABC):
    """Evaluates batches of trials, in order, returning finished trials.

    ``workers`` comes from the YAML (``executor.workers``) and sets the default
    batch size; other YAML ``executor.params`` are passed to ``__init__`` as
    keywords. ``map`` must return one finished trial per input trial, in the
    input order; evaluation errors are already caught by
    :meth:`nasframe.Experiment.evaluate` (the trial comes back ``failed``), so
    an exception out of ``map`` means the executor itself broke.
    """

    name: ClassVar[str]

    def __init__(self, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"`workers` must be a positive integer, got {workers!r}")
        self.workers = workers

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


class FuturesExecutor(Executor):
    """An executor backed by a :class:`concurrent.futures.Executor`."""

    def __init__(self, workers: int = 1):
        super().__init__(workers)
        self._pool: cf.Executor | None = None
        self._job: Job | None = None

    @abc.abstractmethod
    def make_pool(self) -> cf.Executor:
        """The pool that runs :func:`evaluate_in_worker` calls."""

    def start(self, job: Job) -> None:
        self._job = job
        self._pool = self.make_pool()

    def map(self, trials: Sequence[Trial]) -> list[Trial]:
        if self._pool is None or self._job is None:
            raise RuntimeError(f"executor '{self.name}': map() before start()")
        job = self._job
        futures = [self._pool.submit(evaluate_in_worker, job.key, job.config, str(job.run_dir), t)
                   for t in trials]
        return [f.result() for f in futures]

    def shutdown(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                pool.shutdown(wait=False, cancel_futures=True)
            except TypeError:  # executors that predate cancel_futures (e.g. Dask's)
                pool.shutdown(wait=False)


# ------------------------------------------------------- the worker side
_WORKER_EXPERIMENTS: dict[str, tuple[Any, Any]] = {}


def evaluate_in_worker(key: str, config: dict[str, Any], run_dir: str, trial: Trial) -> Trial:
    """Evaluate one trial in a worker process, building the experiment on first use.

    The experiment (plugins resolved, ``prepare`` run, artifacts loaded from the
    run directory's cache) is kept per ``key`` for the worker's lifetime.
    """
    entry = _WORKER_EXPERIMENTS.get(key)
    if entry is None:
        from nasframe.config import config_from_dict
        from nasframe.experiment import Experiment

        exp = Experiment.from_config(config_from_dict(config))
        ctx = exp.context(run_dir, quiet=True)
        exp.prepare(ctx)
        entry = _WORKER_EXPERIMENTS[key] = (exp, ctx)
    exp, ctx = entry
    return exp.evaluate(trial, ctx)
