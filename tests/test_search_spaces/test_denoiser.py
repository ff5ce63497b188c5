"""Behaviour of the built-in ``conv_denoiser`` search space."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import nasframe_search_spaces
from nasframe.architecture import Architecture
from nasframe.plugins import Plugins
from nasframe.registry import Registry
from nasframe.space import SearchSpace
from nasframe_search_spaces.denoiser import ConvDenoiserSpace


@pytest.fixture
def small() -> ConvDenoiserSpace:
    # 2 depths x 1 width x 2 residual x (2 + 4 kernel combos) = 12 valid architectures
    return ConvDenoiserSpace(depths=[1, 2], widths=[4], kernels=[3, 5], input_size=8)


def arch(depth: int, kernels: tuple[int, ...], width: int = 4, residual: bool = False) -> Architecture:
    return Architecture({"depth": depth, "width": width, "residual_blocks": residual,
                         **{f"kernel_{i}": k for i, k in enumerate(kernels)}})


def test_registered_through_the_plugin_hook():
    plugins = Plugins()
    plugins.register(nasframe_search_spaces, "builtin_search_spaces")
    assert plugins.failures == []
    assert plugins.search_spaces.get("conv_denoiser") is ConvDenoiserSpace


def test_registry_creates_it_from_yaml_params():
    reg = Registry("search space", SearchSpace)
    reg.add(ConvDenoiserSpace)
    space = reg.create("conv_denoiser", {"depths": [1, 3], "input_size": 32})
    assert space.depths == (1, 3)
    assert space.input_shape == (3, 32, 32)


def test_defaults():
    space = ConvDenoiserSpace()
    names = [d.name for d in space.decisions()]
    assert names == ["depth", "width", "residual_blocks", "kernel_0", "kernel_1", "kernel_2", "kernel_3"]
    assert space.input_shape == ConvDenoiserSpace.input_shape == (3, 64, 64)
    # 3 widths x 2 residual x (2**2 + 2**3 + 2**4) kernel combinations
    assert len(list(space.enumerate())) == 3 * 2 * (4 + 8 + 16)


def test_decisions_and_enumerate_count(small):
    dm = small.decision_map()
    assert dm["depth"].values() == [1, 2]
    assert dm["width"].values() == [4]
    assert dm["residual_blocks"].values() == [False, True]
    assert dm["kernel_0"].values() == dm["kernel_1"].values() == [3, 5]
    assert small.size == 16
    archs = list(small.enumerate())
    assert len(archs) == 12
    assert len(set(archs)) == 12
    assert all(small.is_valid(a) for a in archs)


def test_validate_names_the_bad_decision(small):
    bad = arch(2, (3, 7))
    reason = small.validate(bad)
    assert reason is not None and "kernel_1" in reason and "7" in reason
    assert "missing decisions: kernel_1" in small.validate(Architecture(depth=1, width=4, residual_blocks=False,
                                                                       kernel_0=3))


def test_canonical_form_of_unused_kernels(small):
    assert small.validate(arch(1, (5, 3))) is None
    reason = small.validate(arch(1, (5, 5)))
    assert reason is not None
    assert "kernel_1" in reason and "unused" in reason and "canonical" in reason
    assert small.canonicalize(arch(1, (5, 5))) == arch(1, (5, 3))
    assert small.canonicalize(arch(2, (5, 5))) == arch(2, (5, 5))
    # equal models share one architecture: one per depth-1 kernel choice, not two
    depth1 = [a for a in small.enumerate() if a["depth"] == 1]
    assert len(depth1) == 2 * 2  # kernel_0 x residual


def test_sample_is_valid_and_covers_every_depth():
    space = ConvDenoiserSpace(depths=[1, 4], widths=[4], kernels=[3, 5, 7], input_size=8)
    rng = np.random.default_rng(0)
    samples = [space.sample(rng) for _ in range(200)]
    assert all(space.is_valid(a) for a in samples)
    shallow = sum(a["depth"] == 1 for a in samples)
    assert 60 < shallow < 140  # uniform over depths, not biased by rejection towards depth 4


@pytest.mark.parametrize("residual", [False, True])
def test_build_keeps_the_input_shape(small, residual):
    for a in small.enumerate():
        if a["residual_blocks"] != residual:
            continue
        model = small.build(a)
        x = torch.randn(2, 3, 8, 8)
        y = model(x)
        assert y.shape == x.shape
        assert len(model.body) == a["depth"]
        assert [b.conv.kernel_size[0] for b in model.body] == list(small.block_kernels(a))


def test_build_is_a_global_residual(small):
    model = small.build(arch(2, (3, 5)))
    for p in model.tail.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model(x), x)


def test_example_inputs_use_image_channels_and_input_size():
    space = ConvDenoiserSpace(image_channels=1, input_size=16)
    a = space.reference_architectures()["smallest"]
    (x,) = space.example_inputs(a, batch_size=2)
    assert x.shape == (2, 1, 16, 16)
    assert space.build(a)(x).shape == x.shape


def test_graph(small):
    for a in small.enumerate():
        g = small.graph(a)
        assert isinstance(g, nx.DiGraph)
        assert g.number_of_nodes() == a["depth"] + 2
        order = ["head", *(f"block_{i}" for i in range(a["depth"])), "tail"]
        assert list(nx.topological_sort(g)) == order
        assert g.number_of_edges() == a["depth"] + 1
        for name in order:
            node = g.nodes[name]
            assert node["kind"] == "conv"
            assert node["resolution"] == 8
        assert g.nodes["head"]["channels"] == 4 and g.nodes["tail"]["channels"] == 3
        assert g.nodes["head"]["kernel"] == g.nodes["tail"]["kernel"] == 3
        assert [g.nodes[f"block_{i}"]["kernel"] for i in range(a["depth"])] == list(small.block_kernels(a))
        assert all(g.nodes[f"block_{i}"]["channels"] == 4 for i in range(a["depth"]))


def test_encode_decode_round_trip(small):
    for a in small.enumerate():
        vec = small.encode(a)
        assert vec.shape == (small.encoding_width,)
        assert small.decode(vec) == a


def test_reference_architectures():
    space = ConvDenoiserSpace()
    refs = space.reference_architectures()
    assert set(refs) == {"smallest", "largest"}
    assert all(space.validate(a) is None for a in refs.values())

    def n_params(a: Architecture) -> int:
        return sum(p.numel() for p in space.build(a).parameters())

    sizes = [n_params(a) for a in space.enumerate()]
    assert n_params(refs["smallest"]) == min(sizes)
    assert n_params(refs["largest"]) == max(sizes)


@pytest.mark.parametrize(("params", "words"), [
    ({"depths": []}, ["depths", "empty"]),
    ({"depths": [0, 2]}, ["depths[0]", "greater than or equal to 1"]),
    ({"depths": [100000000]}, ["depths[0]", "less than or equal to 256"]),
    ({"widths": [8, -1]}, ["widths[1]", "greater than or equal to 1"]),
    ({"widths": [8, 8]}, ["widths", "repeats"]),
    ({"kernels": [3, 4]}, ["kernels", "even", "odd"]),
    ({"kernels": "3"}, ["kernels", "valid tuple"]),
    ({"depths": [True]}, ["depths[0]", "valid integer"]),
    ({"image_channels": 0}, ["image_channels", "greater than or equal to 1", "the default is 3"]),
    ({"input_size": 8.5}, ["input_size", "valid integer", "8.5"]),
])
def test_bad_params_are_named(params, words):
    with pytest.raises(ValueError) as err:
        ConvDenoiserSpace(**params)
    assert all(w in str(err.value) for w in words), str(err.value)
