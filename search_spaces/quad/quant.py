"""Quantisation profiles, a torch fake-quant simulation, and QUAD training.

A *profile* is the set of encodings (bit width, scale, zero point) of every
quantised tensor of the adapter graph -- what an NPU compiler fixes at compile
time. The base weights' encodings (per-channel symmetric) follow from the
weights alone; what differs between separately calibrated tasks is the
encodings of the activations and of the adapter tensors A/B (graph inputs).
QUAD fixes ONE profile for every task and trains the adapters to it.

Quantised tensors of the torch simulation: the input and output, every
Conv2d/Linear input and output, the outputs of the extra module types a space
names (hybrid_unet: its LayerNorm2d and transformer blocks) and, in each adapted
layer, A and B (symmetric, 8-bit: they fill a weight slot), x*A, the branch and
base + branch. So every convolution reads and writes integers at its layer's
activation bits (a tensor made at other bits is requantised on the way in);
attention internals, the GELU gate, norms and residual sums stay float (fp16 on
an NPU). Bit widths may differ per
layer (``bits(name) -> (weight_bits, activation_bits)``).

Fake-quant is ``torch.fake_quantize_per_tensor_affine`` (straight-through
gradient inside the range). Profiles are written as encodings files in the
layout of AIMET's ``.encodings`` (version 1.0.0: ``activation_encodings`` and
``param_encodings`` lists of ``{name, bw, dtype, enc_type, is_sym, scale,
offset}``); tensor names are the simulation's keys (module names).
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasframe.accel import CPU, Accelerator
from nasframe_search_spaces.quad.lora import Adapter, LoRANet

#: the bit widths NPUs offer: name -> (weight bits, activation bits)
BIT_WIDTHS: dict[str, tuple[int, int]] = {"w8a8": (8, 8), "w8a16": (8, 16), "w4a16": (4, 16)}
#: adapter tensors fill a weight slot of the compiled graph: 8-bit symmetric
ADAPTER_BITS = 8
ENCODING_VERSION = "1.0.0"
#: the keys of the network's input and output (no module name holds an "@")
INPUT_KEY, OUTPUT_KEY = "@input", "@output"


@dataclass
class Encoding:
    """One tensor's quantisation: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``;
    symmetric = signed grid and zero point 0."""

    bits: int
    symmetric: bool
    scale: float
    zero_point: int = 0

    @property
    def qrange(self) -> tuple[int, int]:
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2 ** self.bits - 1

    @classmethod
    def from_range(cls, lo: float, hi: float, bits: int, symmetric: bool) -> Encoding:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if symmetric:
            return cls(bits, True, max(max(-lo, hi), 1e-8) / (2 ** (bits - 1) - 1), 0)
        scale = max(hi - lo, 1e-8) / (2 ** bits - 1)
        zp = int(min(max(round(-lo / scale), 0), 2 ** bits - 1))
        return cls(bits, False, scale, zp)

    def to_aimet(self, name: str) -> dict[str, Any]:
        # AIMET's offset is -zero_point on an unsigned grid; a symmetric grid starts at -2^(b-1)
        offset = -(2 ** (self.bits - 1)) if self.symmetric else -self.zero_point
        return {"name": name, "bw": self.bits, "dtype": "INT", "enc_type": "PER_TENSOR",
                "is_sym": self.symmetric, "scale": [self.scale], "offset": [offset]}

    @classmethod
    def from_aimet(cls, entry: dict[str, Any]) -> Encoding:
        sym = bool(entry["is_sym"])
        return cls(int(entry["bw"]), sym, float(entry["scale"][0]),
                   0 if sym else -int(entry["offset"][0]))

    def fake_quant(self, t: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.qrange
        return torch.fake_quantize_per_tensor_affine(t, self.scale, self.zero_point, qmin, qmax)


class Profile:
    """Encodings by tensor key (activations and adapter tensors) plus the per-channel
    weight bit widths; built by :meth:`QuantSim.calibrate`, saved as an encodings file."""

    def __init__(self, encodings: dict[str, Encoding] | None = None,
                 weight_bits: dict[str, int] | None = None):
        self.encodings: dict[str, Encoding] = dict(encodings or {})
        self.weight_bits: dict[str, int] = dict(weight_bits or {})

    def __len__(self) -> int:
        return len(self.encodings)

    def save(self, path: str | Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the profile as an AIMET-layout encodings file; ``weights`` (``{layer:
        weight}``) adds the per-channel ``param_encodings`` of the base weights."""
        params = []
        for name, bits in sorted(self.weight_bits.items()):
            entry = {"name": f"{name}.weight", "bw": bits, "dtype": "INT",
                     "enc_type": "PER_CHANNEL", "is_sym": True,
                     "offset": [], "scale": []}
            if weights is not None and name in weights:
                scales = _channel_scales(weights[name], bits)
                entry["scale"] = [float(s) for s in scales]
                entry["offset"] = [-(2 ** (bits - 1))] * len(scales)
            params.append(entry)
        doc = {"version": ENCODING_VERSION, "producer": "nasframe quad (torch fake-quant)",
               "activation_encodings": [e.to_aimet(k) for k, e in sorted(self.encodings.items())],
               "param_encodings": params,
               "quantizer_args": {"per_channel_quantization": True, "param_type": "int",
                                  "activation_type": "int"}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        doc = json.loads(Path(path).read_text())
        if doc.get("version") != ENCODING_VERSION:
            raise ValueError(f"{path}: encodings version {doc.get('version')!r}; "
                             f"expected {ENCODING_VERSION!r}")
        enc = {e["name"]: Encoding.from_aimet(e) for e in doc["activation_encodings"]}
        wb = {e["name"].removesuffix(".weight"): int(e["bw"]) for e in doc["param_encodings"]}
        return cls(enc, wb)

    def range_ratio(self, other: Profile) -> dict[str, float]:
        """How far apart two profiles are: median and max ratio of their scales."""
        ratios = sorted(max(a.scale, b.scale) / min(a.scale, b.scale)
                        for k, a in self.encodings.items()
                        if (b := other.encodings.get(k)) is not None)
        if not ratios:
            return {"median": 1.0, "max": 1.0}
        return {"median": ratios[len(ratios) // 2], "max": ratios[-1]}


def _channel_scales(w: torch.Tensor, bits: int) -> torch.Tensor:
    return w.detach().abs().flatten(1).amax(1).clamp(min=1e-8) / (2 ** (bits - 1) - 1)


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake-quantisation of a weight."""
    scale = _channel_scales(w, bits).float()
    qmax = 2 ** (bits - 1) - 1
    return torch.fake_quantize_per_channel_affine(
        w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -qmax - 1, qmax)


def _is_adapter_key(key: str) -> bool:
    return key.endswith((".A", ".B"))


class QuantSim:
    """A fake-quant view of a :class:`LoRANet` (changes it in place: hooks, weights).

    ``mode`` is ``float``, ``observe`` (record min/max), ``quant`` (fake-quantise with
    ``profile``) or ``record`` (keep every quantisation point's float tensor: :meth:`record`). ``bits(layer_name) -> (weight_bits, activation_bits)`` gives each layer's
    widths (default w8a8); tensors outside any named layer use ``default`` bits."""

    def __init__(self, net: LoRANet, bits: Callable[[str], tuple[int, int]] | None = None,
                 observe_types: Sequence[type[nn.Module]] = ()):
        self.net, self.mode, self.profile = net, "float", None
        self.observe_types = tuple(observe_types)
        self.bits = bits or (lambda name: BIT_WIDTHS["w8a8"])
        self._ranges: dict[str, tuple[float, float]] = {}
        self._float_state = copy.deepcopy(net.net.state_dict())
        self.weight_bits: dict[str, int] = {}
        quant = copy.deepcopy(net.net)
        with torch.no_grad():
            for name, m in quant.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    owner = name.removesuffix(".base")
                    wb = self.bits(owner)[0]
                    self.weight_bits[owner] = wb
                    m.weight.copy_(fake_quant_weight(m.weight, wb))
        self._quant_state = quant.state_dict()
        types = (nn.Conv2d, nn.Linear, *observe_types)
        self._hooks = [m.register_forward_hook(self._out_hook(name.removesuffix(".base")))
                       for name, m in net.net.named_modules() if isinstance(m, types)]
        # every layer's input at its activation bits (on the LoRA wrapper, so that the base
        # and the branch read the same quantised input): a float input (attention output,
        # gate, concatenation) becomes an integer one; a producer's output at other bits is
        # requantised (a convert on the NPU); at the same bits the encoding is the producer's
        wrapped = {layer.name for layer in net.layers}
        self._hooks += [m.register_forward_pre_hook(self._in_hook(name))
                        for name, m in net.net.named_modules()
                        if (name in wrapped or (isinstance(m, (nn.Conv2d, nn.Linear))
                                                and name.removesuffix(".base") not in wrapped))]
        net._feed.quant = None

    def close(self) -> None:
        """Remove the hooks and restore the float weights."""
        for h in self._hooks:
            h.remove()
        self.set_mode("float")

    # -- the hook -------------------------------------------------------------
    def _key_bits(self, key: str) -> tuple[int, bool]:
        if _is_adapter_key(key):
            return ADAPTER_BITS, True
        layer = key.rsplit(".", 1)[0] if key.endswith((".in", ".mid", ".delta", ".out")) else key
        return self.bits(layer)[1], False

    def _apply(self, key: str, t: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return t
        if self.mode == "record":
            self._seen.append((key, t.detach().clone()))
            return t
        if self.mode == "observe":
            d = t.detach()
            lo, hi = float(d.min()), float(d.max())
            old = self._ranges.get(key)
            self._ranges[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
            return t
        enc = self.profile.encodings.get(key)
        if enc is None:
            raise KeyError(f"the profile has no encoding for {key!r}; calibrate it with "
                           "every task's adapter (and this candidate's ranks)")
        return enc.fake_quant(t)

    def _out_hook(self, name: str):
        def hook(module, inputs, output):
            return self._apply(name, output) if isinstance(output, torch.Tensor) else output
        return hook

    def _in_hook(self, name: str):
        def hook(module, inputs):
            return (self._apply(name + ".in", inputs[0]), *inputs[1:])
        return hook

    def set_mode(self, mode: str, profile: Profile | None = None) -> None:
        if mode == "quant" and profile is None:
            raise ValueError("quant mode needs a profile")
        self.mode, self.profile = mode, profile
        self.net.net.load_state_dict(self._quant_state if mode == "quant" else self._float_state)
        self.net._feed.quant = None if mode == "float" else self._apply

    @torch.no_grad()
    def record(self, x: torch.Tensor, *adapter: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """The float model's tensor at every quantisation point of one call, in the order the
        simulation quantises them: ``[(key, tensor), ...]`` (what :func:`.deploy.map_profile`
        matches against the exported graph)."""
        self._seen: list[tuple[str, torch.Tensor]] = []
        self.set_mode("record")
        try:
            self(x, *adapter)
        finally:
            self.set_mode("float")
        return self._seen

    def __call__(self, x: torch.Tensor, *adapter: torch.Tensor) -> torch.Tensor:
        x = self._apply(INPUT_KEY, x)
        return self._apply(OUTPUT_KEY, self.net(x, *adapter))

    @torch.no_grad()
    def calibrate(self, batches: Iterable[tuple[torch.Tensor, Adapter]]) -> Profile:
        """Min/max over every ``(x, adapter)`` batch: ONE profile for all of them
        (pass every task's adapter for a shared profile, one task's for a per-task one)."""
        self._ranges = {}
        self.set_mode("observe", None)
        for x, adapter in batches:
            self(x, *adapter)
        self.set_mode("float")
        enc = {}
        for key, (lo, hi) in self._ranges.items():
            bits, sym = self._key_bits(key)
            enc[key] = Encoding.from_range(lo, hi, bits, sym)
        return Profile(enc, self.weight_bits)


# -- QUAD training ------------------------------------------------------------------------
def _cosine(step: int, steps: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(steps - warm, 1)))


def train_adapters(params: list[torch.Tensor], loss_fn: Callable[[int], torch.Tensor], steps: int,
                   lr: float, progress=None, description: str = "adapters",
                   accel: Accelerator = CPU) -> list[float]:
    """AdamW on ``params`` (warm-up, cosine decay, gradient clipping); the loss curve.
    ``accel``: fp16 scales the loss (``loss_fn`` places its own tensors and autocasts)."""
    scaler = accel.grad_scaler()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, min(10, steps // 5 + 1)))
    task = progress.add_task(description, total=steps, info="") if progress is not None else None
    losses = []
    for step in range(steps):
        loss = loss_fn(step)
        accel.step(loss, opt, scaler, clip=1.0, parameters=params)
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(task, advance=1, info=f"L1 {sum(losses[-20:]) / len(losses[-20:]):.4f}")
    return losses


def quad(sim: QuantSim, profile: Profile, adapters: dict[str, Adapter],
         batch: Callable[[str, int], tuple[torch.Tensor, torch.Tensor]],
         teachers: dict[str, Callable[[torch.Tensor], torch.Tensor]], *, steps: int, lr: float,
         kd: float = 1.0, progress=None) -> dict[str, Adapter]:
    """QUAD: quantisation-aware training of every task's adapter against the FIXED shared
    ``profile`` (tasks round-robin), loss L1(target) + ``kd`` x L1(task's fp model)."""
    tasks = list(adapters)
    ads = {t: [a.detach().clone().requires_grad_(True) for a in adapters[t]] for t in tasks}
    if steps <= 0:
        return {t: [a.detach() for a in ads[t]] for t in tasks}
    sim.set_mode("quant", profile)

    def loss(step: int) -> torch.Tensor:
        t = tasks[step % len(tasks)]
        x, y = batch(t, step // len(tasks))
        out = sim(x, *ads[t])
        with torch.no_grad():
            ref = teachers[t](x)
        return F.l1_loss(out, y) + kd * F.l1_loss(out, ref)

    try:
        train_adapters([a for t in tasks for a in ads[t]], loss, steps, lr, progress, "QUAD")
    finally:
        sim.set_mode("float")
    return {t: [a.detach() for a in ads[t]] for t in tasks}
