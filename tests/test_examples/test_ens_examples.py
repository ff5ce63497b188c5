"""The ENS examples, shrunk to the tiny preset, end to end: CLI run, pick, fine-tuning, report.

The files themselves are used (parsed and validated as written); only the sizes
(preset, steps, budget) are overridden so that CI runs each in seconds.
"""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from nasframe.config import config_from_dict
from nasframe.runner import run_experiment

TASKS = ("denoise", "deblur", "derain")


def _tiny(task: str) -> dict:
    cfg = yaml.safe_load((ROOT / "examples" / f"ens_{task}.yaml").read_text())
    p = cfg["search_space"]["params"]
    p.update(preset="tiny", teacher={"steps": 6, "batch_size": 2}, distill={"steps": 6, "batch_size": 2})
    p["data"] = {**p.get("data", {}), "short_side": 48, "val_size": 32, "patch": 16}
    cfg["budget"] = {"trials": 6}
    cfg["strategy"]["params"]["population"] = 4
    cfg.pop("output", None)
    return cfg


@pytest.mark.parametrize("task", TASKS)
def test_example_files_validate_as_written(task):
    out = run_cli("validate", str(ROOT / "examples" / f"ens_{task}.yaml"))
    assert out.returncode == 0, out.stderr


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    path = root / "ens_denoise.yaml"
    path.write_text(yaml.safe_dump(_tiny("denoise")))
    out = run_cli("run", str(path), "--out", str(root / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    return root / "run", out


@pytest.mark.slow
def test_cli_run_marks_the_pick(denoise_run):
    run_dir, out = denoise_run
    assert "pick: trial" in out.stdout + out.stderr
    doc = json.loads((run_dir / "pareto.json").read_text())
    pick = doc["pick"]
    assert pick["rule"].startswith("psnr - 0.1 * transformer_count")
    assert {r["origin"] for r in doc["references"]} == {"reference:teacher", "reference:all_ssm"}
    rows = list(csv.DictReader((run_dir / "trials.csv").open()))
    assert sum(r["pick"] == "1" for r in rows) == 1
    assert (run_dir / "front" / "pick.yaml").exists()
    report = json.loads((run_dir / "alignment.json").read_text())
    assert report["teacher_psnr"] > 0 and len(report["surrogates"]["relative_mse"]) == 8


@pytest.mark.slow
def test_resume_reuses_the_cached_alignment(denoise_run):
    run_dir, _ = denoise_run
    out = run_cli("resume", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert json.loads((run_dir / "alignment.json").read_text())["surrogates"]["cached"]


@pytest.mark.slow
def test_finetune_reports_before_and_after(denoise_run):
    from nasframe_search_spaces.hybrid_unet.finetune import finetune_run

    run_dir, _ = denoise_run
    rows = finetune_run(run_dir, ["pick"], steps=3, batch_size=2, quiet=True)
    assert len(rows) == 1 and rows[0]["psnr_before"] > 0 and rows[0]["psnr_after"] > 0
    assert Path(rows[0]["weights"]).exists()
    assert json.loads((run_dir / "finetuned" / "report.json").read_text())[0]["id"] == rows[0]["id"]


@pytest.mark.slow
def test_finetune_rejects_unknown_members(denoise_run):
    from nasframe_search_spaces.hybrid_unet import finetune

    run_dir, _ = denoise_run
    assert finetune.main([str(run_dir), "--members", "nope"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("task", ["deblur", "derain"])
def test_other_tasks_run_end_to_end(task, tmp_path):
    summary = run_experiment(config_from_dict(_tiny(task)), tmp_path / "run")
    assert summary.failed == 0 and summary.trials >= 6


@pytest.mark.slow
def test_ens_report_pieces_on_a_tiny_run(denoise_run):
    bench = _load_bench("ens_report")
    run_dir, _ = denoise_run
    row = bench.teacher_vs_pick("denoise", run_dir, size=32, repeats=2)
    assert row["teacher_transformers"] == 8 and row["speedup"] > 0
    exp, table = bench.exhaustive_table(run_dir)
    assert len(table) == 256
    eff = bench.search_efficiency(exp, table, budget=8, seeds=2)
    for name in ("ens", "random"):
        r = eff[f"{name}_hv_ratio"]
        assert 0 < r["min"] <= r["mean"] <= r["max"] <= 1 + 1e-9


@pytest.mark.slow
def test_ssm_benchmark_quick(capsys):
    bench = _load_bench("ssm_vs_transformer")
    result = bench.main(["--quick"])
    assert {r["block"] for r in result["rows"]} >= {"transformer", "ssm"}
    assert "SSM / transformer" in capsys.readouterr().out
