"""The Stable-Diffusion VAE as two searchable parts: encoder and decoder.

NanoSD scales the whole pipeline, the VAE included: a width multiplier and the
resnets per stage of the VAE encoder and of its decoder. This module builds
both from diffusers' own ``Encoder`` / ``Decoder`` (nothing re-implemented) at
any width and depth, fills them from a full ``AutoencoderKL`` teacher, and gives
their example inputs, so that ``params`` / ``gmacs`` / ``latency`` can measure
them as the ``vae_encoder`` / ``vae_decoder`` parts.

Parts (state-dict names equal ``AutoencoderKL``'s, so inheritance is a name lookup):

:class:`VAEEncoder` ``(cfg, width_mult, layers)``
    ``encoder.*`` (diffusers ``Encoder``, ``double_z=True``) + ``quant_conv.*``
    (1x1, ``2L -> 2L``). ``forward(image) -> moments``: the ``2L``-channel mean
    and log-variance that ``AutoencoderKL.encode`` wraps in its
    ``DiagonalGaussianDistribution``. ``layers``: resnets per down stage
    (diffusers' ``layers_per_block``; SD 1.5: 2).
:class:`VAEDecoder` ``(cfg, width_mult, layers)``
    ``post_quant_conv.*`` (1x1, ``L -> L``) + ``decoder.*`` (diffusers
    ``Decoder``). ``forward(latent) -> image``, the latent *unscaled* (as
    ``AutoencoderKL.decode`` takes it; a pipeline divides by ``scaling_factor``
    first). ``layers``: resnets per **up stage**. diffusers' ``Decoder`` builds
    ``layers_per_block + 1`` of them, so the full SD 1.5 decoder has
    ``layers = 3`` and a decoder of ``layers`` resnets is built with
    ``layers_per_block = layers - 1``.

Width: level ``l`` of both parts has ``round(C_l * width_mult / q) * q``
channels (at least ``q``), ``q = norm_num_groups``; the mid block (two resnets
and a one-head self-attention, ``attention_head_dim`` = channels) is always
kept. A narrowed stage whose first resnet had a 1x1 shortcut in the teacher
keeps it even when rounding makes its input and output widths equal, so that
every student block computes what its teacher block computes on the kept
channels.

SD 1.5 (docs/sd.md: 83,653,863 parameters; encoder 34,163,592, decoder
49,490,179, i.e. diffusers' bare ``Encoder`` / ``Decoder``): the full-width
parts count 34,163,664 (``+ quant_conv`` 72) and 49,490,199
(``+ post_quant_conv`` 20), together the whole ``AutoencoderKL``.

Surgery (:func:`inherit_vae`) follows :mod:`.surgery`'s **importance rule**:

* *Level channels*: one subset per residual stream. A channel's importance is
  the sum over the teacher layers writing into its level (``conv_in``, every
  resnet's ``conv2`` and ``conv_shortcut``, the sampler conv, the mid
  attention's ``to_out.0``) of the L1 norm of the filter producing it, each
  layer's norms divided by their mean. A stage whose first resnet keeps the
  width (no shortcut) adds to the stream of the level before it (SD 1.5:
  levels 2 and 3 and the mid block share one subset).
* *Block-internal channels*: a resnet's middle channels by ``conv1``; the mid
  attention's inner width (one head) twice: query/key dimensions by ``to_q`` +
  ``to_k``, value dimensions by ``to_v`` + ``to_out.0``'s columns.
* Top-k kept in their original order; GroupNorm affines take the subset of the
  channels they scale. The kept resnets of a stage are its first ``layers``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the importance rule's helpers are shared with the U-Net's surgery
from nasframe_search_spaces.sd_unet.surgery import (
    _col_norms,
    _row_norms,
    _take,
    _top,
    find_weights,
    load_weights,
)

Index = torch.Tensor | None

PARTS = ("encoder", "decoder")


# ============================================================================ config
@dataclass(frozen=True)
class VAEConfig:
    """The teacher VAE: the fields of diffusers' ``AutoencoderKL`` config that
    matter for SD 1.x/2.x-style VAEs (every stage ``DownEncoderBlock2D`` /
    ``UpDecoderBlock2D``, SiLU, quant convs, mid-block attention)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    sample_size: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {self.block_out_channels}: {bad} do not divide "
                             f"into norm_num_groups={self.norm_num_groups}")

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def downsampling(self) -> int:
        """Image side / latent side (SD: 8)."""
        return 2 ** (self.levels - 1)

    def stream_groups(self) -> list[list[int]]:
        """Levels joined by an identity residual (a stage whose first resnet keeps
        the width has no shortcut), which share one channel subset."""
        groups: list[list[int]] = []
        for level, c in enumerate(self.block_out_channels):
            if level > 0 and c == self.block_out_channels[level - 1]:
                groups[-1].append(level)
            else:
                groups.append([level])
        return groups

    def widths(self, width_mult: float) -> tuple[int, ...]:
        """Channels of each level at ``width_mult``: nearest multiple of
        ``norm_num_groups``, at least one group's worth."""
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ValueError(f"width_mult {width_mult!r}: must be a positive number, e.g. 0.5")
        q = self.norm_num_groups
        return tuple(max(q, int(round(c * width_mult / q)) * q) for c in self.block_out_channels)

    def to_diffusers(self) -> dict[str, Any]:
        """The equivalent ``AutoencoderKL(**config)``."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    down_block_types=("DownEncoderBlock2D",) * self.levels,
                    up_block_types=("UpDecoderBlock2D",) * self.levels,
                    block_out_channels=tuple(self.block_out_channels),
                    layers_per_block=self.layers_per_block, act_fn="silu",
                    latent_channels=self.latent_channels, norm_num_groups=self.norm_num_groups,
                    sample_size=self.sample_size, scaling_factor=self.scaling_factor)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        """Read a diffusers ``vae/config.json`` (missing keys take ``AutoencoderKL``'s
        defaults); ValueError naming what is unsupported."""
        name = config.get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise ValueError(f"the config describes a {name}, not an AutoencoderKL; give the "
                             "pipeline folder or its vae/ folder")
        channels = config.get("block_out_channels", (64,))
        if (not isinstance(channels, (list, tuple)) or not channels
                or not all(isinstance(c, int) and c > 0 for c in channels)):
            raise ValueError(f"block_out_channels {channels!r}: must be a list of positive ints")
        n = len(channels)
        down = list(config.get("down_block_types", ("DownEncoderBlock2D",)))
        up = list(config.get("up_block_types", ("UpDecoderBlock2D",)))
        if down != ["DownEncoderBlock2D"] * n:
            raise ValueError(f"down_block_types {down}: only {n} x DownEncoderBlock2D (as in SD) "
                             "is supported")
        if up != ["UpDecoderBlock2D"] * n:
            raise ValueError(f"up_block_types {up}: only {n} x UpDecoderBlock2D (as in SD) "
                             "is supported")
        lpb = config.get("layers_per_block", 1)
        if isinstance(lpb, bool) or not isinstance(lpb, int) or lpb < 1:
            raise ValueError(f"layers_per_block {lpb!r}: only one positive count for all stages "
                             "is supported")
        for key, want in (("act_fn", "silu"), ("use_quant_conv", True),
                          ("use_post_quant_conv", True), ("mid_block_add_attention", True)):
            if config.get(key, want) != want:
                raise ValueError(f"{key}={config[key]!r} is not supported (only {want!r}, as in SD)")
        size = config.get("sample_size", 32)
        if isinstance(size, (list, tuple)):
            if len(set(size)) != 1:
                raise ValueError(f"sample_size {size!r}: only square samples are supported")
            size = size[0]
        scaling = config.get("scaling_factor", 0.18215)
        return cls(in_channels=int(config.get("in_channels", 3)),
                   out_channels=int(config.get("out_channels", 3)),
                   block_out_channels=tuple(int(c) for c in channels), layers_per_block=lpb,
                   latent_channels=int(config.get("latent_channels", 4)),
                   norm_num_groups=int(config.get("norm_num_groups", 32)),
                   scaling_factor=float(scaling) if scaling is not None else 0.18215,
                   sample_size=int(size))


VAE_PRESETS: dict[str, VAEConfig] = {
    # SD 1.5's AutoencoderKL (docs/sd.md: 83,653,863 parameters)
    "sd15": VAEConfig(),
    # the same design on a 16-channel latent (pairs with the U-Net preset `latent16`)
    "latent16": VAEConfig(latent_channels=16),
    # the same structure (levels 2 and 3 share a stream) at small widths: CPU tests
    "tiny": VAEConfig(block_out_channels=(32, 64, 128, 128), norm_num_groups=8, sample_size=64),
    # `tiny` on a 16-channel latent (pairs with the U-Net preset `tiny16`)
    "tiny16": VAEConfig(block_out_channels=(32, 64, 128, 128), norm_num_groups=8, sample_size=64,
                        latent_channels=16),
}


def _part(part: str) -> str:
    p = part[4:] if part.startswith("vae_") else part
    if p not in PARTS:
        raise ValueError(f"part {part!r}: must be 'encoder' or 'decoder' (or 'vae_encoder' / "
                         "'vae_decoder')")
    return p


def _check_layers(layers: Any, what: str) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{what} layers {layers!r}: must be a positive int (resnets per stage)")
    return layers


def _keep_teacher_shortcuts(blocks: nn.ModuleList, teacher_in: Sequence[int],
                            teacher_out: Sequence[int]) -> None:
    """Give each stage's first resnet the 1x1 shortcut its teacher has, where the
    rounded widths made its input and output equal."""
    for block, cin, cout in zip(blocks, teacher_in, teacher_out):
        resnet = block.resnets[0]
        if cin != cout and resnet.conv_shortcut is None:
            resnet.use_in_shortcut = True
            resnet.conv_shortcut = nn.Conv2d(resnet.in_channels, resnet.out_channels, 1)


# ============================================================================ parts
class VAEEncoder(nn.Module):
    """diffusers' ``Encoder`` (``double_z``) + ``quant_conv``: image -> ``2L`` moments.

    ``layers``: resnets per down stage (default: the teacher's ``layers_per_block``)."""

    part = "encoder"

    def __init__(self, cfg: VAEConfig, width_mult: float = 1.0, layers: int | None = None):
        super().__init__()
        from diffusers.models.autoencoders.vae import Encoder

        self.cfg, self.width_mult = cfg, width_mult
        self.layers = _check_layers(cfg.layers_per_block if layers is None else layers, "encoder")
        self.widths = cfg.widths(width_mult)
        self.encoder = Encoder(in_channels=cfg.in_channels, out_channels=cfg.latent_channels,
                               down_block_types=("DownEncoderBlock2D",) * cfg.levels,
                               block_out_channels=self.widths, layers_per_block=self.layers,
                               norm_num_groups=cfg.norm_num_groups, act_fn="silu", double_z=True)
        c = cfg.block_out_channels
        _keep_teacher_shortcuts(self.encoder.down_blocks, (c[0], *c[:-1]), c)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))


class VAEDecoder(nn.Module):
    """``post_quant_conv`` + diffusers' ``Decoder``: (unscaled) latent -> image.

    ``layers``: resnets per up stage (default ``layers_per_block + 1``, the
    teacher's; built as diffusers' ``layers_per_block = layers - 1``)."""

    part = "decoder"

    def __init__(self, cfg: VAEConfig, width_mult: float = 1.0, layers: int | None = None):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder

        self.cfg, self.width_mult = cfg, width_mult
        self.layers = _check_layers(cfg.layers_per_block + 1 if layers is None else layers,
                                    "decoder")
        self.widths = cfg.widths(width_mult)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(in_channels=cfg.latent_channels, out_channels=cfg.out_channels,
                               up_block_types=("UpDecoderBlock2D",) * cfg.levels,
                               block_out_channels=self.widths, layers_per_block=self.layers - 1,
                               norm_num_groups=cfg.norm_num_groups, act_fn="silu")
        rc = tuple(reversed(cfg.block_out_channels))
        _keep_teacher_shortcuts(self.decoder.up_blocks, (rc[0], *rc[:-1]), rc)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent))


def build_vae_part(cfg: VAEConfig, part: str, width_mult: float = 1.0,
                   layers: int | None = None) -> VAEEncoder | VAEDecoder:
    """:class:`VAEEncoder` or :class:`VAEDecoder` by name (``encoder``/``vae_encoder``...)."""
    return (VAEEncoder if _part(part) == "encoder" else VAEDecoder)(cfg, width_mult, layers)


def vae_example_inputs(cfg: VAEConfig, part: str, input_shape: Sequence[int] | None = None,
                       batch_size: int = 1, image_size: int | None = None) -> tuple[torch.Tensor]:
    """``(x,)`` for ``part``: the encoder takes ``(B, in_channels, S, S)`` images in
    [-1, 1], the decoder ``(B, latent_channels, S/f, S/f)`` latents,
    ``S = image_size`` (default ``cfg.sample_size``), ``f = 2**(levels-1)``.
    ``input_shape`` (the whole shape, batch included) overrides both."""
    p = _part(part)
    if input_shape:
        shape = tuple(int(s) for s in input_shape)
    else:
        side = cfg.sample_size if image_size is None else image_size
        if isinstance(side, bool) or not isinstance(side, int) or side < 1 or side % cfg.downsampling:
            raise ValueError(f"image_size {side!r}: must be a positive multiple of "
                             f"{cfg.downsampling} (the VAE's downsampling)")
        shape = ((batch_size, cfg.in_channels, side, side) if p == "encoder" else
                 (batch_size, cfg.latent_channels, side // cfg.downsampling,
                  side // cfg.downsampling))
    want = cfg.in_channels if p == "encoder" else cfg.latent_channels
    if len(shape) != 4 or shape[1] != want:
        raise ValueError(f"input_shape {shape}: the VAE {p} takes (batch, {want}, height, width)")
    if p == "encoder":
        return (torch.rand(*shape) * 2 - 1,)
    return (torch.randn(*shape),)


# ============================================================================ surgery
def _get(teacher: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in teacher:
        raise ValueError(f"the teacher state has no tensor {name!r}; give the full AutoencoderKL "
                         "state dict of this config (load_vae_teacher)")
    return teacher[name]


_LEVEL_WRITERS = {
    "encoder": re.compile(r"^encoder\.down_blocks\.(\d+)\.(resnets\.\d+\.(conv2|conv_shortcut)|"
                          r"downsamplers\.0\.conv)\.weight$"),
    "decoder": re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.\d+\.(conv2|conv_shortcut)|"
                          r"upsamplers\.0\.conv)\.weight$"),
}
_MID_WRITERS = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets\.\d+\.conv2|"
                          r"attentions\.0\.to_out\.0)\.weight$")


def vae_level_importance(teacher: Mapping[str, torch.Tensor], cfg: VAEConfig,
                         part: str) -> list[torch.Tensor]:
    """Importance of every channel of every level of the teacher's ``part``
    (shared within stream groups)."""
    p = _part(part)
    top = cfg.levels - 1
    scores = [torch.zeros(c) for c in cfg.block_out_channels]

    def add(level: int, name: str, w: torch.Tensor) -> None:
        if w.shape[0] != scores[level].numel():
            raise ValueError(f"teacher {name} {tuple(w.shape)} writes {w.shape[0]} channels, the "
                             f"config's level {level} has {scores[level].numel()}; is the "
                             "teacher of this config (preset)?")
        scores[level] += _row_norms(w)

    conv_in = f"{p}.conv_in.weight"
    add(0 if p == "encoder" else top, conv_in, _get(teacher, conv_in))
    for name, w in teacher.items():
        m = _LEVEL_WRITERS[p].match(name)
        if m:
            i = int(m.group(1))
            add(i if p == "encoder" else top - i, name, w)
        else:
            m = _MID_WRITERS.match(name)
            if m and m.group(1) == p:
                add(top, name, w)
    for group in cfg.stream_groups():
        total = sum(scores[level] for level in group)
        for level in group:
            scores[level] = total
    return scores


def vae_level_indices(teacher: Mapping[str, torch.Tensor], cfg: VAEConfig, part: str,
                      width_mult: float) -> list[Index]:
    """The teacher channels each level of ``part`` keeps at ``width_mult`` (None: all)."""
    scores = vae_level_importance(teacher, cfg, part)
    return [_top(s, w) for s, w in zip(scores, cfg.widths(width_mult))]


def _resnet(t: Mapping[str, torch.Tensor], p: str, in_idx: Index, out_idx: Index,
            width: int) -> dict[str, dict[int, Index]]:
    mid = _top(_row_norms(_get(t, f"{p}conv1.weight")), width)
    spec = {
        "norm1.weight": {0: in_idx}, "norm1.bias": {0: in_idx},
        "conv1.weight": {0: mid, 1: in_idx}, "conv1.bias": {0: mid},
        "norm2.weight": {0: mid}, "norm2.bias": {0: mid},
        "conv2.weight": {0: out_idx, 1: mid}, "conv2.bias": {0: out_idx},
        "conv_shortcut.weight": {0: out_idx, 1: in_idx}, "conv_shortcut.bias": {0: out_idx},
    }
    return {p + k: v for k, v in spec.items()}


def _attention(t: Mapping[str, torch.Tensor], p: str, c_idx: Index,
               width: int) -> dict[str, dict[int, Index]]:
    """The mid block's one-head self-attention: inner width = channels."""
    q, k, v, o = (_get(t, f"{p}{n}.weight") for n in ("to_q", "to_k", "to_v", "to_out.0"))
    qk = _top(_row_norms(q) + _row_norms(k), width)
    vo = _top(_row_norms(v) + _col_norms(o), width)
    spec = {
        "group_norm.weight": {0: c_idx}, "group_norm.bias": {0: c_idx},
        "to_q.weight": {0: qk, 1: c_idx}, "to_q.bias": {0: qk},
        "to_k.weight": {0: qk, 1: c_idx}, "to_k.bias": {0: qk},
        "to_v.weight": {0: vo, 1: c_idx}, "to_v.bias": {0: vo},
        "to_out.0.weight": {0: c_idx, 1: vo}, "to_out.0.bias": {0: c_idx},
    }
    return {p + k: v for k, v in spec.items()}


def _mid(t: Mapping[str, torch.Tensor], p: str, idx: Index, width: int) -> dict[str, dict[int, Index]]:
    spec: dict[str, dict[int, Index]] = {}
    for r in (0, 1):
        spec.update(_resnet(t, f"{p}mid_block.resnets.{r}.", idx, idx, width))
    spec.update(_attention(t, f"{p}mid_block.attentions.0.", idx, width))
    return spec


def vae_slicing(teacher: Mapping[str, torch.Tensor], student: VAEEncoder | VAEDecoder,
                levels: list[Index] | None = None) -> dict[str, dict[int, Index]]:
    """For every parameter of ``student``: the teacher channel subset of each
    narrowed dimension (absent or None: the dimension is kept whole).
    ``levels``: precomputed :func:`vae_level_indices` (e.g. cached per width)."""
    cfg, w, top = student.cfg, student.widths, student.cfg.levels - 1
    lv = vae_level_indices(teacher, cfg, student.part, student.width_mult) if levels is None else levels
    if len(lv) != cfg.levels:
        raise ValueError(f"levels: {len(lv)} subsets given, the VAE has {cfg.levels} levels")
    spec: dict[str, dict[int, Index]] = {}
    if student.part == "encoder":
        p = "encoder."
        spec.update({f"{p}conv_in.weight": {0: lv[0]}, f"{p}conv_in.bias": {0: lv[0]}})
        for i in range(cfg.levels):
            for j in range(student.layers):
                in_idx = lv[i - 1] if (j == 0 and i > 0) else lv[i]
                spec.update(_resnet(teacher, f"{p}down_blocks.{i}.resnets.{j}.", in_idx, lv[i], w[i]))
            spec[f"{p}down_blocks.{i}.downsamplers.0.conv.weight"] = {0: lv[i], 1: lv[i]}
            spec[f"{p}down_blocks.{i}.downsamplers.0.conv.bias"] = {0: lv[i]}
        spec.update(_mid(teacher, p, lv[top], w[top]))
        spec.update({f"{p}conv_norm_out.weight": {0: lv[top]}, f"{p}conv_norm_out.bias": {0: lv[top]},
                     f"{p}conv_out.weight": {1: lv[top]}})
    else:
        p = "decoder."
        spec.update({f"{p}conv_in.weight": {0: lv[top]}, f"{p}conv_in.bias": {0: lv[top]}})
        spec.update(_mid(teacher, p, lv[top], w[top]))
        for i in range(cfg.levels):
            level = top - i
            for j in range(student.layers):
                prev = level + 1 if (j == 0 and i > 0) else level
                spec.update(_resnet(teacher, f"{p}up_blocks.{i}.resnets.{j}.", lv[prev], lv[level],
                                    w[level]))
            spec[f"{p}up_blocks.{i}.upsamplers.0.conv.weight"] = {0: lv[level], 1: lv[level]}
            spec[f"{p}up_blocks.{i}.upsamplers.0.conv.bias"] = {0: lv[level]}
        spec.update({f"{p}conv_norm_out.weight": {0: lv[0]}, f"{p}conv_norm_out.bias": {0: lv[0]},
                     f"{p}conv_out.weight": {1: lv[0]}})
    return spec


def inherit_vae(student: VAEEncoder | VAEDecoder, teacher: Mapping[str, torch.Tensor],
                levels: list[Index] | None = None) -> VAEEncoder | VAEDecoder:
    """Fill ``student`` (a possibly narrowed, possibly shallower part) from
    ``teacher``, the full-width ``AutoencoderKL`` state dict of ``student.cfg``
    (both parts, or just this one). Kept resnets are each stage's first
    ``student.layers``; every tensor is sliced by the importance rule. Every
    student tensor comes from the teacher (ValueError otherwise); returns ``student``."""
    if not isinstance(student, (VAEEncoder, VAEDecoder)):
        raise TypeError(f"student must be a VAEEncoder or VAEDecoder, not {type(student).__name__}")
    own = student.state_dict()
    missing = [k for k in own if k not in teacher]
    if missing:
        raise ValueError(f"the teacher has no {missing[:3]} ({len(missing)} missing tensor(s)): a "
                         f"{student.part} with {student.layers} resnets per stage needs a teacher "
                         "at least as deep; give the full AutoencoderKL state dict of this config")
    spec = vae_slicing(teacher, student, levels)
    state = {}
    for name, param in own.items():
        t = _take(teacher[name], spec.get(name, {}))
        if t.shape != param.shape:
            raise ValueError(f"{name}: the teacher's slice {tuple(t.shape)} does not fit the "
                             f"student's {tuple(param.shape)} (a student wider than its teacher, "
                             "or a teacher of another config, cannot inherit)")
        state[name] = t.to(param.dtype)
    student.load_state_dict(state)
    return student


def inherit_encoder(student: VAEEncoder, teacher: Mapping[str, torch.Tensor],
                    levels: list[Index] | None = None) -> VAEEncoder:
    """:func:`inherit_vae` for an encoder."""
    if not isinstance(student, VAEEncoder):
        raise TypeError(f"inherit_encoder needs a VAEEncoder, not {type(student).__name__}")
    return inherit_vae(student, teacher, levels)


def inherit_decoder(student: VAEDecoder, teacher: Mapping[str, torch.Tensor],
                    levels: list[Index] | None = None) -> VAEDecoder:
    """:func:`inherit_vae` for a decoder."""
    if not isinstance(student, VAEDecoder):
        raise TypeError(f"inherit_decoder needs a VAEDecoder, not {type(student).__name__}")
    return inherit_vae(student, teacher, levels)


# ============================================================================ loading a teacher
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def find_vae_files(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, config.json or None) of a VAE at ``path``: a diffusers
    pipeline folder (``vae/`` inside), a VAE folder, or a weights file."""
    return find_weights(path, "vae", "VAE")


def _diffusers_names(state: dict[str, torch.Tensor], source: Path, cfg: VAEConfig) -> dict[str, torch.Tensor]:
    from nasframe_search_spaces.sd_unet.surgery import from_original, is_original_layout

    if is_original_layout(state, "vae"):          # a whole SD checkpoint, or a bare LDM VAE
        return from_original(state, "vae", cfg.to_diffusers(), source)
    out = {}
    for name, t in state.items():
        m = re.match(r"^((?:encoder|decoder)\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)"
                     r"\.(weight|bias)$", name)
        if m:
            name = f"{m.group(1)}.{_DEPRECATED_ATTENTION[m.group(2)]}.{m.group(3)}"
            if t.ndim == 4:             # 1x1-conv attention of old checkpoints
                t = t[:, :, 0, 0]
        out[name] = t
    return out


def holds_vae(path: str | Path) -> bool:
    """Whether a ``teacher.path`` holds the VAE too: a pipeline folder with ``vae/``, or a
    single-file SD checkpoint in the original layout (``first_stage_model.*`` tensors)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return (path / "vae").is_dir()
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                keys = list(f.keys())
        except Exception:  # noqa: BLE001 - an unreadable file: the U-Net loader names it
            return False
    else:
        try:
            keys = list(load_weights(path))
        except ValueError:
            return False
    return any(k.startswith("first_stage_model.") for k in keys)


def teacher_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the full ``AutoencoderKL`` of ``cfg``."""
    with torch.device("meta"):
        parts = (VAEEncoder(cfg), VAEDecoder(cfg))
    return {k: tuple(v.shape) for m in parts for k, v in m.state_dict().items()}


def load_vae_teacher(path: str | Path, cfg: VAEConfig) -> dict[str, torch.Tensor]:
    """The full teacher VAE's state dict (``AutoencoderKL`` names, float32),
    checked against ``cfg``. ``path``: a diffusers pipeline folder (``vae/``
    inside), a VAE folder (``config.json`` + ``diffusion_pytorch_model.safetensors``
    / ``.bin``) or a ``.safetensors`` / ``.bin`` / ``.ckpt`` file, in diffusers' layout or
    the original SD (LDM) one: a whole SD checkpoint (``first_stage_model.*``) or a bare
    LDM VAE, converted offline with the preset's config. ValueError naming the
    problem and its fix."""
    weights, config_file = find_vae_files(path)
    if config_file is not None:
        try:
            theirs = VAEConfig.from_diffusers(json.loads(config_file.read_text()))
        except (ValueError, json.JSONDecodeError) as err:
            raise ValueError(f"{config_file}: {err}") from None
        diffs = [f"{f.name}: {getattr(theirs, f.name)!r} (preset {getattr(cfg, f.name)!r})"
                 for f in fields(VAEConfig)
                 if f.name not in ("scaling_factor", "sample_size")
                 and getattr(theirs, f.name) != getattr(cfg, f.name)]
        if diffs:
            raise ValueError(f"{config_file} does not match the VAE preset: {'; '.join(diffs)}; "
                             f"choose the matching preset ({', '.join(VAE_PRESETS)})")
    state = _diffusers_names(load_weights(weights), weights, cfg)
    shapes = teacher_shapes(cfg)
    missing = [k for k in shapes if k not in state]
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} tensor(s) of the preset's AutoencoderKL, "
                         f"e.g. {missing[:3]}; is it the VAE (not the U-Net) of this preset?")
    bad = [f"{k} {tuple(state[k].shape)} != {s}" for k, s in shapes.items()
           if tuple(state[k].shape) != s]
    if bad:
        raise ValueError(f"{weights}: shapes differ from the preset's AutoencoderKL: {bad[:3]}; "
                         f"choose the matching preset ({', '.join(VAE_PRESETS)})")
    return {k: state[k].float() for k in shapes}
