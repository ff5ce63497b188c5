"""Deployable export of a model: ONNX, TorchScript or an ExportedProgram, checked on the spot.

:func:`export_module` writes the file, then runs it beside PyTorch on the same
inputs and records the largest absolute and relative difference (relative to
the largest magnitude of PyTorch's output); ONNX is run in ONNX Runtime. A
metadata file ``<file>.json`` beside it keeps the input and output names and
shapes (a device job's input specs), the op types of the graph, the check,
the versions used and a content hash of the graph (device-job caches key on
it). A model that cannot be exported fails with a
:class:`~nasframe.errors.ExportError` naming the op when the exporter names one.

The model is put in eval mode and given to the exporter as it is: a search
space with custom kernels declares :class:`~nasframe.capabilities.Exportable`
and swaps them for plain tensor ops in ``export_module`` (see
:func:`exportable`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasframe.errors import NasframeError

if TYPE_CHECKING:
    import torch

    from nasframe.architecture import Architecture
    from nasframe.backends import CheckReport, DeployCheck
    from nasframe.context import Context
    from nasframe.experiment import Experiment
    from nasframe.space import SearchSpace

FORMATS = ("onnx", "torchscript", "exported_program")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
#: the default ONNX opset
OPSET = 18


class ExportError(NasframeError):
    """A model could not be exported (the message names the op when known)."""


@dataclass
class ExportResult:
    """What :func:`export_module` wrote and checked."""

    path: str
    format: str
    input_names: list[str]
    input_shapes: list[list[int]]
    input_dtypes: list[str]
    output_names: list[str]
    output_shapes: list[list[int]]
    max_abs_error: float
    max_rel_error: float
    seconds: float
    graph_hash: str
    ops: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    note: str = ""
    #: deploy check name -> its report (:meth:`nasframe.backends.CheckReport.to_dict`)
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> ExportResult:
        """The metadata stored beside an exported file."""
        return cls(**json.loads(Path(str(path) + ".json").read_text()))

    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{name: (shape, dtype)}``, the form of a device job's input specs."""
        return {n: (tuple(s), d) for n, s, d in zip(self.input_names, self.input_shapes,
                                                    self.input_dtypes)}


def exportable(space: SearchSpace, arch: Architecture, model: torch.nn.Module,
               part: str | None = None) -> torch.nn.Module:
    """``model`` made ready for export by its space (when the space declares
    :class:`~nasframe.capabilities.Exportable`), in eval mode."""
    from nasframe.capabilities import Exportable

    if isinstance(space, Exportable):
        model = space.export_module(arch, model, part)
    return model.eval()


def _flat_tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _flat_tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _flat_tensors(x)]
    if hasattr(obj, "to_tuple"):
        return _flat_tensors(obj.to_tuple())
    return []


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from (outermost first)."""
    out: list[BaseException] = []
    while err is not None and err not in out and len(out) < 10:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _failed_op(err: BaseException) -> str:
    """The op an exporter complains about, when its message (or a cause's) names one."""
    text = " ".join(f"{type(e).__name__}: {e}" for e in _chain(err))
    for pattern in (r"(aten::[\w.]+)", r"(prim::[\w.]+)", r"op='([\w.]+)'",
                    r"target=torch\.ops\.([\w.]+)", r"operator ['\"]?([\w:.]+)",
                    r"Unsupported(?: FX)? nodes?: .*?([\w.]+::[\w.]+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return ""


def _reason(err: BaseException) -> str:
    """The first line of the innermost error that says something (the exporters wrap theirs)."""
    for e in reversed(_chain(err)):
        line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if line:
            return re.sub(r"\x1b\[[0-9;]*m", "", line)
    return type(err).__name__


#: models with more weight bytes than this keep them in ``<file>.data`` beside the graph
#: (a protobuf file cannot exceed 2 GiB: the SD 1.5 U-Net in float32 is 3.4 GB)
EXTERNAL_DATA_BYTES = 1 << 30


def _hash_file(path: Path) -> str:
    """Content hash of the file, and of its external weights file when it has one."""
    h = hashlib.sha256()
    for p in (path, Path(str(path) + ".data")):
        if not p.exists():
            continue
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _compare(reference: list[Any], got: list[Any]) -> tuple[float, float]:
    import numpy as np

    if len(reference) != len(got):
        raise ExportError(f"the exported model returns {len(got)} output(s), PyTorch "
                          f"{len(reference)}")
    max_abs, scale = 0.0, 0.0
    for r, g in zip(reference, got):
        r = np.asarray(r, dtype=np.float64)
        g = np.asarray(g, dtype=np.float64)
        if r.shape != g.shape:
            raise ExportError(f"the exported model's output has shape {g.shape}, PyTorch's "
                              f"{r.shape}")
        if r.size:
            max_abs = max(max_abs, float(np.max(np.abs(r - g))))
            scale = max(scale, float(np.max(np.abs(r))))
    return max_abs, max_abs / scale if scale > 0 else max_abs


def _names(prefix: str, n: int) -> list[str]:
    return [prefix] if n == 1 else [f"{prefix}_{i}" for i in range(n)]


def _forward_names(model: Any, inputs: tuple[Any, ...], n: int) -> list[str] | None:
    """The names of ``model.forward``'s parameters when each input is one plain tensor
    (``sample``, ``timestep``, ``encoder_hidden_states``), else None."""
    import inspect

    import torch

    if len(inputs) != n or not all(isinstance(t, torch.Tensor) for t in inputs):
        return None
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params[:n]]
    return names if len(names) == n and len(set(names)) == n else None


def export_module(model: torch.nn.Module, inputs: Sequence[Any], fmt: str, path: str | Path,
                  *, input_names: Sequence[str] | None = None, opset: int = OPSET,
                  check: bool = True, threads: int | None = None) -> ExportResult:
    """Export ``model`` (called as ``model(*inputs)``) to ``path`` in format ``fmt`` and
    check it against PyTorch on ``inputs``; writes ``<path>.json``."""
    import torch

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = tuple(inputs)
    tensors = _flat_tensors(inputs)
    in_names = (list(input_names) if input_names
                else _forward_names(model, inputs, len(tensors)) or _names("input", len(tensors)))
    model = model.eval()
    with torch.no_grad():
        reference = [t.detach().cpu().numpy() for t in _flat_tensors(model(*inputs))]
    out_names = _names("output", len(reference))
    start = time.perf_counter()
    note = ""
    try:
        if fmt == "onnx":
            note = _export_onnx(model, inputs, path, in_names, out_names, opset)
        elif fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
            traced.save(str(path))
        else:
            program = torch.export.export(model, inputs)
            torch.export.save(program, str(path))
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter failure, with the op named
        op = _failed_op(err)
        raise ExportError(f"{fmt} export failed" + (f" at op {op}" if op else "")
                          + f": {_reason(err)[:300]}") from err
    seconds = time.perf_counter() - start
    ops: dict[str, int] = {}
    versions = {"torch": torch.__version__}
    max_abs = max_rel = float("nan")
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False)
        ops = dict(sorted(Counter(n.op_type for n in graph.graph.node).items()))
        in_names = [i.name for i in graph.graph.input]
        out_names = [o.name for o in graph.graph.output]
        versions["onnx"] = onnx.__version__
    if check:
        got = _run_exported(fmt, path, inputs, tensors, in_names, threads, versions)
        max_abs, max_rel = _compare(reference, got)
    result = ExportResult(
        path=str(path), format=fmt, input_names=in_names,
        input_shapes=[list(t.shape) for t in tensors],
        input_dtypes=[str(t.dtype).removeprefix("torch.") for t in tensors],
        output_names=out_names, output_shapes=[list(r.shape) for r in reference],
        max_abs_error=max_abs, max_rel_error=max_rel, seconds=seconds,
        graph_hash=_hash_file(path), ops=ops, versions=versions, note=note)
    Path(str(path) + ".json").write_text(json.dumps(result.to_dict(), indent=1))
    return result


class _NoTorchvisionNotice(logging.Filter):
    """The dynamo exporter logs one warning per torchvision op when torchvision is not
    installed (nasframe does not use it): four lines per export, hiding the progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


def _quiet_exporter_logs() -> None:
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    if not any(isinstance(f, _NoTorchvisionNotice) for f in log.filters):
        log.addFilter(_NoTorchvisionNotice())


def _export_onnx(model, inputs, path: Path, in_names, out_names, opset: int) -> str:
    """torch.onnx.export with the dynamo exporter; the TorchScript-based one as a fallback."""
    import warnings

    import torch

    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    external = size > EXTERNAL_DATA_BYTES
    Path(str(path) + ".data").unlink(missing_ok=True)
    _quiet_exporter_logs()
    try:
        with warnings.catch_warnings():   # the exporter's own deprecation notices
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset,
                                        input_names=in_names, output_names=out_names,
                                        external_data=external, verbose=False)
        program.save(str(path), external_data=external)
        return "dynamo exporter" + (f" (weights in {path.name}.data)" if external else "")
    except Exception as first:  # noqa: BLE001 - retried with the older exporter
        try:
            torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=opset,
                              input_names=in_names, output_names=out_names)
        except Exception:
            raise first from None
        return f"TorchScript exporter (dynamo failed: {type(first).__name__})"


def ort_session(path: str | Path, threads: int | None = None, optimize: str = "all",
                spinning: bool = False):
    """An ONNX Runtime CPU session (``threads`` intra-op threads, graph optimisation
    ``optimize`` = disable|basic|extended|all, spin-waiting off unless asked)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimize]
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def qdq_session(path: str | Path, threads: int | None = None):
    """A CPU session that runs a QDQ graph as the graph says (quantise, dequantise, then the
    float op), for fidelity checks: graph optimisation ``basic``. At ``extended``/``all``
    ONNX Runtime fuses Q/DQ pairs into its int8 kernels, whose u8s8 arithmetic can saturate
    on x86 CPUs without VNNI (AVX2): there the output is not what the encodings specify
    (measured on an AMD EPYC: 27-33 dB from the float model where the encodings give 42-46
    dB, and where the emulated Hexagon NPU agrees with the encodings). Latency is timed on
    the optimised session, as the runtime would run it."""
    return ort_session(path, threads, optimize="basic")


def _run_exported(fmt: str, path: Path, inputs, tensors, in_names, threads, versions) -> list[Any]:
    import torch

    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort_session(path, threads)
        names = [i.name for i in sess.get_inputs()]
        feed = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
        versions["onnxruntime"] = ort.__version__
        return sess.run(None, feed)
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))
        with torch.no_grad():
            return [t.cpu().numpy() for t in _flat_tensors(loaded(*inputs))]
    program = torch.export.load(str(path))
    with torch.no_grad():
        return [t.cpu().numpy() for t in _flat_tensors(program.module()(*inputs))]


def run_checks(result: ExportResult, checks: Sequence[DeployCheck],
               inputs: Sequence[Any] | None = None) -> list[CheckReport]:
    """Run each deploy check on the exported file (on ``inputs``, the export's example
    inputs); their reports join ``result.checks`` and the file's ``.json``."""
    reports = []
    for check in checks:
        if result.format not in check.formats:
            raise ExportError(f"deploy check '{check.name}' takes {', '.join(check.formats)} "
                              f"files, not {result.format}")
        report = check.check(result, None if inputs is None else tuple(inputs))
        result.checks[check.name] = report.to_dict()
        reports.append(report)
    if reports:
        Path(str(result.path) + ".json").write_text(json.dumps(result.to_dict(), indent=1,
                                                               default=str))
    return reports


def export_architecture(exp: Experiment, arch: Architecture, fmt: str, path: str | Path, *,
                        part: str | None = None, input_shape: Sequence[int] | None = None,
                        seed: int | None = None, threads: int | None = None,
                        checks: Sequence[DeployCheck] = ()) -> ExportResult:
    """Export ``arch`` of ``exp``'s search space (or its model part ``part``) as the
    objectives see it: built with the trial's seed, on the space's example inputs (of
    ``input_shape``, batch included, when given), made ready by its space
    (:func:`exportable`), checked against PyTorch, then by each deploy check in
    ``checks`` (:func:`run_checks`). Prepare the space first for trained weights."""
    from nasframe.candidate import Candidate
    from nasframe.experiment import trial_seed

    space = exp.space
    if part is not None:
        from nasframe.capabilities import ModelParts

        parts = space.parts() if isinstance(space, ModelParts) else ()
        if part not in parts:
            raise ExportError(f"search space '{space.name}' has no model part {part!r}; its "
                              f"parts: {', '.join(parts) or 'none (export the main model)'}")
    candidate = Candidate(space, arch, trial_seed(exp.cfg.seed, arch) if seed is None else seed)
    model = candidate.module(part)
    inputs = candidate.example_inputs(input_shape, part=part)
    result = export_module(exportable(space, arch, model, part), inputs, fmt, path,
                           threads=threads)
    run_checks(result, checks, inputs)
    return result


def export_models(exp: Experiment, ctx: Context, archs: dict[str, Architecture], fmt: str,
                  folder: Path, *, part: str | None = None,
                  checks: Sequence[DeployCheck] = ()) -> dict[str, ExportResult]:
    """Export each of ``archs`` (file stem -> architecture) as ``folder/<stem><suffix>``
    (``export --models``): the space is prepared for the objectives' needs first, so the
    files carry the weights the objectives scored; an architecture met twice (the pick is
    a front member) is exported once and copied (its deploy checks run again on the copy,
    whose artefacts carry its own name). Each check's summary is printed."""
    import shutil

    exp.space.prepare(ctx, exp.needs())
    done: dict[str, ExportResult] = {}
    by_id: dict[str, Path] = {}
    with ctx.progress() as progress:
        task = progress.add_task(f"export {fmt}", total=len(archs), info="")
        for stem, arch in archs.items():
            path = folder / f"{stem}{SUFFIX[fmt]}"
            if arch.id in by_id:
                shutil.copyfile(by_id[arch.id], path)
                data = Path(str(by_id[arch.id]) + ".data")
                if data.exists():   # weights kept beside the graph (models over 1 GiB)
                    shutil.copyfile(data, str(path) + ".data")
                doc = json.loads(Path(str(by_id[arch.id]) + ".json").read_text())
                doc.update(path=str(path), checks={})
                Path(str(path) + ".json").write_text(json.dumps(doc, indent=1))
                done[stem] = ExportResult(**doc)
                if checks:   # on the same (seeded) example inputs as the original
                    from nasframe.candidate import Candidate
                    from nasframe.experiment import trial_seed

                    progress.update(task, info=f"{stem}: checks")
                    seed = trial_seed(exp.cfg.seed, arch)
                    run_checks(done[stem], checks,
                               Candidate(exp.space, arch, seed).example_inputs(part=part))
            else:
                progress.update(task, info=stem)
                done[stem] = export_architecture(exp, arch, fmt, path, part=part, checks=checks)
                by_id[arch.id] = path
            for name, r in done[stem].checks.items():
                ctx.log(f"{path.name}: {name}: {'' if r['passed'] else 'FAILED: '}{r['summary']}")
            progress.advance(task)
    return done
