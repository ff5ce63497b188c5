"""Deployable export from the command line: `export-model` for one architecture, `export
--models` for every front member and the pick; failures name the op."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from nasframe.cli import main
from nasframe.deploy import ExportError, ExportResult, export_module

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXP = {
    "name": "deploy",
    "seed": 0,
    "search_space": {"name": "conv_denoiser",
                     "params": {"depths": [1, 2], "widths": [4, 8], "kernels": [3], "input_size": 16}},
    "objectives": [{"name": "params"},
                   {"name": "quick_psnr", "params": {"steps": 1, "batch_size": 2}}],
    "strategy": {"name": "ens", "params": {"population": 2, "quality": "quick_psnr",
                                            "cost": "params"}},
    "budget": {"trials": 4},
}


def _exp(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(EXP))
    return path


@pytest.mark.slow
def test_export_models_writes_every_front_member_and_the_pick(tmp_path, capsys):
    exp, run = _exp(tmp_path), tmp_path / "run"
    assert main(["run", str(exp), "--out", str(run), "--quiet", "--no-export"]) == 0
    assert main(["export", str(run), "--models", "onnx", "torchscript"]) == 0
    stdout = capsys.readouterr().out
    front = json.loads((run / "pareto.json").read_text())["front"]
    assert front
    stems = [m["id"] for m in front] + ["pick"]
    for stem in stems:
        for suffix in (".onnx", ".pt"):
            path = run / "front" / f"{stem}{suffix}"
            assert path.is_file(), path
            meta = ExportResult.read(path)
            assert meta.max_rel_error <= 1e-4 and meta.input_shapes == [[1, 3, 16, 16]]
        assert f"front/{stem}.onnx" in stdout
    manifest = json.loads((run / ".nasframe-export.json").read_text())["files"]
    assert "front/pick.onnx" in manifest and "front/pick.onnx.json" in manifest
    # the same export again replaces its own files; without --models they are removed
    assert main(["export", str(run), "--models", "onnx"]) == 0
    assert not (run / "front" / "pick.pt").exists()
    assert main(["export", str(run)]) == 0
    assert not list((run / "front").glob("*.onnx"))


def test_export_models_rejects_an_unknown_format(tmp_path, capsys):
    exp, run = _exp(tmp_path), tmp_path / "run"
    assert main(["run", str(exp), "--out", str(run), "--quiet", "--no-export"]) == 0
    assert main(["export", str(run), "--models", "tflite"]) == 2
    assert "--models 'tflite': not a model format; use onnx, torchscript, exported_program" \
        in capsys.readouterr().err


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("exported_program", ".pt2")])
def test_export_model_one_architecture(tmp_path, capsys, fmt, suffix):
    exp = _exp(tmp_path)
    arch = tmp_path / "arch.yaml"
    arch.write_text("depth: 2\nwidth: 8\nresidual_blocks: true\nkernel_0: 3\nkernel_1: 3\n")
    out = tmp_path / f"model{suffix}"
    code = main(["export-model", str(exp), "--arch", str(arch), "--format", fmt, "-o", str(out),
                 "--input-shape", "1,3,24,20", "--fresh"])
    text = capsys.readouterr()
    assert code == 0, text.err
    meta = json.loads((tmp_path / f"model{suffix}.json").read_text())
    assert meta["format"] == fmt and meta["input_shapes"] == [[1, 3, 24, 20]]
    assert meta["max_rel_error"] <= 1e-4
    assert f"max rel error {meta['max_rel_error']:.3g}" in text.out


def test_export_model_bad_arguments_exit_2(tmp_path, capsys):
    exp = _exp(tmp_path)
    assert main(["export-model", str(exp), "--arch", "nope", "--fresh"]) == 2
    assert "--arch 'nope': neither a reference architecture" in capsys.readouterr().err
    arch = tmp_path / "arch.yaml"
    arch.write_text("depth: 1\nwidth: 4\nresidual_blocks: false\nkernel_0: 3\nkernel_1: 3\n")
    assert main(["export-model", str(exp), "--arch", str(arch), "--input-shape", "1,3,a",
                 "--fresh"]) == 2
    assert "give integers, batch first" in capsys.readouterr().err
    assert main(["export-model", str(exp), "--arch", str(arch), "--part", "vae_decoder",
                 "--fresh", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "has no model part 'vae_decoder'" in capsys.readouterr().err


class _Eigh(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


def test_a_model_that_cannot_export_names_the_op(tmp_path):
    with pytest.raises(ExportError, match=r"onnx export failed at op aten(::|\.)_?linalg_eigh"):
        export_module(_Eigh(), (torch.randn(1, 4, 4),), "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx.json").exists()


def test_large_models_keep_their_weights_beside_the_graph(tmp_path, monkeypatch):
    import nasframe.deploy as deploy

    monkeypatch.setattr(deploy, "EXTERNAL_DATA_BYTES", 100)   # as if it were over 1 GiB
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    res = export_module(model, (torch.randn(1, 3, 8, 8),), "onnx", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").is_file() and "m.onnx.data" in res.note
    assert res.max_rel_error <= 1e-4
    before = res.graph_hash
    (tmp_path / "m.onnx.data").write_bytes(b"changed")
    assert deploy._hash_file(tmp_path / "m.onnx") != before   # the hash covers the weights
