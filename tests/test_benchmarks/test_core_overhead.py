"""Smoke test of benchmarks/core_overhead.py: it runs end to end and reports three rows."""
from __future__ import annotations

import json
import math

import pytest

from conftest import load_script

pytest.importorskip("optuna")


def _load():
    return load_script("core_overhead")


def test_core_overhead_runs_and_reports_three_rows(tmp_path, capsys):
    bench = _load()
    out_json = tmp_path / "out" / "core.json"
    # a small decision range keeps nasframe's per-trial validation cheap in this smoke test
    result = bench.main(["--trials", "20", "--repeats", "1", "--high", "1000",
                         "--json", str(out_json)])

    rows = {row["name"]: row for row in result["rows"]}
    assert set(rows) == {"nasframe", "optuna-sqlite", "optuna-memory"}
    for row in rows.values():
        assert row["trials_per_s"] > 0 and math.isfinite(row["trials_per_s"])
        assert row["wall_s"] > 0
        assert row["trials_recorded"] == [20]
    assert set(result["ratios"]) == {"nasframe/optuna-sqlite", "nasframe/optuna-memory"}
    assert all(r > 0 for r in result["ratios"].values())
    assert isinstance(result["pass"], bool)

    printed = capsys.readouterr().out
    for name in rows:
        assert name in printed
    assert "PASS" in printed or "BELOW TARGET" in printed
    assert json.loads(out_json.read_text())["rows"] == json.loads(json.dumps(result["rows"]))


@pytest.mark.slow
def test_core_overhead_scaling_table(tmp_path, capsys):
    pytest.importorskip("nni")
    bench = _load()
    result = bench.main(["--trials", "5", "--repeats", "1", "--high", "1000", "--no-warmup",
                         "--scaling", "20,40", "--strategies", "random,ens,optuna,nni"])
    sc = result["scaling"]
    runners = {r["runner"] for r in sc["rows"]}
    assert runners == {"nasframe random", "nasframe ens", "nasframe optuna", "nasframe nni",
                       "optuna-sqlite"}
    assert all(r["recorded"] == r["trials"] for r in sc["rows"])
    assert all(g >= 1.0 for g in sc["growth"].values())
    assert set(sc["random_vs_optuna_sqlite"]) == {20, 40}
    out = capsys.readouterr().out
    assert "growth" in out and "nasframe nni" in out
