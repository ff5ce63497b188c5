"""params and gmacs on small real modules: exact counts, unsupported ops, op handles."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasframe import Architecture, Candidate, Context, ConfigError, Integer, PluginError, SearchSpace, hookimpl
from nasframe.plugins import Plugins
from nasframe_objectives import cost
from nasframe_objectives.cost import GMACs, Params


class OneModule(SearchSpace):
    """A space whose every architecture is ``module`` (inputs of ``input_shape``)."""

    name = "one_module"

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]):
        self.module = module
        self.input_shape = input_shape

    def decisions(self):
        return [Integer("unused", 0, 0)]

    def build(self, arch):
        return self.module


class TinyConvSpace(SearchSpace):
    name = "tiny_conv"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        w = arch["width"]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 3, 3, padding=1))


class Attention(nn.Module):
    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x)


class CrossAttention(nn.Module):
    """q: (B, L, E) from x; k, v: (B, S, E), (B, S, Ev) from fixed tensors."""

    def __init__(self, s: int = 5, e: int = 8, ev: int = 6):
        super().__init__()
        self.register_buffer("k", torch.randn(1, s, e))
        self.register_buffer("v", torch.randn(1, s, ev))

    def forward(self, x):
        return F.scaled_dot_product_attention(x, self.k, self.v)


class Spectral(nn.Module):
    def forward(self, x):
        return x + torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])


class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2


class UsesDouble(nn.Module):
    def forward(self, x):
        return Double.apply(x)


@pytest.fixture
def ctx(tmp_path):
    return Context(run_dir=tmp_path, quiet=True)


def gmacs_of(module, space_shape, ctx, **params):
    """gmacs of ``module`` with batch-less default ``space_shape`` (or params' input_shape)."""
    cand = Candidate(OneModule(module, space_shape), Architecture(unused=0))
    return GMACs(**params)(cand, ctx)


def test_conv_macs_exact(ctx):
    value, prov = gmacs_of(nn.Conv2d(3, 8, 3, padding=1), (3, 16, 16), ctx)
    assert prov.details["macs"] == 3 * 8 * 9 * 256
    assert value == pytest.approx(3 * 8 * 9 * 256 / 1e9)
    assert prov.kind == "proxy" and prov.backend == "fvcore"
    assert prov.details["input_shape"] == [1, 3, 16, 16]
    assert prov.details["unsupported_ops"] == {}
    assert "scaled_dot_product_attention" in prov.details["includes"]


def test_sdpa_macs_4d(ctx):
    value, prov = gmacs_of(Attention(), None, ctx, input_shape=[1, 2, 16, 8])
    assert prov.details["macs"] == 1 * 2 * 16 * 16 * (8 + 8)
    assert "aten::scaled_dot_product_attention" not in prov.details["unsupported_ops"]


def test_sdpa_macs_3d_cross_attention(ctx):
    # (B, L, E) = (2, 7, 8) queries against S=5 keys of E=8 and values of Ev=6
    _, prov = gmacs_of(CrossAttention(), (7, 8), ctx, input_shape=[2, 7, 8])
    assert prov.details["macs"] == 2 * 7 * 5 * (8 + 6)


def test_multihead_attention_counted(ctx):
    d, heads, length = 16, 2, 10
    mha = nn.MultiheadAttention(d, heads, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    _, prov = gmacs_of(Wrap(), (length, d), ctx)
    in_proj, attn, out_proj = length * d * 3 * d, length * length * 2 * d, length * d * d
    assert prov.details["macs"] == in_proj + attn + out_proj


def test_unsupported_ops_reported(ctx):
    _, prov = gmacs_of(Spectral(), (3, 16, 16), ctx)
    unsupported = prov.details["unsupported_ops"]
    assert unsupported.get("aten::fft_rfft2") == 1
    assert unsupported.get("aten::fft_irfft2") == 1
    assert prov.details["macs"] == 0


def _numel(inputs, outputs):
    return torch.Size(cost._shape(inputs[0])).numel()


class _OwnsDouble:
    """A plugin whose models contain the custom op `Double`: it registers the op's handle."""

    @hookimpl
    def register_op_handles(self, handles):
        handles.add("prim::PythonOp.Double", _numel)


def test_a_plugin_registers_the_handle_of_its_own_op(tmp_path):
    _, prov = gmacs_of(UsesDouble(), (4, 5), Context(run_dir=tmp_path, quiet=True))
    assert "prim::PythonOp.Double" in prov.details["unsupported_ops"]
    plugins = Plugins()
    plugins.register(_OwnsDouble(), "owns-double")
    assert plugins.failures == [] and plugins.op_handles.owner("prim::PythonOp.Double") == "owns-double"
    ctx = Context(run_dir=tmp_path, quiet=True, op_handles=plugins.op_handles.as_dict())
    _, prov = gmacs_of(UsesDouble(), (4, 5), ctx)
    assert prov.details["macs"] == 20
    assert "prim::PythonOp.Double" not in prov.details["unsupported_ops"]
    assert prov.details["handled_ops"] == ["prim::PythonOp.Double"]


def test_op_handles_reject_bad_names_and_a_second_owner():
    class Bad:
        @hookimpl
        def register_op_handles(self, handles):
            handles.add("SelectiveScanFn", _numel)

    class NotCallable:
        @hookimpl
        def register_op_handles(self, handles):
            handles.add("aten::foo", 3)

    plugins = Plugins()
    plugins.register(Bad(), "bad")
    plugins.register(NotCallable(), "not-callable")
    plugins.register(_OwnsDouble(), "first")
    plugins.register(_OwnsDouble(), "second")
    errors = {f.plugin: f.error for f in plugins.failures}
    assert "op name looks like" in errors["bad"]
    assert "not callable" in errors["not-callable"]
    assert "registered twice: by plugin 'first' and by plugin 'second'" in errors["second"]
    assert plugins.op_handles.names() == ["prim::PythonOp.Double"]


def test_the_selective_scan_handle_comes_from_its_owner_plugin():
    from nasframe.plugins import get_plugins

    handles = get_plugins().op_handles
    assert handles.owner("prim::PythonOp.SelectiveScan") == "builtin_search_spaces"
    assert "prim::PythonOp.SelectiveScan" not in cost.OP_HANDLES


def test_gmacs_leaves_model_mode_and_default_shape(ctx):
    cand = Candidate(TinyConvSpace(), Architecture(width=4))
    cand.model.train()
    value, prov = GMACs()(cand, ctx)
    assert cand.model.training
    assert prov.details["input_shape"] == [1, 3, 16, 16]
    assert prov.details["macs"] == (3 * 4 * 9 + 4 * 3 * 9) * 256


def test_gmacs_bad_shape():
    with pytest.raises(ConfigError, match=r"input_shape\[2\]: Input should be a valid integer"):
        GMACs(input_shape=[1, 3, "64"])
    with pytest.raises(ConfigError, match=r"input_shape: 10,000,000,000 elements is more than"):
        GMACs(input_shape=[1, 10, 1000, 1000000])


def test_params_count(ctx):
    cand = Candidate(TinyConvSpace(), Architecture(width=8))
    expected = sum(p.numel() for p in cand.model.parameters())
    value, prov = Params()(cand, ctx)
    assert prov.details["count"] == expected
    assert value == pytest.approx(expected / 1e6)
    assert prov.kind == "proxy" and prov.backend == "torch"


def test_params_trainable_only(ctx):
    cand = Candidate(TinyConvSpace(), Architecture(width=8))
    first = cand.model[0]
    for p in first.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in first.parameters())
    total = sum(p.numel() for p in cand.model.parameters())
    _, prov = Params(trainable_only=True)(cand, ctx)
    assert prov.details["count"] == total - frozen


def test_plugin_registers_all_objectives():
    import nasframe_objectives

    plugins = Plugins()
    plugins.register(nasframe_objectives, "builtin_objectives")
    assert not plugins.failures
    assert plugins.objectives.names() == ["deploy_memory", "fidelity", "finetuned_psnr",
                                          "gmacs", "latency", "latency_lut", "multitask_psnr",
                                          "npu_compiles", "npu_fidelity", "params", "psnr",
                                          "quick_psnr", "ssim", "transformer_count"]
    assert isinstance(plugins.objectives.create("gmacs", {"input_shape": [1, 3, 8, 8]}), GMACs)
