"""``dask``: evaluate trials on a Dask distributed cluster (optional extra ``dask``).

``executor: {name: dask, workers: 4}`` starts a local cluster of 4
single-threaded worker processes; ``executor: {name: dask, params: {address:
"tcp://scheduler:8786"}}`` uses a running cluster, whose workers must have
nasframe and the experiment's plugins installed and must see the run
directory (shared file system) to load prepared artifacts.
"""
from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from nasframe.errors import ConfigError
from nasframe.executor import FuturesExecutor


class DaskExecutor(FuturesExecutor):
    """``Client.get_executor()`` of a Dask cluster: local (default) or at ``address``."""

    name = "dask"

    def __init__(self, workers: int = 1, address: str | None = None, dashboard: bool = False):
        super().__init__(workers)
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise ConfigError("executor 'dask' needs dask.distributed, which is not installed; "
                              "install it with `pip install 'nasframe[dask]'`, or use "
                              "`executor: {name: process}`") from None
        if address is not None and not isinstance(address, str):
            raise ValueError(f"`address` must be a scheduler address string, got {address!r}")
        self.address = address
        self.dashboard = bool(dashboard)
        self._client: Any = None
        self._cluster: Any = None

    def make_pool(self) -> cf.Executor:
        from dask.distributed import Client, LocalCluster

        if self.address is None:
            self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                         processes=True,
                                         dashboard_address=":0" if self.dashboard else None)
            self._client = Client(self._cluster)
        else:
            self._client = Client(self.address)
        return self._client.get_executor(pure=False)

    def shutdown(self) -> None:
        super().shutdown()
        for obj in (self._client, self._cluster):
            if obj is not None:
                obj.close()
        self._client = self._cluster = None

    def describe(self) -> str:
        where = self.address or f"local cluster, {self.workers} worker(s)"
        return f"dask ({where})"
