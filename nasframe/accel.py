"""Where training and evaluation run: the experiment's ``device`` and ``precision``.

An experiment file says where its torch work runs::

    device: cuda        # cpu (default), cuda, cuda:N, mps
    precision: bf16     # fp32 (default), bf16 or fp16 autocast

Components get an :class:`Accelerator` from the :class:`~nasframe.context.Context`
(``ctx.accel``) and use it in every training and evaluation loop::

    accel = ctx.accel
    model = accel.to(model)                       # parameters and buffers
    scaler = accel.grad_scaler()                  # fp16: loss scaling; else a no-op
    for step in range(steps):
        x, y = accel.to(batch(step))              # tensors, or tuples/lists/dicts of them
        with accel.autocast():
            loss = loss_fn(model(x), y)
        accel.step(loss, opt, scaler, clip=1.0)   # backward, unscale, clip, step

``precision`` is autocast (``torch.autocast``): weights and the optimiser stay in
fp32, matmuls and convolutions run in bf16/fp16; fp16 adds a ``GradScaler``.
Results handed back to the caller (metrics, saved state dicts) are on the CPU in
fp32 whatever the device. Latency objectives keep their own ``device`` param:
they time a backend, not the experiment's training device.

Checks (:func:`problems`): a ``device`` torch cannot parse, a CUDA/MPS device on a
machine without one, a CUDA index past the visible GPUs, fp16 on the CPU, or bf16
on a GPU without it are reported by ``nasframe validate`` and before a run starts
(exit 2, naming ``device`` or ``precision`` and the fix).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch

from nasframe.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_device(device: str) -> torch.device:
    """``device`` as a torch device; ValueError (with the fix) when torch cannot parse it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{device!r} is not a torch device ({err}); use cpu, cuda, cuda:N "
                         "or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{device!r}: device type {dev.type!r} is not supported; use cpu, "
                         "cuda, cuda:N or mps")
    return dev


def problems(device: str, precision: str = "fp32") -> list[str]:
    """What stops ``device``/``precision`` from running on this machine (empty: nothing)."""
    try:
        dev = parse_device(device)
    except ValueError as err:
        return [f"device: {err}"]
    out = []
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            out.append(f"device: {device!r} but torch sees no CUDA GPU here (torch "
                       f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                       "install a CUDA build of torch and check nvidia-smi, or set device: cpu")
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            out.append(f"device: {device!r} but only {torch.cuda.device_count()} GPU(s) are "
                       f"visible (cuda:0 ... cuda:{torch.cuda.device_count() - 1}); check "
                       "CUDA_VISIBLE_DEVICES, or use device: cuda")
        elif precision == "bf16" and not torch.cuda.is_bf16_supported():
            out.append(f"precision: bf16 but {torch.cuda.get_device_name(dev)} has no bf16; "
                       "use precision: fp16 or fp32")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        out.append(f"device: {device!r} but torch has no MPS backend here (Apple silicon "
                   "only); set device: cpu")
    if precision not in PRECISIONS:
        out.append(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    elif precision == "fp16" and dev.type == "cpu":
        out.append("precision: fp16 autocast is for GPUs; on device: cpu use bf16 or fp32")
    return out


def check(device: str, precision: str = "fp32") -> None:
    """Raise :class:`ConfigError` (exit 2) with every problem of :func:`problems`."""
    found = problems(device, precision)
    if found:
        raise ConfigError(*found)


def _map(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):      # a namedtuple
        return type(obj)(*(_map(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


class Accelerator:
    """The experiment's device and autocast precision, and the moves a loop needs."""

    def __init__(self, device: str | torch.device = "cpu", precision: str = "fp32"):
        self.device = parse_device(str(device)) if not isinstance(device, torch.device) else device
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.precision = precision

    def __repr__(self) -> str:
        return f"Accelerator(device={str(self.device)!r}, precision={self.precision!r})"

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def describe(self) -> str:
        """``cpu``, ``cuda:0 (NVIDIA H100 80GB HBM3)``, with ``bf16 autocast`` when set:
        the ``device`` of a quality objective's provenance."""
        where = str(self.device)
        if self.device.type == "cuda" and torch.cuda.is_available():
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return where if self.precision == "fp32" else f"{where}, {self.precision} autocast"

    # -- placement ---------------------------------------------------------
    def to(self, obj: Any) -> Any:
        """``obj`` on the device: a module (moved in place and returned), a tensor, or
        tuples/lists/dicts of tensors (other leaves as they are)."""
        if isinstance(obj, torch.nn.Module):
            return obj.to(self.device)
        return _map(obj, self._move)

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    @staticmethod
    def host(obj: Any) -> Any:
        """``obj``'s tensors on the CPU in their float32 form (for metrics and numpy)."""
        return _map(obj, lambda t: t.detach().float().cpu() if t.is_floating_point()
                    else t.detach().cpu())

    @contextlib.contextmanager
    def placed(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """``module`` on the device for the block, back where it was afterwards (a shared
        model, e.g. the candidate's, stays on the CPU for the objectives after it)."""
        before = next(iter(module.parameters()), None)
        before = before.device if before is not None else torch.device("cpu")
        try:
            yield self.to(module)
        finally:
            module.to(before)

    # -- precision ---------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at the experiment's precision (fp32: nothing)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (a disabled scaler, which does nothing, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None = None, clip: float | None = None,
             parameters=None) -> None:
        """Backward, then (after unscaling) clip the gradients' norm to ``clip`` and step.
        ``parameters``: those to clip (default: the optimiser's)."""
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip is not None:
            params = parameters if parameters is not None else [
                p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


CPU = Accelerator()
