"""The two kinds of block a slot can hold, with equal input and output shapes.

* :class:`TransformerBlock`: Restormer's block, ``x + MDTA(LN(x))`` then
  ``x + GDFN(LN(x))`` (multi-Dconv head transposed attention, gated-Dconv FFN).
* :class:`SSMBlock`: a MambaIR-style 2-D selective-scan block,
  ``x + SS2D(LN(x))`` then ``x + FFN(LN(x))``. SS2D: in-projection to a scan
  branch and a gate, depthwise 3x3 conv and SiLU on the scan branch, a selective
  scan over the flattened map in several orders (row-major, column-major, and
  both reversed; by default each order scans its own share of the channels,
  or, as in MambaIR, every channel with the outputs summed), normalisation, gate
  ``* SiLU(z)``, out-projection. The scan has a scalar decay per head (Mamba-2's
  parameterisation), which lets the CPU run it as chunked matrix products (see
  :mod:`.scan`). The feed-forward part is a lighter gated-Dconv FFN (expansion
  ``ffn_factor``, 1.0 by default, against the transformer block's 2.66).

All blocks take and return ``(B, C, H, W)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nasframe_search_spaces.hybrid_unet.scan import (DEFAULT_CHUNK, cross_scan_numba, exporting,
                                                    resolve_backend,
                                                    scan_heads_sequence_export, selective_scan,
                                                    softplus_export)

SCAN_ORDERS = (1, 2, 4)
MIXES = ("split", "sum")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu`` (the exact, erf form); while exporting, written as ONNX Runtime's Gelu
    fusion expects it (``Div -> Erf -> Add -> Mul -> Mul``: one ``Gelu`` node at run time
    instead of five element-wise passes; ``F.gelu`` exports in an order it does not match).
    Both blocks use it, so neither gets the fused op alone."""
    if exporting():
        return (x * (torch.erf(x / math.sqrt(2.0)) + 1.0)) * 0.5
    return F.gelu(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel; ``bias=False`` is Restormer's BiasFree variant
    (scale only, the mean is still subtracted for the variance but not removed)."""

    def __init__(self, channels: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, 1e-5)
            return y.permute(0, 3, 1, 2)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(var + 1e-5) * self.weight[:, None, None]


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: attention across channels, linear in H*W."""

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"channels {dim} are not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = F.normalize(q.reshape(b, self.heads, c // self.heads, hh * ww), dim=-1)
        k = F.normalize(k.reshape(b, self.heads, c // self.heads, hh * ww), dim=-1)
        v = v.reshape(b, self.heads, c // self.heads, hh * ww)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, hh, ww))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: ``GELU(a) * b`` after a depthwise 3x3 conv."""

    def __init__(self, dim: int, factor: float = 2.66, bias: bool = False):
        super().__init__()
        hidden = int(dim * factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, g = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(gelu(a) * g)


class TransformerBlock(nn.Module):
    """Restormer's block: ``x + MDTA(LN(x))``, then ``x + GDFN(LN(x))``."""

    kind = "transformer"

    def __init__(self, dim: int, heads: int, ffn_factor: float = 2.66, bias: bool = False,
                 norm_bias: bool = True):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, norm_bias)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = LayerNorm2d(dim, norm_bias)
        self.ffn = GDFN(dim, ffn_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class GatedFFN(nn.Module):
    """GDFN on channels-last maps ``(B, H, W, C)``: linear layers instead of 1x1 convs."""

    def __init__(self, dim: int, factor: float = 1.0, bias: bool = False):
        super().__init__()
        hidden = max(int(dim * factor), 1)
        self.project_in = nn.Linear(dim, hidden * 2, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the two halves computed apart (weight slices), so that GELU and the product
        # run on contiguous tensors: element-wise ops on strided halves are 3-7x slower
        h = self.project_out.in_features
        w_in, b_in = self.project_in.weight, self.project_in.bias
        halves = []
        for part in (slice(0, h), slice(h, 2 * h)):
            t = F.linear(x, w_in[part], None if b_in is None else b_in[part]).permute(0, 3, 1, 2)
            dw_b = None if self.dwconv.bias is None else self.dwconv.bias[part]
            t = F.conv2d(t, self.dwconv.weight[part], dw_b, padding=1, groups=h)
            halves.append(t.permute(0, 2, 3, 1))
        return self.project_out(gelu(halves[0]) * halves[1])


class SS2D(nn.Module):
    """2-D selective scan on channels-last maps ``(B, H, W, C)``.

    The map is read as a sequence in ``orders`` orders: 1 (row-major), 2 (row-
    and column-major) or 4 (both, and both reversed: MambaIR's cross scan). Each
    order is a group of heads with its own input-dependent ``dt``, ``B``, ``C``
    projections, decays ``A`` and skips ``D``. ``mix`` says how orders share the
    channels: ``sum`` (MambaIR: every order scans every channel and the
    re-aligned outputs are summed; cost grows with the number of orders) or
    ``split`` (order ``i`` scans its own ``1/orders`` of the channels, like heads
    looking in different directions). Order ``i`` reads the map in direction
    ``(first_order + i) % 4``: with one order per block and ``first_order``
    rotating with the block's position, a network sees all four directions at
    the cost of one scan per block.
    """

    def __init__(self, dim: int, d_state: int = 16, expand: float = 1.0, headdim: int = 64,
                 orders: int = 2, bias: bool = False, backend: str = "auto",
                 chunk: int = DEFAULT_CHUNK, mix: str = "sum", first_order: int = 0):
        super().__init__()
        if first_order not in range(4):
            raise ValueError(f"first scan order {first_order!r} is not 0, 1, 2 or 3")
        self.first_order = first_order
        if orders not in SCAN_ORDERS:
            raise ValueError(f"scan orders {orders!r} is not one of {SCAN_ORDERS}")
        if mix not in MIXES:
            raise ValueError(f"mix {mix!r} is not one of {', '.join(MIXES)}")
        self.split = mix == "split" and orders > 1
        inner = max(int(round(dim * expand)), orders)
        width = inner // orders if self.split else inner          # channels each order scans
        # heads of at most `headdim` channels that divide the width exactly
        heads = max(-(-width // headdim), 1)
        while width % heads:
            heads += 1
        self.heads, self.headdim = heads, width // heads          # heads per order
        self.width = self.heads * self.headdim
        self.inner = self.width * (orders if self.split else 1)
        self.d_state, self.orders, self.backend, self.chunk, self.mix = d_state, orders, backend, chunk, mix
        #: chunk length of the export form; None: chosen per shape (:func:`.scan.export_chunk`)
        self.export_chunk: int | None = None
        self.in_proj = nn.Linear(dim, self.inner * 2, bias=bias)
        self.dwconv = nn.Conv2d(self.inner, self.inner, 3, padding=1, groups=self.inner, bias=True)
        # per order: dt (one per head), B and C (d_state each)
        self.x_proj = nn.Linear(self.inner, orders * (self.heads + 2 * d_state), bias=False)
        k = orders * self.heads
        # dt initialised log-uniformly in [1e-3, 1e-1], as in Mamba
        dt0 = torch.exp(torch.rand(k) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_bias = nn.Parameter(dt0 + torch.log(-torch.expm1(-dt0)))   # softplus^-1(dt0)
        self.A_log = nn.Parameter(torch.log(torch.empty(k).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(k))
        self.out_norm = nn.LayerNorm(self.inner)
        self.out_proj = nn.Linear(self.inner, dim, bias=bias)

    def _direction(self, i: int) -> int:
        return (self.first_order + i) % 4

    @staticmethod
    def _read(t: torch.Tensor, order: int) -> torch.Tensor:
        """(b, H, W, ch) -> (b, L, ch): the map read in scan order ``order``
        (0 row-major, 1 column-major, 2 and 3 the same reversed)."""
        s = t.flatten(1, 2) if order % 2 == 0 else t.transpose(1, 2).flatten(1, 2)
        return s.flip(1) if order >= 2 else s

    @staticmethod
    def _unread(s: torch.Tensor, order: int, hh: int, ww: int) -> torch.Tensor:
        """Inverse of :meth:`_read`: (b, L, ch) in order ``order`` -> (b, H, W, ch)."""
        if order >= 2:
            s = s.flip(1)
        if order % 2 == 0:
            return s.unflatten(1, (hh, ww))
        return s.unflatten(1, (ww, hh)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, hh, ww, _ = x.shape
        L, o, h, n, p, w = hh * ww, self.orders, self.heads, self.d_state, self.headdim, self.width
        # scan branch and gate computed apart (weight slices): contiguous, see GatedFFN
        e, w_in, b_in = self.inner, self.in_proj.weight, self.in_proj.bias
        xs = F.linear(x, w_in[:e], None if b_in is None else b_in[:e])
        z = F.linear(x, w_in[e:], None if b_in is None else b_in[e:])
        xs = F.silu(self.dwconv(xs.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        params = self.x_proj(xs)                                             # (b, H, W, o*k)
        A = -torch.exp(self.A_log)
        backend = resolve_backend(self.backend, xs)
        if backend == "export":
            return self.forward_export(x)
        if not torch.jit.is_tracing() and backend == "numba":
            # one fused kernel: reads each order in place, no copies of the map
            out = cross_scan_numba(xs, params, self.dt_bias, A, self.D, h, n, o, self.split,
                                   self.first_order)
            return self.out_proj(self.out_norm(out) * F.silu(z))
        params = params.unflatten(-1, (o, h + 2 * n))                         # (b, H, W, o, k)

        def channels(i):
            return xs[..., i * w:(i + 1) * w] if self.split else xs

        dirs = [self._direction(i) for i in range(o)]
        u = torch.stack([self._read(channels(i), dirs[i]) for i in range(o)], dim=2)   # (b, L, o, w)
        par = torch.stack([self._read(params[..., i, :], dirs[i]) for i in range(o)], dim=2)
        dt, Bm, Cm = par.split([h, n, n], dim=-1)                             # (b, L, o, .)
        dt = F.softplus(dt.reshape(b, L, o * h) + self.dt_bias)
        y = selective_scan(u.reshape(b, L, o * h, p), dt, A, Bm, Cm, self.D, self.backend, self.chunk)
        y = y.reshape(b, L, o, w)
        parts = [self._unread(y[:, :, i], dirs[i], hh, ww) for i in range(o)]
        out = torch.cat(parts, dim=-1) if self.split else sum(parts[1:], parts[0])
        return self.out_proj(self.out_norm(out) * F.silu(z))


    def forward_export(self, x: torch.Tensor, frame: int = 0) -> torch.Tensor:
        """:meth:`forward` in export form, on the map in ``frame``: 0 ``(B, H, W, C)``,
        1 transposed ``(B, W, H, C)`` (the depthwise kernel transposed with it). The block
        puts the map in the frame of its first scan order, so that order reads it as stored.
        The scan branch is computed one head's channels at a time (slices of the in-projection
        and depthwise weights): the heads are separate tensors from the start, so that no
        tensor is transposed to put heads apart, and they are concatenated once, before the
        output norm. Same function."""
        e, p, w_in, b_in = self.inner, self.headdim, self.in_proj.weight, self.in_proj.bias
        dw = self.dwconv.weight if frame == 0 else self.dwconv.weight.transpose(-1, -2)
        heads = []
        for j in range(e // p):
            cut = slice(j * p, (j + 1) * p)
            t = F.linear(x, w_in[cut], None if b_in is None else b_in[cut]).permute(0, 3, 1, 2)
            t = F.conv2d(t, dw[cut], self.dwconv.bias[cut], padding=1, groups=p)
            heads.append(F.silu(t).permute(0, 2, 3, 1))                    # (b, H1, H2, p)
        z = F.linear(x, w_in[e:], None if b_in is None else b_in[e:])
        out = torch.cat(self._scan_export(heads, -torch.exp(self.A_log), frame), dim=-1)
        return self.out_proj(self.out_norm(out) * F.silu(z))

    def _project(self, heads: list[torch.Tensor], rows: slice) -> torch.Tensor:
        """Rows ``rows`` of the x-projection applied to the scan branch held as ``heads``:
        the sum of each head's product with its columns, ``(b, H1, H2, rows)``."""
        wx, p = self.x_proj.weight, self.headdim
        terms = [t @ wx[rows, j * p:(j + 1) * p].T for j, t in enumerate(heads)]
        return sum(terms[1:], terms[0])

    def _scan_export(self, heads: list[torch.Tensor], A: torch.Tensor,
                     frame: int) -> list[torch.Tensor]:
        """The scan part in export form: ``heads`` the scan branch's channels, one
        ``(b, H1, H2, headdim)`` tensor per head in channel order, the map in ``frame`` (see
        :meth:`forward_export`). Each order's ``dt`` (per head), ``B`` and ``C`` are their own
        products with slices of the x-projection (:meth:`_project`). Orders unrolled by static
        Python; an order whose direction runs along the other axis reads transposed copies
        (only with 2 or 4 orders); a reversed direction is the anti-causal form of the scan
        (:func:`.scan.scan_heads_sequence_export`), no flip. Returns the output per head."""
        b, h1, h2, _ = heads[0].shape
        L, o, h, n, p = h1 * h2, self.orders, self.heads, self.d_state, self.headdim
        k = h + 2 * n
        outs: list[torch.Tensor | None] = [None] * len(heads)
        for i in range(o):
            d = self._direction(i)
            mine = list(range(i * h, (i + 1) * h)) if self.split else list(range(h))
            us = [heads[j] for j in mine]
            # dt, B and C each by its own product (no Split of one shared product); dt with
            # the heads first, (b, h, L), so that no tensor has a size-1 last axis (ONNX
            # Runtime broadcasts one element by element) and a head's dt is a plain slice
            dt = self._project(heads, slice(i * k, i * k + h))                    # (b, H1, H2, h)
            Bm = self._project(heads, slice(i * k + h, i * k + h + n))            # (b, H1, H2, n)
            Cm = self._project(heads, slice(i * k + h + n, (i + 1) * k))
            across = d % 2 != frame
            if across:
                us, dt = [u.transpose(1, 2) for u in us], dt.transpose(1, 2)
                Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)
            dt = dt.reshape(b, 1, L) if h == 1 else dt.reshape(b, L, h).transpose(1, 2)
            dt = softplus_export(dt + self.dt_bias[i * h:(i + 1) * h, None])     # (b, h, L)
            ys = scan_heads_sequence_export([u.reshape(b, L, p) for u in us],
                                            list(dt.unbind(1)), A[i * h:(i + 1) * h],
                                            Bm.reshape(b, L, n), Cm.reshape(b, L, n),
                                            self.D[i * h:(i + 1) * h], self.export_chunk,
                                            reverse=d >= 2)
            for j, y in zip(mine, ys):
                y = y.reshape(b, h2, h1, p).transpose(1, 2) if across else y.reshape(b, h1, h2, p)
                outs[j] = y if outs[j] is None else outs[j] + y
        return outs


class SSMBlock(nn.Module):
    """MambaIR-style block: ``x + SS2D(LN(x))``, then ``x + FFN(LN(x))``.

    Takes and returns ``(B, C, H, W)`` like the transformer block, but works
    channels-last inside (linear layers and the scan want channels contiguous).
    """

    kind = "ssm"

    def __init__(self, dim: int, d_state: int = 16, expand: float = 1.0, headdim: int = 64,
                 orders: int = 2, ffn_factor: float = 1.0, bias: bool = False,
                 norm_bias: bool = True, backend: str = "auto", chunk: int = DEFAULT_CHUNK,
                 mix: str = "sum", first_order: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=norm_bias)
        self.ssm = SS2D(dim, d_state, expand, headdim, orders, bias, backend, chunk, mix,
                        first_order)
        self.norm2 = nn.LayerNorm(dim, bias=norm_bias)
        self.ffn = GatedFFN(dim, ffn_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if resolve_backend(self.ssm.backend, x) == "export":
            return self.forward_export(x)
        t = x.permute(0, 2, 3, 1)
        if not t.is_contiguous():   # free when the previous block was an SSM block too
            t = t.contiguous()
        t = t + self.ssm(self.norm1(t))
        t = t + self.ffn(self.norm2(t))
        return t.permute(0, 3, 1, 2)   # (B, C, H, W) in channels-last memory: no copy

    def forward_export(self, x: torch.Tensor) -> torch.Tensor:
        """The export form: channels-last ``(B, H, W, C)`` from the first op to the last (one
        ``Transpose`` in, one out); when the first scan order reads columns, the SSM branch
        works on the map transposed, ``(B, W, H, C)`` (its input and output swap H and W:
        a fast ``Transpose`` of C-channel rows, where going from NCHW to (B, W, H, C) in one
        ``Transpose`` is 10-20x slower in ONNX Runtime), so that order reads the map as
        stored. The same function as :meth:`forward`."""
        t = x.permute(0, 2, 3, 1).contiguous()   # one Transpose in a graph; a copy in eager
        u = self.norm1(t)
        if self.ssm._direction(0) % 2:
            t = t + self.ssm.forward_export(u.transpose(1, 2), 1).transpose(1, 2)
        else:
            t = t + self.ssm.forward_export(u, 0)
        t = t + self.ffn(self.norm2(t))
        return t.permute(0, 3, 1, 2)
