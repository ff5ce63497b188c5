"""latency on a small real conv net: measured, threads recorded and restored."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nasframe import Architecture, Candidate, Context, Integer, SearchSpace
from nasframe.errors import ConfigError
from nasframe.plugins import Plugins
from nasframe_objectives.latency import Latency


class TinyConvSpace(SearchSpace):
    name = "tiny_conv_latency"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        w = arch["width"]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 3, 3, padding=1))


@pytest.fixture
def ctx(tmp_path):
    return Context(run_dir=tmp_path, quiet=True)


@pytest.fixture
def cand():
    return Candidate(TinyConvSpace(), Architecture(width=8))


def test_latency_is_measured_in_ms(cand, ctx):
    obj = Latency(options={"warmup": 1, "repeats": 5})
    value, prov = obj(cand, ctx)
    assert value > 0
    assert prov.kind == "measured" and prov.backend == "torch"
    d = prov.details
    assert d["threads"] == torch.get_num_threads()
    assert d["repeats"] == 5 and d["warmup"] == 1
    assert 0 < d["p10_ms"] <= value <= d["p90_ms"]
    assert d["input_shape"] == [1, 3, 16, 16]
    assert d["torch"] == torch.__version__
    assert prov.device.startswith("cpu (") and f"{d['threads']} threads" in prov.device


def test_input_shape_and_batch_size(cand, ctx):
    _, prov = Latency(options={"warmup": 0, "repeats": 1}, batch_size=2)(cand, ctx)
    assert prov.details["input_shape"] == [2, 3, 16, 16]
    _, prov = Latency(options={"warmup": 0, "repeats": 1}, input_shape=[1, 3, 8, 8])(cand, ctx)
    assert prov.details["input_shape"] == [1, 3, 8, 8]


def test_threads_are_set_then_restored(cand, ctx):
    before = torch.get_num_threads()
    _, prov = Latency(options={"threads": 1, "warmup": 0, "repeats": 2})(cand, ctx)
    assert prov.details["threads"] == 1
    assert "1 threads" in prov.device
    assert torch.get_num_threads() == before


def test_model_left_in_its_mode(cand, ctx):
    cand.model.train()
    Latency(options={"warmup": 0, "repeats": 1})(cand, ctx)
    assert cand.model.training
    assert next(cand.model.parameters()).device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device: 'cuda' is not available on this machine; "
                                         r"use 'cpu'"):
        Latency(options={"device": "cuda"})


def test_bad_params_are_errors():
    with pytest.raises(ConfigError, match=r"options.device: String should match pattern .*'not-a-device'"):
        Latency(options={"device": "not-a-device"})
    with pytest.raises(ConfigError, match=r"options.repeats: Input should be greater than or equal to 1"):
        Latency(options={"repeats": 0})
    with pytest.raises(ConfigError, match="options.threads"):
        Latency(options={"threads": 0})
    with pytest.raises(ValueError, match="unknown latency backend 'onnxrt'"):
        Latency(backend="onnxrt")


def test_options_errors_carry_the_full_path():
    from nasframe.plugins import get_plugins

    with pytest.raises(ConfigError, match=r"objectives\[2\].params.options.repeats: Input should be "):
        get_plugins().objectives.create("latency", {"options": {"repeats": 0}},
                                        where="objectives[2]")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_registry_reports_bad_device_as_config_error():
    import nasframe_objectives

    plugins = Plugins()
    plugins.register(nasframe_objectives, "builtin_objectives")
    with pytest.raises(ConfigError, match="use 'cpu'"):
        plugins.objectives.create("latency", {"options": {"device": "cuda"}},
                                  where="objectives[0]")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_latency_moves_the_model_back(cand, ctx):
    value, prov = Latency(options={"device": "cuda", "warmup": 1, "repeats": 3})(cand, ctx)
    assert value > 0 and prov.device.startswith("cuda (")
    assert next(cand.model.parameters()).device.type == "cpu"
