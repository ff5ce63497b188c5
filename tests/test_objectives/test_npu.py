"""The NPU check on the real toolchain: ONNX Runtime's QNN EP compiling for the Hexagon HTP
(emulated on x86), CPU fallback off: what compiles, what is refused, how close to fp32."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from nasframe import Architecture, Candidate, Context, Integer, SearchSpace

pytest.importorskip("onnxruntime_qnn", reason="the NPU check needs onnxruntime-qnn "
                    "(pip install 'nasframe[npu]'; Linux x86_64 / Windows wheels)")
pytest.importorskip("onnxscript")

from nasframe.deploy import export_module  # noqa: E402
from nasframe_objectives.npu import NpuCheck, NpuCompiles, NpuFidelity  # noqa: E402
from nasframe_objectives.qnn_htp import (HtpTarget, check_graph, compare,  # noqa: E402
                                         psnr_db, versions)


class Erf(nn.Module):
    """An op the HTP has no kernel for on its own (QNN fuses Erf only inside a GELU)."""

    def forward(self, x):
        return torch.erf(x)


class NpuToySpace(SearchSpace):
    """Two small conv nets; width 4 ends in a lone Erf, which the NPU refuses."""

    name = "npu_toy"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        w = arch["width"]
        body = [nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 3, 3, padding=1)]
        return nn.Sequential(*body, *([Erf()] if w == 4 else []))


def _export(tmp_path, width, name="m.onnx"):
    space = NpuToySpace()
    cand = Candidate(space, Architecture(width=width))
    inputs = cand.example_inputs()
    export_module(cand.model, inputs, "onnx", tmp_path / name)
    return tmp_path / name, inputs, cand.model


def test_targets_by_name_chip_and_numbers():
    assert HtpTarget.resolve() == HtpTarget("Snapdragon 8 Elite", 69, 79)
    assert HtpTarget.resolve("sm8650") == HtpTarget("Snapdragon 8 Gen 3", 57, 75)
    assert HtpTarget.resolve("  snapdragon  8 gen 2 ") == HtpTarget("Snapdragon 8 Gen 2", 43, 73)
    assert HtpTarget.resolve("Lab board", 99, 81) == HtpTarget("Lab board", 99, 81)
    with pytest.raises(ValueError, match=r"unknown SoC 'SM1'.*Snapdragon 8 Elite \(SM8750\).*"
                                         r"give soc_model and htp_arch"):
        HtpTarget.resolve("SM1")
    assert "emulated on x86" in HtpTarget.resolve().describe()


def test_psnr_is_against_the_reference_range():
    ref = np.linspace(-1.0, 1.0, 1000)                      # range 2
    assert psnr_db(ref, ref) == 200.0
    assert psnr_db(ref, ref + 0.02) == pytest.approx(20 * math.log10(2 / 0.02))
    worst, max_abs = compare([ref, ref], [ref + 0.02, ref + 0.2])
    assert worst == pytest.approx(20.0) and max_abs == pytest.approx(0.2)


def test_a_small_graph_compiles_and_matches_fp32(tmp_path):
    path, inputs, model = _export(tmp_path, 8)
    report = check_graph(path, inputs=inputs, context=tmp_path / "m_ctx.onnx")
    assert report.compiles and report.error == "" and report.unsupported == []
    assert report.precision == "fp16" and not report.quantised
    assert report.target == {"soc": "Snapdragon 8 Elite", "soc_model": 69, "htp_arch": 79}
    assert 50 < report.psnr_db < 200            # fp16 rounding, not bit-equal, not wrong
    assert report.psnr_db == report.cpu_psnr_db and 0 < report.max_abs_error < 0.05
    assert report.reference.startswith("the same graph on onnxruntime's CPU EP")
    assert report.qnn_ops >= 3 and report.compile_s > 0 and report.run_s > 0
    assert report.versions == versions() and report.versions["qnn_sdk"]
    # the EP-context model and the QNN context binary it points to
    assert report.context_model == str(tmp_path / "m_ctx.onnx")
    assert report.context_binary == str(tmp_path / "m_ctx_qnn.bin")
    assert (tmp_path / "m_ctx_qnn.bin").stat().st_size > 1000
    # a given fp32 reference (here PyTorch's own output) is what psnr_db is measured against
    with torch.no_grad():
        ref = [model(*inputs)]
    again = check_graph(path, inputs=inputs, reference=ref)
    assert again.reference == "given fp32 reference" and again.psnr_db > 50
    assert again.context_model is None           # nothing kept without `context`


def test_a_refused_node_is_named_with_its_reason(tmp_path):
    path, inputs, _ = _export(tmp_path, 4)
    report = check_graph(path, inputs=inputs, context=tmp_path / "m_ctx.onnx")
    assert not report.compiles and report.psnr_db is None
    assert [u["op_type"] for u in report.unsupported] == ["Erf"]
    assert report.unsupported[0]["name"] and "not supported" in report.unsupported[0]["reason"]
    assert report.unsupported_ops == {"Erf": 1}
    assert "fallback to CPU EP has been explicitly disabled" in report.error
    assert report.summary().startswith("does not compile for Snapdragon 8 Elite: 1 "
                                       "unsupported node(s) (Erf x1)")
    assert not (tmp_path / "m_ctx.onnx").exists()


def test_objectives_share_one_compile_and_say_where_they_were_measured(tmp_path):
    ctx = Context(run_dir=tmp_path, quiet=True)
    cand = Candidate(NpuToySpace(), Architecture(width=8))
    value, prov = NpuFidelity()(cand, ctx)
    compiles, prov2 = NpuCompiles()(cand, ctx)
    assert compiles == 1.0 and 50 < value < 200
    assert prov.kind == "measured" and prov.backend == "qnn_htp"
    assert prov.device == ("Snapdragon 8 Elite (soc_model 69, Hexagon v79 HTP), emulated on x86")
    assert "onnxruntime-qnn" in prov.details["runtime"] and "QNN SDK" in prov.details["runtime"]
    check = prov.details["deploy_check"]
    assert check["passed"] and check["compiles"] and check["psnr_db"] == value
    assert prov2.details["deploy_check"] == check       # one compile for both
    reports = list((tmp_path / "cache" / "npu").glob("*/report.json"))
    assert len(reports) == 1 and (reports[0].parent / "graph_ctx_qnn.bin").is_file()
    # another SoC is another compile, and the refusal of width 4 is a value of 0 / an error
    gen3 = NpuCompiles(soc="Snapdragon 8 Gen 3")
    assert gen3(cand, ctx)[1].device.startswith("Snapdragon 8 Gen 3 (soc_model 57")
    bad = Candidate(NpuToySpace(), Architecture(width=4))
    value, prov = NpuCompiles()(bad, ctx)
    assert value == 0.0 and prov.details["deploy_check"]["unsupported_ops"] == {"Erf": 1}
    with pytest.raises(RuntimeError, match=r"does not compile .*Erf x1"):
        NpuFidelity()(bad, ctx)


def test_bad_params_name_the_field():
    from nasframe.errors import ConfigError
    from nasframe.plugins import get_plugins

    with pytest.raises(ConfigError, match=r"objectives\[0\].params.soc: unknown SoC 'SM1'"):
        get_plugins().objectives.create("npu_fidelity", {"soc": "SM1"}, where="objectives[0]")
    with pytest.raises(ConfigError, match=r"htp_arch"):
        get_plugins().deploy_checks.create("npu", {"htp_arch": 5}, where="--check npu")


def test_the_deploy_check_passes_and_names_its_files(tmp_path):
    path, inputs, _ = _export(tmp_path, 8)
    from nasframe.deploy import ExportResult, run_checks

    result = ExportResult.read(path)
    check = NpuCheck(min_psnr_db=40.0)
    assert check.artefacts(str(path)) == (str(tmp_path / "m_ctx.onnx"),
                                          str(tmp_path / "m_ctx_qnn.bin"))
    (report,) = run_checks(result, [check], inputs)
    assert report.passed and report.files == check.artefacts(str(path))
    saved = json.loads((tmp_path / "m.onnx.json").read_text())["checks"]["npu"]
    assert saved["passed"] and saved["compiles"] and saved["min_psnr_db"] == 40.0
    assert saved["target"].startswith("Snapdragon 8 Elite")
    strict = NpuCheck(min_psnr_db=199.0).check(result, inputs)
    assert not strict.passed and "below the 199 dB bound" in strict.summary


def test_a_qdq_graph_is_compiled_as_quantised(tmp_path):
    """ONNX Runtime's static quantiser's QDQ graph: compiled as quantised; psnr_db against the
    float model's output, cpu_psnr_db against the same QDQ graph on ORT's CPU EP."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    path, inputs, model = _export(tmp_path, 8)
    name = __import__("onnx").load(str(path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter([{name: torch.randn(1, 3, 16, 16).numpy()} for _ in range(4)])

        def get_next(self):
            return next(self.data, None)

    qdq = tmp_path / "m_qdq.onnx"
    quantize_static(str(path), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8)
    with torch.no_grad():
        reference = [model(*inputs)]
    report = check_graph(qdq, inputs=inputs, reference=reference)
    assert report.compiles and report.quantised and report.precision == "qdq"
    assert report.reference == "given fp32 reference"
    assert report.psnr_db > 20 and report.cpu_psnr_db > 20   # 8-bit noise, not wrong
