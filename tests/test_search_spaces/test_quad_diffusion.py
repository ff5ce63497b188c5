"""quad.diffusion: QUAD's pieces on sd_unet's one-step SR U-Net (the tiny preset, untrained:
the wiring, not the quality; the trained comparison is tests/test_benchmarks/test_quad_diffusion_report.py)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from nasframe.params import ParamError  # noqa: E402
from nasframe.testing import plugin_context  # noqa: E402
from nasframe_search_spaces.quad.diffusion import DiffusionQuad, OneStepDenoiser  # noqa: E402
from nasframe_search_spaces.quad.lora import LoRANet  # noqa: E402
from nasframe_search_spaces.quad.quant import QuantSim  # noqa: E402
from nasframe_search_spaces.sd_unet import sr  # noqa: E402
from nasframe_search_spaces.sd_unet.network import PRESETS, SDUNet, UNetPlan  # noqa: E402


def one_step_net(rank: int = 2) -> tuple[sr.SRUNet, torch.Tensor, LoRANet]:
    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    unet = sr.SRUNet(SDUNet(UNetPlan.teacher(cfg)), cfg.in_channels).eval()
    with torch.no_grad():      # a condition the model reads (the widened filters start at zero)
        unet.backbone.conv_in.weight[:, cfg.in_channels:].normal_(0, 0.05)
    ehs = torch.randn(1, cfg.context_length, cfg.cross_attention_dim)
    return unet, ehs, LoRANet(OneStepDenoiser(unet, ehs), rank=rank).eval()


def test_one_step_denoiser_is_srs_one_step_call_as_one_input():
    unet, ehs, net = one_step_net()
    z, c = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want = sr.one_step(unet, z, c, ehs)
        torch.testing.assert_close(net.net(torch.cat([z, c], 1)), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(torch.cat([z, c], 1)), want, rtol=1e-5, atol=1e-5)
    # every Linear/Conv2d of the U-Net carries an adapter: attention, resnets, time embedding
    names = [s.name for s in net.slots]
    assert len(names) > 200 and any("attention" in n for n in names) \
        and any("time_embedding" in n for n in names) and any(n.endswith("conv_in") for n in names)


@pytest.mark.slow
def test_one_shared_profile_quantises_both_tasks_and_a_naive_one_clips_the_other():
    """QuantSim over the one-step U-Net: a profile calibrated on both tasks' inputs vs one
    calibrated on the first only, scored on the second task (its condition 4x wider)."""
    from diffusers.models.resnet import ResnetBlock2D

    _, _, net = one_step_net()
    sim = QuantSim(net, bits=lambda name: (8, 8), observe_types=(ResnetBlock2D,))
    g = torch.Generator().manual_seed(1)
    x = {"sr": torch.randn(2, 8, 8, 8, generator=g), "deblur": torch.randn(2, 8, 8, 8, generator=g)}
    x["deblur"][:, 4:] *= 4
    ads = {"sr": net.init_adapter(seed=0, b_std=0.02), "deblur": net.init_adapter(seed=1, b_std=0.02)}
    shared = sim.calibrate([(x[t], ads[t]) for t in x])
    naive = sim.calibrate([(x["sr"], ads["sr"])])
    assert "@input" in shared.encodings and any(k.endswith(".A") for k in shared.encodings)
    with torch.no_grad():
        ref = net(x["deblur"], *ads["deblur"])
        err = {}
        for name, prof in (("shared", shared), ("naive", naive)):
            sim.set_mode("quant", prof)
            err[name] = float((sim(x["deblur"], *ads["deblur"]) - ref).abs().mean())
        sim.set_mode("float")
    assert 0 < err["shared"] < err["naive"], err


def test_bad_settings_name_the_field(tmp_path):
    ctx = plugin_context(tmp_path)
    with pytest.raises(ParamError, match="tasks"):
        DiffusionQuad(ctx, {"tasks": ["sr", "sr"]})
    with pytest.raises(ParamError, match="sr.task"):
        DiffusionQuad(ctx, {"sr": {"task": "deblur"}})
    with pytest.raises(ValueError, match="bits"):
        DiffusionQuad(ctx, {"bits": "w2a2"})


@pytest.mark.slow
def test_the_one_step_adapter_graph_in_onnxruntime_matches_the_merged_unet(tmp_path):
    pytest.importorskip("onnxruntime")
    from nasframe_search_spaces.quad.deploy import export_adapter_graph

    _, _, net = one_step_net()
    adapters = {"sr": net.init_adapter(seed=0, b_std=0.02), "deblur": net.init_adapter(seed=1, b_std=0.02)}
    x = torch.randn(1, 8, 8, 8)
    r = export_adapter_graph(net, x, adapters, tmp_path / "one_step.onnx")
    assert r["lora_initializers"] == 0 and r["lora_inputs"] == 2 * len(net.slots)
    for task, err in r["per_task"].items():
        assert err["max_rel_error"] < 1e-4, (task, err)
