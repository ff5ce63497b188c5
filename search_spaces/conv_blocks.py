"""Torch modules of the ``conv_denoiser`` space (imported on first build, not at plugin load)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBlock(nn.Module):
    """``(B, W, H, W') -> (B, W, H, W')``: a ``kernel`` conv then ``act``, plus the input if ``residual``."""

    def __init__(self, channels: int, kernel: int, residual: bool,
                 conv: type[nn.Module] = nn.Conv2d, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = conv(channels, channels, kernel, padding=kernel // 2)
        self.act = act()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class ConvDenoiser(nn.Module):
    """``(B, C, H, W) -> (B, C, H, W)``: ``x + tail(body(head(x)))``.

    ``head`` is an ``edge_kernel`` conv ``C -> width``, ``body`` one
    ``block(width, k, residual_blocks)`` per entry ``k`` of ``kernels`` (so
    ``len(kernels)`` is the depth), ``tail`` an ``edge_kernel`` conv ``width -> C``.
    Odd kernels with ``k // 2`` padding keep ``H`` and ``W``.
    """

    def __init__(self, image_channels: int, width: int, kernels: Sequence[int],
                 residual_blocks: bool, edge_kernel: int = 3,
                 block: type[nn.Module] = ConvBlock, conv: type[nn.Module] = nn.Conv2d):
        super().__init__()
        pad = edge_kernel // 2
        self.head = conv(image_channels, width, edge_kernel, padding=pad)
        self.body = nn.Sequential(*(block(width, k, residual_blocks, conv=conv) for k in kernels))
        self.tail = conv(width, image_channels, edge_kernel, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.tail(self.body(self.head(x)))
