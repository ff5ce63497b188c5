"""The 16-channel expansion: function-preserving transfer, re-alignment, the tiny16/latent16 presets."""
from __future__ import annotations

import pytest
import torch

from nasframe.capabilities import Teacher
from nasframe.context import Context
from nasframe_search_spaces.sd_unet import expand
from nasframe_search_spaces.sd_unet.network import PRESETS, SDUNet, UNetPlan
from nasframe_search_spaces.sd_unet.space import SDUNetSpace
from nasframe_search_spaces.sd_unet.vae import VAE_PRESETS

TRAIN = {"steps": 2, "vae_steps": 1, "batch_size": 2, "vae_crop": 16, "latent_size": 8, "pool": 4,
         "expand_steps": 2, "expand_vae_steps": 1}


def test_expanded_unet_computes_the_old_model_on_channels_0_to_3():
    torch.manual_seed(0)
    old = SDUNet(UNetPlan.teacher(PRESETS["tiny"])).eval()
    new = SDUNet(UNetPlan.teacher(PRESETS["tiny16"])).eval()
    new.load_state_dict(expand.expand_unet(old.state_dict(), PRESETS["tiny16"]))
    x = torch.randn(2, 16, 8, 8)
    t, ehs = torch.tensor([10, 600]), torch.randn(2, 8, 32)
    with torch.no_grad():
        a, b = old(x[:, :4], t, ehs), new(x, t, ehs)
    assert torch.allclose(b[:, :4], a, atol=1e-5) and float(b[:, 4:].abs().max()) == 0


def test_expanded_vae_keeps_the_old_latent_and_decodes_what_the_old_one_decoded():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    old = AutoencoderKL(**VAE_PRESETS["tiny"].to_diffusers()).eval()
    new = AutoencoderKL(**VAE_PRESETS["tiny16"].to_diffusers()).eval()
    new.load_state_dict(expand.expand_vae(old.state_dict(), VAE_PRESETS["tiny16"]))
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        m_old, m_new = old.encode(img).latent_dist, new.encode(img).latent_dist
        assert torch.allclose(m_new.mean[:, :4], m_old.mean, atol=1e-5)
        assert torch.allclose(m_new.logvar[:, :4], m_old.logvar, atol=1e-5)
        z = torch.cat([m_old.mean, torch.randn(1, 12, 4, 4)], 1)
        assert torch.allclose(new.decode(z).sample, old.decode(m_old.mean).sample, atol=1e-5)


@pytest.mark.slow
def test_tiny16_space_trains_expands_and_realigns_its_teacher(tmp_path):
    space = SDUNetSpace({"preset": "tiny16", "latent_size": 8, "fidelity": {"samples": 2, "batch_size": 2},
                         "teacher": {"train": TRAIN}})
    space.prepare(Context(tmp_path, quiet=True), frozenset({Teacher}))
    cache = tmp_path / "cache" / "sd_unet"
    assert len(list((cache / "teacher").glob("*.safetensors"))) == 1       # the 4-channel base
    assert len(list((cache / "expanded").glob("*.safetensors"))) == 1
    state = space.teacher_state()
    assert state["conv_in.weight"].shape[1] == 16 and state["conv_out.weight"].shape[0] == 16
    (sample, _, _), = space.fidelity_inputs()
    assert sample.shape == (2, 16, 8, 8)
    assert space.vae_teacher_state()["decoder.conv_in.weight"].shape[1] == 16


def test_latent16_is_sd15_on_a_16_channel_latent():
    with torch.device("meta"):
        n16 = sum(p.numel() for p in SDUNet(UNetPlan.teacher(PRESETS["latent16"])).parameters())
    # conv_in gains 12 input channels x 320 filters x 9; conv_out 12 x 320 x 9 weights + 12 biases
    assert n16 == 859_520_964 + 2 * 12 * 320 * 9 + 12
    assert expand.EXPANDS_FROM["latent16"] == "sd15"
    assert SDUNetSpace({"preset": "latent16"}).input_shape == (16, 64, 64)
