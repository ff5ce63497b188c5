"""The NPU check from the command line and in a search: `export-model --check npu`,
`export --models onnx --check npu`, the `npu_compiles >= 1` constraint, `analyse`."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

import nasframe
from nasframe import Integer, SearchSpace
from nasframe.cli import main

pytest.importorskip("onnxruntime_qnn", reason="the NPU check needs onnxruntime-qnn "
                    "(pip install 'nasframe[npu]'; Linux x86_64 / Windows wheels)")
pytest.importorskip("onnxscript")

EXP = {
    "name": "npu_cli",
    "seed": 0,
    "search_space": {"name": "conv_denoiser",
                     "params": {"depths": [1], "widths": [4, 8], "kernels": [3], "input_size": 16}},
    "objectives": [{"name": "params"}],
    "strategy": {"name": "grid"},
    "budget": {"trials": 4},
    "references": False,
}


def _exp(tmp_path, **changes):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**EXP, **changes}))
    return path


class _Erf(nn.Module):
    def forward(self, x):
        return torch.erf(x)


@nasframe.register
class NpuCliSpace(SearchSpace):
    """Width 4 ends in a lone Erf, which the Hexagon NPU has no kernel for."""

    name = "npu_cli_toy"
    input_shape = (3, 16, 16)

    def decisions(self):
        return [Integer("width", 4, 8, 4)]

    def build(self, arch):
        w = arch["width"]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 3, 3, padding=1),
                             *([_Erf()] if w == 4 else []))


def test_export_model_check_npu(tmp_path, capsys):
    exp = _exp(tmp_path)
    out = tmp_path / "m.onnx"
    code = main(["export-model", str(exp), "--arch", "smallest", "--fresh", "-o", str(out),
                 "--check", "npu", "--check-option", "soc=SM8650"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "npu check: compiles for Snapdragon 8 Gen 3 in" in printed and "dB PSNR" in printed
    check = json.loads((tmp_path / "m.onnx.json").read_text())["checks"]["npu"]
    assert check["passed"] and check["compiles"] and check["psnr_db"] >= 40
    assert check["soc"] == {"soc": "Snapdragon 8 Gen 3", "soc_model": 57, "htp_arch": 75}
    assert check["files"] == [str(tmp_path / "m_ctx.onnx"), str(tmp_path / "m_ctx_qnn.bin")]
    assert all((tmp_path / f).is_file() for f in ("m_ctx.onnx", "m_ctx_qnn.bin"))


@pytest.mark.parametrize("args, message", [
    (["--check", "npu", "--check-option", "soc=SM1"], "--check npu.params.soc: unknown SoC 'SM1'"),
    (["--check-option", "soc=SM8650"], "name the check with --check NAME"),
    (["--check", "npux"], "unknown deploy check 'npux'"),
    (["--check", "npu", "--check-option", "soc"], "give KEY=VALUE"),
    (["--check", "npu", "--format", "torchscript"], "checks onnx files, not torchscript"),
])
def test_bad_check_arguments_exit_2(tmp_path, capsys, args, message):
    code = main(["export-model", str(_exp(tmp_path)), "--arch", "smallest", "--fresh",
                 "-o", str(tmp_path / "m.onnx"), *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_search_with_the_npu_constraint_then_export_and_analyse(tmp_path, capsys):
    exp = _exp(tmp_path, search_space={"name": "npu_cli_toy"},
               objectives=[{"name": "params"}, {"name": "npu_fidelity"}],
               constraints=["npu_compiles >= 1"])
    run = tmp_path / "run"
    assert main(["run", str(exp), "--out", str(run), "--quiet", "--no-export"]) == 0
    trials = {t["arch.width"]: t
              for t in json.loads(_stdout(capsys, ["trials", str(run), "-f", "json"]))}
    refused, fine = trials[4], trials[8]
    assert refused["status"] == "infeasible" and refused["feasible"] is False
    assert refused["violation"] == 1.0 and refused["npu_fidelity"] is None   # compiles: 0
    assert fine["status"] == "complete" and fine["feasible"] and fine["npu_fidelity"] >= 40
    doc = json.loads(_stdout(capsys, ["analyse", str(run), "-f", "json", "--no-plot"]))
    (summary,) = doc["deploy_checks"]
    assert summary["check"] == "npu" and summary["target"].startswith("Snapdragon 8 Elite")
    assert summary["trials"] == 2 and summary["passed"] == 1
    assert summary["refused_ops"] == {"Erf": 1}
    assert summary["values"]["npu_compiles"] == [0.0, 0.5, 1.0]
    table = _stdout(capsys, ["analyse", str(run), "--no-plot"])
    assert "deploy checks recorded by the objectives" in table and "Erf (1)" in table
    # the front's models exported and checked; the pick is the front member, checked again
    assert main(["export", str(run), "--check", "npu"]) == 2
    assert "add --models onnx" in capsys.readouterr().err
    assert main(["export", str(run), "--models", "onnx", "--check", "npu"]) == 0
    front = run / "front"
    (member,) = [p for p in front.glob("*.onnx") if not p.stem.endswith("_ctx")]
    check = json.loads((front / f"{member.name}.json").read_text())["checks"]["npu"]
    assert check["passed"] and (front / f"{member.stem}_ctx_qnn.bin").is_file()
    manifest = json.loads((run / ".nasframe-export.json").read_text())["files"]
    assert f"front/{member.stem}_ctx.onnx" in manifest
    assert f"front/{member.stem}_ctx_qnn.bin" in manifest
    # a later export without --models removes what the earlier one wrote
    assert main(["export", str(run)]) == 0
    assert not list(front.glob("*_ctx*"))


def _stdout(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_prints_clean_json_with_the_npu_objective(tmp_path):
    """The emulator's native library prints on file descriptor 1; stdout stays JSON."""
    import subprocess
    import sys

    exp = _exp(tmp_path, objectives=[{"name": "npu_fidelity"}], output=str(tmp_path / "run"))
    res = subprocess.run([sys.executable, "-m", "nasframe", "evaluate", str(exp), "--arch",
                          "smallest", "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    value = doc["values"]["npu_fidelity"]
    assert value["value"] >= 40 and value["unit"] == "dB"
    assert value["provenance"]["backend"] == "qnn_htp"
