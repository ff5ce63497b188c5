"""A Stable-Diffusion U-Net assembled pair by pair from diffusers blocks.

diffusers' ``UNet2DConditionModel`` fixes its skip structure by its config
(``layers_per_block`` resnets per down stage, one more per up stage), so it
cannot hold BK-SDM's "keep the first of two" or "drop the middle of three".
:class:`SDUNet` builds the same network from the same diffusers blocks
(``ResnetBlock2D``, ``Transformer2DModel``, ``Downsample2D``, ``Upsample2D``,
``UNetMidBlock2DCrossAttn``, ``Timesteps``, ``TimestepEmbedding``), but with
every (resnet, attention) pair optional, the attention of each pair optional,
the mid block and the innermost stage optional, and each resolution level at
its own width. With every block kept at full width it computes exactly what
``UNet2DConditionModel`` computes with the same weights
(:func:`from_diffusers_keys` maps the state-dict names).

Module names: ``down.{i}.pairs.{j}.resnet`` / ``.attention``,
``down.{i}.sampler``, ``mid``, ``up.{i}.pairs.{j}.resnet`` / ``.attention``,
``up.{i}.sampler``; ``i`` and ``j`` are the teacher's block indices (as in
diffusers' ``down_blocks.{i}.resnets.{j}``), so a kept block keeps its name.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

PAIR_FULL, PAIR_RESNET, PAIR_REMOVED = "full", "resnet", "removed"
PAIR_SURROGATE = "surrogate"


@dataclass(frozen=True)
class UNetConfig:
    """The teacher U-Net (the fields of diffusers' ``UNet2DConditionModel`` config
    that matter for SD 1.x; ``attention[i]``: down stage ``i`` has cross-attention,
    the up stages mirror it)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention: tuple[bool, ...] = (True, True, True, False)
    heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    sample_size: int = 64
    context_length: int = 77
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def temb_channels(self) -> int:
        return self.block_out_channels[0] * 4

    def up_level(self, i: int) -> int:
        """The resolution level of up stage ``i`` (up stage 0 is the innermost)."""
        return self.levels - 1 - i

    def down_pairs(self) -> int:
        return self.layers_per_block

    def up_pairs(self) -> int:
        return self.layers_per_block + 1

    def shortcut_in(self, level: int) -> bool:
        """Whether down stage ``level``'s first resnet changes the width (has a 1x1 shortcut)."""
        prev = self.block_out_channels[level - 1] if level > 0 else self.block_out_channels[0]
        return prev != self.block_out_channels[level]

    def stream_groups(self) -> list[list[int]]:
        """Levels joined by an identity residual (a first resnet without shortcut),
        which must share one width."""
        groups: list[list[int]] = []
        for level in range(self.levels):
            if level > 0 and not self.shortcut_in(level):
                groups[-1].append(level)
            else:
                groups.append([level])
        return groups

    def to_diffusers(self) -> dict[str, Any]:
        """The equivalent ``UNet2DConditionModel`` config."""
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention))
        return dict(sample_size=self.sample_size, in_channels=self.in_channels,
                    out_channels=self.out_channels, down_block_types=down, up_block_types=up,
                    block_out_channels=tuple(self.block_out_channels),
                    layers_per_block=self.layers_per_block,
                    cross_attention_dim=self.cross_attention_dim, attention_head_dim=self.heads,
                    norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
                    flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
                    downsample_padding=self.downsample_padding)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Read a diffusers ``unet/config.json``; ValueError naming what is unsupported."""
        down = list(config.get("down_block_types", ()))
        up = list(config.get("up_block_types", ()))
        known = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}
        bad = [b for b in down if b not in known]
        if bad:
            raise ValueError(f"down_block_types {bad} are not supported (only "
                             "CrossAttnDownBlock2D and DownBlock2D, as in SD 1.x)")
        attention = tuple(known[b] for b in down)
        want_up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)]
        if up != want_up:
            raise ValueError(f"up_block_types {up} must mirror the down blocks: {want_up}")
        lpb = config.get("layers_per_block", 2)
        if not isinstance(lpb, int):
            raise ValueError(f"layers_per_block {lpb!r}: only one count for all stages is supported")
        if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in (
                "UNetMidBlock2DCrossAttn", None):
            raise ValueError(f"mid_block_type {config.get('mid_block_type')!r} is not supported")
        for key, want in (("use_linear_projection", False), ("class_embed_type", None),
                          ("addition_embed_type", None), ("time_embedding_type", "positional"),
                          ("resnet_time_scale_shift", "default"), ("act_fn", "silu")):
            if config.get(key, want) != want:
                raise ValueError(f"{key} = {config.get(key)!r} is not supported (SD 1.x uses {want!r})")
        heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
        if not isinstance(heads, int):
            raise ValueError(f"attention heads {heads!r}: only one head count for all stages is supported")
        return cls(in_channels=config.get("in_channels", 4),
                   out_channels=config.get("out_channels", 4),
                   block_out_channels=tuple(config.get("block_out_channels", (320, 640, 1280, 1280))),
                   layers_per_block=lpb, attention=attention, heads=heads,
                   cross_attention_dim=config.get("cross_attention_dim", 768),
                   norm_num_groups=config.get("norm_num_groups", 32),
                   norm_eps=config.get("norm_eps", 1e-5),
                   sample_size=config.get("sample_size", 64),
                   flip_sin_to_cos=config.get("flip_sin_to_cos", True),
                   freq_shift=config.get("freq_shift", 0),
                   downsample_padding=config.get("downsample_padding", 1))


PRESETS: dict[str, UNetConfig] = {
    # SD 1.5 (docs/sd.md): 859,520,964 parameters
    "sd15": UNetConfig(),
    # the same design on a 16-channel latent (TOC-SR's starting point)
    "latent16": UNetConfig(in_channels=16, out_channels=16),
    # the same structure at small widths: CPU tests and examples
    "tiny": UNetConfig(block_out_channels=(32, 64, 128, 128), heads=2, cross_attention_dim=32,
                       norm_num_groups=8, sample_size=16, context_length=8),
}
# `tiny` on a 16-channel latent: the CPU stand-in for `latent16` (see .expand)
PRESETS["tiny16"] = replace(PRESETS["tiny"], in_channels=16, out_channels=16)


# ------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class UNetPlan:
    """What a candidate keeps: ``down[i][j]`` / ``up[i][j]`` is ``full``, ``resnet``
    (attention dropped) or ``removed``; ``widths[level]`` the channels of each level."""

    config: UNetConfig
    down: tuple[tuple[str, ...], ...]
    up: tuple[tuple[str, ...], ...]
    mid: bool = True
    innermost: bool = True
    widths: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.widths:
            object.__setattr__(self, "widths", tuple(self.config.block_out_channels))

    @classmethod
    def teacher(cls, config: UNetConfig) -> UNetPlan:
        down = tuple(tuple(PAIR_FULL for _ in range(config.down_pairs())) for _ in range(config.levels))
        up = tuple(tuple(PAIR_FULL for _ in range(config.up_pairs())) for _ in range(config.levels))
        return cls(config, down, up)

    @property
    def levels(self) -> int:
        return self.config.levels if self.innermost else self.config.levels - 1

    def down_stages(self) -> list[int]:
        return list(range(self.levels))

    def up_stages(self) -> list[int]:
        """Up stages kept, in order (teacher indices: the first is dropped with the innermost level)."""
        first = 0 if self.innermost else 1
        return list(range(first, self.config.levels))

    def stages(self, where: str) -> list[tuple[int, int]]:
        """``(stage index, level)`` of the kept ``down`` or ``up`` stages, in data order."""
        if where == "down":
            return [(i, i) for i in self.down_stages()]
        return [(i, self.config.up_level(i)) for i in self.up_stages()]

    def kept(self, where: str, i: int) -> list[tuple[int, bool]]:
        """``(pair index, has attention)`` of the kept pairs of ``where`` stage ``i``."""
        kinds = (self.down if where == "down" else self.up)[i]
        return [(j, self.has_attention(where, i, j)) for j, k in enumerate(kinds) if k != PAIR_REMOVED]

    def has_attention(self, where: str, i: int, j: int) -> bool:
        level = i if where == "down" else self.config.up_level(i)
        kind = (self.down if where == "down" else self.up)[i][j]
        return self.config.attention[level] and kind == PAIR_FULL

    def is_full(self) -> bool:
        return self == UNetPlan.teacher(self.config)

    def with_widths(self, widths: Sequence[int]) -> UNetPlan:
        return replace(self, widths=tuple(widths))

    def check(self) -> str | None:
        """Why this plan cannot build a consistent network, or None.

        Simulates the data flow with each tensor tagged by its level's stream
        group and compares with what every kept teacher block was built for."""
        cfg = self.config
        group = {lvl: gi for gi, g in enumerate(cfg.stream_groups()) for lvl in g}
        stack: list[int] = [group[0]]             # conv_in's output
        cur = group[0]
        for i in self.down_stages():
            for j, kind in enumerate(self.down[i]):
                if kind == PAIR_REMOVED:
                    continue
                want = group[i - 1] if (j == 0 and i > 0) else group[i]
                if cur != want:
                    return (f"down{i}_{j} takes level-{_lvl(want, cfg)} features but would "
                            f"receive level-{_lvl(cur, cfg)} ones: the first pair of a down "
                            f"stage that changes the width (down{i}_0) must stay")
                cur = group[i]
                stack.append(cur)
            if cur != group[i]:
                return (f"down stage {i} keeps no pair that brings its input to level {i}'s "
                        f"width; keep down{i}_0")
            if i < self.levels - 1:
                stack.append(cur)                  # the downsampler keeps the level's width
        for i in self.up_stages():
            level = cfg.up_level(i)
            kept = [j for j, k in enumerate(self.up[i]) if k != PAIR_REMOVED]
            down_kept = sum(k != PAIR_REMOVED for k in self.down[level])
            if len(kept) != down_kept + 1:
                return (f"up stage {i} keeps {len(kept)} pair(s) and its down stage {level} "
                        f"keeps {down_kept}: every up pair consumes one skip, so up stage {i} "
                        f"must keep exactly {down_kept + 1}")
            for j in kept:
                want_prev = group[level + 1] if (j == 0 and level + 1 < cfg.levels) else group[level]
                want_skip = group[level] if j < cfg.up_pairs() - 1 else group[max(level - 1, 0)]
                skip = stack.pop()
                if cur != want_prev or skip != want_skip:
                    return (f"up{i}_{j} was built for level-{_lvl(want_prev, cfg)} features "
                            f"and a level-{_lvl(want_skip, cfg)} skip but would receive "
                            f"level-{_lvl(cur, cfg)} features and a level-{_lvl(skip, cfg)} "
                            f"skip (keep up{i}_0 and the last pair of each up stage, which "
                            f"change the width or read the skip of the level above)")
                cur = group[level]
        if stack:
            return f"{len(stack)} skip connection(s) left unused"
        return None


def _lvl(group_index: int, cfg: UNetConfig) -> int:
    return cfg.stream_groups()[group_index][0]


# ------------------------------------------------------------------------- modules
class SurrogateBlock(nn.Module):
    """A parameter-efficient stand-in for a (resnet, attention) pair: a
    depthwise-separable residual block with the time embedding (MobileNet-style
    inverted residual without expansion, as efficient diffusion U-Nets use).

    ``GroupNorm -> SiLU -> depthwise 3x3 -> pointwise c_in->c_out (+ time shift)
    -> GroupNorm -> SiLU -> pointwise c_out->c_out`` (zero-initialised, so the
    block starts as its shortcut), plus the shortcut: identity, or a 1x1 conv
    when the widths differ. No attention: cost linear in the pixels. Its weights
    are not inherited (the teacher has none); they are initialised from a seed
    fixed by the pair and its widths, then trained by feature-wise distillation
    to reproduce the teacher pair (:mod:`.align`)."""

    def __init__(self, c_in: int, c_out: int, temb_channels: int, groups: int, eps: float, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
            self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
            self.pointwise1 = nn.Conv2d(c_in, c_out, 1)
            self.time_proj = nn.Linear(temb_channels, c_out)
            self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
            self.pointwise2 = nn.Conv2d(c_out, c_out, 1)
            self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        nn.init.zeros_(self.pointwise2.weight)
        nn.init.zeros_(self.pointwise2.bias)
        self.act = nn.SiLU()

    def forward(self, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.pointwise1(self.depthwise(self.act(self.norm1(hidden))))
        h = h + self.time_proj(self.act(temb))[:, :, None, None]
        h = self.pointwise2(self.act(self.norm2(h)))
        return h + (hidden if self.shortcut is None else self.shortcut(hidden))


def surrogate_seed(name: str, c_in: int, c_out: int) -> int:
    """The initialisation seed of the surrogate of pair ``name`` (fixed: its cache key stays valid)."""
    import zlib

    return zlib.crc32(f"{name}:{c_in}:{c_out}".encode())


class Pair(nn.Module):
    """One resnet and, optionally, its cross-attention transformer; or a surrogate block."""

    def __init__(self, resnet: nn.Module | None, attention: nn.Module | None,
                 surrogate: nn.Module | None = None):
        super().__init__()
        self.resnet = resnet
        self.attention = attention
        self.surrogate = surrogate

    def forward(self, hidden: torch.Tensor, temb: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.surrogate is not None:
            return self.surrogate(hidden, temb)
        hidden = self.resnet(hidden, temb)
        if self.attention is not None:
            hidden = self.attention(hidden, encoder_hidden_states=encoder_hidden_states,
                                    return_dict=False)[0]
        return hidden


class Stage(nn.Module):
    def __init__(self, pairs: dict[str, Pair], sampler: nn.Module | None):
        super().__init__()
        self.pairs = nn.ModuleDict(pairs)
        self.sampler = sampler


def _resnet(cfg: UNetConfig, c_in: int, c_out: int, shortcut: bool) -> nn.Module:
    from diffusers.models.resnet import ResnetBlock2D

    return ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=cfg.temb_channels,
                         eps=cfg.norm_eps, groups=cfg.norm_num_groups, use_in_shortcut=shortcut)


def _surrogate(cfg: UNetConfig, name: str, c_in: int, c_out: int) -> Pair:
    return Pair(None, None, SurrogateBlock(c_in, c_out, cfg.temb_channels, cfg.norm_num_groups,
                                           cfg.norm_eps, surrogate_seed(name, c_in, c_out)))


def _attention(cfg: UNetConfig, channels: int) -> nn.Module:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return Transformer2DModel(cfg.heads, channels // cfg.heads, in_channels=channels,
                              cross_attention_dim=cfg.cross_attention_dim,
                              norm_num_groups=cfg.norm_num_groups, use_linear_projection=False)


class SDUNet(nn.Module):
    """The U-Net of a :class:`UNetPlan`. ``forward(sample, timestep, encoder_hidden_states)``
    returns the predicted noise; with ``return_features=True`` also the output of
    every stage (``down{i}``, ``mid``, ``up{i}``, before the samplers)."""

    def __init__(self, plan: UNetPlan):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import Downsample2D, Upsample2D
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn

        reason = plan.check()
        if reason:
            raise ValueError(reason)
        cfg, w = plan.config, plan.widths
        self.plan = plan
        c0 = cfg.block_out_channels[0]
        self.time_proj = Timesteps(c0, cfg.flip_sin_to_cos, cfg.freq_shift)
        self.time_embedding = TimestepEmbedding(c0, cfg.temb_channels, act_fn="silu")
        self.conv_in = nn.Conv2d(cfg.in_channels, w[0], kernel_size=3, padding=1)
        self.down = nn.ModuleDict()
        for i in plan.down_stages():
            pairs = {}
            for j, kind in enumerate(plan.down[i]):
                if kind == PAIR_REMOVED:
                    continue
                c_in = w[i - 1] if (j == 0 and i > 0) else w[i]
                if kind == PAIR_SURROGATE:
                    pairs[str(j)] = _surrogate(cfg, f"down{i}_{j}", c_in, w[i])
                    continue
                shortcut = j == 0 and cfg.shortcut_in(i)
                attn = _attention(cfg, w[i]) if plan.has_attention("down", i, j) else None
                pairs[str(j)] = Pair(_resnet(cfg, c_in, w[i], shortcut), attn)
            sampler = None
            if i < plan.levels - 1:
                sampler = Downsample2D(w[i], use_conv=True, out_channels=w[i],
                                       padding=cfg.downsample_padding, name="op")
            self.down[str(i)] = Stage(pairs, sampler)
        inner = w[plan.levels - 1]
        self.mid = None
        if plan.mid:
            self.mid = UNetMidBlock2DCrossAttn(
                in_channels=inner, temb_channels=cfg.temb_channels, resnet_eps=cfg.norm_eps,
                resnet_act_fn="silu", cross_attention_dim=cfg.cross_attention_dim,
                num_attention_heads=cfg.heads, resnet_groups=cfg.norm_num_groups,
                use_linear_projection=False)
        self.up = nn.ModuleDict()
        ups = plan.up_stages()
        for i in ups:
            level = cfg.up_level(i)
            pairs = {}
            for j, kind in enumerate(plan.up[i]):
                if kind == PAIR_REMOVED:
                    continue
                prev = w[level + 1] if (j == 0 and level + 1 < cfg.levels) else w[level]
                skip = w[level] if j < cfg.up_pairs() - 1 else w[max(level - 1, 0)]
                if kind == PAIR_SURROGATE:
                    pairs[str(j)] = _surrogate(cfg, f"up{i}_{j}", prev + skip, w[level])
                    continue
                attn = _attention(cfg, w[level]) if plan.has_attention("up", i, j) else None
                pairs[str(j)] = Pair(_resnet(cfg, prev + skip, w[level], True), attn)
            sampler = Upsample2D(w[level], use_conv=True, out_channels=w[level]) if level > 0 else None
            self.up[str(i)] = Stage(pairs, sampler)
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, w[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(w[0], cfg.out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, return_features: bool = False):
        features: dict[str, torch.Tensor] = {}
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.long, device=sample.device)
        elif t.ndim == 0:
            t = t[None].to(sample.device)
        t = t.expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(dtype=sample.dtype))
        h = self.conv_in(sample)
        skips = [h]
        for name, stage in self.down.items():
            for pair in stage.pairs.values():
                h = pair(h, temb, encoder_hidden_states)
                skips.append(h)
            features[f"down{name}"] = h
            if stage.sampler is not None:
                h = stage.sampler(h)
                skips.append(h)
        if self.mid is not None:
            h = self.mid(h, temb, encoder_hidden_states=encoder_hidden_states)
            features["mid"] = h
        for name, stage in self.up.items():
            for pair in stage.pairs.values():
                h = pair(torch.cat([h, skips.pop()], dim=1), temb, encoder_hidden_states)
            features[f"up{name}"] = h
            if stage.sampler is not None:
                h = stage.sampler(h, output_size=skips[-1].shape[-2:] if skips else None)
        out = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        return (out, features) if return_features else out


# ------------------------------------------------------------------------- names
_TO_DIFFUSERS = [
    (re.compile(r"^(down|up)\.(\d+)\.pairs\.(\d+)\.resnet\."), r"\1_blocks.\2.resnets.\3."),
    (re.compile(r"^(down|up)\.(\d+)\.pairs\.(\d+)\.attention\."), r"\1_blocks.\2.attentions.\3."),
    (re.compile(r"^down\.(\d+)\.sampler\."), r"down_blocks.\1.downsamplers.0."),
    (re.compile(r"^up\.(\d+)\.sampler\."), r"up_blocks.\1.upsamplers.0."),
    (re.compile(r"^mid\."), r"mid_block."),
]
_FROM_DIFFUSERS = [
    (re.compile(r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\."), r"\1.\2.pairs.\3.resnet."),
    (re.compile(r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\."), r"\1.\2.pairs.\3.attention."),
    (re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\."), r"down.\1.sampler."),
    (re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\."), r"up.\1.sampler."),
    (re.compile(r"^mid_block\."), r"mid."),
]


def _rename(name: str, rules) -> str:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return name


def to_diffusers_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An :class:`SDUNet` state dict under ``UNet2DConditionModel``'s names."""
    return {_rename(k, _TO_DIFFUSERS): v for k, v in state.items()}


def from_diffusers_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` state dict under :class:`SDUNet`'s names."""
    return {_rename(k, _FROM_DIFFUSERS): v for k, v in state.items()}


def round_width(channels: int, multiplier: float, quantum: int) -> int:
    """``channels * multiplier`` to the nearest multiple of ``quantum`` (at least one)."""
    return max(quantum, int(round(channels * multiplier / quantum)) * quantum)


def width_quantum(cfg: UNetConfig) -> int:
    """Widths must divide into the GroupNorm groups and the attention heads."""
    return math.lcm(cfg.norm_num_groups, cfg.heads)




class OneStepPipeline(nn.Module):
    """One U-Net step, then the VAE decoder: ``x0 = sample - eps`` (a one-step
    estimate at full noise scale 1), decoded at ``1 / scaling_factor``. Its
    params, GMACs and latency are those of a one-step generator (TOC-SR's final
    model) on this backbone and VAE."""

    def __init__(self, unet: nn.Module, decoder: nn.Module, scaling_factor: float):
        super().__init__()
        self.unet, self.decoder, self.scaling_factor = unet, decoder, scaling_factor

    def forward(self, sample, timestep, encoder_hidden_states):
        eps = self.unet(sample, timestep, encoder_hidden_states)
        return self.decoder((sample - eps) / self.scaling_factor)
