"""Smoke test of benchmarks/quad_report.py on tiny settings: every section runs; the NPU
(emulated) rows score QUAD and every baseline per task as the NPU computes them, within
the quantisation noise of ONNX Runtime's CPU."""
from __future__ import annotations

import math

import pytest

from conftest import load_script

pytest.importorskip("onnxruntime")
pytest.importorskip("skimage")

TINY = ["--preset", "tiny", "--base-steps", "5", "--adapter-steps", "3", "--qat-steps", "3",
        "--size", "16", "--patch", "16", "--val-size", "32", "--short-side", "48",
        "--rounds", "2"]


def _load():
    return load_script("quad_report")


@pytest.mark.slow
def test_quad_report_quick_with_the_npu_rows(tmp_path, capsys):
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (the NPU compiler) is not installed")
    bench = _load()
    out = bench.main([*TINY, "--npu-tiles", "1", "--cache", str(tmp_path / "cache"),
                      "--json", str(tmp_path / "r.json")])
    tasks = ("denoise", "deblur", "derain")
    npu = out["npu"]
    assert set(npu["compile_s"]) == {"shared", "naive", *(f"separate_{t}" for t in tasks)}
    for method in ("quad", "shared_ptq", "separate", "naive"):
        for t in tasks:
            row = npu[method][t]
            assert math.isfinite(row["npu"]) and row["npu"] > 5, (method, t, row)
            assert abs(row["npu"] - row["cpu"]) < 0.5, (method, t, row)
            assert row["npu_vs_cpu"] > 35, (method, t, row)
    # the QDQ graph is the simulation QUAD trained against
    for t in tasks:
        assert out["psnr"]["qdq_ort_tiles"][t] == pytest.approx(out["psnr"]["quad_sim_tiles"][t], abs=0.05)
    text = capsys.readouterr().out
    assert "1b. NPU (emulated" in text and "NPU: separate profiles" in text
