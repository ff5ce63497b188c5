"""Smoke test of benchmarks/pruning.py: the same search with and without a pruner, its table."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("optuna")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pruning.py"


def _load():
    spec = importlib.util.spec_from_file_location("nasframe_bench_pruning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pruning_benchmark_prints_steps_and_hypervolume_with_and_without_a_pruner(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "bench.json"
    args = ["--trials", "6", "--steps", "6", "--every", "2", "--teacher-steps", "10",
            "--distill-steps", "5", "--pruners", "asha", "--out", str(tmp_path / "runs"),
            "--json", str(out)]
    assert bench.main(args) == 0
    rows = {r["pruner"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none", "asha"}
    assert rows["none"]["steps"] == 6 * 6 and rows["none"]["pruned"] == 0
    assert rows["none"]["hv_ratio"] == 1.0
    assert rows["asha"]["steps"] <= rows["none"]["steps"]
    assert rows["asha"]["steps_fraction"] == rows["asha"]["steps"] / rows["none"]["steps"]
    printed = capsys.readouterr().out
    assert "pruner" in printed and "HV/none" in printed and "asha" in printed
    # --reuse reads the finished baseline again instead of running it
    assert bench.main(args + ["--reuse"]) == 0
    assert "reused: the same finished run" in capsys.readouterr().out
