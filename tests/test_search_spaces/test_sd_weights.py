"""sd_unet's teacher weights from disk, at SD 1.5's block structure (tiny widths): a diffusers
``save_pretrained`` pipeline folder, a bare U-Net folder, and a single-file checkpoint in the
original (CompVis/LDM) layout, converted offline by diffusers' ``from_single_file``. The
loaded teacher must equal the saved weights, and a run must go through surgery, pair
distillation and fidelity on them."""
from __future__ import annotations

import json
import re

import pytest
import torch

import nasframe
from nasframe.capabilities import Teacher
from nasframe.context import Context
from nasframe_search_spaces.sd_unet.network import PRESETS, from_diffusers_keys
from nasframe_search_spaces.sd_unet.space import SDUNetSpace
from nasframe_search_spaces.sd_unet.surgery import level_indices
from nasframe_search_spaces.sd_unet.vae import VAE_PRESETS

UNET, VAE = PRESETS["tiny"], VAE_PRESETS["tiny"]


@pytest.fixture(scope="module")
def models():
    """A tiny SD-1.5-structured U-Net and VAE (diffusers), random weights of fixed seeds."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(11)
    unet = UNet2DConditionModel(**UNET.to_diffusers()).eval()
    torch.manual_seed(12)
    vae = AutoencoderKL(**VAE.to_diffusers()).eval()
    # diffusers zero-initialises nothing here that would hide a wrong mapping, but make sure
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return unet, vae


@pytest.fixture(scope="module")
def pipeline_folder(models, tmp_path_factory):
    """A StableDiffusionPipeline-like folder: model_index.json, unet/, vae/ (save_pretrained)."""
    unet, vae = models
    root = tmp_path_factory.mktemp("sd") / "tiny-sd15"
    unet.save_pretrained(root / "unet", safe_serialization=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": [None, None],
        "tokenizer": [None, None], "safety_checker": [None, None],
        "feature_extractor": [None, None]}))
    for sub in ("unet", "vae"):
        assert (root / sub / "config.json").is_file()
        assert (root / sub / "diffusion_pytorch_model.safetensors").is_file()
    return root


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a)


@pytest.mark.slow
def test_a_pipeline_folder_runs_through_surgery_distillation_and_fidelity(models, pipeline_folder,
                                                                           tmp_path):
    unet, vae = models
    exp = nasframe.Experiment.from_dict({
        "name": "sd_from_disk", "seed": 0,
        "search_space": {"name": "sd_unet", "params": {
            "preset": "tiny", "pairs": ["full", "resnet", "removed"], "widths": [1.0, 0.5],
            "teacher": {"path": str(pipeline_folder)},
            "vae": {"search": True, "dec_widths": [1.0, 0.5], "dec_layers": [3],
                    "enc_widths": [1.0], "enc_layers": [2]},
            "fidelity": {"samples": 2, "batch_size": 2}, "latent_size": 8}},
        "objectives": [{"name": "gmacs"},
                       {"name": "fidelity", "params": {"distill": {"steps": 3}}},
                       {"name": "fidelity", "id": "vae_fidelity", "params": {"part": "vae_decoder"}}],
        "strategy": {"name": "random"},
        "budget": {"trials": 4},
        "references": ["sd15", "bk_sdm_tiny"]})
    run = exp.run(out=tmp_path / "run")
    rows = [r for r in run.rows() if r["status"] == "complete"]
    assert len(rows) >= 3
    by_origin = {r["origin"]: r for r in rows}
    # the full model is the teacher itself; the cut references are distilled and worse
    assert by_origin["reference:sd15"]["fidelity"] == pytest.approx(120.0)
    assert by_origin["reference:bk_sdm_tiny"]["fidelity"] < 120.0
    # the VAE decoder is the saved one too: the full-width decoder is the teacher's
    assert by_origin["reference:sd15"]["vae_fidelity"] == pytest.approx(120.0)
    half = [r for r in rows if r["arch.vae_dec_width"] == 0.5]
    assert all(r["vae_fidelity"] < 120.0 for r in half)
    # the space of the run read the saved weights: U-Net and VAE equal what was saved
    space = run.experiment().space
    space.prepare(Context(tmp_path / "check", quiet=True), frozenset({Teacher}))
    assert _equal(from_diffusers_keys(unet.state_dict()), space.teacher_state())
    assert _equal(vae.state_dict(), space.vae_teacher_state())
    # surgery inherits the loaded weights: a narrowed candidate takes the teacher's channels
    arch = {**space.reference_architectures()["nanosd"], "width0": 0.5}
    from nasframe.architecture import Architecture

    arch = Architecture(arch)
    idx = level_indices(space.teacher_state(), space.plan(arch))[0]
    student = space.build(arch).state_dict()
    assert torch.equal(student["conv_in.weight"], unet.state_dict()["conv_in.weight"][idx])


def test_the_loaded_teacher_equals_the_saved_weights(models, pipeline_folder):
    unet, vae = models
    want_unet, want_vae = from_diffusers_keys(unet.state_dict()), vae.state_dict()
    for path in (pipeline_folder, pipeline_folder / "unet"):          # pipeline or U-Net folder
        space = SDUNetSpace(preset="tiny", teacher={"path": str(path)})
        assert _equal(want_unet, space.teacher_state())
    # the pipeline's vae/ comes with it; a U-Net folder has none (random VAE) unless vae.path
    space = SDUNetSpace(preset="tiny", teacher={"path": str(pipeline_folder)})
    assert _equal(want_vae, space.vae_teacher_state())
    space = SDUNetSpace(preset="tiny", teacher={"path": str(pipeline_folder / "unet")})
    assert not _equal(want_vae, space.vae_teacher_state())
    space = SDUNetSpace(preset="tiny", teacher={"path": str(pipeline_folder / "unet")},
                        vae={"path": str(pipeline_folder / "vae")})
    assert _equal(want_vae, space.vae_teacher_state())
    # and the teacher computes what the diffusers U-Net computes
    x = (torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, UNET.context_length, 32))
    with torch.no_grad():
        torch.testing.assert_close(space.teacher()(*x), unet(*x).sample)


# ------------------------------------------------------------------ original (LDM) layout
def _unet_to_original(state: dict, attention=UNET.attention, layers=UNET.layers_per_block) -> dict:
    """diffusers U-Net names -> the original SD checkpoint's (``model.diffusion_model.*``):
    the layout to convert from (diffusers only converts the other way)."""
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}

    def resnet(rest: str) -> str:
        head, tail = rest.split(".", 1)
        return f"{res[head]}.{tail}"

    out = {}
    for k, v in state.items():
        if m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
            where, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
            idx = (layers + 1) * i + j + (1 if where == "down" else 0)
            block = "input_blocks" if where == "down" else "output_blocks"
            new = f"{block}.{idx}.0.{resnet(rest)}" if kind == "resnets" else f"{block}.{idx}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", k):
            new = f"input_blocks.{(layers + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", k):
            i = int(m[1])
            slot = 2 if attention[len(attention) - 1 - i] else 1
            new = f"output_blocks.{(layers + 1) * i + layers}.{slot}.conv.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k):
            new = (f"middle_block.{2 * int(m[2])}.{resnet(m[3])}" if m[1] == "resnets"
                   else f"middle_block.1.{m[3]}")
        else:
            name, kind = k.rsplit(".", 1)
            new = f"{top[name]}.{kind}"
        out["model.diffusion_model." + new] = v.contiguous()
    return out


def _vae_to_original(state: dict, levels=VAE.levels) -> dict:
    """diffusers AutoencoderKL names -> the original's (``first_stage_model.*``; the mid
    attention as 1x1 convolutions, as in SD's checkpoints)."""
    att = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in state.items():
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        n = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", n)
        n = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", n)
        n = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", n)
        n = n.replace("conv_norm_out", "norm_out").replace(".conv_shortcut.", ".nin_shortcut.")
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", n):
            n = f"{m[1]}.mid.attn_1.{att[m[2]]}.{m[3]}"
            v = v[:, :, None, None] if v.ndim == 2 else v
        out["first_stage_model." + n] = v.contiguous()
    return out


def test_a_single_file_original_checkpoint_is_converted_offline(models, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                 # nothing may be fetched
    unet, vae = models
    ckpt = {**_unet_to_original(unet.state_dict()), **_vae_to_original(vae.state_dict()),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(4)}
    save_file(ckpt, str(tmp_path / "tiny-v1-5.safetensors"))
    space = SDUNetSpace(preset="tiny", teacher={"path": str(tmp_path / "tiny-v1-5.safetensors")})
    assert _equal(from_diffusers_keys(unet.state_dict()), space.teacher_state())
    assert _equal(vae.state_dict(), space.vae_teacher_state())       # its first_stage_model
    # a .ckpt (torch.save of {"state_dict": ...}, read with weights_only=True) too
    torch.save({"state_dict": ckpt}, tmp_path / "tiny.ckpt")
    space = SDUNetSpace(preset="tiny", teacher={"path": str(tmp_path / "tiny.ckpt")})
    assert _equal(from_diffusers_keys(unet.state_dict()), space.teacher_state())
    # a bare original VAE file (no prefix, as SD's separately published VAEs)
    bare = {k.removeprefix("first_stage_model."): v for k, v in _vae_to_original(vae.state_dict()).items()}
    save_file(bare, str(tmp_path / "vae-ft.safetensors"))
    space = SDUNetSpace(preset="tiny", vae={"path": str(tmp_path / "vae-ft.safetensors")})
    assert _equal(vae.state_dict(), space.vae_teacher_state())
    # a checkpoint missing a tensor is an error, not a silently initialised one
    cut = dict(ckpt)
    del cut["model.diffusion_model.out.2.bias"]
    save_file(cut, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match="teacher.path.*with .* unet tensors"):
        SDUNetSpace(preset="tiny", teacher={"path": str(tmp_path / "cut.safetensors")}).teacher_state()
    # another preset's structure: a clear error naming the field and the file
    other = SDUNetSpace(preset="tiny16", teacher={"path": str(tmp_path / "tiny-v1-5.safetensors")})
    with pytest.raises(ValueError, match=r"teacher\.path.*tiny-v1-5\.safetensors.*original-SD"):
        other.teacher_state()
