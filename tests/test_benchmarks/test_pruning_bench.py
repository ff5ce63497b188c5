"""Smoke test of benchmarks/pruning.py: the same search with and without a pruner, its table."""
from __future__ import annotations

import json

import pytest

from conftest import load_script

pytest.importorskip("optuna")


def _load():
    return load_script("pruning")


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
