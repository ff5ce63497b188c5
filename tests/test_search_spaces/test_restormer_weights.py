"""hybrid_unet's teacher from a published Restormer checkpoint, as released.

The files are written here in the layout of Restormer's ``restormer_arch.py``
(github.com/swz30/Restormer): the names and shapes of its state dict, listed
below from the architecture (no code of theirs), at the tiny preset's width,
both LayerNorm types, wrapped as ``{"params": state_dict}`` like the released
``.pth`` files. The loaded teacher must compute what an independent functional
forward pass of those published tensors computes.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import cli_here
from nasframe.capabilities import TrainedWeights
from nasframe.errors import ConfigError
from nasframe.testing import plugin_context
from nasframe_search_spaces.hybrid_unet import align, weights
from nasframe_search_spaces.hybrid_unet.data import RestorationData, psnr
from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

#: the tiny preset: dim 8, blocks (1, 1, 1, 1), 1 refinement block, heads (1, 1, 1, 2)
TINY = {"dim": 8, "blocks": (1, 1, 1, 1), "refinement": 1, "heads": (1, 1, 1, 2)}
DATA = {"short_side": 48, "val_size": 32, "patch": 16}
LEVELS = (  # (module, channel multiple, heads index, blocks index; -1: refinement), in order
    ("encoder_level1", 1, 0, 0), ("down1_2", 1, None, None),
    ("encoder_level2", 2, 1, 1), ("down2_3", 2, None, None),
    ("encoder_level3", 4, 2, 2), ("down3_4", 4, None, None),
    ("latent", 8, 3, 3), ("up4_3", 8, None, None), ("reduce_chan_level3", 8, None, None),
    ("decoder_level3", 4, 2, 2), ("up3_2", 4, None, None), ("reduce_chan_level2", 4, None, None),
    ("decoder_level2", 2, 1, 1), ("up2_1", 2, None, None),
    ("decoder_level1", 2, 0, 0), ("refinement", 2, 0, -1))


def published_shapes(dim=8, blocks=(1, 1, 1, 1), refinement=1, heads=(1, 1, 1, 2),
                     ffn_factor=2.66, norm="WithBias", channels=3) -> dict[str, tuple]:
    """The state dict of ``Restormer(...)`` in restormer_arch.py: name -> shape, in order.
    (No conv biases: the released networks have ``bias=False``.)"""
    out = {"patch_embed.proj.weight": (dim, channels, 3, 3)}

    def block(prefix: str, c: int, h: int) -> None:
        hidden = int(c * ffn_factor)
        for norm_name, part in (("norm1", "attn"), ("norm2", "ffn")):
            out[f"{prefix}.{norm_name}.body.weight"] = (c,)
            if norm == "WithBias":
                out[f"{prefix}.{norm_name}.body.bias"] = (c,)
            if part == "attn":
                out.update({f"{prefix}.attn.temperature": (h, 1, 1),
                            f"{prefix}.attn.qkv.weight": (3 * c, c, 1, 1),
                            f"{prefix}.attn.qkv_dwconv.weight": (3 * c, 1, 3, 3),
                            f"{prefix}.attn.project_out.weight": (c, c, 1, 1)})
            else:
                out.update({f"{prefix}.ffn.project_in.weight": (2 * hidden, c, 1, 1),
                            f"{prefix}.ffn.dwconv.weight": (2 * hidden, 1, 3, 3),
                            f"{prefix}.ffn.project_out.weight": (c, hidden, 1, 1)})

    for name, mult, head_i, block_i in LEVELS:
        c = dim * mult
        if name.startswith("down"):
            out[f"{name}.body.0.weight"] = (c // 2, c, 3, 3)
        elif name.startswith("up"):
            out[f"{name}.body.0.weight"] = (c * 2, c, 3, 3)
        elif name.startswith("reduce"):
            out[f"{name}.weight"] = (c // 2, c, 1, 1)
        else:
            for i in range(refinement if block_i == -1 else blocks[block_i]):
                block(f"{name}.{i}", c, heads[head_i])
    out["output.weight"] = (channels, 2 * dim, 3, 3)
    return out


def published_state(norm: str, seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout (norm weights near 1, temperatures > 0)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in published_shapes(norm=norm, **kw).items():
        t = torch.randn(shape, generator=g)
        if name.endswith("body.weight") or name.endswith("temperature"):
            t = 1 + 0.2 * t.abs() if name.endswith("temperature") else 1 + 0.2 * t
        elif name.endswith("body.bias"):
            t = 0.1 * t
        else:
            fan_in = math.prod(shape[1:])
            t = t / math.sqrt(fan_in)
        out[name] = t
    return out


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads=(1, 1, 1, 2)) -> torch.Tensor:
    """Restormer's forward pass written from the paper with the published tensor names
    (functional, independent of the network in nasframe_search_spaces)."""
    def norm(t, p):
        w, b = sd[f"{p}.body.weight"], sd.get(f"{p}.body.bias")
        var = t.var(1, keepdim=True, unbiased=False)
        if b is None:                       # BiasFree: scale only, mean kept
            return t / torch.sqrt(var + 1e-5) * w[:, None, None]
        return (t - t.mean(1, keepdim=True)) / torch.sqrt(var + 1e-5) * w[:, None, None] + b[:, None, None]

    def block(t, p, h):
        b, c, hh, ww = t.shape
        y = norm(t, f"{p}.norm1")
        qkv = F.conv2d(F.conv2d(y, sd[f"{p}.attn.qkv.weight"]), sd[f"{p}.attn.qkv_dwconv.weight"],
                       padding=1, groups=3 * c)
        q, k, v = (z.reshape(b, h, c // h, hh * ww) for z in qkv.chunk(3, 1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * sd[f"{p}.attn.temperature"]).softmax(-1)
        t = t + F.conv2d((attn @ v).reshape(b, c, hh, ww), sd[f"{p}.attn.project_out.weight"])
        y = norm(t, f"{p}.norm2")
        a, gate = F.conv2d(F.conv2d(y, sd[f"{p}.ffn.project_in.weight"]), sd[f"{p}.ffn.dwconv.weight"],
                           padding=1, groups=sd[f"{p}.ffn.dwconv.weight"].shape[0]).chunk(2, 1)
        return t + F.conv2d(F.gelu(a) * gate, sd[f"{p}.ffn.project_out.weight"])

    def level(t, name, h):
        i = 0
        while f"{name}.{i}.attn.qkv.weight" in sd:
            t = block(t, f"{name}.{i}", h)
            i += 1
        return t

    def down(t, name):
        return F.pixel_unshuffle(F.conv2d(t, sd[f"{name}.body.0.weight"], padding=1), 2)

    def up(t, name):
        return F.pixel_shuffle(F.conv2d(t, sd[f"{name}.body.0.weight"], padding=1), 2)

    e1 = level(F.conv2d(x, sd["patch_embed.proj.weight"], padding=1), "encoder_level1", heads[0])
    e2 = level(down(e1, "down1_2"), "encoder_level2", heads[1])
    e3 = level(down(e2, "down2_3"), "encoder_level3", heads[2])
    lat = level(down(e3, "down3_4"), "latent", heads[3])
    d3 = F.conv2d(torch.cat([up(lat, "up4_3"), e3], 1), sd["reduce_chan_level3.weight"])
    d3 = level(d3, "decoder_level3", heads[2])
    d2 = F.conv2d(torch.cat([up(d3, "up3_2"), e2], 1), sd["reduce_chan_level2.weight"])
    d2 = level(d2, "decoder_level2", heads[1])
    d1 = level(torch.cat([up(d2, "up2_1"), e1], 1), "decoder_level1", heads[0])
    d1 = level(d1, "refinement", heads[0])
    return F.conv2d(d1, sd["output.weight"], padding=1) + x


def _save(path, state):
    torch.save({"params": state}, path)
    return path


@pytest.mark.parametrize("norm", ["BiasFree", "WithBias"])
def test_published_checkpoint_loads_as_released(norm, tmp_path):
    sd = published_state(norm)
    path = _save(tmp_path / f"{norm}.pth", sd)
    space = HybridUNetSpace(preset="tiny", granularity="stage", input_size=16, data=DATA,
                            teacher={"weights": str(path)})
    # the LayerNorm type follows the file: WithBias has norm biases, BiasFree none
    assert space.config.norm_bias is (norm == "WithBias")
    # the teacher as prepare() makes it (the CLI test below runs the whole preparation)
    teacher, report = align.prepare_teacher(space.config, space.data, plugin_context(tmp_path),
                                            space.teacher_params)
    assert report == {"source": str(path), "layout": "restormer", "norm": norm}
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = teacher(x), reference_forward(sd, x)
    assert (ours - x).abs().mean() > 0.05                  # not the identity: the weights act
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    # every published tensor is in the teacher, under its renamed key
    state = teacher.state_dict()
    assert torch.equal(state["patch_embed.weight"], sd["patch_embed.proj.weight"])
    assert torch.equal(state["up2_1.0.weight"], sd["up2_1.body.0.weight"])
    assert torch.equal(state["latent.0.norm2.weight"], sd["latent.0.norm2.body.weight"])
    assert len(weights.to_network_keys(sd)) == len(sd) == len(state)
    # the teacher saved in this network's own names loads back as it is
    own = _save(tmp_path / "own.pt", state)
    again = HybridUNetSpace(preset="tiny", data=DATA, teacher={"weights": str(own)})
    reloaded, report = align.prepare_teacher(again.config, again.data, plugin_context(tmp_path),
                                             again.teacher_params)
    assert report["layout"] == "network" and again.config.norm_bias is (norm == "WithBias")
    with torch.no_grad():
        assert torch.equal(reloaded(x), ours)


def test_renaming_leaves_this_networks_own_names_alone():
    sd = weights.to_network_keys(published_state("WithBias"))
    assert weights.to_network_keys(sd).keys() == sd.keys()
    assert not weights.is_published(sd) and weights.is_published(published_state("BiasFree"))
    assert weights.file_norm_bias(sd) is True
    assert weights.file_norm_bias(weights.to_network_keys(published_state("BiasFree"))) is False


def test_the_full_size_layout_fits_the_restormer_preset(tmp_path):
    """The released networks' key lists (dim 48, blocks 4-6-6-8, 4 refinement, heads 1-2-4-8):
    494 tensors WithBias, 406 BiasFree; both fit `preset: restormer` with no override."""
    from nasframe_search_spaces.hybrid_unet.network import preset

    full = {"dim": 48, "blocks": (4, 6, 6, 8), "refinement": 4, "heads": (1, 2, 4, 8)}
    for norm, count in (("WithBias", 494), ("BiasFree", 406)):
        shapes = published_shapes(norm=norm, **full)
        assert len(shapes) == count
        state = weights.to_network_keys({k: torch.empty(s, device="meta") for k, s in shapes.items()})
        weights.check_fits(state, preset("restormer", norm_bias=norm == "WithBias"), "file")
        with pytest.raises(ConfigError, match="norm_bias"):
            weights.check_fits(state, preset("restormer", norm_bias=norm != "WithBias"), "file")


def test_files_that_do_not_fit_name_the_param_and_the_fix(tmp_path):
    need = frozenset({TrainedWeights})
    biasfree = _save(tmp_path / "real_denoising.pth", published_state("BiasFree"))
    # an explicit norm_bias that contradicts the file: the missing biases and the fix
    with pytest.raises(ConfigError, match=r"`teacher.weights`: .*real_denoising.pth' does not fit "
                                          r".*16 key\(s\) missing from the file: "
                                          r"encoder_level1.\*.norm1.bias.*BiasFree.*"
                                          r"`network.norm_bias: false`"):
        HybridUNetSpace(preset="tiny", data=DATA, network={"norm_bias": True},
                        teacher={"weights": str(biasfree)})
    # the full-size network's file into the tiny preset: shapes differ, use preset restormer
    big = {k: torch.zeros(s) for k, s in published_shapes(
        dim=48, blocks=(1, 1, 1, 1), refinement=1, heads=(1, 1, 1, 2)).items()}
    with pytest.raises(ConfigError, match=r"shape\(s\) differ, e.g. patch_embed.weight "
                                          r"\(48, 3, 3, 3\) in the file, \(8, 3, 3, 3\) here.*"
                                          r"use `preset: restormer`"):
        HybridUNetSpace(preset="tiny", data=DATA, teacher={"weights": str(_save(tmp_path / "b.pth", big))})
    # grey denoising (1 channel) and dual-pixel defocus (skip_conv, 6 channels) are refused by name
    grey = {k: torch.zeros(s) for k, s in published_shapes(norm="BiasFree", channels=1).items()}
    with pytest.raises(ConfigError, match="1-channel inputs.*gaussian_color_denoising_blind"):
        HybridUNetSpace(preset="tiny", data=DATA, teacher={"weights": str(_save(tmp_path / "g.pth", grey))})
    dual = {**published_state("WithBias"), "skip_conv.weight": torch.zeros(16, 8, 1, 1)}
    with pytest.raises(ConfigError, match="dual-pixel"):
        HybridUNetSpace(preset="tiny", data=DATA, teacher={"weights": str(_save(tmp_path / "d.pth", dual))})
    # an extra block in the file: unexpected keys, summarised by name
    extra = {**published_state("WithBias"), **{k.replace("latent.0", "latent.1"): v
                                               for k, v in published_state("WithBias").items()
                                               if k.startswith("latent.0.")}}
    with pytest.raises(ConfigError, match=r"11 unexpected key\(s\) in the file: latent.\*.norm1.weight"):
        HybridUNetSpace(preset="tiny", data=DATA, teacher={"weights": str(_save(tmp_path / "e.pth", extra))}
                        ).prepare(plugin_context(tmp_path), need)
    torch.save({"params": {"a": [1, 2]}}, tmp_path / "nested.pth")
    with pytest.raises(ConfigError, match="holds no state dict of tensors"):
        HybridUNetSpace(preset="tiny", data=DATA, teacher={"weights": str(tmp_path / "nested.pth")})


def _experiment(tmp_path, weights_path, **search_space) -> str:
    exp = {"name": "published", "seed": 0,
           "search_space": {"name": "hybrid_unet", "params": {
               "preset": "tiny", "granularity": "stage", "input_size": 16, "data": DATA,
               "teacher": {"weights": str(weights_path)},
               "distill": {"steps": 1, "batch_size": 1}, **search_space}},
           "objectives": [{"name": "psnr"}], "strategy": {"name": "random"},
           "budget": {"trials": 1}, "output": str(tmp_path / "run")}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return str(path)


@pytest.mark.slow   # ~20-35 s on 2 shared cores: the whole preparation in a subprocess
def test_cli_evaluates_the_published_teacher(tmp_path):
    """`nasframe evaluate --arch teacher` with a released-layout file: its PSNR is the
    reference forward pass's on the same validation images."""
    sd = published_state("BiasFree", seed=3)
    sd["output.weight"] *= 0.1            # a small correction of the input: few clamped pixels
    path = _save(tmp_path / "gaussian_color_denoising_blind.pth", sd)
    out = cli_here("evaluate", _experiment(tmp_path, path), "--arch", "teacher", "--quiet")
    assert out.returncode == 0, out.stderr
    value = json.loads(out.stdout)["values"]["psnr"]["value"]
    pairs = RestorationData.from_params(DATA, task_default="denoise", seed=0).validation()
    with torch.no_grad():
        expected = sum(psnr(reference_forward(sd, x).clamp(0, 1), y) for x, y in pairs) / len(pairs)
    inputs = sum(psnr(x, y) for x, y in pairs) / len(pairs)
    assert value == pytest.approx(expected, abs=1e-3) and abs(value - inputs) > 0.1


def test_cli_validate_refuses_a_file_that_does_not_fit(tmp_path):
    """Exit 2, naming `teacher.weights`, what is missing and the fix; no traceback."""
    path = _save(tmp_path / "real_denoising.pth", published_state("BiasFree"))
    bad = cli_here("validate", _experiment(tmp_path, path, network={"norm_bias": True}))
    assert bad.returncode == 2
    assert "`teacher.weights`" in bad.stderr and "missing from the file" in bad.stderr
    assert "`network.norm_bias: false`" in bad.stderr and "Traceback" not in bad.stderr
