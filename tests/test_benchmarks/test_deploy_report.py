"""Smoke test of benchmarks/deploy_report.py on tiny settings: every section runs, every export
agrees with PyTorch, the ratios are reported."""
from __future__ import annotations

import json
import math

import pytest

from conftest import load_script

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _load():
    return load_script("deploy_report")


@pytest.mark.slow
def test_deploy_report_quick(tmp_path, capsys):
    bench = _load()
    hooked = []
    bench.TABLE_HOOKS.append(lambda args: hooked.append(args) or ("tau table", [{"proxy": "x"}]))
    try:
        result = bench.main(["--quick", "--threads", "1", "--no-executorch",
                             "--json", str(tmp_path / "r.json")])
    finally:
        bench.TABLE_HOOKS.clear()
    sections = result["sections"]
    assert [r["model"] for r in sections["ens"]] == ["teacher (all transformer)", "all SSM"]
    assert [r["model"] for r in sections["sd"]] == ["unet nanosd", "vae_decoder (nanosd)"]
    assert [r["model"] for r in sections["blocks"]] == ["transformer 16x16x16", "ssm 16x16x16"]
    for rows in (sections["ens"], sections["sd"], sections["blocks"]):
        for r in rows:
            assert r["max_rel_error"] <= 1e-4, r
            assert r["export_s"] > 0 and r["torch_ms"] > 0 and r["ort_ms"] > 0
            assert r["ort_p10"] <= r["ort_ms"] <= r["ort_p90"]
            assert math.isfinite(r["ort_over_torch"])
    ssm = sections["blocks"][1]
    assert ssm["ssm_over_transformer_ort"] > 0 and ssm["ssm_over_transformer_torch"] > 0
    proxies = sections["proxies"]
    taus = {(r["proxy"], r["measured"]): r for r in proxies if r["table"] == "tau"}
    assert set(taus) == {(p, m) for p in ("params", "gmacs", "transformer_count", "latency_lut")
                         for m in ("latency_torch", "latency_ort")}
    for r in taus.values():
        assert r["n"] == 3 and (math.isnan(r["tau"]) or -1 <= r["tau"] <= 1)
    (lut,) = [r for r in proxies if r["table"] == "lut_error"]
    assert lut["trials"] == 3 and lut["variants"] > 0 and lut["check_archs"] == 1
    assert 0 <= lut["median_rel_error"] <= lut["max_rel_error"]
    assert isinstance(result["pass"], bool) and hooked
    assert sections["tau table"] == [{"proxy": "x"}]
    assert json.loads((tmp_path / "r.json").read_text())["onnxruntime"] == result["onnxruntime"]
    printed = capsys.readouterr().out
    assert "ORT/torch" in printed and "SSM / transformer at 16x16x16" in printed
    assert "transformer_count  latency_ort" in printed and "LUT (" in printed


@pytest.mark.slow
def test_deploy_report_blocks_in_executorch(capsys):
    """The ExecuTorch columns: each block lowered to XNNPACK, run in ExecuTorch's runtime
    (the released package), checked against PyTorch, timed interleaved with torch and ORT."""
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    bench = _load()
    result = bench.main(["--quick", "--threads", "1", "--sections", "blocks", "--executorch"])
    rows = result["sections"]["blocks"]
    assert [r["model"] for r in rows] == ["transformer 16x16x16", "ssm 16x16x16"]
    for r in rows:
        assert r["et_rel_error"] <= 1e-4 and r["et_ms"] > 0 and r["et_delegated"] > 0
        assert r["et_p10"] <= r["et_ms"] <= r["et_p90"]
    assert rows[1]["ssm_over_transformer_et"] > 0
    printed = capsys.readouterr().out
    assert "ExecuTorch ms" in printed and "ExecuTorch " in printed.split("SSM / transformer")[1]
