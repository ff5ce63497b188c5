"""Measured forward-pass latency of the built model on this machine."""
from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from nasframe import Value
from nasframe.params import Field, Int, ParamError, Shape
from nasframe_objectives._common import PartObjective, PartParams, input_shapes, model_mode

if TYPE_CHECKING:
    import torch

    from nasframe import Candidate, Context


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model ('model name' in /proc/cpuinfo, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) tuple/list/dict of inputs to ``device``."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _model_device(model: torch.nn.Module) -> torch.device:
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _on_device(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """Move ``model`` to ``device`` in place and back to where it was afterwards."""
    home = _model_device(model)
    if home == device:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count (when given), restoring it afterwards."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(before)


class Latency(PartObjective):
    """Median wall-clock time of one forward pass, in milliseconds.

    Runs ``warmup`` untimed then ``repeats`` timed forward passes of the model
    (eval mode, ``torch.inference_mode``) on ``device``, each timed with
    ``time.perf_counter`` (with ``torch.cuda.synchronize`` on CUDA). Inputs:
    ``input_shape`` is the full shape including the batch (e.g. ``[1, 3, 64,
    64]``); without it, the space's ``input_shape`` with ``batch_size``.
    ``threads`` sets ``torch.set_num_threads`` for the measurement only.
    Details: ``p10_ms``/``p90_ms``, the threads actually used, torch version.
    ``part`` times that model part of the search space on its own example
    inputs instead of the main model.
    """

    name = "latency"
    direction = "min"
    kind = "measured"
    backend = "torch"
    unit = "ms"
    cost = 10.0
    small_params = {"repeats": 3, "warmup": 1}

    class Params(PartParams):
        input_shape: Shape | None = None
        """Full input shape, batch included (default: the space's, with batch_size)."""
        device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
        """Where to time: cpu, cuda or cuda:N."""
        threads: Int | None = Field(None, ge=1, le=1024)
        """torch intra-op threads during the measurement (default: torch's current setting)."""
        warmup: Int = Field(3, ge=0, le=10_000)
        """Untimed forward passes first."""
        repeats: Int = Field(10, ge=1, le=100_000)
        """Timed forward passes; the value is their median."""
        batch_size: Int = Field(1, ge=1, le=65_536)
        """Batch of the default input (ignored with input_shape)."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        import torch

        device = self.params.device
        self._device = torch.device(device)
        if self._device.type == "cuda":
            if not torch.cuda.is_available():
                raise ParamError("device", f"{device!r} is not available on this machine; use 'cpu'")
            if self._device.index is not None and self._device.index >= torch.cuda.device_count():
                raise ParamError("device", f"{device!r} does not exist; this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
        self.threads = self.params.threads
        self.warmup, self.repeats = self.params.warmup, self.params.repeats
        self.batch_size = self.params.batch_size
        self.input_shape = self.params.input_shape

    def device(self, ctx: Context) -> str:
        import torch

        threads = self.threads if self.threads is not None else torch.get_num_threads()
        if self._device.type == "cuda":
            index = self._device.index if self._device.index is not None else torch.cuda.current_device()
            return f"{self._device} ({torch.cuda.get_device_name(index)})"
        return f"cpu ({cpu_name()}, {threads} threads)"

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value:
        import numpy as np
        import torch

        device = self._device
        cuda = device.type == "cuda"
        inputs = candidate.example_inputs(self.input_shape, batch_size=self.batch_size,
                                          part=self.part)
        shapes = input_shapes(inputs)
        inputs = _to_device(inputs, device)
        model = candidate.module(self.part)
        times: list[float] = []
        with (_num_threads(self.threads) as threads, model_mode(model, training=False),
              _on_device(model, device), torch.inference_mode()):
            for i in range(self.warmup + self.repeats):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(*inputs)
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= self.warmup:
                    times.append((time.perf_counter() - start) * 1e3)
        p10, p90 = np.percentile(times, [10, 90])
        details: dict[str, Any] = {
            "threads": threads,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "p10_ms": float(p10),
            "p90_ms": float(p90),
            "input_shape": shapes,
            "torch": torch.__version__,
        }
        if self.part is not None:
            details["part"] = self.part
        return Value(statistics.median(times), details)
