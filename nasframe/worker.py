"""The worker side of executors: evaluate trials in another process.

A worker gets the experiment configuration (plain data) and the run
directory, rebuilds the experiment once (plugins resolved, ``prepare`` run,
artifacts loaded from the run directory's cache) and keeps it for its
lifetime, keyed by :func:`job_key`.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasframe.trial import Trial

_EXPERIMENTS: dict[str, tuple[Any, Any]] = {}


def job_key(config: dict[str, Any], run_dir: str | Path, plugins: bytes | None = None) -> str:
    """Identifies the experiment a worker must have built (config + run dir + the
    in-process components sent with it)."""
    text = json.dumps(config, sort_keys=True, default=str) + "\0" + str(run_dir)
    h = hashlib.sha256(text.encode())
    if plugins:
        h.update(plugins)
    return h.hexdigest()[:16]


def prepare_in_worker(key: str, config: dict[str, Any], run_dir: str,
                      plugins: bytes | None = None) -> tuple[Any, Any]:
    """Build and prepare the experiment in this process (once per ``key``); ``plugins``
    are the in-process components of the driver (see :mod:`nasframe.inprocess`)."""
    entry = _EXPERIMENTS.get(key)
    if entry is None:
        from nasframe import inprocess
        from nasframe.config import config_from_dict
        from nasframe.experiment import Experiment
        from nasframe.plugins import get_plugins

        inprocess.install(plugins, get_plugins())

        exp = Experiment.from_config(config_from_dict(config))
        ctx = exp.context(run_dir, quiet=True)
        exp.prepare(ctx)
        entry = _EXPERIMENTS[key] = (exp, ctx)
    return entry


def evaluate_in_worker(key: str, config: dict[str, Any], run_dir: str, plugins: bytes | None,
                       trial: Trial) -> Trial:
    """Evaluate one trial in this process, building the experiment on first use."""
    from nasframe import stopping

    exp, ctx = prepare_in_worker(key, config, run_dir, plugins)
    with stopping.watch(install=False):   # no user signal reaches a worker: an interrupt is the objective's
        return exp.evaluate(trial, ctx)


def warm_worker(key: str, config: dict[str, Any], run_dir: str, plugins: bytes | None = None) -> None:
    """Prepare the experiment in this process; returns nothing (the result stays here)."""
    prepare_in_worker(key, config, run_dir, plugins)


def remote_call(config: dict[str, Any], run_dir: str | Path,
                plugins: bytes | None = None) -> Callable[[Trial], Trial]:
    """The picklable ``trial -> finished trial`` call executors send to workers
    (``plugins``: :meth:`nasframe.experiment.Experiment.plugins_payload`)."""
    return functools.partial(evaluate_in_worker, job_key(config, run_dir, plugins), config,
                             str(run_dir), plugins)


def warm_call(config: dict[str, Any], run_dir: str | Path,
              plugins: bytes | None = None) -> Callable[[], Any]:
    """The picklable call that prepares a new worker before its first trial (so that a
    worker's start-up never counts against a trial's time limit)."""
    return functools.partial(warm_worker, job_key(config, run_dir, plugins), config,
                             str(run_dir), plugins)
