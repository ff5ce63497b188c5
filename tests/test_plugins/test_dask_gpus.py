"""The dask executor gives each local worker its own GPU (checked on the CPU: the
assignment, and a real local cluster whose workers see their CUDA_VISIBLE_DEVICES)."""
import os

import pytest

from nasframe_plugins.dask_executor import gpu_plan, visible_gpus


def test_auto_pins_one_gpu_per_worker_only_for_cuda():
    assert gpu_plan(2, "cuda", visible=["0", "1", "2"]) == ["0", "1"]
    assert gpu_plan(4, "cuda:0", visible=["0", "1"]) == ["0", "1", "0", "1"]   # round-robin
    assert gpu_plan(2, "cpu", visible=["0", "1"]) is None
    assert gpu_plan(2, "cuda:1", visible=["0", "1"]) is None   # one card asked for: left alone
    assert gpu_plan(2, "cuda", visible=[]) is None
    assert gpu_plan(3, "cpu", gpus=["GPU-a", "GPU-b"]) == ["GPU-a", "GPU-b", "GPU-a"]
    assert gpu_plan(2, "cuda", gpus="none", visible=["0", "1"]) is None


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_each_local_worker_process_sees_its_own_gpu():
    pytest.importorskip("dask.distributed")
    import dask
    from dask.distributed import Client

    from nasframe_plugins.dask_executor import _pinned_cluster

    with dask.config.set({"distributed.worker.daemon": False}):
        cluster = _pinned_cluster(["0", "1"], threads_per_worker=1, processes=True,
                                  dashboard_address=None)
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    finally:
        cluster.close()
    assert sorted(seen.values()) == ["0", "1"]
