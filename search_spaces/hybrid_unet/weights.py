"""Teacher weights from a file: this network's state dict, or a published Restormer checkpoint.

Restormer's released checkpoints (github.com/swz30/Restormer, ``{"params": state_dict}``
files such as ``deraining.pth``) hold the same tensors as :class:`.network.HybridRestormer`
under a few other module names; :func:`to_network_keys` renames them:

===========================================  ======================================
published (``restormer_arch.py``)            here
===========================================  ======================================
``patch_embed.proj.weight``                  ``patch_embed.weight``
``down1_2.body.0.weight`` (``down*``/``up*``)  ``down1_2.0.weight``
``<level>.<i>.norm1.body.weight`` (``.bias``)  ``<level>.<i>.norm1.weight`` (``.bias``)
===========================================  ======================================

Every other name is the same: ``attn.temperature``, ``attn.qkv``, ``attn.qkv_dwconv``,
``attn.project_out``, ``ffn.project_in``, ``ffn.dwconv``, ``ffn.project_out``,
``reduce_chan_level3``/``2``, ``output``, the levels and ``refinement``.

LayerNorms come in two types (Restormer's ``LayerNorm_type``), told apart by the file's
keys (:func:`file_norm_bias`): ``WithBias`` (``.body.weight`` and ``.body.bias``: the
deraining, motion-deblurring and single-image defocus-deblurring checkpoints) is
``norm_bias: true`` here, ``BiasFree`` (``.body.weight`` only: the real and Gaussian
denoising checkpoints) is ``norm_bias: false``. Two published checkpoints do not fit an
RGB-to-RGB network and are refused with the reason: dual-pixel defocus deblurring (6 input
channels, ``skip_conv``) and grey Gaussian denoising (1 channel).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from nasframe.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from nasframe_search_spaces.hybrid_unet.network import UNetConfig

#: (published pattern, our replacement), applied in turn to every key
_RENAMES = (
    (re.compile(r"^patch_embed\.proj\."), "patch_embed."),
    (re.compile(r"^((?:down|up)\d_\d)\.body\."), r"\1."),
    (re.compile(r"\.(norm[12])\.body\.(weight|bias)$"), r".\1.\2"),
)
_NORM = re.compile(r"\.norm[12]\.(weight|bias)$")


def read_state(path: str | Path, field: str = "teacher.weights") -> dict[str, torch.Tensor]:
    """The tensors in ``path`` (``torch.load(weights_only=True)``: no code runs), unwrapped
    from ``{"params": ...}`` (Restormer, BasicSR), ``{"params_ema": ...}``,
    ``{"state_dict": ...}`` or ``{"model": ...}``; ConfigError naming ``field`` otherwise."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"`{field}`: no file at {str(path)!r}; give the path of a state dict "
                          "saved with torch.save(model.state_dict(), path), or of a published "
                          "Restormer checkpoint (e.g. deraining.pth)")
    try:
        try:   # memory-mapped: reading the keys costs nothing, tensors load when used
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)   # legacy format
    except Exception as err:
        raise ConfigError(f"`{field}`: {str(path)!r} cannot be loaded safely "
                          f"(torch.load(weights_only=True): {err}); save only the state dict") from err
    for key in ("params", "params_ema", "state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        kind = f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else \
            f"a {type(obj).__name__}"
        raise ConfigError(f"`{field}`: {str(path)!r} holds no state dict of tensors (found "
                          f"{kind}); give a file saved with torch.save(model.state_dict(), path) "
                          "or a {'params': state_dict} checkpoint")
    return obj


def is_published(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` uses Restormer's published module names."""
    return any(p.search(k) for k in state for p, _ in _RENAMES)


def to_network_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with Restormer's published names renamed to this network's (see the
    module docstring); names already in this network's layout pass unchanged."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def file_norm_bias(state: dict[str, torch.Tensor]) -> bool | None:
    """True when the (renamed) state's LayerNorms have biases (``WithBias``), False when
    they have weights only (``BiasFree``), None when it has no LayerNorms."""
    norms = [k for k in state if _NORM.search(k)]
    if not norms:
        return None
    return any(k.endswith(".bias") for k in norms)


def _summary(keys: list[str], n: int = 4) -> str:
    """``keys`` grouped by their name with block indices replaced by ``*``."""
    groups = Counter(re.sub(r"\.\d+\.", ".*.", k) for k in keys)
    shown = [f"{g} (x{c})" if c > 1 else g for g, c in list(groups.items())[:n]]
    more = f", and {len(groups) - n} more name(s)" if len(groups) > n else ""
    return ", ".join(shown) + more


def check_fits(state: dict[str, torch.Tensor], cfg: UNetConfig, source: str,
               field: str = "teacher.weights") -> None:
    """A ConfigError naming ``field`` unless ``state`` (in this network's names) has exactly
    the all-transformer network's keys and shapes for ``cfg``: the missing and unexpected
    keys summarised, the first shape differences, and the fix where it is known."""
    import torch

    from nasframe_search_spaces.hybrid_unet.network import STAGES, HybridRestormer

    if "skip_conv.weight" in state:
        raise ConfigError(
            f"`{field}`: {source} is Restormer's dual-pixel defocus-deblurring checkpoint "
            "(`skip_conv`, 6 input channels: the left and right views); the data here is one "
            "RGB image per input. Use a single-image checkpoint (e.g. "
            "single_image_defocus_deblurring.pth)")
    with torch.device("meta"):
        expected = HybridRestormer(cfg, {s: ["transformer"] * cfg.stage_blocks(s)
                                         for s in STAGES}).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the file: {_summary(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) in the file: {_summary(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape(s) differ, e.g. " + "; ".join(
            f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} here"
            for k in shapes[:3]))
    fixes = []
    norm_missing = [k for k in missing if _NORM.search(k)]
    norm_extra = [k for k in unexpected if _NORM.search(k)]
    if norm_missing and all(k.endswith(".bias") for k in norm_missing):
        fixes.append("the file's LayerNorms have no bias (Restormer's BiasFree, as in its "
                     "denoising checkpoints): set `network.norm_bias: false`, or leave it unset "
                     "to follow the file")
    if norm_extra and all(k.endswith(".bias") for k in norm_extra):
        fixes.append("the file's LayerNorms have biases (Restormer's WithBias): set "
                     "`network.norm_bias: true`, or leave it unset to follow the file")
    embed = state.get("patch_embed.weight")
    if embed is not None and embed.ndim == 4 and embed.shape[1] != cfg.in_channels:
        fixes.append(f"the file takes {embed.shape[1]}-channel inputs, the data {cfg.in_channels} "
                     "(Restormer's grey denoising checkpoint is 1-channel: use the colour one, "
                     "gaussian_color_denoising_blind.pth)")
    elif embed is not None and embed.ndim == 4 and embed.shape[0] != cfg.dim:
        fixes.append(f"the file is a {embed.shape[0]}-channel network, this one {cfg.dim}: "
                     f"{'use `preset: restormer`' if embed.shape[0] == 48 else 'set `network.dim`'}"
                     " and the matching blocks/heads")
    if not fixes:
        fixes.append("check `preset` and the `network` overrides (dim, blocks, refinement, "
                     "heads, ffn_factor, bias, norm_bias) against the file's network")
    raise ConfigError(f"`{field}`: {source} does not fit the {cfg.dim}-channel all-transformer "
                      f"network: {'; '.join(problems)}. Fix: {'; '.join(fixes)}")


def load_teacher_state(path: str | Path, cfg: UNetConfig,
                       field: str = "teacher.weights") -> dict[str, torch.Tensor]:
    """The state dict at ``path`` in this network's names, checked against ``cfg``
    (:func:`check_fits`); published Restormer names are renamed."""
    state = to_network_keys(read_state(path, field))
    check_fits(state, cfg, repr(str(path)), field)
    return state
