"""A placement check that needs no GPU: an emulated device on the CPU.

:class:`EmulatedDevice` is an :class:`~nasframe.accel.Accelerator` whose "device" is
the CPU with a mark: every tensor it places (modules' parameters and buffers, batches)
is marked as *on the device*, and a torch dispatch mode carries the mark through
every op, backward passes and optimiser steps included. An op that mixes a marked
tensor with an unmarked one of one element or more fails at once, with the error
CUDA gives ("Expected all tensors to be on the same device"), and so does
``.numpy()`` of a marked tensor. ``.cpu()`` / ``.to("cpu")`` / :meth:`host` give
unmarked copies, as a real device does.

What it catches: a training or evaluation loop that forgets to move its model, a
batch, a target, an embedding or a state, or that hands a device tensor to numpy.
The device is spelt ``cpu:0`` (torch computes there as on the CPU): a marked
tensor's ``.device`` says ``cpu:0``, so ``torch.zeros(n, device=x.device)`` and
``y.to(x.device)`` land on the device, while a factory call without ``device=``
lands on the host, as on a GPU. What it does not check: code that asks
``x.is_cuda`` (it is False here), ops recorded by ``torch.jit.trace`` (MAC counters:
not checked), CUDA-only kernels, speed and numerics; autocast
is exercised on the CPU with bf16, not emulated.

Use (tests)::

    dev = EmulatedDevice()
    ctx.accelerator = dev
    with dev:                      # the dispatch mode: mixing raises
        space.prepare(ctx, needs)
    assert dev.ops_on_device > 0   # the work did run "on the device"
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nasframe.accel import Accelerator

DEVICE = "device"

_aten = torch.ops.aten
#: ops that legitimately take tensors of two devices (copies, CPU index tensors)
_CROSS = {_aten._to_copy.default, _aten.copy_.default, _aten.index.Tensor,
          _aten.index_put_.default, _aten.index_put.default, _aten._index_put_impl_.default,
          _aten.set_.source_Tensor, _aten.set_.source_Storage_storage_offset,
          _aten.detach.default, _aten.alias.default, _aten.lift_fresh.default,
          _aten.lift_fresh_copy.default, _aten._local_scalar_dense.default,
          _aten._has_compatible_shallow_copy_type.default}


def _key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except Exception:  # noqa: BLE001 - no storage (sparse, nested): not tracked
        return None


class _Marks:
    """The mark of every tracked storage (strong references: an address is never reused)."""

    def __init__(self) -> None:
        self.marks: dict[int, tuple[str, Any]] = {}

    def get(self, t: torch.Tensor) -> str | None:
        k = _key(t)
        return self.marks[k][0] if k in self.marks else None

    def set(self, t: torch.Tensor, mark: str | None) -> None:
        k = _key(t)
        if k is None:
            return
        if mark is None:
            self.marks.pop(k, None)
        else:
            self.marks[k] = (mark, t.untyped_storage())


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: EmulatedDevice):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._is_tracing():      # a MAC counter's torch.jit.trace: not checked
            return func(*args, **kwargs)
        marks = self.owner.marks
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        got = [marks.get(t) for t in tensors]
        on_device = DEVICE in got
        if on_device and func not in _CROSS:
            host = [t for t, m in zip(tensors, got) if m is None and t.dim() > 0]
            if host:
                raise RuntimeError(
                    f"Expected all tensors to be on the same device, but found at least two "
                    f"devices, {self.owner.name} and cpu! ({func}: a host tensor of shape "
                    f"{tuple(host[0].shape)} meets a device tensor; place it with accel.to)")
        out = func(*args, **kwargs)
        if on_device:
            self.owner.ops_on_device += 1
        mark = DEVICE if on_device else None
        if func in (_aten._to_copy.default,):       # .float(), .to(dtype): the input's mark
            mark = got[0] if got else mark
        inputs = {_key(t) for t in tensors}
        for o in tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor) and _key(o) not in inputs:   # in place: unchanged
                marks.set(o, mark)
        return out


class _Function(TorchFunctionMode):
    """The device's spelling (``cpu:0``): ``.device`` of a marked tensor, ``device=`` of
    factory functions, ``.to(...)``; ``.cpu()`` / ``.to("cpu")`` give unmarked copies;
    ``.numpy()`` of a device tensor fails."""

    def __init__(self, owner: EmulatedDevice):
        super().__init__()
        self.owner = owner

    def _is_device(self, d: Any) -> bool:
        try:
            return d is not None and torch.device(d) == self.owner.device
        except (RuntimeError, TypeError):
            return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._is_tracing():      # a MAC counter's torch.jit.trace: not checked
            return func(*args, **kwargs)
        marks = self.owner.marks
        name = getattr(func, "__name__", "")
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "__get__" and getattr(func, "__self__", None) is torch._C.TensorBase.device:
            if first is not None and marks.get(first) == DEVICE:
                return self.owner.device
            return func(*args, **kwargs)
        if name in ("cpu", "to", "numpy") and first is not None:
            on = marks.get(first) == DEVICE
            if name == "numpy":
                if on:
                    raise TypeError(f"can't convert {self.owner.name} device type tensor to "
                                    "numpy. Use Tensor.cpu() to copy the tensor to host memory "
                                    "first.")
                return func(*args, **kwargs)
            device = torch.device("cpu") if name == "cpu" else \
                torch._C._nn._parse_to(*args[1:], **kwargs)[0]
            if device is None:
                return func(*args, **kwargs)
            rest = dict(kwargs)
            rest.pop("device", None)
            if self._is_device(device):              # onto the device
                dtype = torch._C._nn._parse_to(*args[1:], **kwargs)[1]
                out = first if dtype is None else first.to(dtype)
                if on:
                    return out
                out = out.clone() if _key(out) == _key(first) else out
                marks.set(out, DEVICE)
                return out
            if device.type == "cpu" and on:           # back to the host: a copy
                dtype = None if name == "cpu" else torch._C._nn._parse_to(*args[1:], **kwargs)[1]
                out = first if dtype is None else first.to(dtype)
                out = out.clone() if _key(out) == _key(first) else out
                marks.set(out, None)
                return out
            return func(*args, **kwargs)
        if "device" in kwargs and self._is_device(kwargs["device"]):
            out = func(*args, **{**kwargs, "device": "cpu"})
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    marks.set(o, DEVICE)
            return out
        return func(*args, **kwargs)


class EmulatedDevice(Accelerator):
    """An accelerator on the CPU, spelt ``cpu:0``, that marks what it places and checks
    every op (see the module docstring for what that proves)."""

    def __init__(self, precision: str = "fp32", name: str = "emulated:0"):
        super().__init__(torch.device("cpu", 0), precision)
        self.name = name
        self.marks = _Marks()
        self.ops_on_device = 0
        self.placed_modules = 0
        self.placed_tensors = 0
        self._modes: list[contextlib.ExitStack] = []

    def describe(self) -> str:
        return self.name if self.precision == "fp32" else f"{self.name}, {self.precision} autocast"

    def on_device(self, t: torch.Tensor) -> bool:
        return self.marks.get(t) == DEVICE

    def to(self, obj: Any) -> Any:
        if isinstance(obj, torch.nn.Module):
            self.placed_modules += 1
        return super().to(obj)

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        self.placed_tensors += 1
        return super()._move(t)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No checking inside (e.g. around ``torch.jit.trace``, which the modes confuse)."""
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    def __enter__(self) -> EmulatedDevice:
        stack = contextlib.ExitStack()
        stack.enter_context(_Function(self))
        stack.enter_context(_Dispatch(self))
        self._modes.append(stack)
        return self

    def __exit__(self, *exc) -> None:
        self._modes.pop().close()
