"""The phone's NPU compiler, offline: an ONNX graph compiled for a Snapdragon's Hexagon NPU (HTP)
by ONNX Runtime's QNN execution provider, run on the HTP emulator, compared with fp32.

``onnxruntime-qnn`` (the ``npu`` extra) ships Qualcomm's QNN libraries; its HTP backend
(``libQnnHtp.so``) compiles a graph for a named SoC and, on an x86 machine, runs the compiled
graph emulated. :func:`check_graph` does what a deployment needs to know before a phone
sees the graph:

1. **Compile** it for the target (``soc_model``, ``htp_arch``) with CPU fallback off
   (``session.disable_cpu_ep_fallback = 1``): a node the NPU cannot take is an error, not a
   silent CPU run. Float graphs are compiled at fp16 (``enable_htp_fp16_precision``), QDQ
   graphs as quantised. The compiled graph is saved as ONNX Runtime's EP-context model
   (``<name>_ctx.onnx``, ``ep.context_enable = 1``) beside its QNN context binary
   (``<name>_ctx_qnn.bin``): the artefact QNN's runtime loads, the kind AI Hub produces.
2. **Unsupported nodes**: QNN EP's framework op trace (``enable_framework_op_trace``) lists
   every ONNX node the EP refused, with its op type and the EP's reason, and how the others
   map onto QNN ops.
3. **Fidelity**: the compiled graph runs on the emulated HTP and its outputs are compared
   with fp32: the same graph on ONNX Runtime's CPU execution provider, or, for a QDQ graph,
   a reference the caller gives (the float model's output) as well. PSNR in dB (the peak
   is the reference's range, max - min; the worst output counts) and the largest absolute
   error.

The emulator computes what the NPU computes (its fp16 and integer arithmetic); it does not
time it: see docs/device.md for what its profiling cycles are worth.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Snapdragon name -> (chip, QNN soc_model, Hexagon HTP architecture), from QNN's list of
#: supported Snapdragon devices
SOCS: dict[str, tuple[str, int, int]] = {
    "Snapdragon 8 Elite Gen 5": ("SM8850", 87, 81),
    "Snapdragon 8 Elite": ("SM8750", 69, 79),
    "Snapdragon 8s Gen 4": ("SM8735", 85, 79),
    "Snapdragon 8 Gen 3": ("SM8650", 57, 75),
    "Snapdragon 8s Gen 3": ("SM8635", 68, 73),
    "Snapdragon 8 Gen 2": ("SM8550", 43, 73),
    "Snapdragon 8+ Gen 1": ("SM8475", 42, 69),
    "Snapdragon 8 Gen 1": ("SM8450", 36, 69),
    "Snapdragon X Elite": ("SC8380XP", 60, 73),
}
DEFAULT_SOC = "Snapdragon 8 Elite"
#: PSNR reported for outputs equal to the last bit
PSNR_IDENTICAL = 200.0
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class NpuError(RuntimeError):
    """The NPU toolchain could not be used (not installed, no QNN device)."""


@dataclass(frozen=True)
class HtpTarget:
    """The SoC a graph is compiled for."""

    soc: str
    soc_model: int
    htp_arch: int

    @classmethod
    def resolve(cls, soc: str = DEFAULT_SOC, soc_model: int | None = None,
                htp_arch: int | None = None) -> HtpTarget:
        """A target by Snapdragon name or chip (``Snapdragon 8 Elite``, ``SM8750``, case and
        spaces ignored); ``soc_model``/``htp_arch`` override the table (a SoC not in it:
        give both). A ValueError names the choices."""
        key = re.sub(r"\s+", " ", soc.strip()).lower()
        for name, (chip, model, arch) in SOCS.items():
            if key in (name.lower(), chip.lower()):
                return cls(name, soc_model if soc_model is not None else model,
                           htp_arch if htp_arch is not None else arch)
        if soc_model is not None and htp_arch is not None:
            return cls(soc.strip(), soc_model, htp_arch)
        known = ", ".join(f"{n} ({c})" for n, (c, _, _) in SOCS.items())
        raise ValueError(f"unknown SoC {soc!r}; use one of {known}, or give soc_model and "
                         "htp_arch for another (QNN's table of supported Snapdragon devices)")

    def describe(self) -> str:
        return (f"{self.soc} (soc_model {self.soc_model}, Hexagon v{self.htp_arch} HTP), "
                "emulated on x86")


@dataclass
class NpuReport:
    """What :func:`check_graph` found (JSON-ready with :meth:`to_dict`)."""

    graph: str
    target: dict[str, Any]
    quantised: bool
    precision: str
    compiles: bool
    compile_s: float
    nodes: int
    unsupported: list[dict[str, str]] = field(default_factory=list)
    error: str = ""
    run_s: float | None = None
    #: NPU output vs fp32 (the given reference, else the graph on ORT's CPU EP)
    psnr_db: float | None = None
    max_abs_error: float | None = None
    reference: str = ""
    #: NPU output vs the same graph on ORT's CPU EP (differs from the above with a reference)
    cpu_psnr_db: float | None = None
    cpu_max_abs_error: float | None = None
    qnn_ops: int | None = None
    context_model: str | None = None
    context_binary: str | None = None
    profile: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def unsupported_ops(self) -> dict[str, int]:
        """Op type -> number of refused nodes."""
        return dict(sorted(Counter(u["op_type"] for u in self.unsupported).items()))

    def summary(self) -> str:
        soc = self.target.get("soc", "?")
        if self.compiles and self.psnr_db is None:
            return f"compiles for {soc} in {self.compile_s:.1f} s, but {self.error}"
        if not self.compiles:
            ops = ", ".join(f"{k} x{v}" for k, v in self.unsupported_ops.items())
            return (f"does not compile for {soc}: "
                    + (f"{len(self.unsupported)} unsupported node(s) ({ops})" if ops
                       else self.error[:200]))
        return (f"compiles for {soc} in {self.compile_s:.1f} s ({self.precision}); emulated output "
                f"vs fp32 {self.psnr_db:.1f} dB PSNR, max abs error {self.max_abs_error:.3g}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unsupported_ops": self.unsupported_ops}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> NpuReport:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in names})


def versions() -> dict[str, str]:
    """onnxruntime, onnxruntime-qnn and the QNN SDK it ships."""
    import onnxruntime as ort
    import onnxruntime_qnn as qnn

    info = getattr(qnn, "build_and_package_info", None)
    return {"onnxruntime": ort.__version__, "onnxruntime_qnn": qnn.__version__,
            "qnn_sdk": str(getattr(info, "qnn_version", "unknown"))}


def qnn_devices() -> list[Any]:
    """ONNX Runtime's QNN EP devices, registering the EP library once per process."""
    try:
        import onnxruntime as ort
        import onnxruntime_qnn as qnn
    except ImportError as err:
        raise NpuError(f"the NPU check needs onnxruntime-qnn ({err}); install with: "
                       "pip install 'nasframe[npu]'") from None
    name = qnn.get_ep_name()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        ort.register_execution_provider_library(name, qnn.get_library_path())
        devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
    if not devices:
        raise NpuError(f"onnxruntime-qnn {qnn.__version__} registered no {name} device")
    return devices


def psnr_db(reference: Any, got: Any) -> float:
    """PSNR of ``got`` against ``reference`` in dB; the peak is the reference's range."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(got, dtype=np.float64)
    mse = float(np.mean((ref - out) ** 2)) if ref.size else 0.0
    if not math.isfinite(mse):
        return -math.inf
    if mse == 0.0:
        return PSNR_IDENTICAL
    peak = float(ref.max() - ref.min()) if ref.size else 0.0
    peak = peak or float(np.max(np.abs(ref))) or 1.0
    return min(PSNR_IDENTICAL, 10.0 * math.log10(peak * peak / mse))


def compare(reference: Sequence[Any], got: Sequence[Any]) -> tuple[float, float]:
    """(worst PSNR over the outputs in dB, largest absolute error)."""
    import numpy as np

    worst, max_abs = PSNR_IDENTICAL, 0.0
    for r, g in zip(reference, got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64).reshape(r.shape)
        worst = min(worst, psnr_db(r, g))
        if r.size:
            err = float(np.max(np.abs(r - g)))
            max_abs = max(max_abs, err if math.isfinite(err) else math.inf)
    return worst, max_abs


_NP_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
             "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def make_feed(session: Any, inputs: Sequence[Any] | None, seed: int = 0) -> dict[str, Any]:
    """The session's inputs by name: ``inputs`` (arrays or tensors, in the graph's input
    order), else seeded random ones (floats N(0, 1), integers and booleans zero)."""
    import numpy as np

    specs = session.get_inputs()
    if inputs is not None:
        arrays = [x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
                  for x in inputs]
        if len(arrays) != len(specs):
            raise ValueError(f"the graph has {len(specs)} input(s) "
                             f"({', '.join(s.name for s in specs)}); {len(arrays)} given")
        return {s.name: a for s, a in zip(specs, arrays)}
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape]
        dtype = _NP_TYPES.get(s.type, "float32")
        feed[s.name] = (rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                        else np.zeros(shape, dtype=dtype))
    return feed


def _session_options(strict: bool, context: Path | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1" if strict else "0")
    if context is not None:
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_file_path", str(context))
        so.add_session_config_entry("ep.context_embed_mode", "0")
    return so


def provider_options(target: HtpTarget, trace_dir: Path | None = None,
                     profile_csv: Path | None = None) -> dict[str, str]:
    """QNN EP options: the HTP backend for ``target``, fp16 for float ops, the op trace and
    the HTP's detailed profile when asked."""
    import onnxruntime_qnn as qnn

    opts = {"backend_path": qnn.get_qnn_htp_path(), "soc_model": str(target.soc_model),
            "htp_arch": str(target.htp_arch), "enable_htp_fp16_precision": "1"}
    if trace_dir is not None:
        opts.update(enable_framework_op_trace="1", framework_op_trace_dir=str(trace_dir))
    if profile_csv is not None:
        opts.update(profiling_level="detailed", profiling_file_path=str(profile_csv))
    return opts


def htp_session(path: str | Path, target: HtpTarget, *, strict: bool = True,
                context: Path | None = None, trace_dir: Path | None = None,
                profile_csv: Path | None = None):
    """An ONNX Runtime session on the QNN EP's HTP backend for ``target`` (compiles the graph;
    CPU fallback off when ``strict``; writes the EP-context model to ``context`` when given)."""
    import onnxruntime as ort

    so = _session_options(strict, context)
    so.add_provider_for_devices(qnn_devices(), provider_options(target, trace_dir, profile_csv))
    with _native_stdout_to_stderr():
        return ort.InferenceSession(str(path), so)


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """The HTP emulator's native library prints notices on the process's stdout (file
    descriptor 1), which would corrupt JSON a command prints there: send them to stderr."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:          # no real stdout (embedded interpreters): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return (text.splitlines() or [type(err).__name__])[0][:500]


def _read_trace(trace_dir: Path) -> dict[str, Any]:
    path = trace_dir / "qnn_op_trace.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def context_binary(context_model: Path) -> Path | None:
    """The QNN context binary an EP-context model points to (``ep_cache_context``)."""
    import onnx

    model = onnx.load(str(context_model), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "EPContext":
            for a in node.attribute:
                if a.name == "ep_cache_context":
                    return context_model.parent / a.s.decode()
    return None


def read_profile(csv_path: Path) -> dict[str, Any] | None:
    """The HTP's detailed profile of one execution: total accelerator cycles and the
    cycles of each QNN op (``name:OpId`` -> cycles), from the CSV QNN EP writes."""
    import csv

    if not csv_path.is_file():
        return None
    total, ops = None, {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            what = row.get("Event Identifier", "")
            unit = row.get("Unit of Measurement", "")
            try:
                value = int(row.get("Time", ""))
            except ValueError:
                continue
            if unit == "CYCLES" and what == "Accelerator (execute) time (cycles)":
                total = value   # the last execution's
            elif unit == "CYCLES" and row.get("Message") == "NODE":
                ops[what.removesuffix(" (cycles)")] = value
    return {"execute_cycles": total, "op_cycles": ops}


def check_graph(path: str | Path, target: HtpTarget | None = None, *,
                inputs: Sequence[Any] | None = None, reference: Sequence[Any] | None = None,
                context: str | Path | None = None, seed: int = 0, profile: bool = False,
                threads: int | None = None) -> NpuReport:
    """Compile the ONNX graph at ``path`` for ``target`` (default Snapdragon 8 Elite) with CPU
    fallback off, run it on the emulated HTP and compare with fp32 (see the module docstring).

    ``inputs``: the graph's inputs in order (default seeded random ones); ``reference``:
    fp32 outputs to compare with (default: the graph on ORT's CPU EP; give the float model's
    outputs for a QDQ graph); ``context``: where to write the EP-context model
    (``..._ctx.onnx``, its ``_qnn.bin`` beside it; default nowhere kept); ``profile``: the
    HTP's detailed per-op cycle profile of the run (:func:`read_profile`).
    Never raises for a graph the NPU refuses: ``compiles`` is False and ``unsupported``
    lists the refused nodes (name, op type, the EP's reason)."""
    import onnx

    from nasframe.deploy import ort_session, qdq_session

    target = target or HtpTarget.resolve()
    path = Path(path)
    qnn_devices()
    model = onnx.load(str(path), load_external_data=False)
    quantised = any(n.op_type in QDQ_OPS for n in model.graph.node)
    nodes = len(model.graph.node)
    del model
    # a QDQ graph as the graph says (ORT's fused int8 kernels may saturate: qdq_session)
    cpu = qdq_session(path, threads) if quantised else ort_session(path, threads)
    feed = make_feed(cpu, inputs, seed)
    cpu_out = cpu.run(None, feed)
    del cpu
    report = NpuReport(graph=str(path), target=asdict(target), quantised=quantised,
                       precision="qdq" if quantised else "fp16", compiles=False, compile_s=0.0,
                       nodes=nodes, versions=versions())
    with tempfile.TemporaryDirectory(prefix="nasframe-npu-") as tmp:
        ctx_path = Path(context) if context else Path(tmp) / "graph_ctx.onnx"
        ctx_path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (ctx_path, ctx_path.with_name(ctx_path.stem + "_qnn.bin")):
            stale.unlink(missing_ok=True)   # ORT does not overwrite an EP-context model
        trace_dir = Path(tmp) / "trace"
        start = time.perf_counter()
        try:
            session = htp_session(path, target, context=ctx_path, trace_dir=trace_dir)
        except Exception as err:  # noqa: BLE001 - the compiler's refusal is the finding
            session, report.error = None, _first_line(err)
        report.compile_s = time.perf_counter() - start
        trace = _read_trace(trace_dir)
        report.unsupported = [{"name": u.get("node_name", ""), "op_type": u.get("op_type", ""),
                               "reason": u.get("reason", "")}
                              for u in trace.get("unsupported_nodes", [])]
        report.qnn_ops = trace.get("summary", {}).get("total_qnn_ops")
        if session is None:   # a partial EP-context model (nodes left to a CPU) is no artefact
            for partial in (ctx_path, ctx_path.with_name(ctx_path.stem + "_qnn.bin")):
                partial.unlink(missing_ok=True)
            return report
        report.compiles = True
        if context:
            report.context_model = str(ctx_path)
            binary = context_binary(ctx_path) if ctx_path.is_file() else None
            report.context_binary = str(binary) if binary else None
        start = time.perf_counter()
        try:
            with _native_stdout_to_stderr():
                npu_out = session.run(None, feed)
        except Exception as err:  # noqa: BLE001 - compiled, but the HTP could not run it
            report.error = f"the compiled graph failed on the emulated HTP: {_first_line(err)}"
            return report
        finally:
            del session
        report.run_s = time.perf_counter() - start
        report.cpu_psnr_db, report.cpu_max_abs_error = compare(cpu_out, npu_out)
        if reference is not None:
            ref = [r.detach().cpu().numpy() if hasattr(r, "detach") else r for r in reference]
            report.psnr_db, report.max_abs_error = compare(ref, npu_out)
            report.reference = "given fp32 reference"
        else:
            report.psnr_db, report.max_abs_error = report.cpu_psnr_db, report.cpu_max_abs_error
            report.reference = "the same graph on onnxruntime's CPU EP (fp32)"
        if profile and ctx_path.is_file():
            report.profile = profile_context(ctx_path, target, feed, Path(tmp) / "profile.csv")
    return report


def profile_context(context_model: Path, target: HtpTarget, feed: dict[str, Any],
                    csv_path: Path) -> dict[str, Any] | None:
    """Run a compiled EP-context model once more with the HTP's detailed profiling; the
    cycles it reports (:func:`read_profile`)."""
    session = htp_session(context_model, target, profile_csv=csv_path)
    with _native_stdout_to_stderr():
        session.run(None, feed)
    del session
    return read_profile(csv_path)
