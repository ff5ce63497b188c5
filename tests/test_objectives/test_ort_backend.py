"""latency on the onnxruntime backend: the exported graph timed in ONNX Runtime, with provenance."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from nasframe import Architecture, Candidate, Context, Integer, SearchSpace  # noqa: E402
from nasframe.errors import ConfigError  # noqa: E402
from nasframe_objectives.latency import Latency  # noqa: E402


class TinyConvSpace(SearchSpace):
    name = "tiny_conv_ort"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        w = arch["width"]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 3, 3, padding=1))


def test_onnxruntime_latency_times_the_exported_graph(tmp_path):
    import onnxruntime as ort

    ctx = Context(run_dir=tmp_path, quiet=True)
    cand = Candidate(TinyConvSpace(), Architecture(width=8))
    obj = Latency(backend="onnxruntime", options={"threads": 1, "warmup": 1, "repeats": 5})
    value, prov = obj(cand, ctx)
    assert value > 0
    assert prov.kind == "measured" and prov.backend == "onnxruntime"
    assert prov.device.startswith("cpu (") and "1 threads" in prov.device
    d = prov.details
    assert d["runtime"] == f"onnxruntime {ort.__version__}"
    assert d["onnxruntime"] == ort.__version__
    assert d["providers"] == ["CPUExecutionProvider"]
    assert d["threads"] == 1 and d["repeats"] == 5 and d["warmup"] == 1
    assert d["graph_optimization"] == "all" and d["spinning"] is False
    assert d["export_format"] == "onnx"
    assert 0 < d["p10_ms"] <= value <= d["p90_ms"]
    assert d["export"]["format"] == "onnx" and d["export"]["max_rel_error"] <= 1e-4
    # the export is cached in the run directory, with its check beside it
    files = sorted((tmp_path / "cache" / "exports").glob("*.onnx"))
    assert len(files) == 1
    meta = json.loads(Path(str(files[0]) + ".json").read_text())
    assert meta["graph_hash"] == d["export"]["graph_hash"]
    assert meta["input_shapes"] == [[1, 3, 16, 16]]
    mtime = files[0].stat().st_mtime_ns
    obj(cand, ctx)
    assert files[0].stat().st_mtime_ns == mtime   # not exported again


def test_onnxruntime_options_are_checked():
    with pytest.raises(ConfigError, match=r"options.optimize: Input should be 'disable', 'basic', "
                                          r"'extended' or 'all'"):
        Latency(backend="onnxruntime", options={"optimize": "fast"})
    with pytest.raises(ConfigError, match=r"options.threads"):
        Latency(backend="onnxruntime", options={"threads": 0})


def test_onnxruntime_is_listed_as_a_latency_backend():
    from nasframe.plugins import get_plugins

    entry = get_plugins().latency_backends.entry("onnxruntime")
    assert entry.missing() == []
