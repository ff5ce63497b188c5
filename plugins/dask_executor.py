"""``dask``: evaluate trials on a Dask distributed cluster (optional extra ``dask``).

``executor: {name: dask, workers: 4}`` starts a local cluster of 4
single-threaded worker processes; ``executor: {name: dask, params: {address:
"tcp://scheduler:8786"}}`` uses a running cluster, whose workers must have
nasframe and the experiment's plugins installed and must see the run
directory (shared file system) to load prepared artifacts.

Faults: every worker builds the experiment before the first trial, and at
most ``workers`` trials are in flight at once, so a trial starts when it is
submitted and ``trial_timeout`` counts from there (a worker the cluster
replaced after a crash builds it during its first trial). A trial past it
is cancelled and failed ("timed out"); on a local cluster its worker is
restarted, on a remote one it is abandoned (the worker may stay busy until
the task returns). A worker that dies fails its trial ("worker died"): the
local cluster allows no retries of a task whose worker died, so a trial that
kills its worker is not re-run on every other worker; a remote scheduler
applies its own ``distributed.scheduler.allowed-failures``.

GPUs: with ``device: cuda`` in the experiment, each worker of the local cluster
gets its own GPU: ``CUDA_VISIBLE_DEVICES`` of worker ``i`` is the ``i``-th visible
GPU (round-robin when there are more workers than GPUs, which then share), so
``cuda`` in every worker is its own card. ``params.gpus`` overrides the list (GPU
indices or UUIDs) or turns it off (``none``); ``device: cuda:N`` asks for one
card and turns it off too. A remote cluster's workers get their GPUs from
whoever starts them (e.g. ``dask cuda worker`` of dask-cuda, one per GPU).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
import os
from typing import Any, Literal

from nasframe.executor import Executor, ExecutorParams, Job, failed
from nasframe.params import Bool, Field
from nasframe.trial import Trial

#: how often in-flight trials are checked (seconds)
POLL = 0.2


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES``'s entries when it is set,
    else ``0 .. n-1`` for the n GPUs torch sees (none without CUDA)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 - no torch, no GPUs
        return []


def gpu_plan(workers: int, device: str, gpus: list[str] | str = "auto",
             visible: list[str] | None = None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` for each of ``workers`` local workers, or None (no
    pinning): ``auto`` pins when ``device`` is ``cuda`` (or ``cuda:0``) and GPUs are
    visible; a list pins to those GPUs; ``none`` never pins. Round-robin: worker ``i``
    gets GPU ``i % len(gpus)``."""
    if gpus == "none":
        return None
    if gpus == "auto":
        kind, _, index = device.partition(":")
        if kind != "cuda" or index not in ("", "0"):
            return None
        gpus = visible_gpus() if visible is None else visible
    if not gpus:
        return None
    return [str(gpus[i % len(gpus)]) for i in range(workers)]


def _pinned_cluster(plan: list[str], **kwargs: Any):
    """A LocalCluster whose ``i``-th worker process sees only GPU ``plan[i]`` (set by its
    nanny, so a restarted worker keeps it)."""
    from dask.distributed import LocalCluster

    class PinnedCluster(LocalCluster):
        def new_worker_spec(self):
            spec = super().new_worker_spec()
            for name, one in spec.items():
                gpu = plan[len(self._pinned) % len(plan)]
                self._pinned[name] = gpu
                env = {**one.get("options", {}).get("env", {}), "CUDA_VISIBLE_DEVICES": gpu}
                spec[name] = {**one, "options": {**one.get("options", {}), "env": env}}
            return spec

    PinnedCluster._pinned = {}         # worker name -> its GPU (this class is made per cluster)
    cluster = PinnedCluster(n_workers=0, **kwargs)
    cluster.scale(len(plan))
    return cluster


class DaskExecutor(Executor):
    """Trials as tasks of a Dask cluster: local (default) or at ``address``."""

    name = "dask"
    dependencies = ("distributed",)
    install_hint = "pip install 'nasframe[dask]'"

    class Params(ExecutorParams):
        address: str | None = Field(None, min_length=1, max_length=512, strict=True)
        """A running scheduler, e.g. tcp://host:8786 (default: a local cluster of `workers` processes)."""
        dashboard: Bool = False
        """Serve the local cluster's Dask dashboard (on a free port)."""
        gpus: list[str] | Literal["auto", "none"] = "auto"
        """One GPU per local worker: auto (the visible GPUs when device is cuda), a list of GPU indices/UUIDs, or none."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.address = self.params.address
        self.dashboard = self.params.dashboard
        self._client: Any = None
        self._cluster: Any = None
        self._job: Job | None = None
        self._pids: dict[str, int] = {}
        #: CUDA_VISIBLE_DEVICES of each local worker (None: not pinned)
        self.gpu_plan: list[str] | None = None

    def start(self, job: Job) -> None:
        import dask
        from dask.distributed import Client, LocalCluster

        self._job = job
        if self.address is None:
            self.gpu_plan = gpu_plan(self.workers, job.context.device, self.params.gpus)
            kwargs = dict(threads_per_worker=1, processes=True,
                          dashboard_address=":0" if self.dashboard else None)
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.worker.daemon": False}):
                if self.gpu_plan is None:
                    self._cluster = LocalCluster(n_workers=self.workers, **kwargs)
                else:                   # each worker process sees its own GPU as cuda:0
                    self._cluster = _pinned_cluster(self.gpu_plan, **kwargs)
                self._client = Client(self._cluster)
                if self.gpu_plan is not None:
                    self._client.wait_for_workers(self.workers, timeout=120)
        else:
            self._client = Client(self.address)
        if job.warm is not None:        # build the experiment in every worker before timing trials
            self._client.run(job.warm)
        if self._cluster is not None:   # local workers: their process ids, to stop a hung one
            import os

            self._pids = dict(self._client.run(os.getpid))

    def _workers(self) -> list[str]:
        try:
            return sorted(self._client.scheduler_info(n_workers=-1)["workers"])
        except TypeError:             # older distributed: no n_workers
            return sorted(self._client.scheduler_info()["workers"])
        except Exception:  # noqa: BLE001 - best effort
            return []

    def map(self, trials: Sequence[Trial]) -> list[Trial]:
        if self._client is None or self._job is None:
            raise RuntimeError("executor 'dask': map() before start()")
        limit = self._job.trial_timeout
        out: list[Trial | None] = [None] * len(trials)
        todo = list(range(len(trials)))
        running: dict[int, tuple[Any, float]] = {}
        while todo or running:
            while todo and len(running) < self.workers:
                i = todo.pop(0)
                fut = self._client.submit(self._job.remote, trials[i], pure=False)
                running[i] = (fut, time.monotonic())
            time.sleep(POLL)
            now = time.monotonic()
            for i, (fut, since) in list(running.items()):
                t = trials[i]
                if fut.done():
                    del running[i]
                    try:
                        out[i] = fut.result()
                    except Exception as err:  # noqa: BLE001 - KilledWorker and friends
                        kind = type(err).__name__
                        out[i] = failed(t, "died" if kind == "KilledWorker" else "exception",
                                        f"worker died ({kind}: {err})" if kind == "KilledWorker"
                                        else f"worker error: {kind}: {err}")
                elif limit is not None and now - since > limit:
                    del running[i]
                    where = "its worker was restarted" if self._cluster is not None \
                        else "the task was abandoned"
                    out[i] = failed(t, "timeout", f"timed out after {limit:g} s ({where})")
                    self._abandon(fut)
        return out  # type: ignore[return-value]

    def _abandon(self, fut: Any) -> None:
        """Cancel a task that ran out of time; on a local cluster, restart its worker."""
        workers = []
        try:
            processing = self._client.processing()
            workers = [w for w, keys in processing.items() if fut.key in keys]
        except Exception:  # noqa: BLE001 - best effort
            pass
        fut.cancel()
        if self._cluster is None or not workers:
            return
        # The worker's thread is stuck in the trial: a graceful restart would wait seconds for
        # it; kill its process instead (a local cluster: same machine) and let its nanny
        # start a new one, then warm the new worker (it has a new address; calling the old
        # one would wait for a 30 s connect timeout).
        import os
        import signal

        before = set(self._workers())
        for w in workers:
            pid = self._pids.get(w)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = set(self._workers())
            if len(current) >= self.workers and not (set(workers) & current):
                break
            time.sleep(0.1)
        current = set(self._workers())
        fresh = sorted(current - before)
        if fresh:
            try:
                self._pids.update(self._client.run(os.getpid, workers=fresh))
                if self._job is not None and self._job.warm is not None:
                    self._client.run(self._job.warm, workers=fresh)
            except Exception:  # noqa: BLE001 - it builds the experiment on its first trial
                pass

    def shutdown(self) -> None:
        for obj in (self._client, self._cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001 - shutting down anyway
                    pass
        self._client = self._cluster = None

    def describe(self) -> str:
        where = self.address or f"local cluster, {self.workers} worker(s)"
        if self.gpu_plan is not None:
            where += f", GPUs {','.join(self.gpu_plan)} (one per worker)"
        return f"dask ({where})"
