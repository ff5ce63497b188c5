"""Measured latency of a candidate, on a latency backend: ``torch`` here, plugins add more.

The ``latency`` objective builds the candidate (or one of its model parts),
makes its example inputs and hands them to the backend named by ``backend``
(with ``options`` validated against that backend's params). A backend that
times an exported graph (``export_format``, e.g. ONNX Runtime) gets the model
exported and checked against PyTorch first (:func:`nasframe.deploy.export_module`;
cached in the run directory by architecture, part and input shape). An
asynchronous backend (a device farm) gets a job request, which the runner
submits and collects (:mod:`nasframe.backends`).
"""
from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nasframe import Value
from nasframe.backends import Deferred, LatencyBackend, time_passes
from nasframe.params import Field, Int, ParamError, Params, Shape, parse_params
from nasframe_objectives._common import PartObjective, PartParams, input_shapes, model_mode

if TYPE_CHECKING:
    import torch

    from nasframe import Candidate, Context
    from nasframe.deploy import ExportResult


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
def num_threads(threads: int | None) -> Iterator[int]:
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


def summarise(times_ms: list[float], **details: Any) -> Value:
    """The median of ``times_ms`` with p10/p90 and ``details``."""
    import numpy as np

    p10, p90 = np.percentile(times_ms, [10, 90])
    return Value(statistics.median(times_ms),
                 {"p10_ms": float(p10), "p90_ms": float(p90), "repeats": len(times_ms),
                  **details})


class TimingParams(Params):
    threads: Int | None = Field(None, ge=1, le=1024)
    """Intra-op threads during the measurement (default: the runtime's current setting)."""
    warmup: Int = Field(3, ge=0, le=10_000)
    """Untimed forward passes first."""
    repeats: Int = Field(10, ge=1, le=100_000)
    """Timed forward passes; the value is their median."""


class TorchBackend(LatencyBackend):
    """The PyTorch module itself, eager, in this process (``torch.inference_mode``), on the
    CPU or a CUDA GPU (with ``torch.cuda.synchronize`` around each pass)."""

    name = "torch"

    class Params(TimingParams):
        device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
        """Where to time: cpu, cuda or cuda:N."""

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

    def device(self) -> str:
        import torch

        threads = self.params.threads if self.params.threads is not None else torch.get_num_threads()
        if self._device.type == "cuda":
            index = self._device.index if self._device.index is not None else torch.cuda.current_device()
            return f"{self._device} ({torch.cuda.get_device_name(index)})"
        return f"cpu ({cpu_name()}, {threads} threads)"

    def runtime(self) -> str:
        import torch

        return f"torch {torch.__version__}"

    paired = True

    def runner(self, model, inputs, ctx, exported=None):
        import torch

        device, threads = self._device, self.params.threads
        inputs = _to_device(inputs, device)
        if _model_device(model) != device:      # a copy: the trial's model stays where it is
            import copy

            model = copy.deepcopy(model).to(device)
        model.eval()

        def run() -> None:
            with num_threads(threads), torch.inference_mode():
                model(*inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
        return run, {"threads": threads if threads is not None else torch.get_num_threads(),
                     "torch": torch.__version__}

    def measure(self, model, inputs, ctx, exported=None) -> Value:
        import torch

        device, p = self._device, self.params
        cuda = device.type == "cuda"
        inputs = _to_device(inputs, device)
        times: list[float] = []
        with (num_threads(p.threads) as threads, model_mode(model, training=False),
              _on_device(model, device), torch.inference_mode()):
            for i in range(p.warmup + p.repeats):
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(*inputs)
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= p.warmup:
                    times.append((time.perf_counter() - start) * 1e3)
        return summarise(times, threads=threads, warmup=p.warmup, torch=torch.__version__)


@contextlib.contextmanager
def torch_seed(seed: int) -> Iterator[None]:
    """Draw from torch's global generator seeded with ``seed``, restoring it after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _space_key(candidate: Candidate) -> dict[str, Any]:
    """The space's settings: what, beside the architecture, decides the exported weights."""
    return {"space": candidate.space.name, "params": candidate.space.params.to_dict()}


def cached_export(candidate: Candidate, model, inputs, ctx: Context, fmt: str,
                  part: str | None = None) -> ExportResult:
    """The candidate's model (or ``part``) exported in ``fmt``, checked against PyTorch,
    cached in the run directory by architecture, part, format, input shapes and seed."""
    from nasframe.context import content_hash
    from nasframe.deploy import SUFFIX, ExportResult, export_module, exportable

    key = content_hash({"arch": candidate.arch.id, "part": part, "format": fmt,
                        "shapes": input_shapes(inputs), "seed": candidate.seed,
                        # runs sharing a cache_dir: the same architecture, another space's weights
                        "space": _space_key(candidate)})
    path = Path(ctx.cache.root) / "exports" / f"{candidate.arch.id}-{key}{SUFFIX[fmt]}"
    if path.exists() and Path(str(path) + ".json").exists():
        return ExportResult.read(path)
    ready = exportable(candidate.space, candidate.arch, model, part)
    return export_module(ready, inputs, fmt, path)


def cached_export_quantised(candidate: Candidate, model, inputs, ctx: Context) -> ExportResult:
    """The space's quantised (QDQ) graph of the candidate, checked, cached in the run."""
    from nasframe.context import content_hash
    from nasframe.deploy import ExportResult

    key = content_hash({"arch": candidate.arch.id, "graph": "quantised",
                        "shapes": input_shapes(inputs), "seed": candidate.seed,
                        "space": _space_key(candidate)})
    path = Path(ctx.cache.root) / "exports" / f"{candidate.arch.id}-{key}-qdq.onnx"
    if path.exists() and Path(str(path) + ".json").exists():
        return ExportResult.read(path)
    return candidate.space.export_quantised(candidate.arch, model, inputs, path)


#: the anchor's runner of this process: {(run directory, anchor key): runner}
_ANCHORS: dict[tuple[str, str], Any] = {}


def _anchor_latency(path, run, repeats: int, options) -> dict[str, Any]:
    """The anchor's own latency for this run: read from ``path``, else timed now (the
    median of ``repeats`` passes after the backend's warmup) and written there, under a
    lock so that parallel workers and a resumed run share one figure."""
    import fcntl
    import json
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        value = summarise(time_passes(run, options.warmup, repeats))
        doc = {"ms": value.value, "p10_ms": value.details["p10_ms"],
               "p90_ms": value.details["p90_ms"], "repeats": value.details["repeats"], "time": time.time()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
        return doc


class Latency(PartObjective):
    """Median time of one forward pass, in milliseconds, on a latency backend.

    ``backend`` names a registered latency backend (``torch`` built in;
    ``nasframe plugins`` lists the others) and ``options`` are its params
    (``nasframe plugins BACKEND``). Inputs: ``input_shape`` is the full shape
    including the batch (e.g. ``[1, 3, 64, 64]``); without it, the space's
    ``input_shape`` with ``batch_size``. ``part`` times that model part of the
    search space instead of the main model. Details: the backend's figures
    (p10/p90, threads, ...), its runtime, and for exported graphs the export
    check (max abs/rel error against PyTorch).
    """

    name = "latency"
    direction = "min"
    kind = "measured"
    unit = "ms"
    cost = 10.0
    small_params = {"options": {"repeats": 3, "warmup": 1}}

    class Params(PartParams):
        backend: str = Field("torch", min_length=1, max_length=64)
        """Where to time it: torch, or a registered backend (onnxruntime, qai_hub, ...)."""
        options: dict[str, Any] = {}
        """The backend's params (see `nasframe plugins BACKEND`)."""
        input_shape: Shape | None = None
        """Full input shape, batch included (default: the space's, with batch_size)."""
        batch_size: Int = Field(1, ge=1, le=65_536)
        """Batch of the default input (ignored with input_shape)."""
        graph: Literal["float", "quantised"] = "float"
        """Time the float model, or the space's deployable quantised graph (QDQ ONNX with
        the architecture's bit widths; needs an ONNX backend: onnxruntime, qai_hub)."""
        anchor: str | None = Field(None, min_length=1, max_length=128)
        """A reference architecture of the space (ENS: ``teacher``) timed alternately
        with each candidate: the value is the candidate's median time over the anchor's
        in the same passes, times the anchor's own latency (timed once per run,
        ``anchor_repeats`` passes, kept in the run directory). A slow or fast phase of
        the machine then falls on both, and candidates timed minutes apart compare as if
        timed together. Each measurement takes twice the passes. Needs a backend that
        times in this process (torch, onnxruntime)."""
        anchor_repeats: Int = Field(60, ge=1, le=100_000)
        """Passes of the anchor for its own latency (timed once per run, at its first
        measurement)."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        from nasframe.plugins import get_plugins

        from nasframe.errors import ConfigError

        registry = get_plugins().latency_backends
        try:
            cls = registry.get(self.params.backend)
        except ConfigError as err:
            raise ParamError("backend", str(err)) from None
        options = parse_params(cls.Params, self.params.options, "options")
        try:
            self.backend: LatencyBackend = cls(options)
        except ParamError as err:
            raise ParamError(f"options.{err.field}", err.message) from None
        self.poll_every = self.backend.poll_every
        self.input_shape = self.params.input_shape
        self.batch_size = self.params.batch_size
        if self.params.graph == "quantised":
            if self.backend.export_format != "onnx":
                raise ParamError("graph", f"a quantised graph is a QDQ ONNX file; backend "
                                 f"{self.backend.name!r} does not take ONNX: use backend "
                                 "onnxruntime or qai_hub, or graph: float")
            if self.part is not None:
                raise ParamError("graph", "a quantised graph is of the whole model; remove "
                                 "part, or use graph: float")
        if self.params.anchor is not None:
            if not self.backend.paired or self.backend.asynchronous:
                raise ParamError("anchor", f"backend {self.backend.name!r} cannot time two "
                                 "models alternately; an anchor needs a backend that times in "
                                 "this process (torch, onnxruntime), or remove anchor")
            if self.params.graph == "quantised":
                raise ParamError("anchor", "an anchor is timed as a float graph; remove anchor, "
                                 "or use graph: float")

    def check_space(self, space):
        problem = super().check_space(space)
        if problem is not None or self.params.anchor is None:
            return problem
        refs = tuple(space.reference_architectures())
        if self.params.anchor in refs:
            return None
        from nasframe.errors import did_you_mean

        return (f"params.anchor: search space '{space.name}' has no reference architecture "
                f"{self.params.anchor!r}{did_you_mean(self.params.anchor, refs)}; "
                + (f"available: {', '.join(refs)}" if refs else "it has none: remove anchor"))

    def requirements(self):
        from nasframe.capabilities import QuantisedGraph

        reqs = super().requirements()
        return (*reqs, QuantisedGraph) if self.params.graph == "quantised" else reqs

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def device(self, ctx: Context) -> str:
        return self.backend.device()

    def provenance(self, ctx, details=None):
        from nasframe import Provenance

        return Provenance(self.kind, self.backend.name, self.backend.device(),
                          {"runtime": self.backend.runtime(), **dict(details or {})})

    def _export(self, candidate: Candidate, model, inputs, ctx: Context) -> ExportResult:
        return cached_export(candidate, model, inputs, ctx, self.backend.export_format,
                             self.part)

    def _export_quantised(self, candidate: Candidate, model, inputs, ctx: Context) -> ExportResult:
        return cached_export_quantised(candidate, model, inputs, ctx)

    def evaluate(self, candidate: Candidate, ctx: Context) -> Value | Deferred:
        model = candidate.module(self.part)
        quantised = self.params.graph == "quantised"
        if quantised:
            with torch_seed(candidate.seed):
                inputs = candidate.space.quantised_inputs(candidate.arch, model, self.input_shape,
                                                          self.batch_size)
        else:
            inputs = candidate.example_inputs(self.input_shape, batch_size=self.batch_size,
                                              part=self.part)
        exported = None
        details: dict[str, Any] = {"input_shape": input_shapes(inputs)}
        if self.part is not None:
            details["part"] = self.part
        if self.backend.export_format is not None:
            exported = (self._export_quantised(candidate, model, inputs, ctx) if quantised
                        else self._export(candidate, model, inputs, ctx))
            details["export"] = {"format": exported.format, "graph_hash": exported.graph_hash,
                                 "max_rel_error": exported.max_rel_error}
            if quantised:
                details["export"].update(graph="quantised", note=exported.note)
        if self.backend.asynchronous:
            return Deferred(self.backend.request(exported, ctx), details)
        if self.params.anchor is not None:
            value = self._anchored(candidate, model, inputs, exported, ctx)
        else:
            value = self.backend.measure(model, inputs, ctx, exported)
        return Value(value.value, {**details, **value.details})

    def _anchor_key(self, anchor_id: str, inputs) -> str:
        import hashlib
        import json

        text = json.dumps({"anchor": self.params.anchor, "id": anchor_id, "part": self.part,
                           "backend": self.backend.name, "device": self.backend.device(),
                           "options": self.backend.params.model_dump(mode="json"),
                           "inputs": input_shapes(inputs)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _anchored(self, candidate: Candidate, model, inputs, exported, ctx: Context) -> Value:
        """The candidate timed alternately with the anchor (see ``Params.anchor``)."""
        import statistics

        from nasframe import Candidate
        from nasframe.backends import paired_times

        p, backend = self.params, self.backend
        arch = candidate.space.reference_architectures()[p.anchor]
        key = self._anchor_key(arch.id, inputs)
        anchor_run = _ANCHORS.get((str(ctx.run_dir), key))
        if anchor_run is None:
            ref = Candidate(candidate.space, arch, seed=candidate.seed)
            ref_model = ref.module(self.part)
            ref_export = self._export(ref, ref_model, inputs, ctx) if backend.export_format else None
            anchor_run = backend.runner(ref_model, inputs, ctx, ref_export)[0]
            _ANCHORS.clear()                  # one anchor per process: the current run's
            _ANCHORS[(str(ctx.run_dir), key)] = anchor_run
        base = _anchor_latency(ctx.run_dir / "latency_anchor" / f"{key}.json", anchor_run,
                               p.anchor_repeats, backend.params)
        run, settings = backend.runner(model, inputs, ctx, exported)
        mine, theirs = paired_times(run, anchor_run, backend.params.warmup, backend.params.repeats)
        ratio = statistics.median(mine) / statistics.median(theirs)
        summary = summarise(mine)
        return Value(ratio * base["ms"], {
            **settings,
            "anchor": {"name": p.anchor, "id": arch.id, "ms": base["ms"], "ratio": ratio,
                       "window_ms": statistics.median(theirs), "repeats": base["repeats"]},
            "window_ms": summary.value, "p10_ms": summary.details["p10_ms"],
            "p90_ms": summary.details["p90_ms"], "repeats": len(mine),
            "warmup": backend.params.warmup})

    def submit(self, request, ctx):
        return self.backend.submit(request, ctx)

    def collect(self, job, ctx):
        return self.backend.poll(job, ctx)
