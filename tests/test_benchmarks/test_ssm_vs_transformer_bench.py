"""benchmarks/ssm_vs_transformer.py at its quick setting: both blocks on both backends, the
ratios and MAC counts it prints, exports checked against PyTorch."""
from __future__ import annotations

import json

import pytest

from conftest import load_script

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _script():
    return load_script("ssm_vs_transformer")


@pytest.mark.slow
def test_quick_run_times_both_blocks_on_both_backends(tmp_path, capsys):
    out = tmp_path / "svt.json"
    result = _script().main(["--quick", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {(r["backend"], r["block"]): r for r in result["rows"]}
    assert set(rows) == {(b, k) for b in ("torch", "ort") for k in ("transformer", "ssm")}
    for (backend, block), r in rows.items():
        assert r["shape"] == "48x64x64" and r["median_ms"] > 0
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        if block == "transformer":
            assert r["ratio"] == 1.0 and r["mac_ratio"] == 1.0
        else:   # fvcore's counts: the SSM block has about half the transformer block's MACs
            assert 0.4 < r["mac_ratio"] < 0.7
            assert r["fraction_of_mac_ratio"] == pytest.approx(r["mac_ratio"] / r["ratio"])
    assert len(result["exports"]) == 2
    assert all(e["max_rel_error"] < 1e-4 for e in result["exports"])
    shown = capsys.readouterr().out
    assert "target <= 0.5:" in shown and ("PASS" in shown or "BELOW TARGET" in shown)
