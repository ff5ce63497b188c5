"""Public restoration datasets in their layouts as released: SIDD-Medium, GoPro, Rain13K /
Rain100L, DIV2K. Each is written here as a tiny folder in exactly that layout (a few small
images), then used end to end: a tiny hybrid_unet run reads its pairs (the run's
input PSNR is the one computed here from the files), a folder in the wrong layout is
a ParamError (exit 2) saying what was expected and what was found, and DIV2K goes to
the super-resolution data of sd_unet."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import cli_here
from nasframe.config import config_from_dict
from nasframe.params import ParamError
from nasframe.runner import run_experiment
from nasframe_search_spaces.hybrid_unet.data import RestorationData, psnr
from nasframe_search_spaces.hybrid_unet.space import HybridUNetSpace

H, W = 24, 32


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _clean(rng) -> np.ndarray:
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _degrade(clean: np.ndarray) -> np.ndarray:
    return (clean // 2 + 40).astype(np.uint8)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def sidd_medium(root: Path, scenes=("0001_001_S6_00100_00060_3200_L", "0002_001_S6_00100_00020_3200_N")):
    """SIDD_Medium_Srgb/Data/<scene>/<instance>_{NOISY,GT}_SRGB_{010,011}.PNG (the instance
    number is the scene folder's first field)."""
    rng = np.random.default_rng(0)
    for scene in scenes:
        k = scene.split("_")[0]
        for n in ("010", "011"):
            gt = _clean(rng)
            _png(root / "Data" / scene / f"{k}_GT_SRGB_{n}.PNG", gt)
            _png(root / "Data" / scene / f"{k}_NOISY_SRGB_{n}.PNG", _degrade(gt))


def gopro(root: Path, sequences=("GOPR0372_07_00", "GOPR0374_11_00")):
    """GOPRO_Large/<split>/<sequence>/{blur,blur_gamma,sharp}/<frame>.png"""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for seq in sequences if split == "train" else sequences[:1]:
            for frame in ("000047.png", "000048.png"):
                sharp = _clean(rng)
                _png(root / split / seq / "sharp" / frame, sharp)
                _png(root / split / seq / "blur" / frame, _degrade(sharp))
                _png(root / split / seq / "blur_gamma" / frame, sharp // 3)


def rain(root: Path, ext: str, n: int = 3, seed: int = 2):
    """<dataset>/{input,target}/<i>.<ext> (Restormer's Deraining datasets)"""
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        clean = _clean(rng)
        for sub, arr in (("target", clean), ("input", _degrade(clean))):
            path = root / sub / f"{i}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, quality=95) if ext == "jpg" else _png(path, arr)


def div2k(root: Path, splits=("train", "valid")):
    """DIV2K/DIV2K_<split>_HR/0001.png and DIV2K/DIV2K_<split>_LR_bicubic/X4/0001x4.png"""
    rng = np.random.default_rng(3)
    for split in splits:
        for i in ((1, 2) if split == "train" else (801,)):
            hr = rng.integers(0, 256, size=(64, 72, 3), dtype=np.uint8)
            _png(root / f"DIV2K_{split}_HR" / f"{i:04d}.png", hr)
            _png(root / f"DIV2K_{split}_LR_bicubic" / "X4" / f"{i:04d}x4.png", hr[::4, ::4])


def _tiny_run(tmp_path: Path, task: str, data: dict) -> dict:
    """A tiny hybrid_unet run (teacher 2 steps, 1 distillation step, 1 trial) on ``data``;
    returns its alignment report."""
    cfg = {"name": "layout", "seed": 0,
           "search_space": {"name": "hybrid_unet", "params": {
               "preset": "tiny", "granularity": "stage", "input_size": 16, "task": task,
               "data": {"source": "folders", "patch": 16, "val_size": None, **data},
               "teacher": {"steps": 2, "batch_size": 2}, "distill": {"steps": 1, "batch_size": 1}}},
           "objectives": [{"name": "psnr"}], "strategy": {"name": "random"},
           "references": False, "budget": {"trials": 1}}
    summary = run_experiment(config_from_dict(cfg), tmp_path / "run")
    assert summary.failed == 0 and summary.trials == 1
    return json.loads((tmp_path / "run" / "alignment.json").read_text())


def _input_psnr(pairs: list[tuple[Path, Path]]) -> float:
    return float(np.mean([psnr(_read(i), _read(t)) for i, t in pairs]))


# -- end to end, one tiny run per layout -------------------------------------------
@pytest.mark.slow
def test_sidd_medium_as_released(tmp_path):
    sidd_medium(tmp_path / "SIDD_Medium_Srgb")
    sidd_medium(tmp_path / "held_out", scenes=("0199_009_GP_00800_01600_5500_N",))
    data = RestorationData("denoise", "folders", train=tmp_path / "SIDD_Medium_Srgb",
                           val=tmp_path / "held_out" / "Data", patch=16)
    assert {r.layout for r in data.rules.values()} == {"sidd"}           # detected
    assert data.train_names[:2] == ["Data/0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_010.PNG",
                                    "Data/0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_011.PNG"]
    scene = tmp_path / "held_out" / "Data" / "0199_009_GP_00800_01600_5500_N"
    report = _tiny_run(tmp_path, "denoise", {"layout": "sidd", "train": str(tmp_path / "SIDD_Medium_Srgb"),
                                             "val": str(tmp_path / "held_out")})
    expected = _input_psnr([(scene / f"0199_NOISY_SRGB_{n}.PNG", scene / f"0199_GT_SRGB_{n}.PNG")
                            for n in ("010", "011")])
    assert report["input_psnr"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_gopro_as_released(tmp_path):
    gopro(tmp_path / "GOPRO_Large")
    root = tmp_path / "GOPRO_Large"
    data = RestorationData("deblur", "folders", train=root / "train", val=root / "test", patch=16)
    assert data.rules["train"].layout == "gopro" and len(data.train_names) == 4
    assert data.train_names[0] == "GOPR0372_07_00/blur/000047.png"
    gamma = RestorationData("deblur", "folders", layout="gopro", input_dir="blur_gamma",
                            train=root / "train", val=root / "test", patch=16)
    assert gamma.val_names == ["GOPR0372_07_00/blur_gamma/000047.png",
                               "GOPR0372_07_00/blur_gamma/000048.png"]
    report = _tiny_run(tmp_path, "deblur", {"train": str(root / "train"), "val": str(root / "test")})
    seq = root / "test" / "GOPR0372_07_00"
    expected = _input_psnr([(seq / "blur" / f, seq / "sharp" / f) for f in ("000047.png", "000048.png")])
    assert report["input_psnr"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_rain13k_and_rain100l_as_restormer_ships_them(tmp_path):
    rain(tmp_path / "Datasets" / "train" / "Rain13K", "jpg")
    rain(tmp_path / "Datasets" / "test" / "Rain100L", "png", n=2, seed=5)
    train, val = tmp_path / "Datasets" / "train" / "Rain13K", tmp_path / "Datasets" / "test" / "Rain100L"
    report = _tiny_run(tmp_path, "derain", {"layout": "rain13k", "train": str(train), "val": str(val)})
    expected = _input_psnr([(val / "input" / f"{i}.png", val / "target" / f"{i}.png") for i in (1, 2)])
    assert report["input_psnr"] == pytest.approx(expected, abs=1e-4)
    detected = RestorationData("derain", "folders", train=train, val=val, patch=16)
    assert detected.rules["train"].layout == detected.rules["val"].layout == "rain13k"
    assert detected.train_names == ["input/1.jpg", "input/2.jpg", "input/3.jpg"]


# -- wrong folders ------------------------------------------------------------------
def _space(**data):
    return HybridUNetSpace(preset="tiny", task="deblur", data={"source": "folders", "patch": 16, **data})


def test_a_root_one_level_too_high_names_the_layout_and_where_it_is(tmp_path):
    gopro(tmp_path / "GOPRO_Large")
    root = tmp_path / "GOPRO_Large"
    with pytest.raises(ParamError, match=r"data: `train` = '.*GOPRO_Large' is not in the gopro "
                                         r"layout: expected <root>/<sequence>/blur/<name>.png with "
                                         r"<root>/<sequence>/sharp/<name>.png .*; found folder\(s\) "
                                         r"test/, train/ \(test/ holds GOPR0372_07_00/\)\. The "
                                         r"gopro layout is one level down: point `train` at "
                                         r"'.*GOPRO_Large/train' \(and `val` at '.*GOPRO_Large/test'\)"):
        _space(layout="gopro", train=str(root), val=str(root / "test"))
    # left to detection, the same root says where the layout is too
    with pytest.raises(ParamError, match=r"no image pairs found .* The gopro layout is one level "
                                         r"down: point `train` at '.*GOPRO_Large/train'"):
        _space(train=str(root), val=str(root / "test"))


def test_the_wrong_named_layout_says_what_the_folder_looks_like(tmp_path):
    rain(tmp_path / "Rain100L", "png", n=1)
    sidd_medium(tmp_path / "SIDD")
    with pytest.raises(ParamError, match=r"'.*Rain100L' is not in the gopro layout: expected .*; "
                                         r"found folder\(s\) input/, target/ \(input/ holds 1.png\)\. "
                                         r"It looks like the rain13k layout: set `layout: rain13k`"):
        _space(layout="gopro", train=str(tmp_path / "Rain100L"), val=str(tmp_path / "Rain100L"))
    with pytest.raises(ParamError, match=r"'.*Rain100L' is not in the sidd layout: expected "
                                         r"<root>/<scene>/<k>_NOISY_SRGB_<n>.PNG"):
        _space(layout="sidd", train=str(tmp_path / "SIDD"), val=str(tmp_path / "Rain100L"))
    with pytest.raises(ParamError, match=r"`layout: gopro` pairs files by folder; remove "
                                         r"`input_token`/`target_token`"):
        _space(layout="gopro", train=str(tmp_path), val=str(tmp_path), input_token="NOISY",
               target_token="GT")
    with pytest.raises(ParamError, match=r"`layout` = 'goPro' is not one of .*did you mean 'gopro'"):
        _space(layout="goPro", train=str(tmp_path), val=str(tmp_path))
    with pytest.raises(ParamError, match=r"`layout` = 'gopro' applies to `source: folders` only"):
        HybridUNetSpace(preset="tiny", data={"layout": "gopro"})


def test_div2k_goes_to_the_super_resolution_data(tmp_path):
    from nasframe_search_spaces.sd_unet import srdata

    div2k(tmp_path / "DIV2K")
    root = tmp_path / "DIV2K"
    # the restoration data refuses it, naming the consumer
    with pytest.raises(ParamError, match=r"`train` = '.*DIV2K_train_HR' looks like DIV2K: DIV2K "
                                         r"is x4 super-resolution data.*sd_unet"):
        _space(train=str(root / "DIV2K_train_HR"), val=str(root / "DIV2K_valid_HR"))
    with pytest.raises(ParamError, match="DIV2K is x4 super-resolution data"):
        _space(layout="div2k", train=str(root), val=str(root))
    # sd_unet's SR data reads it as released: the HR folder of a split names the split
    pairs = srdata.folder_pairs(root / "DIV2K_train_HR")
    assert [tuple(hr.shape) for _, hr in pairs] == [(3, 64, 72)] * 2
    assert [tuple(lr.shape) for lr, _ in pairs] == [(3, 16, 18)] * 2
    hr = _read(root / "DIV2K_train_HR" / "0002.png")
    lr = _read(root / "DIV2K_train_LR_bicubic" / "X4" / "0002x4.png")
    assert np.allclose(pairs[1][1].numpy().transpose(1, 2, 0), hr, atol=1e-6)
    assert np.allclose(pairs[1][0].numpy().transpose(1, 2, 0), lr, atol=1e-6)
    (valid,) = srdata.folder_pairs(root / "DIV2K_valid_HR")
    assert valid[1].shape == (3, 64, 72)
    # a folder holding both splits: name one
    with pytest.raises(ValueError, match=r"holds 2 DIV2K splits \(DIV2K_train_HR, DIV2K_valid_HR\); "
                                         r"give the HR folder of one"):
        srdata.folder_pairs(root)
    only = tmp_path / "only_train"
    div2k(only, splits=("train",))
    assert len(srdata.folder_pairs(only)) == 2
    with pytest.raises(ValueError, match=r"no folder .*DIV2K_valid_LR_bicubic/X4/ .*found"):
        (root / "DIV2K_valid_LR_bicubic" / "X4" / "0801x4.png").unlink()
        (root / "DIV2K_valid_LR_bicubic" / "X4").rmdir()
        srdata.folder_pairs(root / "DIV2K_valid_HR")


def test_cli_exit_2_for_a_folder_in_the_wrong_layout(tmp_path):
    gopro(tmp_path / "GOPRO_Large")
    root = tmp_path / "GOPRO_Large"
    exp = {"name": "wrong", "search_space": {"name": "hybrid_unet", "params": {
        "preset": "tiny", "task": "deblur",
        "data": {"source": "folders", "layout": "gopro", "train": str(root), "val": str(root / "test")}}},
        "objectives": [{"name": "psnr"}], "strategy": {"name": "random"}, "budget": {"trials": 1}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = cli_here("validate", str(path))
    assert out.returncode == 2, out.stderr
    assert "is not in the gopro layout: expected <root>/<sequence>/blur" in out.stderr
    assert "point `train` at" in out.stderr and "Traceback" not in out.stderr
