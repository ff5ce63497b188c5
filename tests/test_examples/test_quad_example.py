"""examples/quad_restoration.yaml shrunk to the tiny preset, end to end: the CLI run, the
pick's deploy bundle (one ONNX graph with adapter inputs reproducing every task's merged
model, adapters, encodings, the QDQ graph in ONNX Runtime)."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "quad_restoration.yaml"


def test_example_file_validates_as_written():
    out = run_cli("validate", str(EXAMPLE))
    assert out.returncode == 0, out.stderr


def _tiny() -> dict:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    p = cfg["search_space"]["params"]
    p.update(preset="tiny", ranks=[0, 2, 4], input_size=16,
             data={"patch": 16, "val_size": 32, "short_side": 48},
             base={"steps": 3, "batch_size": 3}, adapters={"steps": 3, "batch_size": 2},
             qat={"steps": 3, "batch_size": 2, "calib_batches": 1})
    cfg["budget"] = {"trials": 4}
    cfg["strategy"]["params"]["population"] = 2
    cfg.pop("output", None)
    return cfg


def test_tiny_run_and_bundle(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skimage")
    path = tmp_path / "quad.yaml"
    path.write_text(yaml.safe_dump(_tiny()))
    run_dir = tmp_path / "run"
    # one torch thread: on shared cores two spinning threads are many times slower
    out = run_cli("run", str(path), "--out", str(run_dir), timeout=600,
                  env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert any((run_dir / "cache" / "quad").glob("base/*.pt"))      # cached in the run dir
    from nasframe.results import load_run

    trials = [t for t in load_run(run_dir).trial_list() if t.status == "complete"]
    assert len(trials) >= 3
    for t in trials:
        per_task = t.provenance["multitask_psnr"].details["per_task"]
        assert set(per_task) == {"denoise", "deblur", "derain"}
        assert t.values["multitask_psnr"] == pytest.approx(min(per_task.values()), abs=1e-3)
        assert t.provenance["deploy_memory"].details["ratio"] > 1

    import torch

    from nasframe_search_spaces.quad.bundle import main

    torch.set_num_threads(1)
    assert main([str(run_dir), "--arch", "pick"]) == 0
    deploy = run_dir / "deploy"
    report = json.loads((deploy / "bundle.json").read_text())
    g = report["graph"]
    assert g["lora_initializers"] == 0 and g["lora_inputs"] > 0
    assert set(g["per_task"]) == {"denoise", "deblur", "derain"}
    assert all(c["max_abs_error"] < 1e-4 for c in g["per_task"].values())
    for name in ("graph.onnx", "graph_qdq.onnx", "graph_qdq.encodings", "profile.encodings",
                 "adapters/denoise.pt", "adapters/derain.pt"):
        assert (deploy / name).is_file(), name
    enc = json.loads((deploy / "graph_qdq.encodings").read_text())
    lora = [e for e in enc["activation_encodings"] if e["name"].startswith("lora.")]
    assert lora and all(e["bw"] == 8 and e["is_sym"] for e in lora)
    assert all(report["psnr"][t]["qdq_ort"] > 5 for t in report["tasks"])
