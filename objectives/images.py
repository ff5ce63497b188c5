"""Small real photographs shipped inside scikit-image, for quick image proxies.

Only images that ship in the scikit-image wheel are used (no download). Each
is converted to float RGB in [0, 1] and downscaled with anti-aliasing so that
its shorter side is ``short_side`` pixels.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: RGB photographs in the scikit-image wheel, by name.
PHOTOS = ("astronaut", "rocket", "motorcycle_left", "coffee", "chelsea")


def _load(name: str):
    from skimage import data

    if name == "motorcycle_left":
        return data.stereo_motorcycle()[0]
    if name not in PHOTOS:
        raise ValueError(f"unknown image {name!r}; choose from {', '.join(PHOTOS)}")
    return getattr(data, name)()


@lru_cache(maxsize=32)
def photo(name: str, short_side: int = 128) -> torch.Tensor:
    """Photo ``name`` as a (3, H, W) float32 tensor in [0, 1], shorter side
    ``short_side`` (area-averaged downscale). Cached; do not modify in place."""
    import numpy as np
    import torch
    from skimage.transform import resize
    from skimage.util import img_as_float

    img = img_as_float(_load(name))[..., :3]
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    if scale < 1:
        img = resize(img, (round(h * scale), round(w * scale)), order=1, anti_aliasing=True)
    arr = np.ascontiguousarray(np.clip(img, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(arr)


def centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` crop of a (C, H, W) image (whole axis if smaller)."""
    h, w = img.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return img[..., top:top + size, left:left + size]


def psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of ``output`` clamped to [0, 1] against ``target`` (peak 1)."""
    mse = float(((output.clamp(0.0, 1.0) - target) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
