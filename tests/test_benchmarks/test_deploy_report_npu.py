"""benchmarks/deploy_report.py's NPU sections on tiny settings: every export path compiled for the
Hexagon NPU (emulated HTP, CPU fallback off), and the emulator's profiling cycles reported."""
from __future__ import annotations

import math

import pytest

from conftest import load_script

pytest.importorskip("onnxruntime_qnn", reason="the NPU sections need onnxruntime-qnn "
                    "(pip install 'nasframe[npu]')")
pytest.importorskip("onnxscript")


def _load():
    return load_script("deploy_report")


@pytest.mark.slow
def test_deploy_report_npu_quick(tmp_path, capsys):
    result = _load().main(["--quick", "--threads", "1", "--sections", "npu,npu_profile",
                           "--json", str(tmp_path / "r.json")])
    rows = result["sections"]["npu"]
    assert [r["model"] for r in rows] == [
        "hybrid_unet tiny teacher", "hybrid_unet tiny all SSM", "sd_unet tiny unet nanosd",
        "sd_unet tiny vae_encoder (nanosd)", "sd_unet tiny vae_decoder (nanosd)",
        "conv_denoiser smallest", "conv_denoiser largest"]
    for r in rows:
        assert r["compiles"] and r["refused_ops"] == {}, r
        assert r["compile_s"] > 0 and r["qnn_ops"] > 0 and r["soc"] == "Snapdragon 8 Elite"
        assert math.isfinite(r["psnr_db"]) and r["max_abs_error"] >= 0
    assert all(r["psnr_db"] >= 40 for r in rows if "SSM" not in r["model"])
    profile = result["sections"]["npu_profile"]
    assert len(profile) == 3
    for p in profile:
        assert len(p["cycles"]) == 2 and all(c > 0 for c in p["cycles"]) and p["spread"] >= 1
    printed = capsys.readouterr().out
    assert "5. NPU: every export path compiled for Snapdragon 8 Elite" in printed
    assert "6. NPU profile" in printed
