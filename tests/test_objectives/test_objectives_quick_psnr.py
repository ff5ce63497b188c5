"""quick_psnr on a small real conv denoiser: beats the noisy input, deterministic."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nasframe.errors import ConfigError
from nasframe import Architecture, Candidate, Context, Integer, SearchSpace
from nasframe_objectives.quick_psnr import TRAIN_IMAGES, VAL_IMAGES, QuickPSNR


class Denoiser(nn.Module):
    """conv3x3(3->w)-ReLU-conv3x3(w->w)-ReLU-conv3x3(w->3) plus a global residual."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class DenoiserSpace(SearchSpace):
    name = "tiny_denoiser"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 8, 16, 8)]

    def build(self, arch):
        return Denoiser(arch["width"])


class Shrinks(SearchSpace):
    name = "shrinks"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 4)]

    def build(self, arch):
        return nn.Conv2d(3, 3, 3)  # no padding: output smaller than input


@pytest.fixture(scope="module")
def objective():
    return QuickPSNR()


@pytest.fixture
def ctx(tmp_path):
    return Context(run_dir=tmp_path, quiet=True)


def test_trained_denoiser_beats_identity(objective, ctx):
    space = DenoiserSpace()
    objective.prepare(space, ctx)
    cand = Candidate(space, Architecture(width=16), seed=0)
    before = [p.detach().clone() for p in cand.model.parameters()]
    value, prov = objective(cand, ctx)
    d = prov.details
    assert prov.kind == "proxy" and prov.backend == "torch"
    assert 19.0 < d["identity_psnr"] < 22.0  # sigma 25 on a 0-255 scale: about 20.6 dB
    assert value > d["identity_psnr"] + 2.0
    assert d["steps"] == 60 and d["sigma"] == 25.0
    assert d["train_images"] == list(TRAIN_IMAGES) and d["val_images"] == list(VAL_IMAGES)
    assert not set(d["train_images"]) & set(d["val_images"])
    # the candidate's model is left as built, in eval mode
    assert all(torch.equal(a, b) for a, b in zip(before, cand.model.parameters()))
    assert not cand.model.training


def test_deterministic(objective, ctx):
    space = DenoiserSpace()
    first = objective(Candidate(space, Architecture(width=8), seed=1), ctx)[0]
    again = objective(Candidate(space, Architecture(width=8), seed=1), ctx)[0]
    fresh = QuickPSNR()(Candidate(space, Architecture(width=8), seed=1), ctx)[0]
    assert first == again == fresh


def test_zero_steps_of_an_identity_like_model(ctx):
    class Identity(SearchSpace):
        name = "identity"
        input_shape = (3, 16, 16)

        def decisions(self):
            return [Integer("width", 1, 1)]

        def build(self, arch):
            return nn.Identity()

    value, prov = QuickPSNR(steps=0)(Candidate(Identity(), Architecture(width=1)), ctx)
    assert value == pytest.approx(prov.details["identity_psnr"])


def test_wrong_output_shape_is_a_clear_error(ctx):
    with pytest.raises(ValueError, match="image-to-image"):
        QuickPSNR(steps=1)(Candidate(Shrinks(), Architecture(width=4)), ctx)


def test_bad_params():
    with pytest.raises(ConfigError, match=r"params.patch: Input should be less than or equal to 128"):
        QuickPSNR(patch=1000)
    with pytest.raises(ConfigError, match=r"params.sigma: Input should be greater than 0"):
        QuickPSNR(sigma=0)
