"""``conv_denoiser``: compact convolutional image denoisers with a global residual.

A model maps ``(B, C, H, W) -> (B, C, H, W)`` as ``x + tail(body(head(x)))``:

* ``head``: 3x3 conv, ``C -> width``;
* ``body``: ``depth`` blocks, block ``i`` a ``kernel_i x kernel_i`` conv (``width -> width``)
  then ReLU, plus the block's input when ``residual_blocks`` is set;
* ``tail``: 3x3 conv, ``width -> C``.

Every conv pads by ``kernel // 2`` (kernels are odd), so ``H`` and ``W`` never change.

Canonical form. There is one ``kernel_i`` decision per possible block
(``i < max(depths)``), but only the first ``depth`` are used. So that one model
has exactly one architecture (one id, one cache entry, one trial), an unused
kernel must hold the canonical value ``kernels[0]``; :meth:`ConvDenoiserSpace.check`
rejects anything else and says why. :meth:`ConvDenoiserSpace.canonicalize` folds
an arbitrary combination (say, a decoded vector) onto its canonical form, and
:meth:`ConvDenoiserSpace.sample` draws the active decisions only, so depths are
drawn uniformly rather than biased by rejection towards the deepest.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import numpy as np
from pydantic import AfterValidator

from nasframe.architecture import Architecture
from nasframe.capabilities import BlockLatencyParts, ImageToImage, LatencyPart
from nasframe.params import Field, Int, Params
from nasframe.space import Boolean, Categorical, Decision, SearchSpace

if TYPE_CHECKING:
    import networkx as nx
    import torch

HEAD_TAIL_KERNEL = 3  # the head and tail conv size


def _distinct(values: tuple[int, ...]) -> tuple[int, ...]:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"repeats {dupes}; list each value once")
    return values


def _odd(values: tuple[int, ...]) -> tuple[int, ...]:
    even = [v for v in values if v % 2 == 0]
    if even:
        raise ValueError(f"holds the even kernel size {even[0]}; use odd sizes (e.g. "
                         f"{even[0] - 1} or {even[0] + 1}) so that padding keeps the image size")
    return values


def _nonempty(values: tuple[int, ...]) -> tuple[int, ...]:
    if not values:
        raise ValueError("is empty; give at least one value")
    return values


def _choices(low: int, high: int, *checks):
    """A non-empty list of distinct ints in [low, high]."""
    return Annotated[tuple[Annotated[Int, Field(ge=low, le=high)], ...],
                     *(AfterValidator(c) for c in (_nonempty, _distinct, *checks))]


class ConvDenoiserSpace(SearchSpace, ImageToImage, BlockLatencyParts):
    """Compact conv denoisers: depth, width, a kernel per block, optional block residuals.

    Params: see :class:`ConvDenoiserSpace.Params` (``nasframe plugins
    conv_denoiser``); the default example input is ``(image_channels,
    input_size, input_size)``, no batch dimension.

    Decisions, in encoding order: ``depth``, ``width``, ``residual_blocks``,
    ``kernel_0`` ... ``kernel_{max(depths) - 1}``.
    """

    name = "conv_denoiser"
    input_shape = (3, 64, 64)
    small_params = {"input_size": 16}

    class Params(Params):
        depths: _choices(1, 256) = (2, 3, 4)
        """Numbers of body blocks to choose from (at most 256)."""
        widths: _choices(1, 4096) = (8, 16, 24)
        """Body channels to choose from."""
        kernels: _choices(1, 31, _odd) = (3, 5)
        """Odd kernel sizes; the first is the value of unused kernel decisions."""
        image_channels: Int = Field(3, ge=1, le=64)
        """Channels of the images."""
        input_size: Int = Field(64, ge=1, le=8192)
        """Side of the default example input."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        p = self.params
        self.depths, self.widths, self.kernels = p.depths, p.widths, p.kernels
        self.image_channels, self.input_size = p.image_channels, p.input_size
        self.input_shape = (self.image_channels, self.input_size, self.input_size)
        self.max_depth = max(self.depths)
        self._decisions: tuple[Decision, ...] = (
            Categorical("depth", self.depths),
            Categorical("width", self.widths),
            Boolean("residual_blocks"),
            *(Categorical(f"kernel_{i}", self.kernels) for i in range(self.max_depth)),
        )

    def __repr__(self) -> str:
        return (f"ConvDenoiserSpace(depths={self.depths}, widths={self.widths}, "
                f"kernels={self.kernels}, image_channels={self.image_channels}, "
                f"input_size={self.input_size})")

    # -- decisions and validity ---------------------------------------------
    def decisions(self) -> Sequence[Decision]:
        return self._decisions

    def check(self, arch: Architecture) -> str | None:
        depth, canonical = arch["depth"], self.kernels[0]
        for i in range(depth, self.max_depth):
            if arch[f"kernel_{i}"] != canonical:
                return (f"decision 'kernel_{i}' = {arch[f'kernel_{i}']!r} is unused at depth "
                        f"{depth} and must hold the canonical value {canonical} (kernels[0]), "
                        "so that each model has exactly one architecture")
        return None

    def canonicalize(self, arch: Architecture) -> Architecture:
        """``arch`` with its unused kernel decisions set to ``kernels[0]``."""
        depth = arch["depth"]
        return arch.replace(**{f"kernel_{i}": self.kernels[0]
                               for i in range(depth, self.max_depth)})

    def sample(self, rng: np.random.Generator, max_tries: int = 1000) -> Architecture:
        """A valid architecture: depth, width, residual and each used kernel drawn uniformly."""
        dm = self.decision_map()
        values = {name: dm[name].sample(rng) for name in ("depth", "width", "residual_blocks")}
        for i in range(self.max_depth):
            used = i < values["depth"]
            values[f"kernel_{i}"] = dm[f"kernel_{i}"].sample(rng) if used else self.kernels[0]
        return Architecture(values)

    def block_kernels(self, arch: Architecture) -> tuple[int, ...]:
        """The kernel size of each body block (length ``arch['depth']``)."""
        return tuple(arch[f"kernel_{i}"] for i in range(arch["depth"]))

    def reference_architectures(self) -> dict[str, Architecture]:
        """``smallest`` (fewest blocks, channels and taps) and ``largest`` (the most of each)."""
        def make(depth: int, width: int, kernel: int, residual: bool) -> Architecture:
            return self.canonicalize(Architecture(
                {"depth": depth, "width": width, "residual_blocks": residual,
                 **{f"kernel_{i}": kernel for i in range(self.max_depth)}}))

        return {
            "smallest": make(min(self.depths), min(self.widths), min(self.kernels), False),
            "largest": make(self.max_depth, max(self.widths), max(self.kernels), True),
        }

    # -- models -------------------------------------------------------------
    def build(self, arch: Architecture) -> torch.nn.Module:
        from nasframe_search_spaces.conv_blocks import ConvDenoiser

        return ConvDenoiser(self.image_channels, arch["width"], self.block_kernels(arch),
                        arch["residual_blocks"], edge_kernel=HEAD_TAIL_KERNEL)

    # -- latency lookup table: head, each body block, tail ----------------------
    def _latency_part(self, what: str, width: int, kernel: int, residual: bool,
                      input_shape) -> LatencyPart:
        from functools import partial

        b, _, h, w = input_shape
        c = self.image_channels
        shape = (b, c if what == "head" else width, h, w)
        key = f"{what}:w{width}" + (f":k{kernel}:r{int(residual)}" if what == "block" else "") \
            + f":{'x'.join(map(str, shape))}"
        return LatencyPart(key, partial(_conv_part, what, c, width, kernel, residual), (shape,))

    def latency_variants(self, input_shape):
        out = []
        for width in self.widths:
            out.append(self._latency_part("head", width, HEAD_TAIL_KERNEL, False, input_shape))
            out += [self._latency_part("block", width, k, r, input_shape)
                    for k in self.kernels for r in (False, True)]
            out.append(self._latency_part("tail", width, HEAD_TAIL_KERNEL, False, input_shape))
        return out

    def latency_parts(self, arch, input_shape):
        width, r = arch["width"], bool(arch["residual_blocks"])
        return [self._latency_part("head", width, HEAD_TAIL_KERNEL, False, input_shape),
                *(self._latency_part("block", width, k, r, input_shape)
                  for k in self.block_kernels(arch)),
                self._latency_part("tail", width, HEAD_TAIL_KERNEL, False, input_shape)]

    def graph(self, arch: Architecture) -> nx.DiGraph:
        """A chain ``head -> block_0 -> ... -> tail``; each node a conv.

        Node attributes: ``kind`` (``"conv"``), ``in_channels``, ``channels`` (out),
        ``resolution`` (``input_size``; no stage changes it), ``kernel`` and
        ``residual`` (a skip around the node). ``graph.graph["global_residual"]`` is True.
        """
        import networkx as nx

        width, res = arch["width"], self.input_size
        nodes = [("head", self.image_channels, width, HEAD_TAIL_KERNEL, False)]
        nodes += [(f"block_{i}", width, width, k, bool(arch["residual_blocks"]))
                  for i, k in enumerate(self.block_kernels(arch))]
        nodes.append(("tail", width, self.image_channels, HEAD_TAIL_KERNEL, False))

        g = nx.DiGraph(global_residual=True)
        for name, c_in, c_out, kernel, residual in nodes:
            g.add_node(name, kind="conv", in_channels=c_in, channels=c_out, resolution=res,
                       kernel=kernel, residual=residual)
        nx.add_path(g, [n[0] for n in nodes])
        return g


def _conv_part(what: str, channels: int, width: int, kernel: int, residual: bool):
    """One layer of a conv denoiser, alone (a latency lookup table entry)."""
    from torch import nn

    from nasframe_search_spaces.conv_blocks import ConvBlock

    if what == "head":
        return nn.Conv2d(channels, width, HEAD_TAIL_KERNEL, padding=HEAD_TAIL_KERNEL // 2)
    if what == "tail":
        return nn.Conv2d(width, channels, HEAD_TAIL_KERNEL, padding=HEAD_TAIL_KERNEL // 2)
    return ConvBlock(width, kernel, residual)
