"""Restoration pairs of the downstream tasks: x4 super-resolution and deblurring.

A pair is ``(degraded, target)``: for super-resolution ``(lr, hr)``, (3, h, w) and
(3, h * scale, w * scale); for deblurring ``(blurred, sharp)``, both (3, H, W);
float32 images in [0, 1]. Photos are degraded the usual way: bicubic
downscaling with anti-aliasing (torch's ``interpolate``), or a blur kernel
(motion: an anti-aliased line; or Gaussian; hybrid_unet's
:func:`~nasframe_search_spaces.hybrid_unet.data.line_kernel` /
:func:`~nasframe_search_spaces.hybrid_unet.data.gaussian_kernel`) convolved with
reflected borders, several kernels per photo. Paired folders hold real data in
DIV2K's layout::

    ROOT/HR/0001.png
    ROOT/LR_bicubic/X4/0001x4.png       (or ROOT/LR_bicubic/X4/0001.png)

or, for deblurring, GoPro's (:func:`gopro_pairs`)::

    ROOT/GOPR0372_07_00/blur/000047.png
    ROOT/GOPR0372_07_00/sharp/000047.png

Training draws aligned random crops from any list of pairs
(:func:`random_pair_crops`); evaluation takes fixed crops (:func:`fixed_pair_crops`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

SCALE = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def degrade(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic downscaling by ``scale`` with anti-aliasing: (B, 3, H, W) -> (B, 3, H/s, W/s)."""
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)


def bicubic_up(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """Bicubic upsampling by ``scale`` (the baseline, and the SR model's conditioning
    image): (B, 3, h, w) -> (B, 3, h * s, w * s), clamped to [0, 1]."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def condition_image(degraded: torch.Tensor, scale: int) -> torch.Tensor:
    """The degraded image at the target's size, which the model is conditioned on and
    the fidelity path starts from: bicubic x ``scale`` (super-resolution), or the input
    itself for ``scale`` 1 (deblurring). Clamped to [0, 1]."""
    return degraded.clamp(0, 1) if scale == 1 else bicubic_up(degraded, scale)


#: blur kernels of synthetic deblurring pairs (hybrid_unet's `kernel` choices)
KERNELS = ("gaussian", "motion", "mixed")


def blur_kernel(rng, kind: str = "mixed", blur_sigma: tuple[float, float] = (1.0, 3.0),
                motion_length: tuple[float, float] = (5.0, 15.0)) -> torch.Tensor:
    """One random blur kernel (K, K), sum 1: a motion line of length uniform in
    ``motion_length`` at a uniform angle, or a Gaussian of std uniform in ``blur_sigma``
    (``mixed``: either, evenly). ``rng``: a ``numpy.random.Generator``; the draws are
    always the same four, so the stream stays aligned whatever ``kind`` is."""
    from nasframe_search_spaces.hybrid_unet.data import gaussian_kernel, line_kernel

    if kind not in KERNELS:
        raise ValueError(f"kernel {kind!r}: one of {', '.join(KERNELS)}")
    pick, angle = rng.random(), rng.uniform(0.0, 180.0)
    sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * rng.random()
    length = motion_length[0] + (motion_length[1] - motion_length[0]) * rng.random()
    motion = kind == "motion" or (kind == "mixed" and pick < 0.5)
    k = line_kernel(length, angle) if motion else gaussian_kernel(sigma)
    return torch.from_numpy(k)


def blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``image`` (3, H, W) or (B, 3, H, W) convolved with ``kernel`` (K, K), borders
    reflected (the size is kept), clamped to [0, 1]."""
    x = image[None] if image.ndim == 3 else image
    k = kernel.to(x.dtype)
    r = k.shape[-1] // 2
    if r >= min(x.shape[-2:]):
        raise ValueError(f"a {k.shape[-1]}x{k.shape[-1]} kernel is too large for a "
                         f"{x.shape[-1]}x{x.shape[-2]} image")
    pad = F.pad(x, (r, r, r, r), mode="reflect")
    # conv2d is a correlation: flip the kernel for a convolution
    w = k.flip(-1, -2)[None, None].expand(x.shape[1], 1, -1, -1)
    out = F.conv2d(pad, w, groups=x.shape[1]).clamp(0, 1)
    return out[0] if image.ndim == 3 else out


def photo_blur_pairs(names: tuple[str, ...], per_image: int = 8, seed: int = 0, kind: str = "mixed",
                     blur_sigma: tuple[float, float] = (1.0, 3.0),
                     motion_length: tuple[float, float] = (5.0, 15.0),
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(blurred, sharp)`` of scikit-image photos ``names``: each photo blurred by
    ``per_image`` kernels of :func:`blur_kernel`, drawn from ``seed``."""
    import numpy as np

    from nasframe_search_spaces.sd_unet.pretrain import photo

    rng = np.random.default_rng(98_000_027 + seed)
    out = []
    for name in names:
        sharp = photo(name)
        for _ in range(per_image):
            out.append((blur(sharp, blur_kernel(rng, kind, blur_sigma, motion_length)), sharp))
    return out


def gopro_pairs(root: str | Path, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(blurred, sharp)`` pairs from a folder in GoPro's layout: sequence folders
    ``ROOT/<sequence>/blur/*.png`` with ``ROOT/<sequence>/sharp/*.png`` of the same names
    (``ROOT`` itself may hold ``blur/`` and ``sharp/``), sorted by sequence then name,
    at most ``limit``. ValueError naming the problem: no sequence, a blurred frame
    without its sharp partner, sizes that differ."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder (expected GoPro's layout: "
                         "<sequence>/blur/*.png and <sequence>/sharp/*.png)")
    sequences = [root] if (root / "blur").is_dir() else sorted(
        d for d in root.iterdir() if (d / "blur").is_dir())
    if not sequences:
        raise ValueError(f"{root}: no <sequence>/blur/ folder (expected GoPro's layout: "
                         "<sequence>/blur/*.png and <sequence>/sharp/*.png)")
    out = []
    for seq in sequences:
        if not (seq / "sharp").is_dir():
            raise ValueError(f"{seq}: has blur/ but no sharp/ folder")
        for b in sorted(p for p in (seq / "blur").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if limit is not None and len(out) >= limit:
                return out
            s = seq / "sharp" / b.name
            if not s.is_file():
                raise ValueError(f"{b}: no sharp partner {s}")
            blurred, sharp = _read_rgb(b), _read_rgb(s)
            if blurred.shape != sharp.shape:
                raise ValueError(f"{b.name}: blurred {blurred.shape[-1]}x{blurred.shape[-2]} but "
                                 f"sharp {sharp.shape[-1]}x{sharp.shape[-2]}")
            out.append((blurred, sharp))
    if not out:
        raise ValueError(f"{root}: no images in the blur/ folders ({', '.join(IMAGE_SUFFIXES)})")
    return out


def photo_pairs(names: tuple[str, ...], scale: int = SCALE) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(lr, hr)`` of scikit-image photos ``names`` (see :func:`.pretrain.photo`), the
    HR image cropped to a multiple of ``scale``."""
    from nasframe_search_spaces.sd_unet.pretrain import photo

    out = []
    for name in names:
        hr = photo(name)
        h, w = (s - s % scale for s in hr.shape[-2:])
        hr = hr[:, :h, :w].contiguous()
        out.append((degrade(hr[None], scale)[0], hr))
    return out


def _read_rgb(path: Path) -> torch.Tensor:
    """An image file as (3, H, W) float32 in [0, 1] (PIL; its decompression-bomb guard stays on)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def folder_pairs(root: str | Path, scale: int = SCALE,
                 limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(lr, hr)`` pairs from a DIV2K-layout folder (``HR/`` and ``LR_bicubic/X{scale}/``),
    sorted by name, at most ``limit``. The HR image is cropped to ``scale`` x the LR
    size (DIV2K's LR images are the floor of HR / scale). ValueError naming the
    problem: a missing folder, an HR image without its LR partner, sizes that do
    not match the scale."""
    root = Path(root).expanduser()
    hr_dir, lr_dir = root / "HR", root / "LR_bicubic" / f"X{scale}"
    for d in (hr_dir, lr_dir):
        if not d.is_dir():
            raise ValueError(f"{root}: no folder {d.relative_to(root)}/ (expected DIV2K's layout: "
                             f"HR/ and LR_bicubic/X{scale}/)")
    hr_files = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not hr_files:
        raise ValueError(f"{hr_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for hr_path in hr_files[:limit]:
        candidates = [lr_dir / f"{hr_path.stem}x{scale}{hr_path.suffix}", lr_dir / hr_path.name]
        lr_path = next((c for c in candidates if c.is_file()), None)
        if lr_path is None:
            raise ValueError(f"{hr_path}: no LR partner ({candidates[0].name} or "
                             f"{candidates[1].name} in {lr_dir})")
        lr, hr = _read_rgb(lr_path), _read_rgb(hr_path)
        h, w = lr.shape[-2] * scale, lr.shape[-1] * scale
        if hr.shape[-2] < h or hr.shape[-1] < w or hr.shape[-2] >= h + scale or hr.shape[-1] >= w + scale:
            raise ValueError(f"{lr_path.name} is {lr.shape[-1]}x{lr.shape[-2]} but {hr_path.name} is "
                             f"{hr.shape[-1]}x{hr.shape[-2]}: not an x{scale} pair")
        out.append((lr, hr[:, :h, :w].contiguous()))
    return out


def random_pair_crops(pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int, hr_size: int,
                      generator: torch.Generator, scale: int = SCALE,
                      flips: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` aligned random crops drawn evenly from ``pairs``: LR (n, 3, s/scale, s/scale)
    and HR (n, 3, s, s), ``s = hr_size`` (a multiple of ``scale``), in [0, 1]."""
    if hr_size % scale:
        raise ValueError(f"hr_size {hr_size} must be a multiple of the scale {scale}")
    lrs, hrs, size = [], [], hr_size // scale
    for k in range(n):
        lr, hr = pairs[k % len(pairs)]
        h, w = lr.shape[-2:]
        if h < size or w < size:
            raise ValueError(f"an LR image of {w}x{h} is smaller than the LR crop {size}")
        top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
        a = lr[:, top:top + size, left:left + size]
        b = hr[:, top * scale:(top + size) * scale, left * scale:(left + size) * scale]
        if flips and bool(torch.randint(0, 2, (1,), generator=generator)):
            a, b = a.flip(-1), b.flip(-1)
        lrs.append(a)
        hrs.append(b)
    return torch.stack(lrs), torch.stack(hrs)


def fixed_pair_crops(pairs: list[tuple[torch.Tensor, torch.Tensor]], n: int, hr_size: int,
                     seed: int, scale: int = SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out evaluation set: ``n`` crops at positions fixed by ``seed``, no flips."""
    return random_pair_crops(pairs, n, hr_size, torch.Generator().manual_seed(90_000_049 + seed),
                             scale, flips=False)
