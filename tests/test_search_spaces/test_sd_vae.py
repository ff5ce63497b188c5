"""The SD VAE parts of ``sd_unet``: building, inheriting and loading (:mod:`nasframe_search_spaces.sd_unet.vae`)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402

from nasframe_search_spaces.sd_unet.vae import (  # noqa: E402
    VAE_PRESETS,
    VAEConfig,
    VAEDecoder,
    VAEEncoder,
    build_vae_part,
    inherit_decoder,
    inherit_encoder,
    inherit_vae,
    load_vae_teacher,
    vae_example_inputs,
    vae_level_indices,
)

TINY = VAE_PRESETS["tiny"]
SIDE = 16                    # image side of the tests (latent 2 x 2)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def teacher() -> AutoencoderKL:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoencoderKL(**TINY.to_diffusers())
    return model.eval()


@pytest.fixture(scope="module")
def state(teacher) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in teacher.state_dict().items()}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return vae_example_inputs(TINY, "encoder", batch_size=2, image_size=SIDE)[0]


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return vae_example_inputs(TINY, "decoder", batch_size=2, image_size=SIDE)[0]


# ---------------------------------------------------------------- config and counts
def test_sd15_parameter_counts_match_references_on_meta():
    cfg = VAE_PRESETS["sd15"]
    with torch.device("meta"):
        enc, dec = VAEEncoder(cfg), VAEDecoder(cfg)
        ref = AutoencoderKL(**cfg.to_diffusers())
    # SD 1.5 (docs/sd.md): 83,653,863 in all; encoder 34,163,592 and decoder 49,490,179 are
    # diffusers' bare Encoder / Decoder (without the 1x1 quant convs)
    assert n_params(ref) == 83_653_863
    assert n_params(enc.encoder) == 34_163_592
    assert n_params(dec.decoder) == 49_490_179
    assert n_params(enc) == 34_163_592 + 8 * 8 + 8
    assert n_params(dec) == 49_490_179 + 4 * 4 + 4
    assert n_params(enc) + n_params(dec) == 83_653_863
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    ours = {k: v.shape for m in (enc, dec) for k, v in m.state_dict().items()}
    assert ours == ref_shapes


def test_config_round_trips_through_diffusers_and_rejects_unsupported(teacher):
    assert VAEConfig.from_diffusers(dict(teacher.config)) == TINY
    assert VAEConfig.from_diffusers(VAE_PRESETS["latent16"].to_diffusers()).latent_channels == 16
    with pytest.raises(ValueError, match="down_block_types"):
        VAEConfig.from_diffusers({**TINY.to_diffusers(),
                                  "down_block_types": ["AttnDownEncoderBlock2D"] * 4})
    with pytest.raises(ValueError, match="use_quant_conv"):
        VAEConfig.from_diffusers({**TINY.to_diffusers(), "use_quant_conv": False})
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        VAEConfig.from_diffusers({"_class_name": "UNet2DConditionModel"})


def test_widths_are_multiples_of_the_groups_and_streams_share():
    assert TINY.widths(1.0) == (32, 64, 128, 128)
    assert TINY.widths(0.5) == (16, 32, 64, 64)
    assert TINY.widths(0.1) == (8, 8, 16, 16)
    assert VAE_PRESETS["sd15"].widths(0.75) == (96, 192, 384, 384)
    assert TINY.stream_groups() == [[0], [1], [2, 3]]
    with pytest.raises(ValueError, match="width_mult"):
        TINY.widths(0)


def test_example_inputs():
    (x,) = vae_example_inputs(TINY, "vae_encoder", batch_size=3)
    assert x.shape == (3, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    (z,) = vae_example_inputs(VAE_PRESETS["sd15"], "decoder")
    assert z.shape == (1, 4, 64, 64)
    (z,) = vae_example_inputs(TINY, "decoder", input_shape=(2, 4, 5, 7))
    assert z.shape == (2, 4, 5, 7)
    with pytest.raises(ValueError, match="multiple of 8"):
        vae_example_inputs(TINY, "encoder", image_size=30)
    with pytest.raises(ValueError, match="part"):
        vae_example_inputs(TINY, "unet")
    with pytest.raises(ValueError, match=r"\(batch, 4"):
        vae_example_inputs(TINY, "decoder", input_shape=(1, 3, 8, 8))


# ---------------------------------------------------------------- full width = AutoencoderKL
@torch.no_grad()
def test_full_width_parts_reproduce_autoencoderkl(teacher, state, image, latent):
    enc = inherit_encoder(VAEEncoder(TINY), state).eval()
    dec = inherit_decoder(VAEDecoder(TINY), state).eval()
    moments, out = enc(image), dec(latent)
    assert moments.shape == (2, 8, SIDE // 8, SIDE // 8) and out.shape == (2, 3, SIDE, SIDE)
    assert torch.equal(moments, teacher.encode(image).latent_dist.parameters)
    assert torch.equal(out, teacher.decode(latent).sample)


# ---------------------------------------------------------------- fewer resnets per stage
@torch.no_grad()
def test_kept_resnets_compute_their_teachers_block(teacher, state):
    enc = inherit_vae(VAEEncoder(TINY, 1.0, layers=1), state).eval()
    dec = inherit_vae(VAEDecoder(TINY, 1.0, layers=2), state).eval()
    assert enc.layers == 1 and len(enc.encoder.down_blocks[1].resnets) == 1
    assert dec.layers == 2 and len(dec.decoder.up_blocks[2].resnets) == 2
    assert n_params(enc) < n_params(VAEEncoder(TINY)) and n_params(dec) < n_params(VAEDecoder(TINY))
    torch.manual_seed(1)
    x = torch.randn(2, 32, 8, 8)        # input of encoder stage 1 (from level 0)
    assert torch.equal(enc.encoder.down_blocks[1].resnets[0](x, None),
                       teacher.encoder.down_blocks[1].resnets[0](x, None))
    y = torch.randn(2, 32, 8, 8)        # decoder up stage 3 (level 0), its second resnet
    assert torch.equal(dec.decoder.up_blocks[3].resnets[1](y, None),
                       teacher.decoder.up_blocks[3].resnets[1](y, None))
    # kept tensors are the teacher's, under the same names
    for name, t in {**enc.state_dict(), **dec.state_dict()}.items():
        assert torch.equal(t, state[name]), name
    assert "decoder.up_blocks.0.resnets.2.conv1.weight" not in dec.state_dict()


# ---------------------------------------------------------------- narrowing
@pytest.mark.parametrize("width", [0.5, 0.75])
@torch.no_grad()
def test_narrowed_students_inherit_teacher_slices(state, image, latent, width):
    enc = inherit_vae(build_vae_part(TINY, "vae_encoder", width, 1), state).eval()
    dec = inherit_vae(build_vae_part(TINY, "vae_decoder", width, 2), state).eval()
    moments, out = enc(image), dec(latent)
    assert moments.shape == (2, 8, SIDE // 8, SIDE // 8) and torch.isfinite(moments).all()
    assert out.shape == (2, 3, SIDE, SIDE) and torch.isfinite(out).all()
    assert n_params(enc) < n_params(VAEEncoder(TINY, width, 2)) < n_params(VAEEncoder(TINY))
    assert n_params(dec) < n_params(VAEDecoder(TINY, width, 3)) < n_params(VAEDecoder(TINY))

    lv = vae_level_indices(state, TINY, "encoder", width)
    assert [len(i) for i in lv] == list(TINY.widths(width))
    assert torch.equal(lv[2], lv[3])                        # one identity-residual stream
    for idx in lv:
        assert torch.equal(idx, torch.sort(idx).values)     # original order
    # encoder stage 1's first resnet: conv1 reads level 0's subset, its middle
    # channels are conv1's top filters by L1 norm
    name = "encoder.down_blocks.1.resnets.0.conv1.weight"
    w = state[name]
    norms = w.abs().sum((1, 2, 3))
    mid = torch.sort(torch.topk(norms, TINY.widths(width)[1]).indices).values
    assert torch.equal(enc.state_dict()[name], w[mid][:, lv[0]])
    shortcut = "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"
    assert torch.equal(enc.state_dict()[shortcut], state[shortcut][lv[1]][:, lv[0]])
    # the mid attention: query and key keep the same inner dims
    q = enc.state_dict()["encoder.mid_block.attentions.0.to_q.weight"]
    k = enc.state_dict()["encoder.mid_block.attentions.0.to_k.weight"]
    tq, tk = (state[f"encoder.mid_block.attentions.0.{n}.weight"] for n in ("to_q", "to_k"))
    qk = torch.sort(torch.topk(tq.abs().sum(1) / tq.abs().sum(1).mean()
                               + tk.abs().sum(1) / tk.abs().sum(1).mean(), q.shape[0]).indices).values
    assert torch.equal(q, tq[qk][:, lv[3]]) and torch.equal(k, tk[qk][:, lv[3]])
    # decoder: conv_in writes the innermost level, conv_out reads level 0
    dl = vae_level_indices(state, TINY, "decoder", width)
    assert torch.equal(dec.state_dict()["decoder.conv_in.weight"], state["decoder.conv_in.weight"][dl[3]])
    assert torch.equal(dec.state_dict()["decoder.conv_out.weight"],
                       state["decoder.conv_out.weight"][:, dl[0]])


@torch.no_grad()
def test_teacher_shortcut_kept_when_rounding_equalises_widths(state, image):
    enc = VAEEncoder(TINY, 0.1, 1)
    assert enc.widths[:2] == (8, 8)
    assert enc.encoder.down_blocks[1].resnets[0].conv_shortcut is not None
    inherit_vae(enc, state)
    assert enc(image).shape == (2, 8, SIDE // 8, SIDE // 8)


def test_student_tensors_must_come_from_the_teacher(state):
    with pytest.raises(ValueError, match="teacher has no"):
        inherit_vae(VAEEncoder(TINY, 1.0, layers=3), state)
    with pytest.raises(ValueError, match="does not fit"):
        inherit_vae(VAEDecoder(TINY, 1.5), state)
    enc_only = {k: v for k, v in state.items() if k.startswith(("encoder.", "quant_conv."))}
    inherit_vae(VAEEncoder(TINY, 0.5), enc_only)
    with pytest.raises(ValueError, match="teacher has no"):
        inherit_vae(VAEDecoder(TINY, 0.5), enc_only)
    with pytest.raises(TypeError):
        inherit_encoder(VAEDecoder(TINY), state)


# ---------------------------------------------------------------- loading
def test_load_vae_teacher(tmp_path, teacher, state):
    folder = tmp_path / "pipe" / "vae"
    teacher.save_pretrained(folder, safe_serialization=True)
    assert (folder / "diffusion_pytorch_model.safetensors").exists()
    for path in (folder, tmp_path / "pipe", folder / "diffusion_pytorch_model.safetensors"):
        loaded = load_vae_teacher(path, TINY)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)

    with pytest.raises(ValueError, match="does not exist"):
        load_vae_teacher(tmp_path / "nowhere", TINY)
    with pytest.raises(ValueError, match="block_out_channels.*choose the matching preset"):
        load_vae_teacher(tmp_path / "pipe", VAE_PRESETS["sd15"])
    with pytest.raises(ValueError, match="shapes differ"):        # no config.json to compare
        load_vae_teacher(folder / "diffusion_pytorch_model.safetensors",
                         VAEConfig(**{**TINY.__dict__, "latent_channels": 16}))
    (tmp_path / "empty" / "unet").mkdir(parents=True)
    with pytest.raises(ValueError, match="vae/ subfolder"):
        load_vae_teacher(tmp_path / "empty", TINY)
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    (folder / "diffusion_pytorch_model.safetensors").rename(
        tmp_path / "other" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        load_vae_teacher(tmp_path / "other", TINY)


def test_load_vae_teacher_maps_deprecated_attention_names(tmp_path, state):
    from safetensors.torch import save_file

    old = {}
    for k, v in state.items():
        for new, dep in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
        old[k] = v.contiguous()
    save_file(old, str(tmp_path / "old.safetensors"))
    loaded = load_vae_teacher(tmp_path / "old.safetensors", TINY)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    ldm = {"encoder.down.0.block.0.norm1.weight": torch.ones(32)}
    save_file(ldm, str(tmp_path / "ldm.safetensors"))
    with pytest.raises(ValueError, match="original-SD \\(LDM\\) checkpoint with 1 vae tensors"):
        load_vae_teacher(tmp_path / "ldm.safetensors", TINY)
