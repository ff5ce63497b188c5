"""Paired restoration data (``nasframe_search_spaces.hybrid_unet.data``): synthetic and folder sources."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io

from nasframe_search_spaces.hybrid_unet.data import (DEFAULT_VAL_IMAGES, SYNTHETIC_IMAGES, TASKS,
                                            RestorationData, gaussian_kernel, line_kernel, psnr)

SMALL = {"patch": 32, "val_size": 48, "short_side": 96}


# -- synthetic source -----------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_batches_have_the_right_shape_and_range(task):
    data = RestorationData(task, **SMALL)
    inp, target = data.train_batch(4, step=0)
    for t in (inp, target):
        assert t.shape == (4, 3, 32, 32) and t.dtype == torch.float32
    assert 0.0 <= float(target.min()) and float(target.max()) <= 1.0
    if task != "denoise":  # Gaussian denoising inputs are unclipped, the others stay in range
        assert 0.0 <= float(inp.min()) and float(inp.max()) <= 1.0
    val = data.validation()
    assert len(val) == len(DEFAULT_VAL_IMAGES)
    for x, y in val:
        assert x.shape == y.shape == (1, 3, 48, 48) and x.dtype == torch.float32


def test_same_seed_same_batches_and_other_steps_or_seeds_differ():
    a, b = RestorationData("derain", seed=3, **SMALL), RestorationData("derain", seed=3, **SMALL)
    x1, y1 = a.train_batch(4, step=5)
    x2, y2 = b.train_batch(4, step=5)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = a.train_batch(4, step=6)
    assert not torch.equal(y1, y3)
    x4, _ = RestorationData("derain", seed=4, **SMALL).train_batch(4, step=5)
    assert not torch.equal(x1, x4)
    # a smaller batch is a prefix of a larger one at the same step
    x5, y5 = a.train_batch(2, step=5)
    assert torch.equal(x5, x1[:2]) and torch.equal(y5, y1[:2])
    # validation is fixed by the seed too
    for (p, q), (r, s) in zip(a.validation(), b.validation()):
        assert torch.equal(p, r) and torch.equal(q, s)


def test_validation_is_cached_on_the_instance():
    data = RestorationData("denoise", **SMALL)
    first, second = data.validation(), data.validation()
    assert all(p[0] is q[0] for p, q in zip(first, second))


def test_split_is_by_image():
    data = RestorationData(**SMALL)
    assert set(data.val_names) == set(DEFAULT_VAL_IMAGES)
    assert not set(data.train_names) & set(data.val_names)
    assert set(data.train_names) | set(data.val_names) == set(SYNTHETIC_IMAGES)
    custom = RestorationData(val_images=["astronaut", "camera"], **SMALL)
    assert custom.val_names == ["astronaut", "camera"]
    assert "astronaut" not in custom.train_names and "chelsea" in custom.train_names


def test_training_crops_come_from_training_images_only():
    # with one training image every crop must be a piece of that image
    from nasframe_search_spaces.hybrid_unet.data import _synthetic_image

    data = RestorationData("denoise", images=["brick", "chelsea"], val_images=["chelsea"],
                           **SMALL)
    assert data.train_names == ["brick"]
    brick = _synthetic_image("brick", 96)
    _, target = data.train_batch(3, step=0)
    for t in target.numpy().transpose(0, 2, 3, 1):
        found = any(np.array_equal(c, brick[r:r + 32, q:q + 32])
                    for c in (t, t[::-1], t[:, ::-1], t[::-1, ::-1])
                    for r in range(brick.shape[0] - 31) for q in range(brick.shape[1] - 31)
                    if np.allclose(c[0, 0], brick[r, q]))
        assert found


def test_noise_sigma_25_gives_about_20_db_and_is_unclipped():
    data = RestorationData("denoise", **SMALL)
    inp, target = data.train_batch(8, step=0)
    assert 19.5 < psnr(inp, target) < 21.0  # 20 log10(255 / 25) = 20.17 dB
    assert float(inp.min()) < 0.0 or float(inp.max()) > 1.0
    noise = (inp - target).numpy()
    assert abs(noise.std() - 25 / 255) < 0.005


@pytest.mark.parametrize("kernel", ["gaussian", "motion", "mixed"])
def test_blur_degrades_within_a_plausible_range(kernel):
    data = RestorationData("deblur", kernel=kernel, **SMALL)
    inp, target = data.train_batch(6, step=1)
    assert 10.0 < psnr(inp, target) < 40.0
    for x, y in data.validation():
        assert 10.0 < psnr(x, y) < 40.0
    # blur removes high frequencies: the input has less gradient energy than the target
    grad = lambda t: float((t[..., 1:] - t[..., :-1]).abs().mean())  # noqa: E731
    assert grad(inp) < grad(target)


def test_rain_is_mostly_bright_streaks():
    data = RestorationData("derain", **SMALL)
    inp, target = data.train_batch(8, step=0)
    assert 10.0 < psnr(inp, target) < 40.0
    diff = (inp - target).numpy()
    assert diff.mean() > 0.005                      # brighter on average
    assert (diff >= -1e-6).mean() > 0.999            # screen blend never darkens (sigma 0)
    # streaks are elongated near-vertically: the rain layer varies less along columns
    layer = diff.mean(axis=1)
    vertical = np.abs(np.diff(layer, axis=1)).mean()
    horizontal = np.abs(np.diff(layer, axis=2)).mean()
    assert vertical < horizontal


def test_kernels_are_normalised():
    g = gaussian_kernel(2.0)
    assert g.shape[0] % 2 == 1 and abs(g.sum() - 1) < 1e-5
    m = line_kernel(9.0, 30.0)
    assert abs(m.sum() - 1) < 1e-5 and (m > 0).sum() >= 9
    s = line_kernel(9.0, 90.0, normalise="max")
    assert s.max() == pytest.approx(1.0)
    centre = s.shape[1] // 2
    assert s[:, centre].sum() > 0.9 * s.sum()  # vertical line lies in the centre column


def test_degradation_ranges_and_values_are_used():
    light = RestorationData("denoise", sigma=5, **SMALL).train_batch(4, 0)
    heavy = RestorationData("denoise", sigma=[40, 50], **SMALL).train_batch(4, 0)
    assert psnr(*light) > 30 > 20 > psnr(*heavy)


def test_describe_is_json_and_changes_with_what_determines_the_data():
    a = RestorationData("deblur", **SMALL).describe()
    json.dumps(a)
    assert a["task"] == "deblur" and a["val_images"] == list(DEFAULT_VAL_IMAGES)
    assert a == RestorationData("deblur", **SMALL).describe()
    assert a != RestorationData("deblur", blur_sigma=2.0, **SMALL).describe()
    assert a != RestorationData("deblur", seed=1, **SMALL).describe()
    assert a != RestorationData("deblur", **{**SMALL, "patch": 16}).describe()


def test_from_params_defaults_and_unknown_keys():
    data = RestorationData.from_params({"patch": 32, "short_side": 96}, task_default="derain",
                                       seed=7)
    assert (data.task, data.seed, data.patch) == ("derain", 7, 32)
    assert RestorationData.from_params(None).task == "denoise"
    assert RestorationData.from_params({"seed": 2}, seed=7).seed == 2
    with pytest.raises(ValueError, match=r"unknown data parameter 'pach'.*did you mean 'patch'"
                                         r".*allowed: task, source, patch"):
        RestorationData.from_params({"pach": 32})
    with pytest.raises(ValueError, match="must be a mapping"):
        RestorationData.from_params([1, 2])


@pytest.mark.parametrize("kwargs, message", [
    ({"task": "dnoise"}, r"`task` = 'dnoise' is not one of denoise, deblur, derain; did you "
                         r"mean 'denoise'"),
    ({"source": "folder"}, r"`source` = 'folder' is not one of synthetic, folders"),
    ({"patch": 0}, r"`patch` must be a positive integer, got 0"),
    ({"val_size": 0}, r"`val_size` must be a positive integer, got 0; or null"),
    ({"seed": -1}, r"`seed` must be an integer >= 0, got -1"),
    ({"patch": 256}, r"`short_side` = 192 is smaller than `patch` = 256"),
    ({"val_images": ["lena"]}, r"`val_images` = 'lena' is not one of astronaut"),
    ({"val_images": []}, r"`val_images` must be a non-empty list"),
    ({"val_images": ["motorcycle_left"]}, r"near-duplicate \['motorcycle_right'\]"),
    ({"images": ["chelsea"], "val_images": ["chelsea"]}, r"leaves no training image"),
    ({"images": ["brick"]}, r"`val_images` holds \['chelsea', 'coffee', 'rocket'\], which are "
                            r"not in `images`"),
    ({"sigma": -1}, r"`sigma` = -1 is outside \[0, 255\]"),
    ({"sigma": [30, 10]}, r"low > high; write it as \[10, 30\]"),
    ({"sigma": "high"}, r"`sigma` must be a number or a \[low, high\] range"),
    ({"blur_sigma": 2.0}, r"`blur_sigma` = 2.0 does not apply to `task: denoise`.*set `task: "
                          r"deblur`"),
    ({"task": "deblur", "kernel": "box"}, r"`kernel` = 'box' is not one of gaussian, motion, "
                                          r"mixed"),
    ({"task": "deblur", "blur_sigma": 0}, r"`blur_sigma` = 0 is outside \(0, 20\]"),
    ({"task": "derain", "rain_density": 0.5}, r"`rain_density` = 0.5 is outside \(0, 0.2\]"),
    ({"train": "x"}, r"`train` = 'x' applies to `source: folders` only"),
    ({"source": "folders"}, r"`train` is required with `source: folders`"),
    ({"source": "folders", "train": "a", "val": "b", "sigma": 5},
     r"`sigma` = 5 applies to `source: synthetic` only"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RestorationData(**kwargs)


def test_bad_batch_arguments():
    data = RestorationData(**SMALL)
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer, got 0"):
        data.train_batch(0, 0)
    with pytest.raises(ValueError, match="`step` must be an integer >= 0, got -2"):
        data.train_batch(1, -2)


# -- folders source --------------------------------------------------------------
def _image(rng: np.random.Generator, h: int = 40, w: int = 48, grey: bool = False) -> np.ndarray:
    shape = (h, w) if grey else (h, w, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(str(path), arr, check_contrast=False)


@pytest.fixture
def gopro(tmp_path: Path) -> Path:
    """<root>/{train,test}/<scene>/{blur,sharp}/*.png"""
    rng = np.random.default_rng(0)
    for split, scenes in (("train", ("GOPR0001", "GOPR0002")), ("test", ("GOPR0100",))):
        for scene in scenes:
            for i in range(2):
                sharp = _image(rng)
                _write(tmp_path / split / scene / "sharp" / f"{i:06d}.png", sharp)
                _write(tmp_path / split / scene / "blur" / f"{i:06d}.png", sharp // 2)
    return tmp_path


def test_gopro_layout(gopro: Path):
    data = RestorationData("deblur", "folders", train=gopro / "train", val=gopro / "test",
                           input_dir="blur", target_dir="sharp", patch=16, val_size=None)
    assert data.train_names == [f"GOPR000{s}/blur/00000{i}.png" for s in (1, 2) for i in (0, 1)]
    assert data.val_names == ["GOPR0100/blur/000000.png", "GOPR0100/blur/000001.png"]
    inp, target = data.train_batch(5, step=0)
    assert inp.shape == target.shape == (5, 3, 16, 16)
    # the pairing is right: input = target // 2 (in 8-bit) at the same crop and flips
    assert torch.allclose(inp, torch.floor(target * 255 / 2) / 255, atol=1e-6)
    x1, _ = data.train_batch(5, step=0)
    assert torch.equal(inp, x1)
    val = data.validation()
    assert [tuple(x.shape) for x, _ in val] == [(1, 3, 40, 48)] * 2
    desc = data.describe()
    json.dumps(desc)
    assert len(desc["train_files"]) == 4 and desc["train_files"][0][:2] == [
        "GOPR0001/blur/000000.png", "GOPR0001/sharp/000000.png"]


def test_describe_changes_when_a_file_changes(gopro: Path):
    kw = dict(train=gopro / "train", val=gopro / "test", input_dir="blur", target_dir="sharp")
    before = RestorationData("deblur", "folders", **kw).describe()
    target = gopro / "test" / "GOPR0100" / "sharp" / "000000.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert RestorationData("deblur", "folders", **kw).describe() != before


def test_rain13k_layout_with_jpgs_and_grey_and_centre_crops(tmp_path: Path):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for i in range(3):
            clean = _image(rng, 50, 60, grey=(i == 2))
            _write(tmp_path / split / "target" / f"{i}.jpg", clean)
            _write(tmp_path / split / "input" / f"{i}.jpg", clean)
    data = RestorationData("derain", "folders", train=tmp_path / "train", val=tmp_path / "test",
                           patch=24, val_size=32)
    assert data.train_names == ["input/0.jpg", "input/1.jpg", "input/2.jpg"]
    inp, target = data.train_batch(2, step=3)
    assert inp.shape == (2, 3, 24, 24) and 0 <= float(inp.min()) and float(inp.max()) <= 1
    for x, y in data.validation():
        assert x.shape == y.shape == (1, 3, 32, 32)
    grey_x, _ = data.validation()[2]
    assert torch.equal(grey_x[:, 0], grey_x[:, 1])  # grey replicated to RGB


def test_png_inputs_pair_with_jpg_targets(tmp_path: Path):
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        _write(tmp_path / split / "input" / "a.png", _image(rng))
        _write(tmp_path / split / "target" / "a.jpg", _image(rng))
    data = RestorationData("denoise", "folders", train=tmp_path / "train", val=tmp_path / "val",
                           patch=16)
    assert data.val_names == ["input/a.png"]


def test_token_layout_sidd(tmp_path: Path):
    rng = np.random.default_rng(3)
    for split, scenes in (("train", ("0001_S6", "0002_N6")), ("val", ("0003_G4",))):
        for scene in scenes:
            gt = _image(rng)
            _write(tmp_path / split / scene / "GT_SRGB_010.PNG", gt)
            _write(tmp_path / split / scene / "NOISY_SRGB_010.PNG", gt)
    data = RestorationData("denoise", "folders", train=tmp_path / "train", val=tmp_path / "val",
                           input_token="NOISY", target_token="GT", patch=16, val_size=20)
    assert data.train_names == ["0001_S6/NOISY_SRGB_010.PNG", "0002_N6/NOISY_SRGB_010.PNG"]
    inp, target = data.train_batch(3, step=0)
    assert torch.equal(inp, target)
    assert data.validation()[0][0].shape == (1, 3, 20, 20)


def test_folder_errors(tmp_path: Path, gopro: Path):
    with pytest.raises(ValueError, match=r"`train` = '.*nowhere' does not exist"):
        RestorationData("deblur", "folders", train=tmp_path / "nowhere", val=gopro)
    # the generic search's default input/target names do not match the GoPro layout: say what
    # was searched and how to fix
    with pytest.raises(ValueError, match=r"`train` = '.*train': no image pairs found \(8 image "
                                         r"file\(s\) in all\); searched folders named `input_dir` "
                                         r"= 'input'.*input_dir: blur, target_dir: sharp.*set "
                                         r"`layout` to one of pairs, rain13k, gopro, sidd, div2k"):
        RestorationData("deblur", "folders", train=gopro / "train", val=gopro / "test",
                        layout="pairs")
    with pytest.raises(ValueError, match=r"no image pairs found.*`input_token` = 'NOISY'"):
        RestorationData("denoise", "folders", train=gopro / "train", val=gopro / "test",
                        input_token="NOISY", target_token="GT")
    with pytest.raises(ValueError, match=r"`input_token` is set but `target_token` is not"):
        RestorationData("denoise", "folders", train=gopro, val=gopro, input_token="NOISY")
    with pytest.raises(ValueError, match="give one of them, not both"):
        RestorationData("denoise", "folders", train=gopro, val=gopro, input_token="NOISY",
                        target_token="GT", input_dir="blur")
    with pytest.raises(ValueError, match="`input_dir` and `target_dir` are both 'x'"):
        RestorationData("denoise", "folders", train=gopro, val=gopro, input_dir="x",
                        target_dir="x")


def test_inputs_without_targets_are_listed(gopro: Path):
    for i in range(7):
        _write(gopro / "train" / "GOPR0002" / "blur" / f"extra{i}.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"`train` = '.*': 7 input file\(s\) have no target: "
                                         r"GOPR0002/blur/extra0.png, .* and 2 more"):
        RestorationData("deblur", "folders", train=gopro / "train", val=gopro / "test",
                        input_dir="blur", target_dir="sharp")


def test_size_mismatch_and_too_small_images(tmp_path: Path):
    rng = np.random.default_rng(4)
    _write(tmp_path / "train" / "input" / "a.png", _image(rng, 40, 48))
    _write(tmp_path / "train" / "target" / "a.png", _image(rng, 40, 50))
    _write(tmp_path / "val" / "input" / "b.png", _image(rng, 20, 20))
    _write(tmp_path / "val" / "target" / "b.png", _image(rng, 20, 20))
    data = RestorationData("derain", "folders", train=tmp_path / "train", val=tmp_path / "val",
                           patch=16)
    with pytest.raises(ValueError, match=r"input '.*a.png' is 48x40 but its target '.*a.png' is "
                                         r"50x40 \(width x height\)"):
        data.train_batch(1, 0)
    assert data.validation()[0][0].shape == (1, 3, 20, 20)  # shorter than val_size: whole axis
    small = RestorationData("derain", "folders", train=tmp_path / "val", val=tmp_path / "val",
                            patch=32)
    with pytest.raises(ValueError, match=r"training image '.*b.png' is 20x20, smaller than "
                                         r"`patch` = 32; lower `patch`"):
        small.train_batch(1, 0)
