"""Restormer's U-Net with a transformer or SSM block in every block slot.

Topology (Zamir et al., CVPR 2022), for ``dim = C``::

    patch embed  3x3 conv, in -> C
    encoder 1    blocks at C,   H x W           -- skip 1
    down         3x3 conv C -> C/2, pixel-unshuffle(2) -> 2C (rank-4 form: NPU-safe)
    encoder 2    blocks at 2C,  H/2             -- skip 2
    down         -> 4C
    encoder 3    blocks at 4C,  H/4             -- skip 3
    down         -> 8C
    latent       blocks at 8C,  H/8
    up           3x3 conv 8C -> 16C, pixel-shuffle(2) -> 4C
    decoder 3    concat skip 3 (8C), 1x1 conv -> 4C, blocks at 4C
    up           -> 2C
    decoder 2    concat skip 2 (4C), 1x1 conv -> 2C, blocks at 2C
    up           -> C
    decoder 1    concat skip 1 (2C), no reduction, blocks at 2C
    refinement   blocks at 2C
    output       3x3 conv 2C -> out, plus the input (global residual)

Stages and their heads: encoder 1, decoder 1 and refinement use ``heads[0]``;
encoder 2 and decoder 2 ``heads[1]``; encoder 3 and decoder 3 ``heads[2]``;
the latent ``heads[3]``. Inputs whose sides are not multiples of 8 are
reflect-padded and the output cropped back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasframe_search_spaces.hybrid_unet.blocks import SSMBlock, TransformerBlock

#: stage name -> (channel multiple of dim, resolution divisor, heads index, blocks index)
STAGES: dict[str, tuple[int, int, int, int]] = {
    "enc1": (1, 1, 0, 0),
    "enc2": (2, 2, 1, 1),
    "enc3": (4, 4, 2, 2),
    "latent": (8, 8, 3, 3),
    "dec3": (4, 4, 2, 2),
    "dec2": (2, 2, 1, 1),
    "dec1": (2, 1, 0, 0),
    "refine": (2, 1, 0, -1),
}
#: module attribute holding each stage's blocks
STAGE_MODULES = {"enc1": "encoder_level1", "enc2": "encoder_level2", "enc3": "encoder_level3",
                 "latent": "latent", "dec3": "decoder_level3", "dec2": "decoder_level2",
                 "dec1": "decoder_level1", "refine": "refinement"}
KINDS = ("transformer", "ssm")


@dataclass(frozen=True)
class SSMConfig:
    """The SSM block's hyper-parameters (see :class:`.blocks.SSMBlock`)."""

    d_state: int = 16
    expand: float = 1.0
    headdim: int = 64
    orders: int = 1
    mix: str = "sum"
    rotate: bool = True     # block i starts its scan in direction i % 4
    ffn_factor: float = 1.0
    backend: str = "auto"
    chunk: int = 64


@dataclass(frozen=True)
class UNetConfig:
    """The network's hyper-parameters; the defaults are Restormer's published ones."""

    dim: int = 48
    blocks: tuple[int, int, int, int] = (4, 6, 6, 8)
    refinement: int = 4
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_factor: float = 2.66
    bias: bool = False
    norm_bias: bool = True
    in_channels: int = 3
    out_channels: int = 3
    ssm: SSMConfig = field(default_factory=SSMConfig)

    def stage_blocks(self, stage: str) -> int:
        idx = STAGES[stage][3]
        return self.refinement if idx < 0 else self.blocks[idx]

    def stage_channels(self, stage: str) -> int:
        return self.dim * STAGES[stage][0]

    def stage_heads(self, stage: str) -> int:
        return self.heads[STAGES[stage][2]]

    def slots(self) -> list[tuple[str, int]]:
        """Every block position, as (stage, index), in forward order."""
        return [(s, i) for s in STAGES for i in range(self.stage_blocks(s))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, UNetConfig] = {
    # Restormer as published: 26.1 M parameters, 44 blocks
    "restormer": UNetConfig(),
    # the CPU examples: 9 blocks at dim 16
    "small": UNetConfig(dim=16, blocks=(1, 1, 1, 2), refinement=1, heads=(1, 1, 2, 4)),
    # the tests: 8 blocks at dim 8
    "tiny": UNetConfig(dim=8, blocks=(1, 1, 1, 1), refinement=1, heads=(1, 1, 1, 2),
                       ssm=SSMConfig(d_state=4, headdim=8)),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    ssm = overrides.pop("ssm", None)
    if ssm:
        cfg = replace(cfg, ssm=replace(cfg.ssm, **ssm))
    return replace(cfg, **overrides) if overrides else cfg


def make_block(kind: str, channels: int, heads: int, cfg: UNetConfig, position: int = 0) -> nn.Module:
    """A block of ``kind``; ``position`` (its index among all blocks, in forward order)
    sets an SSM block's first scan direction when ``cfg.ssm.rotate``."""
    if kind == "transformer":
        return TransformerBlock(channels, heads, cfg.ffn_factor, cfg.bias, cfg.norm_bias)
    if kind == "ssm":
        s = cfg.ssm
        return SSMBlock(channels, s.d_state, s.expand, s.headdim, s.orders, s.ffn_factor,
                        cfg.bias, cfg.norm_bias, s.backend, s.chunk, s.mix,
                        position % 4 if s.rotate else 0)
    raise ValueError(f"unknown block kind {kind!r}; choose one of {', '.join(KINDS)}")


class PixelUnshuffle(nn.PixelUnshuffle):
    """``nn.PixelUnshuffle`` (``(B, C, H, W) -> (B, C r^2, H/r, W/r)``, channel ``c r^2 + r i + j``)
    written as ``r^2`` strided slices (``x[:, :, i::r, j::r]``, one ``Slice`` with steps each)
    joined along the channels: torch's own form is a rank-6 reshape/transpose pair, which
    NPU compilers (QNN's HTP among them) take only as a recognised pattern, and refuse once
    quantisation nodes sit between the two; a rank-4 pair of transposes that moves single
    elements was 2-5x slower than the slices in ONNX Runtime (0.30-0.50 ms against
    0.06-0.17 ms at the small preset's three shapes, and 1.2 + 0.6 ms each inside the
    network). The same permutation of the same values: exactly equal, in every dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.downscale_factor
        b, c, h, w = x.shape
        ho, wo = h // r, w // r
        parts = [x[:, :, i::r, j::r].reshape(b, c, 1, ho * wo) for i in range(r) for j in range(r)]
        return torch.cat(parts, 2).reshape(b, c * r * r, ho, wo)


class PixelShuffle(nn.PixelShuffle):
    """``nn.PixelShuffle``, the inverse of :class:`PixelUnshuffle`: torch's own op, which the
    ONNX exporters write as one ``DepthToSpace`` (mode ``CRD``, rank 4; QNN's HTP takes it),
    in ONNX Runtime 1.6-3x faster than a rank-4 pair of transposes (0.07-0.25 ms against
    0.28-0.40 ms at the small preset's shapes)."""


class Downsample(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False),
                         PixelUnshuffle(2))


class Upsample(nn.Sequential):
    def __init__(self, channels: int):
        super().__init__(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False),
                         PixelShuffle(2))


class HybridRestormer(nn.Module):
    """The U-Net; ``kinds[stage][i]`` is the kind of block ``i`` of ``stage``."""

    def __init__(self, cfg: UNetConfig, kinds: dict[str, Sequence[str]]):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.kinds = {s: tuple(kinds[s]) for s in STAGES}
        for s in STAGES:
            if len(self.kinds[s]) != cfg.stage_blocks(s):
                raise ValueError(f"stage {s} has {cfg.stage_blocks(s)} blocks, "
                                 f"got {len(self.kinds[s])} kinds")
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, 3, padding=1, bias=cfg.bias)
        position = 0
        for s, attr in STAGE_MODULES.items():
            blocks = []
            for k in self.kinds[s]:
                blocks.append(make_block(k, cfg.stage_channels(s), cfg.stage_heads(s), cfg, position))
                position += 1
            setattr(self, attr, nn.Sequential(*blocks))
        self.down1_2 = Downsample(d)
        self.down2_3 = Downsample(d * 2)
        self.down3_4 = Downsample(d * 4)
        self.up4_3 = Upsample(d * 8)
        self.reduce_chan_level3 = nn.Conv2d(d * 8, d * 4, 1, bias=cfg.bias)
        self.up3_2 = Upsample(d * 4)
        self.reduce_chan_level2 = nn.Conv2d(d * 4, d * 2, 1, bias=cfg.bias)
        self.up2_1 = Upsample(d * 2)
        self.output = nn.Conv2d(d * 2, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        x = F.pad(inp, (0, pw, 0, ph), mode="reflect") if ph or pw else inp
        e1 = self.encoder_level1(self.patch_embed(x))
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        lat = self.latent(self.down3_4(e3))
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1)))
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1)))
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1))
        out = self.output(self.refinement(d1))
        if self.cfg.in_channels == self.cfg.out_channels:
            out = out + x
        return out[..., :h, :w] if ph or pw else out

    def block(self, stage: str, index: int) -> nn.Module:
        return getattr(self, STAGE_MODULES[stage])[index]

    @staticmethod
    def block_name(stage: str, index: int) -> str:
        """The block's module name in ``named_modules()`` / state-dict key prefix."""
        return f"{STAGE_MODULES[stage]}.{index}"
