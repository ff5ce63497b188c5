"""sd_unet export: the U-Net and every model part (VAE encoder, VAE decoder, one-step pipeline)
export to ONNX that ONNX Runtime runs within 1e-4 of PyTorch (the `tiny` preset)."""
from __future__ import annotations

import json

import pytest
import yaml

from nasframe.cli import main
from nasframe_search_spaces.sd_unet.space import SDUNetSpace

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("part,names", [
    pytest.param(None, ["sample", "timestep", "encoder_hidden_states"], marks=pytest.mark.slow),
    ("vae_encoder", None), ("vae_decoder", None),
    pytest.param("pipeline", ["sample", "timestep", "encoder_hidden_states"],
                 marks=pytest.mark.slow),
])
def test_sd_parts_export_to_onnx_within_1e4(tmp_path, capsys, part, names):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "sd_export", "seed": 0,
        "search_space": {"name": "sd_unet", "params": SDUNetSpace.small_params},
        "objectives": [{"name": "params"}, {"name": "gmacs"}],
        "strategy": {"name": "random"}, "budget": {"trials": 2}}))
    path = tmp_path / f"{part or 'unet'}.onnx"
    args = ["export-model", str(exp), "--arch", "nanosd", "-o", str(path), "--out", str(tmp_path)]
    code = main(args + (["--part", part] if part else []))
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / f"{path.name}.json").read_text())
    assert meta["max_rel_error"] <= 1e-4, meta
    if names:
        assert meta["input_names"] == names
        assert meta["input_dtypes"] == ["float32", "int64", "float32"]
    assert meta["ops"] and meta["graph_hash"]
