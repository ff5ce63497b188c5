"""sd_unet's trained teacher: trained on scikit-image photos, cached by content hash, used
for fidelity inputs and distillation batches; a full-size preset fine-tunes from local weights."""
from __future__ import annotations

import pytest
import torch

from nasframe.architecture import Architecture
from nasframe.candidate import Candidate
from nasframe.capabilities import BlockAlignment, Teacher
from nasframe.context import Context
from nasframe_objectives.fidelity import Fidelity
from nasframe_search_spaces.sd_unet import pretrain
from nasframe_search_spaces.sd_unet.network import PRESETS, SDUNet, UNetPlan
from nasframe_search_spaces.sd_unet.space import SDUNetSpace

#: the smallest training that exercises every step (quality is not the point here)
TRAIN = {"steps": 3, "vae_steps": 2, "batch_size": 2, "vae_crop": 16, "latent_size": 8, "pool": 4}


def _space(**over):
    params = {"preset": "tiny", "widths": [1.0, 0.5], "latent_size": 8,
              "fidelity": {"samples": 2, "batch_size": 2}, "teacher": {"train": TRAIN}}
    params.update(over)
    return SDUNetSpace(params)


def test_photos_are_real_and_held_out_ones_are_not_trained_on():
    img = pretrain.photo("astronaut")
    assert img.shape[0] == 3 and min(img.shape[1:]) == pretrain.PHOTO_SHORT_SIDE
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.1
    assert not set(pretrain.HELD_OUT_PHOTOS) & set(pretrain.TRAIN_PHOTOS)
    crops = pretrain.random_crops(pretrain.TRAIN_PHOTOS, 3, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 32, 32) and crops.min() >= -1 and crops.max() <= 1


@pytest.mark.slow
def test_trained_teacher_is_trained_once_then_loaded_from_the_cache(tmp_path):
    space = _space()
    ctx = Context(tmp_path / "run", quiet=True)
    space.prepare(ctx, frozenset({Teacher}))
    files = list((tmp_path / "run" / "cache" / "sd_unet" / "teacher").glob("*.safetensors"))
    assert len(files) == 1
    trained = space.teacher_state()
    random = SDUNetSpace({"preset": "tiny", "latent_size": 8})
    random.prepare(Context(tmp_path / "r", quiet=True), frozenset({Teacher}))
    assert space.teacher_digest() != random.teacher_digest()
    # a second space over the same cache loads the same weights (no training: file unchanged)
    mtime = files[0].stat().st_mtime_ns
    again = _space()
    again.prepare(Context(tmp_path / "run", quiet=True), frozenset({Teacher}))
    assert files[0].stat().st_mtime_ns == mtime
    assert again.teacher_digest() == space.teacher_digest()
    assert all(torch.equal(trained[k], again.teacher_state()[k]) for k in trained)
    # other settings: another entry
    other = _space(teacher={"train": {**TRAIN, "steps": 4}})
    other.prepare(Context(tmp_path / "run", quiet=True), frozenset({Teacher}))
    assert len(list(files[0].parent.glob("*.safetensors"))) == 2


@pytest.mark.slow
def test_training_lowers_the_denoising_loss():
    cfg, vcfg = PRESETS["tiny"], SDUNetSpace({"preset": "tiny"}).vae_config
    vae, r = pretrain.train_vae(vcfg, steps=2, batch_size=2, crop=16, lr=1e-3, kl_weight=1e-4, seed=0)
    assert r["vae_final_loss"] > 0
    pool = pretrain.latent_pool(vae, vcfg, n=4, image_size=64, seed=0)
    pool = pool / pool.std()
    ehs = pretrain.null_embedding(cfg, 8, 0)
    torch.manual_seed(0)
    init = SDUNet(UNetPlan.teacher(cfg)).state_dict()
    x = pretrain.noised_inputs(pool, ehs, 0, torch.full((4,), 500))
    noise = (x[0] - pool * pretrain.scheduler().alphas_cumprod[500].sqrt()) / (
        1 - pretrain.scheduler().alphas_cumprod[500]).sqrt()

    def loss(state):
        m = SDUNet(UNetPlan.teacher(cfg))
        m.load_state_dict(state)
        with torch.no_grad():
            return float((m.eval()(*x) - noise).pow(2).mean())

    state, r = pretrain.train_unet(cfg, pool, ehs, steps=30, batch_size=4, lr=1e-3, seed=0,
                                   init=init)
    assert loss(state) < loss(init)


@pytest.mark.slow
def test_fidelity_and_distillation_use_photo_latents_and_the_null_embedding(tmp_path):
    space = _space()
    ctx = Context(tmp_path, quiet=True)
    space.prepare(ctx, frozenset({Teacher, BlockAlignment}))
    tr = space.trained_teacher()
    assert SDUNetSpace({"preset": "tiny"}).trained_teacher() is None
    (sample, t, ehs), = space.fidelity_inputs()
    assert sample.shape == (2, 4, 8, 8) and torch.equal(ehs[0], tr["ehs"][0])
    assert t.tolist() == [0, 999]
    x, tt, e = space._teacher.training_batch(3, 8, seed=1)
    assert x.shape == (3, 4, 8, 8) and torch.equal(e[1], tr["ehs"][0])
    obj = Fidelity({"distill": {"steps": 2, "batch_size": 2}})
    obj.prepare(space, ctx)
    teacher = Architecture({d.name: ("full" if d.name[:2] in ("do", "up") else
                                     True if d.name in ("mid", "innermost") else 1.0)
                            for d in space.decisions()})
    assert obj.evaluate(Candidate(space, teacher), ctx).value >= 100
    narrow = Architecture({**teacher, "width0": 0.5})
    v = obj.evaluate(Candidate(space, narrow), ctx)
    assert v.value < 100 and v.details["distill"]["trained"] > 0


@pytest.mark.slow
def test_a_full_size_preset_fine_tunes_from_local_weights(tmp_path, monkeypatch):
    """``teacher.path`` + ``teacher.train``: training starts from the loaded weights
    (the tiny preset stands in for sd15's folder layout)."""
    from safetensors.torch import save_file

    from nasframe_search_spaces.sd_unet.network import to_diffusers_keys

    torch.manual_seed(3)
    state = SDUNet(UNetPlan.teacher(PRESETS["tiny"])).state_dict()
    save_file({k: v.contiguous() for k, v in to_diffusers_keys(state).items()},
              str(tmp_path / "unet.safetensors"))
    seen = {}
    original = pretrain.train_unet

    def spy(*args, **kwargs):
        seen["init"] = kwargs.get("init")
        return original(*args, **kwargs)

    monkeypatch.setattr(pretrain, "train_unet", spy)
    space = _space(teacher={"path": str(tmp_path / "unet.safetensors"), "train": TRAIN})
    space.prepare(Context(tmp_path / "run", quiet=True), frozenset({Teacher}))
    assert all(torch.equal(seen["init"][k], state[k]) for k in state)
    assert not all(torch.equal(space.teacher_state()[k], state[k]) for k in state)
