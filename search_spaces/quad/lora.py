"""LoRA whose A/B tensors are *inputs* of the forward pass (and so of an exported graph).

One network, N tasks: the base weights stay constants (ONNX initialisers); every
adapted layer reads its low-rank pair from the call, so an ONNX export has
``lora.<layer>.A`` / ``lora.<layer>.B`` as graph inputs and a task switch is a new
feed, not a new model. Works on any ``nn.Module`` (hybrid_unet's U-Net, sd_unet's
diffusers U-Net): the targeted layers are found by a predicate over
``named_modules()``.

Layer maths (the LoRA scale ``alpha / r`` is folded into B, so the graph holds no
per-adapter constant and every task fits one graph)::

    Linear   y = x W^T (+ b)  +  (x A^T) B^T           A: (r, in)            B: (out, r)
    Conv2d   y = conv(x, W)   +  conv1x1(conv(x, A), B)
                                  A: (r, in, kh, kw) with W's stride/padding/dilation
                                  B: (out, r, 1, 1)

Grouped (depthwise) convolutions are not adapted. The rank may differ per layer
(``rank`` a callable of the layer name); rank 0 leaves a layer unadapted.

peft is not used: it keeps A/B as parameters, so a plain export bakes them in
(see docs/quad.md).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: ``quant(key, tensor) -> tensor``: a fake-quant hook (see :mod:`.quant`)
QuantHook = Callable[[str, torch.Tensor], torch.Tensor]


class _Feed:
    """The adapter tensors of the current call, shared by the host and its layers
    (a plain object, not a Module: assigning to it is no module mutation, which
    torch.export traces without complaint)."""

    def __init__(self) -> None:
        self.tensors: Sequence[torch.Tensor] | None = None
        #: keys ``<layer>.A``, ``.B`` (the adapter tensors), ``.mid`` (x*A), ``.delta``
        #: (the branch) and ``.out`` (base + branch); None in the float graph
        self.quant: QuantHook | None = None


def _branch(layer, x: torch.Tensor, y: torch.Tensor, first, second) -> torch.Tensor:
    feed = layer._feed
    a, b = feed.tensors[2 * layer.index], feed.tensors[2 * layer.index + 1]
    q = feed.quant
    if q is None:
        return y + second(first(x, a), b)
    n = layer.name
    mid = q(n + ".mid", first(x, q(n + ".A", a)))
    return q(n + ".out", y + q(n + ".delta", second(mid, q(n + ".B", b))))


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, feed: _Feed, index: int, name: str):
        super().__init__()
        self.base, self._feed, self.index, self.name = base, feed, index, name

    def shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (rank, self.base.in_features), (self.base.out_features, rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._feed.tensors is None:
            return y
        return _branch(self, x, y, F.linear, F.linear)

    @staticmethod
    def delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return b @ a


class LoRAConv2d(nn.Module):
    def __init__(self, base: nn.Conv2d, feed: _Feed, index: int, name: str):
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError(f"{name}: only non-grouped, zero-padded convolutions are adapted")
        self.base, self._feed, self.index, self.name = base, feed, index, name

    def shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        c = self.base
        return (rank, c.in_channels, *c.kernel_size), (c.out_channels, rank, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._feed.tensors is None:
            return y
        c = self.base
        return _branch(self, x, y,
                       lambda t, a: F.conv2d(t, a, None, c.stride, c.padding, c.dilation), F.conv2d)

    @staticmethod
    def delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.einsum("or,rihw->oihw", b[:, :, 0, 0], a)


def default_target(name: str, module: nn.Module) -> bool:
    """Every Linear and every non-grouped, zero-padded Conv2d."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros")


@dataclass(frozen=True)
class Slot:
    """One adapted layer: its module name in the base network and A/B shapes."""

    name: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return self.a_shape[0]

    @property
    def input_names(self) -> tuple[str, str]:
        return f"lora.{self.name}.A", f"lora.{self.name}.B"


Adapter = list[torch.Tensor]   # [A0, B0, A1, B1, ...] in slot order


class LoRANet(nn.Module):
    """``base`` with every targeted layer wrapped; adapters are passed to ``forward``:
    ``net(x, *adapter)`` runs base + adapter, ``net(x)`` the base alone. A base that
    takes several inputs (e.g. a diffusion U-Net's latent, timestep and text
    embedding) sets ``model_inputs``: ``net(*inputs, *adapter)``.

    The base is changed in place (targeted children replaced by wrappers holding the
    original layer as ``.base``) and frozen. ``rank`` is an int or a callable
    ``rank(layer_name) -> int`` (0: the layer is not adapted)."""

    def __init__(self, base: nn.Module, rank: int | Callable[[str], int] = 4,
                 target: Callable[[str, nn.Module], bool] = default_target,
                 model_inputs: int = 1):
        super().__init__()
        if model_inputs < 1:
            raise ValueError(f"model_inputs must be >= 1, got {model_inputs}")
        self.model_inputs = model_inputs
        rank_of = rank if callable(rank) else (lambda _name, r=int(rank): r)
        self._feed = _Feed()
        found = [(n, m) for n, m in base.named_modules()
                 if n and target(n, m) and rank_of(n) > 0]
        self.layers: list[LoRALinear | LoRAConv2d] = []
        slots = []
        for i, (name, mod) in enumerate(found):
            cls = LoRALinear if isinstance(mod, nn.Linear) else LoRAConv2d
            wrapper = cls(mod, self._feed, i, name)
            parent, _, child = name.rpartition(".")
            setattr(base.get_submodule(parent) if parent else base, child, wrapper)
            self.layers.append(wrapper)
            slots.append(Slot(name, *wrapper.shapes(rank_of(name))))
        self.slots: tuple[Slot, ...] = tuple(slots)
        self.net = base
        for p in base.parameters():
            p.requires_grad_(False)

    # -- adapters -------------------------------------------------------------
    def input_names(self) -> list[str]:
        """The graph input names of the adapter tensors, in feed order."""
        return [n for s in self.slots for n in s.input_names]

    def adapter_numel(self) -> int:
        return sum(math.prod(s.a_shape) + math.prod(s.b_shape) for s in self.slots)

    def init_adapter(self, seed: int = 0, b_std: float = 0.0,
                     requires_grad: bool = False) -> Adapter:
        """A ~ N(0, 1/fan_in), B ~ N(0, b_std) (zeros by default: the base unchanged)."""
        g = torch.Generator().manual_seed(seed)
        out = []
        for s in self.slots:
            a = torch.randn(s.a_shape, generator=g) / math.sqrt(math.prod(s.a_shape[1:]))
            b = torch.randn(s.b_shape, generator=g) * b_std
            out += [a.requires_grad_(requires_grad), b.requires_grad_(requires_grad)]
        return out

    def check_adapter(self, adapter: Sequence[torch.Tensor]) -> None:
        if len(adapter) != 2 * len(self.slots):
            raise ValueError(f"expected {2 * len(self.slots)} adapter tensors, got {len(adapter)}")
        for s, a, b in zip(self.slots, adapter[0::2], adapter[1::2]):
            if tuple(a.shape) != s.a_shape or tuple(b.shape) != s.b_shape:
                raise ValueError(f"{s.name}: expected A {s.a_shape}, B {s.b_shape}; "
                                 f"got {tuple(a.shape)}, {tuple(b.shape)}")

    def adapter_state(self, adapter: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{graph input name: tensor}`` (what a device feeds, and what is saved)."""
        return {n: t.detach() for n, t in zip(self.input_names(), adapter)}

    def adapter_from_state(self, state: dict[str, torch.Tensor]) -> Adapter:
        out = [state[n] for n in self.input_names()]
        self.check_adapter(out)
        return out

    def fit_adapter(self, full: dict[str, torch.Tensor]) -> Adapter:
        """An adapter for this net's ranks from a higher-rank one (``adapter_state`` of a
        net over the same base): per layer the best rank-r approximation (SVD) of its
        update B @ A; layers the full adapter lacks get a zero update."""
        out: Adapter = []
        for s, layer in zip(self.slots, self.layers):
            an, bn = s.input_names
            if an not in full:
                out += [torch.zeros(s.a_shape), torch.zeros(s.b_shape)]
                continue
            a, b = full[an], full[bn]
            r = s.rank
            if a.shape[0] <= r:   # pad with zero directions
                pa = torch.zeros(s.a_shape)
                pb = torch.zeros(s.b_shape)
                pa[:a.shape[0]] = a
                pb[:, :a.shape[0]] = b
                out += [pa, pb]
                continue
            delta = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)   # (out, in*k*k)
            u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
            root = sv[:r].sqrt()
            new_b = (u[:, :r] * root).reshape(s.b_shape)
            new_a = (root[:, None] * vh[:r]).reshape(s.a_shape)
            out += [new_a.contiguous(), new_b.contiguous()]
        return out

    # -- forward --------------------------------------------------------------
    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        inputs, adapter = args[:self.model_inputs], args[self.model_inputs:]
        self._feed.tensors = adapter if adapter else None
        try:
            return self.net(*inputs)
        finally:
            self._feed.tensors = None

    # -- references -------------------------------------------------------------
    def merged(self, adapter: Sequence[torch.Tensor] | None) -> nn.Module:
        """A plain copy of the base network with ``W + B @ A`` in every adapted layer
        (what compiling one separate model per task ships)."""
        net = copy.deepcopy(self.net)
        for s, layer in zip(self.slots, self.layers):
            parent_name, _, child = s.name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            plain = getattr(parent, child).base
            if adapter is not None:
                a, b = adapter[2 * layer.index], adapter[2 * layer.index + 1]
                with torch.no_grad():
                    plain.weight += type(layer).delta(a.detach(), b.detach()).to(plain.weight)
            setattr(parent, child, plain)
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()
