"""sd_unet's super-resolution adaptation and one-step distillation (TOC-SR's second half):
x4 pairs, the widened conv_in, conditional denoising training, the one-step student, the report."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nasframe.capabilities import Teacher
from nasframe.context import Context
from nasframe_search_spaces.sd_unet import pretrain, sr, srdata
from nasframe_search_spaces.sd_unet.network import PRESETS, SDUNet, UNetPlan
from nasframe_search_spaces.sd_unet.space import SDUNetSpace

#: the smallest teacher training that exercises every step (quality is not the point)
TRAIN = {"steps": 3, "vae_steps": 2, "batch_size": 2, "vae_crop": 16, "latent_size": 8, "pool": 4}
#: the smallest SR settings
TINY = {"hr_size": 64, "pool": 8, "steps": 4, "batch_size": 4, "sample_steps": 2,
        "distill_steps": 4, "distill_targets": 4, "eval_images": 2, "eval_size": 64,
        "fidelity_steps": 3, "fidelity_width": 8, "fidelity_blocks": 1, "fidelity_oracle": True,
        "latency_repeats": 1, "threads": 1}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    space = SDUNetSpace({"preset": "tiny", "latent_size": 8, "teacher": {"train": TRAIN},
                         "fidelity": {"samples": 2, "batch_size": 2}})
    ctx = Context(tmp_path_factory.mktemp("sr"), quiet=True)
    space.prepare(ctx, frozenset({Teacher}))
    return space, ctx, space.reference_architectures()["sd15"]


def test_photo_pairs_are_x4_and_aligned():
    pairs = srdata.photo_pairs(pretrain.TRAIN_PHOTOS[:2])
    for lr, hr in pairs:
        assert hr.shape[0] == 3 and tuple(hr.shape[1:]) == (lr.shape[1] * 4, lr.shape[2] * 4)
        assert 0 <= float(lr.min()) and float(lr.max()) <= 1
    lr, hr = srdata.random_pair_crops(pairs, 5, 64, torch.Generator().manual_seed(0))
    assert lr.shape == (5, 3, 16, 16) and hr.shape == (5, 3, 64, 64)
    # the LR crop is the degraded HR crop (away from the crop border)
    err = (srdata.degrade(hr) - lr)[..., 2:-2, 2:-2].abs().mean()
    assert float(err) < 0.01
    # bicubic upsampling restores the size and is a reasonable baseline
    up = srdata.bicubic_up(lr)
    assert up.shape == hr.shape and sr.image_metrics(up, hr)["psnr"] > 18
    with pytest.raises(ValueError, match="multiple of the scale"):
        srdata.random_pair_crops(pairs, 1, 62, torch.Generator())


def test_paired_folders_in_div2k_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR_bicubic" / "X4").mkdir(parents=True)
    hr = (rng.random((50, 66, 3)) * 255).astype(np.uint8)     # not a multiple of 4: cropped
    Image.fromarray(hr).save(tmp_path / "HR" / "0001.png")
    Image.fromarray(hr[::4, ::4][:12, :16]).save(tmp_path / "LR_bicubic" / "X4" / "0001x4.png")
    (lr_t, hr_t), = srdata.folder_pairs(tmp_path)
    assert lr_t.shape == (3, 12, 16) and hr_t.shape == (3, 48, 64)
    assert torch.allclose(hr_t[:, 0, 0], torch.tensor(hr[0, 0] / 255.0, dtype=torch.float32))
    Image.fromarray(hr).save(tmp_path / "HR" / "0002.png")
    with pytest.raises(ValueError, match="no LR partner"):
        srdata.folder_pairs(tmp_path)
    Image.fromarray(hr[:8, :8]).save(tmp_path / "LR_bicubic" / "X4" / "0002x4.png")
    with pytest.raises(ValueError, match="not an x4 pair"):
        srdata.folder_pairs(tmp_path)
    with pytest.raises(ValueError, match="LR_bicubic/X4"):
        srdata.folder_pairs(tmp_path / "HR")


def test_widened_conv_in_preserves_the_unconditional_function():
    cfg = PRESETS["tiny16"]
    torch.manual_seed(0)
    backbone = SDUNet(UNetPlan.teacher(cfg)).eval()
    model = sr.SRUNet(copy.deepcopy(backbone), cfg.in_channels).eval()
    assert model.backbone.conv_in.in_channels == 2 * cfg.in_channels
    assert float(model.backbone.conv_in.weight.detach()[:, cfg.in_channels:].abs().sum()) == 0
    x = torch.randn(2, cfg.in_channels, 8, 8)
    t, ehs = torch.tensor([10, 700]), torch.randn(2, cfg.context_length, cfg.cross_attention_dim)
    with torch.no_grad():
        want = backbone(x, t, ehs)
        for cond in (torch.zeros_like(x), torch.randn_like(x) * 5):
            torch.testing.assert_close(model(x, cond, t, ehs), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_conditional_training_lowers_the_denoising_loss(prepared):
    space, ctx, arch = prepared
    ad = sr.SRAdapter(space, arch, ctx, {**TINY, "pool": 16})
    hr, cond = ad.pool()
    assert hr.shape == (16, 4, 8, 8) and cond.shape == hr.shape
    ehs = ad.tr["ehs"]
    g = torch.Generator().manual_seed(5)
    noise, t = torch.randn(hr.shape, generator=g), torch.linspace(50, 950, 16).long()
    xt = pretrain.scheduler().add_noise(hr, noise, t)

    def loss(m):
        with torch.no_grad():
            return float((m(xt, cond, t, ehs.expand(16, -1, -1)) - noise).pow(2).mean())

    model = ad._new_model()
    before = loss(model)
    r = sr.train_sr(model, hr, cond, ehs, steps=40, batch_size=8, lr=1e-3, seed=0)
    assert loss(model) < before and r["final_loss"] < r["first_loss"]


@pytest.mark.slow
def test_one_step_student_approaches_the_teachers_samples(prepared):
    space, ctx, arch = prepared
    ad = sr.SRAdapter(space, arch, ctx, TINY)
    _, cond = ad.pool()
    teacher = ad._new_model().eval()
    ehs = ad.tr["ehs"]
    z, c, target = sr.teacher_targets(teacher, cond, ehs, n=8, steps=3, seed=0)
    assert target.shape == z.shape == c.shape
    student = ad._new_model()
    student.load_state_dict(teacher.state_dict())

    def gap():
        with torch.no_grad():
            return float((sr.one_step(student.eval(), z, c, ehs) - target).pow(2).mean())

    before = gap()
    sr.distill(student, z, c, target, ehs, steps=30, batch_size=8, lr=1e-3, seed=0)
    assert gap() < 0.5 * before


@pytest.mark.slow
def test_adapt_reports_quality_cost_and_latency_and_caches(prepared, tmp_path):
    space, ctx, arch = prepared
    out = tmp_path / "sr.json"
    r = sr.adapt(space, arch, ctx, TINY, origin="reference sd15", out=out)
    m = r["metrics"]
    for key in ("bicubic", "vae_reconstruction", "vae_of_bicubic", "teacher", "student",
                "student_fidelity", "lr_fidelity", "hr_fidelity"):
        assert set(m[key]) >= {"psnr", "ssim"} and np.isfinite(m[key]["psnr"])
    assert m["teacher"]["steps"] == 2 and m["student"]["steps"] == 1
    g = r["gmacs"]
    assert g["teacher_per_image"] == pytest.approx(g["vae_encoder"] + 2 * g["unet_step"] + g["vae_decoder"])
    assert g["teacher_per_image"] > g["student_per_image"] > g["unet_step"] > 0
    # the fidelity decoder costs the VAE decoder plus its path
    assert g["fidelity_decoder"] > g["vae_decoder"]
    assert g["student_fidelity_per_image"] == pytest.approx(
        g["vae_encoder"] + g["unet_step"] + g["fidelity_decoder"])
    assert g["lr_fidelity_per_image"] < g["student_fidelity_per_image"]
    for name in ("teacher", "student", "student_fidelity", "lr_fidelity"):
        assert r["latency"][f"{name}_ms"] > 0
    assert r["backbone"]["origin"] == "reference sd15" and out.is_file()
    files = sorted((ctx.run_dir / "cache" / "sd_unet").glob("sr*/*.safetensors"))
    assert [f.parent.name for f in files] == ["sr", "sr_fidelity_hr", "sr_fidelity_lr",
                                              "sr_fidelity_student", "sr_student"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = sr.adapt(space, arch, ctx, {**TINY, "latency_repeats": 0})
    assert [f.stat().st_mtime_ns for f in files] == mtimes         # loaded, not retrained
    assert again["metrics"]["student"] == pytest.approx(m["student"])
    assert again["metrics"]["student_fidelity"] == pytest.approx(m["student_fidelity"])
    text = sr.format_report(r)
    assert "SR model, 2 steps" in text and "one-step student + fidelity decoder" in text


@pytest.mark.slow
def test_the_fidelity_decoder_starts_at_bicubic_and_learns_the_detail(prepared):
    space, ctx, arch = prepared
    ad = sr.SRAdapter(space, arch, ctx, TINY)
    fd = sr.FidelityDecoder(ad.decoder(), width=8, blocks=1)
    lr, hr = srdata.random_pair_crops(srdata.photo_pairs(pretrain.TRAIN_PHOTOS), 16, 64,
                                      torch.Generator().manual_seed(2))
    up = srdata.bicubic_up(lr)
    latents = ad.encode(up) / ad.latent_scale
    # zero last convolution: exactly the bicubic image, whatever the latent holds
    assert torch.equal(fd(latents, up), up)
    assert torch.equal(fd(torch.randn_like(latents), up), up)
    # its features are the decoder's last feature map: conv_out of them is the decoder's image
    with torch.no_grad():
        torch.testing.assert_close(fd.decoder.decoder.conv_out(fd.features(latents)),
                                   fd.decoder(latents))
    # only the path trains (the VAE decoder stays frozen) and the L1 to HR falls below bicubic's
    frozen = {k: v.clone() for k, v in fd.decoder.state_dict().items()}
    feats = fd.features(latents)
    r = sr.train_fidelity(fd, feats, up, hr, steps=60, batch_size=8, lr=2e-3, seed=0)
    assert all(torch.equal(v, fd.decoder.state_dict()[k]) for k, v in frozen.items())
    with torch.no_grad():
        assert float((fd.refine(feats, up) - hr).abs().mean()) < float((up - hr).abs().mean())
    assert r["steps"] == 60 and r["final_loss"] < r["first_loss"]


@pytest.mark.slow
def test_onnxruntime_latency_sums_the_exported_parts(prepared):
    pytest.importorskip("onnxruntime")
    space, ctx, arch = prepared
    r = sr.adapt(space, arch, ctx, {**TINY, "latency_backend": "onnxruntime"})
    lat, parts = r["latency"], r["latency"]["parts_ms"]
    assert set(parts) == {"vae_encoder", "unet_step", "vae_decoder", "fidelity_decoder"}
    assert all(v > 0 for v in parts.values()) and lat["backend"] == "onnxruntime"
    assert lat["teacher_ms"] == pytest.approx(parts["vae_encoder"] + 2 * parts["unet_step"]
                                              + parts["vae_decoder"])
    assert lat["student_fidelity_ms"] == pytest.approx(
        parts["vae_encoder"] + parts["unet_step"] + parts["fidelity_decoder"])
    assert "onnxruntime" in lat["device"]
    assert sorted(p.name for p in (ctx.run_dir / "sr_onnx").glob("*.onnx")) == [
        "fidelity_decoder.onnx", "unet_step.onnx", "vae_decoder.onnx", "vae_encoder.onnx"]


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert sr.main([str(tmp_path / "missing.yaml")]) == 2
    assert "neither a run directory nor an experiment file" in capsys.readouterr().err
    assert sr.main([str(tmp_path), "--set", "steps=-1"]) == 2
    assert "steps" in capsys.readouterr().err


@pytest.mark.slow
def test_a_fine_tuned_vae_keeps_the_latents_magnitude(prepared):
    space, ctx, arch = prepared
    base = sr.SRAdapter(space, arch, ctx, TINY)
    tuned = sr.SRAdapter(space, arch, ctx, {**TINY, "vae_steps": 2})
    assert tuned.latent_scale != base.latent_scale
    assert any(not torch.equal(tuned.vae()[k], base.vae()[k]) for k in base.vae())
    hr, _ = srdata.random_pair_crops(srdata.photo_pairs(pretrain.TRAIN_PHOTOS), 16, 64,
                                     torch.Generator().manual_seed(1))
    import math

    scaled = float(tuned.encode(hr).std() / base.encode(hr).std())
    unscaled = scaled * base.latent_scale / tuned.latent_scale     # with the teacher's scale
    assert abs(math.log(scaled)) < abs(math.log(unscaled))


@pytest.mark.slow
def test_only_what_trains_the_sr_model_enters_its_cache_key(prepared):
    space, ctx, arch = prepared
    key = sr.SRAdapter(space, arch, ctx, TINY)._payload()
    others = {"fidelity_steps": 7, "fidelity_oracle": False, "latency_backend": "onnxruntime",
              "eval_images": 3, "distill_steps": 9, "sample_steps": 5, "threads": 2}
    assert sr.SRAdapter(space, arch, ctx, {**TINY, **others})._payload() == key
    for name, value in (("steps", 5), ("lr", 1e-3), ("pool", 9), ("seed", 1)):
        assert sr.SRAdapter(space, arch, ctx, {**TINY, name: value})._payload() != key, name


# ------------------------------------------------------------------ deblurring
DEBLUR = {**TINY, "task": "deblur", "blurs_per_image": 2}


def test_blurred_photo_pairs_are_the_sharp_photo_convolved():
    rng = np.random.default_rng(0)
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1
    img = torch.rand(3, 20, 24)
    assert torch.equal(srdata.blur(img, delta), img)
    # a one-pixel shift kernel is a convolution (not a correlation): the image moves right
    shift = torch.zeros(3, 3)
    shift[1, 2] = 1
    assert torch.equal(srdata.blur(img, shift)[:, :, 2:], img[:, :, 1:-1])
    kinds = {k: srdata.blur_kernel(np.random.default_rng(1), k) for k in srdata.KERNELS}
    assert all(float(k.sum()) == pytest.approx(1.0, abs=1e-5) for k in kinds.values())
    # a motion kernel is a line (few non-zero taps), a Gaussian is dense
    assert (kinds["motion"] > 0).float().mean() < (kinds["gaussian"] > 0).float().mean()
    with pytest.raises(ValueError, match="kernel 'box'"):
        srdata.blur_kernel(rng, "box")
    pairs = srdata.photo_blur_pairs(pretrain.TRAIN_PHOTOS[:1], per_image=3, seed=0)
    assert len(pairs) == 3 and all(b.shape == s.shape for b, s in pairs)
    assert all(s is pairs[0][1] for _, s in pairs)                       # one sharp photo
    assert not torch.equal(pairs[0][0], pairs[1][0])                     # different kernels
    b, s = srdata.random_pair_crops(pairs, 4, 64, torch.Generator().manual_seed(0), scale=1)
    assert b.shape == s.shape == (4, 3, 64, 64)
    assert 15 < sr.image_metrics(b, s)["psnr"] < 40                      # blurred, not destroyed
    again = srdata.photo_blur_pairs(pretrain.TRAIN_PHOTOS[:1], per_image=3, seed=0)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(pairs, again))    # fixed by the seed
    assert torch.equal(srdata.condition_image(b, 1), b)                  # deblurring: the input


def test_gopro_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for seq in ("GOPR0001_00_00", "GOPR0002_00_00"):
        for sub in ("blur", "sharp", "blur_gamma"):
            (tmp_path / seq / sub).mkdir(parents=True)
        for i in range(2):
            for sub in ("blur", "sharp"):
                Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(
                    tmp_path / seq / sub / f"{i:06d}.png")
    pairs = srdata.gopro_pairs(tmp_path)
    assert len(pairs) == 4 and all(b.shape == s.shape == (3, 20, 30) for b, s in pairs)
    first = np.asarray(Image.open(tmp_path / "GOPR0001_00_00" / "blur" / "000000.png"))
    assert torch.allclose(pairs[0][0], torch.from_numpy(first.transpose(2, 0, 1) / 255).float())
    assert len(srdata.gopro_pairs(tmp_path, limit=3)) == 3
    assert len(srdata.gopro_pairs(tmp_path / "GOPR0002_00_00")) == 2   # one sequence given
    (tmp_path / "GOPR0002_00_00" / "sharp" / "000001.png").unlink()
    with pytest.raises(ValueError, match="000001.png: no sharp partner"):
        srdata.gopro_pairs(tmp_path)
    with pytest.raises(ValueError, match="no <sequence>/blur/ folder"):
        srdata.gopro_pairs(tmp_path / "GOPR0001_00_00" / "sharp")


@pytest.mark.slow
def test_deblur_adaptation_reports_against_the_blurred_input(prepared, tmp_path):
    space, ctx, arch = prepared
    r = sr.adapt(space, arch, ctx, DEBLUR, origin="reference sd15", out=tmp_path / "deblur.json")
    m = r["metrics"]
    assert r["task"] == "deblur" and "bicubic" not in m
    ad = sr.SRAdapter(space, arch, ctx, DEBLUR)
    blurred, sharp = ad.eval_set()
    assert blurred.shape == sharp.shape == (2, 3, 64, 64)
    assert m["baseline"] == pytest.approx(sr.image_metrics(blurred, sharp))
    for key in ("teacher", "student", "student_fidelity", "lr_fidelity", "hr_fidelity"):
        assert np.isfinite(m[key]["psnr"])
    # the models differ from SR's (other cache entries); SR's payload does not name the task
    sr_key = sr.SRAdapter(space, arch, ctx, TINY)._payload()
    assert ad._payload() != sr_key and "task" not in sr_key["settings"]
    assert ad._payload()["settings"]["kernel"] == "mixed"
    g = r["gmacs"]
    assert g["teacher_per_image"] > g["student_per_image"] > g["unet_step"] > 0
    # the fidelity path starts at the blurred input
    fd = sr.FidelityDecoder(ad.decoder(), 8, 1)
    lat = ad.encode(blurred) / ad.latent_scale
    assert torch.equal(fd(lat, blurred), blurred)
    text = sr.format_report(r)
    for row in ("blurred ", "VAE of blurred", "deblur model, 2 steps",
                "fidelity decoder on the blurred latent", "fidelity decoder on the sharp latent"):
        assert row in text, row
    assert "bicubic" not in text
    # benchmarks/tocsr_report.py prints the same table from the written report
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tocsr_report.py"
    spec = importlib.util.spec_from_file_location("nasframe_bench_tocsr_report", script)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.sr_summary(None, tmp_path / "deblur.json", "deblur")["task"] == "deblur"
    assert report.sr_summary(tmp_path, None, "sr") is None           # no sr.json there


@pytest.mark.slow
def test_latent_pairs_and_the_conditional_model_for_other_code(prepared):
    space, ctx, arch = prepared
    train = sr.latent_pairs(space, ctx, DEBLUR)
    n, c = DEBLUR["pool"], space.config.in_channels
    assert train["task"] == "deblur"
    assert train["target"].shape == train["cond"].shape == (n, c, 8, 8)
    assert train["images"].shape == train["degraded"].shape == (n, 3, 64, 64)
    assert torch.equal(train["condition"], train["degraded"])
    ad = sr.SRAdapter(space, None, ctx, DEBLUR)
    torch.testing.assert_close(train["cond"], ad.encode(train["degraded"]))
    torch.testing.assert_close(train["target"], ad.encode(train["images"]))
    val = sr.latent_pairs(space, ctx, DEBLUR, split="val")
    assert val["target"].shape == (2, c, 8, 8) and not torch.equal(val["images"][0], train["images"][0])
    with pytest.raises(ValueError, match="split 'test'"):
        sr.latent_pairs(space, ctx, DEBLUR, split="test")
    # untrained: the widened backbone computes what the backbone computes, whatever the condition
    fresh, report = sr.conditional_model(space, arch, ctx, DEBLUR, trained=False)
    x, t = train["target"][:2], torch.tensor([10, 500])
    ehs = train["ehs"].expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, train["cond"][:2], t, ehs), space.build(arch)(x, t, ehs))
    assert report == {}
    model, report = sr.conditional_model(space, arch, ctx, DEBLUR)
    assert report["steps"] == DEBLUR["steps"]
    assert sr.conditional_model(space, arch, ctx, DEBLUR)[1]["cached"]  # trained once, then loaded
    assert not torch.equal(model.backbone.conv_in.weight[:, c:], torch.zeros_like(
        model.backbone.conv_in.weight[:, c:]))
