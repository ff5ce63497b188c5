"""Paired image-restoration data: (degraded input, clean target) for denoise, deblur, derain.

:class:`RestorationData` serves training batches and a fixed validation set for
one of three tasks (:data:`TASKS`) from one of two sources.

Source ``synthetic`` (the default)
----------------------------------
Real photographs shipped inside the scikit-image wheel (no download; the
registry :data:`SYNTHETIC_IMAGES` lists them). Grey photos and textures
(``camera``, ``coins``, ``brick``, ``grass``, ``gravel``) are replicated to
three channels. Left out on purpose: ``cat`` (the same photo as ``chelsea``,
so it would leak across the split), ``colorwheel`` and ``logo`` (graphics, not
photos), ``page`` and ``text`` (documents) and the images that need a download.
Each image is converted to float RGB in [0, 1] and downscaled with
anti-aliasing so that its shorter side is ``short_side`` pixels (never
upscaled). ``images`` restricts the pool (default: all of them).

The split is *by image*, never by crop: the images in ``val_images`` (default
:data:`DEFAULT_VAL_IMAGES`: chelsea, coffee, rocket) are used only for
validation, all the others only for training. The two stereo views
``motorcycle_left`` / ``motorcycle_right`` are near-duplicates, so they must
sit on the same side of the split (a ValueError says so otherwise).

Degradations (numpy/scipy, deterministic given the seed). Every degradation
parameter is a number or a ``[low, high]`` range drawn uniformly per sample
(per validation image for the validation set):

* ``denoise``: additive white Gaussian noise of standard deviation ``sigma``
  on the 0-255 scale (default 25). The input is *not* clipped to [0, 1], as
  in the standard Gaussian-denoising benchmarks.
* ``deblur``: convolution with a blur kernel, then a little Gaussian noise
  (``sigma``, default 1 on the 0-255 scale; 0 turns it off), clipped to
  [0, 1]. ``kernel`` is ``gaussian`` (isotropic, std ``blur_sigma`` pixels,
  default 1-3), ``motion`` (an anti-aliased straight line of ``motion_length``
  pixels, default 5-15, at a uniformly random angle, normalised to sum 1) or
  ``mixed`` (either, with equal probability; the default).
* ``derain``: synthetic rain streaks. Sparse random seeds (a fraction
  ``rain_density`` of the pixels, default 0.002-0.008, each with a random
  intensity in [0.5, 1]) are smeared by an anti-aliased line kernel of
  ``rain_length`` pixels (default 8-24), slightly widened, tilted from vertical
  by up to ``rain_angle`` degrees either way (default 25; a range ``[lo, hi]``
  bounds the size of the tilt), scaled by
  ``rain_brightness`` (default 0.5-0.9) and composited onto the image with a
  *screen* blend, ``1 - (1 - image) * (1 - rain)``, so the input is never
  darker than the target and stays in [0, 1]. ``sigma`` (default 0) adds
  noise on top, then the input is clipped.

Blur and rain are computed on a window that extends the crop by the kernel
radius (reflected at the image border) and keep only the crop, so a crop has
no artificial border effects, and streaks continue across crop edges.

Source ``folders``
------------------
User-provided pairs: ``train`` and ``val`` are two root folders, each holding
input and target images (PNG, JPEG, TIFF or BMP, any case of extension; loaded
with ``skimage.io.imread`` to float RGB in [0, 1], grey replicated, alpha
dropped). ``layout`` names how a root is organised; left out, it is detected
for each root from its first two levels (published layouts first, else
``pairs``):

* ``rain13k``: ``<root>/input/<name>`` with ``<root>/target/<name>``: Rain13K,
  Rain100L/H, Test100, Test1200, Test2800 as Restormer's Deraining datasets
  ship them (and any dataset prepared that way).
* ``gopro``: ``<root>/<sequence>/blur/<name>.png`` with
  ``<root>/<sequence>/sharp/<name>.png``, GoPro as released
  (``GOPRO_Large/train`` and ``GOPRO_Large/test`` are the two roots;
  ``input_dir: blur_gamma`` takes the gamma-blurred inputs).
* ``sidd``: ``<root>/<scene>/0001_NOISY_SRGB_010.PNG`` with
  ``0001_GT_SRGB_010.PNG`` beside it, SIDD-Medium (or -Small) sRGB as released
  (the root is ``SIDD_Medium_Srgb/Data`` or the folder holding ``Data/``).
* ``div2k``: refused with the reason: DIV2K is x4 super-resolution data, whose
  consumer is the sd_unet SR space (:mod:`nasframe_search_spaces.sd_unet.srdata`).
* ``pairs``: the generic search, in one of two ways:

  - folder names: every directory called ``input_dir`` (default ``input``)
    under the root, searched recursively, holds inputs; the target of
    ``<...>/<input_dir>/<rest>`` is ``<...>/<target_dir>/<rest>`` (default
    ``target``), matched by relative path without the extension, so ``.png``
    inputs may pair with ``.jpg`` targets (Restormer's prepared patches:
    ``input_dir: input_crops, target_dir: target_crops``, also detected);
  - name tokens: with ``input_token`` and ``target_token`` (both), every image
    whose file name contains ``input_token`` is an input and its target is the
    file in the same folder with that token replaced.

A named layout searches only its own depth, so a root one level too high (say
``GOPRO_Large`` instead of ``GOPRO_Large/train``) is an error that says what
was expected, what the folder holds and where the layout is, rather than a
silent merge of the training and test sets. ``input_dir``/``target_dir`` (or
the tokens) override a layout's names; given without ``layout``, they select
``pairs``.

Targets without an input are ignored; inputs without a target are an error
(listing a few). Input and target of a pair must have the same height and
width, checked when the pair is first decoded. Decoded images are cached in
memory in their file dtype (``cache: false`` decodes on every use instead;
full GoPro needs about 6 GB cached). ``task`` is a label here: the files
define the degradation, and the synthetic degradation parameters are rejected.

Samples
-------
Training (:meth:`RestorationData.train_batch`): each sample picks an image
uniformly, takes a random ``patch`` x ``patch`` crop with random horizontal
and vertical flips and (synthetic) degrades it on the fly. Sample ``i`` of
step ``step`` uses its own generator seeded by ``(seed, step, i)``, so the
same seed gives the same batches, and a batch of 8 is the first 8 samples of
the batch of 16 at the same step.

Validation (:meth:`RestorationData.validation`): the centre ``val_size`` x
``val_size`` crop of each validation image (the whole image when
``val_size`` is None, or along an axis shorter than ``val_size``); synthetic
ones are degraded once with a generator seeded by the seed and the image name.
Computed on first use and cached on the instance.

Helpers used by the tests and handy elsewhere: :func:`psnr`,
:func:`gaussian_kernel`, :func:`line_kernel`.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: The restoration tasks.
TASKS = ("denoise", "deblur", "derain")
#: The data sources.
SOURCES = ("synthetic", "folders")
#: Folder layouts of the folders source: the generic search, and published datasets as released.
LAYOUTS = ("pairs", "rain13k", "gopro", "sidd", "div2k")
_DIV2K_HERE = ("DIV2K is x4 super-resolution data (inputs a quarter of the targets' size), not "
               "restoration pairs of equal size; use it with the sd_unet super-resolution space "
               "(`data: <DIV2K>/DIV2K_train_HR`, `eval_data: <DIV2K>/DIV2K_valid_HR`; "
               "docs/tocsr.md)")
#: Blur kernels for ``deblur`` on synthetic data.
KERNELS = ("gaussian", "motion", "mixed")
#: Bumped whenever a change in this module changes the data for the same parameters.
DATA_VERSION = 1

#: scikit-image photos of the synthetic source: name -> True when it is grey (replicated to RGB).
SYNTHETIC_IMAGES: dict[str, bool] = {
    "astronaut": False,
    "chelsea": False,
    "coffee": False,
    "rocket": False,
    "motorcycle_left": False,
    "motorcycle_right": False,
    "hubble_deep_field": False,
    "immunohistochemistry": False,
    "retina": False,
    "camera": True,
    "coins": True,
    "brick": True,
    "grass": True,
    "gravel": True,
}
#: The validation images of the synthetic source unless ``val_images`` says otherwise.
DEFAULT_VAL_IMAGES = ("chelsea", "coffee", "rocket")
#: Near-duplicate images that must stay on the same side of the split.
_GROUPS = (("motorcycle_left", "motorcycle_right"),)

#: Image file extensions read by the folders source (compared in lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Per-task defaults of the degradation parameters (None: the parameter does not apply).
_SIGMA_DEFAULT = {"denoise": 25.0, "deblur": 1.0, "derain": 0.0}
_BLUR_SIGMA_DEFAULT = (1.0, 3.0)
_MOTION_LENGTH_DEFAULT = (5.0, 15.0)
_RAIN_DENSITY_DEFAULT = (0.002, 0.008)
_RAIN_LENGTH_DEFAULT = (8.0, 24.0)
_RAIN_ANGLE_DEFAULT = 25.0
_RAIN_BRIGHTNESS_DEFAULT = (0.5, 0.9)
_RAIN_PARAMS = ("rain_density", "rain_length", "rain_angle", "rain_brightness")
_BLUR_PARAMS = ("blur_sigma", "motion_length")


# -- argument checks ----------------------------------------------------------
def _choice(param: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        fix = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"`{param}` = {value!r} is not one of {', '.join(allowed)}{fix}")
    return value


def _int(param: str, value: Any, *, minimum: int = 1, fix: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{param}` must be {kind}, got {value!r}{fix}")
    return int(value)


def _number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(float(value)))


def _range(param: str, value: Any, low: float, high: float, *, low_open: bool = False,
           default: Any = None) -> tuple[float, float]:
    """``value`` (a number or ``[lo, hi]``) as ``(lo, hi)`` within the bounds, or a ValueError
    (whose example is ``default``, the parameter's default)."""
    bound = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    shown = (f"[{default[0]:g}, {default[1]:g}]" if isinstance(default, tuple)
             else f"{default if default is not None else high:g}")
    example = f"e.g. `{param}: {shown}` (a fixed value or a [low, high] range)"
    if _number(value):
        lo = hi = float(value)
    elif (isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 2
          and all(_number(v) for v in value)):
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ValueError(f"`{param}` = {list(value)!r} is a range with low > high; "
                             f"write it as [{hi:g}, {lo:g}]")
    else:
        raise ValueError(f"`{param}` must be a number or a [low, high] range, got {value!r}; "
                         f"write {example}")
    for v in (lo, hi):
        if v > high or v < low or (low_open and v == low):
            raise ValueError(f"`{param}` = {value!r} is outside {bound}; use values in that "
                             f"interval, {example}")
    return lo, hi


def _draw(rng: np.random.Generator, span: tuple[float, float]) -> float:
    """A uniform draw from ``span``; always consumes one number so the stream never shifts."""
    u = rng.random()
    return span[0] + (span[1] - span[0]) * u


# -- image helpers ----------------------------------------------------------------
def _rgb(arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` as (H, W, 3): grey replicated, alpha dropped; dtype unchanged."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return arr[..., :3]
    raise ValueError(f"{what} has shape {arr.shape}; expected a grey, RGB or RGBA image")


def _float(arr: np.ndarray) -> np.ndarray:
    """An image array as float32 in [0, 1] (integers scaled by their dtype's maximum)."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


@lru_cache(maxsize=64)
def _synthetic_image(name: str, short_side: int) -> np.ndarray:
    """scikit-image photo ``name`` as read-only float32 (H, W, 3) in [0, 1], shorter side
    ``short_side`` (anti-aliased downscale; never upscaled)."""
    from skimage import data
    from skimage.transform import resize

    if name == "motorcycle_left":
        raw = data.stereo_motorcycle()[0]
    elif name == "motorcycle_right":
        raw = data.stereo_motorcycle()[1]
    else:
        raw = getattr(data, name)()
    img = _float(_rgb(np.asarray(raw), f"scikit-image image {name!r}"))
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    if scale < 1:
        size = (max(round(h * scale), short_side), max(round(w * scale), short_side))
        img = resize(img, size, order=1, anti_aliasing=True, preserve_range=True)
    out = np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)
    out.setflags(write=False)
    return out


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``[0, n)`` (edge not repeated), any number of bounces."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _window(img: np.ndarray, top: int, left: int, h: int, w: int, margin: int) -> np.ndarray:
    """Rows ``top - margin .. top + h + margin`` and the same for columns, reflected at the border."""
    rows = _reflect(np.arange(top - margin, top + h + margin), img.shape[0])
    cols = _reflect(np.arange(left - margin, left + w + margin), img.shape[1])
    return img[np.ix_(rows, cols)]


def _centre(h: int, w: int, size: int | None) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centre ``size`` crop (the whole axis if shorter)."""
    ch, cw = (h, w) if size is None else (min(size, h), min(size, w))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _odd_size(radius: float) -> int:
    return 2 * int(math.ceil(radius)) + 1


def gaussian_kernel(sigma: float) -> np.ndarray:
    """An isotropic Gaussian blur kernel of std ``sigma`` pixels, size ``2 ceil(3 sigma) + 1``, sum 1."""
    size = _odd_size(3 * sigma)
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def line_kernel(length: float, angle_deg: float, *, normalise: str = "sum") -> np.ndarray:
    """An anti-aliased straight line of ``length`` pixels through the centre of an odd square
    kernel, at ``angle_deg`` (0 = horizontal, 90 = vertical), bilinearly splatted.

    ``normalise="sum"`` gives a blur kernel (sum 1); ``"max"`` a streak of peak 1.
    """
    size = _odd_size(length / 2 + 1)
    c = size // 2
    n = max(2, int(math.ceil(length * 8)))
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, n) if length > 1 else np.zeros(2)
    a = math.radians(angle_deg)
    xs, ys = c + t * math.cos(a), c - t * math.sin(a)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    k = np.zeros((size, size), dtype=np.float64)
    for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)
        np.add.at(k, (yy, xx), wgt)
    k /= k.sum() if normalise == "sum" else k.max()
    return k.astype(np.float32)


def _convolve_valid(window: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``window`` (H + K - 1, W + K - 1[, C]) convolved with ``kernel`` (K, K): the valid (H, W[, C])."""
    from scipy.signal import fftconvolve

    k = kernel if window.ndim == 2 else kernel[..., None]
    return fftconvolve(window, k, mode="valid", axes=(0, 1)).astype(np.float32)


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between two images (inf when identical)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


# -- folder pairs ---------------------------------------------------------------
@dataclass(frozen=True)
class _Pair:
    """One input/target file pair of the folders source."""

    name: str   # the input path relative to its root, POSIX style
    inp: Path
    target: Path


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _few(items: Sequence[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _root(param: str, root: Any) -> Path:
    """``root`` as an existing folder, or a ValueError naming ``param``."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ValueError(f"`{param}` must be the path of a folder of image pairs, got {root!r}; "
                         f"write e.g. `{param}: data/GoPro/{param}`")
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise ValueError(f"`{param}` = '{root}' {what}; give the folder that holds the image "
                         "pairs (e.g. GoPro's train/, Rain13K's folder holding input/ and target/)")
    return root


def _find_pairs(param: str, root: Path, rule: _Rule) -> list[_Pair]:
    """The pairs under ``root``, sorted by name, or a ValueError saying what was searched
    (for a named layout: what it expects and what the folder holds)."""
    input_dir, target_dir = rule.input_dir, rule.target_dir
    input_token, target_token = rule.input_token, rule.target_token
    files = sorted(p for p in root.rglob("*") if _is_image(p)
                   and (rule.depth is None or len(p.relative_to(root).parts) == rule.depth))
    pairs: list[_Pair] = []
    orphans: list[str] = []
    if input_token is not None:
        by_stem = {(p.parent, p.stem): p for p in files}
        for p in files:
            if input_token not in p.name:
                continue
            stem = p.stem.replace(input_token, target_token)
            target = by_stem.get((p.parent, stem))
            rel = p.relative_to(root).as_posix()
            if target is None or target == p:
                orphans.append(rel)
            else:
                pairs.append(_Pair(rel, p, target))
        searched = (f"image files whose name contains `input_token` = {input_token!r}, each "
                    f"paired with the file in the same folder whose name has {target_token!r} "
                    "instead")
        fix = ("check the tokens against your file names (they are case-sensitive), or use "
               "`input_dir`/`target_dir` when inputs and targets live in separate folders")
    else:
        by_stem = {}
        for p in files:
            parts = p.relative_to(root).parts
            if target_dir in parts[:-1]:
                by_stem[p.relative_to(root).with_suffix("").as_posix()] = p
        for p in files:
            parts = p.relative_to(root).parts
            if input_dir not in parts[:-1]:
                continue
            i = len(parts) - 2 - list(reversed(parts[:-1])).index(input_dir)  # last such folder
            swapped = Path(*parts[:i], target_dir, *parts[i + 1:]).with_suffix("").as_posix()
            target = by_stem.get(swapped)
            rel = p.relative_to(root).as_posix()
            if target is None:
                orphans.append(rel)
            else:
                pairs.append(_Pair(rel, p, target))
        searched = (f"folders named `input_dir` = {input_dir!r} (at any depth) holding "
                    f"{'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)} files, each paired with "
                    f"the same file name in the sibling folder `target_dir` = {target_dir!r}")
        fix = ("set `input_dir`/`target_dir` to the folder names your dataset uses (GoPro: "
               "`input_dir: blur, target_dir: sharp`), or `input_token`/`target_token` when "
               "inputs and targets share a folder (SIDD: `input_token: NOISY, target_token: GT`)")
    if orphans:
        raise ValueError(f"`{param}` = '{root}': {len(orphans)} input file(s) have no target: "
                         f"{_few(orphans)}; searched {searched}. Add the missing targets or "
                         "remove those inputs")
    if not pairs and rule.layout != "pairs":
        raise ValueError(f"`{param}` = '{root}' is not in the {rule.layout} layout: expected "
                         f"{_EXPECTED[rule.layout]}; found {_listing(root)}.{_hint(param, root, rule)}")
    if not pairs:
        raise ValueError(f"`{param}` = '{root}': no image pairs found ({len(files)} image "
                         f"file(s) in all); searched {searched}. To fix, {fix}, or set `layout` "
                         f"to one of {', '.join(LAYOUTS)}; the folder holds {_listing(root)}."
                         f"{_hint(param, root, rule)}")
    return pairs


# -- published layouts ------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    """How the folders source pairs files under one root."""

    layout: str                       # one of LAYOUTS but div2k
    input_dir: str | None = None
    target_dir: str | None = None
    input_token: str | None = None
    target_token: str | None = None
    depth: int | None = None          # path parts of a file below the root (None: any)


#: What each named layout expects under a root (``train`` or ``val``).
_EXPECTED = {
    "rain13k": "<root>/input/<name> with <root>/target/<name> (Rain13K, Rain100L/H, Test100, "
               "Test1200, Test2800 as in Restormer's Deraining/Datasets)",
    "gopro": "<root>/<sequence>/blur/<name>.png with <root>/<sequence>/sharp/<name>.png "
             "(GOPRO_Large/train or GOPRO_Large/test; `input_dir: blur_gamma` for the "
             "gamma-blurred inputs)",
    "sidd": "<root>/<scene>/<k>_NOISY_SRGB_<n>.PNG with <k>_GT_SRGB_<n>.PNG beside it "
            "(SIDD_Medium_Srgb/Data, or the folder holding Data/)",
    "div2k": "DIV2K_train_HR/0001.png with DIV2K_train_LR_bicubic/X4/0001x4.png",
}


def _layout_rule(layout: str, root: Path, input_dir: str | None, target_dir: str | None,
                 input_token: str | None, target_token: str | None) -> tuple[_Rule, Path]:
    """The rule of a named ``layout`` (the user's folder names or tokens override its
    defaults) and the root to search (SIDD: ``<root>/Data`` when it exists)."""
    if layout == "rain13k":
        return _Rule("rain13k", input_dir or "input", target_dir or "target", depth=2), root
    if layout == "gopro":
        return _Rule("gopro", input_dir or "blur", target_dir or "sharp", depth=3), root
    if layout == "sidd":
        data = root / "Data"
        return (_Rule("sidd", input_token=input_token or "NOISY",
                      target_token=target_token or "GT", depth=2),
                data if data.is_dir() else root)
    if input_token is not None:
        return _Rule("pairs", input_token=input_token, target_token=target_token), root
    return _Rule("pairs", input_dir or "input", target_dir or "target"), root


def _subdirs(root: Path) -> list[Path]:
    try:
        return sorted(d for d in root.iterdir() if d.is_dir())
    except OSError:
        return []


def _div2k_like(root: Path) -> bool:
    """A DIV2K folder: ``*_HR`` / ``HR`` beside ``*_LR_bicubic`` / ``LR_bicubic``, or one of them."""
    names = {d.name for d in _subdirs(root)}
    hr = any(n == "HR" or n.endswith("_HR") for n in names) or root.name.endswith("_HR")
    lr = any("LR_bicubic" in n for n in names) or "LR_bicubic" in root.name
    return hr and lr or root.name.endswith("_HR") or "LR_bicubic" in root.name


def _detect(root: Path) -> str | None:
    """The published layout ``root`` is in, by a look at its first two levels; None when
    it is none of them (the generic ``pairs`` search applies)."""
    if (root / "input").is_dir() and (root / "target").is_dir():
        return "rain13k"
    subdirs = _subdirs(root)
    if any((d / "blur").is_dir() and (d / "sharp").is_dir() for d in subdirs):
        return "gopro"
    scenes = _subdirs(root / "Data") if (root / "Data").is_dir() else subdirs
    for d in scenes:
        try:
            if any("NOISY" in f.name and _is_image(f) for f in d.iterdir()):
                return "sidd"
        except OSError:
            continue
    if _div2k_like(root):
        return "div2k"
    return None


def _listing(root: Path, n: int = 6) -> str:
    """What ``root`` holds, briefly: its folders (and what the first holds) and image files."""
    try:
        entries = sorted(root.iterdir())
    except OSError as err:
        return f"an unreadable folder ({err})"
    dirs = [e.name + "/" for e in entries if e.is_dir()]
    images = [e.name for e in entries if _is_image(e)]
    parts = []
    if dirs:
        first = _subdirs(root)[0]
        inner = [e.name + "/" for e in _subdirs(first)] or \
            [e.name for e in sorted(first.iterdir()) if _is_image(e)]
        inside = f" ({dirs[0]} holds {_few(inner, 4)})" if inner else f" ({dirs[0]} is empty)"
        parts.append(f"folder(s) {_few(dirs, n)}{inside}")
    if images:
        parts.append(f"{len(images)} image file(s) ({_few(images, 3)})")
    return ", ".join(parts) if parts else "nothing (an empty folder)"


def _hint(param: str, root: Path, rule: _Rule) -> str:
    """A fix for a root that is not in ``rule.layout``: a subfolder that is, or the layout
    the root looks like."""
    wanted = {rule.layout} if rule.layout != "pairs" else set(LAYOUTS) - {"pairs", "div2k"}
    inner = [d for d in _subdirs(root)[:50] if _detect(d) in wanted]
    if inner:
        # the split named like the param first: train/ for `train`, val/ or test/ for `val`
        def rank(d: Path) -> int:
            name = d.name.lower()
            return 0 if ("train" in name) == (param == "train") else 1
        inner.sort(key=rank)
        other = "val" if param == "train" else "train"
        return (f" The {_detect(inner[0])} layout is one level down: point `{param}` at '{inner[0]}'"
                + (f" (and `{other}` at '{inner[1]}')" if len(inner) > 1 else ""))
    found = _detect(root)
    if found == "div2k":
        return (" It looks like DIV2K, super-resolution data: use it with the sd_unet "
                "super-resolution space (docs/tocsr.md)")
    if found is not None:
        return f" It looks like the {found} layout: set `layout: {found}`, or leave `layout` out"
    if rule.layout == "gopro":
        return (f" Folder names differ? set `input_dir`/`target_dir` (now "
                f"{rule.input_dir!r}/{rule.target_dir!r})")
    return ""


def _read(path: Path) -> np.ndarray:
    from skimage import io

    try:
        arr = np.asarray(io.imread(str(path)))
    except Exception as exc:  # noqa: BLE001 - name the file whatever the decoder raised
        raise ValueError(f"cannot read image '{path}': {type(exc).__name__}: {exc}") from exc
    out = np.ascontiguousarray(_rgb(arr, f"image '{path}'"))
    out.setflags(write=False)
    return out


# -- the data ---------------------------------------------------------------------
class RestorationData:
    """Paired restoration data (see the module docstring for sources, layouts and degradations).

    Args (YAML ``params`` of :meth:`from_params` use the same names):
        task: one of :data:`TASKS`.
        source: ``synthetic`` (scikit-image photos, synthetic degradations) or ``folders``.
        patch: side of the square training crops.
        val_size: side of the centre validation crops; None for whole images.
        seed: seeds crops, flips and degradations; same seed, same data.
        short_side: synthetic only: shorter side of the downscaled photos.
        val_images: synthetic only: names of the validation photos
            (default :data:`DEFAULT_VAL_IMAGES`).
        images: synthetic only: the photo pool (default all of :data:`SYNTHETIC_IMAGES`).
        train, val: folders only: the roots of the training and validation pairs.
        layout: folders only: one of :data:`LAYOUTS` (None: detected per root, see the
            module docstring).
        input_dir, target_dir: folders only: names of the input and target folders.
        input_token, target_token: folders only: name tokens of same-folder pairs.
        cache: folders only: keep decoded images in memory.
        sigma: noise std on the 0-255 scale (default 25 denoise, 1 deblur, 0 derain).
        kernel, blur_sigma, motion_length: deblur blur kernels.
        rain_density, rain_length, rain_angle, rain_brightness: derain streaks.

    Degradation parameters take a number or a ``[low, high]`` range. Those that do
    not apply to the task or source are rejected, so a forgotten one cannot silently
    do nothing.
    """

    def __init__(self, task: str = "denoise", source: str = "synthetic", *, patch: int = 64,
                 val_size: int | None = 128, seed: int = 0, short_side: int = 192,
                 val_images: Sequence[str] | None = None, images: Sequence[str] | None = None,
                 train: str | os.PathLike | None = None, val: str | os.PathLike | None = None,
                 layout: str | None = None, input_dir: str | None = None,
                 target_dir: str | None = None,
                 input_token: str | None = None, target_token: str | None = None,
                 cache: bool = True, sigma: Any = None, kernel: str = "mixed",
                 blur_sigma: Any = None, motion_length: Any = None, rain_density: Any = None,
                 rain_length: Any = None, rain_angle: Any = None, rain_brightness: Any = None):
        self.task = _choice("task", task, TASKS)
        self.source = _choice("source", source, SOURCES)
        self.patch = _int("patch", patch)
        self.val_size = None if val_size is None else _int(
            "val_size", val_size, fix="; or null for whole validation images")
        self.seed = _int("seed", seed, minimum=0)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        degradation = {"sigma": sigma, "blur_sigma": blur_sigma, "motion_length": motion_length,
                       "rain_density": rain_density, "rain_length": rain_length,
                       "rain_angle": rain_angle, "rain_brightness": rain_brightness}
        if self.source == "synthetic":
            for name, value in (("train", train), ("val", val), ("layout", layout),
                                ("input_dir", input_dir), ("target_dir", target_dir),
                                ("input_token", input_token), ("target_token", target_token)):
                if value is not None:
                    raise ValueError(f"`{name}` = {value!r} applies to `source: folders` only; "
                                     "remove it, or set `source: folders`")
            self._init_synthetic(short_side, val_images, images)
            self._init_degradation(kernel, **degradation)
        else:
            for name, value in (("val_images", val_images), ("images", images), *degradation.items()):
                if value is not None:
                    raise ValueError(f"`{name}` = {value!r} applies to `source: synthetic` only "
                                     "(the folders hold the degraded inputs); remove it")
            if kernel != "mixed":
                raise ValueError(f"`kernel` = {kernel!r} applies to `source: synthetic` only; "
                                 "remove it")
            self._init_folders(train, val, layout, input_dir, target_dir, input_token,
                               target_token, cache)

    # -- construction ---------------------------------------------------------
    def _init_synthetic(self, short_side: Any, val_images: Any, images: Any) -> None:
        self.short_side = _int("short_side", short_side)
        if self.short_side < self.patch:
            raise ValueError(f"`short_side` = {self.short_side} is smaller than `patch` = "
                             f"{self.patch}; raise `short_side` or lower `patch`")
        known = tuple(SYNTHETIC_IMAGES)

        def names(param: str, value: Any) -> tuple[str, ...]:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
                raise ValueError(f"`{param}` must be a non-empty list of image names, got "
                                 f"{value!r}; choose from {', '.join(known)}")
            for v in value:
                _choice(param, v, known)
            dupes = sorted({v for v in value if list(value).count(v) > 1})
            if dupes:
                raise ValueError(f"`{param}` repeats {dupes}; list each image once")
            return tuple(value)

        pool = known if images is None else names("images", images)
        val = DEFAULT_VAL_IMAGES if val_images is None else names("val_images", val_images)
        outside = [v for v in val if v not in pool]
        if outside:
            raise ValueError(f"`val_images` holds {outside}, which are not in `images` = "
                             f"{list(pool)}; add them to `images` or pick validation images "
                             "from it")
        for group in _GROUPS:
            held = [g for g in group if g in val]
            missing = [g for g in group if g not in val and g in pool]
            if held and missing:
                raise ValueError(f"`val_images` holds {held} but not the near-duplicate "
                                 f"{missing}; list them together so no view of the same scene "
                                 "is used for training")
        train = tuple(n for n in pool if n not in val)
        if not train:
            raise ValueError(f"`val_images` = {list(val)} leaves no training image; keep at "
                             f"least one of {list(pool)} out of it")
        self._train_names, self._val_names = list(train), list(val)

    def _init_degradation(self, kernel: Any, *, sigma: Any, blur_sigma: Any, motion_length: Any,
                          rain_density: Any, rain_length: Any, rain_angle: Any,
                          rain_brightness: Any) -> None:
        task = self.task
        given = {"blur_sigma": blur_sigma, "motion_length": motion_length,
                 "rain_density": rain_density, "rain_length": rain_length,
                 "rain_angle": rain_angle, "rain_brightness": rain_brightness}
        own = {"deblur": _BLUR_PARAMS, "derain": _RAIN_PARAMS}.get(task, ())
        for name, value in given.items():
            if value is not None and name not in own:
                raise ValueError(f"`{name}` = {value!r} does not apply to `task: {task}`; "
                                 f"remove it{' or set `task: deblur`' if name in _BLUR_PARAMS else ''}"
                                 f"{' or set `task: derain`' if name in _RAIN_PARAMS else ''}")
        self.kernel = _choice("kernel", kernel, KERNELS)
        if task != "deblur" and kernel != "mixed":
            raise ValueError(f"`kernel` = {kernel!r} does not apply to `task: {task}`; remove "
                             "it or set `task: deblur`")
        self.sigma = _range("sigma", _SIGMA_DEFAULT[task] if sigma is None else sigma, 0, 255,
                            default=_SIGMA_DEFAULT[task])
        self.blur_sigma = self.motion_length = None
        self.rain_density = self.rain_length = self.rain_angle = self.rain_brightness = None
        if task == "deblur":
            self.blur_sigma = _range("blur_sigma", _BLUR_SIGMA_DEFAULT if blur_sigma is None
                                     else blur_sigma, 0, 20, low_open=True,
                                     default=_BLUR_SIGMA_DEFAULT)
            self.motion_length = _range("motion_length", _MOTION_LENGTH_DEFAULT
                                        if motion_length is None else motion_length, 1, 100,
                                        default=_MOTION_LENGTH_DEFAULT)
        elif task == "derain":
            self.rain_density = _range("rain_density", _RAIN_DENSITY_DEFAULT if rain_density
                                       is None else rain_density, 0, 0.2, low_open=True,
                                       default=_RAIN_DENSITY_DEFAULT)
            self.rain_length = _range("rain_length", _RAIN_LENGTH_DEFAULT if rain_length is None
                                      else rain_length, 1, 100, default=_RAIN_LENGTH_DEFAULT)
            angle = _RAIN_ANGLE_DEFAULT if rain_angle is None else rain_angle
            # a number is the largest tilt from vertical; a range bounds the tilt's size
            tilt = _range("rain_angle", angle, 0, 90, default=_RAIN_ANGLE_DEFAULT)
            self.rain_angle = (0.0, tilt[1]) if _number(angle) else tilt
            self.rain_brightness = _range("rain_brightness", _RAIN_BRIGHTNESS_DEFAULT
                                          if rain_brightness is None else rain_brightness, 0, 1,
                                          low_open=True, default=_RAIN_BRIGHTNESS_DEFAULT)

    def _init_folders(self, train: Any, val: Any, layout: Any, input_dir: Any, target_dir: Any,
                      input_token: Any, target_token: Any, cache: Any) -> None:
        for name, value in (("train", train), ("val", val)):
            if value is None:
                raise ValueError(f"`{name}` is required with `source: folders`; give the folder "
                                 f"of {'training' if name == 'train' else 'validation'} pairs, "
                                 f"e.g. `{name}: data/Rain13K/{name}`")
        if (input_token is None) != (target_token is None):
            given, missing = (("input_token", "target_token") if target_token is None
                              else ("target_token", "input_token"))
            raise ValueError(f"`{given}` is set but `{missing}` is not; give both (e.g. "
                             "`input_token: NOISY, target_token: GT`) or neither")
        if input_token is not None:
            for name, value in (("input_token", input_token), ("target_token", target_token)):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"`{name}` must be a non-empty string, got {value!r}")
            if input_token == target_token:
                raise ValueError(f"`input_token` and `target_token` are both {input_token!r}; "
                                 "they must differ")
            if input_dir is not None or target_dir is not None:
                raise ValueError("`input_dir`/`target_dir` and `input_token`/`target_token` "
                                 "are two ways to pair files; give one of them, not both")
        else:
            for name, value in (("input_dir", input_dir), ("target_dir", target_dir)):
                if value is not None and (not isinstance(value, str) or not value
                                          or "/" in value or "\\" in value):
                    raise ValueError(f"`{name}` must be a folder name (no slashes), got "
                                     f"{value!r}; e.g. `{name}: "
                                     f"{'blur' if name == 'input_dir' else 'sharp'}`")
            if input_dir is not None and input_dir == target_dir:
                raise ValueError(f"`input_dir` and `target_dir` are both {input_dir!r}; they "
                                 "must differ (for pairs in one folder use `input_token`/"
                                 "`target_token`)")
        if not isinstance(cache, bool):
            raise ValueError(f"`cache` must be true or false, got {cache!r}")
        if layout is not None:
            _choice("layout", layout, LAYOUTS)
            if layout == "div2k":
                raise ValueError(_DIV2K_HERE)
            dir_based = layout in ("rain13k", "gopro")
            if (layout == "sidd" and (input_dir or target_dir)) or (
                    dir_based and (input_token or target_token)):
                raise ValueError(f"`layout: {layout}` pairs files by "
                                 f"{'folder' if dir_based else 'name token'}; remove "
                                 f"{'`input_token`/`target_token`' if dir_based else '`input_dir`/`target_dir`'}"
                                 " or use `layout: pairs`")
        self.layout = layout
        self.cache = cache
        self.train_root, self.val_root = _root("train", train), _root("val", val)
        self.rules: dict[str, _Rule] = {}
        pairs = {}
        for param, root in (("train", self.train_root), ("val", self.val_root)):
            name = layout
            if name is None and input_dir is None and target_dir is None and input_token is None:
                name = _detect(root)
                if name == "div2k":
                    raise ValueError(f"`{param}` = '{root}' looks like DIV2K: {_DIV2K_HERE}")
            rule, search = _layout_rule(name or "pairs", root, input_dir, target_dir,
                                        input_token, target_token)
            self.rules[param] = rule
            # names relative to the root given (SIDD searches its Data/ folder)
            pairs[param] = [_Pair(p.inp.relative_to(root).as_posix(), p.inp, p.target)
                            for p in _find_pairs(param, search, rule)]
        self._train_pairs, self._val_pairs = pairs["train"], pairs["val"]
        rule = self.rules["train"]
        self.input_dir, self.target_dir = rule.input_dir, rule.target_dir
        self.input_token, self.target_token = rule.input_token, rule.target_token
        self._decoded: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def allowed_params(cls) -> tuple[str, ...]:
        """The keys :meth:`from_params` accepts (the constructor's arguments)."""
        return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")

    @classmethod
    def from_params(cls, params: dict | None, *, task_default: str = "denoise",
                    seed: int = 0) -> RestorationData:
        """Build from a YAML ``data`` dict; ``task`` defaults to ``task_default`` and ``seed``
        (when the dict has none) to ``seed``. Unknown keys raise a ValueError listing the
        allowed ones."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ValueError(f"data params must be a mapping, got {params!r}; write e.g. "
                             "`data: {task: denoise, source: synthetic}`")
        allowed = cls.allowed_params()
        for key in params:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did = f"did you mean {hint[0]!r}? " if hint else ""
                raise ValueError(f"unknown data parameter {key!r}; {did}allowed: "
                                 f"{', '.join(allowed)}")
        kwargs = {"task": task_default, "seed": seed, **params}
        return cls(**kwargs)

    # -- names and description --------------------------------------------------
    @property
    def train_names(self) -> list[str]:
        """Training images: photo names (synthetic) or input paths relative to ``train``."""
        if self.source == "synthetic":
            return list(self._train_names)
        return [p.name for p in self._train_pairs]

    @property
    def val_names(self) -> list[str]:
        """Validation images: photo names (synthetic) or input paths relative to ``val``."""
        if self.source == "synthetic":
            return list(self._val_names)
        return [p.name for p in self._val_pairs]

    def describe(self) -> dict:
        """A JSON-serialisable description of everything that determines the data, for cache keys.

        Synthetic: the degradation parameters, the image names and the scikit-image
        version. Folders: the roots, the pairing rule and every pair's relative paths,
        sizes and modification times (so an edited file changes the key).
        """
        desc: dict[str, Any] = {"version": DATA_VERSION, "task": self.task,
                                "source": self.source, "patch": self.patch,
                                "val_size": self.val_size, "seed": self.seed}
        if self.source == "synthetic":
            import skimage

            desc.update(
                short_side=self.short_side, train_images=self.train_names,
                val_images=self.val_names, skimage=skimage.__version__,
                sigma=list(self.sigma))
            if self.task == "deblur":
                desc.update(kernel=self.kernel, blur_sigma=list(self.blur_sigma),
                            motion_length=list(self.motion_length))
            elif self.task == "derain":
                desc.update(rain_density=list(self.rain_density),
                            rain_length=list(self.rain_length),
                            rain_angle=list(self.rain_angle),
                            rain_brightness=list(self.rain_brightness))
            return desc

        def files(root: Path, pairs: list[_Pair]) -> list[list]:
            out = []
            for p in pairs:
                si, st = p.inp.stat(), p.target.stat()
                out.append([p.name, p.target.relative_to(root).as_posix(), si.st_size,
                            st.st_size, si.st_mtime_ns, st.st_mtime_ns])
            return out

        desc.update(train=str(self.train_root.resolve()), val=str(self.val_root.resolve()),
                    input_dir=self.input_dir, target_dir=self.target_dir,
                    input_token=self.input_token, target_token=self.target_token,
                    layouts={k: r.layout for k, r in self.rules.items()},
                    train_files=files(self.train_root, self._train_pairs),
                    val_files=files(self.val_root, self._val_pairs))
        return desc

    def __repr__(self) -> str:
        where = (f"{len(self._train_names)} train / {len(self._val_names)} val photos"
                 if self.source == "synthetic" else
                 f"{len(self._train_pairs)} train / {len(self._val_pairs)} val pairs")
        return (f"RestorationData(task={self.task!r}, source={self.source!r}, patch={self.patch}, "
                f"val_size={self.val_size}, seed={self.seed}, {where})")

    # -- degradations ----------------------------------------------------------
    def _plan(self, rng: np.random.Generator) -> tuple[str, np.ndarray | None, float]:
        """Draw one degradation: (kind, kernel or None, noise sigma in [0, 1] units).

        Always consumes the same numbers for a given task so streams stay aligned."""
        sigma = _draw(rng, self.sigma) / 255.0
        if self.task == "denoise":
            return "noise", None, sigma
        if self.task == "deblur":
            pick, angle = rng.random(), rng.uniform(0.0, 180.0)
            s, length = _draw(rng, self.blur_sigma), _draw(rng, self.motion_length)
            use_motion = self.kernel == "motion" or (self.kernel == "mixed" and pick < 0.5)
            k = line_kernel(length, angle) if use_motion else gaussian_kernel(s)
            return "blur", k, sigma
        length = _draw(rng, self.rain_length)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        angle = 90.0 + sign * _draw(rng, self.rain_angle)
        width = rng.uniform(0.4, 0.9)
        streak = line_kernel(length, angle, normalise="max")
        from scipy.ndimage import gaussian_filter

        streak = gaussian_filter(np.pad(streak, 2), width)
        return "rain", (streak / streak.max()).astype(np.float32), sigma

    def _degrade(self, window: np.ndarray, plan: tuple[str, np.ndarray | None, float],
                 margin: int, rng: np.random.Generator) -> np.ndarray:
        """The degraded centre of ``window`` (float32 (H + 2 margin, W + 2 margin, 3))."""
        kind, kernel, sigma = plan
        centre = window[margin:window.shape[0] - margin, margin:window.shape[1] - margin]
        if kind == "noise":
            out = centre.copy()
        elif kind == "blur":
            out = _convolve_valid(window, kernel)
        else:
            density = _draw(rng, self.rain_density)
            brightness = _draw(rng, self.rain_brightness)
            field = window.shape[:2]
            seeds = (rng.random(field, dtype=np.float32) < density) * \
                rng.uniform(0.5, 1.0, size=field).astype(np.float32)
            rain = np.clip(_convolve_valid(seeds, kernel), 0.0, 1.0) * np.float32(brightness)
            out = 1.0 - (1.0 - centre) * (1.0 - rain[..., None])
        if sigma > 0:
            out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
        if kind != "noise":
            out = np.clip(out, 0.0, 1.0)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _synthetic_sample(self, img: np.ndarray, rng: np.random.Generator, top: int, left: int,
                          h: int, w: int, flips: tuple[bool, bool]) -> tuple[np.ndarray, np.ndarray]:
        plan = self._plan(rng)
        margin = 0 if plan[1] is None else plan[1].shape[0] // 2
        window = _window(img, top, left, h, w, margin)
        if flips[0]:
            window = window[:, ::-1]
        if flips[1]:
            window = window[::-1]
        window = np.ascontiguousarray(window)
        target = window[margin:margin + h, margin:margin + w]
        return self._degrade(window, plan, margin, rng), np.ascontiguousarray(target)

    # -- folders ---------------------------------------------------------------
    def _load_pair(self, pair: _Pair) -> tuple[np.ndarray, np.ndarray]:
        """The decoded (input, target) of ``pair`` in file dtype, size-checked, cached if asked."""
        hit = self._decoded.get(pair.inp)
        if hit is not None:
            return hit
        inp, target = _read(pair.inp), _read(pair.target)
        if inp.shape[:2] != target.shape[:2]:
            raise ValueError(f"input '{pair.inp}' is {inp.shape[1]}x{inp.shape[0]} but its "
                             f"target '{pair.target}' is {target.shape[1]}x{target.shape[0]} "
                             "(width x height); a pair must have the same size, fix or remove "
                             "that pair")
        if self.cache:
            self._decoded[pair.inp] = (inp, target)
        return inp, target

    # -- public sampling -------------------------------------------------------
    def train_batch(self, batch_size: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)``, each ``(batch_size, 3, patch, patch)`` float32, a function of
        ``(seed, step)`` only (sample ``i`` uses a generator seeded by ``(seed, step, i)``)."""
        import torch

        batch_size = _int("batch_size", batch_size)
        step = _int("step", step, minimum=0)
        p = self.patch
        inputs, targets = [], []
        for i in range(batch_size):
            rng = np.random.default_rng([self.seed, 0, step, i])
            if self.source == "synthetic":
                name = self._train_names[int(rng.integers(len(self._train_names)))]
                img = _synthetic_image(name, self.short_side)
                top = int(rng.integers(img.shape[0] - p + 1))
                left = int(rng.integers(img.shape[1] - p + 1))
                flips = (bool(rng.random() < 0.5), bool(rng.random() < 0.5))
                x, y = self._synthetic_sample(img, rng, top, left, p, p, flips)
            else:
                pair = self._train_pairs[int(rng.integers(len(self._train_pairs)))]
                inp, target = self._load_pair(pair)
                h, w = inp.shape[:2]
                if h < p or w < p:
                    raise ValueError(f"training image '{pair.inp}' is {w}x{h}, smaller than "
                                     f"`patch` = {p}; lower `patch` or remove the image")
                top, left = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
                x = inp[top:top + p, left:left + p]
                y = target[top:top + p, left:left + p]
                if rng.random() < 0.5:
                    x, y = x[:, ::-1], y[:, ::-1]
                if rng.random() < 0.5:
                    x, y = x[::-1], y[::-1]
                x, y = _float(x), _float(y)
            inputs.append(x)
            targets.append(y)

        def stack(arrs: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2)))

        return stack(inputs), stack(targets)

    def validation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``[(input, target)]``, one pair per validation image, each ``(1, 3, H, W)`` float32.

        Computed on the first call and cached on the instance; do not modify in place."""
        if self._val is None:
            import torch

            def tensor(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))[None])

            out = []
            if self.source == "synthetic":
                for name in self._val_names:
                    img = _synthetic_image(name, self.short_side)
                    rng = np.random.default_rng([self.seed, 1, zlib.crc32(name.encode())])
                    top, left, h, w = _centre(*img.shape[:2], self.val_size)
                    x, y = self._synthetic_sample(img, rng, top, left, h, w, (False, False))
                    out.append((tensor(x), tensor(y)))
            else:
                for pair in self._val_pairs:
                    inp, target = self._load_pair(pair)
                    top, left, h, w = _centre(*inp.shape[:2], self.val_size)
                    out.append((tensor(_float(inp[top:top + h, left:left + w])),
                                tensor(_float(target[top:top + h, left:left + w]))))
            self._val = out
        return list(self._val)
