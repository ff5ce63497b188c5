"""examples/ens_device.yaml, shrunk to the tiny preset: ENS with latency measured in ONNX
Runtime (every candidate exported, checked and timed) and a lookup table built from ONNX
Runtime timings beside it."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT, load_script, run_cli
from nasframe.results import load_run

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXAMPLE = ROOT / "examples" / "ens_device.yaml"


@pytest.mark.slow
def test_example_validates_as_written():
    out = run_cli("validate", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    assert "latency (min)" in out.stdout


@pytest.mark.slow
def test_tiny_run_measures_latency_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    cfg = yaml.safe_load(EXAMPLE.read_text())
    p = cfg["search_space"]["params"]
    assert p["network"] == {"dim": 48, "heads": [1, 2, 4, 8]}   # Restormer's width
    p.pop("network")
    p.update(preset="tiny", granularity="stage", teacher={"steps": 4, "batch_size": 2},
             distill={"steps": 4, "batch_size": 2, "stitch": {"steps": 3}})   # stitching on
    p["data"] = {**p["data"], "short_side": 48, "val_size": 32, "patch": 16}
    objectives = {o["name"]: o for o in cfg["objectives"]}
    assert objectives["latency"]["params"]["backend"] == "onnxruntime"
    assert objectives["latency_lut"]["params"]["backend"] == "onnxruntime"
    for name in ("latency", "latency_lut"):
        lat = objectives[name]["params"]
        lat["input_shape"] = [1, 3, 16, 16]
        lat["options"].update(warmup=1, repeats=3)
    objectives["latency_lut"]["params"].update(calibration=1, check=1)
    cfg["cache_dir"] = str(tmp_path / "cache")
    cfg["budget"] = {"trials": 2}
    cfg["strategy"]["params"]["population"] = 2
    cfg.pop("output")
    path = tmp_path / "ens_device.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_cli("run", str(path), "--out", str(tmp_path / "run"), timeout=1200)
    assert out.returncode == 0, out.stderr
    run = load_run(tmp_path / "run")
    stitched = json.loads((tmp_path / "run" / "alignment.json").read_text())["surrogates"]["stitch"]
    assert stitched["steps"] == 3 and set(stitched["output_error"]) >= {"all", "refinement.0"}
    done = [t for t in run.trial_list() if t.status == "complete"]
    assert len(done) >= 3       # the two references and the search's trials
    for t in done:
        prov = t.provenance["latency"]
        assert prov.backend == "onnxruntime" and prov.kind == "measured"
        d = prov.details
        assert d["runtime"] == f"onnxruntime {ort.__version__}"
        assert d["providers"] == ["CPUExecutionProvider"] and d["threads"] == 2
        assert d["export"]["format"] == "onnx" and d["export"]["max_rel_error"] <= 1e-4
        # timed alternately with the teacher: the value is the ratio times its latency
        assert d["anchor"]["name"] == "teacher" and d["anchor"]["ms"] > 0
        assert t.values["latency"] == pytest.approx(d["anchor"]["ratio"] * d["anchor"]["ms"])
        assert d["p10_ms"] <= d["window_ms"] <= d["p90_ms"]
        lut = t.provenance["latency_lut"]
        assert lut.kind == "proxy" and lut.backend == "latency_lut/onnxruntime"
        assert lut.details["table_entries"] > 0
    pick = json.loads((tmp_path / "run" / "pareto.json").read_text())["pick"]
    assert pick["rule"].startswith("lowest latency_lut with psnr >= ")   # max_drop 0.3
    teacher = next(t for t in done if t.origin == "reference:teacher")
    assert pick["values"]["psnr"] >= teacher.values["psnr"] - 0.3
    table = json.loads((tmp_path / "run" / "latency_lut.json").read_text())
    assert table["backend"] == "onnxruntime" and table["report"]["n"] == 1
    # the report's side-by-side re-timing finds every trial's graph as the search timed it
    report = load_script("ens_device_report")
    sb = report.side_by_side(tmp_path / "run", rounds=2, threads=1)
    assert sb["n"] == len(done) and sb["min_ms"] > 0
    assert set(sb["tau"]) == {"latency", "latency_lut", "transformer_count"}
    assert 0 <= sb["lut_mean_rel_error"] <= sb["lut_max_rel_error"]
    # pick and the fastest trial within 0.3 dB, re-timed interleaved against the teacher
    tp = report.teacher_vs_pick(tmp_path / "run", repeats=2, threads=1)
    w = tp["within"]
    assert tp["all_ssm_psnr"] == next(t for t in done if t.origin == "reference:all_ssm").values["psnr"]
    assert w["psnr_drop"] <= report.DB and w["speedup"] > 0 and tp["speedup"] > 0
    assert w["by"] == "latency_lut" and w["trial"] == pick["trial"] == tp["pick_trial"]


def test_report_takes_network_overrides_as_data():
    report = load_script("ens_device_report")
    args = report.argparse.Namespace(teacher_steps=None, distill_steps=None, stitch_steps=50,
                                     trials=3,
                                     time=None, cache="c", penalty=None,
                                     network=report._mapping("{dim: 48, heads: [1, 2, 4, 8]}"))
    cfg = report.task_config("deblur", args)
    p = cfg["search_space"]["params"]
    assert p["network"] == {"dim": 48, "heads": [1, 2, 4, 8]}
    assert p["task"] == "deblur" and cfg["budget"]["trials"] == 3
    assert p["distill"]["stitch"]["steps"] == 50 and p["distill"]["steps"] == 400
    for bad in ("[48]", "!!python/object/apply:os.system [ls]"):
        with pytest.raises(report.argparse.ArgumentTypeError, match="mapping"):
            report._mapping(bad)
