"""Model parts: a space builds extra modules besides its main model, and ``params``,
``gmacs`` and ``latency`` score one of them through their ``part`` param."""
from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from conftest import run_cli
from nasframe import Architecture, Candidate, Context, Integer, SearchSpace
from nasframe.errors import ConfigError
from objectives.cost import GMACs, Params
from objectives.latency import Latency


class TwoPartSpace(SearchSpace):
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
            return super().build_part(arch, part)
        return nn.Linear(arch["width"], 3)

    def part_example_inputs(self, arch, part, input_shape=None, batch_size=1):
        if part != "head":
            return super().part_example_inputs(arch, part, input_shape, batch_size)
        shape = tuple(input_shape) if input_shape else (batch_size, arch["width"])
        return (torch.randn(*shape),)


class NoPartSpace(TwoPartSpace):
    name = "no_part"

    def parts(self):
        return ()


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
    value, prov = run(Latency(part="head", warmup=0, repeats=2, batch_size=2), space, cand, ctx)
    assert value > 0
    assert prov.details["input_shape"] == [2, 8]
    assert prov.details["part"] == "head"


def test_main_model_unaffected_without_part(space, cand, ctx):
    _, prov = run(Params(), space, cand, ctx)
    assert prov.details["count"] == 3 * 8 * 9 + 8
    assert "part" not in prov.details
    _, prov = run(GMACs(), space, cand, ctx)
    assert prov.details["macs"] == 3 * 8 * 9 * 64 and "part" not in prov.details
    _, prov = run(Latency(warmup=0, repeats=1), space, cand, ctx)
    assert prov.details["input_shape"] == [1, 3, 8, 8] and "part" not in prov.details
    assert cand.module() is cand.model and cand.module(None) is cand.part(None)


@pytest.mark.parametrize("make,field", [
    (lambda: Params(part="vae_decoder"), "params.params.part"),
    (lambda: GMACs(part="vae_decoder"), "gmacs.params.part"),
    (lambda: Latency(part="vae_decoder"), "latency.params.part"),
])
def test_unknown_part_is_a_config_error(make, field, space, ctx):
    with pytest.raises(ConfigError) as err:
        make().prepare(space, ctx)
    msg = str(err.value)
    assert field in msg and "'vae_decoder'" in msg and "available: head" in msg
    with pytest.raises(ConfigError, match="has no parts") as err:
        make().prepare(NoPartSpace(), ctx)
    assert field in str(err.value) and "'vae_decoder'" in str(err.value)


@pytest.mark.parametrize("bad", ["", "  ", 3, ["head"]])
def test_part_must_be_a_non_empty_string(bad):
    for cls, field in ((Params, "params.params.part"), (GMACs, "gmacs.params.part"),
                       (Latency, "latency.params.part")):
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
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


def test_default_hooks_refuse_parts():
    space = NoPartSpace()
    arch = Architecture(width=4)
    assert SearchSpace.parts(space) == ()
    with pytest.raises(ValueError, match="'head'.*no parts"):
        SearchSpace.build_part(space, arch, "head")
    with pytest.raises(ValueError, match="'head'.*no parts"):
        SearchSpace.part_example_inputs(space, arch, "head")
    with pytest.raises(ValueError, match="'vae'.*its parts are: head"):
        TwoPartSpace().build_part(arch, "vae")


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
    res = run_cli("run", str(exp), "--out", str(tmp_path / "run"), "--quiet", "--no-export")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "params.params.part" in res.stderr and "'vae_decoder'" in res.stderr
    assert "has no parts" in res.stderr
