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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skimage")
    tmp_path = tmp_path_factory.mktemp("quad_example")
    path = tmp_path / "quad.yaml"
    path.write_text(yaml.safe_dump(_tiny()))
    run_dir = tmp_path / "run"
    # one torch thread: on shared cores two spinning threads are many times slower
    out = run_cli("run", str(path), "--out", str(run_dir), timeout=600,
                  env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    return run_dir


@pytest.mark.slow
def test_tiny_run_and_bundle(tiny_run):
    run_dir = tiny_run
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
    for name in ("graph.onnx", "graph.encodings", "graph_qdq.onnx", "profile.encodings",
                 "adapters/denoise.pt", "adapters/derain.pt"):
        assert (deploy / name).is_file(), name
    enc = json.loads((deploy / "graph.encodings").read_text())
    lora = [e for e in enc["activation_encodings"] if e["name"].startswith("lora.")]
    assert lora and all(e["bw"] == 8 and e["is_sym"] for e in lora)
    # the deployed graph is what QUAD trained: ONNX Runtime scores it as the simulation did
    for t in report["tasks"]:
        p = report["psnr"][t]
        assert p["qdq_ort"] > 5 and p["qdq_ort"] == pytest.approx(p["quad_sim"], abs=0.05), (t, p)


@pytest.mark.slow
def test_trained_bundle_compiles_for_the_npu_and_loads_in_aimet(tiny_run, tmp_path):
    """A trained QUAD bundle's QDQ graph on onnxruntime-qnn's emulated Hexagon NPU (CPU
    fallback off) within its quantisation noise of ONNX Runtime's CPU, and its encodings
    loaded by aimet-onnx with strict=True, its QDQ graph imported by from_onnx_qdq."""
    pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (the NPU compiler) is not installed")
    pytest.importorskip("aimet_onnx", reason="aimet-onnx is not installed "
                        "(pip install --no-deps aimet-onnx==2.42.0, see docs/quad.md)")
    import torch

    from nasframe_search_spaces.quad.bundle import main

    torch.set_num_threads(1)
    out = tmp_path / "deploy"
    assert main([str(tiny_run), "--arch", "pick", "--out", str(out), "--npu", "--aimet"]) == 0
    report = json.loads((out / "bundle.json").read_text())
    noise = report["qdq"]["vs_float_db"]
    aimet, npu = report["aimet"], report["npu"]
    assert aimet["strict_load"] == "ok" and aimet["enabled_quantizers"] == aimet["encodings"]
    assert aimet["from_onnx_qdq"].startswith(f"Loaded {aimet['encodings']} out of")
    for t in report["tasks"]:
        assert npu["vs_ort_cpu_db"][t] >= noise[t] - 3, (t, npu["vs_ort_cpu_db"][t], noise[t])
        assert report["psnr"][t]["qdq_npu"] == pytest.approx(report["psnr"][t]["qdq_ort"], abs=0.1)
        assert aimet["strict_load_vs_ort_db"][t] >= noise[t] - 3
        assert aimet["from_onnx_qdq_vs_ort_db"][t] >= noise[t] - 3
