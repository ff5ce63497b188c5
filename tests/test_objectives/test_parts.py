"""Model parts: a space builds extra modules besides its main model, and ``params``,
``gmacs`` and ``latency`` score one of them through their ``part`` param."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from conftest import cli_here
from nasframe import Architecture, Candidate, Context, Integer, SearchSpace, capabilities
from nasframe.capabilities import ModelParts
from nasframe.errors import ConfigError
from nasframe_objectives.cost import GMACs, Params
from nasframe_objectives.latency import Latency


class TwoPartSpace(SearchSpace, ModelParts):
    """Main model: a conv of ``width`` channels; part ``head``: a Linear(width, 3)."""

    name = "two_part"
    input_shape = (3, 8, 8)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        return nn.Conv2d(3, arch["width"], 3, padding=1)

    def parts(self):
        return ("head",)

    def build_part(self, arch, part):
        if part != "head":
            raise ValueError(f"no part {part!r}; its parts are: head")
        return nn.Linear(arch["width"], 3)

    def part_example_inputs(self, arch, part, input_shape=None, batch_size=1):
        if part != "head":
            raise ValueError(f"no part {part!r}; its parts are: head")
        shape = tuple(input_shape) if input_shape else (batch_size, arch["width"])
        return (torch.randn(*shape),)


class NoPartSpace(SearchSpace):
    """No ModelParts capability: only the main model."""

    name = "no_part"
    input_shape = (3, 8, 8)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        return nn.Conv2d(3, arch["width"], 3, padding=1)


@pytest.fixture
def ctx(tmp_path):
    return Context(run_dir=tmp_path, quiet=True)


@pytest.fixture
def space():
    return TwoPartSpace()


@pytest.fixture
def cand(space):
    return Candidate(space, Architecture(width=8), seed=3)


def run(obj, space, cand, ctx):
    obj.prepare(space, ctx)
    return obj(cand, ctx)


def test_params_of_a_part(space, cand, ctx):
    value, prov = run(Params(part="head"), space, cand, ctx)
    assert prov.details["count"] == 8 * 3 + 3
    assert value == pytest.approx((8 * 3 + 3) / 1e6)
    assert prov.details["part"] == "head"


def test_gmacs_of_a_part(space, cand, ctx):
    value, prov = run(GMACs(part="head"), space, cand, ctx)
    assert prov.details["macs"] == 8 * 3
    assert prov.details["input_shape"] == [1, 8]
    assert prov.details["part"] == "head"
    _, prov = run(GMACs(part="head", input_shape=[4, 8]), space, cand, ctx)
    assert prov.details["macs"] == 4 * 8 * 3 and prov.details["input_shape"] == [4, 8]


def test_latency_of_a_part(space, cand, ctx):
    value, prov = run(Latency(part="head", options={"warmup": 0, "repeats": 2}, batch_size=2), space, cand, ctx)
    assert value > 0
    assert prov.details["input_shape"] == [2, 8]
    assert prov.details["part"] == "head"


def test_main_model_unaffected_without_part(space, cand, ctx):
    _, prov = run(Params(), space, cand, ctx)
    assert prov.details["count"] == 3 * 8 * 9 + 8
    assert "part" not in prov.details
    _, prov = run(GMACs(), space, cand, ctx)
    assert prov.details["macs"] == 3 * 8 * 9 * 64 and "part" not in prov.details
    _, prov = run(Latency(options={"warmup": 0, "repeats": 1}), space, cand, ctx)
    assert prov.details["input_shape"] == [1, 3, 8, 8] and "part" not in prov.details
    assert cand.module() is cand.model and cand.module(None) is cand.part(None)


@pytest.mark.parametrize("make", [lambda: Params(part="vae_decoder"),
                                  lambda: GMACs(part="vae_decoder"),
                                  lambda: Latency(part="vae_decoder")])
def test_a_part_requires_model_parts_and_must_exist(make, space):
    obj = make()
    assert ModelParts in obj.requirements()
    reason = obj.check_space(space)
    assert "params.part" in reason and "'vae_decoder'" in reason and "available: head" in reason
    assert capabilities.missing(NoPartSpace(), obj.requirements()) == [ModelParts]
    assert ModelParts not in type(obj)().requirements()     # without `part`, nothing required


@pytest.mark.parametrize("bad", ["", "  ", 3, ["head"]])
def test_part_must_be_a_non_empty_string(bad):
    for cls in (Params, GMACs, Latency):
        with pytest.raises(ConfigError, match=r"params\.part: "):
            cls(part=bad)


def test_candidate_part_is_cached_seeded_eval_and_released(space):
    cand = Candidate(space, Architecture(width=4), seed=7)
    head = cand.part("head")
    assert isinstance(head, nn.Linear) and not head.training
    assert cand.part("head") is head and cand.module("head") is head
    again = Candidate(space, Architecture(width=4), seed=7).part("head")
    assert torch.equal(again.weight, head.weight)   # seeded like the main model
    x1 = cand.example_inputs(part="head")
    x2 = cand.example_inputs(part="head")
    assert x1[0].shape == (1, 4) and torch.equal(x1[0], x2[0])
    cand.release()
    assert cand.part("head") is not head


def test_a_space_without_parts_refuses_them():
    cand = Candidate(NoPartSpace(), Architecture(width=4))
    with pytest.raises(ValueError, match="has no model parts"):
        cand.part("head")
    with pytest.raises(ValueError, match="has no model parts"):
        cand.example_inputs(part="head")


def test_cli_run_with_an_unknown_part_exits_2(tmp_path):
    doc = {
        "name": "parts",
        "search_space": {"name": "conv_denoiser",
                         "params": {"depths": [1], "widths": [4], "kernels": [3], "input_size": 16}},
        "objectives": [{"name": "params", "id": "vae_decoder_params",
                        "params": {"part": "vae_decoder"}}],
        "strategy": {"name": "grid"},
        "budget": {"trials": 1},
    }
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(doc))
    for cmd in (("validate", str(exp)),
                ("run", str(exp), "--out", str(tmp_path / "run"), "--quiet", "--no-export")):
        res = cli_here(*cmd)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr
        assert ("objectives[0]: objective 'params' needs a search space that provides "
                "model_parts") in res.stderr
        assert "'conv_denoiser' provides image_to_image" in res.stderr
    assert not (tmp_path / "run").exists()
