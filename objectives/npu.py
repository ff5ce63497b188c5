"""The NPU check as objectives and as a deploy check: ``npu_compiles``, ``npu_fidelity``, ``npu``.

Each compiles the candidate's exported ONNX graph for a Snapdragon's Hexagon NPU with ONNX
Runtime's QNN execution provider, CPU fallback off, and runs it on the emulated HTP
(:mod:`nasframe_objectives.qnn_htp`):

``npu_compiles`` (max, 0/1)
    1 when the whole graph compiles for the NPU; a feasibility constraint as
    ``npu_compiles >= 1``. It is cheaper than ``npu_fidelity``, so with the constraint a
    candidate that does not compile is pruned before its fidelity is asked for.
``npu_fidelity`` (max, dB)
    PSNR of the NPU's output (fp16 for float graphs, as quantised for QDQ graphs) against
    fp32 (the same graph on ONNX Runtime's CPU EP); a candidate that does not compile
    fails with the refused nodes named.
``npu`` (deploy check)
    ``nasframe export-model --check npu`` / ``export --models onnx --check npu``: compiles
    each exported file, saves its EP-context model and QNN context binary beside it
    (``<name>_ctx.onnx``, ``<name>_ctx_qnn.bin``), passes when it compiles at
    ``min_psnr_db`` or better.

Both objectives of one trial share one compile (the candidate's scratch cache), and its
report is cached in the run directory (``cache/npu``) by graph hash, SoC and inputs. Their
provenance: ``measured``, backend ``qnn_htp``, the device as ``<SoC> (soc_model N, Hexagon
vNN HTP), emulated on x86``, the versions (onnxruntime, onnxruntime-qnn, QNN SDK) and the
report under ``deploy_check``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nasframe import Value
from nasframe.backends import CheckReport, DeployCheck
from nasframe.params import Field, Float, Int, ParamError, Params, Shape
from nasframe_objectives._common import PartObjective, PartParams, input_shapes

if TYPE_CHECKING:
    from nasframe import Candidate, Context
    from nasframe.deploy import ExportResult
    from nasframe_objectives.qnn_htp import HtpTarget, NpuReport

DEPENDENCIES = ("onnxruntime_qnn", "onnxruntime", "onnx", "onnxscript")
INSTALL_HINT = "pip install 'nasframe[npu]'"
#: unsupported nodes kept by name in a value's provenance (all are counted by op type)
MAX_NODES_IN_PROVENANCE = 50


class TargetParams(Params):
    soc: str = Field("Snapdragon 8 Elite", min_length=1, max_length=64)
    """The Snapdragon, by name or chip: Snapdragon 8 Elite (SM8750), Snapdragon 8 Gen 3 (SM8650), ..."""
    soc_model: Int | None = Field(None, ge=1, le=10_000)
    """QNN's soc_model number (overrides the table; with htp_arch for a SoC not in it)."""
    htp_arch: Int | None = Field(None, ge=68, le=200)
    """The Hexagon HTP architecture, e.g. 79 (overrides the table)."""


def resolve_target(params: TargetParams) -> HtpTarget:
    from nasframe_objectives.qnn_htp import HtpTarget

    try:
        return HtpTarget.resolve(params.soc, params.soc_model, params.htp_arch)
    except ValueError as err:
        raise ParamError("soc", str(err)) from None


def runtime() -> str:
    from nasframe_objectives.qnn_htp import versions

    v = versions()
    return (f"onnxruntime-qnn {v['onnxruntime_qnn']} (QNN SDK {v['qnn_sdk']}), "
            f"onnxruntime {v['onnxruntime']}")


def provenance_report(report: NpuReport) -> dict[str, Any]:
    """The report as a value's ``deploy_check`` provenance (node list capped)."""
    doc = report.to_dict()
    doc.pop("profile", None)
    doc["passed"] = report.compiles
    doc["check"] = "npu"
    if len(doc["unsupported"]) > MAX_NODES_IN_PROVENANCE:
        doc["unsupported"] = doc["unsupported"][:MAX_NODES_IN_PROVENANCE]
        doc["unsupported_truncated"] = True
    return doc


class NpuParams(PartParams, TargetParams):
    input_shape: Shape | None = None
    """Full input shape, batch included (default: the space's, with batch_size)."""
    batch_size: Int = Field(1, ge=1, le=65_536)
    """Batch of the default input (ignored with input_shape)."""
    graph: Literal["float", "quantised"] = "float"
    """Compile the float graph (at fp16), or the space's quantised QDQ graph."""


class _NpuObjective(PartObjective):
    kind = "measured"
    backend = "qnn_htp"
    dependencies = DEPENDENCIES
    install_hint = INSTALL_HINT
    Params = NpuParams

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.target = resolve_target(self.params)
        if self.params.graph == "quantised" and self.part is not None:
            raise ParamError("graph", "a quantised graph is of the whole model; remove part, "
                             "or use graph: float")

    def requirements(self):
        from nasframe.capabilities import QuantisedGraph

        reqs = super().requirements()
        return (*reqs, QuantisedGraph) if self.params.graph == "quantised" else reqs

    def device(self, ctx: Context) -> str:
        return self.target.describe()

    def provenance(self, ctx, details=None):
        from nasframe import Provenance

        return Provenance(self.kind, self.backend, self.device(ctx),
                          {"runtime": runtime(), **dict(details or {})})

    def report(self, candidate: Candidate, ctx: Context) -> tuple[NpuReport, dict[str, Any]]:
        """The candidate's NPU report (compiled once per trial and cached in the run) and
        the details every value keeps."""
        from nasframe.context import content_hash
        from nasframe_objectives.latency import (cached_export, cached_export_quantised,
                                                 torch_seed)
        from nasframe_objectives.qnn_htp import NpuReport, check_graph

        p = self.params
        quantised = p.graph == "quantised"
        model = candidate.module(self.part)
        if quantised:
            with torch_seed(candidate.seed):
                inputs = candidate.space.quantised_inputs(candidate.arch, model, p.input_shape,
                                                          p.batch_size)
        else:
            inputs = candidate.example_inputs(p.input_shape, batch_size=p.batch_size,
                                              part=self.part)
        memo = ("npu", self.target, p.graph, self.part, str(input_shapes(inputs)))
        if memo in candidate.cache:        # the trial's other NPU objective compiled it
            return candidate.cache[memo]
        exported = (cached_export_quantised(candidate, model, inputs, ctx) if quantised else
                    cached_export(candidate, model, inputs, ctx, "onnx", self.part))
        key = content_hash({"graph": exported.graph_hash, "target": self.target.__dict__,
                            "shapes": input_shapes(inputs), "seed": candidate.seed})
        folder = Path(ctx.cache.root) / "npu" / f"{candidate.arch.id}-{key}"
        cached = folder / "report.json"
        if cached.is_file():
            report = NpuReport.from_dict(json.loads(cached.read_text()))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            report = check_graph(exported.path, self.target, inputs=inputs,
                                 context=folder / "graph_ctx.onnx")
            cached.write_text(json.dumps(report.to_dict(), indent=1, default=str))
        details = {"input_shape": input_shapes(inputs),
                   "export": {"format": "onnx", "graph_hash": exported.graph_hash,
                              "max_rel_error": exported.max_rel_error,
                              **({"graph": "quantised"} if quantised else {})},
                   "deploy_check": provenance_report(report)}
        if self.part is not None:
            details["part"] = self.part
        candidate.cache[memo] = (report, details)
        return report, details


class NpuCompiles(_NpuObjective):
    """1 when the candidate's exported graph compiles for the Snapdragon's Hexagon NPU with
    no CPU fallback (ONNX Runtime's QNN EP, HTP backend, offline), else 0; the refused nodes
    are in the provenance. As a constraint: ``npu_compiles >= 1``."""

    name = "npu_compiles"
    direction = "max"
    unit = ""
    cost = 20.0

    def evaluate(self, candidate, ctx):
        report, details = self.report(candidate, ctx)
        return Value(1.0 if report.compiles else 0.0, details)


class NpuFidelity(_NpuObjective):
    """PSNR in dB of the candidate's output computed by the Snapdragon's Hexagon NPU (fp16,
    emulated HTP) against fp32; fails, naming the refused nodes, when the graph does not
    compile (pair it with the constraint ``npu_compiles >= 1``)."""

    name = "npu_fidelity"
    direction = "max"
    unit = "dB"
    cost = 21.0

    def evaluate(self, candidate, ctx):
        from nasframe_objectives.qnn_htp import NpuError

        report, details = self.report(candidate, ctx)
        if report.psnr_db is None:     # refused, or compiled but failed to run
            raise NpuError(report.summary())
        return Value(float(report.psnr_db), {**details, "max_abs_error": report.max_abs_error})


class NpuCheck(DeployCheck):
    """Compile an exported ONNX graph for a Snapdragon's Hexagon NPU (ONNX Runtime's QNN EP,
    HTP backend, emulated offline) with no CPU fallback, save the compiled EP-context model
    and QNN context binary beside it, and compare the NPU's output with fp32."""

    name = "npu"
    dependencies = DEPENDENCIES
    install_hint = INSTALL_HINT

    class Params(TargetParams):
        min_psnr_db: Float = Field(40.0, ge=0.0, le=200.0)
        """The check passes when the graph compiles and its NPU output is this close to fp32."""

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self._target = resolve_target(self.params)

    def target(self) -> str:
        return self._target.describe()

    def artefacts(self, model_path: str) -> tuple[str, ...]:
        p = Path(model_path)
        return (str(p.with_name(f"{p.stem}_ctx.onnx")), str(p.with_name(f"{p.stem}_ctx_qnn.bin")))

    def check(self, exported: ExportResult, inputs=None) -> CheckReport:
        from nasframe_objectives.qnn_htp import check_graph

        context = Path(self.artefacts(exported.path)[0])
        report = check_graph(exported.path, self._target, inputs=inputs, context=context)
        bound = self.params.min_psnr_db
        passed = report.compiles and report.psnr_db is not None and report.psnr_db >= bound
        summary = report.summary()
        if report.compiles and not passed:
            summary += f"; below the {bound:g} dB bound (min_psnr_db)"
        files = tuple(f for f in (report.context_model, report.context_binary) if f)
        return CheckReport(self.name, self.target(), passed, summary,
                           {**report.to_dict(), "soc": report.target, "min_psnr_db": bound,
                            "runtime": runtime()},
                           files)
